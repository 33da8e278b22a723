//! The Grafana dashboards and the Prometheus rules only query metrics flowguard exports.
//!
//! `dashboard_and_rule_metrics_are_registered` needs no running process: it builds
//! `Metrics::new()`, gives every vector one label set (the prometheus crate leaves
//! untouched vectors out of `gather()`), and compares the exposition names (counters as
//! named, histograms as `_bucket/_sum/_count`) with every `flowguard_*` selector in
//! `dashboards/**/*.json` and in the rule files, label names included.
//!
//! `live_metrics_have_dashboard_names` runs the real binary, feeds it NetFlow v5 and reads
//! `GET /metrics` back.

mod common;
use common::ops as ops_support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use flowguard::metrics::Metrics;
use ops_support::*;
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};

/// Labels every series gets from Prometheus itself, plus `le` of histogram buckets.
const SCRAPE_LABELS: &[&str] = &["instance", "job"];

fn touch<T: MetricVecBuilder>(v: &MetricVec<T>) {
    let n = v.desc().first().map_or(0, |d| d.variable_labels.len());
    let values = vec!["x"; n];
    let _ = v.with_label_values(&values);
}

/// Names (and their label names) that `Metrics::new()`'s registry exposes once every
/// vector has a series.
fn registered() -> BTreeMap<String, BTreeSet<String>> {
    let m = Metrics::new();
    for v in [
        &m.datagrams,
        &m.flow_records,
        &m.decode_errors,
        &m.datagrams_dropped,
        &m.template_misses,
        &m.records_skipped,
        &m.counter_samples,
        &m.host_evictions,
        &m.queue_full_drops,
        &m.cap_overflow,
        &m.traffic_packets,
        &m.traffic_bytes,
        &m.attacks_total,
        &m.attack_type_changes,
        &m.events_dropped,
        &m.mitigator_requests,
        &m.hook_events,
        &m.api_requests,
        &m.bgp_announcements,
        &m.bgp_withdrawals,
        &m.bgp_refusals,
        &m.bgp_errors,
        &m.exporter_records,
        &m.exporter_decode_errors,
        &m.cluster.lease_changes,
        &m.cluster.publish_errors,
        &m.cluster.bad_frames,
    ] {
        touch(v);
    }
    for v in [
        &m.socket_drops,
        &m.templates_known,
        &m.exporter_sampling_rate,
        &m.exporter_templates_known,
        &m.exporters_known,
        &m.attacks_active,
        &m.attack_host_pps,
        &m.attack_host_bps,
        &m.top_host_pps,
        &m.top_host_bps,
        &m.build_info,
    ] {
        touch(v);
    }
    touch(&m.mitigator_request_duration);
    let names = exposition_names(&m.render());

    // A metric added to src/metrics.rs as a vector but not touched above would be missing
    // from `gather()`, and a dashboard using it would be reported wrongly: catch that here.
    let src = include_str!("../src/metrics.rs");
    let declared: BTreeSet<String> = src
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.starts_with("flowguard_") && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
        .map(String::from)
        .collect();
    let untouched: Vec<&String> = declared
        .iter()
        .filter(|d| !names.contains_key(*d))
        .collect();
    assert!(
        untouched.is_empty(),
        "metrics declared in src/metrics.rs but not exposed by this test's registry (add the \
         new vector field to `registered()` in tests/ops_dashboards.rs): {untouched:?}"
    );
    names
}

fn all_queries() -> Vec<Query> {
    let mut q: Vec<Query> = dashboards()
        .iter()
        .flat_map(|(p, d)| dashboard_queries(p, d))
        .collect();
    q.extend(rule_queries());
    q
}

/// Every `flowguard_*` name the dashboards and rules use.
pub fn used_names() -> BTreeSet<String> {
    all_queries()
        .iter()
        .flat_map(|q| metric_uses(&q.expr))
        .map(|u| u.name)
        .collect()
}

#[test]
fn promql_scanner_finds_names_and_labels_but_not_label_values() {
    let u = metric_uses(
        r#"sum by (a) (rate(flowguard_x_total{job="flowguard_nope", b=~"c|d"}[5m])) / flowguard_y"#,
    );
    assert_eq!(
        u,
        vec![
            MetricUse {
                name: "flowguard_x_total".into(),
                labels: vec!["job".into(), "b".into()]
            },
            MetricUse {
                name: "flowguard_y".into(),
                labels: vec![]
            }
        ]
    );
    assert_eq!(
        grouping_labels("sum by (a, b) (x) / sum without(c) (y)"),
        vec!["a", "b", "c"]
    );
    assert_eq!(legend_labels("{{ip}} #{{rank}}"), vec!["ip", "rank"]);
    let names = exposition_names(
        "# HELP h_seconds x\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 0\n\
         # TYPE c_total counter\nc_total{a=\"1\",b=\"2\"} 3\n",
    );
    assert!(names.contains_key("h_seconds_count"));
    assert_eq!(
        names["c_total"].iter().cloned().collect::<Vec<_>>(),
        vec!["a", "b"]
    );
}

#[test]
fn dashboard_and_rule_metrics_are_registered() {
    let reg = registered();
    let queries = all_queries();
    assert!(
        queries.len() >= 20,
        "expected the dashboards and rules to hold many queries, found {}",
        queries.len()
    );
    let mut problems = Vec::new();
    for q in &queries {
        let uses = metric_uses(&q.expr);
        let mut known_labels: BTreeSet<String> =
            SCRAPE_LABELS.iter().map(|s| s.to_string()).collect();
        for u in &uses {
            match reg.get(&u.name) {
                None => problems.push(format!(
                    "{}: metric {} is not exported by flowguard (src/metrics.rs)",
                    q.origin, u.name
                )),
                Some(labels) => {
                    for l in &u.labels {
                        if !labels.contains(l) && !SCRAPE_LABELS.contains(&l.as_str()) {
                            problems.push(format!(
                                "{}: {} has no label {l:?} (it has {labels:?})",
                                q.origin, u.name
                            ));
                        }
                    }
                    known_labels.extend(labels.iter().cloned());
                }
            }
        }
        if uses.is_empty() && !q.expr.contains("up{") {
            problems.push(format!(
                "{}: query names no flowguard metric: {}",
                q.origin, q.expr
            ));
        }
        let mut grouped = grouping_labels(&q.expr);
        if let Some(l) = &q.legend {
            grouped.extend(legend_labels(l));
        }
        for l in grouped {
            if !known_labels.contains(&l) {
                problems.push(format!(
                    "{}: label {l:?} (grouping or legend) belongs to none of the metrics queried",
                    q.origin
                ));
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The topics issue 7 asks the dashboards to cover, each as a metric that must be queried.
#[test]
fn dashboards_cover_the_required_topics() {
    let dash_names: BTreeSet<String> = dashboards()
        .iter()
        .flat_map(|(p, d)| dashboard_queries(p, d))
        .flat_map(|q| metric_uses(&q.expr))
        .map(|u| u.name)
        .collect();
    let rule_names: BTreeSet<String> = rule_queries()
        .iter()
        .flat_map(|q| metric_uses(&q.expr))
        .map(|u| u.name)
        .collect();
    let topics: &[(&str, &[&str], &BTreeSet<String>)] = &[
        (
            "traffic by protocol",
            &[
                "flowguard_traffic_packets_total",
                "flowguard_traffic_bytes_total",
            ],
            &dash_names,
        ),
        (
            "top hosts",
            &["flowguard_top_host_pps", "flowguard_attack_host_pps"],
            &dash_names,
        ),
        (
            "active attacks and timeline",
            &["flowguard_attacks_active", "flowguard_attacks_total"],
            &dash_names,
        ),
        (
            "exporters: sampling and errors",
            &[
                "flowguard_exporter_sampling_rate",
                "flowguard_decode_errors_total",
                "flowguard_datagrams_total",
            ],
            &dash_names,
        ),
        (
            "pipeline drops",
            &[
                "flowguard_datagrams_dropped_total",
                "flowguard_socket_receive_drops",
                "flowguard_queue_full_drops_total",
            ],
            &dash_names,
        ),
        (
            "MITIGATOR calls by outcome",
            &["flowguard_mitigator_requests_total"],
            &dash_names,
        ),
        (
            "alerts",
            &[
                "flowguard_attacks_active",
                "flowguard_datagrams_total",
                "flowguard_mitigator_requests_total",
                "flowguard_socket_receive_drops",
                "flowguard_queue_full_drops_total",
            ],
            &rule_names,
        ),
    ];
    let mut missing = Vec::new();
    for (topic, names, set) in topics {
        for n in *names {
            if !set.contains(*n) {
                missing.push(format!("{topic}: nothing queries {n}"));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

/// Grafana structure: schema, unique uids and panel ids, panels inside the 24-column grid
/// and not overlapping, every query on the Prometheus datasource variable, and that
/// variable defaulting to the uid the provisioning gives the datasource.
#[test]
fn dashboards_are_well_formed_grafana() {
    let ds_yaml = read(&root().join("dashboards/grafana/provisioning/datasources/prometheus.yml"));
    let ds: serde_yaml_ng::Value = serde_yaml_ng::from_str(&ds_yaml).expect("datasource YAML");
    let prov_uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("provisioned datasource has a uid")
        .to_string();
    let all = dashboards();
    assert!(!all.is_empty(), "no dashboards under dashboards/");
    let mut uids = BTreeSet::new();
    let mut problems = Vec::new();
    for (p, d) in &all {
        let at = p.display().to_string();
        let sv = d["schemaVersion"].as_u64().unwrap_or(0);
        if !(36..=41).contains(&sv) {
            problems.push(format!("{at}: schemaVersion {sv}, expected 36..=41"));
        }
        let uid = d["uid"].as_str().unwrap_or("");
        if uid.is_empty() || uid.len() > 40 || !uids.insert(uid.to_string()) {
            problems.push(format!("{at}: uid {uid:?} empty, too long or not unique"));
        }
        if d["title"].as_str().unwrap_or("").is_empty() {
            problems.push(format!("{at}: no title"));
        }
        let vars = d["templating"]["list"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let dsvar = vars.iter().find(|v| v["type"] == "datasource");
        match dsvar {
            Some(v) if v["query"] == "prometheus" && v["current"]["value"] == prov_uid.as_str() => {}
            _ => problems.push(format!(
                "{at}: needs a datasource variable of type prometheus defaulting to uid {prov_uid:?}"
            )),
        }
        let dsvar_ref = format!(
            "${{{}}}",
            dsvar
                .and_then(|v| v["name"].as_str())
                .unwrap_or("DS_PROMETHEUS")
        );
        let ok_uid = |v: &serde_json::Value| {
            v["type"] == "prometheus"
                && (v["uid"] == dsvar_ref.as_str() || v["uid"] == prov_uid.as_str())
        };
        let panels = d["panels"].as_array().cloned().unwrap_or_default();
        assert!(!panels.is_empty(), "{at}: no panels");
        let mut ids = BTreeSet::new();
        let mut rects: Vec<(String, i64, i64, i64, i64)> = Vec::new();
        for pnl in &panels {
            let title = pnl["title"].as_str().unwrap_or("?").to_string();
            let id = pnl["id"].as_i64().unwrap_or(-1);
            if !ids.insert(id) {
                problems.push(format!("{at}/{title}: panel id {id} repeated"));
            }
            let g = &pnl["gridPos"];
            let (x, y, w, h) = (
                g["x"].as_i64().unwrap_or(-1),
                g["y"].as_i64().unwrap_or(-1),
                g["w"].as_i64().unwrap_or(0),
                g["h"].as_i64().unwrap_or(0),
            );
            if x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > 24 {
                problems.push(format!(
                    "{at}/{title}: gridPos {g} outside the 24-column grid"
                ));
            }
            for (t2, x2, y2, w2, h2) in &rects {
                if x < x2 + w2 && x2 < &(x + w) && y < y2 + h2 && y2 < &(y + h) {
                    problems.push(format!("{at}: panels {title:?} and {t2:?} overlap"));
                }
            }
            rects.push((title.clone(), x, y, w, h));
            if pnl["type"] == "row" {
                continue;
            }
            if !ok_uid(&pnl["datasource"]) {
                problems.push(format!(
                    "{at}/{title}: panel datasource {} is not the Prometheus variable",
                    pnl["datasource"]
                ));
            }
            let targets = pnl["targets"].as_array().cloned().unwrap_or_default();
            if targets.is_empty() {
                problems.push(format!("{at}/{title}: no queries"));
            }
            let mut refs = BTreeSet::new();
            for t in &targets {
                if t["expr"].as_str().unwrap_or("").is_empty() {
                    problems.push(format!("{at}/{title}: a target without expr"));
                }
                if !refs.insert(t["refId"].as_str().unwrap_or("").to_string()) {
                    problems.push(format!("{at}/{title}: refId repeated or missing"));
                }
                if !ok_uid(&t["datasource"]) {
                    problems.push(format!(
                        "{at}/{title}: target datasource {} is not the Prometheus variable",
                        t["datasource"]
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The real binary, fed NetFlow v5, exposes every name the dashboards and rules use.
/// Label sets appear once touched, so the service must pre-touch what it can (collector
/// names, directions, protocols, ranks, queues); the flood below starts an attack so the
/// per-host series exist too.
#[test]
fn live_metrics_have_dashboard_names() {
    let wanted = used_names();
    assert!(!wanted.is_empty());
    let mut fg = Flowguard::start();
    let missing_in = |text: &str| -> Vec<String> {
        let have = exposition_names(text);
        wanted
            .iter()
            .filter(|n| !have.contains_key(*n))
            .cloned()
            .collect()
    };
    let last = fg.poll_metrics(Duration::from_secs(10), |t| missing_in(t).is_empty());
    let Some(text) = last else {
        panic!(
            "flowguard never answered GET http://{}/metrics within 10 s; its output:\n{}",
            fg.api,
            fg.proc.log_tail()
        );
    };
    let missing = missing_in(&text);
    assert!(
        missing.is_empty(),
        "GET /metrics lacks {} name(s) the dashboards or alerts use (untouched vectors are \
         omitted by the prometheus crate: pre-touch them):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
    // The test collector's datagrams were counted under its configured name.
    assert!(
        text.lines()
            .any(|l| l.starts_with("flowguard_datagrams_total{")
                && l.contains(&format!("collector=\"{TEST_COLLECTOR}\""))
                && !l.ends_with(" 0")),
        "no non-zero flowguard_datagrams_total for collector {TEST_COLLECTOR}"
    );
}

/// The hand-built NetFlow v5 datagram the live tests send decodes, with an independent
/// decoder, to the records it was built from.
#[test]
fn hand_built_netflow_v5_decodes() {
    use netflow_parser::{NetflowPacket, NetflowParser};
    let recs = flood_records();
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let dg = netflow_v5(&recs, 42, now);
    assert_eq!(dg.len(), 24 + 48 * recs.len());
    let res = NetflowParser::default().parse_bytes(&dg);
    assert!(res.error.is_none(), "{:?}", res.error);
    let [NetflowPacket::V5(v5)] = res.packets.as_slice() else {
        panic!("expected one v5 packet, got {:?}", res.packets);
    };
    assert_eq!(v5.header.count as usize, recs.len());
    assert_eq!(v5.header.unix_secs, 1_800_000_000);
    assert_eq!(v5.header.flow_sequence, 42);
    assert_eq!(v5.flowsets.len(), recs.len());
    for (got, want) in v5.flowsets.iter().zip(&recs) {
        assert_eq!(got.src_addr, want.src);
        assert_eq!(got.dst_addr, want.dst);
        assert_eq!(got.d_pkts, want.packets);
        assert_eq!(got.d_octets, want.bytes);
        assert_eq!(got.dst_port, want.dst_port);
        assert_eq!(got.protocol_number, want.proto);
        assert_eq!(got.tcp_flags, want.tcp_flags);
        assert!(got.first < got.last && got.last == v5.header.sys_up_time);
    }
}

/// The configuration the live tests start flowguard with is one flowguard accepts.
#[test]
fn live_test_config_is_valid() {
    let api = "127.0.0.1:1".parse().expect("addr");
    let nf = "127.0.0.1:2".parse().expect("addr");
    let text = test_config(api, nf, std::path::Path::new("/tmp/x"));
    let cfg =
        flowguard::config::Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(cfg.api.listen, api);
    assert_eq!(cfg.collectors.len(), 1);
    assert_eq!(cfg.collectors[0].label(), TEST_COLLECTOR);
    assert_eq!(cfg.collectors[0].listen, nf);
}
