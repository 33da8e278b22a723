//! Cluster mode end to end on one machine: three `nats-server` processes forming a
//! JetStream cluster on loopback (free ports, own temp dirs), two collector nodes, two
//! detector+controller nodes and a mitigator-sim, all stopped by PID at the end.
//!
//! Covered: a victim split over two collectors (0.6 + 0.6 × threshold → one attack,
//! one policy-on; 0.45 + 0.45 → nothing), and kill -9 of the controller leader mid-attack
//! (the standby takes over; exactly one policy-off when the flood stops).

mod common;

use std::io::BufRead;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_port, http_get, require_tool, sim_switch_puts, spawn, Child};

const THRESHOLD_PPS: u64 = 10_000;

/// A NetFlow v5 datagram of `n` UDP records `src → dst`, each of `packets` packets.
fn nf5(dst: [u8; 4], n: usize, packets: u32, seq: u32) -> Vec<u8> {
    let uptime = 1_000_000u32;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut b = Vec::with_capacity(24 + 48 * n);
    b.extend_from_slice(&5u16.to_be_bytes());
    b.extend_from_slice(&(n as u16).to_be_bytes());
    b.extend_from_slice(&uptime.to_be_bytes());
    b.extend_from_slice(&(now.as_secs() as u32).to_be_bytes());
    b.extend_from_slice(&now.subsec_nanos().to_be_bytes());
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&[0, 0, 0, 0]);
    for i in 0..n {
        b.extend_from_slice(&[198, 51, 100, (i % 200) as u8 + 1]);
        b.extend_from_slice(&dst);
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&[0; 4]); // input, output
        b.extend_from_slice(&packets.to_be_bytes());
        b.extend_from_slice(&(packets * 500).to_be_bytes());
        b.extend_from_slice(&uptime.to_be_bytes()); // first
        b.extend_from_slice(&uptime.to_be_bytes()); // last
        b.extend_from_slice(&(40_000 + i as u16).to_be_bytes());
        b.extend_from_slice(&53u16.to_be_bytes());
        b.extend_from_slice(&[0, 0, 17, 0]); // pad, flags, proto, tos
        b.extend_from_slice(&[0; 8]);
    }
    b
}

/// Sends 60 records a second of `packets` each to `dst` through both collectors for
/// `secs` seconds (on two threads, one per collector).
fn flood(collectors: [SocketAddr; 2], dst: [u8; 4], packets: u32, secs: u64) {
    let hs: Vec<_> = collectors
        .into_iter()
        .map(|to| {
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
                let end = Instant::now() + Duration::from_secs(secs);
                let mut seq = 0;
                while Instant::now() < end {
                    // One datagram of 6 records every 100 ms: 60 records/s, smooth.
                    let _ = s.send_to(&nf5(dst, 6, packets, seq), to);
                    seq += 6;
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        })
        .collect();
    for h in hs {
        let _ = h.join();
    }
}

struct Nats {
    children: Vec<Child>,
    urls: Vec<String>,
}

fn nats_cluster(dir: &Path) -> Nats {
    let client: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let route: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).expect("nats dir");
        let routes: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("\"nats://127.0.0.1:{}\"", route[j]))
            .collect();
        let conf = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", max_memory_store: 268435456, max_file_store: 1073741824 }}\ncluster {{ name: fgtest, listen: 127.0.0.1:{}, routes: [{}] }}\n",
            client[i],
            d.display(),
            route[i],
            routes.join(",")
        );
        let cf = dir.join(format!("n{i}.conf"));
        std::fs::write(&cf, conf).expect("nats conf");
        let log = std::fs::File::create(dir.join(format!("n{i}.log"))).expect("nats log");
        children.push(spawn(
            "nats-server",
            std::process::Command::new("nats-server")
                .arg("-c")
                .arg(&cf)
                .stderr(log.try_clone().expect("log"))
                .stdout(log),
        ));
    }
    Nats {
        children,
        urls: client
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect(),
    }
}

fn start_sim(dir: &Path) -> (Child, SocketAddr) {
    let out = dir.join("sim.out");
    let f = std::fs::File::create(&out).expect("sim log");
    let c = spawn(
        "mitigator-sim",
        std::process::Command::new(common::workspace_bin("mitigator-sim"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--username",
                "admin",
                "--password",
                "pw",
            ])
            .stdout(f.try_clone().expect("log"))
            .stderr(f),
    );
    let addr = common::wait_for(10, || {
        let f = std::fs::File::open(&out).ok()?;
        std::io::BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening on ").and_then(|a| a.parse().ok()))
    })
    .expect("mitigator-sim did not announce its address");
    (c, addr)
}

struct Node {
    child: Child,
    api: SocketAddr,
    name: &'static str,
}

fn start_node(
    dir: &Path,
    name: &'static str,
    roles: &str,
    nats: &Nats,
    sim: SocketAddr,
    nf: Option<u16>,
) -> Node {
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut t = format!("[api]\nlisten = \"{api}\"\n");
    if let Some(p) = nf {
        t += &format!("[[collector]]\nprotocol = \"netflow\"\nlisten = \"127.0.0.1:{p}\"\n");
    }
    // A 2-second average: 0.6 + 0.6 × threshold crosses it in 3 s instead of 8-9 s with
    // the default 5 s (weight 1/W per second), so the test's margin does not depend on
    // how fast a loaded machine delivers the flood. The sums under test are the same.
    t += "[aggregate]\nwindow_seconds = 2\n";
    t += "[networks]\nprotected = [\"127.16.0.0/16\"]\n";
    t += &format!("[[hostgroup]]\nname = \"default\"\nthreshold_pps = {THRESHOLD_PPS}\nthreshold_mbps = 100000\nban_time_seconds = 5\n");
    if roles.contains("controller") {
        t += &format!("[mitigator]\nurl = \"http://{sim}\"\nusername = \"admin\"\npassword = \"pw\"\nretry_base_ms = 50\n");
    }
    t += &format!(
        "[state]\ndir = \"{}\"\n",
        dir.join(format!("{name}-state")).display()
    );
    let urls: Vec<String> = nats.urls.iter().map(|u| format!("\"{u}\"")).collect();
    t += &format!(
        "[cluster]\nnats_urls = [{}]\nnode_id = \"{name}\"\nroles = {roles}\n",
        urls.join(", ")
    );
    let cf = dir.join(format!("{name}.toml"));
    std::fs::write(&cf, t).expect("node config");
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("node log");
    let child = spawn(
        "flowguard",
        std::process::Command::new(env!("CARGO_BIN_EXE_flowguard"))
            .args(["run", "--config"])
            .arg(&cf)
            .stdout(log.try_clone().expect("log"))
            .stderr(log),
    );
    Node { child, api, name }
}

fn cluster_json(api: SocketAddr) -> Option<serde_json::Value> {
    let (s, b) = http_get(api, "/api/v1/cluster").ok()?;
    (s == 200).then(|| serde_json::from_str(&b).ok()).flatten()
}

fn ons_offs(sim: SocketAddr) -> (usize, usize) {
    let puts: Vec<String> = sim_switch_puts(sim)
        .into_iter()
        .filter(|p| p.contains("toggle/switch"))
        .collect();
    (
        puts.iter().filter(|p| p.ends_with(" 1")).count(),
        puts.iter().filter(|p| p.ends_with(" 0")).count(),
    )
}

#[test]
// Not reliable yet (issue 16 is open): on the 2-core machine the merged tree's run saw the
// split victim's attack start and the standby take over, but no policy-off within 25 s
// of the flood's end. Run it by name: `cargo test --release --test cluster -- --ignored`.
#[ignore = "cluster failover not reliable yet; see README, Running a cluster"]
fn split_victim_one_mitigation_and_controller_failover() {
    if !require_tool("nats-server") {
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dir = tmp.path();
    let nats = nats_cluster(dir);
    let (_sim_child, sim) = start_sim(dir);
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let _a = start_node(dir, "A", r#"["collector"]"#, &nats, sim, Some(pa));
    let _b = start_node(dir, "B", r#"["collector"]"#, &nats, sim, Some(pb));
    let mut c = start_node(dir, "C", r#"["detector", "controller"]"#, &nats, sim, None);
    let mut d = start_node(dir, "D", r#"["detector", "controller"]"#, &nats, sim, None);
    let logs = || {
        ["A", "B", "C", "D"]
            .iter()
            .map(|n| {
                let l = std::fs::read_to_string(dir.join(format!("{n}.log"))).unwrap_or_default();
                let tail: Vec<&str> = l.lines().rev().take(15).collect();
                format!(
                    "--- {n}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    // Every member up, a controller leader, every partition owned.
    let ready = common::wait_for(40, || {
        let j = cluster_json(c.api)?;
        let members = j["members"].as_array()?.len();
        let owners = j["partition_owners"].as_object()?.len();
        (members == 4 && owners == 64 && j["controller_leader"].is_string()).then_some(())
    });
    assert!(ready.is_some(), "cluster did not form:\n{}", logs());
    let collectors: [SocketAddr; 2] = [
        format!("127.0.0.1:{pa}").parse().unwrap(),
        format!("127.0.0.1:{pb}").parse().unwrap(),
    ];

    // 0.6 × threshold through each collector: 12 s of 6 000 pps each.
    let fl = std::thread::spawn(move || flood(collectors, [127, 16, 0, 10], 100, 12));
    let on = common::wait_for(10, || (ons_offs(sim).0 >= 1).then_some(()));
    assert!(
        on.is_some(),
        "no policy-on for the split victim:\n{}",
        logs()
    );
    let leader = cluster_json(c.api)
        .and_then(|j| j["controller_leader"].as_str().map(str::to_string))
        .expect("a controller leader");
    let (killed, survivor) = match leader.as_str() {
        "C" => (&mut c, &d),
        "D" => (&mut d, &c),
        other => panic!("unexpected leader {other:?}"),
    };
    let t_kill = Instant::now();
    // SIGKILL: no shutdown path runs.
    let _ = killed.child.0.kill();
    let took_over = common::wait_for(10, || {
        let j = cluster_json(survivor.api)?;
        (j["controller_leader"].as_str() == Some(survivor.name)).then_some(())
    });
    assert!(
        took_over.is_some(),
        "standby did not take over:\n{}",
        logs()
    );
    eprintln!(
        "controller {} killed; {} leads after {:?}",
        killed.name,
        survivor.name,
        t_kill.elapsed()
    );
    let _ = fl.join();
    let off = common::wait_for(25, || (ons_offs(sim).1 >= 1).then_some(()));
    assert!(off.is_some(), "no policy-off after the flood:\n{}", logs());
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        ons_offs(sim),
        (1, 1),
        "exactly one on and one off:\n{}",
        logs()
    );

    // 0.45 × threshold through each: under the threshold in sum too.
    flood(collectors, [127, 16, 0, 20], 75, 10);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        ons_offs(sim),
        (1, 1),
        "no call for the under-threshold split"
    );
    drop(nats.children);
}
