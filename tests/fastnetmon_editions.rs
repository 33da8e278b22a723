//! Every FastNetMon edition's notify call through `flowguard hook fastnetmon` and the web
//! callback endpoint: Community 1.2.6+ text (dumps at ban, nothing at unban), FastNetMon
//! Advanced JSON on stdin and as web callbacks (all actions, host and hostgroup scope), and
//! one mitigation for a victim several instances report, ended by the last of them.
//!
//! The 1.2.6 text and the Advanced documents are hand-written fixtures (tests/data/hooks,
//! see its README), with FastNetMon's published layout and field names.

mod common;
use common::sim as support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::Instant;

use common::{free_tcp_port, http_get, http_post, sim_switch_puts, start_flowguard, wait_for};
use flowguard::config::Config;
use flowguard::hooks::cli::{run_hook, HookArgs, DEADLINE, EXIT_USAGE};
use flowguard::hooks::endpoint::{router, HookEndpoint};
use flowguard::hooks::{ExternalEvent, HookAction};
use flowguard::metrics::Metrics;
use flowguard::model::{AttackType, Direction, Protocol};
use tokio::sync::mpsc;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/hooks")
            .join(name),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

const CONFIG: &str = r#"
[networks]
protected = ["127.0.0.32/27"]
[[hostgroup]]
name = "default"
threshold_pps = 1000000
[[hostgroup]]
name = "customers"
prefixes = ["127.0.0.48/29"]
threshold_pps = 1000000
"#;

struct Endpoint {
    rt: tokio::runtime::Runtime,
    rx: mpsc::Receiver<ExternalEvent>,
    cfg: Config,
}

/// The real endpoint on 127.0.0.1:0 and a config pointing the hook at it.
fn endpoint(state: &Path) -> Endpoint {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut cfg = Config::from_toml_str(CONFIG).unwrap();
    let (tx, rx) = mpsc::channel(16);
    let app = router(HookEndpoint {
        token: Some("tok".into()),
        tx,
        metrics: Arc::new(Metrics::new()),
        max_body_bytes: 256 * 1024,
        hostgroups: flowguard::hooks::advanced::Hostgroups::from_config(&cfg),
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    cfg.api.listen = listener.local_addr().unwrap();
    cfg.api.token = Some("tok".into());
    cfg.state.dir = state.to_path_buf();
    rt.spawn(async move { axum::serve(listener, app).await });
    Endpoint { rt, rx, cfg }
}

fn args(v: &[&str]) -> HookArgs {
    let g = |i: usize| v.get(i).map_or(String::new(), |s| s.to_string());
    HookArgs {
        ip: g(0),
        direction: g(1),
        pps: g(2),
        action: g(3),
        source: None,
    }
}

#[test]
fn community_126_text_ban_and_silent_unban() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ep = endpoint(tmp.path());
    let report = fixture("fastnetmon-1.2.6-notify-udp-ban.txt");
    let code = run_hook(
        &ep.cfg,
        &args(&["127.0.0.44", "incoming", "61280", "ban"]),
        &mut report.as_bytes(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    let ev = ep.rx.try_recv().unwrap();
    // 1.2.6 says unknown/unknown; the rates say UDP, and the dump's lines do not leak in.
    assert_eq!(ev.classified(), (AttackType::UdpFlood, Protocol::Udp));
    let text = ev.report.unwrap();
    assert!(text.contains("Incoming udp pps: 61070"));
    assert!(
        !text.contains("999999") && !text.contains("Flow dump"),
        "{text}"
    );
    assert!(ev.source.unwrap().starts_with("fastnetmon"));
    let code = run_hook(
        &ep.cfg,
        &args(&["127.0.0.44", "incoming", "61280", "unban"]),
        &mut std::io::empty(),
    );
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(ep.rx.try_recv().unwrap().action, HookAction::Unban);
    drop(ep.rt);
}

#[test]
fn advanced_json_on_stdin_every_action_and_scope() {
    let tmp = tempfile::tempdir().unwrap();
    let mut ep = endpoint(tmp.path());
    let mut run = |file: &str, argv: &[&str]| -> ExternalEvent {
        let doc = fixture(file);
        let code = run_hook(&ep.cfg, &args(argv), &mut doc.as_bytes());
        assert_eq!(code, ExitCode::SUCCESS, "{file}");
        ep.rx
            .try_recv()
            .unwrap_or_else(|_| panic!("{file}: nothing delivered"))
    };
    // Advanced's legacy arguments (`ban <IP>`) are ignored in favour of the document.
    let ban = run("advanced-ban-host.json", &["ban", "127.0.0.45"]);
    assert_eq!(
        (ban.action, ban.ip.to_string(), ban.direction, ban.pps),
        (
            HookAction::Ban,
            "127.0.0.45".into(),
            Direction::Incoming,
            48210
        )
    );
    assert_eq!(ban.classified(), (AttackType::SynFlood, Protocol::Tcp));
    assert_eq!(ban.source.as_deref(), Some("fastnetmon-advanced"));
    let status = run("advanced-attack-status-host.json", &[]);
    assert_eq!(status.action, HookAction::AttackDetails);
    let unban = run("advanced-unban-host.json", &["unban", "127.0.0.45"]);
    assert_eq!((unban.action, unban.attack_type), (HookAction::Unban, None));

    // Hostgroup scope: keyed on the flowguard group's first prefix.
    let hg = run("advanced-ban-hostgroup.json", &[]);
    assert_eq!(hg.ip.to_string(), "127.0.0.48");
    assert_eq!(hg.classified(), (AttackType::UdpFlood, Protocol::Udp));
    let hg_off = run("advanced-unban-hostgroup.json", &[]);
    assert_eq!((hg_off.action, hg_off.ip), (HookAction::Unban, hg.ip));

    // Partial block: the flow spec's vector, its own claim.
    let pb = run("advanced-partial-block.json", &[]);
    assert_eq!(pb.action, HookAction::Ban);
    assert_eq!(pb.classified(), (AttackType::UdpFlood, Protocol::Udp));
    assert_eq!(pb.source.as_deref(), Some("fastnetmon-advanced/partial"));
    let pu = run("advanced-partial-unblock.json", &[]);
    assert_eq!((pu.action, pu.source), (HookAction::Unban, pb.source));

    // Malformed or inapplicable: exit 2, nothing delivered, nothing spooled.
    for bad in [
        fixture("advanced-ban-host.json").replace("\"ban\"", "\"obliterate\""),
        fixture("advanced-ban-hostgroup.json").replace("customers", "nobody"),
        fixture("advanced-ban-host.json").replace("48210", "\"lots\""),
        "{\"action\": \"ban\", \"ip\": ".to_string(),
    ] {
        let code = run_hook(&ep.cfg, &HookArgs::default(), &mut bad.as_bytes());
        assert_eq!(code, ExitCode::from(EXIT_USAGE), "{bad}");
    }
    assert!(ep.rx.try_recv().is_err());
    assert_eq!(
        flowguard::hooks::spool::pending(&flowguard::hooks::spool::spool_dir(tmp.path())),
        0
    );
    drop(ep.rt);
}

/// Runs the real binary with stdin a pipe kept open and silent (nothing is written, nothing
/// closes it): it must finish on its own, well within FastNetMon's patience.
#[test]
fn the_binary_does_not_wait_on_a_silent_stdin() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let cfg_path = tmp.path().join("fg.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "{CONFIG}\n[api]\nlisten = \"{dead_addr}\"\ntoken = \"t\"\n[state]\ndir = \"{}\"\n",
            tmp.path().display()
        ),
    )
    .unwrap();
    for action in ["unban", "ban"] {
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowguard"))
            .args(["hook", "fastnetmon", "--config"])
            .arg(&cfg_path)
            .args(["127.0.0.44", "incoming", "5", action])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let status = wait_for(DEADLINE.as_secs() * 2, || child.try_wait().ok().flatten());
        let Some(status) = status else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{action}: still waiting on its stdin");
        };
        assert!(status.success(), "{action}: {status}");
        assert!(started.elapsed() < DEADLINE * 2);
        drop(stdin);
    }
    // Both events were kept (the service is down): spooled, in order.
    assert_eq!(
        flowguard::hooks::spool::pending(&flowguard::hooks::spool::spool_dir(tmp.path())),
        2
    );
}

fn hook_bin(cfg: &Path, source: &str, argv: &[&str], stdin: &str) -> std::process::ExitStatus {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowguard"))
        .args(["hook", "fastnetmon", "--config"])
        .arg(cfg)
        .args(["--source", source])
        .args(argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut w = child.stdin.take().unwrap();
    w.write_all(stdin.as_bytes()).unwrap();
    drop(w);
    match wait_for(DEADLINE.as_secs() * 2, || child.try_wait().ok().flatten()) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("hook did not finish");
        }
    }
}

fn held_unbans(api: SocketAddr) -> u64 {
    http_get(api, "/metrics")
        .ok()
        .and_then(|(_, b)| {
            b.lines()
                .find(|l| {
                    l.starts_with("flowguard_hook_events_total")
                        && l.contains("action=\"unban\"")
                        && l.contains("outcome=\"held\"")
                })
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// A Community instance (text hook) and an Advanced one (web callback) report the same
/// victim: MITIGATOR is switched once, stays on after the first unban, and is switched off
/// after the second. Then an Advanced hostgroup alert mitigates the group's policy.
#[test]
fn two_instances_one_mitigation_ended_by_the_last() {
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let cfg = format!(
        r#"{CONFIG}
[api]
listen = "{api}"
token = "tok"
[mitigator]
url = "{}"
username = "{}"
password = "{}"
default_policy = 1
policy_by_hostgroup = {{ customers = 2 }}
[state]
dir = "{}"
"#,
        sim.base,
        support::USER,
        support::PASS,
        d.display()
    );
    let _fg = start_flowguard(&cfg, d, api);
    let cfg_path = d.join("flowguard.toml");
    let switches = || sim_switch_puts(sim.addr);
    let log = || std::fs::read_to_string(d.join("flowguard.log")).unwrap_or_default();

    // Community: the 1.2.4 SYN report (FastNetMon's real text), through the binary.
    let floods = fixture("fastnetmon-1.2.4-notify-floods.txt");
    let mut on = false;
    let mut syn = String::new();
    for l in floods.lines() {
        if l.starts_with("##### ") {
            on = l.starts_with("##### BAN") && l.contains("flood=syn ");
        } else if on && !l.starts_with('#') {
            syn.push_str(l);
            syn.push('\n');
        }
    }
    assert!(syn.contains("syn_flood"));
    let st = hook_bin(
        &cfg_path,
        "fnm-a",
        &["127.0.0.45", "incoming", "37423", "ban"],
        &syn,
    );
    assert!(st.success(), "{st}\n{}", log());
    // Advanced: the same victim, as a web callback with the secret in the URL.
    let (code, body) = http_post(
        api,
        "/api/v1/events/fastnetmon-advanced/tok?source=fnm-b",
        None,
        &fixture("advanced-ban-host.json"),
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    let up = wait_for(20, || {
        let s = switches();
        s.iter()
            .any(|c| c == "PUT tcp/switch?policy=1 1")
            .then_some(s)
    });
    assert!(up.is_some(), "no mitigation: {:?}\n{}", switches(), log());

    // The Community instance ends its attack: held, MITIGATOR untouched.
    let st = hook_bin(
        &cfg_path,
        "fnm-a",
        &["127.0.0.45", "incoming", "37423", "unban"],
        "",
    );
    assert!(st.success());
    assert!(
        wait_for(20, || (held_unbans(api) == 1).then_some(())).is_some(),
        "first unban not held\n{}",
        log()
    );
    assert_eq!(
        switches(),
        ["PUT toggle/switch?policy=1 1", "PUT tcp/switch?policy=1 1"],
        "one mitigation, still on"
    );
    // The last one ends it.
    let (code, _) = http_post(
        api,
        "/api/v1/events/fastnetmon-advanced?source=fnm-b",
        Some("tok"),
        &fixture("advanced-unban-host.json"),
    )
    .unwrap();
    assert_eq!(code, 202);
    let off = wait_for(20, || {
        let s = switches();
        s.iter()
            .any(|c| c == "PUT toggle/switch?policy=1 0")
            .then_some(s)
    });
    assert_eq!(
        off.unwrap_or_else(|| panic!("not ended: {:?}\n{}", switches(), log())),
        [
            "PUT toggle/switch?policy=1 1",
            "PUT tcp/switch?policy=1 1",
            "PUT tcp/switch?policy=1 0",
            "PUT toggle/switch?policy=1 0"
        ]
    );

    // Hostgroup scope: the group's policy (policy_by_hostgroup), the UDP countermeasure.
    let (code, body) = http_post(
        api,
        "/api/v1/events/fastnetmon-advanced",
        Some("tok"),
        &fixture("advanced-ban-hostgroup.json"),
    )
    .unwrap();
    assert_eq!(code, 202, "{body}");
    assert!(
        wait_for(20, || switches()
            .iter()
            .any(|c| c == "PUT sorb/switch?policy=2 1")
            .then_some(()))
        .is_some(),
        "{:?}\n{}",
        switches(),
        log()
    );
    let (code, _) = http_post(
        api,
        "/api/v1/events/fastnetmon-advanced",
        Some("tok"),
        &fixture("advanced-unban-hostgroup.json"),
    )
    .unwrap();
    assert_eq!(code, 202);
    assert!(
        wait_for(20, || switches()
            .iter()
            .any(|c| c == "PUT toggle/switch?policy=2 0")
            .then_some(()))
        .is_some(),
        "{:?}\n{}",
        switches(),
        log()
    );
    // Refused callbacks are answered at once (nothing is queued for them).
    let (code, _) = http_post(
        api,
        "/api/v1/events/fastnetmon-advanced/wrong",
        None,
        &fixture("advanced-ban-host.json"),
    )
    .unwrap();
    assert_eq!(code, 401);
    let (code, body) = http_post(
        api,
        "/api/v1/events/fastnetmon-advanced",
        Some("tok"),
        &fixture("advanced-ban-hostgroup.json").replace("customers", "nobody"),
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
}
