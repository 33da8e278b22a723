//! The real FastNetMon 1.2.4 as the detector, flowguard as its notify script: softflowd
//! exports a bounded hping3 ICMP flood on `lo` to FastNetMon, FastNetMon calls
//! `flowguard hook fastnetmon` (through the one-line wrapper) on ban and unban, and the
//! running `flowguard run` switches MITIGATOR (the simulator) on, then off.
//!
//! Needs root and the Debian packages the README's test command installs. FastNetMon runs
//! with usage reporting off and every listener on 127.0.0.1 (../shared/reference's test
//! config, ports and ban time changed).

mod common;
use common::sim as support;

use std::net::SocketAddr;
use std::process::Command;

use common::{free_tcp_port, free_udp_port, hping3, http_get, spawn, start_flowguard, wait_for};
use serde_json::Value;

#[test]
fn fastnetmon_ban_and_unban_drive_mitigator_through_the_hook() {
    let tools = ["fastnetmon", "softflowd", "hping3"]
        .iter()
        .all(|t| common::require_tool(t));
    if !common::is_root() {
        if std::env::var("FLOWGUARD_SKIP_REAL_TOOLS").as_deref() == Ok("1") {
            return;
        }
        panic!("needs root (FastNetMon, hping3, pcap); set FLOWGUARD_SKIP_REAL_TOOLS=1 to skip");
    }
    if !tools {
        return;
    }
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let fg_cfg = format!(
        r#"
[api]
listen = "{api}"
token = "hooktoken"
[networks]
protected = ["127.0.0.56/29"]
[mitigator]
url = "{}"
username = "{}"
password = "{}"
default_policy = 1
[state]
dir = "{}"
"#,
        sim.base,
        support::USER,
        support::PASS,
        d.display()
    );
    let _fg = start_flowguard(&fg_cfg, d, api);

    // FastNetMon's notify_script_path takes one path: the README's one-line wrapper.
    let notify = d.join("notify.sh");
    std::fs::write(
        &notify,
        format!(
            "#!/bin/sh\necho \"$(date +%s.%N) $*\" >> {calls}\nexec {bin} hook fastnetmon --config {cfg} \"$@\" 2>> {log}\n",
            calls = d.join("notify-calls.log").display(),
            bin = env!("CARGO_BIN_EXE_flowguard"),
            cfg = d.join("flowguard.toml").display(),
            log = d.join("hook.log").display(),
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("755")
        .arg(&notify)
        .status()
        .unwrap();
    std::fs::write(d.join("networks_list"), "127.0.0.56/29\n").unwrap();
    std::fs::write(d.join("whitelist"), "").unwrap();
    let nf = free_udp_port();
    let reference = std::fs::read_to_string(common::reference().join("fastnetmon-test.conf"))
        .expect("reference FastNetMon config");
    let fnm_conf = reference
        .replace("@DIR@", &d.display().to_string())
        .replace("@NOTIFY@", &notify.display().to_string())
        .replace("netflow_port = 12055", &format!("netflow_port = {nf}"))
        .replace(
            "sflow_port = 16343",
            &format!("sflow_port = {}", free_udp_port()),
        )
        .replace(
            "prometheus_port = 19209",
            &format!("prometheus_port = {}", free_tcp_port()),
        )
        .replace("ban_time = 30", "ban_time = 10");
    assert!(
        fnm_conf.contains("disable_usage_report = on")
            && fnm_conf.contains("netflow_host = 127.0.0.1")
    );
    let fnm_path = d.join("fastnetmon.conf");
    std::fs::write(&fnm_path, fnm_conf).unwrap();
    let _fnm = spawn(
        "fastnetmon",
        Command::new("fastnetmon")
            .arg("--configuration_file")
            .arg(&fnm_path)
            .arg("--log_file")
            .arg(d.join("fastnetmon.log"))
            .arg("--disable_pid_logic")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let _sf = spawn(
        "softflowd",
        Command::new("softflowd")
            .args([
                "-i",
                "lo",
                "-v",
                "9",
                "-n",
                &format!("127.0.0.1:{nf}"),
                "-d",
            ])
            .args(["-t", "maxlife=1", "-t", "expint=1", "-t", "icmp=1"])
            .arg("-p")
            .arg(d.join("sf.pid"))
            .arg("-c")
            .arg(d.join("sf.ctl"))
            .arg("host 127.0.0.57")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    std::thread::sleep(std::time::Duration::from_secs(4));
    // ~10 000 pps of ICMP for about 6 s, to loopback, bounded by count and time.
    hping3(&["--icmp", "-i", "u100", "-c", "60000"], "127.0.0.57");
    let switches = || common::sim_switch_puts(sim.addr);
    let diag = || {
        format!(
            "calls: {:?}\nnotify calls:\n{}\nhook log:\n{}\nflowguard log:\n{}",
            switches(),
            std::fs::read_to_string(d.join("notify-calls.log")).unwrap_or_default(),
            std::fs::read_to_string(d.join("hook.log")).unwrap_or_default(),
            std::fs::read_to_string(d.join("flowguard.log")).unwrap_or_default()
        )
    };
    let on = wait_for(30, || {
        let s = switches();
        s.iter()
            .any(|c| c == "PUT acl/switch?policy=1 1")
            .then_some(s)
    });
    assert!(
        on.is_some(),
        "FastNetMon's ban did not switch acl on\n{}",
        diag()
    );
    // The attack as flowguard sees it came from the hook, classified from the report.
    let (_, body) = http_get(api, "/api/v1/attacks").unwrap();
    let attacks: Value = serde_json::from_str(&body).unwrap();
    let all: Vec<&Value> = attacks["active"]
        .as_array()
        .unwrap()
        .iter()
        .chain(attacks["recent"].as_array().unwrap())
        .collect();
    assert!(
        all.iter().any(|a| a["ip"] == "127.0.0.57"
            && a["attack_type"] == "icmp_flood"
            && a["threshold"] == "external"),
        "{body}"
    );
    // FastNetMon unbans ban_time (10 s) after the attack is over.
    let off = wait_for(60, || {
        let s = switches();
        s.iter()
            .any(|c| c == "PUT toggle/switch?policy=1 0")
            .then_some(s)
    });
    assert!(
        off.is_some(),
        "FastNetMon's unban did not switch the policy off\n{}",
        diag()
    );
    assert_eq!(
        off.unwrap(),
        [
            "PUT toggle/switch?policy=1 1",
            "PUT acl/switch?policy=1 1",
            "PUT acl/switch?policy=1 0",
            "PUT toggle/switch?policy=1 0"
        ],
        "{}",
        diag()
    );
    let calls = std::fs::read_to_string(d.join("notify-calls.log")).unwrap_or_default();
    assert!(
        calls.contains("127.0.0.57 incoming") && calls.contains(" ban") && calls.contains(" unban"),
        "{calls}"
    );
}
