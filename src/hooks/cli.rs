//! `flowguard hook fastnetmon ...` and `flowguard import-fastnetmon ...`.
//!
//! The hook runs inside FastNetMon's notify call, and FastNetMon waits for it: it reads
//! stdin to the end (FastNetMon writes through a pipe and must not block), then either
//! delivers the event to the running service or spools it, all within [`DEADLINE`]. It
//! writes one line on stderr and exits with:
//! - 0: delivered, spooled, or deliberately ignored (directions naming no protected side);
//! - 2: usage (arguments are not a FastNetMon notify call);
//! - 3: the service refused the event as malformed or too large (spooling would not help);
//! - 4: the event could not be delivered nor spooled (spool full or not writable).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::event::{from_notify, ExternalEvent};
use super::spool::{pending, spool_dir, spool_event};
use super::HookError;
use crate::config::Config;

/// Everything the hook does, stdin included, fits in this.
pub const DEADLINE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Time kept back for spooling after a failed delivery.
const SPOOL_RESERVE: Duration = Duration::from_millis(500);
/// stdin beyond this is read and discarded (1.2.6 dumps can be long; the report is small).
const MAX_STDIN_KEPT: usize = 1024 * 1024;

pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REJECTED: u8 = 3;
pub const EXIT_SPOOL_FAILED: u8 = 4;

/// `flowguard hook fastnetmon <IP> <direction> <pps> <action>`: FastNetMon's notify
/// arguments, taken as text so that odd values get the hook's own exit codes and log line.
#[derive(Debug, Clone, clap::Args)]
pub struct HookArgs {
    /// Attacked (or attacking) host.
    pub ip: String,
    /// incoming or outgoing (internal, other and unknown are ignored).
    pub direction: String,
    /// Attack power, packets per second.
    pub pps: String,
    /// ban, unban or attack_details.
    pub action: String,
}

/// `flowguard import-fastnetmon <FILE>`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportArgs {
    /// FastNetMon's configuration, usually /etc/fastnetmon.conf.
    pub path: PathBuf,
}

/// Reads `r` to the end, keeping the first [`MAX_STDIN_KEPT`] bytes.
fn read_stdin(r: &mut dyn Read) -> std::io::Result<String> {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = MAX_STDIN_KEPT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    Ok(String::from_utf8_lossy(&kept).into_owned())
}

/// Where to reach the service: its `[api] listen`, with a wildcard bind replaced by
/// loopback (the hook runs on the same machine).
pub fn service_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        IpAddr::V4(v) if v.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v) if v.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!(
        "http://{}{}",
        SocketAddr::new(ip, listen.port()),
        super::endpoint::PATH
    )
}

enum Delivery {
    Delivered,
    /// The service answered but will never take this event.
    Rejected(String),
    /// Worth spooling: unreachable, busy, or refusing our token (the spool needs none).
    Retry(String),
}

async fn deliver(cfg: &Config, ev: &ExternalEvent, timeout: Duration) -> Delivery {
    let client = match reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Delivery::Retry(format!("HTTP client: {e}")),
    };
    let mut req = client.post(service_url(cfg.api.listen)).json(ev);
    if let Some(t) = &cfg.api.token {
        req = req.bearer_auth(t);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => {
            let why = if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                "not reachable".to_string()
            } else {
                e.to_string()
            };
            return Delivery::Retry(format!("service at {}: {why}", cfg.api.listen));
        }
    };
    let status = resp.status();
    match status.as_u16() {
        200..=299 => Delivery::Delivered,
        401 | 403 => Delivery::Retry(format!(
            "service refused the token (HTTP {status}); check [api] token"
        )),
        400 | 413 | 422 => {
            let body = resp.text().await.unwrap_or_default();
            Delivery::Rejected(format!("HTTP {status}: {}", body.trim()))
        }
        _ => Delivery::Retry(format!("service answered HTTP {status}")),
    }
}

fn log(msg: &str) {
    eprintln!("flowguard hook fastnetmon: {msg}");
}

/// Runs one notify call; see the module doc for exit codes.
pub fn run_hook(cfg: &Config, args: &HookArgs, stdin: &mut dyn Read) -> ExitCode {
    let started = Instant::now();
    // Read first, whatever the arguments: FastNetMon blocks on a full pipe otherwise.
    let input = match read_stdin(stdin) {
        Ok(s) => s,
        Err(e) => {
            // A broken stdin loses the report, not the event.
            log(&format!("reading stdin: {e}; continuing without a report"));
            String::new()
        }
    };
    let ev = match from_notify(&args.ip, &args.direction, &args.pps, &args.action, &input) {
        Ok(ev) => ev,
        Err(HookError::Ignored(why)) => {
            log(&format!("ignored: {why}"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log(&format!("{e}"));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let summary = ev.summary();
    let dir = spool_dir(&cfg.state.dir);
    let remaining = DEADLINE
        .saturating_sub(started.elapsed())
        .saturating_sub(SPOOL_RESERVE);

    // Older events still wait in the spool: go behind them, so a ban spooled while the
    // service was down is not overtaken by its own unban.
    let waiting = pending(&dir);
    let outcome = if waiting > 0 {
        Delivery::Retry(format!("{waiting} older events are spooled"))
    } else if remaining < Duration::from_millis(200) {
        Delivery::Retry("no time left to reach the service".into())
    } else {
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(deliver(cfg, &ev, REQUEST_TIMEOUT.min(remaining))),
            Err(e) => Delivery::Retry(format!("runtime: {e}")),
        }
    };
    match outcome {
        Delivery::Delivered => {
            log(&format!("{summary}: delivered"));
            ExitCode::SUCCESS
        }
        Delivery::Rejected(why) => {
            log(&format!("{summary}: rejected by the service: {why}"));
            ExitCode::from(EXIT_REJECTED)
        }
        Delivery::Retry(why) => match spool_event(&dir, &ev) {
            Ok(path) => {
                log(&format!("{summary}: {why}; spooled as {}", path.display()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                log(&format!("{summary}: {why}; EVENT LOST: {e}"));
                ExitCode::from(EXIT_SPOOL_FAILED)
            }
        },
    }
}

/// `flowguard import-fastnetmon FILE`: the flowguard TOML for FastNetMon's configuration.
pub fn run_import(args: &ImportArgs) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(&args.path)
        .with_context(|| format!("reading {}", args.path.display()))?;
    Ok(super::import::convert(&text, &|p| {
        std::fs::read_to_string(p).ok()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listen_becomes_loopback() {
        assert_eq!(
            service_url("0.0.0.0:9909".parse().unwrap()),
            "http://127.0.0.1:9909/api/v1/events/fastnetmon"
        );
        assert_eq!(
            service_url("[::]:1".parse().unwrap()),
            "http://[::1]:1/api/v1/events/fastnetmon"
        );
        assert_eq!(
            service_url("127.0.0.2:5".parse().unwrap()),
            "http://127.0.0.2:5/api/v1/events/fastnetmon"
        );
    }

    #[test]
    fn stdin_is_read_to_the_end_but_bounded() {
        let data = vec![b'a'; MAX_STDIN_KEPT + 100_000];
        let mut cur = std::io::Cursor::new(data);
        let s = read_stdin(&mut cur).unwrap();
        assert_eq!(s.len(), MAX_STDIN_KEPT);
        assert_eq!(cur.position() as usize, MAX_STDIN_KEPT + 100_000);
    }

    #[test]
    fn usage_errors_exit_2_and_ignored_exit_0() {
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.state.dir = tmp.path().to_path_buf();
        let args = |d: &str, a: &str| HookArgs {
            ip: "192.0.2.1".into(),
            direction: d.into(),
            pps: "1".into(),
            action: a.into(),
        };
        let mut empty = std::io::empty();
        assert_eq!(
            run_hook(&cfg, &args("incoming", "explode"), &mut empty),
            ExitCode::from(EXIT_USAGE)
        );
        assert_eq!(
            run_hook(&cfg, &args("other", "ban"), &mut empty),
            ExitCode::SUCCESS
        );
        assert_eq!(
            pending(&spool_dir(tmp.path())),
            0,
            "nothing spooled for either"
        );
    }
}
