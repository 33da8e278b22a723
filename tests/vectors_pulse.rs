//! Pulse waves with a real exporter: softflowd (NetFlow v9) watches `lo` while hping3 sends
//! three bounded UDP bursts far over the threshold to 127.0.0.93, separated by gaps longer
//! than the averaging window (the rate falls under the threshold) and shorter than
//! `ban_time_seconds`: flowguard must report one attack, with one start and one end.
//!
//! Needs root (hping3, pcap on lo). Loopback only; every process it starts is stopped with
//! its process group, and none is left.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{free_tcp_port, free_udp_port, hping3, http_get, spawn, start_flowguard, wait_for};
use serde_json::Value;

fn attacks_on(api: SocketAddr, ip: &str) -> Vec<Value> {
    let Ok((200, b)) = http_get(api, "/api/v1/attacks") else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&b).unwrap_or_default();
    ["active", "recent"]
        .iter()
        .flat_map(|k| v[k].as_array().cloned().unwrap_or_default())
        .filter(|a| a["ip"] == ip)
        .collect()
}

/// The incoming rate flowguard currently sees for `ip`.
fn pps(api: SocketAddr, ip: &str) -> u64 {
    http_get(api, &format!("/api/v1/hosts/{ip}"))
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
        .and_then(|h| {
            h["directions"]
                .as_array()?
                .iter()
                .find(|d| d["direction"] == "incoming")
                .and_then(|d| d["rates"]["pps"].as_u64())
        })
        .unwrap_or(0)
}

#[test]
fn a_pulse_wave_from_a_real_exporter_is_one_attack() {
    let tools = ["softflowd", "hping3"]
        .iter()
        .all(|t| common::require_tool(t));
    if !tools || !common::is_root() {
        if std::env::var("FLOWGUARD_SKIP_REAL_TOOLS").as_deref() == Ok("1") {
            return;
        }
        panic!("needs root and softflowd/hping3; set FLOWGUARD_SKIP_REAL_TOOLS=1 to skip");
    }
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let nf = free_udp_port();
    let fg = start_flowguard(
        &format!(
            r#"
[api]
listen = "{api}"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:{nf}"
[networks]
protected = ["127.0.0.93/32"]
[[hostgroup]]
name = "default"
threshold_pps = 1000
ban_time_seconds = 15
[state]
dir = "{}"
"#,
            dir.path().display()
        ),
        dir.path(),
        api,
    );
    let sfd = spawn(
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
            .args(["-t", "maxlife=1", "-t", "expint=1"])
            .arg("-p")
            .arg(dir.path().join("sf.pid"))
            .arg("-c")
            .arg(dir.path().join("sf.ctl"))
            .arg("host 127.0.0.93")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut under_between = 0;
    for burst in 0..3 {
        // ~2 s at ~5 000 pps: 5 times the threshold.
        hping3(
            &[
                "--udp", "-p", "5353", "-d", "64", "-i", "u200", "-c", "10000",
            ],
            "127.0.0.93",
        );
        if burst < 2 {
            // Longer than the 5 s window: the average falls under the threshold.
            std::thread::sleep(std::time::Duration::from_secs(8));
            if pps(api, "127.0.0.93") < 1000 {
                under_between += 1;
            }
        }
    }
    let ended = wait_for(45, || {
        let a = attacks_on(api, "127.0.0.93");
        (!a.is_empty() && a.iter().all(|a| a["active"] == false)).then_some(a)
    });
    let log = std::fs::read_to_string(dir.path().join("flowguard.log")).unwrap_or_default();
    let attacks = ended.unwrap_or_else(|| panic!("{:?}; log {log}", attacks_on(api, "127.0.0.93")));
    assert_eq!(
        under_between, 2,
        "the rate must fall under the threshold between bursts, or this is no pulse test"
    );
    assert_eq!(attacks.len(), 1, "one attack for three bursts: {attacks:?}");
    assert_eq!(attacks[0]["attack_type"], "udp_flood");
    let starts = log.matches("attack started").count();
    let ends = log.matches("attack ended").count();
    assert_eq!(
        (starts, ends),
        (1, 1),
        "one start and one end in the log: {log}"
    );
    let pgids = [fg.pgid(), sfd.pgid()];
    drop(sfd);
    drop(fg);
    let left: Vec<i32> = pgids
        .iter()
        .flat_map(|g| common::group_members(*g))
        .collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
