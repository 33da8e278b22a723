//! HTTP API (axum): `/metrics`, `/healthz` and the JSON API under `/api/v1`.
//!
//! Read-only endpoints need no token; they are meant for loopback or a management
//! network (the default listen address is 127.0.0.1). Write endpoints (the FastNetMon
//! event hook) live in `hooks` and require `[api] token`.
//!
//! | endpoint | returns |
//! |---|---|
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /healthz` | `{"status":"ok", ...}` |
//! | `GET /api/v1/hosts/{ip}` | rates per direction (lifetime totals with `[aggregate] host_totals`); 404 if untracked |
//! | `GET /api/v1/hosts?top=N&by=pps\|bps\|flows` | the busiest host-directions as of the last detection pass (N ≤ 1000) |
//! | `GET /api/v1/attacks` | `{"active":[...],"recent":[...]}` with mitigation state |
//! | `GET /api/v1/attacks/{id}` | one attack; 404 if unknown |
//! | `GET /api/v1/attacks/{id}/report.txt` | FastNetMon's text report form, then the BGP routes |
//! | `GET /` | the operator console (HTML; [`console`]) |
//! | `GET /api/v1/summary` | everything the console and `flowguard top` show |
//! | `GET /api/v1/exporters` | per exporter (router address): records/s, sampling, templates, decode errors |
//! | `GET /api/v1/collectors` | per collector socket: datagrams/s, drops, decode errors by kind |
//! | `GET /api/v1/health` | drops, detection pass time, MITIGATOR reachability |

pub mod console;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::aggregate::TopBy;
use crate::clock::{rfc3339, Clock};
use crate::detect::Attack;
use crate::metrics::Metrics;
use crate::pipeline::Pipeline;

/// Mitigation state of an attack by id, as JSON (None when unknown).
pub type MitigationView = Arc<dyn Fn(&str) -> Option<Value> + Send + Sync>;

pub struct ApiState {
    pub pipeline: Arc<Pipeline>,
    pub metrics: Arc<Metrics>,
    /// Mitigation state per attack id, when mitigation runs.
    pub mitigation: Option<MitigationView>,
    /// MITIGATOR calls are logged, not made (the console says so instead of "unreachable").
    pub mitigator_dry_run: bool,
    pub started_ms: i64,
    /// The service's clock: "now" for uptime, rates as of now, the console's samples.
    pub clock: Clock,
}

pub fn router(state: Arc<ApiState>) -> Router {
    let console = console::router(state.clone());
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/api/v1/hosts", get(top_hosts))
        .route("/api/v1/hosts/{ip}", get(host))
        .route("/api/v1/attacks", get(attacks))
        .route("/api/v1/attacks/{id}", get(attack))
        .route("/api/v1/attacks/{id}/report.txt", get(report))
        .with_state(state)
        .merge(console)
}

pub(crate) fn count(s: &ApiState, endpoint: &str, status: StatusCode) {
    let class = match status.as_u16() {
        200..=299 => "2xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    s.metrics
        .api_requests
        .with_label_values(&[endpoint, class])
        .inc();
}

async fn metrics(State(s): State<Arc<ApiState>>) -> Response {
    count(&s, "metrics", StatusCode::OK);
    // Encoding every series is CPU work that grows with the series: off the two runtime
    // threads the API, the ticker and mitigation share.
    let m = s.metrics.clone();
    let text = tokio::task::spawn_blocking(move || m.render())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn healthz(State(s): State<Arc<ApiState>>) -> Json<Value> {
    count(&s, "healthz", StatusCode::OK);
    Json(json!({
        "status": "ok",
        "uptime_seconds": (s.clock.now_ms() - s.started_ms) / 1000,
        "tracked_hosts": s.metrics.tracked_hosts.get(),
        "attacks_active": s.pipeline.detection.active_attacks(),
    }))
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("{what} not found")})),
    )
        .into_response()
}

async fn host(State(s): State<Arc<ApiState>>, Path(ip): Path<String>) -> Response {
    let Ok(ip) = ip.parse::<IpAddr>() else {
        count(&s, "host", StatusCode::BAD_REQUEST);
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "not an IP address"})),
        )
            .into_response();
    };
    match s.pipeline.aggregate.host(ip, s.clock.now_ms()) {
        Some(v) => {
            count(&s, "host", StatusCode::OK);
            Json(v).into_response()
        }
        None => {
            count(&s, "host", StatusCode::NOT_FOUND);
            not_found("host")
        }
    }
}

#[derive(Deserialize)]
struct TopQuery {
    top: Option<usize>,
    by: Option<TopBy>,
}

async fn top_hosts(State(s): State<Arc<ApiState>>, Query(q): Query<TopQuery>) -> Json<Value> {
    count(&s, "hosts", StatusCode::OK);
    // Read from the lists the per-second pass keeps: no shard lock, no table walk.
    let n = q.top.unwrap_or(10).min(crate::aggregate::TOP_HOSTS_MAX);
    let by = q.by.unwrap_or(TopBy::Pps);
    let v: Vec<Value> = s
        .pipeline
        .aggregate
        .top(n, by)
        .into_iter()
        .map(|(k, r)| json!({"ip": k.ip, "direction": k.dir, "rates": r}))
        .collect();
    Json(Value::Array(v))
}

pub(crate) fn attack_json(s: &ApiState, a: &Attack) -> Value {
    let mut v = serde_json::to_value(a).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("start".into(), json!(rfc3339(a.start_ms)));
        m.insert("end".into(), json!(a.end_ms.map(rfc3339)));
        m.insert("active".into(), json!(a.end_ms.is_none()));
        let mit = s.mitigation.as_ref().and_then(|f| f(&a.id));
        m.insert("mitigation".into(), mit.unwrap_or(Value::Null));
    }
    v
}

async fn attacks(State(s): State<Arc<ApiState>>) -> Json<Value> {
    count(&s, "attacks", StatusCode::OK);
    let all = s.pipeline.detection.attacks();
    let (active, recent): (Vec<_>, Vec<_>) = all.iter().partition(|a| a.end_ms.is_none());
    Json(json!({
        "active": active.iter().map(|a| attack_json(&s, a)).collect::<Vec<_>>(),
        "recent": recent.iter().map(|a| attack_json(&s, a)).collect::<Vec<_>>(),
    }))
}

async fn attack(State(s): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    match s.pipeline.detection.attack(&id) {
        Some(a) => {
            count(&s, "attack", StatusCode::OK);
            Json(attack_json(&s, &a)).into_response()
        }
        None => {
            count(&s, "attack", StatusCode::NOT_FOUND);
            not_found("attack")
        }
    }
}

/// The attacked host's rates in the direction opposite to the attack, for the report.
fn other_direction(s: &ApiState, a: &Attack) -> crate::aggregate::Rates {
    s.pipeline
        .aggregate
        .host(a.ip, s.clock.now_ms())
        .and_then(|h| {
            h.directions
                .into_iter()
                .find(|d| d.direction != a.direction)
        })
        .map(|d| d.rates)
        .unwrap_or_default()
}

/// The attack's BGP routes from the mitigation view: (route, state, reason).
fn routes_of(s: &ApiState, id: &str) -> Vec<(String, String, Option<String>)> {
    let Some(v) = s.mitigation.as_ref().and_then(|f| f(id)) else {
        return Vec::new();
    };
    v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let t = |k: &str| r[k].as_str().unwrap_or("").to_string();
            (
                t("route"),
                t("state"),
                r["reason"].as_str().map(str::to_string),
            )
        })
        .collect()
}

async fn report(State(s): State<Arc<ApiState>>, Path(id): Path<String>) -> Response {
    match s.pipeline.detection.attack(&id) {
        Some(a) => {
            count(&s, "report", StatusCode::OK);
            let mut text = crate::detect::report::text(&a, &other_direction(&s, &a));
            // What mitigation left out of the temporary blacklist belongs to the report.
            let mit = s.mitigation.as_ref().and_then(|f| f(&a.id));
            if let Some(m) = mit.filter(|m| m["tbl_skipped_sources"].as_u64() > Some(0)) {
                text.push_str(&format!(
                    "Top sources not blacklisted: {} ({})\n",
                    m["tbl_skipped_sources"],
                    m["tbl_skip_reason"].as_str().unwrap_or("")
                ));
            }
            text.push_str(&crate::detect::report::routes_section(&routes_of(
                &s, &a.id,
            )));
            ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
        }
        None => {
            count(&s, "report", StatusCode::NOT_FOUND);
            not_found("attack")
        }
    }
}
