//! `POST /api/v1/events/fastnetmon`: external detectors hand attack events to the service;
//! `POST /api/v1/events/fastnetmon-advanced[/<secret>]`: FastNetMon Advanced's web
//! callbacks (its JSON document, see [`super::advanced`]; `?source=NAME` names the
//! instance, default `fastnetmon-advanced`).
//!
//! Checks, in this order: bearer token, or for the Advanced path the `[api] token` as the
//! last path segment (Advanced's `web_callback_url` can carry a secret but no header);
//! constant-time; no token configured means every request is refused, the endpoint is never
//! open by default → 401; body size against `[api] max_body_bytes` → 413; the JSON → 400
//! with the reason (422 for a well-formed Advanced document flowguard cannot apply, such as
//! an unknown hostgroup); room in the bounded queue (`try_send`, never waiting) → 503.
//! Accepted events answer 202, deliberately ignored ones (directions naming no protected
//! side) 200. An event is queued whole or not at all. Every outcome is counted in
//! `flowguard_hook_events_total{action,outcome}`.

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use super::advanced::{self, Hostgroups};
use super::event::ExternalEvent;
use super::HookError;
use crate::metrics::Metrics;

pub const PATH: &str = "/api/v1/events/fastnetmon";
/// FastNetMon Advanced's web callbacks (bearer token).
pub const ADVANCED_PATH: &str = "/api/v1/events/fastnetmon-advanced";

/// What the endpoint needs from the service.
pub struct HookEndpoint {
    /// `[api] token`.
    pub token: Option<String>,
    /// Queue into the detect stage.
    pub tx: mpsc::Sender<ExternalEvent>,
    pub metrics: Arc<Metrics>,
    /// `[api] max_body_bytes`.
    pub max_body_bytes: usize,
    /// For Advanced's hostgroup alerts.
    pub hostgroups: Hostgroups,
}

/// A router serving only [`PATH`] and [`ADVANCED_PATH`]; merge it into the API router.
pub fn router(ep: HookEndpoint) -> axum::Router {
    axum::Router::new()
        .route(PATH, post(handle))
        .route(ADVANCED_PATH, post(handle_advanced))
        .route(
            &format!("{ADVANCED_PATH}/{{secret}}"),
            post(handle_advanced_secret),
        )
        .with_state(Arc::new(ep))
}

fn secret_ok(token: Option<&str>, got: &str) -> bool {
    let Some(want) = token.filter(|t| !t.is_empty()) else {
        return false;
    };
    bool::from(want.as_bytes().ct_eq(got.as_bytes()))
}

fn authorized(token: Option<&str>, headers: &HeaderMap) -> bool {
    let Some(want) = token.filter(|t| !t.is_empty()) else {
        return false;
    };
    let Some(got) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    // Lengths may differ (that leaks only the length); the bytes are compared in constant
    // time so the token cannot be guessed byte by byte from response timing.
    bool::from(want.as_bytes().ct_eq(got.trim().as_bytes()))
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

fn count(ep: &HookEndpoint, action: &str, outcome: &str) {
    ep.metrics
        .hook_events
        .with_label_values(&[action, outcome])
        .inc();
}

fn unauthorized(ep: &HookEndpoint, what: &str) -> Response {
    count(ep, "unknown", "unauthorized");
    let mut r = reply(
        StatusCode::UNAUTHORIZED,
        serde_json::json!({"accepted": false, "error": format!("missing or wrong {what}")}),
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer"),
    );
    r
}

/// The body within `[api] max_body_bytes`, or the 413 answer.
async fn body_of(ep: &HookEndpoint, req: Request) -> Result<axum::body::Bytes, Response> {
    let too_large = || {
        count(ep, "unknown", "too_large");
        reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({"accepted": false, "error": format!("body larger than {} bytes", ep.max_body_bytes)}),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ep.max_body_bytes as u64) {
        return Err(too_large());
    }
    // An error here is the limit being hit or the client going away mid-body; in the latter
    // case nobody reads the answer, so both are answered as 413.
    axum::body::to_bytes(req.into_body(), ep.max_body_bytes)
        .await
        .map_err(|_| too_large())
}

/// The action label of a body that did not parse, kept bounded: a known name or "unknown".
fn action_label(body: &[u8]) -> &'static str {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            let a = v.get("action")?.as_str()?;
            super::HookAction::parse(a).map(|a| a.as_str()).or(match a {
                "attack_status" => Some("attack_details"),
                "partial_block" => Some("ban"),
                "partial_unblock" => Some("unban"),
                _ => None,
            })
        })
        .unwrap_or("unknown")
}

fn bad_request(ep: &HookEndpoint, status: StatusCode, body: &[u8], why: String) -> Response {
    count(ep, action_label(body), "bad_request");
    reply(status, serde_json::json!({"accepted": false, "error": why}))
}

/// Queues a parsed event (whole, or not at all).
fn enqueue(ep: &HookEndpoint, ev: ExternalEvent) -> Response {
    let action = ev.action.as_str();
    match ep.tx.try_send(ev) {
        Ok(()) => {
            count(ep, action, "accepted");
            reply(StatusCode::ACCEPTED, serde_json::json!({"accepted": true}))
        }
        Err(e) => {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => {
                    crate::metrics::QueueFull {
                        queue: crate::metrics::Queue::HookEvents,
                    }
                    .emit(&ep.metrics);
                    "event queue full"
                }
                mpsc::error::TrySendError::Closed(_) => "service is shutting down",
            };
            count(ep, action, "queue_full");
            let mut r = reply(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"accepted": false, "error": why}),
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
            r
        }
    }
}

async fn handle(State(ep): State<Arc<HookEndpoint>>, req: Request) -> Response {
    if !authorized(ep.token.as_deref(), req.headers()) {
        return unauthorized(&ep, "bearer token");
    }
    let body = match body_of(&ep, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ev: ExternalEvent = match serde_json::from_slice(&body) {
        Ok(ev) => ev,
        Err(e) => return bad_request(&ep, StatusCode::BAD_REQUEST, &body, e.to_string()),
    };
    if let Err(e) = ev.validate() {
        return bad_request(&ep, StatusCode::BAD_REQUEST, &body, e.to_string());
    }
    enqueue(&ep, ev)
}

#[derive(Debug, serde::Deserialize)]
struct AdvancedQuery {
    source: Option<String>,
}

async fn handle_advanced(
    State(ep): State<Arc<HookEndpoint>>,
    Query(q): Query<AdvancedQuery>,
    req: Request,
) -> Response {
    if !authorized(ep.token.as_deref(), req.headers()) {
        return unauthorized(&ep, "bearer token");
    }
    advanced_event(&ep, q, req).await
}

async fn handle_advanced_secret(
    State(ep): State<Arc<HookEndpoint>>,
    Path(secret): Path<String>,
    Query(q): Query<AdvancedQuery>,
    req: Request,
) -> Response {
    if !secret_ok(ep.token.as_deref(), &secret) {
        return unauthorized(&ep, "secret in the URL");
    }
    advanced_event(&ep, q, req).await
}

async fn advanced_event(ep: &HookEndpoint, q: AdvancedQuery, req: Request) -> Response {
    let body = match body_of(ep, req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let source = q.source.as_deref().unwrap_or(advanced::DEFAULT_SOURCE);
    match advanced::parse(&body, &ep.hostgroups, source) {
        Ok(ev) => enqueue(ep, ev),
        Err(HookError::Ignored(why)) => {
            count(ep, action_label(&body), "ignored");
            reply(
                StatusCode::OK,
                serde_json::json!({"accepted": false, "ignored": why}),
            )
        }
        Err(e @ HookError::NotApplicable(_)) => {
            bad_request(ep, StatusCode::UNPROCESSABLE_ENTITY, &body, e.to_string())
        }
        Err(e) => bad_request(ep, StatusCode::BAD_REQUEST, &body, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use tower::ServiceExt;

    const EV: &str = r#"{"action":"ban","ip":"192.0.2.1","direction":"incoming","pps":100,"report":"Attack type: udp_flood\n"}"#;

    fn setup(
        token: Option<&str>,
        cap: usize,
        max: usize,
    ) -> (axum::Router, mpsc::Receiver<ExternalEvent>, Arc<Metrics>) {
        let (tx, rx) = mpsc::channel(cap);
        let metrics = Arc::new(Metrics::new());
        let r = router(HookEndpoint {
            token: token.map(String::from),
            tx,
            metrics: metrics.clone(),
            max_body_bytes: max,
            hostgroups: Hostgroups::default(),
        });
        (r, rx, metrics)
    }

    fn post_req(auth: Option<&str>, body: impl Into<Body>) -> Request {
        let mut b = Request::builder().method("POST").uri(PATH);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(body.into()).unwrap()
    }

    async fn call(r: &axum::Router, req: Request) -> (StatusCode, serde_json::Value) {
        let resp = r.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    fn count(m: &Metrics, a: &str, o: &str) -> u64 {
        m.hook_events.with_label_values(&[a, o]).get()
    }

    #[tokio::test]
    async fn accepted_event_reaches_the_queue() {
        let (r, mut rx, m) = setup(Some("s3cret"), 4, 4096);
        let (st, body) = call(&r, post_req(Some("Bearer s3cret"), EV)).await;
        assert_eq!(st, StatusCode::ACCEPTED);
        assert_eq!(body, serde_json::json!({"accepted": true}));
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.ip.to_string(), "192.0.2.1");
        assert_eq!(ev.classified().0, crate::model::AttackType::UdpFlood);
        assert_eq!(count(&m, "ban", "accepted"), 1);
    }

    #[tokio::test]
    async fn tokens_are_checked() {
        let (r, mut rx, m) = setup(Some("s3cret"), 4, 4096);
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer s3cre"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let (st, _) = call(&r, post_req(auth, EV)).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{auth:?}");
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(count(&m, "unknown", "unauthorized"), 5);
        // No token configured: nobody gets in, not even with an empty bearer.
        let (r, _rx, _) = setup(None, 4, 4096);
        assert_eq!(
            call(&r, post_req(Some("Bearer "), EV)).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (r, _rx, _) = setup(Some(""), 4, 4096);
        assert_eq!(
            call(&r, post_req(Some("Bearer "), EV)).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    #[tokio::test]
    async fn large_bodies_are_refused() {
        let (r, mut rx, m) = setup(Some("t"), 4, 64);
        assert!(EV.len() > 64);
        // No Content-Length header here: the limit is enforced while reading.
        let (st, _) = call(&r, post_req(Some("Bearer t"), EV)).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
        // The same with the size declared up front.
        let mut req = post_req(Some("Bearer t"), EV);
        req.headers_mut()
            .insert(header::CONTENT_LENGTH, EV.len().into());
        let (st, _) = call(&r, req).await;
        assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(rx.try_recv().is_err());
        assert_eq!(count(&m, "unknown", "too_large"), 2);
    }

    #[tokio::test]
    async fn bad_events_are_400() {
        let (r, mut rx, m) = setup(Some("t"), 4, 4096);
        for body in [
            "not json",
            r#"{"action":"ban","ip":"300.1.1.1","direction":"incoming","pps":1}"#,
            r#"{"action":"ban","ip":"192.0.2.1","direction":"internal","pps":1}"#,
            r#"{"action":"nuke","ip":"192.0.2.1","direction":"incoming","pps":1}"#,
            r#"{"action":"ban","ip":"192.0.2.1","direction":"incoming"}"#,
        ] {
            let (st, b) = call(&r, post_req(Some("Bearer t"), body)).await;
            assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
            assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()));
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(count(&m, "ban", "bad_request"), 3);
        assert_eq!(count(&m, "unknown", "bad_request"), 2);
    }

    #[tokio::test]
    async fn full_queue_is_503() {
        let (r, mut rx, m) = setup(Some("t"), 1, 4096);
        assert_eq!(
            call(&r, post_req(Some("Bearer t"), EV)).await.0,
            StatusCode::ACCEPTED
        );
        let (st, b) = call(&r, post_req(Some("Bearer t"), EV)).await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(b["accepted"], false);
        assert_eq!(count(&m, "ban", "queue_full"), 1);
        assert_eq!(
            m.queue_full_drops.with_label_values(&["hook_events"]).get(),
            1
        );
        rx.try_recv().unwrap();
        assert_eq!(
            call(&r, post_req(Some("Bearer t"), EV)).await.0,
            StatusCode::ACCEPTED
        );
    }

    fn setup_groups(token: &str) -> (axum::Router, mpsc::Receiver<ExternalEvent>, Arc<Metrics>) {
        let cfg = crate::config::Config::from_toml_str(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "web"
            prefixes = ["192.0.2.128/25"]
            "#,
        )
        .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let metrics = Arc::new(Metrics::new());
        let r = router(HookEndpoint {
            token: Some(token.into()),
            tx,
            metrics: metrics.clone(),
            max_body_bytes: 4096,
            hostgroups: Hostgroups::from_config(&cfg),
        });
        (r, rx, metrics)
    }

    fn post_to(uri: &str, auth: Option<&str>, body: &str) -> Request {
        let mut b = Request::builder().method("POST").uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Body::from(body.to_string())).unwrap()
    }

    const ADV: &str = r#"{"action":"ban","ip":"192.0.2.7","alert_scope":"host","attack_details":{"attack_type":"syn_flood","attack_protocol":"tcp","attack_direction":"incoming","initial_attack_power":5000,"incoming_tcp_pps":5000,"incoming_syn_tcp_pps":4900,"some_future_field":[1,2]},"packet_dump_detailed":[]}"#;

    #[tokio::test]
    async fn advanced_callbacks_with_bearer_or_secret() {
        let (r, mut rx, m) = setup_groups("s3cret");
        let (st, _) = call(&r, post_to(ADVANCED_PATH, Some("Bearer s3cret"), ADV)).await;
        assert_eq!(st, StatusCode::ACCEPTED);
        let ev = rx.try_recv().unwrap();
        assert_eq!(ev.ip.to_string(), "192.0.2.7");
        assert_eq!(ev.pps, 5000);
        assert_eq!(
            ev.classified(),
            (
                crate::model::AttackType::SynFlood,
                crate::model::Protocol::Tcp
            )
        );
        assert_eq!(ev.source.as_deref(), Some("fastnetmon-advanced"));
        // The secret in the URL, and the instance named by ?source=.
        let uri = format!("{ADVANCED_PATH}/s3cret?source=fnm-b");
        let (st, _) = call(&r, post_to(&uri, None, ADV)).await;
        assert_eq!(st, StatusCode::ACCEPTED);
        assert_eq!(rx.try_recv().unwrap().source.as_deref(), Some("fnm-b"));
        // Wrong secret or no token: 401, nothing queued.
        for (uri, auth) in [
            (format!("{ADVANCED_PATH}/s3cre"), None),
            (ADVANCED_PATH.to_string(), None),
            (ADVANCED_PATH.to_string(), Some("Bearer nope")),
        ] {
            let (st, _) = call(&r, post_to(&uri, auth, ADV)).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "{uri} {auth:?}");
        }
        assert!(rx.try_recv().is_err());
        assert_eq!(count(&m, "ban", "accepted"), 2);
    }

    #[tokio::test]
    async fn advanced_hostgroup_scope_and_refusals() {
        let (r, mut rx, m) = setup_groups("t");
        let auth = Some("Bearer t");
        let hg = r#"{"action":"ban","alert_scope":"hostgroup","hostgroup_name":"web","hostgroup_networks":["192.0.2.128/25"],"attack_details":{"attack_direction":"incoming","total_incoming_pps":90000,"incoming_udp_pps":90000}}"#;
        assert_eq!(
            call(&r, post_to(ADVANCED_PATH, auth, hg)).await.0,
            StatusCode::ACCEPTED
        );
        let ev = rx.try_recv().unwrap();
        assert_eq!(
            ev.ip.to_string(),
            "192.0.2.128",
            "keyed on the group's first prefix"
        );
        assert_eq!(ev.classified().0, crate::model::AttackType::UdpFlood);
        let unknown = hg.replace("\"web\"", "\"mars\"");
        let (st, b) = call(&r, post_to(ADVANCED_PATH, auth, &unknown)).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(b["error"].as_str().unwrap().contains("mars"));
        let (st, b) = call(
            &r,
            post_to(ADVANCED_PATH, auth, r#"{"action":"ban","ip":5}"#),
        )
        .await;
        assert_eq!(st, StatusCode::BAD_REQUEST);
        assert!(b["error"].as_str().unwrap().contains("ip"));
        let internal =
            r#"{"action":"ban","ip":"192.0.2.7","attack_details":{"attack_direction":"internal"}}"#;
        assert_eq!(
            call(&r, post_to(ADVANCED_PATH, auth, internal)).await.0,
            StatusCode::OK
        );
        assert!(
            rx.try_recv().is_err(),
            "nothing queued for the refused or ignored ones"
        );
        assert_eq!(count(&m, "ban", "bad_request"), 2);
        assert_eq!(count(&m, "ban", "ignored"), 1);
    }
}
