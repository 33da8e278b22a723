//! `flowguard hook fastnetmon ...` and `flowguard import-fastnetmon ...`.
//!
//! The hook runs inside FastNetMon's notify call, and FastNetMon waits for it: it reads
//! stdin to the end (FastNetMon writes through a pipe and must not block), then either
//! delivers the event to the running service or spools it, all within [`DEADLINE`].
//!
//! Every edition's call is understood:
//! - Community 1.1–1.2.5: `<IP> <direction> <pps> <ban|unban|attack_details>`, the text
//!   report on stdin (with `ban`, and `attack_details`);
//! - Community 1.2.6+: the same arguments, the report and dump sections on stdin at `ban`,
//!   nothing at `unban` (an empty, closed or never-written stdin);
//! - Advanced with `notify_script_format = json`: a JSON document on stdin (see
//!   [`super::advanced`]); the arguments (`ban <IP>`, or none for hostgroup alerts) are
//!   then ignored.
//!
//! Reading stdin never waits for input that is not coming: a terminal is not read at all,
//! and a pipe is read until it closes or [`STDIN_WAIT`] passes ([`UNBAN_STDIN_WAIT`] for
//! `unban`, which gets nothing). It writes one line on stderr and exits with:
//! - 0: delivered, spooled, or deliberately ignored (directions naming no protected side);
//! - 2: usage or malformed input (arguments are not a notify call, the JSON cannot be
//!   applied); nothing is delivered or spooled;
//! - 3: the service refused the event as malformed or too large (spooling would not help);
//! - 4: the event could not be delivered nor spooled (spool full or not writable);
//! - 5: the configuration could not be loaded (nothing delivered or spooled; said on
//!   stderr).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::advanced;
use super::event::{from_notify, valid_source, ExternalEvent, MAX_SOURCE_LEN};
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
/// Longest wait for stdin to close. FastNetMon writes the report at once and closes; a pipe
/// still open after this is one nothing more will come through.
pub const STDIN_WAIT: Duration = Duration::from_secs(2);
/// The same for `unban`, which gets nothing on stdin.
pub const UNBAN_STDIN_WAIT: Duration = Duration::from_millis(100);

pub const EXIT_USAGE: u8 = 2;
pub const EXIT_REJECTED: u8 = 3;
pub const EXIT_SPOOL_FAILED: u8 = 4;

/// `flowguard hook fastnetmon <IP> <direction> <pps> <action>`: FastNetMon's notify
/// arguments, taken as text so that odd values get the hook's own exit codes and log line.
/// All four are optional: FastNetMon Advanced's JSON mode passes `ban <IP>` or nothing and
/// puts everything in the document on stdin.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HookArgs {
    /// Attacked (or attacking) host.
    #[arg(default_value = "")]
    pub ip: String,
    /// incoming or outgoing (internal, other and unknown are ignored).
    #[arg(default_value = "")]
    pub direction: String,
    /// Attack power, packets per second.
    #[arg(default_value = "")]
    pub pps: String,
    /// ban, unban or attack_details.
    #[arg(default_value = "")]
    pub action: String,
    /// Name of this FastNetMon instance (default: fastnetmon@<hostname>, or
    /// fastnetmon-advanced for JSON). An attack several instances report ends when the
    /// last of them sends its unban; give instances sharing a machine different names.
    #[arg(long)]
    pub source: Option<String>,
}

/// `fastnetmon@<hostname>`, cut to a valid source name.
pub fn default_source() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let host: String = if rc == 0 {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end])
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    } else {
        String::new()
    };
    let mut s = format!("fastnetmon@{host}");
    s.truncate(MAX_SOURCE_LEN);
    if valid_source(&s) && !host.is_empty() {
        s
    } else {
        "fastnetmon".to_string()
    }
}

/// The process's stdin as FastNetMon hands it over, read without waiting for what is not
/// coming: nothing from a terminal, and from a pipe or file until it ends or `wait` has
/// passed (reported as an end; [`BoundedStdin::timed_out`] tells which).
pub struct BoundedStdin {
    fd: i32,
    tty: bool,
    deadline: Instant,
    timed_out: bool,
}

impl BoundedStdin {
    /// File descriptor `fd` (0 for stdin), read for at most `wait`.
    pub fn new(fd: i32, wait: Duration) -> BoundedStdin {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(fd) } == 1;
        BoundedStdin {
            fd,
            tty,
            deadline: Instant::now() + wait,
            timed_out: false,
        }
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out
    }
}

impl Read for BoundedStdin {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.tty || buf.is_empty() {
            // A person at a terminal is not FastNetMon: no report is coming.
            return Ok(0);
        }
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            let mut p = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut p, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                self.timed_out = true;
                return Ok(0);
            }
            if p.revents & libc::POLLNVAL != 0 {
                // No stdin at all (closed descriptor): nothing to read.
                return Ok(0);
            }
            // Readable, or hung up (read then returns what is left, then 0).
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(n as usize);
        }
    }
}

/// stdin for the notify call `args`: `unban` gets nothing, so it is not waited for.
pub fn stdin_for(args: &HookArgs) -> BoundedStdin {
    let wait = if args.action.trim() == "unban" {
        UNBAN_STDIN_WAIT
    } else {
        STDIN_WAIT
    };
    BoundedStdin::new(0, wait)
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
    let parsed = if advanced::is_json(&input) {
        let groups = advanced::Hostgroups::from_config(cfg);
        let source = args.source.as_deref().unwrap_or(advanced::DEFAULT_SOURCE);
        advanced::parse(input.as_bytes(), &groups, source)
    } else if args.action.is_empty() {
        Err(HookError::Usage(
            "expected <IP> <direction> <pps> <action>, or a FastNetMon Advanced JSON document on stdin"
                .into(),
        ))
    } else {
        from_notify(&args.ip, &args.direction, &args.pps, &args.action, &input).and_then(
            |mut ev| {
                ev.source = Some(args.source.clone().unwrap_or_else(default_source));
                ev.validate().map(|()| ev)
            },
        )
    };
    let ev = match parsed {
        Ok(ev) => ev,
        Err(HookError::Ignored(why)) => {
            log(&format!("ignored: {why}"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            log(&format!("{e}; nothing delivered"));
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
            source: None,
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
        // Malformed JSON, an unknown hostgroup, and neither arguments nor JSON: exit 2.
        for stdin in [
            "{not json",
            r#"{"action":"ban","alert_scope":"hostgroup","hostgroup_name":"nope"}"#,
            "",
        ] {
            let mut r = std::io::Cursor::new(stdin.as_bytes().to_vec());
            assert_eq!(
                run_hook(&cfg, &HookArgs::default(), &mut r),
                ExitCode::from(EXIT_USAGE),
                "{stdin}"
            );
        }
        let bad_source = HookArgs {
            source: Some("two words".into()),
            ..args("incoming", "ban")
        };
        assert_eq!(
            run_hook(&cfg, &bad_source, &mut empty),
            ExitCode::from(EXIT_USAGE)
        );
        assert_eq!(
            pending(&spool_dir(tmp.path())),
            0,
            "nothing spooled for any of them"
        );
    }

    #[test]
    fn default_source_is_valid() {
        let s = default_source();
        assert!(valid_source(&s) && s.starts_with("fastnetmon"), "{s}");
    }

    /// A pipe whose write end stays open and silent (what a 1.2.6+ `unban` may look like):
    /// the read ends when the wait is over, not when the writer goes away.
    #[test]
    fn an_open_silent_pipe_is_not_waited_for() {
        let mut fds = [0i32; 2];
        // SAFETY: fds has room for the two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut r = BoundedStdin::new(fds[0], Duration::from_millis(50));
        let started = Instant::now();
        assert_eq!(read_stdin(&mut r).unwrap(), "");
        assert!(r.timed_out());
        assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
        // Data then close: read to the end, no timeout.
        let msg = b"IP: 192.0.2.1\n";
        // SAFETY: msg is valid for its length; fds[1] is the pipe's write end.
        assert_eq!(
            unsafe { libc::write(fds[1], msg.as_ptr().cast(), msg.len()) },
            msg.len() as isize
        );
        // SAFETY: closing descriptors this test opened.
        unsafe { libc::close(fds[1]) };
        let mut r = BoundedStdin::new(fds[0], Duration::from_secs(5));
        assert_eq!(read_stdin(&mut r).unwrap(), "IP: 192.0.2.1\n");
        assert!(!r.timed_out());
        // SAFETY: as above.
        unsafe { libc::close(fds[0]) };
    }

    /// A terminal is never read: a person running the hook by hand is not FastNetMon.
    #[test]
    fn a_terminal_is_not_read() {
        // SAFETY: plain libc pty calls; every descriptor opened here is closed below.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 {
                // No pty support in this sandbox: nothing to check here.
                return;
            }
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let name = libc::ptsname(master);
            assert!(!name.is_null());
            let slave = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            let mut r = BoundedStdin::new(slave, Duration::from_secs(30));
            let started = Instant::now();
            assert_eq!(read_stdin(&mut r).unwrap(), "");
            assert!(!r.timed_out(), "returned at once, not after the wait");
            assert!(started.elapsed() < DEADLINE);
            libc::close(slave);
            libc::close(master);
        }
    }
}
