//! The operator console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver from here: flowguard and mitigator-sim run as
//! real processes, the shared softflowd NetFlow v9 capture is sent to the collector, and
//! the page must show the attack within 2 s of the API knowing it, with its type and the
//! countermeasures' states; move it to "recent" when it ends; open its report in one
//! click; log no JavaScript error; say "offline" while the service is down and come back
//! by itself when it restarts. Per switch: the simulator refuses one countermeasure
//! (`sorb`, fault injection), so one attack shows its policy protection acknowledged "on"
//! and `sorb` "failed" with MITIGATOR's error, while another shows all its switches on.
//! Exporters are rows per router address; top hosts carry sparklines; health shows drops,
//! detection pass time and MITIGATOR reachability; the page loads nothing from anywhere
//! but the service. Screenshots go to `target/tmp/console-*.png`.
//!
//! Skips (loudly) only when chromium or chromedriver is not installed.

mod common;
use common::sim as support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_port, http_get, start_flowguard, wait_for};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn config(api: SocketAddr, nf: u16, sim: &support::Sim, state: &Path) -> String {
    format!(
        r#"
[api]
listen = "{api}"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:{nf}"
[networks]
protected = ["127.0.0.16/28", "127.0.0.32/27"]
[[hostgroup]]
name = "default"
threshold_pps = 3000
threshold_mbps = 100000
ban_time_seconds = 5
[mitigator]
url = "{}"
username = "{}"
password = "{}"
default_policy = 1
[state]
dir = "{}"
"#,
        sim.base,
        support::USER,
        support::PASS,
        state.display()
    )
}

/// A minimal W3C WebDriver client over chromedriver's HTTP API.
struct Driver {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
    session: String,
}

impl Driver {
    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        self.raw(method, &url, body)
    }

    fn raw(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Value {
        self.rt.block_on(async {
            let mut rq = self.http.request(method, url);
            if let Some(b) = body {
                rq = rq.json(&b);
            }
            match rq.send().await {
                Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
                Err(e) => json!({"value": {"error": "transport", "message": e.to_string()}}),
            }
        })
    }

    fn exec(&self, script: &str) -> Value {
        let v = self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        );
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        let v = self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
        assert!(v["value"].is_null(), "navigate to {url}: {v}");
    }

    /// Clicks the first element matching `css`, retrying while the page re-renders it.
    fn click(&self, css: &str) {
        for _ in 0..20 {
            let v = self.call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            let id = v["value"]
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .map(str::to_string);
            if let Some(id) = id.filter(|_| v["value"]["error"].is_null()) {
                let r = self.call(
                    reqwest::Method::POST,
                    &format!("/element/{id}/click"),
                    Some(json!({})),
                );
                if r["value"].is_null() {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not click {css}");
    }

    fn screenshot(&self, name: &str) {
        let v = self.call(reqwest::Method::GET, "/screenshot", None);
        let b64 = v["value"].as_str().expect("screenshot data");
        let png = base64_decode(b64);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }

    /// The browser's console log since the last call (chromedriver's log endpoint).
    fn browser_log(&self) -> Vec<Value> {
        let v = self.call(
            reqwest::Method::POST,
            "/se/log",
            Some(json!({"type": "browser"})),
        );
        v["value"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("chromedriver gave no browser log: {v}"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ends the session: chromedriver quits the browser it started.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = self.raw(reqwest::Method::DELETE, &url, None);
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(val) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

/// Starts chromedriver on a free loopback port and opens a headless Chromium session with
/// a fresh profile.
fn start_browser(profile: &Path) -> (common::Child, Driver) {
    let port = free_tcp_port();
    let child = common::spawn(
        "chromedriver",
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let mut d = Driver {
        rt,
        http,
        base: base.clone(),
        session: String::new(),
    };
    wait_for(20, || {
        let v = d.raw(reqwest::Method::GET, &format!("{base}/status"), None);
        v["value"]["ready"].as_bool().filter(|r| *r)
    })
    .expect("chromedriver ready");
    let caps = json!({"capabilities": {"alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--disable-background-networking", "--disable-component-update",
                     "--disable-sync", "--no-first-run", "--window-size=1400,1250",
                     format!("--user-data-dir={}", profile.display())],
        },
        "goog:loggingPrefs": {"browser": "ALL"},
    }}});
    let v = d.raw(
        reqwest::Method::POST,
        &format!("{base}/session"),
        Some(caps),
    );
    d.session = v["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
        .to_string();
    (child, d)
}

const ROWS: &str = r#"
const rows = (sel) => Array.from(document.querySelectorAll(sel + ' tbody tr')).map((tr) => ({
  ip: tr.dataset.ip, id: tr.dataset.id, text: tr.textContent,
  cms: Array.from(tr.querySelectorAll('.cm')).map((c) => ({name: c.dataset.cm, kind: c.dataset.kind,
    wanted: c.dataset.wanted, state: c.dataset.state, text: c.textContent})),
  errs: Array.from(tr.querySelectorAll('.err')).map((e) => ({name: e.dataset.cm, text: e.textContent})),
}));
const origin = location.origin + '/';
return {active: rows('#active'), recent: rows('#recent'),
        conn: document.getElementById('conn').dataset.state,
        health: document.getElementById('health').textContent,
        top: Array.from(document.querySelectorAll('#top-incoming tbody tr')).map((tr) => tr.dataset.ip),
        sparks: Array.from(document.querySelectorAll('#top-incoming tbody tr svg.spark polyline'))
          .map((l) => l.getAttribute('points').split(' ').length),
        exporters: Array.from(document.querySelectorAll('#exporters tbody tr')).map((tr) => ({
          exporter: tr.dataset.exporter, collector: tr.dataset.collector,
          cells: Array.from(tr.cells).map((c) => c.textContent)})),
        collectors: Array.from(document.querySelectorAll('#collectors tbody tr')).map((tr) => tr.dataset.collector),
        foreign: performance.getEntriesByType('resource').map((e) => e.name).concat(
          Array.from(document.querySelectorAll('[src],[href]')).map((e) => e.src || e.href))
          .filter((u) => !u.startsWith(origin) && !u.startsWith('data:') && u !== ''),
        report: document.getElementById('report-panel').hidden ? null : document.getElementById('report-text').textContent};
"#;

fn row<'a>(page: &'a Value, table: &str, ip: &str) -> Option<&'a Value> {
    page[table]
        .as_array()?
        .iter()
        .find(|r| r["ip"].as_str() == Some(ip))
}

fn api_active(api: SocketAddr, ip: &str) -> bool {
    http_get(api, "/api/v1/attacks")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|v| v["active"].as_array().cloned())
        .is_some_and(|a| a.iter().any(|x| x["ip"].as_str() == Some(ip)))
}

/// Errors in a browser log, ignoring failed requests when `allow_network` (a stopped
/// service makes every poll fail; that is the point of the offline banner).
fn errors(log: &[Value], allow_network: bool) -> Vec<String> {
    log.iter()
        .filter(|e| e["level"] == "SEVERE")
        .filter_map(|e| e["message"].as_str())
        .filter(|m| {
            !(allow_network && (m.contains("Failed to load resource") || m.contains("net::ERR_")))
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn console_shows_attack_mitigation_recent_report_and_survives_a_restart() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "SKIPPED console_browser: {CHROMIUM} or {CHROMEDRIVER} is not installed \
             (apt-get install chromium chromium-driver; .ci/test installs them)"
        );
        return;
    }
    let capture = common::vectors().join("v-softflowd-nf9.pcap");
    assert!(capture.is_file(), "{} missing", capture.display());
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let nf = free_udp_port();
    let cfg = config(api, nf, &sim, &dir.path().join("state"));
    let mut fg = Some(start_flowguard(&cfg, dir.path(), api));

    let profile = tempfile::tempdir().unwrap();
    let (_chromedriver, d) = start_browser(profile.path());
    // MITIGATOR refuses to switch `sorb` on (the UDP and fragment floods' countermeasure):
    // a permanent 403 for that one PUT, every other call answered.
    d.rt.block_on(sim.fault(json!({
        "path": "sorb/switch", "method": "PUT", "status": 403, "count": 20
    })));
    d.goto(&format!("http://{api}/"));
    let live = wait_for(10, || (d.exec(ROWS)["conn"] == "live").then_some(()));
    assert!(live.is_some(), "page never went live: {}", d.exec(ROWS));

    // The flood: real softflowd NetFlow v9 (SYN, ICMP, UDP and fragment floods against
    // 127.0.0.20-23), sent once.
    let sent = common::send_capture(&capture, format!("127.0.0.1:{nf}").parse().unwrap());
    assert!(sent > 0);
    let target = "127.0.0.20";
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut api_saw: Option<Instant> = None;
    let page = loop {
        if api_saw.is_none() && api_active(api, target) {
            api_saw = Some(Instant::now());
        }
        let p = d.exec(ROWS);
        if row(&p, "active", target).is_some() {
            break p;
        }
        assert!(Instant::now() < deadline, "no active row for {target}: {p}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let shown = Instant::now();
    if let Some(t) = api_saw {
        // The page polls every second; the issue asks for a change to show within 2 s.
        assert!(
            shown - t <= Duration::from_secs(2),
            "row shown {:?} after the API had it",
            shown - t
        );
    }
    let r = row(&page, "active", target).unwrap();
    assert!(
        r["text"].as_str().unwrap().contains("syn_flood"),
        "type in row: {r}"
    );
    let names = |r: &Value| -> Vec<String> {
        r["cms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let n = names(r);
    assert!(
        n.first().map(String::as_str) == Some("toggle") && n.iter().any(|x| x == "tcp"),
        "policy protection first, then tcp: {r}"
    );
    assert!(
        r["cms"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["wanted"] == "on"
                && ["pending", "on"].contains(&c["state"].as_str().unwrap_or(""))),
        "mitigation states: {r}"
    );
    // MITIGATOR (the simulator) acknowledges: every switch shows "on → on".
    let on = wait_for(10, || {
        let p = d.exec(ROWS);
        let r = row(&p, "active", target)?.clone();
        r["cms"]
            .as_array()?
            .iter()
            .all(|c| c["state"] == "on" && c["text"].as_str().unwrap_or("").ends_with("on → on"))
            .then_some(r)
    });
    let on = on.unwrap_or_else(|| panic!("switches never acknowledged: {}", d.exec(ROWS)));
    assert!(on["errs"].as_array().unwrap().is_empty(), "no error: {on}");
    let puts = common::sim_switch_puts(sim.addr);
    assert!(
        ["toggle", "tcp"].iter().all(|n| puts
            .iter()
            .any(|p| p.starts_with(&format!("PUT {n}/switch")))),
        "the page says on, so the simulator got those switch calls: {puts:?}"
    );
    eprintln!("active row: {on}");

    // The UDP flood's row: its policy protection on (shared with the SYN flood), its
    // countermeasure failed with the error MITIGATOR gave.
    let udp = "127.0.0.22";
    let failed = wait_for(15, || {
        let p = d.exec(ROWS);
        let r = row(&p, "active", udp)?.clone();
        let cms = r["cms"].as_array()?;
        let st = |n: &str| {
            cms.iter()
                .find(|c| c["name"] == n)
                .map(|c| c["state"].clone())
        };
        (st("toggle")? == "on" && st("sorb")? == "failed").then_some(r)
    });
    let failed = failed.unwrap_or_else(|| panic!("no failed sorb on {udp}: {}", d.exec(ROWS)));
    let sorb = failed["cms"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sorb")
        .unwrap();
    assert_eq!(sorb["text"], "sorb: on → failed", "{failed}");
    let err = failed["errs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "sorb")
        .unwrap_or_else(|| panic!("sorb's error not shown: {failed}"));
    assert!(
        err["text"].as_str().unwrap().contains("403")
            && err["text"].as_str().unwrap().contains("injected fault"),
        "the error MITIGATOR answered: {err}"
    );
    // The simulator did refuse exactly that call, and the API says the same per switch.
    let (_, log) = http_get(sim.addr, "/sim/log").unwrap();
    let log: Vec<Value> = serde_json::from_str(&log).unwrap();
    assert!(
        log.iter().any(|r| r["method"] == "PUT"
            && r["path"].as_str().unwrap_or("").ends_with("sorb/switch")
            && r["status"] == 403),
        "no refused sorb PUT in the simulator's log"
    );
    let (_, body) = http_get(api, "/api/v1/attacks").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let a = v["active"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["ip"] == udp)
        .unwrap();
    let sw = a["mitigation"]["switches"].as_array().unwrap();
    assert_eq!(sw[0]["name"], "toggle");
    assert_eq!(sw[0]["state"], "on");
    assert_eq!(sw[1]["name"], "sorb");
    assert_eq!(sw[1]["state"], "failed");
    assert!(sw[1]["error"].as_str().unwrap().contains("403"), "{sw:?}");
    // Health says so too, from the outcomes of the calls mitigation made.
    let reach = wait_for(5, || {
        let h = d.exec(ROWS)["health"].as_str().unwrap_or("").to_string();
        h.contains("MITIGATORreachable").then_some(h)
    });
    assert!(reach.is_some(), "health: {}", d.exec(ROWS)["health"]);
    // The other floods of the capture show with their own types (they come later in
    // the capture than the SYN flood, so their rows may take a few more passes).
    for (ip, t) in [
        ("127.0.0.22", "udp_flood"),
        ("127.0.0.23", "ip_fragmentation"),
    ] {
        let shown = wait_for(10, || {
            let p = d.exec(ROWS);
            let r = row(&p, "active", ip).or_else(|| row(&p, "recent", ip));
            r.is_some_and(|r| r["text"].as_str().unwrap_or("").contains(t))
                .then_some(())
        });
        assert!(shown.is_some(), "{ip} {t}: {}", d.exec(ROWS));
    }
    // Top hosts come from the console's own sampler (one sample a second, of the last
    // pass's top list), not from the attack list: when the floods were detected within the
    // first passes, the sampler may not have sampled since the traffic came, so wait a
    // few samples rather than read the table at once.
    let p = wait_for(5, || {
        let p = d.exec(ROWS);
        let listed = p["top"].as_array()?.iter().any(|x| x == target);
        let sparks = p["sparks"].as_array()?;
        (listed && sparks.iter().all(|n| n.as_u64() > Some(1))).then_some(p)
    })
    .unwrap_or_else(|| panic!("top hosts: {}", d.exec(ROWS)));
    // Each top host has its sparkline, one point per sample (more than one by now).
    let sparks = p["sparks"].as_array().unwrap();
    assert_eq!(sparks.len(), p["top"].as_array().unwrap().len(), "{p}");
    assert!(sparks.iter().all(|n| n.as_u64() > Some(1)), "{p}");
    // Exporters: one row per router address (the capture is sent from 127.0.0.1), with
    // the templates it announced; the collector socket in its own table.
    // Template counts are refreshed once a second by the collector and sampled once a
    // second by the console: the row may take a moment to show them.
    let cells_of = |p: &Value| -> Option<Vec<String>> {
        let ex = p["exporters"].as_array()?;
        (ex.len() == 1 && ex[0]["exporter"] == "127.0.0.1").then_some(())?;
        Some(
            ex[0]["cells"]
                .as_array()?
                .iter()
                .map(|c| c.as_str().unwrap_or("").to_string())
                .collect(),
        )
    };
    let cells = wait_for(10, || {
        cells_of(&d.exec(ROWS)).filter(|c| c[4].parse::<u64>().is_ok_and(|n| n >= 1))
    })
    .unwrap_or_else(|| panic!("one exporter row with its templates: {}", d.exec(ROWS)));
    assert_eq!(
        cells[3], "1:1",
        "softflowd announces no sampling: 1 in 1: {cells:?}"
    );
    assert_eq!(cells[5], "0", "decode errors: {cells:?}");
    assert_eq!(p["collectors"].as_array().unwrap().len(), 1, "{p}");
    let (_, body) = http_get(api, "/api/v1/exporters").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(v[0]["records_total"].as_u64() > Some(1000), "{v}");
    // Health: drops, detection pass time, MITIGATOR.
    let h = p["health"].as_str().unwrap();
    for want in [
        "socket drops (kernel)",
        "queue drops0",
        "detection pass",
        "MITIGATORreachable",
    ] {
        assert!(h.contains(want), "health lacks {want:?}: {h}");
    }
    // Nothing came from anywhere but the service (no CDN, no font, no image).
    assert_eq!(p["foreign"], json!([]), "{p}");
    d.screenshot("console-attack.png");

    // The flood is over: the attack ends after its ban time and moves to "recent".
    let recent = wait_for(40, || {
        let p = d.exec(ROWS);
        (row(&p, "active", target).is_none() && row(&p, "recent", target).is_some()).then_some(p)
    })
    .unwrap_or_else(|| panic!("never moved to recent: {}", d.exec(ROWS)));
    let r = row(&recent, "recent", target).unwrap();
    assert!(r["text"].as_str().unwrap().contains("syn_flood"), "{r}");

    // One click opens the report: FastNetMon's text form from the API.
    d.click(&format!("#recent tr[data-ip=\"{target}\"] button.report"));
    let report = wait_for(10, || {
        d.exec(ROWS)["report"]
            .as_str()
            .filter(|t| t.contains(target))
            .map(str::to_string)
    })
    .unwrap_or_else(|| panic!("report not shown: {}", d.exec(ROWS)));
    let id = r["id"].as_str().unwrap();
    let (st, txt) = http_get(api, &format!("/api/v1/attacks/{id}/report.txt")).unwrap();
    assert_eq!(st, 200);
    assert!(report.contains("syn_flood"), "{report}");
    assert_eq!(
        report.lines().next(),
        txt.lines().next(),
        "the panel shows the API's report"
    );
    d.screenshot("console-recent-report.png");

    // No JavaScript error so far.
    let log = d.browser_log();
    let errs = errors(&log, false);
    assert!(errs.is_empty(), "browser logged errors: {errs:?}");
    // ...and the log would show one: an uncaught exception in the page is caught here.
    d.exec("setTimeout(() => { throw new Error('probe-uncaught-error'); }, 0); return null;");
    let caught = wait_for(5, || {
        let l = d.browser_log();
        (!errors(&l, false).is_empty()).then_some(l)
    });
    assert!(
        caught.is_some_and(|l| errors(&l, false)
            .iter()
            .any(|m| m.contains("probe-uncaught-error"))),
        "the browser log does not report uncaught errors; the check above proves nothing"
    );

    // The service stops: the page says offline; it restarts: the page comes back alone.
    drop(fg.take());
    let off = wait_for(10, || (d.exec(ROWS)["conn"] == "offline").then_some(()));
    assert!(off.is_some(), "never said offline: {}", d.exec(ROWS));
    d.screenshot("console-offline.png");
    fg = Some(start_flowguard(&cfg, dir.path(), api));
    let back = wait_for(10, || (d.exec(ROWS)["conn"] == "live").then_some(()));
    assert!(back.is_some(), "never reconnected: {}", d.exec(ROWS));
    let errs = errors(&d.browser_log(), true);
    assert!(
        errs.is_empty(),
        "browser logged errors across the restart: {errs:?}"
    );
    drop(fg);
}
