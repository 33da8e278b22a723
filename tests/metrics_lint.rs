//! `promtool check metrics` on everything a running flowguard publishes (after real
//! traffic, so per-exporter, per-attack and per-host series exist too).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

#[test]
fn promtool_accepts_every_published_metric() {
    if !common::require_tool("promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", common::free_tcp_port())
        .parse()
        .unwrap();
    let nf = common::free_udp_port();
    let cfg = format!(
        "[api]\nlisten = \"{api}\"\n[[collector]]\nprotocol = \"netflow\"\nlisten = \"127.0.0.1:{nf}\"\n\
         [[collector]]\nprotocol = \"sflow\"\nlisten = \"127.0.0.1:{}\"\n\
         [networks]\nprotected = [\"127.0.0.16/28\", \"127.0.0.32/27\"]\n\
         [[hostgroup]]\nname = \"default\"\nthreshold_pps = 3000\nban_time_seconds = 5\n[state]\ndir = \"{}\"\n",
        common::free_udp_port(),
        dir.path().display()
    );
    let _fg = common::start_flowguard(&cfg, dir.path(), api);
    common::send_capture(
        &common::vectors().join("v-softflowd-nf9.pcap"),
        format!("127.0.0.1:{nf}").parse().unwrap(),
    );
    // Wait until an attack is on, so the per-host attack series are published too.
    let body = common::wait_for(15, || {
        let (_, b) = common::http_get(api, "/metrics").ok()?;
        b.contains("flowguard_attack_host_pps{").then_some(b)
    })
    .expect("an attack's per-host series in /metrics");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every metric declared in `src/metrics.rs` is written (inc, set, observe, ...)
/// somewhere in `src/` outside its registration and pre-touch: a declared, documented and
/// alerted-on counter that nothing increments (as `flowguard_queue_full_drops_total` was)
/// fails here.
#[test]
fn every_declared_metric_is_written_somewhere_in_src() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let metrics = std::fs::read_to_string(root.join("src/metrics.rs")).unwrap();
    let decl = &metrics[metrics.find("pub struct Metrics {").unwrap()..];
    let decl = &decl[..decl.find("\n}\n").unwrap()];
    let fields: Vec<&str> = decl
        .lines()
        .filter_map(|l| {
            let l = l.trim().strip_prefix("pub ")?;
            let (name, ty) = l.split_once(": ")?;
            (ty.starts_with("Int") || ty.starts_with("Histogram")).then_some(name)
        })
        .collect();
    assert!(fields.len() > 30, "parsed {} fields", fields.len());
    let mut texts = vec![without_fn(&without_fn(&metrics, "new"), "pretouch")];
    let mut stack = vec![root.join("src")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("src/metrics.rs") {
                texts.push(std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    // Set once, at registration (labels carry the version).
    const SET_AT_REGISTRATION: &[&str] = &["build_info"];
    let unwritten: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|f| !SET_AT_REGISTRATION.contains(f))
        .filter(|f| !texts.iter().any(|t| writes(t, f)))
        .collect();
    assert!(
        unwritten.is_empty(),
        "declared in src/metrics.rs but never written in src/: {unwritten:?}"
    );
}

/// `s` without the body of `fn name(`.
fn without_fn(s: &str, name: &str) -> String {
    let Some(i) = s.find(&format!("fn {name}(")) else {
        return s.to_string();
    };
    let j = i + s[i..].find("\n    }\n").unwrap();
    format!("{}{}", &s[..i], &s[j..])
}

/// Does `text` write field `f`: `.f`, optionally `.with_label_values(...)`, then a write?
fn writes(text: &str, f: &str) -> bool {
    const WRITES: &[&str] = &[
        ".inc(",
        ".inc_by(",
        ".set(",
        ".dec(",
        ".observe(",
        ".start_timer(",
        ".add(",
        ".sub(",
    ];
    let pat = format!(".{f}");
    let mut from = 0;
    while let Some(i) = text[from..].find(&pat) {
        let mut rest = &text[from + i + pat.len()..];
        from += i + pat.len();
        if rest.starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            continue;
        }
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix(".with_label_values(") {
            // Skip to the matching parenthesis.
            let mut depth = 1;
            let mut end = None;
            for (k, c) in r.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = Some(k + 1);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            let Some(end) = end else { continue };
            rest = r[end..].trim_start();
        }
        if WRITES.iter().any(|w| rest.starts_with(w)) {
            return true;
        }
    }
    false
}

/// Every label value an alert rule matches on (`label="v"`, `label=~"a|b"`, `label!="v"`)
/// is one flowguard writes for that metric (`Metrics::pretouch` gives every fixed label
/// value its series): a rule matching a value nothing writes can never fire, as
/// `FlowguardHostTableFull` on `reason="cap"` could not.
#[test]
fn alert_rules_match_label_values_flowguard_writes() {
    let m = flowguard::metrics::Metrics::new();
    m.pretouch(&[("nf".to_string(), false), ("sf".to_string(), true)]);
    let text = m.render();
    // metric → label → values seen.
    let mut seen: std::collections::BTreeMap<
        String,
        std::collections::BTreeMap<String, Vec<String>>,
    > = Default::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.split_once('}') else {
            continue;
        };
        for kv in labels.split(',') {
            if let Some((k, v)) = kv.split_once('=') {
                seen.entry(name.to_string())
                    .or_default()
                    .entry(k.to_string())
                    .or_default()
                    .push(v.trim_matches('"').to_string());
            }
        }
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = std::fs::read_to_string(root.join("dashboards/prometheus/alerts.yml")).unwrap();
    let mut checked = 0;
    let mut bad = Vec::new();
    for line in rules.lines() {
        let Some(expr) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        // Each `name{matchers}` in the expression.
        let mut rest = expr;
        while let Some(open) = rest.find('{') {
            let name: String = rest[..open]
                .chars()
                .rev()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            let close = open + rest[open..].find('}').unwrap();
            let matchers = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if !name.starts_with("flowguard_") {
                continue;
            }
            let base = name.trim_end_matches("_total");
            for mt in matchers.split(',') {
                let (label, values) = match mt
                    .split_once("=~")
                    .or_else(|| mt.split_once("!="))
                    .or_else(|| mt.split_once('='))
                {
                    Some((l, v)) => (l.trim(), v.trim().trim_matches('"')),
                    None => continue,
                };
                let known = seen
                    .get(&name)
                    .or_else(|| seen.get(&format!("{base}_total")))
                    .and_then(|l| l.get(label));
                for v in values.split('|') {
                    checked += 1;
                    if !known.is_some_and(|k| k.iter().any(|x| x == v)) {
                        bad.push(format!("{name}{{{label}=\"{v}\"}} (written: {known:?})"));
                    }
                }
            }
        }
    }
    assert!(checked >= 3, "parsed {checked} matchers");
    assert!(
        bad.is_empty(),
        "alert rules match label values flowguard never writes: {bad:?}"
    );
}
