//! For the operations tests (`tests/ops_*.rs`): finding the metric names that dashboards
//! and alert rules use, and the real `flowguard` binary on loopback ports fed hand-built
//! NetFlow v5 datagrams (from [`super::datagrams`]).
//!
//! Every wait here is bounded; every child process is killed when its guard drops.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

#[allow(unused_imports)]
pub use super::Proc;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` (recursively) whose name ends with `ext`, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(ext) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------
// PromQL scanning

/// One use of a flowguard metric in a PromQL expression: its name and the label names its
/// selector matches on (`name{a="x", b=~"y"}` → a, b).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricUse {
    pub name: String,
    pub labels: Vec<String>,
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Metric selectors naming `flowguard_*` metrics in `expr`. Text inside string literals
/// (label values) is skipped, so `job="flowguard_x"` is not taken for a metric.
pub fn metric_uses(expr: &str) -> Vec<MetricUse> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = skip_string(&chars, i);
            continue;
        }
        if ident_char(c) && (i == 0 || !ident_char(chars[i - 1])) {
            let start = i;
            while i < chars.len() && ident_char(chars[i]) {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if !word.starts_with("flowguard_") {
                continue;
            }
            let mut labels = Vec::new();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            if j < chars.len() && chars[j] == '{' {
                j += 1;
                // Matchers: label op "value" [, ...] }
                loop {
                    while j < chars.len() && (chars[j] == ' ' || chars[j] == ',') {
                        j += 1;
                    }
                    if j >= chars.len() || chars[j] == '}' {
                        break;
                    }
                    let ls = j;
                    while j < chars.len() && ident_char(chars[j]) {
                        j += 1;
                    }
                    labels.push(chars[ls..j].iter().collect());
                    while j < chars.len() && !matches!(chars[j], '"' | '\'' | '`' | '}') {
                        j += 1;
                    }
                    if j < chars.len() && chars[j] != '}' {
                        j = skip_string(&chars, j);
                    }
                }
                i = j;
            }
            out.push(MetricUse { name: word, labels });
            continue;
        }
        i += 1;
    }
    out
}

fn skip_string(chars: &[char], start: usize) -> usize {
    let q = chars[start];
    let mut i = start + 1;
    while i < chars.len() && chars[i] != q {
        if chars[i] == '\\' && q != '`' {
            i += 1;
        }
        i += 1;
    }
    i + 1
}

/// Label names in `by (...)` / `without (...)` clauses and `{{label}}` legend templates.
pub fn grouping_labels(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for kw in ["by", "without"] {
        let mut rest = expr;
        while let Some(pos) = find_word(rest, kw) {
            let after = rest[pos + kw.len()..].trim_start();
            if let Some(inner) = after.strip_prefix('(') {
                if let Some(end) = inner.find(')') {
                    out.extend(
                        inner[..end]
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty()),
                    );
                }
            }
            rest = &rest[pos + kw.len()..];
        }
    }
    out
}

fn find_word(hay: &str, w: &str) -> Option<usize> {
    let b = hay.as_bytes();
    let mut from = 0;
    while let Some(p) = hay[from..].find(w) {
        let p = from + p;
        let before_ok = p == 0 || !ident_char(b[p - 1] as char);
        let after_ok = p + w.len() >= b.len() || !ident_char(b[p + w.len()] as char);
        if before_ok && after_ok {
            return Some(p);
        }
        from = p + w.len();
    }
    None
}

pub fn legend_labels(legend: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = legend;
    while let Some(s) = rest.find("{{") {
        let Some(e) = rest[s..].find("}}") else { break };
        out.push(rest[s + 2..s + e].trim().to_string());
        rest = &rest[s + e + 2..];
    }
    out
}

/// A PromQL expression found in a dashboard or rule file, with where it came from and
/// the legend that formats it (Grafana only).
#[derive(Debug, Clone)]
pub struct Query {
    pub origin: String,
    pub expr: String,
    pub legend: Option<String>,
}

/// Every PromQL expression in a Grafana dashboard: panel targets (rows included),
/// template-variable queries and annotation queries.
pub fn dashboard_queries(path: &Path, dash: &serde_json::Value) -> Vec<Query> {
    let mut out = Vec::new();
    walk_json(dash, &mut |obj, at| {
        if let Some(e) = obj.get("expr").and_then(|v| v.as_str()) {
            out.push(Query {
                origin: format!("{} {at}", path.display()),
                expr: e.to_string(),
                legend: obj
                    .get("legendFormat")
                    .and_then(|v| v.as_str())
                    .map(String::from),
            });
        }
        if let Some(d) = obj.get("definition").and_then(|v| v.as_str()) {
            out.push(Query {
                origin: format!("{} {at} (variable)", path.display()),
                expr: d.to_string(),
                legend: None,
            });
        }
    });
    out
}

fn walk_json(
    v: &serde_json::Value,
    f: &mut dyn FnMut(&serde_json::Map<String, serde_json::Value>, &str),
) {
    fn go(
        v: &serde_json::Value,
        at: &str,
        f: &mut dyn FnMut(&serde_json::Map<String, serde_json::Value>, &str),
    ) {
        match v {
            serde_json::Value::Object(m) => {
                let here = match m.get("title").and_then(|t| t.as_str()) {
                    Some(t) => format!("{at}/{t}"),
                    None => at.to_string(),
                };
                f(m, &here);
                for (_, c) in m {
                    go(c, &here, f);
                }
            }
            serde_json::Value::Array(a) => {
                for c in a {
                    go(c, at, f);
                }
            }
            _ => {}
        }
    }
    go(v, "", f)
}

pub fn dashboards() -> Vec<(PathBuf, serde_json::Value)> {
    files_with_ext(&root().join("dashboards"), ".json")
        .into_iter()
        .map(|p| {
            let v: serde_json::Value = serde_json::from_str(&read(&p))
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p, v)
        })
        .collect()
}

pub fn prometheus_dir() -> PathBuf {
    root().join("dashboards/prometheus")
}

/// Alert and recording rule expressions of `dashboards/prometheus/*.yml` rule files
/// (those with `groups:`), plus the series that the promtool unit tests feed in, so a
/// test cannot exercise a rule with a metric name flowguard does not have.
pub fn rule_queries() -> Vec<Query> {
    let mut out = Vec::new();
    for p in files_with_ext(&prometheus_dir(), ".yml") {
        let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(&p))
            .unwrap_or_else(|e| panic!("{}: not YAML: {e}", p.display()));
        if let Some(groups) = y.get("groups").and_then(|g| g.as_sequence()) {
            for g in groups {
                for r in g
                    .get("rules")
                    .and_then(|r| r.as_sequence())
                    .into_iter()
                    .flatten()
                {
                    let name = r
                        .get("alert")
                        .or_else(|| r.get("record"))
                        .and_then(|v| v.as_str())
                        .unwrap_or("?");
                    if let Some(e) = r.get("expr").and_then(|v| v.as_str()) {
                        out.push(Query {
                            origin: format!("{} rule {name}", p.display()),
                            expr: e.to_string(),
                            legend: None,
                        });
                    }
                }
            }
        }
        if let Some(tests) = y.get("tests").and_then(|t| t.as_sequence()) {
            for t in tests {
                let tname = t.get("name").and_then(|v| v.as_str()).unwrap_or("?");
                for s in t
                    .get("input_series")
                    .and_then(|s| s.as_sequence())
                    .into_iter()
                    .flatten()
                {
                    if let Some(series) = s.get("series").and_then(|v| v.as_str()) {
                        out.push(Query {
                            origin: format!("{} test {tname:?} input series", p.display()),
                            expr: series.to_string(),
                            legend: None,
                        });
                    }
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Prometheus text exposition

/// Names a scrape of `text` can answer a query for, with the label names seen on each.
/// A family announced by `# TYPE` counts even without samples; a histogram or summary
/// family also provides its `_bucket`/`_sum`/`_count` series.
pub fn exposition_names(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split_whitespace();
            let (Some(name), Some(kind)) = (it.next(), it.next()) else {
                continue;
            };
            out.entry(name.to_string()).or_default();
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                out.entry(format!("{name}{s}")).or_default();
            }
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some(name) = rest.split_whitespace().next() {
                out.entry(name.to_string()).or_default();
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..end];
            let entry = out.entry(name.to_string()).or_default();
            if line[end..].starts_with('{') {
                if let Some(close) = line[end..].find('}') {
                    for m in metric_uses_labels(&line[end + 1..end + close]) {
                        entry.insert(m);
                    }
                }
            }
        }
    }
    out
}

fn metric_uses_labels(inner: &str) -> Vec<String> {
    // Reuse the selector scanner on `x{inner}` by pretending it is a flowguard metric.
    metric_uses(&format!("flowguard_x{{{inner}}}"))
        .into_iter()
        .flat_map(|m| m.labels)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Processes and sockets

// The ops tests glob-import this module; not every one of them uses every name.
#[allow(unused_imports)]
pub use super::datagrams::{flood_records, netflow_v5, V5Record};
#[allow(unused_imports)]
pub use super::{free_tcp_port, free_udp_port, http_get, urlencode};

/// A running `flowguard run` with its API and one NetFlow collector on loopback ports it
/// chose (port 0), protecting 127.0.0.0/8.
pub struct Flowguard {
    pub proc: Proc,
    pub api: SocketAddr,
    pub netflow: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Collector name used in the test config; the metrics carry it as `collector`.
pub const TEST_COLLECTOR: &str = "nf-test";

/// The configuration the live tests run flowguard with: API and one NetFlow collector on
/// the given loopback addresses, 127.0.0.0/8 protected, a 1000 pps threshold.
pub fn test_config(api: SocketAddr, netflow: SocketAddr, state: &Path) -> String {
    format!(
        r#"[api]
listen = "{api}"

[[collector]]
name = "{TEST_COLLECTOR}"
protocol = "netflow"
listen = "{netflow}"

[networks]
protected = ["127.0.0.0/8"]

[[hostgroup]]
name = "default"
threshold_pps = 1000
ban_time_seconds = 5

[state]
dir = "{}"
"#,
        state.display()
    )
}

impl Flowguard {
    /// Starts it on port 0 for the API and the collector and reads the ports it
    /// announced (see [`super::Flowguard`]).
    pub fn start() -> Flowguard {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let fg = super::Flowguard::start(&test_config(any, any, &state), dir.path());
        let netflow = fg.collector(TEST_COLLECTOR);
        Flowguard {
            api: fg.api,
            proc: fg.proc,
            netflow,
            dir,
        }
    }

    /// Sends one datagram of flood records (see [`flood_records`]) to the collector.
    pub fn send_flood(&self, sock: &UdpSocket, seq: u32) {
        let dg = netflow_v5(&flood_records(), seq, SystemTime::now());
        let _ = sock.send_to(&dg, self.netflow);
    }

    /// Polls `GET /metrics` until `done(text)` holds or `limit` passes, sending a flood
    /// datagram before each poll. Returns the last exposition seen (if any).
    pub fn poll_metrics(&mut self, limit: Duration, done: impl Fn(&str) -> bool) -> Option<String> {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
        let t0 = Instant::now();
        let mut last = None;
        let mut seq = 0u32;
        while t0.elapsed() < limit {
            if let Some(e) = self.proc.exited() {
                panic!("{e}");
            }
            self.send_flood(&sock, seq);
            seq = seq.wrapping_add(flood_records().len() as u32);
            if let Ok((200, body)) = http_get(self.api, "/metrics") {
                let ok = done(&body);
                last = Some(body);
                if ok {
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        last
    }
}
