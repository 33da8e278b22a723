//! `POST /api/v1/events/fastnetmon`: external detectors hand attack events to the service.
//!
//! Checks, in this order: bearer token (constant-time; no token configured means every
//! request is refused, the endpoint is never open by default) → 401; body size against
//! `[api] max_body_bytes` → 413; the JSON [`ExternalEvent`] → 400; room in the bounded
//! queue (`try_send`, never waiting) → 503. Accepted events answer 202. Every outcome is
//! counted in `flowguard_hook_events_total{action,outcome}`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Json;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use super::event::ExternalEvent;
use crate::metrics::Metrics;

pub const PATH: &str = "/api/v1/events/fastnetmon";

/// What the endpoint needs from the service.
pub struct HookEndpoint {
    /// `[api] token`.
    pub token: Option<String>,
    /// Queue into the detect stage.
    pub tx: mpsc::Sender<ExternalEvent>,
    pub metrics: Arc<Metrics>,
    /// `[api] max_body_bytes`.
    pub max_body_bytes: usize,
}

/// A router serving only [`PATH`]; merge it into the API router.
pub fn router(ep: HookEndpoint) -> axum::Router {
    axum::Router::new()
        .route(PATH, post(handle))
        .with_state(Arc::new(ep))
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

async fn handle(State(ep): State<Arc<HookEndpoint>>, req: Request) -> Response {
    let count = |action: &str, outcome: &str| {
        ep.metrics
            .hook_events
            .with_label_values(&[action, outcome])
            .inc();
    };
    if !authorized(ep.token.as_deref(), req.headers()) {
        count("unknown", "unauthorized");
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"accepted": false, "error": "missing or wrong bearer token"}),
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let too_large = || {
        count("unknown", "too_large");
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
        return too_large();
    }
    // An error here is the limit being hit or the client going away mid-body; in the latter
    // case nobody reads the answer, so both are answered as 413.
    let Ok(body) = axum::body::to_bytes(req.into_body(), ep.max_body_bytes).await else {
        return too_large();
    };
    let ev: ExternalEvent = match serde_json::from_slice(&body) {
        Ok(ev) => ev,
        Err(e) => {
            // The action label stays bounded: only the three known names or "unknown".
            let action = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("action")?.as_str().and_then(super::HookAction::parse))
                .map_or("unknown", |a| a.as_str());
            count(action, "bad_request");
            return reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"accepted": false, "error": e.to_string()}),
            );
        }
    };
    let action = ev.action.as_str();
    match ep.tx.try_send(ev) {
        Ok(()) => {
            count(action, "accepted");
            reply(StatusCode::ACCEPTED, serde_json::json!({"accepted": true}))
        }
        Err(e) => {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "event queue full",
                mpsc::error::TrySendError::Closed(_) => "service is shutting down",
            };
            count(action, "queue_full");
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
        rx.try_recv().unwrap();
        assert_eq!(
            call(&r, post_req(Some("Bearer t"), EV)).await.0,
            StatusCode::ACCEPTED
        );
    }
}
