//! Mitigation per vector, end to end against a real `mitigator-sim` process: the mitigate
//! stage is driven with the events detection emits for a multi-vector attack (start seen
//! as UDP, SYN joining, UDP fading and returning, end) and the exact switch calls are
//! checked; and the temporary blacklist takes only sources with a real share.

mod common;
use common::sim as support;

use std::sync::Arc;

use flowguard::metrics::Metrics;
use flowguard::mitigate::config::Secret;
use flowguard::mitigate::{spawn, MitigationHandle, MitigatorConfig};
use flowguard::model::{
    AttackEvent, AttackType, Direction, EventKind, Protocol, TopSource, Vector, VectorSummary,
};
use support::{calls, wait_for, Sim, PASS, USER};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn cfg(sim: &Sim) -> MitigatorConfig {
    MitigatorConfig {
        url: Some(sim.base.clone()),
        username: USER.into(),
        password: Some(Secret::new(PASS)),
        connect_timeout_seconds: 1.0,
        request_timeout_seconds: 2.0,
        retries: 2,
        retry_base_ms: 20,
        retry_max_ms: 200,
        ..Default::default()
    }
}

fn vector(v: Vector, p: Protocol, share: f64, active: bool) -> VectorSummary {
    VectorSummary {
        attack_type: v.attack_type(),
        vector: v,
        protocol: p,
        share,
        pps: 1000,
        bps: 1_000_000,
        peak_pps: 1000,
        peak_bps: 1_000_000,
        over_threshold: false,
        active,
        since_ms: 0,
    }
}

fn event(kind: EventKind, t: AttackType, p: Protocol, vectors: Vec<VectorSummary>) -> AttackEvent {
    AttackEvent {
        event: kind,
        id: "mv".into(),
        ip: "127.0.0.10".parse().unwrap(),
        direction: Direction::Incoming,
        attack_type: t,
        protocol: p,
        time_ms: 0,
        pps: 2000,
        bps: 2_000_000,
        flows_per_second: 10,
        peak_pps: 2000,
        hostgroup: "default".into(),
        top_sources: Vec::new(),
        vectors,
        previous_attack_type: None,
        new_vectors: Vec::new(),
    }
}

async fn wait_state(h: &MitigationHandle, id: &str, state: &str) {
    let h = h.clone();
    wait_for(5, &format!("{id} {state}"), || {
        let got = h.status(id).map(|s| s.state);
        async move { got.as_deref() == Some(state) }
    })
    .await;
}

async fn switch_calls(sim: &Sim) -> Vec<String> {
    calls(&sim.log().await)
        .into_iter()
        .filter(|c| c.starts_with("PUT "))
        .collect()
}

#[tokio::test]
async fn each_vector_switches_its_countermeasure_on_once_and_all_go_off_at_the_end() {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let (h, jh) = spawn(
        cfg(&sim),
        dir.path().to_path_buf(),
        Arc::new(Metrics::new()),
        rx,
        stop.clone(),
    )
    .unwrap();
    use AttackType as A;
    use Protocol as P;
    use Vector as V;
    // Start: seen as UDP (softflowd exports UDP flows first).
    let udp = vector(V::Udp, P::Udp, 1.0, true);
    tx.send(event(
        EventKind::Start,
        A::UdpFlood,
        P::Udp,
        vec![udp.clone()],
    ))
    .await
    .unwrap();
    wait_state(&h, "mv", "active").await;
    assert_eq!(
        switch_calls(&sim).await,
        [
            "PUT toggle/switch?policy=1 1 -> 200",
            "PUT sorb/switch?policy=1 1 -> 200"
        ]
    );
    // SYN appears (new vector), then the type changes to syn_flood.
    let both = vec![
        vector(V::Syn, P::Tcp, 0.3, true),
        vector(V::Udp, P::Udp, 0.7, true),
    ];
    let mut appeared = event(EventKind::Update, A::UdpFlood, P::Udp, both.clone());
    appeared.new_vectors = vec![V::Syn];
    tx.send(appeared).await.unwrap();
    let mut changed = event(EventKind::Update, A::SynFlood, P::Tcp, both.clone());
    changed.previous_attack_type = Some(A::UdpFlood);
    tx.send(changed).await.unwrap();
    // UDP fades (still listed, not active), then returns; periodic updates.
    let faded = vec![
        vector(V::Syn, P::Tcp, 0.6, true),
        vector(V::Udp, P::Udp, 0.4, false),
    ];
    tx.send(event(EventKind::Update, A::SynFlood, P::Tcp, faded))
        .await
        .unwrap();
    tx.send(event(EventKind::Update, A::SynFlood, P::Tcp, both.clone()))
        .await
        .unwrap();
    let hh = h.clone();
    wait_for(5, "tcp engaged", || {
        let c = hh.status("mv").map(|s| s.countermeasures);
        async move { c.is_some_and(|c| c.len() == 2) }
    })
    .await;
    wait_state(&h, "mv", "active").await;
    tx.send(event(EventKind::End, A::SynFlood, P::Tcp, both))
        .await
        .unwrap();
    wait_state(&h, "mv", "ended").await;
    assert_eq!(
        switch_calls(&sim).await,
        [
            "PUT toggle/switch?policy=1 1 -> 200",
            "PUT sorb/switch?policy=1 1 -> 200",
            "PUT tcp/switch?policy=1 1 -> 200",
            "PUT sorb/switch?policy=1 0 -> 200",
            "PUT tcp/switch?policy=1 0 -> 200",
            "PUT toggle/switch?policy=1 0 -> 200",
        ],
        "each switch on once and off once, countermeasures before the policy"
    );
    for k in ["toggle", "sorb", "tcp"] {
        assert_eq!(sim.switch(1, k).await, 0, "{k} off at the end");
    }
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), jh).await;
}

#[tokio::test]
async fn a_spoofed_flood_does_not_fill_the_temporary_blacklist() {
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = mpsc::channel(64);
    let stop = CancellationToken::new();
    let c = MitigatorConfig {
        tbl_top_sources: 5,
        tbl_ttl_seconds: 120,
        ..cfg(&sim)
    };
    let (h, jh) = spawn(
        c,
        dir.path().to_path_buf(),
        Arc::new(Metrics::new()),
        rx,
        stop.clone(),
    )
    .unwrap();
    let src = |ip: &str, share: f64| TopSource {
        ip: ip.parse().unwrap(),
        port: None,
        share,
    };
    // One real source (a reflector carrying 40 %), and random ones at 0.01 % each.
    let mut e = event(
        EventKind::Start,
        AttackType::UdpFlood,
        Protocol::Udp,
        vec![vector(Vector::Udp, Protocol::Udp, 1.0, true)],
    );
    e.top_sources = vec![
        src("198.51.100.7", 0.4),
        src("203.0.113.1", 0.0001),
        src("203.0.113.2", 0.0001),
        src("203.0.113.3", 0.0001),
        src("203.0.113.4", 0.0001),
        src("203.0.113.5", 0.0001),
    ];
    tx.send(e).await.unwrap();
    wait_state(&h, "mv", "active").await;
    let tbl = sim.state().await["tbl"]["1"].clone();
    assert_eq!(tbl["198.51.100.7/32"], 120, "{tbl}");
    assert_eq!(tbl.as_object().map(|m| m.len()), Some(1), "{tbl}");
    let s = h.status("mv").unwrap();
    assert_eq!(s.tbl_skipped_sources, 4, "5 asked for, 4 under 5 %");
    assert!(
        s.tbl_skip_reason
            .as_deref()
            .is_some_and(|r| r.contains("tbl_min_source_share_percent = 5")),
        "{:?}",
        s.tbl_skip_reason
    );
    stop.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), jh).await;
}
