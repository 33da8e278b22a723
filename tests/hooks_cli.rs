//! `run_hook` end to end, in process: FastNetMon's real reports through the hook into the
//! real endpoint on 127.0.0.1:0, and the spool when the service is not there.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use flowguard::config::Config;
use flowguard::hooks::cli::{run_hook, HookArgs, DEADLINE, EXIT_REJECTED, EXIT_SPOOL_FAILED};
use flowguard::hooks::endpoint::{router, HookEndpoint};
use flowguard::hooks::spool::{drain_spool, pending, spool_dir};
use flowguard::hooks::{ExternalEvent, HookAction};
use flowguard::metrics::Metrics;
use flowguard::model::{AttackType, Direction, Protocol};
use tokio::sync::mpsc;

const FLOODS: &str = include_str!("data/hooks/fastnetmon-1.2.4-notify-floods.txt");

/// The stdin FastNetMon gave the `ban` of the named flood (as the contract check cuts it).
fn ban_report(flood: &str) -> String {
    let mut on = false;
    let mut out = String::new();
    for line in FLOODS.lines() {
        if line.starts_with("##### ") {
            on = line.starts_with("##### BAN") && line.contains(&format!("flood={flood} "));
        } else if on && !line.starts_with('#') {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(out.contains("Attack type:"), "no {flood} report found");
    out
}

fn args(ip: &str, dir: &str, pps: &str, action: &str) -> HookArgs {
    HookArgs {
        ip: ip.into(),
        direction: dir.into(),
        pps: pps.into(),
        action: action.into(),
        source: None,
    }
}

struct Service {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    rx: mpsc::Receiver<ExternalEvent>,
    metrics: Arc<Metrics>,
}

/// The real endpoint on a free loopback port, with a queue of `cap` events.
fn start_service(token: Option<&str>, cap: usize) -> Service {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel(cap);
    let metrics = Arc::new(Metrics::new());
    let app = router(HookEndpoint {
        token: token.map(String::from),
        tx,
        metrics: metrics.clone(),
        max_body_bytes: 256 * 1024,
        hostgroups: Default::default(),
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await });
    Service {
        rt,
        addr,
        rx,
        metrics,
    }
}

fn config(listen: SocketAddr, token: Option<&str>, state: &Path) -> Config {
    let mut cfg = Config::default();
    cfg.api.listen = listen;
    cfg.api.token = token.map(String::from);
    cfg.state.dir = state.to_path_buf();
    cfg
}

/// A loopback port with nothing listening on it.
fn dead_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn spool_files(state: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(spool_dir(state))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn ban_and_unban_reach_the_service() {
    let tmp = tempfile::tempdir().unwrap();
    let mut svc = start_service(Some("checktoken"), 8);
    let cfg = config(svc.addr, Some("checktoken"), tmp.path());

    let report = ban_report("syn");
    let code = run_hook(
        &cfg,
        &args("127.0.0.35", "incoming", "37423", "ban"),
        &mut report.as_bytes(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let ev = svc.rx.try_recv().expect("ban delivered synchronously");
    assert_eq!(ev.action, HookAction::Ban);
    assert_eq!(ev.ip.to_string(), "127.0.0.35");
    assert_eq!(ev.direction, Direction::Incoming);
    assert_eq!(ev.pps, 37423);
    assert_eq!(ev.attack_type, Some(AttackType::SynFlood));
    assert_eq!(ev.protocol, Some(Protocol::Tcp));
    assert!(ev
        .report
        .as_deref()
        .unwrap()
        .contains("Incoming syn tcp pps: 37423"));

    let code = run_hook(
        &cfg,
        &args("127.0.0.35", "incoming", "37423", "unban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let ev = svc.rx.try_recv().unwrap();
    assert_eq!(ev.action, HookAction::Unban);
    assert_eq!(ev.report, None);
    assert!(spool_files(tmp.path()).is_empty());
    assert_eq!(
        svc.metrics
            .hook_events
            .with_label_values(&["ban", "accepted"])
            .get(),
        1
    );
    drop(svc.rt);
}

#[test]
fn udp_and_icmp_reports_are_classified() {
    let tmp = tempfile::tempdir().unwrap();
    let mut svc = start_service(Some("t"), 8);
    let cfg = config(svc.addr, Some("t"), tmp.path());
    for (flood, want) in [
        ("udp", (AttackType::UdpFlood, Protocol::Udp)),
        ("icmp", (AttackType::IcmpFlood, Protocol::Icmp)),
    ] {
        let report = ban_report(flood);
        let code = run_hook(
            &cfg,
            &args("127.0.0.10", "incoming", "1000", "ban"),
            &mut report.as_bytes(),
        );
        assert_eq!(code, ExitCode::SUCCESS);
        let ev = svc.rx.try_recv().unwrap();
        assert_eq!((ev.attack_type.unwrap(), ev.protocol.unwrap()), want);
    }
}

#[test]
fn unreachable_service_spools_and_the_drainer_delivers() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(dead_port(), Some("t"), tmp.path());
    let report = ban_report("syn");
    let code = run_hook(
        &cfg,
        &args("127.0.0.35", "incoming", "37423", "ban"),
        &mut report.as_bytes(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let code = run_hook(
        &cfg,
        &args("127.0.0.35", "incoming", "37423", "unban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let files = spool_files(tmp.path());
    assert_eq!(files.len(), 2, "{files:?}");
    let first: ExternalEvent = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    assert_eq!(first.action, HookAction::Ban);
    assert_eq!(first.attack_type, Some(AttackType::SynFlood));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::channel(8);
    let metrics = Metrics::new();
    let n = rt.block_on(drain_spool(&spool_dir(tmp.path()), &tx, &metrics));
    assert_eq!(n, 2);
    assert_eq!(rx.try_recv().unwrap(), first);
    assert_eq!(rx.try_recv().unwrap().action, HookAction::Unban);
    assert!(spool_files(tmp.path()).is_empty());
}

#[test]
fn a_hanging_service_does_not_hold_fastnetmon_past_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    // Accepts connections (the kernel does) but never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = config(silent.local_addr().unwrap(), Some("t"), tmp.path());
    let started = Instant::now();
    let code = run_hook(
        &cfg,
        &args("127.0.0.35", "incoming", "1", "ban"),
        &mut std::io::empty(),
    );
    let took = started.elapsed();
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(took < DEADLINE, "took {took:?}");
    assert_eq!(pending(&spool_dir(tmp.path())), 1);
    drop(silent);
}

#[test]
fn wrong_token_and_full_queue_spool_instead_of_losing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut svc = start_service(Some("right"), 1);
    let cfg = config(svc.addr, Some("wrong"), tmp.path());
    let code = run_hook(
        &cfg,
        &args("192.0.2.1", "incoming", "5", "ban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert!(svc.rx.try_recv().is_err());
    assert_eq!(pending(&spool_dir(tmp.path())), 1);

    // Right token, but the queue is full: spooled too.
    let tmp2 = tempfile::tempdir().unwrap();
    let cfg = config(svc.addr, Some("right"), tmp2.path());
    let code = run_hook(
        &cfg,
        &args("192.0.2.1", "incoming", "5", "ban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(pending(&spool_dir(tmp2.path())), 0, "first fits the queue");
    let code = run_hook(
        &cfg,
        &args("192.0.2.2", "incoming", "5", "ban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(pending(&spool_dir(tmp2.path())), 1, "second is spooled");
    assert_eq!(svc.rx.try_recv().unwrap().ip.to_string(), "192.0.2.1");
}

#[test]
fn pending_spool_keeps_order() {
    let tmp = tempfile::tempdir().unwrap();
    // The ban is spooled while the service is down...
    let cfg_down = config(dead_port(), Some("t"), tmp.path());
    let report = ban_report("icmp");
    assert_eq!(
        run_hook(
            &cfg_down,
            &args("127.0.0.10", "incoming", "76530", "ban"),
            &mut report.as_bytes()
        ),
        ExitCode::SUCCESS
    );
    // ...then the service is back before the drainer ran: the unban must not overtake it.
    let mut svc = start_service(Some("t"), 8);
    let cfg = config(svc.addr, Some("t"), tmp.path());
    assert_eq!(
        run_hook(
            &cfg,
            &args("127.0.0.10", "incoming", "76530", "unban"),
            &mut std::io::empty()
        ),
        ExitCode::SUCCESS
    );
    assert!(
        svc.rx.try_recv().is_err(),
        "unban went behind the spooled ban"
    );
    let (tx, mut rx) = mpsc::channel(8);
    let n = svc
        .rt
        .block_on(drain_spool(&spool_dir(tmp.path()), &tx, &svc.metrics));
    assert_eq!(n, 2);
    assert_eq!(rx.try_recv().unwrap().action, HookAction::Ban);
    assert_eq!(rx.try_recv().unwrap().action, HookAction::Unban);
}

#[test]
fn refused_events_and_unwritable_spool_fail_loudly() {
    // A service that refuses the event as malformed: spooling would not help.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .fallback(|| async { (axum::http::StatusCode::BAD_REQUEST, "{\"error\":\"no\"}") });
    rt.spawn(async move { axum::serve(listener, app).await });
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(addr, Some("t"), tmp.path());
    let code = run_hook(
        &cfg,
        &args("192.0.2.1", "incoming", "5", "ban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::from(EXIT_REJECTED));
    assert_eq!(pending(&spool_dir(tmp.path())), 0);

    // Nothing listening and the state dir is a file: the event cannot be kept.
    let file = tmp.path().join("state-is-a-file");
    std::fs::write(&file, b"").unwrap();
    let cfg = config(dead_port(), Some("t"), &file);
    let code = run_hook(
        &cfg,
        &args("192.0.2.1", "incoming", "5", "ban"),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::from(EXIT_SPOOL_FAILED));
}
