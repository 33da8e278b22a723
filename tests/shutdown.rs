//! SIGTERM during a MITIGATOR outage never loses an attack end (issue 15, item 6), through
//! the real binary: flowguard (on ports it announces) switches a policy on in a real
//! `mitigator-sim` for a NetFlow flood, MITIGATOR starts failing, the flood stops and the
//! attack ends while every call fails, flowguard gets SIGTERM (kill(2) on its PID) and
//! exits, then a new flowguard on the same state directory, with MITIGATOR healthy again,
//! must switch the policy off well within the restore grace period (600 s here: a lost
//! end would come back as a live, restored attack and keep the switches on for that long).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::SystemTime;

use common::datagrams::{flood_records, netflow_v5};
use common::sim::{Sim, PASS, USER};
use common::{wait_for, Flowguard};
use serde_json::json;

fn config(sim: &Sim, state: &Path) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:0"

[[collector]]
name = "nf"
protocol = "netflow"
listen = "127.0.0.1:0"

[networks]
protected = ["127.0.0.0/8"]

[[hostgroup]]
name = "default"
threshold_pps = 1000
ban_time_seconds = 2

[mitigator]
url = "{}"
username = "{USER}"
password = "{PASS}"
default_policy = 1
connect_timeout_seconds = 1.0
request_timeout_seconds = 2.0
retries = 1
retry_base_ms = 50
retry_max_ms = 500
restore_grace_seconds = 600

[state]
dir = "{}"
"#,
        sim.base,
        state.display()
    )
}

/// The switches of `policy` that are on in the simulator.
fn switches_on(rt: &tokio::runtime::Runtime, sim: &Sim, policy: u32) -> Vec<String> {
    let st = rt.block_on(sim.state());
    st["switches"][policy.to_string()]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64() == Some(1))
                .map(|(k, _)| k.clone())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sigterm_during_a_mitigator_outage_never_loses_an_attack_end() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let sim = Sim::start(false);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = config(&sim, &state);

    let mut fg = Flowguard::start(&cfg, dir.path());
    let nf: SocketAddr = fg.collector("nf");
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut seq = 0u32;
    // Flood 127.0.0.2 until the policy's protection and a countermeasure are on (30 s at
    // most), one datagram per 250 ms.
    let on = wait_for(30, || {
        let _ = sock.send_to(&netflow_v5(&flood_records(), seq, SystemTime::now()), nf);
        seq = seq.wrapping_add(flood_records().len() as u32);
        let on = switches_on(&rt, &sim, 1);
        (on.contains(&"toggle".to_string()) && on.len() >= 2).then_some(on)
    })
    .unwrap_or_else(|| panic!("no mitigation for the flood; log:\n{}", fg.proc.log_tail()));

    // MITIGATOR fails every call from now on; the flood stops, so the attack ends after
    // its 2 s ban time, and the end cannot be applied.
    rt.block_on(sim.fault(json!({"status": 503, "count": 1_000_000})));
    wait_for(30, || {
        fg.log().contains("mitigation end requested").then_some(())
    })
    .unwrap_or_else(|| panic!("the attack did not end; log:\n{}", fg.proc.log_tail()));
    assert_eq!(
        switches_on(&rt, &sim, 1),
        on,
        "the outage let a switch-off through: the test would prove nothing"
    );

    let st = fg
        .proc
        .signal_and_wait(libc::SIGTERM, 20)
        .unwrap_or_else(|| {
            panic!(
                "flowguard did not exit on SIGTERM; log:\n{}",
                fg.proc.log_tail()
            )
        });
    assert!(
        st.success(),
        "flowguard exited with {st}; log:\n{}",
        fg.proc.log_tail()
    );
    assert!(
        fg.log().contains("mitigate worker stopped"),
        "the mitigate stage did not stop in order; log:\n{}",
        fg.proc.log_tail()
    );
    assert_eq!(
        switches_on(&rt, &sim, 1),
        on,
        "still as the outage left them"
    );

    // MITIGATOR is back; a new flowguard on the same state directory, with no traffic.
    rt.block_on(sim.fault(json!({"clear": true})));
    let skip = rt.block_on(sim.log()).len();
    let fg2 = Flowguard::start(&cfg, dir.path());
    let off = wait_for(30, || switches_on(&rt, &sim, 1).is_empty().then_some(()));
    let calls = common::sim::calls(&rt.block_on(sim.log())[skip..]);
    assert!(
        off.is_some(),
        "the attack's end was lost: still on {:?}; calls after the restart: {calls:?}; log:\n{}",
        switches_on(&rt, &sim, 1),
        fg2.proc.log_tail()
    );
    // Switched off by the restarted flowguard's own calls (not by a fault clearing).
    for name in &on {
        let want = format!("PUT {name}/switch?policy=1 0 -> 200");
        assert!(calls.contains(&want), "no {want} in {calls:?}");
    }
    // And it does not come back as a restored attack.
    let (_, body) = common::http_get(fg2.api, "/api/v1/attacks").unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert_eq!(v["active"].as_array().map(Vec::len), Some(0), "{body}");
}
