//! The simulated appliance: sessions, policies, switches, temporary blacklist, the request
//! log and the fault queue. No I/O here; `main.rs` feeds it requests and writes answers.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// One `/api/v4` request as the simulator saw it; `GET /sim/log` returns these.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry {
    /// Unix time in milliseconds.
    pub time: i64,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The request body exactly as sent (lossy UTF-8).
    pub body: String,
    pub status: u16,
}

/// `POST /sim/faults`. Every field is optional; see `--help` for the meaning.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// How many of the next requests the fault applies to (default 1).
    pub count: Option<u32>,
    /// Answer with this status instead of handling the request.
    pub status: Option<u16>,
    /// Delay the answer by this long.
    pub latency_ms: Option<u64>,
    /// Answer 421 with `Location: <this base URL><path>?<query>`.
    pub location: Option<String>,
    /// Invalidate every token issued so far, now.
    pub expire_tokens: Option<bool>,
    /// Tokens issued from now on expire after this long (0 = never).
    pub token_ttl_ms: Option<u64>,
    /// Drop every queued fault first.
    pub clear: Option<bool>,
    /// Only requests whose path (after `/api/v4/`) contains this get the fault, e.g.
    /// `sorb/switch`; others pass it by (it stays queued for a matching one).
    pub path: Option<String>,
    /// Only requests with this method (`GET`, `PUT`, ...) get the fault.
    pub method: Option<String>,
}

#[derive(Debug, Clone)]
struct QueuedFault {
    remaining: u32,
    path: Option<String>,
    method: Option<String>,
    status: Option<u16>,
    latency: Option<Duration>,
    location: Option<String>,
}

/// What the front end must do with one request.
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub location: Option<String>,
    pub delay: Option<Duration>,
}

impl Answer {
    fn data(v: Value) -> Answer {
        Answer {
            status: 200,
            body: json!({ "data": v }),
            location: None,
            delay: None,
        }
    }
    fn error(status: u16, msg: &str) -> Answer {
        Answer {
            status,
            body: json!({ "error": msg }),
            location: None,
            delay: None,
        }
    }
}

pub struct Sim {
    username: String,
    password: String,
    policies: BTreeSet<u32>,
    /// token → expiry (None = never).
    tokens: HashMap<String, Option<Instant>>,
    token_ttl: Option<Duration>,
    /// policy (None = global) → switch name → 0/1.
    switches: BTreeMap<Option<u32>, BTreeMap<String, u8>>,
    /// policy → prefix → ttl seconds.
    tbl: BTreeMap<u32, BTreeMap<String, u64>>,
    faults: VecDeque<QueuedFault>,
    log: Vec<LogEntry>,
    next_token: u64,
}

impl Sim {
    pub fn new(username: String, password: String, policies: BTreeSet<u32>) -> Sim {
        Sim {
            username,
            password,
            policies,
            tokens: HashMap::new(),
            token_ttl: None,
            switches: BTreeMap::new(),
            tbl: BTreeMap::new(),
            faults: VecDeque::new(),
            log: Vec::new(),
            next_token: 1,
        }
    }

    pub fn set_switch(&mut self, policy: u32, name: &str, on: bool) {
        self.switches
            .entry(Some(policy))
            .or_default()
            .insert(name.to_string(), u8::from(on));
    }

    pub fn log_json(&self) -> Value {
        serde_json::to_value(&self.log).unwrap_or(Value::Null)
    }

    /// `{"switches": {"1": {"toggle": 1}, "global": {...}}, "tbl": {"1": {"prefix": ttl}}}`
    pub fn state_json(&self) -> Value {
        let mut sw = serde_json::Map::new();
        for (p, m) in &self.switches {
            let k = p.map_or_else(|| "global".to_string(), |p| p.to_string());
            sw.insert(k, json!(m));
        }
        let tbl: BTreeMap<String, &BTreeMap<String, u64>> =
            self.tbl.iter().map(|(p, m)| (p.to_string(), m)).collect();
        json!({ "switches": sw, "tbl": tbl })
    }

    pub fn add_fault(&mut self, f: FaultSpec) {
        if f.clear == Some(true) {
            self.faults.clear();
        }
        if f.expire_tokens == Some(true) {
            self.tokens.clear();
        }
        if let Some(ms) = f.token_ttl_ms {
            self.token_ttl = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if f.status.is_some() || f.latency_ms.is_some() || f.location.is_some() {
            self.faults.push_back(QueuedFault {
                remaining: f.count.unwrap_or(1).max(1),
                path: f.path,
                method: f.method.map(|m| m.to_ascii_uppercase()),
                status: f.status,
                latency: f.latency_ms.map(Duration::from_millis),
                location: f.location.map(|l| l.trim_end_matches('/').to_string()),
            });
        }
    }

    /// Handles one `/api/v4/...` request (`path` without that prefix) and logs it.
    pub fn api(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        token: Option<&str>,
        body: &[u8],
        now_ms: i64,
    ) -> Answer {
        let mut ans = self.api_inner(method, path, query, token, body);
        self.log.push(LogEntry {
            time: now_ms,
            method: method.to_string(),
            path: format!("/api/v4/{path}"),
            query: query.to_string(),
            body: String::from_utf8_lossy(body).into_owned(),
            status: ans.status,
        });
        if let Some(l) = &ans.location {
            let q = if query.is_empty() {
                String::new()
            } else {
                format!("?{query}")
            };
            ans.location = Some(format!("{l}/api/v4/{path}{q}"));
        }
        ans
    }

    fn api_inner(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Answer {
        // The first queued fault this request matches (unfiltered faults match all).
        let hit = self.faults.iter().position(|f| {
            f.path.as_deref().map_or(true, |p| path.contains(p))
                && f.method.as_deref().map_or(true, |m| m == method)
        });
        if let Some(i) = hit {
            let f = &mut self.faults[i];
            f.remaining = f.remaining.saturating_sub(1);
            let f = f.clone();
            if f.remaining == 0 {
                self.faults.remove(i);
            }
            let mut a = if let Some(loc) = f.location {
                let mut a = Answer::error(421, "misdirected request: ask the leader");
                a.location = Some(loc);
                a
            } else if let Some(s) = f.status {
                Answer::error(s, "injected fault")
            } else {
                self.handle(method, path, query, token, body)
            };
            a.delay = f.latency;
            return a;
        }
        self.handle(method, path, query, token, body)
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> Answer {
        if method == "POST" && path == "users/session" {
            return self.login(body);
        }
        if !self.token_valid(token) {
            return Answer::error(401, "authentication required");
        }
        let policy = match parse_policy(query) {
            Ok(p) => p,
            Err(e) => return Answer::error(400, &e),
        };
        if let Some(p) = policy {
            if !self.policies.contains(&p) {
                return Answer::error(404, "policy not found");
            }
        }
        let segs: Vec<&str> = path.split('/').collect();
        match (method, segs.as_slice()) {
            ("GET", ["backend", "ping"]) => Answer::data(json!({})),
            ("GET", ["backend", "version"]) => Answer::data(json!({ "version": "v21.04.0-sim" })),
            ("GET", ["policies", "policies"]) => {
                let list: Vec<Value> = self
                    .policies
                    .iter()
                    .map(|id| json!({ "id": id, "name": format!("policy {id}"), "is_default": *id == 1 }))
                    .collect();
                Answer::data(json!({ "policies": list }))
            }
            ("GET", [name, "switch"]) if valid_name(name) => {
                let v = self
                    .switches
                    .get(&policy)
                    .and_then(|m| m.get(*name))
                    .copied()
                    .unwrap_or(0);
                Answer::data(json!({ "switch": v }))
            }
            ("PUT", [name, "switch"]) if valid_name(name) => {
                let v: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => return Answer::error(400, "body is not JSON"),
                };
                let on = match v.get("switch") {
                    Some(Value::Number(n)) if n.as_u64() == Some(0) => 0,
                    Some(Value::Number(n)) if n.as_u64() == Some(1) => 1,
                    Some(Value::Bool(b)) => u8::from(*b),
                    _ => return Answer::error(400, "expected {\"switch\": 0|1}"),
                };
                self.switches
                    .entry(policy)
                    .or_default()
                    .insert(name.to_string(), on);
                Answer::data(json!({ "switch": on }))
            }
            (m @ ("GET" | "POST" | "DELETE"), ["tbl", "items"]) => {
                let Some(p) = policy else {
                    return Answer::error(400, "policy is required");
                };
                if m == "GET" {
                    let items: Vec<Value> = self
                        .tbl
                        .get(&p)
                        .into_iter()
                        .flatten()
                        .map(|(k, t)| json!({ "prefix": k, "ttl": t }))
                        .collect();
                    return Answer::data(json!({ "items": items }));
                }
                let v: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(_) => return Answer::error(400, "body is not JSON"),
                };
                let Some(items) = v.get("items").and_then(Value::as_array) else {
                    return Answer::error(400, "expected {\"items\": [...]}");
                };
                let t = self.tbl.entry(p).or_default();
                for it in items {
                    let Some(prefix) = it.get("prefix").and_then(Value::as_str) else {
                        return Answer::error(400, "item without prefix");
                    };
                    if m == "POST" {
                        let ttl = it.get("ttl").and_then(Value::as_u64).unwrap_or(0);
                        t.insert(prefix.to_string(), ttl);
                    } else {
                        t.remove(prefix);
                    }
                }
                Answer::data(json!({}))
            }
            _ => Answer::error(404, "not found"),
        }
    }

    fn login(&mut self, body: &[u8]) -> Answer {
        #[derive(Deserialize)]
        struct Creds {
            username: String,
            password: String,
        }
        let Ok(c) = serde_json::from_slice::<Creds>(body) else {
            return Answer::error(400, "expected {\"username\":..., \"password\":...}");
        };
        if c.username != self.username || c.password != self.password {
            return Answer::error(401, "wrong username or password");
        }
        let token = format!("sim-{:08}-{:016x}", self.next_token, rand::random::<u64>());
        self.next_token += 1;
        let exp = self.token_ttl.map(|d| Instant::now() + d);
        self.tokens.insert(token.clone(), exp);
        Answer::data(json!({ "token": token }))
    }

    fn token_valid(&mut self, token: Option<&str>) -> bool {
        let Some(t) = token else { return false };
        match self.tokens.get(t) {
            Some(None) => true,
            Some(Some(exp)) if Instant::now() < *exp => true,
            Some(Some(_)) => {
                self.tokens.remove(t);
                false
            }
            None => false,
        }
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_policy(query: &str) -> Result<Option<u32>, String> {
    for kv in query.split('&') {
        if let Some(v) = kv.strip_prefix("policy=") {
            return v
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("policy={v}: not a number"));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim() -> Sim {
        Sim::new("u".into(), "p".into(), [1, 2].into_iter().collect())
    }

    fn token(s: &mut Sim) -> String {
        let a = s.api(
            "POST",
            "users/session",
            "",
            None,
            br#"{"username":"u","password":"p"}"#,
            0,
        );
        a.body["data"]["token"].as_str().unwrap().to_string()
    }

    #[test]
    fn switch_round_trip_and_unknown_policy() {
        let mut s = sim();
        let t = token(&mut s);
        let a = s.api(
            "PUT",
            "tcp/switch",
            "policy=2",
            Some(&t),
            br#"{"switch":1}"#,
            0,
        );
        assert_eq!(a.status, 200);
        let a = s.api("GET", "tcp/switch", "policy=2", Some(&t), b"", 0);
        assert_eq!(a.body["data"]["switch"], 1);
        let a = s.api("GET", "tcp/switch", "policy=1", Some(&t), b"", 0);
        assert_eq!(a.body["data"]["switch"], 0);
        assert_eq!(
            s.api("GET", "tcp/switch", "policy=3", Some(&t), b"", 0)
                .status,
            404
        );
        assert_eq!(
            s.api("GET", "tcp/switch", "policy=1", None, b"", 0).status,
            401
        );
        assert_eq!(s.log.len(), 6);
    }

    #[test]
    fn faults_apply_in_order_then_stop() {
        let mut s = sim();
        s.add_fault(FaultSpec {
            count: Some(2),
            status: Some(503),
            ..Default::default()
        });
        let body = br#"{"username":"u","password":"p"}"#;
        assert_eq!(
            s.api("POST", "users/session", "", None, body, 0).status,
            503
        );
        assert_eq!(
            s.api("POST", "users/session", "", None, body, 0).status,
            503
        );
        assert_eq!(
            s.api("POST", "users/session", "", None, body, 0).status,
            200
        );
    }

    /// A fault with a path and method only hits those requests, each time, until spent.
    #[test]
    fn filtered_faults_hit_only_their_path_and_method() {
        let mut s = sim();
        let t = token(&mut s);
        s.add_fault(FaultSpec {
            count: Some(2),
            status: Some(403),
            path: Some("sorb/switch".into()),
            method: Some("put".into()),
            ..Default::default()
        });
        let on = br#"{"switch":1}"#;
        let put = |s: &mut Sim, name: &str| {
            s.api(
                "PUT",
                &format!("{name}/switch"),
                "policy=1",
                Some(&t),
                on,
                0,
            )
            .status
        };
        assert_eq!(put(&mut s, "tcp"), 200);
        let get = s.api("GET", "sorb/switch", "policy=1", Some(&t), b"", 0);
        assert_eq!(get.status, 200);
        assert_eq!(put(&mut s, "sorb"), 403);
        assert_eq!(put(&mut s, "toggle"), 200);
        assert_eq!(put(&mut s, "sorb"), 403);
        assert_eq!(put(&mut s, "sorb"), 200, "spent after two hits");
    }
}
