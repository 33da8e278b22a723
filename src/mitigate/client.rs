//! MITIGATOR REST client: session login and token reuse, one re-login on 401, 421 →
//! the leader named in `Location` (remembered), timeouts, and retries with capped,
//! jittered back-off on timeouts, connection errors and 5xx (never on 4xx).
//!
//! It knows the wire format (`/api/v4/...`, `X-Auth-Token`, the `{"data": ...}` envelope)
//! and nothing about attacks; the worker decides what to call. The password lives in a
//! [`Secret`] and is never logged.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use super::config::{MitigatorConfig, Secret};
use crate::metrics::Metrics;

/// Longest error body kept in an error message.
const MAX_ERROR_BODY: usize = 300;
/// Hops through 421 answers in one call before giving up (a misconfigured cluster could
/// otherwise bounce requests forever).
const MAX_MISDIRECTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
    #[error("request failed: {msg}")]
    Transport { timeout: bool, msg: String },
    #[error("HTTP {status}: {body}")]
    Status { status: u16, body: String },
    #[error("login failed: HTTP {status}: {body}")]
    Login { status: u16, body: String },
    #[error("unexpected response: {0}")]
    BadResponse(String),
    #[error("421 Misdirected Request without a usable Location header")]
    Misdirected,
}

impl ClientError {
    /// Errors that retrying cannot fix: a 4xx other than 401/408/421/429. Everything else
    /// (appliance down, timeouts, 5xx, bad credentials that an operator may fix) is worth
    /// retrying in the background.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Status { status, .. } => {
                (400..500).contains(status) && !matches!(status, 401 | 408 | 421 | 429)
            }
            ClientError::Build(_) => true,
            _ => false,
        }
    }

    fn retryable_here(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            _ => false,
        }
    }
}

/// Back-off before attempt `attempt` (1-based): base·2^(attempt-1), capped, times a
/// random factor in [0.5, 1] so that many clients do not retry in lockstep.
pub fn backoff(base_ms: u64, max_ms: u64, attempt: u32) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(max_ms).max(1);
    let f: f64 = rand::thread_rng().gen_range(0.5..=1.0);
    Duration::from_millis(((capped as f64) * f) as u64)
}

pub struct MitigatorClient {
    http: reqwest::Client,
    base: Url,
    /// The cluster leader learnt from a 421, used instead of `base` until it fails.
    leader: Mutex<Option<Url>>,
    token: Mutex<Option<String>>,
    username: String,
    password: Secret,
    retries: u32,
    retry_base_ms: u64,
    retry_max_ms: u64,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for MitigatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MitigatorClient")
            .field("base", &self.base.as_str())
            .field("username", &self.username)
            .field("password", &self.password)
            .finish_non_exhaustive()
    }
}

/// `https://host/` or `https://host/api/v4` → `https://host/api/v4/`.
fn api_base(url: &str) -> Result<Url, ClientError> {
    let mut s = url.trim_end_matches('/').to_string();
    if !s.ends_with("/api/v4") {
        s.push_str("/api/v4");
    }
    s.push('/');
    Url::parse(&s).map_err(|e| ClientError::Build(format!("mitigator.url: {e}")))
}

fn truncate(s: &str) -> String {
    let mut t: String = s.chars().take(MAX_ERROR_BODY).collect();
    if t.len() < s.len() {
        t.push('…');
    }
    t
}

impl MitigatorClient {
    pub fn new(cfg: &MitigatorConfig, metrics: Arc<Metrics>) -> Result<Self, ClientError> {
        let url = cfg
            .url
            .as_deref()
            .ok_or_else(|| ClientError::Build("mitigator.url is not set".into()))?;
        let base = api_base(url)?;
        let password = cfg.resolve_password().map_err(ClientError::Build)?;
        let mut b = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout())
            .timeout(cfg.request_timeout())
            // 421 is handled here; any 3xx from an API is an error, not a hint.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("flowguard/", env!("CARGO_PKG_VERSION")));
        if let Some(f) = &cfg.ca_file {
            let pem = std::fs::read(f).map_err(|e| {
                ClientError::Build(format!("mitigator.ca_file: {}: {e}", f.display()))
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| ClientError::Build(format!("mitigator.ca_file: {e}")))?;
            b = b.tls_certs_only(certs);
        }
        if !cfg.verify_tls {
            b = b.danger_accept_invalid_certs(true);
        }
        let http = b.build().map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(MitigatorClient {
            http,
            base,
            leader: Mutex::new(None),
            token: Mutex::new(None),
            username: cfg.username.clone(),
            password,
            retries: cfg.retries.max(1),
            retry_base_ms: cfg.retry_base_ms,
            retry_max_ms: cfg.retry_max_ms,
            metrics,
        })
    }

    /// `text` with every occurrence of the password replaced.
    fn scrub(&self, text: String) -> String {
        let pw = self.password.expose();
        if pw.is_empty() || !text.contains(pw) {
            return text;
        }
        text.replace(pw, "<redacted>")
    }

    /// The leader currently in use, if a 421 named one.
    pub fn leader(&self) -> Option<String> {
        self.leader.lock().as_ref().map(|u| u.to_string())
    }

    /// `GET <name>/switch?policy=N` → is it on?
    pub async fn get_switch(&self, name: &str, policy: u32) -> Result<bool, ClientError> {
        let data = self
            .call(
                "get_switch",
                Method::GET,
                &format!("{name}/switch"),
                Some(policy),
                None,
            )
            .await?;
        match data.get("switch") {
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) => Ok(n.as_f64().is_some_and(|x| x != 0.0)),
            _ => Err(ClientError::BadResponse(format!(
                "{name}/switch: no \"switch\" in {}",
                truncate(&data.to_string())
            ))),
        }
    }

    /// `PUT <name>/switch?policy=N` with `{"switch": 1|0}` (integers, as BIFIT's tools send).
    pub async fn put_switch(&self, name: &str, policy: u32, on: bool) -> Result<(), ClientError> {
        self.call(
            "put_switch",
            Method::PUT,
            &format!("{name}/switch"),
            Some(policy),
            Some(json!({ "switch": u8::from(on) })),
        )
        .await
        .map(|_| ())
    }

    /// `POST tbl/items?policy=N`.
    pub async fn tbl_add(
        &self,
        policy: u32,
        prefixes: &[String],
        ttl: u32,
    ) -> Result<(), ClientError> {
        let items: Vec<Value> = prefixes
            .iter()
            .map(|p| json!({ "prefix": p, "ttl": ttl }))
            .collect();
        self.call(
            "tbl_add",
            Method::POST,
            "tbl/items",
            Some(policy),
            Some(json!({ "items": items })),
        )
        .await
        .map(|_| ())
    }

    /// `GET backend/ping`.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call("ping", Method::GET, "backend/ping", None, None)
            .await
            .map(|_| ())
    }

    /// One API call: login when there is no token, one re-login on 401; the payload of the
    /// `{"data": ...}` envelope.
    async fn call(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        policy: Option<u32>,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let started = Instant::now();
        let r = self.call_inner(op, method, path, policy, body).await;
        self.metrics
            .mitigator_request_duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        r
    }

    async fn call_inner(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        policy: Option<u32>,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let mut relogged = false;
        loop {
            let cached = self.token.lock().clone();
            let token = match cached {
                Some(t) => t,
                None => self.login().await?,
            };
            let (status, text) = self
                .exchange(
                    op,
                    method.clone(),
                    path,
                    policy,
                    body.as_ref(),
                    Some(&token),
                )
                .await?;
            if status == StatusCode::UNAUTHORIZED && !relogged {
                // Token lifetime is not documented: the token may simply have expired.
                relogged = true;
                let mut t = self.token.lock();
                if t.as_deref() == Some(token.as_str()) {
                    *t = None;
                }
                continue;
            }
            if !status.is_success() {
                return Err(ClientError::Status {
                    status: status.as_u16(),
                    body: truncate(&text),
                });
            }
            return envelope(&text);
        }
    }

    async fn login(&self) -> Result<String, ClientError> {
        let body = json!({ "username": self.username, "password": self.password.expose() });
        let (status, text) = self
            .exchange(
                "login",
                Method::POST,
                "users/session",
                None,
                Some(&body),
                None,
            )
            .await?;
        if !status.is_success() {
            return Err(ClientError::Login {
                status: status.as_u16(),
                body: truncate(&text),
            });
        }
        let data = envelope(&text)?;
        let token = data
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| ClientError::BadResponse("login: no data.token".into()))?
            .to_string();
        *self.token.lock() = Some(token.clone());
        Ok(token)
    }

    fn url(&self, path: &str, policy: Option<u32>) -> Result<Url, ClientError> {
        let base = self
            .leader
            .lock()
            .clone()
            .unwrap_or_else(|| self.base.clone());
        let mut u = base
            .join(path)
            .map_err(|e| ClientError::BadResponse(format!("{path}: {e}")))?;
        if let Some(p) = policy {
            u.set_query(Some(&format!("policy={p}")));
        }
        Ok(u)
    }

    /// Sends one request, following 421s and retrying transport errors and 5xx; returns
    /// the first answer that is neither.
    async fn exchange(
        &self,
        op: &'static str,
        method: Method,
        path: &str,
        policy: Option<u32>,
        body: Option<&Value>,
        token: Option<&str>,
    ) -> Result<(StatusCode, String), ClientError> {
        let mut attempt = 0u32;
        let mut misdirects = 0u32;
        loop {
            let url = self.url(path, policy)?;
            let mut req = self.http.request(method.clone(), url);
            if let Some(t) = token {
                req = req.header("X-Auth-Token", t);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let location = resp
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    match resp.text().await {
                        // An appliance (or a proxy in front of it) that echoes the login
                        // request in an error body would otherwise put the password into
                        // errors, logs and the API's mitigation view.
                        Ok(text) => Ok((status, location, self.scrub(text))),
                        Err(e) => Err(ClientError::Transport {
                            timeout: e.is_timeout(),
                            msg: e.to_string(),
                        }),
                    }
                }
                Err(e) => Err(ClientError::Transport {
                    timeout: e.is_timeout(),
                    msg: self.scrub(without_url(&e)),
                }),
            };
            let err = match result {
                Ok((status, location, text)) => {
                    let outcome = match status.as_u16() {
                        200..=299 => "ok",
                        401 => "unauthorized",
                        421 => "misdirected",
                        400..=499 => "client_error",
                        _ => "server_error",
                    };
                    self.count(op, outcome);
                    if status == StatusCode::MISDIRECTED_REQUEST {
                        misdirects += 1;
                        let leader = location.as_deref().and_then(leader_base);
                        match leader {
                            Some(l) if misdirects <= MAX_MISDIRECTS => {
                                tracing::info!(leader = %l, "MITIGATOR: 421, resending to the cluster leader");
                                *self.leader.lock() = Some(l);
                                continue;
                            }
                            _ => return Err(ClientError::Misdirected),
                        }
                    }
                    if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                        ClientError::Status {
                            status: status.as_u16(),
                            body: truncate(&text),
                        }
                    } else {
                        return Ok((status, text));
                    }
                }
                Err(e) => {
                    self.count(
                        op,
                        if matches!(e, ClientError::Transport { timeout: true, .. }) {
                            "timeout"
                        } else {
                            "transport_error"
                        },
                    );
                    // A leader that stopped answering may have lost leadership: go back to
                    // the configured address, which will name the new one.
                    if self.leader.lock().take().is_some() {
                        tracing::info!("MITIGATOR leader unreachable, back to the configured URL");
                    }
                    e
                }
            };
            attempt += 1;
            if attempt >= self.retries || !err.retryable_here() {
                return Err(err);
            }
            let d = backoff(self.retry_base_ms, self.retry_max_ms, attempt);
            tracing::debug!(op, attempt, error = %err, delay_ms = d.as_millis() as u64, "MITIGATOR call failed, retrying");
            tokio::time::sleep(d).await;
        }
    }

    fn count(&self, op: &str, outcome: &str) {
        self.metrics
            .mitigator_requests
            .with_label_values(&[op, outcome])
            .inc();
    }
}

/// The error text without the URL's query (harmless, but keeps messages short).
fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(src) = std::error::Error::source(e) {
        s = format!("{s}: {src}");
    }
    s
}

/// `{"data": X}` → X.
fn envelope(text: &str) -> Result<Value, ClientError> {
    let v: Value = serde_json::from_str(text)
        .map_err(|e| ClientError::BadResponse(format!("not JSON ({e}): {}", truncate(text))))?;
    match v {
        Value::Object(mut m) => m
            .remove("data")
            .ok_or_else(|| ClientError::BadResponse(format!("no \"data\": {}", truncate(text)))),
        _ => Err(ClientError::BadResponse(truncate(text))),
    }
}

/// The scheme, host and port of a `Location`, as the new API base.
fn leader_base(location: &str) -> Option<Url> {
    let u = Url::parse(location).ok()?;
    let host = u.host_str()?;
    let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Url::parse(&format!("{}://{host}{port}/api/v4/", u.scheme())).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_base_and_leader_base() {
        assert_eq!(
            api_base("https://m.example").unwrap().as_str(),
            "https://m.example/api/v4/"
        );
        assert_eq!(
            api_base("https://m.example/api/v4/").unwrap().as_str(),
            "https://m.example/api/v4/"
        );
        assert_eq!(
            leader_base("http://127.0.0.1:8443/api/v4/tcp/switch?policy=1")
                .unwrap()
                .as_str(),
            "http://127.0.0.1:8443/api/v4/"
        );
        assert!(leader_base("/relative").is_none());
    }

    #[test]
    fn envelope_unwraps_data() {
        assert_eq!(envelope(r#"{"data":{"switch":1}}"#).unwrap()["switch"], 1);
        assert!(envelope(r#"{"error":"x"}"#).is_err());
        assert!(envelope("nope").is_err());
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for attempt in 1..40 {
            let d = backoff(100, 1000, attempt).as_millis() as u64;
            let full = (100u64 << (attempt - 1).min(30)).min(1000);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn only_plain_4xx_is_permanent() {
        let s = |status| ClientError::Status {
            status,
            body: String::new(),
        };
        assert!(s(404).is_permanent());
        assert!(s(400).is_permanent());
        assert!(!s(401).is_permanent());
        assert!(!s(503).is_permanent());
        assert!(!ClientError::Transport {
            timeout: true,
            msg: String::new()
        }
        .is_permanent());
    }
}
