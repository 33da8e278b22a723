//! The operator console: `GET /` (an HTML page, its script and style, embedded in the
//! binary) and the JSON it reads, `GET /api/v1/summary` (also its parts
//! `/api/v1/exporters`, `/api/v1/collectors` and `/api/v1/health`), which `flowguard top`
//! reads too.
//!
//! The page is plain HTML/CSS/JS with no external asset, so it works on a management
//! network with no internet. It is read-only and shows nothing secret: no API token, no
//! MITIGATOR credentials (`tests/access.rs` checks its answers).
//!
//! Rates that the metrics only hold as counters (records/s, detection pass time) and the
//! top hosts' sparklines need a past: a sampler task takes one [`Sample`] per second into a
//! bounded ring ([`HISTORY`] entries). It reads the metric families and the last detection
//! pass's top lists (an `Arc` clone), so it takes no lock ingest needs.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;
use prometheus::core::Collector;
use serde::Serialize;
use serde_json::{json, Value};

use super::ApiState;
use crate::aggregate::TopBy;
use crate::metrics::Metrics;
use crate::model::Direction;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const STYLE_CSS: &str = include_str!("console/style.css");

/// Samples kept: one per second, five minutes of sparkline.
pub const HISTORY: usize = 300;
/// Hosts per direction in the top list (and so in each sample).
pub const TOP_HOSTS: usize = 10;
/// Recent (ended) attacks in the summary; the full list is `/api/v1/attacks`.
pub const RECENT_ATTACKS: usize = 50;
/// Sampling period.
const PERIOD: Duration = Duration::from_secs(1);
/// The top list is sampled only while someone has read the summary this recently
/// (nobody watching, no copy taken).
const WATCH_MS: i64 = 300_000;

/// MITIGATOR request outcomes that mean "could not talk to it" (as opposed to "it
/// answered with an error").
const UNREACHABLE: [&str; 3] = ["timeout", "transport_error", "misdirected"];

/// Counter and gauge values read from the metrics at one instant.
#[derive(Clone, Default, Debug)]
struct Snapshot {
    collectors: BTreeMap<String, CollectorSnap>,
    /// Per exporter (router address), keyed (exporter, collector): an exporter sending to
    /// two collectors is two rows. At most `MAX_EXPORTER_SERIES` per collector.
    exporters: BTreeMap<(String, String), ExporterSnap>,
    exporter_series_overflow: f64,
    queue_full_drops: BTreeMap<String, f64>,
    events_dropped: BTreeMap<String, f64>,
    host_evictions: BTreeMap<String, f64>,
    pass_sum: f64,
    pass_count: u64,
    mitigator_ok: f64,
    mitigator_unreachable: f64,
    mitigator_failed: f64,
}

#[derive(Clone, Default, Debug)]
struct ExporterSnap {
    records: f64,
    decode_errors: f64,
    /// None until the exporter's first datagram that carried a rate.
    sampling_rate: Option<i64>,
    /// None on sFlow collectors (no templates).
    templates_known: Option<i64>,
}

#[derive(Clone, Default, Debug)]
struct CollectorSnap {
    records: f64,
    datagrams: f64,
    decode_errors: BTreeMap<String, f64>,
    dropped: BTreeMap<String, f64>,
    template_misses: f64,
    socket_drops: i64,
    templates_known: i64,
    exporters_known: i64,
}

/// Label value `name` of a metric, "" if absent.
fn label<'a>(m: &'a prometheus::proto::Metric, name: &str) -> &'a str {
    m.get_label()
        .iter()
        .find(|l| l.name() == name)
        .map(|l| l.value())
        .unwrap_or("")
}

/// Every series of a counter or gauge family: (metric, value).
fn series(c: &dyn Collector) -> Vec<(prometheus::proto::Metric, f64)> {
    let mut v = Vec::new();
    for mf in c.collect() {
        for m in mf.get_metric() {
            let x = match mf.get_field_type() {
                prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
                _ => continue,
            };
            v.push((m.clone(), x));
        }
    }
    v
}

impl Snapshot {
    fn read(m: &Metrics) -> Snapshot {
        let mut s = Snapshot::default();
        for (mm, x) in series(&m.flow_records) {
            s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .records += x;
        }
        for (mm, x) in series(&m.datagrams) {
            s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .datagrams += x;
        }
        for (mm, x) in series(&m.decode_errors) {
            *s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .decode_errors
                .entry(label(&mm, "kind").into())
                .or_default() += x;
        }
        for (mm, x) in series(&m.datagrams_dropped) {
            *s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .dropped
                .entry(label(&mm, "reason").into())
                .or_default() += x;
        }
        for (mm, x) in series(&m.template_misses) {
            s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .template_misses += x;
        }
        for (mm, x) in series(&m.socket_drops) {
            s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .socket_drops = x as i64;
        }
        for (mm, x) in series(&m.templates_known) {
            s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .templates_known = x as i64;
        }
        for (mm, x) in series(&m.exporters_known) {
            s.collectors
                .entry(label(&mm, "collector").into())
                .or_default()
                .exporters_known = x as i64;
        }
        let key = |mm: &prometheus::proto::Metric| -> (String, String) {
            (label(mm, "exporter").into(), label(mm, "collector").into())
        };
        for (mm, x) in series(&m.exporter_records) {
            s.exporters.entry(key(&mm)).or_default().records += x;
        }
        for (mm, x) in series(&m.exporter_decode_errors) {
            s.exporters.entry(key(&mm)).or_default().decode_errors += x;
        }
        for (mm, x) in series(&m.exporter_sampling_rate) {
            s.exporters.entry(key(&mm)).or_default().sampling_rate = Some(x as i64);
        }
        for (mm, x) in series(&m.exporter_templates_known) {
            s.exporters.entry(key(&mm)).or_default().templates_known = Some(x as i64);
        }
        s.exporter_series_overflow = m.exporter_series_overflow.get() as f64;
        for (mm, x) in series(&m.queue_full_drops) {
            *s.queue_full_drops
                .entry(label(&mm, "queue").into())
                .or_default() += x;
        }
        for (mm, x) in series(&m.events_dropped) {
            *s.events_dropped
                .entry(label(&mm, "event").into())
                .or_default() += x;
        }
        for (mm, x) in series(&m.host_evictions) {
            *s.host_evictions
                .entry(label(&mm, "reason").into())
                .or_default() += x;
        }
        (s.mitigator_ok, s.mitigator_unreachable, s.mitigator_failed) = mitigator_calls(m);
        s.pass_sum = m.detection_pass_seconds.get_sample_sum();
        s.pass_count = m.detection_pass_seconds.get_sample_count();
        s
    }
}

/// MITIGATOR calls so far: (ok, could not reach it, answered with an error).
fn mitigator_calls(m: &Metrics) -> (f64, f64, f64) {
    let (mut ok, mut unreachable, mut failed) = (0.0, 0.0, 0.0);
    for (mm, x) in series(&m.mitigator_requests) {
        let o = label(&mm, "outcome");
        if o == "ok" {
            ok += x;
        } else if UNREACHABLE.contains(&o) {
            unreachable += x;
        } else {
            failed += x;
        }
    }
    (ok, unreachable, failed)
}

/// One host in a sample's top list.
#[derive(Clone, Copy, Debug)]
struct TopEntry {
    ip: IpAddr,
    pps: u64,
    bps: u64,
    flows: u64,
}

#[derive(Clone, Debug)]
struct Sample {
    t_ms: i64,
    top: [Vec<TopEntry>; 2],
}

/// What the sampler learned about MITIGATOR from the outcomes of the calls mitigation
/// made (the console never calls MITIGATOR itself).
#[derive(Clone, Default, Debug)]
struct Reach {
    last_ok_ms: Option<i64>,
    last_unreachable_ms: Option<i64>,
    last_failed_ms: Option<i64>,
}

/// A snapshot and when it was taken (unix ms).
type Stamped = Option<(i64, Snapshot)>;

#[derive(Default)]
struct Inner {
    samples: VecDeque<Sample>,
    /// The newest two snapshots (rates are their difference).
    prev: Stamped,
    last: Stamped,
    reach: Reach,
}

/// The console's bounded past, shared by the sampler and the handlers.
#[derive(Default)]
pub struct History {
    inner: Mutex<Inner>,
    /// Until when the top list is sampled (unix ms), pushed on by each summary read.
    watched_until_ms: std::sync::atomic::AtomicI64,
}

impl History {
    fn watched(&self, now: i64) -> bool {
        now <= self
            .watched_until_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Someone reads the summary. True when the top list has no fresh sample (first read
    /// after a quiet time): the caller samples at once rather than show an empty list.
    fn watch(&self, now: i64) -> bool {
        self.watched_until_ms
            .store(now + WATCH_MS, std::sync::atomic::Ordering::Relaxed);
        let g = self.inner.lock();
        match g.samples.back() {
            Some(b) => now - b.t_ms > 2 * PERIOD.as_millis() as i64,
            None => true,
        }
    }

    /// Takes one sample now. Called by the sampler once a second.
    fn sample(&self, s: &ApiState) {
        let now = s.clock.now_ms();
        let watched = self.watched(now);
        // The detection pass's top list: a copy of a few entries, no shard lock.
        let top = if watched {
            s.pipeline.aggregate.top(4 * TOP_HOSTS, TopBy::Pps)
        } else {
            Vec::new()
        };
        let mut by_dir: [Vec<TopEntry>; 2] = [Vec::new(), Vec::new()];
        for (k, r) in top {
            let v = &mut by_dir[k.dir as usize];
            if v.len() < TOP_HOSTS {
                v.push(TopEntry {
                    ip: k.ip,
                    pps: r.pps,
                    bps: r.bps,
                    flows: r.flows_per_second,
                });
            }
        }
        let snap = Snapshot::read(&s.metrics);
        let mut guard = self.inner.lock();
        let g = &mut *guard;
        if let Some((_, last)) = &g.last {
            if snap.mitigator_ok > last.mitigator_ok {
                g.reach.last_ok_ms = Some(now);
            }
            if snap.mitigator_unreachable > last.mitigator_unreachable {
                g.reach.last_unreachable_ms = Some(now);
            }
            if snap.mitigator_failed > last.mitigator_failed {
                g.reach.last_failed_ms = Some(now);
            }
        } else if snap.mitigator_ok > 0.0 {
            g.reach.last_ok_ms = Some(now);
        }
        g.prev = g.last.take();
        g.last = Some((now, snap));
        if !watched {
            return;
        }
        // After a quiet time the old samples are not "the last minutes" any more.
        if g.samples
            .back()
            .is_some_and(|b| now - b.t_ms > 5 * PERIOD.as_millis() as i64)
        {
            g.samples.clear();
        }
        if g.samples.len() >= HISTORY {
            g.samples.pop_front();
        }
        g.samples.push_back(Sample {
            t_ms: now,
            top: by_dir,
        });
    }

    /// The newest snapshot and the per-second rate between it and the one before.
    fn snapshots(&self) -> (Stamped, Stamped, Reach) {
        let g = self.inner.lock();
        (g.prev.clone(), g.last.clone(), g.reach.clone())
    }

    /// Top hosts of the newest sample per direction, each with its pps over the samples
    /// kept (0 where it was not among the top hosts).
    fn top(&self) -> (Value, usize) {
        let g = self.inner.lock();
        let Some(newest) = g.samples.back() else {
            return (json!({"incoming": [], "outgoing": []}), 0);
        };
        let mut out = serde_json::Map::new();
        for dir in Direction::ALL {
            let d = dir as usize;
            let rows: Vec<Value> = newest.top[d]
                .iter()
                .map(|e| {
                    let spark: Vec<u64> = g
                        .samples
                        .iter()
                        .map(|s| s.top[d].iter().find(|x| x.ip == e.ip).map_or(0, |x| x.pps))
                        .collect();
                    json!({"ip": e.ip, "pps": e.pps, "bps": e.bps,
                           "flows_per_second": e.flows, "spark_pps": spark})
                })
                .collect();
            out.insert(dir.as_str().into(), Value::Array(rows));
        }
        let span = g
            .samples
            .front()
            .map_or(0, |f| ((newest.t_ms - f.t_ms) / 1000) as usize);
        (Value::Object(out), span)
    }
}

/// The console's state: the API's, plus the history.
#[derive(Clone)]
pub struct Console {
    pub api: Arc<ApiState>,
    pub history: Arc<History>,
}

/// The console's routes. Starts the sampler when called inside a tokio runtime; the
/// sampler holds the state weakly and ends once the router (and so the server) is gone.
pub fn router(api: Arc<ApiState>) -> Router {
    let c = Console {
        api,
        history: Arc::new(History::default()),
    };
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        let (api, hist) = (Arc::downgrade(&c.api), Arc::downgrade(&c.history));
        rt.spawn(sampler(api, hist));
    }
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/style.css", get(style_css))
        .route("/api/v1/summary", get(summary))
        .route("/api/v1/exporters", get(exporters))
        .route("/api/v1/collectors", get(collectors))
        .route("/api/v1/health", get(health))
        .with_state(c)
}

async fn sampler(api: Weak<ApiState>, hist: Weak<History>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(api), Some(hist)) = (api.upgrade(), hist.upgrade()) else {
            break;
        };
        // The top list walks every shard: off the async workers.
        let r = tokio::task::spawn_blocking(move || hist.sample(&api)).await;
        if r.is_err() {
            break;
        }
    }
}

fn asset(ctype: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, ctype),
            // A restarted (maybe upgraded) service must not be shown a stale script.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn index(State(c): State<Console>) -> Response {
    super::count(&c.api, "console", axum::http::StatusCode::OK);
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style_css() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn rate(
    prev: Option<&(i64, Snapshot)>,
    last: &(i64, Snapshot),
    f: impl Fn(&Snapshot) -> f64,
) -> f64 {
    match prev {
        Some((t0, p)) if last.0 > *t0 => {
            let r = (f(&last.1) - f(p)) / ((last.0 - t0) as f64 / 1000.0);
            (r.max(0.0) * 10.0).round() / 10.0
        }
        _ => 0.0,
    }
}

/// One exporter (router address) as the console shows it.
#[derive(Serialize)]
struct ExporterRow {
    exporter: String,
    collector: String,
    records_per_second: f64,
    records_total: u64,
    /// The rate in force (1 in N); null before its first datagram that carried one.
    sampling_rate: Option<i64>,
    /// NetFlow v9/IPFIX templates cached for it; null on sFlow collectors.
    templates_known: Option<i64>,
    decode_errors_total: u64,
    decode_errors_per_second: f64,
}

/// One collector socket: what is not per exporter (kernel drops, refused datagrams).
#[derive(Serialize)]
struct CollectorRow {
    collector: String,
    records_per_second: f64,
    datagrams_per_second: f64,
    records_total: u64,
    templates_known: i64,
    exporters_known: i64,
    template_misses: u64,
    decode_errors_total: u64,
    decode_errors: BTreeMap<String, u64>,
    decode_errors_per_second: f64,
    dropped: BTreeMap<String, u64>,
    socket_drops: i64,
}

/// Per exporter, from the per-exporter series the collectors keep (bounded there).
fn exporters_json(h: &History) -> Value {
    let (prev, last, _) = h.snapshots();
    let Some(last) = last else {
        return json!([]);
    };
    let prev = prev.as_ref();
    let rows: Vec<ExporterRow> = last
        .1
        .exporters
        .iter()
        .map(|(k, e)| {
            let of =
                |s: &Snapshot, f: &dyn Fn(&ExporterSnap) -> f64| s.exporters.get(k).map_or(0.0, f);
            ExporterRow {
                exporter: k.0.clone(),
                collector: k.1.clone(),
                records_per_second: rate(prev, &last, |s| of(s, &|e| e.records)),
                records_total: e.records as u64,
                sampling_rate: e.sampling_rate,
                templates_known: e.templates_known,
                decode_errors_total: e.decode_errors as u64,
                decode_errors_per_second: rate(prev, &last, |s| of(s, &|e| e.decode_errors)),
            }
        })
        .collect();
    serde_json::to_value(rows).unwrap_or(Value::Null)
}

fn collectors_json(h: &History) -> Value {
    let (prev, last, _) = h.snapshots();
    let Some(last) = last else {
        return json!([]);
    };
    let prev = prev.as_ref();
    let mut rows = Vec::new();
    for (name, c) in &last.1.collectors {
        let of =
            |s: &Snapshot, f: &dyn Fn(&CollectorSnap) -> f64| s.collectors.get(name).map_or(0.0, f);
        let errs = |c: &CollectorSnap| c.decode_errors.values().sum::<f64>();
        rows.push(CollectorRow {
            collector: name.clone(),
            records_per_second: rate(prev, &last, |s| of(s, &|c| c.records)),
            datagrams_per_second: rate(prev, &last, |s| of(s, &|c| c.datagrams)),
            records_total: c.records as u64,
            templates_known: c.templates_known,
            exporters_known: c.exporters_known,
            template_misses: c.template_misses as u64,
            decode_errors_total: errs(c) as u64,
            decode_errors: c
                .decode_errors
                .iter()
                .map(|(k, v)| (k.clone(), *v as u64))
                .collect(),
            decode_errors_per_second: rate(prev, &last, |s| of(s, &errs)),
            dropped: c
                .dropped
                .iter()
                .map(|(k, v)| (k.clone(), *v as u64))
                .collect(),
            socket_drops: c.socket_drops,
        });
    }
    serde_json::to_value(rows).unwrap_or(Value::Null)
}

fn health_json(c: &Console) -> Value {
    let (prev, last, mut reach) = c.history.snapshots();
    let Some(last) = last else {
        return json!({"sampled": false});
    };
    let s = &last.1;
    // Calls made since the last sample count now: the page must not say "unknown" next
    // to switches it already shows as acknowledged.
    let (ok, unreachable, failed) = mitigator_calls(&c.api.metrics);
    let now = c.api.clock.now_ms();
    if ok > s.mitigator_ok {
        reach.last_ok_ms = Some(now);
    }
    if unreachable > s.mitigator_unreachable {
        reach.last_unreachable_ms = Some(now);
    }
    if failed > s.mitigator_failed {
        reach.last_failed_ms = Some(now);
    }
    let pass_ms = match &prev {
        Some((_, p)) if s.pass_count > p.pass_count => {
            (s.pass_sum - p.pass_sum) / (s.pass_count - p.pass_count) as f64 * 1000.0
        }
        _ if s.pass_count > 0 => s.pass_sum / s.pass_count as f64 * 1000.0,
        _ => 0.0,
    };
    let reachability = match (reach.last_ok_ms, reach.last_unreachable_ms) {
        _ if c.api.mitigator_dry_run => "dry_run",
        (None, None) => "unknown",
        (Some(_), None) => "reachable",
        (None, Some(_)) => "unreachable",
        (Some(ok), Some(bad)) if ok >= bad => "reachable",
        _ => "unreachable",
    };
    let ints = |m: &BTreeMap<String, f64>| -> BTreeMap<String, u64> {
        m.iter().map(|(k, v)| (k.clone(), *v as u64)).collect()
    };
    json!({
        "sampled": true,
        "socket_drops": s.collectors.iter().map(|(k, c)| (k.clone(), c.socket_drops)).collect::<BTreeMap<_, _>>(),
        "socket_drops_total": s.collectors.values().map(|c| c.socket_drops).sum::<i64>(),
        "datagrams_dropped_total": s.collectors.values().map(|c| c.dropped.values().sum::<f64>()).sum::<f64>() as u64,
        "queue_full_drops": ints(&s.queue_full_drops),
        "attack_events_dropped": ints(&s.events_dropped),
        "host_evictions": ints(&s.host_evictions),
        // Exporters past the per-collector series cap: counted, not shown as rows.
        "exporter_series_overflow": s.exporter_series_overflow as u64,
        // Gauges are read live (the page shows the planner's live state beside them).
        "tracked_hosts": c.api.metrics.tracked_hosts.get(),
        "detection_pass_ms": (pass_ms * 1000.0).round() / 1000.0,
        "detection_passes": s.pass_count,
        "mitigator": {
            "mode": if c.api.mitigator_dry_run { "dry_run" } else { "mitigator" },
            "reachability": reachability,
            "last_ok": reach.last_ok_ms.map(crate::clock::rfc3339),
            "last_unreachable": reach.last_unreachable_ms.map(crate::clock::rfc3339),
            "last_rejected": reach.last_failed_ms.map(crate::clock::rfc3339),
            "pending_operations": c.api.metrics.mitigation_pending_ops.get(),
            "mitigations_active": c.api.metrics.mitigations_active.get(),
        },
    })
}

async fn exporters(State(c): State<Console>) -> Json<Value> {
    super::count(&c.api, "exporters", axum::http::StatusCode::OK);
    Json(exporters_json(&c.history))
}

async fn collectors(State(c): State<Console>) -> Json<Value> {
    super::count(&c.api, "collectors", axum::http::StatusCode::OK);
    Json(collectors_json(&c.history))
}

async fn health(State(c): State<Console>) -> Json<Value> {
    super::count(&c.api, "health", axum::http::StatusCode::OK);
    Json(health_json(&c))
}

async fn summary(State(c): State<Console>) -> Json<Value> {
    super::count(&c.api, "summary", axum::http::StatusCode::OK);
    let now = c.api.clock.now_ms();
    if c.history.watch(now) {
        let (api, hist) = (c.api.clone(), c.history.clone());
        let _ = tokio::task::spawn_blocking(move || hist.sample(&api)).await;
    }
    let s = &c.api;
    let all = s.pipeline.detection.attacks();
    let (active, recent): (Vec<_>, Vec<_>) = all.iter().partition(|a| a.end_ms.is_none());
    let (top, span) = c.history.top();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "now": crate::clock::rfc3339(now),
        "now_ms": now,
        "uptime_seconds": (now - s.started_ms) / 1000,
        "attacks": {
            "active": active.iter().map(|a| super::attack_json(s, a)).collect::<Vec<_>>(),
            "recent": recent.iter().take(RECENT_ATTACKS).map(|a| super::attack_json(s, a)).collect::<Vec<_>>(),
            "recent_total": recent.len(),
        },
        "top": top,
        "spark_seconds": span,
        "exporters": exporters_json(&c.history),
        "collectors": collectors_json(&c.history),
        "health": health_json(&c),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rates are the difference of two snapshots over their time apart: per collector
    /// socket, and per exporter (router address) with its sampling rate, templates and
    /// decode errors; an exporter on an sFlow collector has no templates (null).
    #[test]
    fn exporter_and_collector_rates_come_from_two_snapshots() {
        let m = Metrics::new();
        m.pretouch(&[("nf".into(), false)]);
        let (r1, r2) = (["nf", "192.0.2.1"], ["nf", "192.0.2.2"]);
        let sf = ["sf", "192.0.2.9"];
        m.flow_records.with_label_values(&["nf", "v9"]).inc_by(1000);
        m.exporter_records.with_label_values(&r1).inc_by(1000);
        m.exporter_records.with_label_values(&r2);
        m.exporter_records.with_label_values(&sf).inc_by(10);
        m.exporter_sampling_rate.with_label_values(&r1).set(512);
        m.exporter_templates_known.with_label_values(&r1).set(3);
        m.exporter_templates_known.with_label_values(&r2).set(1);
        let first = Snapshot::read(&m);
        m.flow_records.with_label_values(&["nf", "v9"]).inc_by(3000);
        m.exporter_records.with_label_values(&r1).inc_by(3000);
        m.exporter_records.with_label_values(&sf).inc_by(20);
        m.decode_errors
            .with_label_values(&["nf", "truncated"])
            .inc_by(4);
        m.exporter_decode_errors.with_label_values(&r2).inc_by(4);
        m.exporter_series_overflow.inc_by(7);
        let second = Snapshot::read(&m);
        let h = History::default();
        {
            let mut g = h.inner.lock();
            g.prev = Some((10_000, first));
            g.last = Some((12_000, second));
        }
        let v = collectors_json(&h);
        let c = &v[0];
        assert_eq!(c["collector"], "nf");
        assert_eq!(c["records_per_second"], 1500.0);
        assert_eq!(c["records_total"], 4000);
        assert_eq!(c["decode_errors_total"], 4);
        assert_eq!(c["decode_errors"]["truncated"], 4);
        assert_eq!(c["decode_errors_per_second"], 2.0);
        let v = exporters_json(&h);
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 3, "{v}");
        let row = |ip: &str| rows.iter().find(|r| r["exporter"] == ip).unwrap();
        let a = row("192.0.2.1");
        assert_eq!(a["collector"], "nf");
        assert_eq!(a["records_per_second"], 1500.0);
        assert_eq!(a["records_total"], 4000);
        assert_eq!(a["sampling_rate"], 512);
        assert_eq!(a["templates_known"], 3);
        assert_eq!(a["decode_errors_total"], 0);
        let b = row("192.0.2.2");
        assert_eq!(b["records_per_second"], 0.0);
        assert_eq!(b["sampling_rate"], Value::Null, "no rate announced yet");
        assert_eq!(b["decode_errors_total"], 4);
        assert_eq!(b["decode_errors_per_second"], 2.0);
        let s = row("192.0.2.9");
        assert_eq!(s["collector"], "sf");
        assert_eq!(s["records_per_second"], 10.0);
        assert_eq!(s["templates_known"], Value::Null);
        assert_eq!(h.snapshots().1.unwrap().1.exporter_series_overflow, 7.0);
    }

    /// The page works with no internet: the embedded assets name no other host (no CDN,
    /// font or image URL), and the page loads only its own script and style.
    #[test]
    fn assets_reference_nothing_outside_the_service() {
        for (name, text) in [
            ("index.html", INDEX_HTML),
            ("app.js", APP_JS),
            ("style.css", STYLE_CSS),
        ] {
            for bad in [
                "https://",
                "http://",
                "src=\"//",
                "href=\"//",
                "@import",
                "url(",
            ] {
                // The SVG namespace is a name, not a URL anything is loaded from.
                let hits = text
                    .match_indices(bad)
                    .filter(|(i, _)| !text[*i..].starts_with("http://www.w3.org/2000/svg"))
                    .count();
                assert_eq!(hits, 0, "{name} contains {bad:?}");
            }
        }
        let srcs: Vec<&str> = INDEX_HTML
            .split(['"', '\''])
            .filter(|t| t.starts_with('/') && !t.starts_with("/api/") && *t != "/metrics")
            .collect();
        assert_eq!(srcs, ["/console/style.css", "/console/app.js"]);
    }

    #[test]
    fn sparkline_history_is_bounded_and_zero_where_a_host_was_not_on_top() {
        let h = History::default();
        let a: IpAddr = "127.0.0.20".parse().unwrap();
        let b: IpAddr = "127.0.0.21".parse().unwrap();
        let e = |ip, pps| TopEntry {
            ip,
            pps,
            bps: 0,
            flows: 0,
        };
        {
            let mut g = h.inner.lock();
            for i in 0..(HISTORY as i64 + 50) {
                let top = if i % 2 == 0 {
                    vec![e(a, 10)]
                } else {
                    vec![e(a, 20), e(b, 5)]
                };
                g.samples.push_back(Sample {
                    t_ms: i * 1000,
                    top: [top, Vec::new()],
                });
                if g.samples.len() > HISTORY {
                    g.samples.pop_front();
                }
            }
        }
        let (v, span) = h.top();
        assert_eq!(span, HISTORY - 1);
        let rows = v["incoming"].as_array().unwrap();
        assert_eq!(rows.len(), 2);
        let spark_b = rows[1]["spark_pps"].as_array().unwrap();
        assert_eq!(spark_b.len(), HISTORY);
        assert_eq!(spark_b[spark_b.len() - 1], 5);
        assert_eq!(spark_b[spark_b.len() - 2], 0);
    }
}
