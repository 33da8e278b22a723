//! Cluster mode end to end on one machine: three `nats-server` processes forming a
//! JetStream cluster on loopback (free ports, own temp dirs), collector, detector and
//! controller nodes and a mitigator-sim, all stopped by PID (process group) on drop.
//!
//! Covered (issue 16's numbering):
//! - 1: a victim split over two collectors (0.6 + 0.6 × threshold → one attack, one
//!   policy-on; 0.45 + 0.45 → nothing);
//! - 4: kill -9 of the controller leader after its policy-on (the standby takes over;
//!   exactly one policy-off when the flood stops), and kill -9 of the leader while its
//!   policy-on is refused by MITIGATOR (its state says it wants the switch, MITIGATOR
//!   says off: the next leader switches it on, and off once at the end);
//! - 3: kill -9 of the detector owning a victim's partition mid-attack: the partitions
//!   move, the attack keeps its id (no second start, no end), and a new flood in a moved
//!   partition is detected;
//! - 6: kill -9 and restart of a collector mid-attack ends nothing;
//! - 5: one of three NATS servers killed: still one on, one off; a second killed (no
//!   quorum): the controller reports itself fenced and makes no call; both back: the
//!   attack still going on is mitigated, once.
//!
//! The tests run one at a time (a lock): each starts a dozen processes, and two at once
//! on a 2-core machine would only measure the machine.

mod common;

use std::io::BufRead;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_port, http_get, http_post, require_tool, spawn, Child};

const THRESHOLD_PPS: u64 = 10_000;
const PARTITIONS: u16 = 64;

static SERIAL: Mutex<()> = Mutex::new(());

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

/// A flood in the background: 60 records a second of `packets` each to `dst` through
/// every collector (one thread each), for at most `secs` seconds or until stopped.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(collectors: &[SocketAddr], dst: [u8; 4], packets: u32, secs: u64) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = collectors
            .iter()
            .copied()
            .map(|to| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let s = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
                    let end = Instant::now() + Duration::from_secs(secs);
                    let mut seq = 0;
                    while Instant::now() < end && !stop.load(Ordering::Relaxed) {
                        // One datagram of 6 records every 100 ms: 60 records/s, smooth.
                        let _ = s.send_to(&nf5(dst, 6, packets, seq), to);
                        seq += 6;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
            })
            .collect();
        Flood { stop, threads }
    }

    fn join(mut self) {
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

struct Nats {
    /// None while killed; each stops (by process group) on drop.
    children: Vec<Option<Child>>,
    urls: Vec<String>,
    /// Each server's HTTP monitoring port.
    monitor: Vec<u16>,
    dir: PathBuf,
}

impl Nats {
    /// kill -9 of server `i`.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
    }

    /// The server leading JetStream stream `stream`, asked of the live servers' `/jsz`.
    /// Killing that one is the worst single server loss: the stream has no leader until
    /// the others elect one (4–9 s with NATS 2.9's raft timeouts).
    fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.monitor.iter().enumerate().find_map(|(i, p)| {
            self.children[i].as_ref()?;
            let a: SocketAddr = format!("127.0.0.1:{p}").parse().ok()?;
            let (_, body) = http_get(a, "/jsz?accounts=true&streams=true").ok()?;
            let j: serde_json::Value = serde_json::from_str(&body).ok()?;
            let leader = j["account_details"]
                .as_array()?
                .iter()
                .flat_map(|acc| acc["stream_detail"].as_array().into_iter().flatten())
                .find(|st| st["name"] == stream)?["cluster"]["leader"]
                .as_str()?
                .strip_prefix('n')?
                .parse()
                .ok()?;
            Some(leader)
        })
    }

    /// Starts server `i` again with its config and store.
    fn start(&mut self, i: usize) {
        self.children[i] = Some(nats_server(&self.dir, i));
    }
}

fn nats_server(dir: &Path, i: usize) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("n{i}.log")))
        .expect("nats log");
    spawn(
        "nats-server",
        std::process::Command::new("nats-server")
            .arg("-c")
            .arg(dir.join(format!("n{i}.conf")))
            .stderr(log.try_clone().expect("log"))
            .stdout(log),
    )
}

/// Three JetStream servers in one cluster; returns once every one reports JetStream
/// healthy (a readiness wait, not a sleep).
fn nats_cluster(dir: &Path) -> Nats {
    let client: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let route: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let monitor: Vec<u16> = (0..3).map(|_| free_tcp_port()).collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let d = dir.join(format!("n{i}"));
        std::fs::create_dir_all(&d).expect("nats dir");
        let routes: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| format!("\"nats://127.0.0.1:{}\"", route[j]))
            .collect();
        let conf = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", max_memory_store: 268435456, max_file_store: 1073741824 }}\ncluster {{ name: fgtest, listen: 127.0.0.1:{}, routes: [{}] }}\n",
            client[i],
            monitor[i],
            d.display(),
            route[i],
            routes.join(",")
        );
        std::fs::write(dir.join(format!("n{i}.conf")), conf).expect("nats conf");
        children.push(Some(nats_server(dir, i)));
    }
    let ready = common::wait_for(30, || {
        monitor
            .iter()
            .all(|p| {
                let a: SocketAddr = format!("127.0.0.1:{p}").parse().unwrap();
                matches!(http_get(a, "/healthz?js-enabled-only=true"), Ok((200, _)))
            })
            .then_some(())
    });
    assert!(ready.is_some(), "NATS cluster not healthy within 30 s");
    Nats {
        children,
        monitor,
        dir: dir.to_path_buf(),
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
    config: PathBuf,
}

/// What a test node's config says besides its roles: the collectors it listens with and
/// the `[aggregate]`, `[networks]` and `[[hostgroup]]` sections.
struct Profile {
    collectors: String,
    body: String,
}

/// The split-victim profile most tests use: one NetFlow listener (`nf`), 127.16.0.0/16
/// protected at [`THRESHOLD_PPS`].
fn split_profile(nf: Option<u16>) -> Profile {
    let collectors = nf
        .map(|p| format!("[[collector]]\nprotocol = \"netflow\"\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    // A 2-second average (α = 2/3): 0.6 + 0.6 × threshold crosses it in 2 s instead of
    // 5 s with the default 5 s window (α = 1/3), so the test's margin does not depend on
    // how fast a loaded machine delivers the flood. The sums under test are the same.
    let mut body = "[aggregate]\nwindow_seconds = 2\n".to_string();
    body += "[networks]\nprotected = [\"127.16.0.0/16\"]\n";
    body += &format!("[[hostgroup]]\nname = \"default\"\nthreshold_pps = {THRESHOLD_PPS}\nthreshold_mbps = 100000\nban_time_seconds = 5\n");
    Profile { collectors, body }
}

/// Writes node `name`'s config and starts it. A node restarted with the same name keeps
/// its API port, collector port and state directory.
fn start_node(
    dir: &Path,
    name: &'static str,
    roles: &str,
    nats: &Nats,
    sim: SocketAddr,
    profile: &Profile,
) -> Node {
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let mut t = format!("[api]\nlisten = \"{api}\"\n");
    t += &profile.collectors;
    t += &profile.body;
    if roles.contains("controller") {
        t += &format!("[mitigator]\nurl = \"http://{sim}\"\nusername = \"admin\"\npassword = \"pw\"\nretry_base_ms = 50\n");
    }
    t += &format!(
        "[state]\ndir = \"{}\"\n",
        dir.join(format!("{name}-state")).display()
    );
    let urls: Vec<String> = nats.urls.iter().map(|u| format!("\"{u}\"")).collect();
    t += &format!(
        "[cluster]\nnats_urls = [{}]\nnode_id = \"{name}\"\nroles = {roles}\npartitions = {PARTITIONS}\n",
        urls.join(", ")
    );
    let cf = dir.join(format!("{name}.toml"));
    std::fs::write(&cf, t).expect("node config");
    run_node(dir, name, cf, api)
}

fn run_node(dir: &Path, name: &'static str, config: PathBuf, api: SocketAddr) -> Node {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .expect("node log");
    let child = spawn(
        "flowguard",
        std::process::Command::new(env!("CARGO_BIN_EXE_flowguard"))
            .args(["run", "--config"])
            .arg(&config)
            .stdout(log.try_clone().expect("log"))
            .stderr(log),
    );
    Node {
        child,
        api,
        name,
        config,
    }
}

impl Node {
    /// kill -9: no shutdown path runs (no lease released, no state saved).
    fn kill9(&mut self) {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }

    fn restart(&mut self, dir: &Path) {
        self.kill9();
        *self = run_node(dir, self.name, self.config.clone(), self.api);
    }
}

fn cluster_json(api: SocketAddr) -> Option<serde_json::Value> {
    let (s, b) = http_get(api, "/api/v1/cluster").ok()?;
    (s == 200).then(|| serde_json::from_str(&b).ok()).flatten()
}

/// The policy-protection PUTs MITIGATOR answered with success, as (on, off) counts, and
/// how many it refused (an injected fault).
fn toggles(sim: SocketAddr) -> (usize, usize, usize) {
    let log: Vec<serde_json::Value> = http_get(sim, "/sim/log")
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let (mut on, mut off, mut refused) = (0, 0, 0);
    for r in &log {
        if r["method"] != "PUT"
            || !r["path"]
                .as_str()
                .is_some_and(|p| p.ends_with("toggle/switch"))
        {
            continue;
        }
        let ok = r["status"]
            .as_u64()
            .is_some_and(|s| (200..300).contains(&s));
        let b: serde_json::Value =
            serde_json::from_str(r["body"].as_str().unwrap_or("")).unwrap_or_default();
        match (ok, b["switch"].as_i64()) {
            (false, _) => refused += 1,
            (true, Some(1)) => on += 1,
            (true, Some(0)) => off += 1,
            _ => {}
        }
    }
    (on, off, refused)
}

/// Whether any policy's protection switch is on in MITIGATOR now.
fn protection_on(sim: SocketAddr) -> bool {
    let Some(st) = http_get(sim, "/sim/state")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
    else {
        return false;
    };
    st["switches"]
        .as_object()
        .is_some_and(|ps| ps.values().any(|p| p["toggle"].as_i64() == Some(1)))
}

struct Cluster {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    nats: Nats,
    _sim_child: Child,
    sim: SocketAddr,
    names: Vec<&'static str>,
}

/// A failed test's whole node logs, copied to `$FLOWGUARD_TEST_KEEP` when it is set (the
/// failure message holds only their tails).
impl Drop for Cluster {
    fn drop(&mut self) {
        let Some(keep) = std::env::var_os("FLOWGUARD_TEST_KEEP") else {
            return;
        };
        if !std::thread::panicking() {
            return;
        }
        let keep = PathBuf::from(keep);
        let _ = std::fs::create_dir_all(&keep);
        for n in &self.names {
            let f = format!("{n}.log");
            let _ = std::fs::copy(self.dir.join(&f), keep.join(&f));
        }
        eprintln!("node logs kept in {}", keep.display());
    }
}

impl Cluster {
    fn new() -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let nats = nats_cluster(&dir);
        let (sim_child, sim) = start_sim(&dir);
        Cluster {
            _tmp: tmp,
            dir,
            nats,
            _sim_child: sim_child,
            sim,
            names: Vec::new(),
        }
    }

    fn node(&mut self, name: &'static str, roles: &str, nf: Option<u16>) -> Node {
        self.node_with(name, roles, &split_profile(nf))
    }

    fn node_with(&mut self, name: &'static str, roles: &str, profile: &Profile) -> Node {
        self.names.push(name);
        start_node(&self.dir, name, roles, &self.nats, self.sim, profile)
    }

    /// The last lines of every node's log, for a failure message: the nodes started last
    /// first (the detector and controller, whose lines say most), the NATS client's
    /// connection lines left out, and a message repeated back to back said once with its
    /// count (CI shows only the head of a long failure output).
    fn logs(&self) -> String {
        let mut names = self.names.clone();
        names.dedup();
        names.reverse();
        names
            .iter()
            .map(|n| {
                let l =
                    std::fs::read_to_string(self.dir.join(format!("{n}.log"))).unwrap_or_default();
                let mut lines: Vec<(String, usize)> = Vec::new();
                for line in l.lines().filter(|l| !l.contains(" async_nats")) {
                    // The message without its timestamp, to see repeats.
                    let msg = line.split_once(' ').map_or(line, |(_, m)| m);
                    match lines.last_mut() {
                        Some((last, count))
                            if last.split_once(' ').map_or(last.as_str(), |(_, m)| m) == msg =>
                        {
                            *count += 1
                        }
                        _ => lines.push((line.to_string(), 1)),
                    }
                }
                let tail: Vec<String> = lines
                    .iter()
                    .rev()
                    .take(40)
                    .rev()
                    .map(|(l, n)| {
                        if *n > 1 {
                            format!("{l} (x{n}, the first)")
                        } else {
                            l.clone()
                        }
                    })
                    .collect();
                format!("--- {n}\n{}", tail.join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until `api` sees `members` members, every partition owned and a leader.
    fn wait_formed(&self, api: SocketAddr, members: usize) {
        // 60 s: on the loaded 2-core machine the first stream creation of a fresh NATS
        // cluster alone took 10 s once.
        let ready = common::wait_for(60, || {
            let j = cluster_json(api)?;
            let ms = j["members"].as_array()?;
            let owners = j["partition_owners"].as_object()?;
            // Formed means balanced too: a detector that came up first takes every
            // partition, and the later ones get theirs a lease round after they join.
            let detectors: std::collections::BTreeSet<&str> = ms
                .iter()
                .filter(|m| {
                    m["roles"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|r| r == "detector"))
                })
                .filter_map(|m| m["node_id"].as_str())
                .collect();
            let holders: std::collections::BTreeSet<&str> =
                owners.values().filter_map(|o| o.as_str()).collect();
            (ms.len() == members
                && owners.len() == usize::from(PARTITIONS)
                && holders == detectors
                && j["controller_leader"].is_string())
            .then_some(())
        });
        assert!(
            ready.is_some(),
            "cluster did not form (seen: {:?}):\n{}",
            cluster_json(api),
            self.logs()
        );
    }
}

fn leader_of(api: SocketAddr) -> Option<String> {
    cluster_json(api).and_then(|j| j["controller_leader"].as_str().map(str::to_string))
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[test]
fn split_victim_one_mitigation_and_controller_failover() {
    if !require_tool("nats-server") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cl = Cluster::new();
    let sim = cl.sim;
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let _a = cl.node("A", r#"["collector"]"#, Some(pa));
    let _b = cl.node("B", r#"["collector"]"#, Some(pb));
    let mut c = cl.node("C", r#"["detector", "controller"]"#, None);
    let mut d = cl.node("D", r#"["detector", "controller"]"#, None);
    cl.wait_formed(c.api, 4);
    let collectors = [addr(pa), addr(pb)];

    // 1. 0.6 × threshold through each collector: 12 s of 6 000 pps each.
    let fl = Flood::start(&collectors, [127, 16, 0, 10], 100, 12);
    let on = common::wait_for(10, || (toggles(sim).0 >= 1).then_some(()));
    assert!(
        on.is_some(),
        "no policy-on for the split victim:\n{}",
        cl.logs()
    );

    // 4a. The leader dies right after its policy-on.
    let leader = leader_of(c.api).expect("a controller leader");
    let (killed, survivor) = match leader.as_str() {
        "C" => (&mut c, &mut d),
        "D" => (&mut d, &mut c),
        other => panic!("unexpected leader {other:?}"),
    };
    let t_kill = Instant::now();
    killed.kill9();
    let took_over = common::wait_for(10, || {
        (leader_of(survivor.api).as_deref() == Some(survivor.name)).then_some(())
    });
    assert!(
        took_over.is_some(),
        "standby did not take over:\n{}",
        cl.logs()
    );
    eprintln!(
        "controller {} killed after its policy-on; {} leads after {:?}",
        killed.name,
        survivor.name,
        t_kill.elapsed()
    );
    fl.join();
    let off = common::wait_for(25, || (toggles(sim).1 >= 1).then_some(()));
    assert!(
        off.is_some(),
        "no policy-off after the flood:\n{}",
        cl.logs()
    );

    // 1. 0.45 × threshold through each: under the threshold in sum too. (Also the quiet
    // time in which a second, wrong off or on would show.)
    Flood::start(&collectors, [127, 16, 0, 20], 75, 8).join();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        toggles(sim),
        (1, 1, 0),
        "exactly one on and one off, nothing for the under-threshold split:\n{}",
        cl.logs()
    );
    assert!(!protection_on(sim), "MITIGATOR left on");

    // 4b. The killed node comes back as the standby. MITIGATOR refuses policy-ons now,
    // so the leader's state says it wants (and owns) the switch while MITIGATOR has it
    // off: it dies in that state.
    killed.restart(&cl.dir);
    let back = common::wait_for(20, || {
        let j = cluster_json(survivor.api)?;
        j["members"]
            .as_array()?
            .iter()
            .any(|m| m["node_id"] == killed.name)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "restarted node did not rejoin:\n{}",
        cl.logs()
    );
    let fault = r#"{"status":503,"count":100000,"path":"toggle/switch","method":"PUT"}"#;
    let (s, _) = http_post(sim, "/sim/faults", None, fault).expect("inject fault");
    assert_eq!(s, 200);
    let fl = Flood::start(&collectors, [127, 16, 0, 30], 100, 14);
    let refused = common::wait_for(12, || (toggles(sim).2 >= 1).then_some(()));
    assert!(refused.is_some(), "no policy-on attempt:\n{}", cl.logs());
    assert_eq!(
        leader_of(survivor.api).as_deref(),
        Some(survivor.name),
        "the survivor does not lead:\n{}",
        cl.logs()
    );
    let t_kill = Instant::now();
    survivor.kill9();
    let (s, _) = http_post(sim, "/sim/faults", None, r#"{"clear":true}"#).expect("clear faults");
    assert_eq!(s, 200);
    let took_over = common::wait_for(10, || {
        (leader_of(killed.api).as_deref() == Some(killed.name)).then_some(())
    });
    assert!(
        took_over.is_some(),
        "restarted standby did not take over:\n{}",
        cl.logs()
    );
    eprintln!(
        "controller {} killed with its policy-on refused; {} leads after {:?}",
        survivor.name,
        killed.name,
        t_kill.elapsed()
    );
    let on = common::wait_for(10, || (toggles(sim).0 >= 2).then_some(()));
    assert!(
        on.is_some(),
        "the new leader did not switch on what the state wants:\n{}",
        cl.logs()
    );
    fl.join();
    let off = common::wait_for(25, || (toggles(sim).1 >= 2).then_some(()));
    assert!(
        off.is_some(),
        "no policy-off after the second flood:\n{}",
        cl.logs()
    );
    std::thread::sleep(Duration::from_secs(3));
    let (on, off, _) = toggles(sim);
    assert_eq!(
        (on, off),
        (2, 2),
        "one on and one off per attack:\n{}",
        cl.logs()
    );
    assert!(!protection_on(sim), "MITIGATOR left on");
}

/// A protected address in partition `p` (the same hash the nodes use).
fn host_in(p: u16, skip: &[IpAddr]) -> [u8; 4] {
    (1..=250u8)
        .flat_map(|a| (1..=250u8).map(move |b| [127, 16, a, b]))
        .find(|o| {
            let ip = IpAddr::from(*o);
            !skip.contains(&ip) && flowguard::cluster::lease::partition_of(ip, PARTITIONS) == p
        })
        .expect("an address in the partition")
}

fn owners(api: SocketAddr) -> Vec<(u16, String)> {
    cluster_json(api)
        .and_then(|j| {
            j["partition_owners"].as_object().map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_string())))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn active_attacks(api: SocketAddr) -> Vec<(String, String)> {
    http_get(api, "/api/v1/attacks")
        .ok()
        .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|j| {
            j["active"].as_array().map(|a| {
                a.iter()
                    .filter_map(|x| Some((x["id"].as_str()?.into(), x["ip"].as_str()?.into())))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn detector_killed_mid_attack_partitions_move_and_attacks_continue() {
    if !require_tool("nats-server") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cl = Cluster::new();
    let sim = cl.sim;
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let _a = cl.node("A", r#"["collector"]"#, Some(pa));
    let _b = cl.node("B", r#"["collector"]"#, Some(pb));
    let mut c = cl.node("C", r#"["detector"]"#, None);
    let d = cl.node("D", r#"["detector"]"#, None);
    let e = cl.node("E", r#"["controller"]"#, None);
    cl.wait_formed(e.api, 5);
    let collectors = [addr(pa), addr(pb)];
    // A victim in one of C's partitions, and another of C's partitions for later.
    let cs: Vec<u16> = owners(e.api)
        .into_iter()
        .filter(|(_, o)| o == "C")
        .map(|(p, _)| p)
        .collect();
    assert!(cs.len() >= 2, "C owns {cs:?}:\n{}", cl.logs());
    let v = host_in(cs[0], &[]);
    let w = host_in(cs[1], &[IpAddr::from(v)]);
    let (v_ip, w_ip) = (IpAddr::from(v).to_string(), IpAddr::from(w).to_string());

    let fl = Flood::start(&collectors, v, 100, 24);
    let on = common::wait_for(10, || (toggles(sim).0 >= 1).then_some(()));
    assert!(on.is_some(), "no policy-on for the victim:\n{}", cl.logs());
    let ids: Vec<String> = active_attacks(c.api)
        .into_iter()
        .filter(|(_, ip)| *ip == v_ip)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ids.len(), 1, "C's attacks on {v_ip}: {ids:?}");
    let id = ids[0].clone();

    let t_kill = Instant::now();
    c.kill9();
    let moved = common::wait_for(12, || {
        let o = owners(e.api);
        (o.len() == usize::from(PARTITIONS) && o.iter().all(|(_, n)| n == "D")).then_some(())
    });
    assert!(
        moved.is_some(),
        "C's partitions did not move to D:\n{}",
        cl.logs()
    );
    let took = t_kill.elapsed();
    eprintln!("detector C killed; its partitions are D's after {took:?}");
    // Lease TTL 3 s, a membership read every 750 ms and a lease retry every 250 ms: about
    // 3–4.5 s (benches/cluster-failover.sh times it over 10 kills). The bound here only
    // says that they moved, with room for a loaded machine.
    assert!(
        took < Duration::from_secs(8),
        "partitions moved after {took:?}"
    );

    // A new flood in another of C's old partitions: D detects it.
    let t_moved = Instant::now();
    let fl2 = Flood::start(&collectors, w, 100, 8);
    let second = common::wait_for(10, || {
        active_attacks(d.api)
            .iter()
            .any(|(_, ip)| *ip == w_ip)
            .then_some(())
    });
    assert!(
        second.is_some(),
        "no attack on {w_ip} after the takeover:\n{}",
        cl.logs()
    );
    eprintln!(
        "new flood detected {:?} after the takeover",
        t_moved.elapsed()
    );
    // The first attack continues on D under its id: not ended, not started again.
    let on_d: Vec<String> = active_attacks(d.api)
        .into_iter()
        .filter(|(_, ip)| *ip == v_ip)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        on_d,
        vec![id.clone()],
        "the attack on {v_ip} on D:\n{}",
        cl.logs()
    );
    assert_eq!(
        toggles(sim),
        (1, 0, 0),
        "no off (nor second on) during the attack"
    );
    fl2.join();
    fl.join();
    let off = common::wait_for(25, || (toggles(sim).1 >= 1).then_some(()));
    assert!(
        off.is_some(),
        "no policy-off after the floods:\n{}",
        cl.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(toggles(sim), (1, 1, 0), "one on, one off:\n{}", cl.logs());
    // The controller applied one start and one end for the first victim's host.
    let log = cl.log_of("E");
    let applied = |kind: &str| {
        log.lines()
            .filter(|l| {
                l.contains("controller applies attack event")
                    && l.contains(&format!("ip={v_ip}"))
                    && (l.contains(&format!("event=\"{kind}\""))
                        || l.contains(&format!("event={kind} ")))
            })
            .count()
    };
    assert_eq!(
        (applied("start"), applied("end")),
        (1, 1),
        "the controller's events for {v_ip}:\n{}",
        cl.logs()
    );
}

#[test]
fn collector_restart_mid_attack_ends_nothing() {
    if !require_tool("nats-server") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cl = Cluster::new();
    let sim = cl.sim;
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let mut a = cl.node("A", r#"["collector"]"#, Some(pa));
    let _b = cl.node("B", r#"["collector"]"#, Some(pb));
    let c = cl.node("C", r#"["detector", "controller"]"#, None);
    cl.wait_formed(c.api, 3);
    let collectors = [addr(pa), addr(pb)];
    let fl = Flood::start(&collectors, [127, 16, 0, 50], 100, 22);
    let on = common::wait_for(10, || (toggles(sim).0 >= 1).then_some(()));
    assert!(on.is_some(), "no policy-on:\n{}", cl.logs());
    // kill -9 and start again: A's share is missing until it publishes again.
    let t = Instant::now();
    a.restart(&cl.dir);
    let back = common::wait_for(20, || {
        let j = cluster_json(a.api)?;
        (j["node_id"] == "A").then_some(())
    });
    assert!(
        back.is_some(),
        "collector A did not come back:\n{}",
        cl.logs()
    );
    eprintln!(
        "collector A restarted; its API answers after {:?}",
        t.elapsed()
    );
    fl.join();
    // Not one call while the flood lasted: the gap ended nothing (and started nothing).
    assert_eq!(
        toggles(sim),
        (1, 0, 0),
        "a call during the flood:\n{}",
        cl.logs()
    );
    let off = common::wait_for(30, || (toggles(sim).1 >= 1).then_some(()));
    assert!(
        off.is_some(),
        "no policy-off after the flood:\n{}",
        cl.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(toggles(sim), (1, 1, 0), "one on, one off:\n{}", cl.logs());
}

fn metric(api: SocketAddr, name: &str) -> Option<f64> {
    let (_, b) = http_get(api, "/metrics").ok()?;
    b.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

#[test]
fn nats_server_loss_then_quorum_loss_freezes_mitigator_and_catches_up() {
    if !require_tool("nats-server") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cl = Cluster::new();
    let sim = cl.sim;
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let _a = cl.node("A", r#"["collector"]"#, Some(pa));
    let _b = cl.node("B", r#"["collector"]"#, Some(pb));
    let c = cl.node("C", r#"["detector", "controller"]"#, None);
    cl.wait_formed(c.api, 3);
    let collectors = [addr(pa), addr(pb)];

    // One of three servers gone, the one leading the leases bucket (the worst one: no
    // heartbeat, lease or membership read is answered until a new leader is elected):
    // the split victim still gets one on and one off.
    let lost = cl
        .nats
        .stream_leader("KV_flowguard_leases")
        .expect("the leases bucket has a stream leader");
    stamp(&format!(
        "killing NATS server n{lost}, the leases bucket's stream leader"
    ));
    cl.nats.kill(lost);
    let killed = Instant::now();
    let fl = Flood::start(&collectors, [127, 16, 0, 60], 100, 10);
    // Detection goes on through the election (members and partitions are held), the
    // start waits in the outbox, and the controller applies it once the buckets and the
    // event stream answer again: 4.8–9.8 s after the loss in the runs measured here.
    let on = common::wait_for(20, || (toggles(sim).0 >= 1).then_some(()));
    stamp(&format!(
        "policy-on {:?} after the leader's loss",
        killed.elapsed()
    ));
    assert!(
        on.is_some(),
        "no policy-on with one NATS server down:\n{}",
        cl.logs()
    );
    fl.join();
    let off = common::wait_for(25, || (toggles(sim).1 >= 1).then_some(()));
    assert!(
        off.is_some(),
        "no policy-off with one NATS server down:\n{}",
        cl.logs()
    );

    // Two gone: no quorum. The controller says it is frozen; MITIGATOR sees nothing.
    let second = (0..3).find(|i| *i != lost).unwrap();
    stamp(&format!("killing NATS server n{second}: no quorum"));
    cl.nats.kill(second);
    let fenced = common::wait_for(15, || {
        (metric(c.api, "flowguard_cluster_fenced") == Some(1.0)).then_some(())
    });
    assert!(
        fenced.is_some(),
        "controller not fenced without quorum:\n{}",
        cl.logs()
    );
    assert!(
        cl.log_of("C").contains("MITIGATOR frozen as it is"),
        "no log line says MITIGATOR is frozen:\n{}",
        cl.logs()
    );
    // Long enough to be still going when the controller catches up (stopped then): an
    // attack that had ended by then would be a start and an end to apply, not a flood.
    stamp("fenced; flood on 127.16.0.70 for at most 60 s");
    let fl = Flood::start(&collectors, [127, 16, 0, 70], 100, 60);
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        toggles(sim),
        (1, 1, 0),
        "a call without quorum:\n{}",
        cl.logs()
    );

    // Quorum back: the attack still going on is mitigated, once.
    stamp("quorum back: restarting both servers");
    cl.nats.start(lost);
    cl.nats.start(second);
    let unfenced = common::wait_for(20, || {
        (metric(c.api, "flowguard_cluster_fenced") == Some(0.0)).then_some(())
    });
    assert!(
        unfenced.is_some(),
        "still fenced with quorum back:\n{}",
        cl.logs()
    );
    stamp("unfenced");
    // Two restarted servers catch their streams up before the events are answered; on
    // the loaded 2-core CI machine once not within 20 s of the restart (the policy-on of
    // the faster runs here: 5-12 s).
    let on = common::wait_for(40, || (toggles(sim).0 >= 2).then_some(()));
    assert!(
        on.is_some(),
        "no policy-on once quorum is back:\n{}",
        cl.logs()
    );
    stamp("policy-on with quorum back; flood stopped");
    drop(fl);
    let off = common::wait_for(30, || (toggles(sim).1 >= 2).then_some(()));
    assert!(
        off.is_some(),
        "no policy-off after quorum came back:\n{}",
        cl.logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        toggles(sim),
        (2, 2, 0),
        "one on, one off per attack:\n{}",
        cl.logs()
    );
}

/// A step of a test's timeline on stderr, with the wall-clock time the node logs use.
fn stamp(what: &str) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let s = t.as_secs() % 86_400;
    eprintln!(
        "[{:02}:{:02}:{:02}.{:03}Z] {what}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    );
}

/// The UDP payloads of a pcap with their times relative to its first packet.
fn capture(file: &str) -> Vec<(Duration, Vec<u8>)> {
    let f = std::fs::File::open(common::vectors().join(file)).expect("open capture");
    let mut r = pcap_file::pcap::PcapReader::new(f).expect("pcap");
    let (mut out, mut t0) = (Vec::new(), None);
    while let Some(Ok(p)) = r.next_packet() {
        let Ok(s) = etherparse::SlicedPacket::from_ethernet(&p.data) else {
            continue;
        };
        if let Some(etherparse::TransportSlice::Udp(u)) = s.transport {
            let t0 = *t0.get_or_insert(p.timestamp);
            out.push((p.timestamp.saturating_sub(t0), u.payload().to_vec()));
        }
    }
    out
}

/// Per-host lifetime totals of `ip`'s incoming direction, as the hosts API shows them.
fn incoming_totals(api: SocketAddr, ip: &str) -> Option<serde_json::Value> {
    let (s, b) = http_get(api, &format!("/api/v1/hosts/{ip}")).ok()?;
    let v: serde_json::Value = (s == 200).then(|| serde_json::from_str(&b).ok())??;
    v["directions"]
        .as_array()?
        .iter()
        .find(|d| d["direction"] == "incoming")
        .map(|d| d["totals"].clone())
}

/// Every attack `api` knows, active or ended, as (ip, direction, type), sorted.
fn attack_kinds(api: SocketAddr) -> (Vec<(String, String, String)>, usize) {
    let j: serde_json::Value = http_get(api, "/api/v1/attacks")
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or_default();
    let mut all: Vec<(String, String, String)> = ["active", "recent"]
        .iter()
        .flat_map(|k| j[*k].as_array().cloned().unwrap_or_default())
        .map(|a| {
            let s = |f: &str| a[f].as_str().unwrap_or_default().to_string();
            (s("ip"), s("direction"), s("attack_type"))
        })
        .collect();
    all.sort();
    let active = j["active"].as_array().map_or(0, Vec::len);
    (all, active)
}

/// Issue 16, item 2: the shared captures (softflowd v5, v9, IPFIX, pmacctd sFlow: four
/// exporters) replayed at their own pace through two collectors, each taking a share of
/// the exporters, give the attacks, types and exact per-host totals a single node gets
/// from the same datagrams sent to it at the same instants.
#[test]
fn two_collectors_replaying_the_captures_answer_as_one_node() {
    if !require_tool("nats-server") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cl = Cluster::new();
    let ports: Vec<u16> = (0..5).map(|_| free_udp_port()).collect();
    let (nf_a, nf_b, sf_b, nf_s, sf_s) = (ports[0], ports[1], ports[2], ports[3], ports[4]);
    let listen = |proto: &str, p: u16| {
        format!("[[collector]]\nprotocol = \"{proto}\"\nlisten = \"127.0.0.1:{p}\"\n")
    };
    // What the replay tests use (tests/common check_config), with lifetime totals.
    let body = "[aggregate]\nhost_totals = true\n\
        [networks]\nprotected = [\"127.0.0.16/28\", \"127.0.0.32/27\"]\n\
        [[hostgroup]]\nname = \"default\"\nthreshold_pps = 3000\nthreshold_mbps = 100000\nban_time_seconds = 5\n";
    let profile = |collectors: String| Profile {
        collectors,
        body: body.to_string(),
    };
    let _a = cl.node_with("A", r#"["collector"]"#, &profile(listen("netflow", nf_a)));
    let _b = cl.node_with(
        "B",
        r#"["collector"]"#,
        &profile(listen("netflow", nf_b) + &listen("sflow", sf_b)),
    );
    let c = cl.node_with(
        "C",
        r#"["detector", "controller"]"#,
        &profile(String::new()),
    );
    // The single node: the same sections, no cluster, no MITIGATOR.
    let s_api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let s_cfg = cl.dir.join("S.toml");
    std::fs::write(
        &s_cfg,
        format!(
            "[api]\nlisten = \"{s_api}\"\n{}{}{body}[state]\ndir = \"{}\"\n",
            listen("netflow", nf_s),
            listen("sflow", sf_s),
            cl.dir.join("S-state").display()
        ),
    )
    .unwrap();
    cl.names.push("S");
    let _s = run_node(&cl.dir, "S", s_cfg, s_api);
    cl.wait_formed(c.api, 3);
    assert!(
        common::wait_for(20, || http_get(s_api, "/healthz")
            .ok()
            .filter(|r| r.0 == 200))
        .is_some(),
        "single node did not start:\n{}",
        cl.logs()
    );

    // Each capture from its own socket (one exporter each), to one collector of the
    // cluster and to the single node, datagram by datagram at the capture's pace.
    let plan = [
        ("v-softflowd-nf5.pcap", nf_a, nf_s),
        ("v-softflowd-nf9.pcap", nf_b, nf_s),
        ("v-softflowd-nf10.pcap", nf_a, nf_s),
        ("v-pmacctd-sflow.pcap", sf_b, sf_s),
    ];
    let caps: Vec<_> = plan.iter().map(|(f, _, _)| capture(f)).collect();
    let t0 = Instant::now() + Duration::from_millis(200);
    let senders: Vec<_> = plan
        .iter()
        .zip(caps)
        .map(|(&(_, to_cluster, to_single), cap)| {
            std::thread::spawn(move || {
                let a = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
                let b = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
                for (at, d) in cap {
                    if let Some(w) = (t0 + at).checked_duration_since(Instant::now()) {
                        std::thread::sleep(w);
                    }
                    let _ = a.send_to(&d, addr(to_cluster));
                    let _ = b.send_to(&d, addr(to_single));
                }
            })
        })
        .collect();
    for t in senders {
        t.join().expect("sender");
    }

    // The attacks end 5 s (ban time) after their rates fall; both must be done.
    let done = common::wait_for(40, || {
        let (s, c) = (attack_kinds(s_api), attack_kinds(c.api));
        (s.1 == 0 && c.1 == 0 && s.0.len() >= 4 && c.0.len() >= 4).then_some(())
    });
    let (single, cluster) = (attack_kinds(s_api).0, attack_kinds(c.api).0);
    assert!(
        done.is_some(),
        "attacks did not all end: single {single:?}, cluster {cluster:?}\n{}",
        cl.logs()
    );
    let want: Vec<(String, String, String)> = [
        ("127.0.0.20", "syn_flood"),
        ("127.0.0.21", "icmp_flood"),
        ("127.0.0.22", "udp_flood"),
        ("127.0.0.23", "ip_fragmentation"),
    ]
    .iter()
    .map(|(ip, t)| (ip.to_string(), "incoming".to_string(), t.to_string()))
    .collect();
    assert_eq!(single, want, "the single node's attacks");
    assert_eq!(cluster, single, "the cluster's attacks\n{}", cl.logs());
    for ip in [
        "127.0.0.20",
        "127.0.0.21",
        "127.0.0.22",
        "127.0.0.23",
        "127.0.0.24",
    ] {
        let (s, c) = (incoming_totals(s_api, ip), incoming_totals(c.api, ip));
        assert!(
            s.as_ref().is_some_and(|t| t["packets"].as_u64() > Some(0)),
            "{ip}: no totals on the single node: {s:?}"
        );
        assert_eq!(c, s, "{ip}: cluster totals vs single node");
    }
}
