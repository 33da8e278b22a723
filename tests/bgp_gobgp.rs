//! BGP actions through a real gobgpd, on loopback only. Every daemon is started by the
//! test (config written here, gRPC API on 127.0.0.1:<free port>), bounded by `timeout`,
//! and stopped by PID when its handle drops.
//!
//! - flowguard's gobgpd (127.0.0.1) peers with a second gobgpd standing for the upstream
//!   router (127.0.0.2/3 on other ports); what the upstream's RIB holds is what a router
//!   would have been told.
//! - `flood_from_a_capture_...`: the real binary detects floods in a shared capture; the
//!   blackhole and FlowSpec routes reach the upstream and leave it after the end.
//! - `gobgpd_restart_...`: routes come back after gobgpd restarts; a ban while it is down
//!   is retried, not dropped; the end still withdraws.
//! - `refusals_...` (the library's stage, one gobgpd, no peer): outside the protected
//!   networks, too-short prefix, route cap; FlowSpec with the attack's source port and a
//!   rate limit; an operator's route left alone; flowguard's own restart reconciled.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_tcp_port, free_udp_port, http_get, http_post, start_flowguard, Child};
use flowguard::metrics::Metrics;
use flowguard::mitigate::bgp_config::BgpActions;
use flowguard::mitigate::{spawn_with, BgpConfig, MitigationHandle, Setup};
use flowguard::model::{AttackEvent, AttackType, Direction, EventKind, Protocol, TopSource};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "bgp-token";
const BLACKHOLE: u64 = 65535 << 16 | 666;
const MARKER: &str = "65001:4242";
const MARKER_VALUE: u64 = 65001 << 16 | 4242;

/// One gobgpd. `peer` = (address, AS, BGP port, passive) of its one neighbor, if any.
struct Gobgpd {
    dir: PathBuf,
    name: &'static str,
    api: u16,
    child: Option<Child>,
}

impl Gobgpd {
    fn start(
        dir: &Path,
        name: &'static str,
        asn: u32,
        addr: &str,
        port: u16,
        peer: Option<(&str, u32, u16, bool)>,
    ) -> Gobgpd {
        assert!(addr.starts_with("127."), "loopback only");
        let mut conf = format!(
            "[global.config]\n  as = {asn}\n  router-id = \"{addr}\"\n  port = {port}\n  local-address-list = [\"{addr}\"]\n"
        );
        if let Some((paddr, pas, pport, passive)) = peer {
            assert!(paddr.starts_with("127."), "loopback only");
            conf.push_str(&format!(
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{paddr}\"\n    peer-as = {pas}\n\
                 [neighbors.timers.config]\n    connect-retry = 1\n\
                 [neighbors.transport.config]\n    remote-port = {pport}\n    local-address = \"{addr}\"\n    passive-mode = {passive}\n"
            ));
            for f in ["ipv4-unicast", "ipv6-unicast", "ipv4-flowspec"] {
                conf.push_str(&format!(
                    "[[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"{f}\"\n"
                ));
            }
        }
        std::fs::write(dir.join(format!("{name}.toml")), conf).unwrap();
        let mut g = Gobgpd {
            dir: dir.to_path_buf(),
            name,
            api: free_tcp_port(),
            child: None,
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.name)))
            .unwrap();
        // `timeout` bounds the daemon even if the test dies without dropping it.
        let child = common::spawn(
            "gobgpd",
            Command::new("timeout")
                .args(["-s", "TERM", "300", "gobgpd", "-f"])
                .arg(self.dir.join(format!("{}.toml", self.name)))
                .arg(format!("--api-hosts=127.0.0.1:{}", self.api))
                .args(["--pprof-disable", "-p"])
                .stdout(log.try_clone().unwrap())
                .stderr(log),
        );
        self.child = Some(child);
        let up = common::wait_for(10, || self.cli(&["global"]).map(|_| ()));
        assert!(
            up.is_some(),
            "{} did not come up: {}",
            self.name,
            self.log()
        );
    }

    /// Stops the daemon (SIGTERM to its PID, then SIGKILL).
    fn stop(&mut self) {
        self.child = None;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join(format!("{}.log", self.name))).unwrap_or_default()
    }

    /// `gobgp -p API args...`, bounded; stdout on success.
    fn cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("timeout")
            .args(["5", "gobgp", "-p", &self.api.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn rib(&self, family: &str) -> Value {
        self.cli(&["-j", "global", "rib", "-a", family])
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    fn established(&self) -> bool {
        self.cli(&["neighbor"])
            .is_some_and(|s| s.contains("Establ"))
    }
}

/// Every path of a RIB answer.
fn paths(rib: &Value) -> Vec<Value> {
    rib.as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_array)
        .flatten()
        .cloned()
        .collect()
}

fn communities(p: &Value) -> Vec<u64> {
    p["attrs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == 8)
        .flat_map(|a| a["communities"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c.as_u64())
        .collect()
}

/// The unicast path for `prefix`, if the RIB holds one.
fn unicast(rib: &Value, prefix: &str) -> Option<Value> {
    paths(rib)
        .into_iter()
        .find(|p| p["nlri"]["prefix"] == prefix)
}

/// A FlowSpec rule as (protocol, source port, destination port, traffic rate).
type Rule = (Option<u64>, Option<u64>, Option<u64>, Option<f64>);

/// FlowSpec paths for `dst`.
fn flowspec(rib: &Value, dst: &str) -> Vec<Rule> {
    paths(rib)
        .into_iter()
        .filter_map(|p| {
            let items = p["nlri"]["value"].as_array()?.clone();
            let get = |t: u64| {
                items
                    .iter()
                    .find(|i| i["type"] == t)
                    .and_then(|i| i["value"][0]["value"].as_u64())
            };
            let d = items.iter().find(|i| i["type"] == 1)?["value"]["prefix"].clone();
            (d == dst).then(|| {
                let rate = p["attrs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|a| a["type"] == 16)
                    .flat_map(|a| a["value"].as_array().cloned().unwrap_or_default())
                    .find(|e| e["subtype"] == 6)
                    .and_then(|e| e["rate"].as_f64());
                (get(3), get(6), get(5), rate)
            })
        })
        .collect()
}

fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

fn metric(api: SocketAddr, line_start: &str) -> u64 {
    http_get(api, "/metrics")
        .ok()
        .and_then(|(_, b)| {
            b.lines()
                .find(|l| l.starts_with(line_start))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// flowguard's gobgpd on 127.0.0.1 peering with an upstream gobgpd on `up_addr`.
fn pair(dir: &Path, up_addr: &str) -> (Gobgpd, Gobgpd) {
    let (p_fg, p_up) = (free_tcp_port(), free_tcp_port());
    let up = Gobgpd::start(
        dir,
        "upstream",
        65002,
        up_addr,
        p_up,
        Some(("127.0.0.1", 65001, p_fg, true)),
    );
    let fg = Gobgpd::start(
        dir,
        "fg-gobgpd",
        65001,
        "127.0.0.1",
        p_fg,
        Some((up_addr, 65002, p_up, false)),
    );
    assert!(
        wait_until(20, || fg.established()).is_some(),
        "session did not come up:\n{}\n{}",
        fg.log(),
        up.log()
    );
    (fg, up)
}

fn fg_config(api: SocketAddr, nf: Option<u16>, gobgp_api: u16, state: &Path, ban: u32) -> String {
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
ban_time_seconds = {ban}
[bgp]
gobgp_api = "127.0.0.1:{gobgp_api}"
reassert_interval_seconds = 1
retry_base_ms = 100
retry_max_ms = 500
command_timeout_seconds = 3
marker_community = "{MARKER}"
[bgp.hostgroup.default]
blackhole = true
flowspec = true
[state]
dir = "{}"
"#,
        state.display()
    )
}

fn attacks(api: SocketAddr) -> Value {
    http_get(api, "/api/v1/attacks")
        .ok()
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(Value::Null)
}

fn active_on(api: SocketAddr, ip: &str) -> Option<Value> {
    attacks(api)["active"]
        .as_array()?
        .iter()
        .find(|a| a["ip"] == ip)
        .cloned()
}

#[test]
fn flood_from_a_capture_blackholes_and_flowspecs_at_the_upstream_until_it_ends() {
    if !common::require_tool("gobgpd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (fg_bgp, up) = pair(dir.path(), "127.0.0.2");
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let nf = free_udp_port();
    let _fg = start_flowguard(
        &fg_config(api, Some(nf), fg_bgp.api, dir.path(), 5),
        dir.path(),
        api,
    );
    let sent = common::send_capture(
        &common::vectors().join("v-softflowd-nf9.pcap"),
        format!("127.0.0.1:{nf}").parse().unwrap(),
    );
    assert!(sent > 2000);
    // The UDP flood on .22: from its detection to the upstream's RIB within 2 s.
    assert!(
        wait_until(15, || active_on(api, "127.0.0.22").is_some()).is_some(),
        "no attack on .22: {}",
        attacks(api)
    );
    let t = wait_until(10, || unicast(&up.rib("ipv4"), "127.0.0.22/32").is_some())
        .unwrap_or_else(|| panic!("no blackhole at the upstream: {}", up.rib("ipv4")));
    eprintln!("blackhole at the upstream {t:?} after the attack showed in the API");
    assert!(t <= Duration::from_secs(2), "took {t:?}");
    let path = unicast(&up.rib("ipv4"), "127.0.0.22/32").unwrap();
    let c = communities(&path);
    assert!(
        c.contains(&BLACKHOLE) && c.contains(&MARKER_VALUE),
        "{path}"
    );
    assert!(
        path["attrs"].to_string().contains("192.0.2.1"),
        "next hop: {path}"
    );
    // One FlowSpec rule per vector: destination .22, UDP, and the source port when the
    // top sources sending from one port carry at least half of the attack (the capture's
    // hping3 sends from one port). Events carry no destination port yet: none in the rule.
    let fs = wait_until(5, || {
        !flowspec(&up.rib("ipv4-flowspec"), "127.0.0.22/32").is_empty()
    });
    assert!(fs.is_some(), "no flowspec: {}", up.rib("ipv4-flowspec"));
    let a22 = active_on(api, "127.0.0.22").unwrap();
    let top = &a22["top_sources"][0];
    let port = top["port"]
        .as_u64()
        .filter(|_| top["share"].as_f64().unwrap_or(0.0) >= 0.5);
    assert!(
        port.is_some(),
        "the capture's UDP flood comes from one port: {a22}"
    );
    let rules = flowspec(&up.rib("ipv4-flowspec"), "127.0.0.22/32");
    assert_eq!(
        rules,
        [(Some(17), port, None, Some(0.0))],
        "UDP from the port, discard"
    );
    let syn = flowspec(&up.rib("ipv4-flowspec"), "127.0.0.20/32");
    assert_eq!(
        syn.first().map(|r| r.0),
        Some(Some(6)),
        "TCP on .20: {syn:?}"
    );
    // The API lists the routes and their state; the report too.
    let a = active_on(api, "127.0.0.22").unwrap();
    let routes = a["mitigation"]["routes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(routes.len(), 2, "{a}");
    assert!(
        wait_until(5, || {
            active_on(api, "127.0.0.22").is_some_and(|a| {
                a["mitigation"]["routes"]
                    .as_array()
                    .is_some_and(|r| r.iter().all(|x| x["state"] == "announced"))
            })
        })
        .is_some(),
        "{}",
        attacks(api)
    );
    let id = a["id"].as_str().unwrap().to_string();
    let (_, report) = http_get(api, &format!("/api/v1/attacks/{id}/report.txt")).unwrap();
    assert!(
        report.contains("BGP routes:")
            && report.contains("blackhole 127.0.0.22/32 next-hop 192.0.2.1 communities 65535:666,65001:4242: announced"),
        "{report}"
    );
    // The end withdraws everything from the upstream.
    let gone = wait_until(40, || {
        paths(&up.rib("ipv4")).is_empty() && paths(&up.rib("ipv4-flowspec")).is_empty()
    });
    assert!(
        gone.is_some(),
        "still at the upstream: {} {}",
        up.rib("ipv4"),
        up.rib("ipv4-flowspec")
    );
    // Four attacks, a blackhole and a rule each.
    assert_eq!(
        metric(api, "flowguard_bgp_announcements_total{kind=\"blackhole\"}"),
        4
    );
    assert_eq!(
        metric(api, "flowguard_bgp_withdrawals_total{kind=\"blackhole\"}"),
        4
    );
    assert_eq!(
        metric(api, "flowguard_bgp_announcements_total{kind=\"flowspec\"}"),
        4
    );
    assert_eq!(
        metric(api, "flowguard_bgp_withdrawals_total{kind=\"flowspec\"}"),
        4
    );
    assert_eq!(
        metric(api, "flowguard_bgp_errors_total{op=\"announce\"}"),
        0
    );
}

fn ban(api: SocketAddr, ip: &str) {
    let body = format!(
        r#"{{"action":"ban","ip":"{ip}","direction":"incoming","pps":50000,"attack_type":"udp_flood","protocol":"udp"}}"#
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
fn gobgpd_restart_mid_attack_routes_come_back_and_the_end_still_withdraws() {
    if !common::require_tool("gobgpd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut fg_bgp, up) = pair(dir.path(), "127.0.0.3");
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let _fg = start_flowguard(
        &fg_config(api, None, fg_bgp.api, dir.path(), 5),
        dir.path(),
        api,
    );
    ban(api, "127.0.0.30");
    let at_up = |ip: &str| unicast(&up.rib("ipv4"), &format!("{ip}/32")).is_some();
    assert!(
        wait_until(5, || at_up("127.0.0.30")).is_some(),
        "{}",
        up.rib("ipv4")
    );

    fg_bgp.stop();
    assert!(
        wait_until(10, || !at_up("127.0.0.30")).is_some(),
        "the upstream keeps routes of a dead session"
    );
    // A ban while gobgpd is down is retried in the background, not dropped.
    ban(api, "127.0.0.31");
    let states = |ip: &str| -> Vec<String> {
        active_on(api, ip)
            .and_then(|a| a["mitigation"]["routes"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|r| r["state"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // Whichever step is at the head of the lane fails and is retried, counted; .31's
    // routes are not announced.
    let failing = wait_until(15, || {
        metric(api, "flowguard_bgp_errors_total{op=\"lookup\"}") > 0
            && states("127.0.0.30")
                .iter()
                .chain(&states("127.0.0.31"))
                .any(|s| s == "failed_retrying")
    });
    assert!(
        failing.is_some(),
        "{:?} {:?}",
        states("127.0.0.30"),
        states("127.0.0.31")
    );
    let s31 = states("127.0.0.31");
    assert!(
        s31.len() == 2 && s31.iter().all(|s| s == "pending" || s == "failed_retrying"),
        "{s31:?}"
    );

    fg_bgp.spawn();
    let t = wait_until(20, || at_up("127.0.0.30") && at_up("127.0.0.31"));
    eprintln!("routes back at the upstream {t:?} after gobgpd restarted");
    assert!(
        t.is_some(),
        "not back: {} / flowguard's gobgpd: {}",
        up.rib("ipv4"),
        fg_bgp.rib("ipv4")
    );
    let fs = flowspec(&up.rib("ipv4-flowspec"), "127.0.0.30/32");
    assert_eq!(fs.len(), 1, "the FlowSpec rule is back too");

    unban(api, "127.0.0.30");
    unban(api, "127.0.0.31");
    let gone = wait_until(15, || {
        paths(&up.rib("ipv4")).is_empty() && paths(&up.rib("ipv4-flowspec")).is_empty()
    });
    assert!(gone.is_some(), "{}", up.rib("ipv4"));
    assert!(paths(&fg_bgp.rib("ipv4")).is_empty());
}

// --- the library's stage against one gobgpd ---------------------------------------------

fn event(kind: EventKind, id: &str, ip: &str, hostgroup: &str, port: Option<u16>) -> AttackEvent {
    AttackEvent {
        event: kind,
        id: id.into(),
        ip: ip.parse().unwrap(),
        direction: Direction::Incoming,
        attack_type: AttackType::UdpFlood,
        protocol: Protocol::Udp,
        time_ms: 0,
        pps: 100_000,
        bps: 800_000_000,
        flows_per_second: 10,
        peak_pps: 100_000,
        hostgroup: hostgroup.into(),
        top_sources: vec![TopSource {
            ip: "198.51.100.7".parse().unwrap(),
            port,
            share: 0.9,
        }],
        vectors: Vec::new(),
        previous_attack_type: None,
        new_vectors: Vec::new(),
    }
}

struct Stage {
    h: MitigationHandle,
    tx: mpsc::Sender<AttackEvent>,
    jh: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

impl Stage {
    fn start(bgp: BgpConfig, dir: &Path, grace: u64) -> Stage {
        let (tx, rx) = mpsc::channel(64);
        let stop = CancellationToken::new();
        let metrics = Arc::new(Metrics::new());
        let mut setup = Setup {
            bgp,
            protected: vec!["127.0.0.0/24".parse().unwrap()],
            ..Default::default()
        };
        setup.mitigator.restore_grace_seconds = grace;
        let (h, jh) =
            spawn_with(setup, dir.to_path_buf(), metrics.clone(), rx, stop.clone()).unwrap();
        Stage {
            h,
            tx,
            jh,
            stop,
            metrics,
        }
    }

    async fn send(&self, e: AttackEvent) {
        self.tx.send(e).await.unwrap();
    }

    /// States of the attack's routes, in plan order.
    fn route_states(&self, id: &str) -> Vec<String> {
        self.h
            .status(id)
            .map(|s| {
                s.routes
                    .iter()
                    .map(|r| match &r.reason {
                        Some(why) if r.state == "refused" => format!("refused:{why}"),
                        _ => r.state.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_routes(&self, id: &str, want: &[&str]) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if self.route_states(id) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{id}: routes {:?}, wanted {want:?}", self.route_states(id));
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.jh).await;
    }
}

fn lone_gobgpd(dir: &Path) -> Gobgpd {
    Gobgpd::start(dir, "lone", 65001, "127.0.0.1", free_tcp_port(), None)
}

fn bgp_cfg(g: &Gobgpd) -> BgpConfig {
    let mut c = BgpConfig {
        gobgp_api: Some(format!("127.0.0.1:{}", g.api)),
        reassert_interval_seconds: 1,
        retry_base_ms: 100,
        retry_max_ms: 500,
        marker_community: Some(MARKER.into()),
        max_routes: 3,
        ..Default::default()
    };
    c.hostgroup.insert(
        "bh".into(),
        BgpActions {
            blackhole: true,
            ..Default::default()
        },
    );
    c.hostgroup.insert(
        "wide".into(),
        BgpActions {
            blackhole: true,
            prefix_length_v4: 24,
            ..Default::default()
        },
    );
    c.hostgroup.insert(
        "fs".into(),
        BgpActions {
            flowspec: true,
            flowspec_rate_limit_bytes_per_second: Some(125_000),
            ..Default::default()
        },
    );
    c
}

fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_flowspec_ports_foreign_routes_and_flowguard_restart() {
    if !common::require_tool("gobgpd") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = Arc::new(lone_gobgpd(dir.path()));
    let st = Stage::start(bgp_cfg(&g), dir.path(), 2);
    let rib = |fam: &'static str| {
        let g = g.clone();
        blocking(move || g.rib(fam))
    };

    // Outside the protected networks, and a /24 under the /32 limit: refused, counted,
    // nothing in gobgpd.
    st.send(event(EventKind::Start, "out", "203.0.113.5", "bh", None))
        .await;
    st.send(event(EventKind::Start, "wide", "127.0.0.77", "wide", None))
        .await;
    st.wait_routes("out", &["refused:outside_protected"]).await;
    st.wait_routes("wide", &["refused:prefix_too_short"]).await;
    let m = st.metrics.render();
    assert!(
        m.contains("flowguard_bgp_refusals_total{reason=\"outside_protected\"} 1"),
        "{m}"
    );
    assert!(m.contains("flowguard_bgp_refusals_total{reason=\"prefix_too_short\"} 1"));

    // FlowSpec with the attack's source port (UDP from 53), rate-limited.
    st.send(event(EventKind::Start, "dns", "127.0.0.53", "fs", Some(53)))
        .await;
    st.wait_routes("dns", &["announced"]).await;
    assert_eq!(
        flowspec(&rib("ipv4-flowspec"), "127.0.0.53/32"),
        [(Some(17), Some(53), None, Some(125_000.0))]
    );

    // An operator's own blackhole for .50 (no marker): flowguard leaves it alone.
    {
        let g = g.clone();
        blocking(move || {
            g.cli(&[
                "global",
                "rib",
                "add",
                "-a",
                "ipv4",
                "127.0.0.50/32",
                "nexthop",
                "192.0.2.9",
            ])
            .expect("operator route added")
        });
    }
    st.send(event(EventKind::Start, "op", "127.0.0.50", "bh", None))
        .await;
    st.wait_routes("op", &["not_ours"]).await;

    // Route cap 3: dns's rule and op's route are two; a and b make four.
    st.send(event(EventKind::Start, "a", "127.0.0.61", "bh", None))
        .await;
    st.send(event(EventKind::Start, "b", "127.0.0.62", "bh", None))
        .await;
    st.wait_routes("a", &["announced"]).await;
    st.wait_routes("b", &["refused:route_cap"]).await;
    assert!(unicast(&rib("ipv4"), "127.0.0.62/32").is_none());
    assert!(st
        .metrics
        .render()
        .contains("flowguard_bgp_refusals_total{reason=\"route_cap\"} 1"));
    // The operator's route outlives flowguard's attack on it; the room it leaves lets b in.
    st.send(event(EventKind::End, "op", "127.0.0.50", "bh", None))
        .await;
    st.wait_routes("b", &["announced"]).await;
    let path = unicast(&rib("ipv4"), "127.0.0.50/32").expect("operator's route still there");
    assert!(!communities(&path).contains(&MARKER_VALUE));
    let path = unicast(&rib("ipv4"), "127.0.0.62/32").expect("b announced");
    assert!(communities(&path).contains(&MARKER_VALUE));

    // flowguard stops with a, b and dns live; while it is down, b's route disappears
    // (someone withdrew it by hand). At the restart the routes are re-asserted from the
    // state file (b's put back); nothing renews the attacks within the 2 s grace period,
    // so they end and everything flowguard added is withdrawn, the operator's route kept.
    st.stop().await;
    {
        let g = g.clone();
        blocking(move || g.cli(&["global", "rib", "del", "-a", "ipv4", "127.0.0.62/32"]));
    }
    let st = Stage::start(bgp_cfg(&g), dir.path(), 2);
    let t0 = Instant::now();
    let mut saw_b_back = false;
    while t0.elapsed() < Duration::from_secs(15) {
        let r = rib("ipv4");
        saw_b_back |= unicast(&r, "127.0.0.62/32").is_some();
        let fs = rib("ipv4-flowspec");
        if saw_b_back && paths(&r).len() == 1 && paths(&fs).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_b_back, "b's route re-asserted after the restart");
    let r = rib("ipv4");
    assert_eq!(paths(&r).len(), 1, "only the operator's route left: {r}");
    assert!(unicast(&r, "127.0.0.50/32").is_some());
    assert!(paths(&rib("ipv4-flowspec")).is_empty());
    st.stop().await;
}
