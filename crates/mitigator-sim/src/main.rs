//! `mitigator-sim`: a stand-in for MITIGATOR's REST API, as far as flowguard uses it, for
//! tests and contract checks. It is deliberately independent of the flowguard library so
//! that the service's client is checked against a separate reading of the API.
//!
//! This file owns the command line, the listener (HTTP or HTTPS on a certificate made at
//! start) and the `/sim/*` test endpoints; `sim.rs` owns the simulated appliance.

mod sim;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use serde_json::json;

const ABOUT: &str = "A stand-in for MITIGATOR's REST API (v4) for tests.";

const AFTER_HELP: &str = "\
API (under /api/v4/, JSON, 2xx answers wrapped in {\"data\": ...}):
  POST users/session                 {\"username\",\"password\"} -> {\"data\":{\"token\"}}
  every other call needs the header X-Auth-Token (401 if missing, unknown or expired)
  GET|PUT <name>/switch?policy=N     {\"switch\":0|1}; any countermeasure name, `toggle` is
                                     the policy protection; without ?policy= the global one
  GET policies/policies              the --policies set
  GET|POST|DELETE tbl/items?policy=N {\"items\":[{\"prefix\":\"203.0.113.7/32\",\"ttl\":300}]}
  GET backend/ping | backend/version
  An unknown policy is 404, a malformed body 400. Every switch starts off.

Test endpoints (not logged, no token):
  GET  /sim/log     JSON array of every /api/v4 request:
                    {\"time\",\"method\",\"path\",\"query\",\"body\",\"status\"} (body as sent)
  GET  /sim/state   {\"switches\":{\"<policy>\":{\"<name>\":0|1}},\"tbl\":{...}}
  POST /sim/faults  one JSON object, fields optional:
                    {\"count\":N}             the next N requests (default 1) get...
                    {\"status\":503}          ...this status instead of an answer
                    {\"latency_ms\":500}      ...this much delay
                    {\"location\":\"http://127.0.0.1:P\"}  ...421 with Location at that leader
                    {\"expire_tokens\":true}  every token issued so far is invalid now
                    {\"token_ttl_ms\":1000}   tokens issued from now expire after that (0 = never)
                    {\"path\":\"sorb/switch\",\"method\":\"PUT\"}  ...only if the path
                                             contains this and the method matches
                    {\"clear\":true}          drop queued faults

Prints \"listening on ADDR\" on stdout once bound (ADDR is the real port for :0).";

#[derive(Parser, Debug)]
#[command(name = "mitigator-sim", version, about = ABOUT, after_help = AFTER_HELP)]
struct Cli {
    /// Address to listen on, e.g. 127.0.0.1:0.
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value = "admin")]
    username: String,
    #[arg(long, default_value = "admin")]
    password: String,
    /// Serve HTTPS on a self-signed certificate made at start.
    #[arg(long)]
    tls: bool,
    /// Where to write the certificate (PEM) with --tls; default: a file in the temp dir,
    /// whose path is printed as "cert FILE".
    #[arg(long)]
    cert_out: Option<PathBuf>,
    /// Policy ids that exist, comma-separated, ranges allowed (1-10,42).
    #[arg(long, default_value = "1-10")]
    policies: String,
    /// Start with this switch on, as POLICY:NAME (e.g. 1:toggle); repeatable. Stands for an
    /// appliance that kept its configuration across a restart.
    #[arg(long = "on", value_name = "POLICY:NAME")]
    on: Vec<String>,
}

type Shared = Arc<Mutex<sim::Sim>>;

fn parse_policies(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("--policies: {part:?} is not an id or a range a-b");
        if let Some((a, b)) = part.split_once('-') {
            let a: u32 = a.trim().parse().map_err(|_| bad())?;
            let b: u32 = b.trim().parse().map_err(|_| bad())?;
            if a > b || b - a > 100_000 {
                return Err(bad());
            }
            out.extend(a..=b);
        } else {
            out.insert(part.parse().map_err(|_| bad())?);
        }
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn json_response(status: u16, body: serde_json::Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

async fn handle(State(s): State<Shared>, req: Request) -> Response {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let token = req
        .headers()
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(_) => return json_response(400, json!({"error": "body too large"})),
    };
    match (method.as_str(), path.as_str()) {
        ("GET", "/sim/log") => return json_response(200, s.lock().log_json()),
        ("GET", "/sim/state") => return json_response(200, s.lock().state_json()),
        ("POST", "/sim/faults") => {
            return match serde_json::from_slice::<sim::FaultSpec>(&body) {
                Ok(f) => {
                    s.lock().add_fault(f);
                    json_response(200, json!({"ok": true}))
                }
                Err(e) => json_response(400, json!({"error": e.to_string()})),
            };
        }
        _ => {}
    }
    let Some(api_path) = path.strip_prefix("/api/v4/") else {
        return json_response(404, json!({"error": "not found"}));
    };
    let ans = s
        .lock()
        .api(&method, api_path, &query, token.as_deref(), &body, now_ms());
    if let Some(d) = ans.delay {
        tokio::time::sleep(d).await;
    }
    let mut resp = json_response(ans.status, ans.body);
    if let Some(l) = ans.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        resp.headers_mut().insert("location", l);
    }
    resp
}

fn tls_acceptor(cert_out: Option<PathBuf>) -> anyhow::Result<(tokio_rustls::TlsAcceptor, PathBuf)> {
    let ck = rcgen::generate_simple_self_signed(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    let path = cert_out.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("mitigator-sim-{}.pem", std::process::id()))
    });
    std::fs::write(&path, ck.cert.pem())?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.key_pair.serialize_der().into());
    // Both ring and aws-lc-rs are compiled in (reqwest brings the latter), so the provider
    // must be named explicitly.
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), path))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let policies = parse_policies(&cli.policies).map_err(anyhow::Error::msg)?;
    let mut state = sim::Sim::new(cli.username.clone(), cli.password.clone(), policies);
    for o in &cli.on {
        let (p, name) = o
            .split_once(':')
            .and_then(|(p, n)| Some((p.parse::<u32>().ok()?, n)))
            .ok_or_else(|| anyhow::anyhow!("--on {o}: expected POLICY:NAME"))?;
        state.set_switch(p, name, true);
    }
    let shared: Shared = Arc::new(Mutex::new(state));
    let app = Router::new().fallback(handle).with_state(shared);
    let tls = if cli.tls {
        let (acc, path) = tls_acceptor(cli.cert_out.clone())?;
        println!("cert {}", path.display());
        Some(acc)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        let (sock, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let svc = TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let http = hyper::server::conn::http1::Builder::new();
            let res = match tls {
                Some(acc) => match acc.accept(sock).await {
                    Ok(s) => http.serve_connection(TokioIo::new(s), svc).await,
                    Err(e) => {
                        eprintln!("tls handshake: {e}");
                        return;
                    }
                },
                None => http.serve_connection(TokioIo::new(sock), svc).await,
            };
            if let Err(e) = res {
                eprintln!("connection: {e}");
            }
        });
    }
}
