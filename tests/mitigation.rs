//! The mitigate stage end to end: `flowguard::mitigate::spawn` driven with attack events
//! against a real `mitigator-sim` process, checking the exact calls in `/sim/log`.

mod common;
use common::sim as support;

use std::path::Path;
use std::sync::Arc;

use flowguard::metrics::Metrics;
use flowguard::mitigate::config::Secret;
use flowguard::mitigate::{spawn, MitigationHandle, MitigatorConfig};
use flowguard::model::{AttackEvent, AttackType, Direction, EventKind, Protocol, TopSource};
use serde_json::json;
use support::{calls, wait_for, Sim, PASS, USER};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn cfg(sim: &Sim) -> MitigatorConfig {
    let mut c = MitigatorConfig {
        url: Some(sim.base.clone()),
        username: USER.into(),
        password: Some(Secret::new(PASS)),
        ca_file: sim.cert.clone(),
        connect_timeout_seconds: 1.0,
        request_timeout_seconds: 2.0,
        retries: 2,
        retry_base_ms: 20,
        retry_max_ms: 200,
        ..Default::default()
    };
    c.policy_by_prefix.insert("127.0.0.0/24".into(), 1);
    c.policy_by_prefix.insert("127.0.2.0/24".into(), 2);
    c.policy_by_prefix.insert("127.0.3.0/24".into(), 3);
    c
}

fn ev(kind: EventKind, id: &str, ip: &str, t: AttackType, p: Protocol) -> AttackEvent {
    AttackEvent {
        event: kind,
        id: id.into(),
        ip: ip.parse().unwrap(),
        direction: Direction::Incoming,
        attack_type: t,
        protocol: p,
        time_ms: 0,
        pps: 1000,
        bps: 1_000_000,
        flows_per_second: 10,
        peak_pps: 1000,
        hostgroup: "default".into(),
        top_sources: vec![TopSource {
            ip: "198.51.100.7".parse().unwrap(),
            port: Some(53),
            share: 0.5,
        }],
        vectors: Vec::new(),
        previous_attack_type: None,
        new_vectors: Vec::new(),
    }
}

fn syn(kind: EventKind, id: &str, ip: &str) -> AttackEvent {
    ev(kind, id, ip, AttackType::SynFlood, Protocol::Tcp)
}

struct Stage {
    h: MitigationHandle,
    tx: mpsc::Sender<AttackEvent>,
    jh: JoinHandle<()>,
    stop: CancellationToken,
    metrics: Arc<Metrics>,
}

fn start(c: MitigatorConfig, dir: &Path) -> Stage {
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let metrics = Arc::new(Metrics::new());
    let (h, jh) = spawn(c, dir.to_path_buf(), metrics.clone(), rx, stop.clone()).unwrap();
    Stage {
        h,
        tx,
        jh,
        stop,
        metrics,
    }
}

/// The usual set-up: a plain-HTTP simulator, a state directory and the stage on [`cfg`].
fn rig() -> (Sim, tempfile::TempDir, Stage) {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let st = start(cfg(&sim), dir.path());
    (sim, dir, st)
}

impl Stage {
    async fn send(&self, e: AttackEvent) {
        self.tx.send(e).await.unwrap();
    }
    async fn wait_state(&self, id: &str, state: &str) {
        let h = self.h.clone();
        wait_for(5, &format!("{id} {state}"), || {
            let got = h.status(id).map(|s| s.state);
            async move { got.as_deref() == Some(state) }
        })
        .await;
    }
    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.jh).await;
    }
}

/// The calls without logins (their place is checked where it matters).
async fn api_calls(sim: &Sim) -> Vec<String> {
    calls(&sim.log().await)
        .into_iter()
        .filter(|c| !c.starts_with("POST users/session"))
        .collect()
}

fn on_then_off(policy: u32, cm: &str) -> Vec<String> {
    vec![
        format!("GET toggle/switch?policy={policy} -> 200"),
        format!("PUT toggle/switch?policy={policy} 1 -> 200"),
        format!("GET {cm}/switch?policy={policy} -> 200"),
        format!("PUT {cm}/switch?policy={policy} 1 -> 200"),
        format!("GET {cm}/switch?policy={policy} -> 200"),
        format!("PUT {cm}/switch?policy={policy} 0 -> 200"),
        format!("GET toggle/switch?policy={policy} -> 200"),
        format!("PUT toggle/switch?policy={policy} 0 -> 200"),
    ]
}

async fn start_end(st: &Stage, e: AttackEvent) {
    let id = e.id.clone();
    st.send(e.clone()).await;
    st.wait_state(&id, "active").await;
    st.send(AttackEvent {
        event: EventKind::End,
        ..e
    })
    .await;
    st.wait_state(&id, "ended").await;
}

#[tokio::test]
async fn syn_icmp_and_udp_floods_make_the_exact_calls() {
    let (sim, _dir, st) = rig();
    start_end(&st, syn(EventKind::Start, "syn", "127.0.0.10")).await;
    start_end(
        &st,
        ev(
            EventKind::Start,
            "icmp",
            "127.0.2.10",
            AttackType::IcmpFlood,
            Protocol::Icmp,
        ),
    )
    .await;
    start_end(
        &st,
        ev(
            EventKind::Start,
            "udp",
            "127.0.3.10",
            AttackType::UdpFlood,
            Protocol::Udp,
        ),
    )
    .await;
    let all = calls(&sim.log().await);
    // One login, first, and the token is reused for everything else.
    assert_eq!(all[0], "POST users/session -> 200");
    assert_eq!(
        all.iter()
            .filter(|c| c.starts_with("POST users/session"))
            .count(),
        1
    );
    let mut want = on_then_off(1, "tcp");
    want.extend(on_then_off(2, "acl"));
    want.extend(on_then_off(3, "sorb"));
    assert_eq!(api_calls(&sim).await, want);
    let s = st.h.status("icmp").unwrap();
    assert_eq!(
        (s.policy, s.countermeasures.clone(), s.state.as_str()),
        (2, vec!["acl".to_string()], "ended")
    );
    assert!(st
        .metrics
        .render()
        .contains("flowguard_mitigator_requests_total{op=\"put_switch\",outcome=\"ok\"} 12"));
    st.stop().await;
}

#[tokio::test]
async fn overlapping_attacks_keep_the_policy_on_until_the_second_ends() {
    let (sim, _dir, st) = rig();
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    st.send(ev(
        EventKind::Start,
        "b",
        "127.0.0.11",
        AttackType::UdpFlood,
        Protocol::Udp,
    ))
    .await;
    st.wait_state("b", "active").await;
    assert_eq!(st.metrics.mitigations_active.get(), 2);
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "ended").await;
    assert_eq!(
        sim.switch(1, "toggle").await,
        1,
        "policy switched off while b is going on"
    );
    assert_eq!(sim.switch(1, "sorb").await, 1);
    assert_eq!(sim.switch(1, "tcp").await, 0);
    st.send(ev(
        EventKind::End,
        "b",
        "127.0.0.11",
        AttackType::UdpFlood,
        Protocol::Udp,
    ))
    .await;
    st.wait_state("b", "ended").await;
    assert_eq!(
        api_calls(&sim).await,
        [
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 1 -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "PUT tcp/switch?policy=1 1 -> 200",
            "GET sorb/switch?policy=1 -> 200",
            "PUT sorb/switch?policy=1 1 -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "PUT tcp/switch?policy=1 0 -> 200",
            "GET sorb/switch?policy=1 -> 200",
            "PUT sorb/switch?policy=1 0 -> 200",
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 0 -> 200",
        ]
    );
    assert_eq!(st.metrics.mitigations_active.get(), 0);
    st.stop().await;
}

#[tokio::test]
async fn operator_enabled_countermeasure_survives() {
    let sim = Sim::start(false);
    sim.operator_switch(1, "tcp", true).await;
    let skip = sim.log().await.len();
    let dir = tempfile::tempdir().unwrap();
    let st = start(cfg(&sim), dir.path());
    start_end(&st, syn(EventKind::Start, "a", "127.0.0.10")).await;
    let log = sim.log().await;
    let got: Vec<String> = calls(&log[skip..])
        .into_iter()
        .filter(|c| !c.starts_with("POST users/session"))
        .collect();
    assert_eq!(
        got,
        [
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 1 -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 0 -> 200",
        ]
    );
    assert_eq!(sim.switch(1, "tcp").await, 1);
    st.stop().await;
}

#[tokio::test]
async fn expired_token_means_one_relogin() {
    let (sim, _dir, st) = rig();
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    let skip = sim.log().await.len();
    sim.fault(json!({"expire_tokens": true})).await;
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "ended").await;
    let log = sim.log().await;
    assert_eq!(
        calls(&log[skip..]),
        [
            "GET tcp/switch?policy=1 -> 401",
            "POST users/session -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "PUT tcp/switch?policy=1 0 -> 200",
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 0 -> 200",
        ]
    );
    st.stop().await;
}

#[tokio::test]
async fn misdirected_requests_go_to_the_leader_and_it_is_remembered() {
    let leader = Sim::start(false);
    let follower = Sim::start(false);
    follower
        .fault(json!({"location": leader.base, "count": 100}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let st = start(cfg(&follower), dir.path());
    start_end(&st, syn(EventKind::Start, "a", "127.0.0.10")).await;
    assert_eq!(calls(&follower.log().await), ["POST users/session -> 421"]);
    assert_eq!(calls(&leader.log().await)[0], "POST users/session -> 200");
    assert_eq!(api_calls(&leader).await, on_then_off(1, "tcp"));
    st.stop().await;
}

#[tokio::test]
async fn an_end_while_mitigator_fails_is_applied_when_it_returns() {
    let (sim, _dir, st) = rig();
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    sim.fault(json!({"status": 503, "count": 1_000_000})).await;
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "failed_retrying").await;
    assert!(st.metrics.mitigation_pending_ops.get() >= 1);
    assert_eq!(sim.switch(1, "tcp").await, 1);
    sim.fault(json!({"clear": true})).await;
    st.wait_state("a", "ended").await;
    assert_eq!(sim.switch(1, "tcp").await, 0);
    assert_eq!(sim.switch(1, "toggle").await, 0);
    let ok: Vec<String> = api_calls(&sim)
        .await
        .into_iter()
        .filter(|c| c.ends_with("200"))
        .collect();
    assert_eq!(ok, on_then_off(1, "tcp"));
    assert_eq!(st.metrics.mitigation_pending_ops.get(), 0);
    st.stop().await;
}

#[tokio::test]
async fn an_end_while_mitigator_is_down_is_applied_when_it_is_back() {
    let mut sim = Sim::start(false);
    let addr = sim.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let st = start(cfg(&sim), dir.path());
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    sim.kill();
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "failed_retrying").await;
    // The appliance comes back on the same address with its switches as they were.
    let back = Sim::start_at(&addr, false, &["--on", "1:toggle", "--on", "1:tcp"]);
    st.wait_state("a", "ended").await;
    let got: Vec<String> = calls(&back.log().await)
        .into_iter()
        .filter(|c| !c.starts_with("POST users/session"))
        .collect();
    // Its sessions did not survive: one 401, a login (filtered out), then the release.
    let mut want = vec!["GET tcp/switch?policy=1 -> 401".to_string()];
    want.extend_from_slice(&on_then_off(1, "tcp")[4..]);
    assert_eq!(got, want);
    assert_eq!(back.switch(1, "toggle").await, 0);
    st.stop().await;
}

#[tokio::test]
async fn a_crash_mid_attack_is_restored_and_later_ended() {
    let (sim, dir, st) = rig();
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    // Crash: the task is aborted, nothing runs on the way out.
    st.jh.abort();
    let _ = st.jh.await;
    drop(st.tx);
    let skip = sim.log().await.len();

    let st = start(cfg(&sim), dir.path());
    let s = st.h.status("a").expect("restored from the state file");
    assert!(s.restored);
    assert_eq!(s.countermeasures, ["tcp"]);
    st.wait_state("a", "active").await;
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "ended").await;
    let log = sim.log().await;
    let got: Vec<String> = calls(&log[skip..])
        .into_iter()
        .filter(|c| !c.starts_with("POST users/session"))
        .collect();
    // Re-read at restart (both on, nothing to write), then switched off at the end.
    assert_eq!(
        got,
        [
            "GET toggle/switch?policy=1 -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "GET tcp/switch?policy=1 -> 200",
            "PUT tcp/switch?policy=1 0 -> 200",
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 0 -> 200",
        ]
    );
    st.stop().await;
}

#[tokio::test]
async fn a_restored_attack_not_renewed_within_the_grace_period_is_ended() {
    let (sim, dir, st) = rig();
    st.send(ev(
        EventKind::Start,
        "a",
        "127.0.2.10",
        AttackType::IcmpFlood,
        Protocol::Icmp,
    ))
    .await;
    st.wait_state("a", "active").await;
    st.jh.abort();
    let _ = st.jh.await;

    let c = MitigatorConfig {
        restore_grace_seconds: 1,
        ..cfg(&sim)
    };
    let st = start(c, dir.path());
    assert!(st.h.status("a").unwrap().restored);
    st.wait_state("a", "ended").await;
    assert_eq!(sim.switch(2, "acl").await, 0);
    assert_eq!(sim.switch(2, "toggle").await, 0);
    // The state file no longer lists it: a second restart does nothing.
    st.stop().await;
    let st = start(cfg(&sim), dir.path());
    assert!(st.h.status("a").is_none());
    st.stop().await;
}

#[tokio::test]
async fn dry_run_makes_no_call_and_writes_no_state() {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let c = MitigatorConfig {
        dry_run: Some(true),
        tbl_top_sources: 5,
        ..cfg(&sim)
    };
    let st = start(c, dir.path());
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "dry_run").await;
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "ended").await;
    assert!(sim.log().await.is_empty());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    st.stop().await;

    // No url at all is a dry run too.
    let st = start(MitigatorConfig::default(), dir.path());
    st.send(syn(EventKind::Start, "b", "127.0.0.10")).await;
    st.wait_state("b", "dry_run").await;
    st.stop().await;
}

#[tokio::test]
async fn top_sources_go_to_the_temporary_blacklist_when_asked() {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let c = MitigatorConfig {
        tbl_top_sources: 5,
        tbl_ttl_seconds: 120,
        ..cfg(&sim)
    };
    let st = start(c, dir.path());
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    assert_eq!(sim.state().await["tbl"]["1"]["198.51.100.7/32"], 120);
    let log = sim.log().await;
    let post = log
        .iter()
        .find(|r| r["path"] == "/api/v4/tbl/items")
        .unwrap();
    assert_eq!(
        post["body"],
        r#"{"items":[{"prefix":"198.51.100.7/32","ttl":120}]}"#
    );
    st.stop().await;
}

#[tokio::test]
async fn https_with_ca_file_works_and_verification_is_on_by_default() {
    let sim = Sim::start(true);
    let dir = tempfile::tempdir().unwrap();
    let st = start(cfg(&sim), dir.path());
    start_end(&st, syn(EventKind::Start, "a", "127.0.0.10")).await;
    assert_eq!(api_calls(&sim).await, on_then_off(1, "tcp"));
    st.stop().await;

    // Without ca_file the self-signed certificate is refused...
    let dir2 = tempfile::tempdir().unwrap();
    let st = start(
        MitigatorConfig {
            ca_file: None,
            ..cfg(&sim)
        },
        dir2.path(),
    );
    st.send(syn(EventKind::Start, "b", "127.0.0.10")).await;
    st.wait_state("b", "failed_retrying").await;
    st.stop().await;
    // ...unless verification is switched off.
    let dir3 = tempfile::tempdir().unwrap();
    let st = start(
        MitigatorConfig {
            ca_file: None,
            verify_tls: false,
            ..cfg(&sim)
        },
        dir3.path(),
    );
    st.send(syn(EventKind::Start, "c", "127.0.0.10")).await;
    st.wait_state("c", "active").await;
    st.stop().await;
}

#[tokio::test]
async fn timeouts_and_5xx_are_retried_but_4xx_is_not() {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let c = MitigatorConfig {
        request_timeout_seconds: 0.4,
        retries: 3,
        ..cfg(&sim)
    };
    let st = start(c, dir.path());
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    let skip = sim.log().await.len();
    sim.fault(json!({"status": 503})).await;
    sim.fault(json!({"latency_ms": 1500})).await;
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.wait_state("a", "ended").await;
    let log = sim.log().await;
    assert_eq!(
        calls(&log[skip..]),
        [
            "GET tcp/switch?policy=1 -> 503",
            "GET tcp/switch?policy=1 -> 200", // answered too late: a timeout for the client
            "GET tcp/switch?policy=1 -> 200",
            "PUT tcp/switch?policy=1 0 -> 200",
            "GET toggle/switch?policy=1 -> 200",
            "PUT toggle/switch?policy=1 0 -> 200",
        ]
    );
    let m = st.metrics.render();
    assert!(
        m.contains("flowguard_mitigator_requests_total{op=\"get_switch\",outcome=\"timeout\"} 1"),
        "{m}"
    );
    assert!(
        m.contains(
            "flowguard_mitigator_requests_total{op=\"get_switch\",outcome=\"server_error\"} 1"
        ),
        "{m}"
    );

    // A 4xx is final: no second attempt, the attack shows it, the next step goes on.
    let skip = sim.log().await.len();
    sim.fault(json!({"status": 404})).await;
    st.send(syn(EventKind::Start, "b", "127.0.0.10")).await;
    st.wait_state("b", "failed").await;
    wait_for(5, "tcp on", || async { sim.switch(1, "tcp").await == 1 }).await;
    let log = sim.log().await;
    assert_eq!(
        calls(&log[skip..]),
        [
            "GET toggle/switch?policy=1 -> 404",
            "GET tcp/switch?policy=1 -> 200",
            "PUT tcp/switch?policy=1 1 -> 200",
        ]
    );
    assert!(st
        .h
        .status("b")
        .unwrap()
        .last_error
        .unwrap()
        .contains("404"));
    st.stop().await;
}

/// MITIGATOR down while attacks on one policy start and end: with the queue capped at one
/// step, the steps for the same switch are coalesced (counted), the queue stays at one
/// step per switch whatever the number of attacks, and when MITIGATOR is back every
/// attack ends and every switch is off.
#[tokio::test]
async fn over_the_queue_cap_steps_are_coalesced_and_no_end_is_lost() {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    sim.fault(json!({"status": 503, "count": 1_000_000})).await;
    let st = start(
        MitigatorConfig {
            max_queued_operations: 1,
            ..cfg(&sim)
        },
        dir.path(),
    );
    let ids = ["a", "b", "c", "d", "e"];
    for (i, id) in ids.iter().enumerate() {
        let ip = format!("127.0.0.{}", 10 + i);
        st.send(syn(EventKind::Start, id, &ip)).await;
        st.send(syn(EventKind::End, id, &ip)).await;
    }
    let m = st.metrics.clone();
    wait_for(5, "steps coalesced", || {
        let n = m
            .cap_overflow
            .with_label_values(&["mitigation_queue"])
            .get();
        async move { n > 0 }
    })
    .await;
    // 20 steps asked for (toggle and tcp, on and off, five times): the one in flight
    // and one per switch remain.
    assert!(
        st.metrics.mitigation_pending_ops.get() <= 3,
        "pending {}",
        st.metrics.mitigation_pending_ops.get()
    );
    sim.fault(json!({"clear": true})).await;
    for id in ids {
        st.wait_state(id, "ended").await;
    }
    assert_eq!(sim.switch(1, "tcp").await, 0);
    assert_eq!(sim.switch(1, "toggle").await, 0);
    assert_eq!(st.metrics.mitigation_pending_ops.get(), 0);
    st.stop().await;
}

/// SIGTERM during a MITIGATOR outage (issue 15, item 6): an end sent just before the stop
/// goes into the planner and the state file, so the next start releases what the attack
/// had switched on instead of restoring the attack as live (for the grace period).
#[tokio::test]
async fn an_end_queued_when_the_stage_stops_during_an_outage_is_not_lost() {
    let (sim, dir, st) = rig();
    st.send(syn(EventKind::Start, "a", "127.0.0.10")).await;
    st.wait_state("a", "active").await;
    sim.fault(json!({"status": 503, "count": 1_000_000})).await;
    // The stop right behind the end: the end is still in the queue.
    st.send(syn(EventKind::End, "a", "127.0.0.10")).await;
    st.stop().await;
    sim.fault(json!({"clear": true})).await;

    let st = start(cfg(&sim), dir.path());
    assert!(
        st.h.status("a").is_none(),
        "the ended attack came back from the state file: {:?}",
        st.h.status("a")
    );
    let s = &sim;
    wait_for(5, "the attack's switches released", || async move {
        s.switch(1, "tcp").await == 0 && s.switch(1, "toggle").await == 0
    })
    .await;
    st.stop().await;
}
