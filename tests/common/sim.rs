//! `mitigator-sim` as a real process on 127.0.0.1 (it announces the port it bound), and
//! its `/sim/*` endpoints read and driven from async tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub const USER: &str = "admin";
pub const PASS: &str = "s3cret";

pub struct Sim {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub cert: Option<PathBuf>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Sim {
    pub fn start(tls: bool) -> Sim {
        Sim::start_at("127.0.0.1:0", tls, &[])
    }

    /// Starts a simulator listening on `listen` with extra arguments; waits (bounded) for
    /// its "listening on" line.
    pub fn start_at(listen: &str, tls: bool, extra: &[&str]) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let cert_path = dir.path().join("cert.pem");
        let mut cmd = Command::new(super::workspace_bin("mitigator-sim"));
        cmd.args(["--listen", listen, "--username", USER, "--password", PASS])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if tls {
            cmd.arg("--tls").arg("--cert-out").arg(&cert_path);
        }
        let mut child = cmd.spawn().expect("start mitigator-sim");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("listening on ") {
                    let _ = tx.send(a.trim().to_string());
                }
            }
        });
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("mitigator-sim did not report its address");
            }
        };
        let scheme = if tls { "https" } else { "http" };
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if tls {
            let pem = std::fs::read(&cert_path).unwrap();
            b = b.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap());
        }
        Sim {
            child,
            addr,
            base: format!("{scheme}://{addr}"),
            cert: tls.then_some(cert_path),
            http: b.build().unwrap(),
            _dir: dir,
        }
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub async fn log(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("{}/sim/log", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap()
    }

    pub async fn state(&self) -> Value {
        self.http
            .get(format!("{}/sim/state", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A switch as the simulator has it (0 when never set).
    pub async fn switch(&self, policy: u32, name: &str) -> u64 {
        self.state().await["switches"][policy.to_string()][name]
            .as_u64()
            .unwrap_or(0)
    }

    pub async fn fault(&self, f: Value) {
        let r = self
            .http
            .post(format!("{}/sim/faults", self.base))
            .json(&f)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "fault {f} refused");
    }

    pub async fn login(&self) -> String {
        let v: Value = self
            .http
            .post(format!("{}/api/v4/users/session", self.base))
            .json(&serde_json::json!({"username": USER, "password": PASS}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["data"]["token"].as_str().unwrap().to_string()
    }

    /// Sets a switch the way an operator would, through the API.
    pub async fn operator_switch(&self, policy: u32, name: &str, on: bool) {
        let t = self.login().await;
        let r = self
            .http
            .put(format!(
                "{}/api/v4/{name}/switch?policy={policy}",
                self.base
            ))
            .header("X-Auth-Token", t)
            .json(&serde_json::json!({"switch": u8::from(on)}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The log as compact lines: `METHOD path?query [switch value] -> status`, without the
/// `/api/v4/` prefix.
pub fn calls(log: &[Value]) -> Vec<String> {
    log.iter()
        .map(|r| {
            let path = r["path"].as_str().unwrap_or("");
            let path = path.strip_prefix("/api/v4/").unwrap_or(path);
            let q = r["query"].as_str().unwrap_or("");
            let mut s = format!("{} {path}", r["method"].as_str().unwrap_or(""));
            if !q.is_empty() {
                s.push('?');
                s.push_str(q);
            }
            if r["method"] == "PUT" {
                let b: Value =
                    serde_json::from_str(r["body"].as_str().unwrap_or("")).unwrap_or(Value::Null);
                s.push_str(&format!(" {}", b["switch"]));
            }
            s.push_str(&format!(" -> {}", r["status"]));
            s
        })
        .collect()
}

/// Polls `f` every 25 ms for at most `secs` seconds; panics naming `what` at the deadline.
/// (The blocking twin for tests without a runtime is [`super::wait_for`].)
pub async fn wait_for<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
