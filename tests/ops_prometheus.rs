//! The Prometheus files under `dashboards/prometheus/` work with a real Prometheus:
//! `promtool` validates the rules and the configuration and runs the alert unit tests, and
//! the Debian `prometheus` binary scrapes a running flowguard and answers a query for one
//! of its series. promtool and prometheus come from the Debian package `prometheus`.

mod common;
use common::ops as ops_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ops_support::*;

fn tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or(None);
    found.unwrap_or_else(|| {
        panic!(
            "`{name}` is not installed: it comes with the Debian package `prometheus` \
             (apt-get install -y prometheus)"
        )
    })
}

fn promtool(args: &[&str], cwd: &Path) -> String {
    let out = Command::new(tool("promtool"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run promtool: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

/// Alert names declared in alerts.yml.
fn alert_names() -> Vec<String> {
    let y: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&prometheus_dir().join("alerts.yml"))).expect("alerts.yml");
    y["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[test]
fn promtool_checks_rules_config_and_alert_unit_tests() {
    let dir = prometheus_dir();
    let names = alert_names();
    assert!(names.len() >= 5, "too few alerts: {names:?}");
    let out = promtool(&["check", "rules", "alerts.yml"], &dir);
    assert!(
        out.contains(&format!("{} rules found", names.len())),
        "promtool saw a different number of rules than alerts.yml declares ({}):\n{out}",
        names.len()
    );
    promtool(&["check", "config", "prometheus.yml"], &dir);
    promtool(&["test", "rules", "alerts_test.yml"], &dir);

    // Every alert is exercised by the unit tests, both firing and silent.
    let t: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&read(&dir.join("alerts_test.yml"))).expect("alerts_test.yml");
    let cases: Vec<(String, bool)> = t["tests"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| {
            g["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| {
            let fires = c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty());
            (c["alertname"].as_str().unwrap_or("").to_string(), fires)
        })
        .collect();
    let mut gaps = Vec::new();
    for n in &names {
        for fires in [true, false] {
            if !cases.iter().any(|(a, f)| a == n && *f == fires) {
                gaps.push(format!(
                    "{n}: no case where it {}",
                    if fires { "fires" } else { "stays silent" }
                ));
            }
        }
    }
    assert!(gaps.is_empty(), "alerts_test.yml: {gaps:#?}");
}

/// promtool must reject a broken rule, or the check above proves nothing.
#[test]
fn promtool_rejects_a_broken_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = read(&prometheus_dir().join("alerts.yml")).replacen(
        "expr: up{job=\"flowguard\"} == 0",
        "expr: up{job=\"flowguard\" == 0",
        1,
    );
    std::fs::write(dir.path().join("alerts.yml"), bad).expect("write");
    let out = Command::new(tool("promtool"))
        .args(["check", "rules", "alerts.yml"])
        .current_dir(dir.path())
        .output()
        .expect("run promtool");
    assert!(
        !out.status.success(),
        "promtool accepted a broken expression"
    );
}

/// A real Prometheus (the Debian binary) scrapes a running flowguard every second, loads
/// alerts.yml, and answers `flowguard_build_info` through its HTTP API.
#[test]
fn prometheus_scrapes_a_running_flowguard() {
    let prom_bin = tool("prometheus");
    let mut fg = Flowguard::start();
    let first = fg.poll_metrics(Duration::from_secs(10), |t| {
        t.contains("flowguard_build_info")
    });
    assert!(
        first.is_some(),
        "flowguard never answered GET http://{}/metrics within 10 s; its output:\n{}",
        fg.api,
        fg.proc.log_tail()
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let rules = prometheus_dir().join("alerts.yml");
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {rules:?}\n\
         scrape_configs:\n  - job_name: flowguard\n    static_configs:\n      - targets: [\"{}\"]\n",
        fg.api
    );
    let cfg_path = dir.path().join("prometheus.yml");
    std::fs::write(&cfg_path, cfg).expect("write prometheus.yml");
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let mut cmd = Command::new(prom_bin);
    cmd.arg(format!("--config.file={}", cfg_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .current_dir(dir.path());
    let mut prom = Proc::spawn("prometheus", cmd, dir.path().join("prometheus.log"));

    let query = format!("/api/v1/query?query={}", urlencode("flowguard_build_info"));
    let t0 = Instant::now();
    let mut last = String::new();
    let mut found = None;
    while t0.elapsed() < Duration::from_secs(20) {
        if let Some(e) = prom.exited() {
            panic!("{e}");
        }
        if let Some(e) = fg.proc.exited() {
            panic!("{e}");
        }
        if let Ok((200, body)) = http_get(web, &query) {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            if let Some(series) = v["data"]["result"].as_array().and_then(|r| r.first()) {
                found = Some(series.clone());
                break;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let Some(series) = found else {
        panic!(
            "Prometheus returned no flowguard_build_info within 20 s (last answer: {last});\n\
             prometheus log:\n{}",
            prom.log_tail()
        );
    };
    assert_eq!(series["metric"]["job"], "flowguard", "{series}");
    assert_eq!(series["metric"]["instance"], fg.api.to_string(), "{series}");
    assert_eq!(
        series["metric"]["version"],
        env!("CARGO_PKG_VERSION"),
        "{series}"
    );
    assert_eq!(series["value"][1], "1", "{series}");

    // The alert rules loaded and evaluate against the live data without errors.
    let (st, body) = http_get(web, "/api/v1/rules").expect("GET /api/v1/rules");
    assert_eq!(st, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("rules JSON");
    let loaded: Vec<String> = v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["name"].as_str().map(String::from))
        .collect();
    let mut want = alert_names();
    want.sort();
    let mut got = loaded.clone();
    got.sort();
    assert_eq!(
        got, want,
        "Prometheus loaded other rules than alerts.yml declares"
    );
    let errors: Vec<String> = v["data"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["health"] == "err")
        .map(|r| format!("{}: {}", r["name"], r["lastError"]))
        .collect();
    assert!(errors.is_empty(), "rules failing on live data: {errors:?}");
}
