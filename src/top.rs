//! `flowguard top --api URL`: the console's picture in a terminal (active attacks with
//! their mitigation, recent attacks, top hosts with a sparkline, exporters, health),
//! redrawn every second from a running service's `GET /api/v1/summary`, the same JSON the
//! web console reads. Plain ANSI escapes and termios (no terminal library): it works over
//! SSH in any VT100-like terminal. `q` (or Ctrl-C, Esc) quits and restores the terminal.

use std::io::{IsTerminal, Read, Write};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum TopError {
    #[error("--api {0}: not an http:// or https:// URL")]
    Url(String),
    #[error("HTTP client: {0}")]
    Client(String),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

#[derive(clap::Args, Debug, Clone)]
pub struct TopArgs {
    /// Base URL of the service's API listener.
    #[arg(long, default_value = "http://127.0.0.1:9909", value_name = "URL")]
    pub api: String,
    /// Refresh period in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(200..=60_000))]
    pub interval_ms: u64,
    /// Print one frame (no screen control) and exit: for scripts.
    #[arg(long)]
    pub once: bool,
}

/// The terminal in "read keys one by one, no echo" mode and the alternate screen, put
/// back as it was on drop (also when a frame fails).
struct RawTerminal {
    saved: Option<libc::termios>,
}

impl RawTerminal {
    fn enter() -> RawTerminal {
        let mut saved = None;
        if std::io::stdin().is_terminal() {
            // SAFETY: termios is plain data; tcgetattr fills it or fails.
            let mut t: libc::termios = unsafe { std::mem::zeroed() };
            if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } == 0 {
                saved = Some(t);
                let mut raw = t;
                // Keys arrive at once, unechoed; Ctrl-C arrives as a byte so the terminal
                // is restored by us rather than left raw by a signal.
                raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG);
                raw.c_cc[libc::VMIN] = 1;
                raw.c_cc[libc::VTIME] = 0;
                // SAFETY: raw is a valid termios derived from the current one.
                unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) };
            }
        }
        // Alternate screen, hidden cursor.
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        RawTerminal { saved }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(t) = self.saved {
            // SAFETY: restores the attributes read in `enter`.
            unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
        }
    }
}

/// Columns and rows of the terminal (80x24 when unknown).
fn size() -> (usize, usize) {
    // SAFETY: winsize is plain data; the ioctl fills it or fails.
    let mut w: libc::winsize = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut w) } == 0;
    if ok && w.ws_col > 0 && w.ws_row > 0 {
        (usize::from(w.ws_col), usize::from(w.ws_row))
    } else {
        (80, 24)
    }
}

/// What the last fetch gave.
pub enum Status {
    Live,
    Offline(String),
}

pub fn run(a: &TopArgs) -> Result<(), TopError> {
    let base = a.api.trim_end_matches('/').to_string();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(TopError::Url(a.api.clone()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(a.interval_ms.clamp(500, 5000)))
        .build()
        .map_err(|e| TopError::Client(e.to_string()))?;
    let url = format!("{base}/api/v1/summary");
    let fetch = || -> Result<Value, String> {
        rt.block_on(async {
            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            if !r.status().is_success() {
                return Err(format!("HTTP {}", r.status()));
            }
            r.json::<Value>().await.map_err(|e| e.to_string())
        })
    };
    if a.once {
        let (w, h) = size();
        return match fetch() {
            Ok(v) => {
                print!("{}", render(&v, &base, &Status::Live, w, h.max(60)));
                Ok(())
            }
            Err(e) => Err(TopError::Client(format!("{url}: {e}"))),
        };
    }

    // Keys come from a thread: a blocking read of stdin, one byte at a time.
    let (tx, rx) = mpsc::channel::<u8>();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let mut stdin = std::io::stdin();
        while let Ok(1) = stdin.read(&mut b) {
            if tx.send(b[0]).is_err() {
                break;
            }
        }
    });
    let _term = RawTerminal::enter();
    let mut last = Value::Null;
    loop {
        let status = match fetch() {
            Ok(v) => {
                last = v;
                Status::Live
            }
            Err(e) => Status::Offline(e),
        };
        let (w, h) = size();
        let frame = render(&last, &base, &status, w, h);
        let mut out = std::io::stdout().lock();
        // Home, draw, clear what is left of the old frame.
        write!(out, "\x1b[H{}\x1b[J", frame.replace('\n', "\x1b[K\r\n"))?;
        out.flush()?;
        drop(out);
        match rx.recv_timeout(Duration::from_millis(a.interval_ms)) {
            Ok(b'q' | b'Q' | 0x03 | 0x1b) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdin closed: nothing can ask us to quit, keep refreshing.
                std::thread::sleep(Duration::from_millis(a.interval_ms));
            }
            _ => {}
        }
    }
    Ok(())
}

fn si(n: f64, unit: &str) -> String {
    for (d, s) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if n >= d {
            let p = if n >= 10.0 * d { 0 } else { 1 };
            return format!("{:.*}{s}{unit}", p, n / d);
        }
    }
    format!("{}{unit}", n.round())
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// "incoming" → "inc": by characters, so no value can split one.
fn short(s: &str) -> String {
    s.chars().take(3).collect()
}

fn dur(ms: f64) -> String {
    let s = (ms / 1000.0).max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// The last `n` values as block characters, scaled to their maximum.
pub fn sparkline(v: &[Value], n: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let v: Vec<f64> = v.iter().map(num).collect();
    let v = &v[v.len().saturating_sub(n)..];
    let max = v.iter().copied().fold(0.0, f64::max);
    v.iter()
        .map(|x| {
            if max <= 0.0 {
                BARS[0]
            } else {
                BARS[((x / max) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// What MITIGATOR acknowledged for one switch, in words (mitigation.switches[].state).
fn switch_ack(state: &str) -> &str {
    match state {
        "not_ours" => "on(not ours)",
        "failed_retrying" => "FAILED, retrying",
        "failed" => "FAILED",
        "switching_off" => "switching off",
        "dry_run" => "dry run",
        s => s,
    }
}

/// Per switch (and BGP route): `name wanted->acknowledged`, with the switch's last error.
fn mitigation(a: &Value) -> String {
    let m = &a["mitigation"];
    if m.is_null() {
        return "no mitigation state".into();
    }
    let empty = Vec::new();
    let mut parts: Vec<String> = Vec::new();
    for s in m["switches"].as_array().unwrap_or(&empty) {
        let name = match text(&s["name"]) {
            "toggle" => format!("policy {}", s["policy"]),
            n => n.to_string(),
        };
        let mut p = format!(
            "{name} {}->{}",
            text(&s["wanted"]),
            switch_ack(text(&s["state"]))
        );
        if let Some(e) = s["error"].as_str() {
            p.push_str(&format!(" ({e})"));
        }
        parts.push(p);
    }
    for r in m["routes"].as_array().unwrap_or(&empty) {
        let mut p = format!(
            "{} {} {}",
            text(&r["kind"]),
            text(&r["prefix"]),
            text(&r["state"])
        );
        if let Some(e) = r["reason"].as_str() {
            p.push_str(&format!(" ({e})"));
        }
        parts.push(p);
    }
    let mut s = parts.join(", ");
    let carried = m["switches"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .any(|x| x["error"] == m["last_error"]);
    if let Some(e) = m["last_error"].as_str().filter(|_| !carried) {
        s.push_str(&format!(" [{}: {e}]", text(&m["state"])));
    }
    if s.is_empty() {
        s = text(&m["state"]).to_string();
    }
    s
}

fn kind(a: &Value) -> String {
    let mut s = format!("{} {}", text(&a["attack_type"]), text(&a["protocol"]));
    if let Some(v) = a["vectors"].as_array().filter(|v| !v.is_empty()) {
        let names: Vec<String> = v
            .iter()
            .map(|x| {
                x.as_str()
                    .or_else(|| x["name"].as_str())
                    .or_else(|| x["type"].as_str())
                    .map_or_else(|| x.to_string(), str::to_string)
            })
            .collect();
        s.push_str(&format!(" [{}]", names.join(",")));
    }
    s
}

/// One frame, lines cut to `width` and at most `height` lines. Pure: the tests call it.
pub fn render(d: &Value, api: &str, status: &Status, width: usize, height: usize) -> String {
    let mut l: Vec<String> = Vec::new();
    let state = match status {
        Status::Live => format!("live {}", text(&d["now"])),
        Status::Offline(e) => format!("OFFLINE, retrying ({e})"),
    };
    l.push(format!(
        "flowguard top  {api}  {state}  up {}  q quits",
        dur(num(&d["uptime_seconds"]) * 1000.0)
    ));
    let now = num(&d["now_ms"]);
    let empty = Vec::new();
    let active = d["attacks"]["active"].as_array().unwrap_or(&empty);
    l.push(String::new());
    l.push(format!("ACTIVE ATTACKS ({})", active.len()));
    if active.is_empty() {
        l.push("  none".into());
    } else {
        l.push(format!(
            "  {:<39} {:<4} {:<12} {:<24} {:>15} {:>17} {:>8}  MITIGATION (wanted->MITIGATOR)",
            "ADDRESS", "DIR", "HOSTGROUP", "TYPE", "PPS NOW/PEAK", "BIT/S NOW/PEAK", "AGE"
        ));
    }
    for a in active {
        l.push(format!(
            "  {:<39} {:<4} {:<12} {:<24} {:>15} {:>17} {:>8}  {}",
            text(&a["ip"]),
            short(text(&a["direction"])),
            text(&a["hostgroup"]),
            kind(a),
            format!(
                "{}/{}",
                si(num(&a["current"]["pps"]), ""),
                si(num(&a["peak_pps"]), "")
            ),
            format!(
                "{}/{}",
                si(num(&a["current"]["bps"]), ""),
                si(num(&a["peak_bps"]), "")
            ),
            dur(now - num(&a["start_ms"])),
            mitigation(a)
        ));
    }
    let recent = d["attacks"]["recent"].as_array().unwrap_or(&empty);
    l.push(String::new());
    l.push(format!(
        "RECENT ATTACKS ({}, newest 5; reports at /api/v1/attacks/ID/report.txt)",
        d["attacks"]["recent_total"]
            .as_u64()
            .unwrap_or(recent.len() as u64)
    ));
    for a in recent.iter().take(5) {
        l.push(format!(
            "  {:<39} {:<4} {:<24} peak {:>7} pps  {:>8}  {}  id {}",
            text(&a["ip"]),
            short(text(&a["direction"])),
            kind(a),
            si(num(&a["peak_pps"]), ""),
            dur(num(&a["end_ms"]) - num(&a["start_ms"])),
            text(&a["end"]),
            text(&a["id"])
        ));
    }
    for dir in ["incoming", "outgoing"] {
        let rows = d["top"][dir].as_array().unwrap_or(&empty);
        l.push(String::new());
        l.push(format!(
            "TOP HOSTS {} (last {}s)",
            dir.to_uppercase(),
            d["spark_seconds"]
        ));
        if rows.is_empty() {
            l.push("  none".into());
        }
        for h in rows.iter().take(5) {
            l.push(format!(
                "  {:<39} {:>8} pps {:>10} {:>7} flows/s  {}",
                text(&h["ip"]),
                si(num(&h["pps"]), ""),
                si(num(&h["bps"]), "b/s"),
                si(num(&h["flows_per_second"]), ""),
                sparkline(h["spark_pps"].as_array().unwrap_or(&empty), 40)
            ));
        }
    }
    l.push(String::new());
    let exporters = d["exporters"].as_array().unwrap_or(&empty);
    l.push(String::new());
    l.push(format!("EXPORTERS ({})", exporters.len()));
    if exporters.is_empty() {
        l.push("  none yet".into());
    } else {
        l.push(format!(
            "  {:<39} {:<28} {:>9} {:>10} {:>9} {:>13}",
            "EXPORTER", "COLLECTOR", "REC/S", "SAMPLING", "TEMPLATES", "DECODE ERRORS"
        ));
    }
    for e in exporters {
        let rate = e["sampling_rate"]
            .as_i64()
            .map_or_else(|| "-".to_string(), |r| format!("1:{r}"));
        let templates = e["templates_known"]
            .as_i64()
            .map_or_else(|| "-".to_string(), |t| t.to_string());
        l.push(format!(
            "  {:<39} {:<28} {:>9} {:>10} {:>9} {:>13}",
            text(&e["exporter"]),
            text(&e["collector"]),
            si(num(&e["records_per_second"]), ""),
            rate,
            templates,
            e["decode_errors_total"]
        ));
    }
    let h = &d["health"];
    if h["sampled"].as_bool() == Some(true) {
        let sum = |v: &Value| -> u64 {
            v.as_object()
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0)
        };
        l.push(String::new());
        l.push(format!(
            "HEALTH  socket drops {}  datagrams dropped {}  queue drops {}  detection pass {:.2} ms  MITIGATOR {}  pending switch changes {}",
            h["socket_drops_total"],
            h["datagrams_dropped_total"],
            sum(&h["queue_full_drops"]) + sum(&h["attack_events_dropped"]),
            num(&h["detection_pass_ms"]),
            text(&h["mitigator"]["reachability"]),
            h["mitigator"]["pending_operations"]
        ));
    }
    l.truncate(height.max(1));
    let mut out = String::new();
    for line in l {
        out.extend(line.chars().take(width));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frame_names_the_attack_its_mitigation_and_fits_the_width() {
        let d = json!({
            "now": "2026-01-01T00:00:10Z", "now_ms": 10_000, "uptime_seconds": 10,
            "attacks": {"active": [{"ip": "127.0.0.20", "direction": "incoming", "hostgroup": "default",
                "attack_type": "syn_flood", "protocol": "tcp", "current": {"pps": 5000, "bps": 2_000_000},
                "peak_pps": 6700, "peak_bps": 2_100_000, "start_ms": 4000, "active": true,
                "vectors": ["syn"],
                "mitigation": {"state": "failed", "policy": 1, "countermeasures": ["tcp", "sorb"],
                    "last_error": "HTTP 403: injected fault",
                    "switches": [
                        {"name": "toggle", "policy": 1, "wanted": "on", "state": "on", "error": null},
                        {"name": "tcp", "policy": 1, "wanted": "on", "state": "failed_retrying", "error": "timeout"},
                        {"name": "sorb", "policy": 1, "wanted": "on", "state": "failed", "error": "HTTP 403: injected fault"}]}}],
                "recent": [], "recent_total": 0},
            "top": {"incoming": [{"ip": "127.0.0.20", "pps": 5000, "bps": 2e6, "flows_per_second": 10, "spark_pps": [0, 1, 5000]}], "outgoing": []},
            "spark_seconds": 3, "health": {"sampled": false},
            "exporters": [
                {"exporter": "192.0.2.1", "collector": "nf", "records_per_second": 1500.0, "sampling_rate": 512,
                 "templates_known": 3, "decode_errors_total": 0},
                {"exporter": "192.0.2.9", "collector": "sf", "records_per_second": 0.0, "sampling_rate": null,
                 "templates_known": null, "decode_errors_total": 4}]
        });
        let f = render(&d, "http://x", &Status::Live, 300, 100);
        assert!(f.contains("127.0.0.20"), "{f}");
        assert!(f.contains("syn_flood tcp [syn]"), "{f}");
        assert!(
            f.contains(
                "policy 1 on->on, tcp on->FAILED, retrying (timeout), sorb on->FAILED (HTTP 403: injected fault)"
            ),
            "each switch with its own state and error: {f}"
        );
        assert!(
            !f.contains("[failed"),
            "the error is carried by its switch: {f}"
        );
        let ex: Vec<&str> = f.lines().filter(|l| l.contains("192.0.2.")).collect();
        assert_eq!(ex.len(), 2, "one row per exporter: {f}");
        assert!(
            ex[0].contains(" nf ") && ex[0].contains("1.5k") && ex[0].contains("1:512"),
            "{}",
            ex[0]
        );
        assert!(
            ex[1].contains(" sf ") && ex[1].contains(" - ") && ex[1].trim_end().ends_with('4'),
            "{}",
            ex[1]
        );
        assert!(f.contains("6s"), "age from the service's clock: {f}");
        assert!(f.contains("▁▁█"), "{f}");
        let narrow = render(&d, "http://x", &Status::Offline("refused".into()), 40, 5);
        assert_eq!(narrow.lines().count(), 5);
        assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
        assert!(narrow.contains("OFFLINE"), "{narrow}");
    }
}
