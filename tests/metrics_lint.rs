//! `promtool check metrics` on everything a running flowguard publishes (after real
//! traffic, so per-exporter, per-attack and per-host series exist too).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

#[test]
fn promtool_accepts_every_published_metric() {
    if !common::require_tool("promtool") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", common::free_tcp_port())
        .parse()
        .unwrap();
    let nf = common::free_udp_port();
    let cfg = format!(
        "[api]\nlisten = \"{api}\"\n[[collector]]\nprotocol = \"netflow\"\nlisten = \"127.0.0.1:{nf}\"\n\
         [[collector]]\nprotocol = \"sflow\"\nlisten = \"127.0.0.1:{}\"\n\
         [networks]\nprotected = [\"127.0.0.16/28\", \"127.0.0.32/27\"]\n\
         [[hostgroup]]\nname = \"default\"\nthreshold_pps = 3000\nban_time_seconds = 5\n[state]\ndir = \"{}\"\n",
        common::free_udp_port(),
        dir.path().display()
    );
    let _fg = common::start_flowguard(&cfg, dir.path(), api);
    common::send_capture(
        &common::vectors().join("v-softflowd-nf9.pcap"),
        format!("127.0.0.1:{nf}").parse().unwrap(),
    );
    // Wait until an attack is on, so the per-host attack series are published too.
    let body = common::wait_for(15, || {
        let (_, b) = common::http_get(api, "/metrics").ok()?;
        b.contains("flowguard_attack_host_pps{").then_some(b)
    })
    .expect("an attack's per-host series in /metrics");
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
