//! End to end through the real `flowguard` binary and `mitigator-sim` on 127.0.0.1:
//! a kill -9 in the middle of an attack, hook events while the service is down, and a
//! hook event plus flowguard's own detection of the same flood being one attack.

mod common;
use common::sim as support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{free_tcp_port, free_udp_port, http_get, http_post, start_flowguard, wait_for};
use serde_json::Value;

const TOKEN: &str = "e2e-token";

fn config(
    api: SocketAddr,
    nf: Option<u16>,
    sim: &support::Sim,
    state: &Path,
    extra: &str,
) -> String {
    let collector = nf
        .map(|p| format!("[[collector]]\nprotocol = \"netflow\"\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
[api]
listen = "{api}"
token = "{TOKEN}"
{collector}
[networks]
protected = ["127.0.0.16/28", "127.0.0.32/27"]
[[hostgroup]]
name = "default"
threshold_pps = 3000
threshold_mbps = 100000
ban_time_seconds = 5
[mitigator]
url = "{}"
username = "{}"
password = "{}"
default_policy = 1
{extra}
[state]
dir = "{}"
"#,
        sim.base,
        support::USER,
        support::PASS,
        state.display()
    )
}

/// PUT switch calls the simulator received, as `name:0|1`, in order.
fn switches(sim: &support::Sim) -> Vec<String> {
    common::sim_switch_puts(sim.addr)
        .iter()
        .map(|c| {
            let (path, v) = c
                .trim_start_matches("PUT ")
                .split_once(' ')
                .unwrap_or(("", ""));
            format!("{}:{v}", path.split('/').next().unwrap_or(""))
        })
        .collect()
}

fn ban(api: SocketAddr, ip: &str, attack_type: &str, protocol: &str) {
    let body = format!(
        r#"{{"action":"ban","ip":"{ip}","direction":"incoming","pps":50000,"attack_type":"{attack_type}","protocol":"{protocol}"}}"#
    );
    let (s, b) = http_post(api, "/api/v1/events/fastnetmon", Some(TOKEN), &body).unwrap();
    assert_eq!(s, 202, "{b}");
}

fn unban(api: SocketAddr, ip: &str) {
    let body = format!(r#"{{"action":"unban","ip":"{ip}","direction":"incoming","pps":0}}"#);
    let (s, b) = http_post(api, "/api/v1/events/fastnetmon", Some(TOKEN), &body).unwrap();
    assert_eq!(s, 202, "{b}");
}

#[test]
fn kill_9_mid_attack_then_restart_restores_and_ends_it() {
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let cfg = config(api, None, &sim, dir.path(), "restore_grace_seconds = 3");
    let mut fg = start_flowguard(&cfg, dir.path(), api);
    ban(api, "127.0.0.30", "icmp_flood", "icmp");
    assert!(
        wait_for(10, || (switches(&sim) == ["toggle:1", "acl:1"])
            .then_some(()))
        .is_some(),
        "{:?}",
        switches(&sim)
    );
    // No goodbye: SIGKILL, so nothing is flushed at exit.
    fg.0.kill().unwrap();
    fg.0.wait().unwrap();
    assert!(
        dir.path().join("mitigation.json").is_file(),
        "state file written before the crash"
    );
    // The appliance keeps its switches; flowguard comes back, restores the attack from its
    // state file, and ends it when nothing renews it within the grace period.
    let _fg2 = start_flowguard(&cfg, dir.path(), api);
    let done = wait_for(20, || {
        (switches(&sim) == ["toggle:1", "acl:1", "acl:0", "toggle:0"]).then_some(())
    });
    assert!(done.is_some(), "after restart: {:?}", switches(&sim));
}

#[test]
fn hook_events_while_the_service_is_down_are_spooled_and_applied_at_start() {
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let cfg = config(api, None, &sim, dir.path(), "");
    let cfg_path = dir.path().join("flowguard.toml");
    std::fs::write(&cfg_path, &cfg).unwrap();
    // FastNetMon's own SYN flood report, as it pipes it to the notify script.
    let floods =
        std::fs::read_to_string(common::reference().join("fastnetmon-1.2.4-notify-floods.txt"))
            .unwrap();
    let report: String = floods
        .split("##### ")
        .find(|s| s.starts_with("BAN") && s.contains("flood=syn"))
        .expect("a SYN ban in the reference")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("BAN"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut hook = Command::new(env!("CARGO_BIN_EXE_flowguard"))
        .args(["hook", "fastnetmon", "--config"])
        .arg(&cfg_path)
        .args(["127.0.0.31", "incoming", "37423", "ban"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    hook.stdin
        .take()
        .unwrap()
        .write_all(report.as_bytes())
        .unwrap();
    let out = hook.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spooled = std::fs::read_dir(dir.path().join("spool"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(spooled, 1, "service down: the ban is spooled");
    assert!(switches(&sim).is_empty());
    let _fg = start_flowguard(&cfg, dir.path(), api);
    let on = wait_for(10, || {
        (switches(&sim) == ["toggle:1", "tcp:1"]).then_some(())
    });
    assert!(
        on.is_some(),
        "spooled ban applied at start: {:?}",
        switches(&sim)
    );
    assert!(wait_for(5, || (std::fs::read_dir(dir.path().join("spool"))
        .map(|d| d.count())
        .unwrap_or(0)
        == 0)
        .then_some(()))
    .is_some());
    let st = Command::new(env!("CARGO_BIN_EXE_flowguard"))
        .args(["hook", "fastnetmon", "--config"])
        .arg(&cfg_path)
        .args(["127.0.0.31", "incoming", "37423", "unban"])
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let off = wait_for(10, || {
        (switches(&sim) == ["toggle:1", "tcp:1", "tcp:0", "toggle:0"]).then_some(())
    });
    assert!(off.is_some(), "{:?}", switches(&sim));
}

#[test]
fn hook_event_and_own_detection_of_one_flood_are_one_attack() {
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let nf = free_udp_port();
    let _fg = start_flowguard(
        &config(api, Some(nf), &sim, dir.path(), ""),
        dir.path(),
        api,
    );
    // FastNetMon says .20 is under a SYN flood...
    ban(api, "127.0.0.20", "syn_flood", "tcp");
    assert!(wait_for(10, || (switches(&sim) == ["toggle:1", "tcp:1"])
        .then_some(()))
    .is_some());
    // ...and flowguard's own collectors see the same flood (and the three others).
    let sent = common::send_capture(
        &common::vectors().join("v-softflowd-nf9.pcap"),
        format!("127.0.0.1:{nf}").parse().unwrap(),
    );
    assert!(sent > 2000);
    let attacks = || -> Value {
        http_get(api, "/api/v1/attacks")
            .ok()
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(Value::Null)
    };
    let joined = wait_for(15, || {
        let a = attacks();
        let active = a["active"].as_array()?.clone();
        let on20: Vec<&Value> = active.iter().filter(|x| x["ip"] == "127.0.0.20").collect();
        (on20.len() == 1 && on20[0]["own_active"] == true && active.len() == 4).then(|| a.clone())
    });
    assert!(
        joined.is_some(),
        "one attack on .20, seen by both: {}",
        attacks()
    );
    // FastNetMon's unban does not end it while flowguard still sees the flood.
    unban(api, "127.0.0.20");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let a = attacks();
    assert!(
        a["active"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["ip"] == "127.0.0.20"),
        "still active after the hook's unban: {a}"
    );
    // Once both say it is over, everything is switched off, each switch exactly once.
    let done = wait_for(30, || {
        let s = switches(&sim);
        (s.last().map(String::as_str) == Some("toggle:0")).then_some(s)
    })
    .unwrap_or_else(|| panic!("not switched off: {:?}", switches(&sim)));
    for sw in ["toggle", "tcp", "acl", "sorb"] {
        for v in [0, 1] {
            let n = done.iter().filter(|c| **c == format!("{sw}:{v}")).count();
            assert_eq!(n, 1, "{sw}:{v} exactly once in {done:?}");
        }
    }
    let a = attacks();
    let ended20: Vec<&Value> = a["recent"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["ip"] == "127.0.0.20")
        .collect();
    assert_eq!(ended20.len(), 1, "one attack, not two: {a}");
    assert_eq!(
        ended20[0]["threshold"], "external",
        "it started with the hook's ban"
    );
}
