//! Real exporters, real floods, the real binary: softflowd (NetFlow v5, v9, IPFIX) and
//! pmacctd's sfprobe (sFlow) watch `lo` while hping3 sends bounded floods to loopback
//! addresses; `flowguard run` must count exactly what was sent (within sampling error for
//! sFlow), and an ICMP flood must switch MITIGATOR (the simulator) on and off again.
//!
//! Needs root (hping3 raw sockets, pcap on lo) and the Debian packages the README's test
//! command installs. Traffic: loopback only, every flood bounded by count and `timeout`.

mod common;
use common::sim as support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use common::{
    free_tcp_port, free_udp_port, hping3, http_get, spawn, start_flowguard, wait_for, Child,
};
use serde_json::Value;

/// Floods on one interface disturb each other: one live test at a time.
static LIVE: Mutex<()> = Mutex::new(());

fn ready() -> bool {
    let tools = ["softflowd", "softflowctl", "pmacctd", "hping3"]
        .iter()
        .all(|t| common::require_tool(t));
    if !common::is_root() {
        if std::env::var("FLOWGUARD_SKIP_REAL_TOOLS").as_deref() == Ok("1") {
            return false;
        }
        panic!("live exporter tests need root (hping3, pcap on lo); set FLOWGUARD_SKIP_REAL_TOOLS=1 to skip");
    }
    tools
}

fn softflowd(
    dir: &Path,
    version: u8,
    port: u16,
    filter: &str,
    extra: &[&str],
) -> (Child, std::path::PathBuf) {
    let ctl = dir.join(format!("sf{version}-{port}.ctl"));
    let child = spawn(
        "softflowd",
        Command::new("softflowd")
            .args([
                "-i",
                "lo",
                "-v",
                &version.to_string(),
                "-n",
                &format!("127.0.0.1:{port}"),
                "-d",
            ])
            .args(["-t", "maxlife=1", "-t", "expint=1"])
            .args(extra)
            .arg("-p")
            .arg(dir.join(format!("sf{version}-{port}.pid")))
            .arg("-c")
            .arg(&ctl)
            .arg(filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    (child, ctl)
}

fn pmacctd(dir: &Path, port: u16, filter: &str, rate: u32) -> Child {
    let conf = dir.join(format!("pm-{port}.conf"));
    std::fs::write(
        &conf,
        format!(
            "daemonize: false\npcap_interface: lo\npcap_filter: {filter}\nplugins: sfprobe\n\
             sfprobe_receiver: 127.0.0.1:{port}\nsfprobe_agentip: 127.0.0.1\nsampling_rate: {rate}\n"
        ),
    )
    .unwrap();
    spawn(
        "pmacctd",
        Command::new("pmacctd")
            .arg("-f")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
}

/// Per-destination totals of a NetFlow/IPFIX capture as decoded by tshark, through the
/// shared vectors' `truth.py`.
fn exported_truth(cap: &Path, port: u16) -> Vec<Value> {
    let script = common::vectors().join("truth.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(cap)
        .arg(port.to_string())
        .output()
        .expect("run truth.py");
    assert!(
        out.status.success(),
        "truth.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn host(api: SocketAddr, ip: &str) -> Option<Value> {
    let (s, b) = http_get(api, &format!("/api/v1/hosts/{ip}")).ok()?;
    (s == 200).then(|| serde_json::from_str(&b).ok()).flatten()
}

fn incoming(api: SocketAddr, ip: &str, field: &str) -> u64 {
    host(api, ip)
        .and_then(|h| {
            h["directions"]
                .as_array()?
                .iter()
                .find(|d| d["direction"] == "incoming")
                .and_then(|d| d["totals"][field].as_u64())
        })
        .unwrap_or(0)
}

#[test]
fn real_exporters_totals_match_what_hping3_sent() {
    let _g = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let (nf, sf) = (free_udp_port(), free_udp_port());
    let _fg = start_flowguard(
        &format!(
            r#"
[api]
listen = "{api}"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:{nf}"
[[collector]]
protocol = "sflow"
listen = "127.0.0.1:{sf}"
[networks]
protected = ["127.0.0.40/29"]
[aggregate]
host_totals = true
[state]
dir = "{}"
"#,
            dir.path().display()
        ),
        dir.path(),
        api,
    );
    // What the exporters really export, decoded by tshark (a decoder neither side wrote),
    // is the ground truth for exactness.
    let cap = dir.path().join("export.pcapng");
    let dumpcap = spawn(
        "dumpcap",
        Command::new("dumpcap")
            .args(["-q", "-i", "lo", "-f", &format!("udp dst port {nf}"), "-w"])
            .arg(&cap)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    // One exporter per target so each total comes from one export format.
    let (_a, ctl5) = softflowd(dir.path(), 5, nf, "host 127.0.0.41", &[]);
    let (_b, ctl9) = softflowd(dir.path(), 9, nf, "host 127.0.0.42", &[]);
    let (_c, ctl10) = softflowd(dir.path(), 10, nf, "host 127.0.0.43", &[]);
    let pm = pmacctd(dir.path(), sf, "host 127.0.0.44", 10);
    std::thread::sleep(std::time::Duration::from_secs(3));

    let runs = [
        hping3(
            &[
                "--udp", "-p", "5353", "-d", "64", "-i", "u500", "-c", "2000",
            ],
            "127.0.0.41",
        ),
        hping3(
            &["-S", "-p", "80", "-i", "u500", "-c", "2000"],
            "127.0.0.42",
        ),
        hping3(
            &["--icmp", "-d", "36", "-i", "u500", "-c", "2000"],
            "127.0.0.43",
        ),
    ];
    let sflow_runs = hping3(
        &["--udp", "-p", "53", "-d", "100", "-i", "u250", "-c", "6000"],
        "127.0.0.44",
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    for ctl in [&ctl5, &ctl9, &ctl10] {
        // Export every flow still in softflowd's table now.
        let _ = Command::new("softflowctl")
            .arg("-c")
            .arg(ctl)
            .arg("expire-all")
            .status();
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    drop(dumpcap);
    let truth = exported_truth(&cap, nf);
    let want = |dst: &str, proto: u64| -> (u64, u64) {
        truth
            .iter()
            .find(|t| t["dst"] == dst && t["proto"] == proto)
            .map(|t| {
                (
                    t["packets"].as_u64().unwrap_or(0),
                    t["bytes"].as_u64().unwrap_or(0),
                )
            })
            .unwrap_or_else(|| panic!("no exported flows to {dst} proto {proto} in {truth:?}"))
    };
    let cases = [
        ("127.0.0.41", 17, "udp"),
        ("127.0.0.42", 6, "tcp"),
        ("127.0.0.43", 1, "icmp"),
    ];
    let settled = wait_for(30, || {
        cases
            .iter()
            .all(|(ip, p, n)| {
                let (pk, by) = want(ip, *p);
                incoming(api, ip, &format!("{n}_packets")) == pk
                    && incoming(api, ip, &format!("{n}_bytes")) == by
            })
            .then_some(())
    });
    let got: Vec<_> = cases
        .iter()
        .map(|(ip, p, n)| {
            (
                ip,
                want(ip, *p),
                incoming(api, ip, &format!("{n}_packets")),
                incoming(api, ip, &format!("{n}_bytes")),
            )
        })
        .collect();
    // Unsampled NetFlow: flowguard's totals equal what the exporter exported, exactly.
    assert!(
        settled.is_some(),
        "(ip, tshark (packets, bytes), flowguard packets, bytes): {got:?}"
    );
    // And what was exported is what hping3 sent, up to softflowd's own capture loss on lo
    // (it processes 85-100 % of the packets it is handed here; see softflowctl statistics).
    for ((ip, (pk, by), _, _), runs) in got.iter().zip(runs) {
        assert!(
            (1700..=2000 * runs).contains(pk),
            "{ip}: softflowd exported {pk} of 2000 packets (x {runs} hping3 runs)"
        );
        assert_eq!(by % pk, 0, "{ip}: one packet size");
    }
    assert_eq!(got[0].1 .1 / got[0].1 .0, 92, "UDP IP length 20+8+64");
    assert_eq!(got[2].1 .1 / got[2].1 .0, 64, "ICMP IP length 20+8+36");
    assert_eq!(
        incoming(api, "127.0.0.42", "tcp_syn_packets"),
        got[1].1 .0,
        "every SYN counted as SYN without ACK"
    );
    // sFlow 1 in 10: ~600 samples of 6000 packets, standard error ~4 %; allow 20 %.
    let est = wait_for(10, || {
        let v = incoming(api, "127.0.0.44", "udp_packets");
        (v > 4000).then_some(v)
    })
    .unwrap_or_else(|| incoming(api, "127.0.0.44", "udp_packets"));
    assert!(
        (4800..=7200 * sflow_runs).contains(&est),
        "sFlow estimate {est} for 6000 sent (x {sflow_runs} hping3 runs)"
    );
    let bytes = incoming(api, "127.0.0.44", "udp_bytes") as f64 / est as f64;
    assert!(
        (bytes - 128.0).abs() < 0.5,
        "sFlow bytes per packet {bytes} (IP length 128)"
    );
    // pmacctd forks its sfprobe plugin: stopping pmacctd's process group stops it too.
    let pg = pm.pgid();
    drop(pm);
    assert_eq!(
        common::group_members(pg),
        Vec::<i32>::new(),
        "pmacctd processes left behind"
    );
}

#[test]
fn icmp_flood_switches_policy_and_acl_on_then_off() {
    let _g = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let nf = free_udp_port();
    let _fg = start_flowguard(
        &format!(
            r#"
[api]
listen = "{api}"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:{nf}"
[networks]
protected = ["127.0.0.48/29"]
[[hostgroup]]
name = "default"
threshold_pps = 2000
ban_time_seconds = 3
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
            dir.path().display()
        ),
        dir.path(),
        api,
    );
    let (_sf, _ctl) = softflowd(dir.path(), 9, nf, "host 127.0.0.49", &["-t", "icmp=1"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let t0 = std::time::Instant::now();
    // ~10 000 pps for 4 s, to loopback.
    hping3(&["--icmp", "-i", "u100", "-c", "40000"], "127.0.0.49");
    let switches = || common::sim_switch_puts(sim.addr);
    let on = wait_for(20, || {
        let s = switches();
        (s.iter()
            .any(|c| c.starts_with("PUT toggle/switch?policy=1 1"))
            && s.iter().any(|c| c.starts_with("PUT acl/switch?policy=1 1")))
        .then_some(s)
    });
    assert!(
        on.is_some(),
        "policy and acl not switched on; calls: {:?}; log: {}",
        switches(),
        std::fs::read_to_string(dir.path().join("flowguard.log")).unwrap_or_default()
    );
    let on_after = t0.elapsed();
    // After the flood: window (5 s) + ban time (3 s) + export delay.
    let off = wait_for(40, || {
        let s = switches();
        (s.iter()
            .any(|c| c.starts_with("PUT toggle/switch?policy=1 0")))
        .then_some(s)
    })
    .unwrap_or_else(|| panic!("never switched off: {:?}", switches()));
    let order: Vec<&str> = off
        .iter()
        .map(|c| c.split(" -> ").next().unwrap_or(""))
        .collect();
    assert_eq!(
        order,
        [
            "PUT toggle/switch?policy=1 1",
            "PUT acl/switch?policy=1 1",
            "PUT acl/switch?policy=1 0",
            "PUT toggle/switch?policy=1 0"
        ],
        "exact switch sequence"
    );
    eprintln!("ICMP flood: MITIGATOR switched on {on_after:?} after the flood began");
}

/// Switch calls of one policy as `name:0|1`, in order.
fn policy_switches(sim: SocketAddr, policy: u32) -> Vec<String> {
    common::sim_switch_puts(sim)
        .iter()
        .filter_map(|c| {
            let (path, rest) = c.strip_prefix("PUT ")?.split_once(' ')?;
            let (name, q) = path.split_once("/switch?")?;
            (q == format!("policy={policy}")).then(|| format!("{name}:{}", rest.trim()))
        })
        .collect()
}

/// The attacks the API lists on `ip` (active and recent).
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

fn vector_types(a: &Value) -> Vec<String> {
    let mut t: Vec<String> = a["vectors"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|x| x["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    t.sort();
    t
}

/// SYN and UDP floods sent together with hping3 to one host, exported by softflowd
/// (NetFlow v9, to 127.0.0.89) and by pmacctd (sFlow 1 in 10, to 127.0.0.90): each is one
/// attack with both vectors, MITIGATOR gets toggle, tcp and sorb on and off exactly once
/// per policy, and a replay of the captured export gives the same vectors. Every process
/// the test starts is stopped with its process group and none is left.
#[test]
fn syn_and_udp_floods_together_get_both_countermeasures_once() {
    let _g = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    if !ready() {
        return;
    }
    let sim = support::Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let (nf, sf) = (free_udp_port(), free_udp_port());
    let detect = format!(
        r#"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:{nf}"
[[collector]]
protocol = "sflow"
listen = "127.0.0.1:{sf}"
[networks]
protected = ["127.0.0.88/29"]
[[hostgroup]]
name = "default"
threshold_pps = 1500
ban_time_seconds = 4
"#
    );
    let mut fg = start_flowguard(
        &format!(
            r#"
[api]
listen = "{api}"
{detect}
[mitigator]
url = "{}"
username = "{}"
password = "{}"
[mitigator.policy_by_prefix]
"127.0.0.89/32" = 1
"127.0.0.90/32" = 2
[state]
dir = "{}"
"#,
            sim.base,
            support::USER,
            support::PASS,
            dir.path().display()
        ),
        dir.path(),
        api,
    );
    let cap = dir.path().join("export.pcapng");
    let mut dumpcap = spawn(
        "dumpcap",
        Command::new("dumpcap")
            .args(["-q", "-i", "lo", "-f"])
            .arg(format!("udp dst port {nf} or udp dst port {sf}"))
            .arg("-w")
            .arg(&cap)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    );
    let (mut sfd, _ctl) = softflowd(dir.path(), 9, nf, "host 127.0.0.89", &[]);
    let mut pm = pmacctd(dir.path(), sf, "host 127.0.0.90", 10);
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pgids = [fg.pgid(), dumpcap.pgid(), sfd.pgid(), pm.pgid()];
    // Both floods at once, to each host: 4 bounded hping3 runs (~4 s at ~4 000 pps each).
    let floods: Vec<_> = ["127.0.0.89", "127.0.0.90"]
        .into_iter()
        .flat_map(|ip| {
            [
                std::thread::spawn(move || {
                    hping3(&["-S", "-p", "80", "-i", "u250", "-c", "16000"], ip)
                }),
                std::thread::spawn(move || {
                    hping3(
                        &[
                            "--udp", "-p", "5353", "-d", "64", "-i", "u250", "-c", "16000",
                        ],
                        ip,
                    )
                }),
            ]
        })
        .collect();
    for f in floods {
        f.join().expect("hping3 thread");
    }
    // Window (5 s) + ban time (4 s) + export delay.
    let ended = wait_for(60, || {
        let done = |ip| {
            let a = attacks_on(api, ip);
            (!a.is_empty() && a.iter().all(|a| a["active"] == false)).then_some(a)
        };
        Some((done("127.0.0.89")?, done("127.0.0.90")?))
    });
    // Let the switch-offs run.
    let off = wait_for(20, || {
        (policy_switches(sim.addr, 1).last().map(String::as_str) == Some("toggle:0")
            && policy_switches(sim.addr, 2).last().map(String::as_str) == Some("toggle:0"))
        .then_some(())
    });
    let log = std::fs::read_to_string(dir.path().join("flowguard.log")).unwrap_or_default();
    let (a89, a90) = ended.unwrap_or_else(|| {
        panic!(
            "attacks did not end: {:?} {:?}; log: {log}",
            attacks_on(api, "127.0.0.89"),
            attacks_on(api, "127.0.0.90")
        )
    });
    for (exporter, attacks, policy) in [("softflowd v9", &a89, 1), ("pmacctd sFlow", &a90, 2)] {
        assert_eq!(attacks.len(), 1, "{exporter}: one attack: {attacks:?}");
        let a = &attacks[0];
        assert_eq!(
            vector_types(a),
            ["syn_flood", "udp_flood"],
            "{exporter}: both vectors: {a}"
        );
        eprintln!(
            "{exporter}: type {} (changes {}), vectors {}",
            a["attack_type"], a["type_changes"], a["vectors"]
        );
        let mut calls = policy_switches(sim.addr, policy);
        assert!(off.is_some(), "{exporter}: not all off: {calls:?}");
        assert_eq!(calls.last().map(String::as_str), Some("toggle:0"));
        assert_eq!(calls.first().map(String::as_str), Some("toggle:1"));
        calls.sort();
        assert_eq!(
            calls,
            ["sorb:0", "sorb:1", "tcp:0", "tcp:1", "toggle:0", "toggle:1"],
            "{exporter}: each switch on once and off once (policy {policy})"
        );
    }
    // The same traffic from the capture: the same attacks with the same vectors, and the
    // end events name both.
    fg.stop();
    dumpcap.stop();
    let cfg = flowguard::config::Config::from_toml_str(&detect).unwrap();
    let mut out = Vec::new();
    flowguard::replay::run(
        &cfg,
        std::slice::from_ref(&cap),
        &flowguard::replay::ReplayOptions::default(),
        &mut out,
    )
    .unwrap();
    if let Ok(keep) = std::env::var("FLOWGUARD_KEEP_CAPTURE") {
        let _ = std::fs::copy(&cap, keep);
    }
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for ip in ["127.0.0.89", "127.0.0.90"] {
        let of = |kind: &str| -> Vec<&Value> {
            lines
                .iter()
                .filter(|l| l["ip"] == ip && l["direction"] == "incoming" && l["event"] == kind)
                .collect()
        };
        assert_eq!(of("start").len(), 1, "{ip}: replay: {lines:?}");
        let end = of("end");
        assert_eq!(end.len(), 1, "{ip}: replay: {lines:?}");
        assert_eq!(
            vector_types(end[0]),
            ["syn_flood", "udp_flood"],
            "{ip}: the replayed end event names both vectors: {}",
            end[0]
        );
    }
    sfd.stop();
    pm.stop();
    drop(sim);
    let left: Vec<i32> = pgids
        .iter()
        .flat_map(|g| common::group_members(*g))
        .collect();
    assert!(
        left.is_empty(),
        "processes left behind: {left:?}: {}",
        String::from_utf8_lossy(
            &Command::new("ps")
                .args(["-o", "pid,pgid,args", "-p"])
                .arg(
                    left.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )
                .output()
                .map(|o| o.stdout)
                .unwrap_or_default()
        )
    );
}
