//! Access to the service: the API listens on loopback unless told otherwise, the write
//! endpoint needs `[api] token` and limits bodies, and the MITIGATOR password (and the API
//! token) appear nowhere: not in `check-config --print`, not in the Debug form of the
//! config, not in the logs of a service that cannot reach MITIGATOR, not in any API
//! answer, not in error messages, even from an appliance that echoes what it was sent.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flowguard::config::{ApiConfig, Config};
use flowguard::service::Service;

const PASSWORD: &str = "Pa55-very-secret-mitigator";
const TOKEN: &str = "tok-9f2c1e7a-api";
const EVENT: &str = r#"{"action":"ban","ip":"127.0.0.20","direction":"incoming","pps":50000,"report":"Attack type: udp_flood\n"}"#;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_flowguard")
}

/// A config with the secrets set; `api` and `mitigator_url` vary per test.
fn config_text(listen: &str, mitigator_url: &str, state: &std::path::Path) -> String {
    format!(
        r#"
[api]
listen = "{listen}"
token = "{TOKEN}"
max_body_bytes = 1024

[networks]
protected = ["127.0.0.16/28"]

[[hostgroup]]
name = "default"
threshold_pps = 1000000000
threshold_mbps = 1000000

[mitigator]
url = "{mitigator_url}"
username = "flowguard"
password = "{PASSWORD}"
connect_timeout_seconds = 0.5
request_timeout_seconds = 1.0
retries = 2
retry_base_ms = 50
retry_max_ms = 200

[state]
dir = "{}"
"#,
        state.display()
    )
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(PASSWORD),
        "{what} shows the MITIGATOR password:\n{text}"
    );
    assert!(!text.contains(TOKEN), "{what} shows the API token:\n{text}");
}

/// A local TCP port nobody listens on (bound, then released).
fn closed_port() -> u16 {
    common::free_tcp_port()
}

#[test]
fn api_listens_on_loopback_by_default() {
    assert!(ApiConfig::default().listen.ip().is_loopback());
    let cfg = Config::from_toml_str("").unwrap();
    assert!(cfg.api.listen.ip().is_loopback(), "{}", cfg.api.listen);
    assert_eq!(cfg.api.token, None, "no default token: writes are closed");
}

#[test]
fn secrets_stay_out_of_debug_and_printed_config() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text("127.0.0.1:0", "https://127.0.0.1:1", dir.path());
    let cfg = Config::from_toml_str(&text).unwrap();
    assert_eq!(
        cfg.mitigator.password.as_ref().map(|p| p.expose()),
        Some(PASSWORD),
        "the password was read"
    );
    assert_eq!(cfg.api.token.as_deref(), Some(TOKEN), "the token was read");
    assert_no_secret("Debug of Config", &format!("{cfg:?}"));
    assert_no_secret("pretty Debug of Config", &format!("{cfg:#?}"));
    assert_no_secret("printed config", &toml::to_string_pretty(&cfg).unwrap());

    // The binary: check-config --print.
    let f = dir.path().join("flowguard.toml");
    std::fs::write(&f, &text).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--print", "--config"])
        .arg(&f)
        .env_remove("FLOWGUARD_MITIGATOR_PASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("[mitigator]"), "printed: {stdout}");
    assert_no_secret("check-config --print stdout", &stdout);
    assert_no_secret("check-config stderr", &String::from_utf8_lossy(&out.stderr));
}

#[test]
fn secrets_stay_out_of_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    // A config that fails: the password alongside bad keys and values, and the password
    // where a number is expected (its value must not be echoed either).
    let base = config_text("127.0.0.1:0", "https://127.0.0.1:1", dir.path());
    let cases = [
        format!("{base}\n[aggregate]\nwindow_seconds = 0\nbogus = \"{PASSWORD}\"\n"),
        base.replace(
            &format!("password = \"{PASSWORD}\""),
            &format!("password = {{ value = \"{PASSWORD}\" }}"),
        ),
        base.replace(
            &format!("password = \"{PASSWORD}\""),
            &format!("password = [\"{PASSWORD}\"]"),
        ),
        base.replace(
            &format!("token = \"{TOKEN}\""),
            &format!("token = {{ t = \"{TOKEN}\" }}"),
        ),
    ];
    for (i, text) in cases.iter().enumerate() {
        let err = Config::from_toml_str(text).expect_err("invalid config");
        let msg = err.to_string();
        assert!(!msg.is_empty());
        if i == 0 {
            assert!(msg.contains("aggregate.window_seconds"), "{msg}");
        }
        assert_no_secret(&format!("config error {i}"), &msg);
        assert_no_secret(&format!("config error {i} (Debug)"), &format!("{err:?}"));
        // And through the binary, with --set too.
        let f = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&f, text).unwrap();
        let out = Command::new(bin())
            .args(["check-config", "--print", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        assert_no_secret("check-config stdout", &String::from_utf8_lossy(&out.stdout));
        assert_no_secret("check-config stderr", &String::from_utf8_lossy(&out.stderr));
    }
    let f = dir.path().join("good.toml");
    std::fs::write(&f, &base).unwrap();
    let out = Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&f)
        .arg("--set")
        .arg(format!("mitigator.password={PASSWORD}"))
        .arg("--set")
        .arg("aggregate.window_seconds=0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert_no_secret(
        "check-config --set stderr",
        &String::from_utf8_lossy(&out.stderr),
    );
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
    body: String,
) -> reqwest::StatusCode {
    let mut r = client.post(url).body(body);
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    r.send().await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoint_needs_the_token_and_limits_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        "127.0.0.1:0",
        &format!("http://127.0.0.1:{}", closed_port()),
        dir.path(),
    )
    .replace("url = ", "dry_run = true\nurl = ");
    let svc = Service::start(Config::from_toml_str(&text).unwrap())
        .await
        .unwrap();
    assert!(svc.api_addr.ip().is_loopback());
    let base = format!("http://{}", svc.api_addr);
    let url = format!("{base}/api/v1/events/fastnetmon");
    let c = reqwest::Client::new();
    use reqwest::StatusCode as S;
    assert_eq!(post(&c, &url, None, EVENT.into()).await, S::UNAUTHORIZED);
    for bad in [
        "Bearer wrong",
        "Bearer tok-9f2c1e7a-ap",
        "tok-9f2c1e7a-api",
        "Basic x",
    ] {
        assert_eq!(
            post(&c, &url, Some(bad), EVENT.into()).await,
            S::UNAUTHORIZED,
            "{bad}"
        );
    }
    let auth = format!("Bearer {TOKEN}");
    // Over max_body_bytes (1024), declared up front and streamed without a length.
    let big = format!(
        r#"{},"pad":"{}"}}"#,
        EVENT.trim_end_matches('}'),
        "x".repeat(2000)
    );
    assert_eq!(
        post(&c, &url, Some(&auth), big.clone()).await,
        S::PAYLOAD_TOO_LARGE
    );
    let st = chunked_post(svc.api_addr, &auth, big.as_bytes()).await;
    assert_eq!(st, 413, "chunked body over the limit");
    // Unauthorized requests are refused before the body is looked at.
    assert_eq!(
        post(&c, &url, None, "x".repeat(5000)).await,
        S::UNAUTHORIZED
    );
    assert_eq!(post(&c, &url, Some(&auth), EVENT.into()).await, S::ACCEPTED);

    // Read endpoints: open, and never showing a secret.
    let attack_id = wait_for_attack(&c, &base).await;
    for path in [
        "/healthz".to_string(),
        "/metrics".to_string(),
        "/api/v1/hosts".to_string(),
        "/api/v1/hosts/127.0.0.20".to_string(),
        "/api/v1/attacks".to_string(),
        format!("/api/v1/attacks/{attack_id}"),
        format!("/api/v1/attacks/{attack_id}/report.txt"),
        // The operator console and the JSON it and `flowguard top` read.
        "/".to_string(),
        "/console/app.js".to_string(),
        "/api/v1/summary".to_string(),
        "/api/v1/exporters".to_string(),
        "/api/v1/collectors".to_string(),
        "/api/v1/health".to_string(),
    ] {
        let r = c.get(format!("{base}{path}")).send().await.unwrap();
        let st = r.status();
        let body = r.text().await.unwrap();
        // The host has no traffic: 404 is the right answer there.
        let ok = st.is_success() || (path.starts_with("/api/v1/hosts/") && st == 404);
        assert!(ok, "{path}: {st} {body}");
        assert_no_secret(&path, &body);
    }
    svc.shutdown().await;
}

/// POSTs `body` with `Transfer-Encoding: chunked` (no declared length); the status code.
async fn chunked_post(addr: std::net::SocketAddr, auth: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /api/v1/events/fastnetmon HTTP/1.1\r\nhost: {addr}\r\nauthorization: {auth}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.chunks(300) {
        req.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        req.extend_from_slice(chunk);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before the whole body is written.
    let _ = s.write_all(&req).await;
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut resp)).await;
    let head = String::from_utf8_lossy(&resp);
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {head:?}"))
}

async fn wait_for_attack(c: &reqwest::Client, base: &str) -> String {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let v: serde_json::Value = c
            .get(format!("{base}/api/v1/attacks"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(id) = v["active"][0]["id"].as_str() {
            return id.to_string();
        }
        assert!(Instant::now() < end, "no attack from the hook event: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn a_service_that_cannot_reach_mitigator_never_logs_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_tcp_port();
    let text = config_text(
        &format!("127.0.0.1:{port}"),
        &format!("http://127.0.0.1:{}", closed_port()),
        dir.path(),
    );
    let f = dir.path().join("flowguard.toml");
    std::fs::write(&f, text).unwrap();
    let mut child = Command::new(bin())
        .args(["run", "--log-level", "debug", "--config"])
        .arg(&f)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let bodies = rt.block_on(async {
        let c = reqwest::Client::new();
        let end = Instant::now() + Duration::from_secs(10);
        while c.get(format!("{base}/healthz")).send().await.is_err() {
            assert!(Instant::now() < end, "service did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let st = c
            .post(format!("{base}/api/v1/events/fastnetmon"))
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(EVENT)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(st, reqwest::StatusCode::ACCEPTED);
        let id = wait_for_attack(&c, &base).await;
        // Let mitigation try (and fail) a few times.
        let end = Instant::now() + Duration::from_secs(8);
        let mut last = String::new();
        while Instant::now() < end {
            last = c
                .get(format!("{base}/api/v1/attacks/{id}"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if last.contains("error") || last.contains("retry") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let attacks = c
            .get(format!("{base}/api/v1/attacks"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        vec![last, attacks]
    });
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        stderr.contains("MITIGATOR call failed"),
        "mitigation never tried to reach MITIGATOR:\n{stderr}"
    );
    assert_no_secret("service logs", &stderr);
    assert_no_secret("service stdout", &stdout);
    for b in &bodies {
        assert_no_secret("API during the failure", b);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_do_not_echo_the_password() {
    // An appliance (or a proxy) that answers every request with the request itself.
    let app = axum::Router::new().fallback(|body: String| async move {
        (
            axum::http::StatusCode::BAD_REQUEST,
            format!("bad request: {body}"),
        )
    });
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(l, app).await });
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml_str(&config_text(
        "127.0.0.1:0",
        &format!("http://{addr}"),
        dir.path(),
    ))
    .unwrap();
    let metrics = std::sync::Arc::new(flowguard::metrics::Metrics::new());
    let client =
        flowguard::mitigate::client::MitigatorClient::new(&cfg.mitigator, metrics).unwrap();
    assert_no_secret("client Debug", &format!("{client:?}"));
    let err = client.ping().await.expect_err("login refused");
    let msg = err.to_string();
    assert!(msg.contains("bad request"), "the echo came back: {msg}");
    assert!(
        msg.contains("<redacted>"),
        "the echoed password was replaced: {msg}"
    );
    assert_no_secret("client error", &msg);
    assert_no_secret("client error (Debug)", &format!("{err:?}"));
    server.abort();
}
