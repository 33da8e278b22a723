//! The integration tests' one kit: where the workspace's binaries and the shared vectors
//! are, child processes that announce the ports they bound (and stop with their process
//! group), readiness waits with deadlines instead of fixed sleeps, a minimal HTTP client,
//! hand-built datagrams ([`datagrams`]), `mitigator-sim` ([`sim`]) and the operations
//! tests' readers of dashboards and rules ([`ops`]).
#![allow(dead_code)]

pub mod datagrams;
pub mod ops;
pub mod sim;

use std::path::{Path, PathBuf};

/// A binary of another workspace crate (`mitigator-sim`, `flowguard-loadgen`), found
/// beside this package's `flowguard` in `target/<profile>/`. Cargo names only a package's
/// own binaries to its tests (`CARGO_BIN_EXE_*`); a plain `cargo test --release` at the
/// top builds every workspace binary (the workspace's default members), but
/// `cargo test --release --test NAME` builds only flowguard's, so the message says how.
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_flowguard")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --release --workspace` (or `cargo build --workspace` \
         for a debug test run) first; a plain `cargo test --release` at the top builds it too",
        p.display()
    );
    p
}

/// `../shared/vectors` beside the repository (CI lays a copy of shared/ there), or
/// `$FLOWGUARD_VECTORS`.
pub fn vectors() -> PathBuf {
    if let Ok(p) = std::env::var("FLOWGUARD_VECTORS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

pub fn reference() -> PathBuf {
    if let Ok(p) = std::env::var("FLOWGUARD_REFERENCE") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

/// The config the contract checks use: protected 127.0.0.16/28 + 127.0.0.32/27 + ::1,
/// one default hostgroup at `pps` packets/s with a 5 s ban time.
pub fn check_config(pps: u64) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:0"

[[collector]]
protocol = "netflow"
listen = "127.0.0.1:0"

[[collector]]
protocol = "sflow"
listen = "127.0.0.1:0"

[networks]
protected = ["127.0.0.16/28", "127.0.0.32/27", "::1/128"]

[[hostgroup]]
name = "default"
threshold_pps = {pps}
threshold_mbps = 100000
ban_time_seconds = 5
"#
    )
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// Whether a program is on PATH. Tests that need a real tool fail loudly without it
/// unless FLOWGUARD_SKIP_REAL_TOOLS=1 (the README's test command installs them).
pub fn require_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found && std::env::var("FLOWGUARD_SKIP_REAL_TOOLS").as_deref() != Ok("1") {
        panic!("{name} is not installed; run the README's test command (it installs it) or set FLOWGUARD_SKIP_REAL_TOOLS=1");
    }
    found
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// A minimal HTTP/1.0 request on loopback (tests avoid a client dependency), 3 s connect,
/// read and write timeouts: the status code and the body (lossy UTF-8, de-chunked).
pub fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let t = std::time::Duration::from_secs(3);
    let mut s = std::net::TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.set_write_timeout(Some(t))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Percent-encodes a query-string value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "", "")
}

/// POST of a JSON body with an optional bearer token.
pub fn http_post(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    http_request(
        addr,
        "POST",
        path,
        &format!("Content-Type: application/json\r\n{auth}"),
        body,
    )
}

/// The PUT .../switch calls a mitigator-sim received, in order, as
/// `PUT <name>/switch?policy=N <value>`.
pub fn sim_switch_puts(sim: std::net::SocketAddr) -> Vec<String> {
    http_get(sim, "/sim/log")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Vec<serde_json::Value>>(&b).ok())
        .unwrap_or_default()
        .iter()
        .filter(|r| {
            r["method"] == "PUT" && r["path"].as_str().is_some_and(|p| p.ends_with("/switch"))
        })
        .map(|r| {
            let p = r["path"]
                .as_str()
                .unwrap_or("")
                .trim_start_matches("/api/v4/");
            let b: serde_json::Value =
                serde_json::from_str(r["body"].as_str().unwrap_or("")).unwrap_or_default();
            format!(
                "PUT {p}?{} {}",
                r["query"].as_str().unwrap_or(""),
                b["switch"]
            )
        })
        .collect()
}

/// A child process, started in a process group of its own, stopped with that whole group
/// (and reaped) on drop: daemons that fork (pmacctd's plugin processes) go with it. Never
/// by name.
pub struct Child(pub std::process::Child, pub &'static str);

impl Child {
    /// Its process group id (its own pid: see [`spawn`]).
    pub fn pgid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Stops every process of its group: SIGTERM first so exporters flush and daemons
    /// clean up, SIGKILL for what is still there after 2 s.
    pub fn stop(&mut self) {
        let pgid = self.pgid();
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is
        // involved.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        for _ in 0..40 {
            let _ = self.0.try_wait();
            if group_members(pgid).is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if !group_members(pgid).is_empty() {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.0.wait();
        for _ in 0..40 {
            if group_members(pgid).is_empty() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Live processes (not zombies) whose process group is `pgid`, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after ')'.
            let rest = stat.rsplit_once(')').map_or("", |r| r.1);
            let f: Vec<&str> = rest.split_whitespace().collect();
            f.first() != Some(&"Z") && f.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        })
        .collect()
}

/// Starts `cmd` as the leader of a new process group (so [`Child`] can stop everything
/// it forks).
pub fn spawn(name: &'static str, cmd: &mut std::process::Command) -> Child {
    use std::os::unix::process::CommandExt;
    let c = cmd
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    Child(c, name)
}

/// Polls `f` every 200 ms until it returns Some, for at most `secs` seconds.
pub fn wait_for<T>(secs: u64, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if std::time::Instant::now() > end {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// A child process with its stdout and stderr in a log file, stopped with its process
/// group on drop (see [`Child`]).
pub struct Proc {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, mut cmd: std::process::Command, log: PathBuf) -> Proc {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("create log file");
        let f2 = f.try_clone().expect("clone log file");
        let child = spawn(name, cmd.stdout(f).stderr(f2));
        Proc { name, child, log }
    }

    /// `Some(description)` if the process already exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.0.try_wait() {
            Ok(Some(st)) => Some(format!(
                "{} exited early ({st}); its output:\n{}",
                self.name,
                self.log_tail()
            )),
            _ => None,
        }
    }

    pub fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = t.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.0.id() as i32
    }

    /// Sends `sig` to the process alone (not its group) and waits at most `secs` for it
    /// to exit; its exit status, or None if it is still running.
    pub fn signal_and_wait(&mut self, sig: i32, secs: u64) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe { libc::kill(self.pid(), sig) };
        wait_for(secs, || self.child.0.try_wait().ok().flatten())
    }
}

/// A running `flowguard run --log-format json --config <dir>/flowguard.toml`. It may
/// listen on port 0: the addresses are the ones it announced in its log ("flowguard
/// running" with `api`, "collector listening" with `collector` and `listen`).
pub struct Flowguard {
    pub proc: Proc,
    pub api: std::net::SocketAddr,
    /// Where this start's lines begin in the log (a restart on the same directory
    /// appends to it).
    log_from: usize,
}

impl Flowguard {
    /// Writes `config`, starts flowguard and waits (bounded: 20 s) for its announcement
    /// and a 200 from `/healthz`. Panics with the log's tail if it does not come up.
    pub fn start(config: &str, dir: &Path) -> Flowguard {
        Flowguard::start_with(config, dir, &[])
    }

    pub fn start_with(config: &str, dir: &Path, env: &[(&str, &str)]) -> Flowguard {
        let cfg = dir.join("flowguard.toml");
        std::fs::write(&cfg, config).expect("write config");
        let log = dir.join("flowguard.log");
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowguard"));
        cmd.args(["--log-format", "json", "run", "--config"])
            .arg(&cfg)
            .current_dir(dir)
            .envs(env.iter().copied());
        let mut proc = Proc::spawn("flowguard", cmd, log.clone());
        let api = wait_for(20, || {
            if proc.exited().is_some() {
                return Some(None);
            }
            announced(&log, log_from, "flowguard running", |f| f["api"].as_str())
                .map(|a| a.parse().ok())
        })
        .flatten()
        .unwrap_or_else(|| {
            panic!(
                "flowguard did not announce its API; log:\n{}",
                proc.log_tail()
            )
        });
        wait_for(20, || {
            http_get(api, "/healthz").ok().filter(|(s, _)| *s == 200)
        })
        .unwrap_or_else(|| {
            panic!(
                "flowguard's /healthz never answered 200; log:\n{}",
                proc.log_tail()
            )
        });
        Flowguard {
            proc,
            api,
            log_from,
        }
    }

    /// The address the collector `name` announced (waits at most 10 s for its line).
    pub fn collector(&self, name: &str) -> std::net::SocketAddr {
        wait_for(10, || {
            announced(&self.proc.log, self.log_from, "collector listening", |f| {
                (f["collector"].as_str() == Some(name))
                    .then(|| f["listen"].as_str())
                    .flatten()
            })
        })
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "collector {name} did not announce its address; log:\n{}",
                self.proc.log_tail()
            )
        })
    }

    /// This start's log lines.
    pub fn log(&self) -> String {
        let t = std::fs::read_to_string(&self.proc.log).unwrap_or_default();
        t.get(self.log_from..).unwrap_or("").to_string()
    }
}

/// The first JSON log line after byte `from` whose message is `message` and for whose
/// fields `pick` returns a value.
fn announced(
    log: &Path,
    from: usize,
    message: &str,
    pick: impl Fn(&serde_json::Value) -> Option<&str>,
) -> Option<String> {
    let t = std::fs::read_to_string(log).ok()?;
    t.get(from..)?.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let f = &v["fields"];
        (f["message"].as_str() == Some(message))
            .then(|| pick(f).map(str::to_string))
            .flatten()
    })
}

/// Starts flowguard on `config` (which names `api` as api.listen) and waits for it, see
/// [`Flowguard::start`].
pub fn start_flowguard(config: &str, dir: &std::path::Path, api: std::net::SocketAddr) -> Child {
    let fg = Flowguard::start(config, dir);
    assert_eq!(fg.api, api, "flowguard announced another API address");
    fg.proc.child
}

/// Sends every UDP payload of a pcap to `to`, as fast as possible (the capture's own
/// order). Returns the number of datagrams sent.
pub fn send_capture(path: &std::path::Path, to: std::net::SocketAddr) -> usize {
    let f = std::fs::File::open(path).expect("open capture");
    let mut r = pcap_file::pcap::PcapReader::new(f).expect("pcap");
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    let mut n = 0;
    while let Some(Ok(p)) = r.next_packet() {
        if let Ok(s) = etherparse::SlicedPacket::from_ethernet(&p.data) {
            if let Some(etherparse::TransportSlice::Udp(u)) = s.transport {
                let _ = sock.send_to(u.payload(), to);
                n += 1;
                if n % 200 == 0 {
                    // Let the collector keep up on a loaded 2-core machine.
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
        }
    }
    n
}

/// Runs hping3 to a loopback address, bounded by count and a 30 s timeout, until it ends
/// normally, at most 3 times; returns how many runs it took.
///
/// hping3 3.a2 aborts now and then (SIGABRT, a glibc malloc assertion: its heap is
/// corrupt), about 1 run in 10 here, sometimes before it sent anything (one CI run saw
/// no UDP flow at all). A run that aborted sent some unknown part of its packets, so
/// callers allow up to `runs` times the count; what was really sent is what the exporter
/// exported, and that is what flowguard must match exactly.
pub fn hping3(args: &[&str], target: &str) -> u64 {
    assert!(target.starts_with("127."), "floods go to loopback only");
    for run in 1..=3 {
        let st = std::process::Command::new("timeout")
            .args(["-s", "INT", "30", "hping3"])
            .args(args)
            .arg(target)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run hping3");
        // `timeout` passes the child's death by a signal on as its own.
        if st.code().is_some() {
            return run;
        }
        eprintln!("hping3 {args:?} {target} ended by a signal ({st:?}), run {run} of 3");
    }
    panic!("hping3 {args:?} {target} aborted 3 times");
}
