//! Replay of a real multi-vector capture (no root needed): pmacctd's sFlow (1 in 10) of a
//! SYN flood and a UDP flood sent together with hping3 to 127.0.0.90, recorded with
//! dumpcap by `live_exporters::syn_and_udp_floods_together_get_both_countermeasures_once`
//! (`FLOWGUARD_KEEP_CAPTURE`, only the sFlow datagrams kept). The attack is one, with both
//! vectors in its start and end events; its type follows the traffic.

use flowguard::config::Config;
use flowguard::replay::{run, ReplayOptions};
use serde_json::Value;

fn types(l: &Value) -> Vec<&str> {
    let mut t: Vec<&str> = l["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["type"].as_str().unwrap())
        .collect();
    t.sort();
    t
}

#[test]
fn the_captured_syn_and_udp_floods_replay_with_both_vectors() {
    let cfg = Config::from_toml_str(
        r#"
[networks]
protected = ["127.0.0.88/29"]
[[hostgroup]]
name = "default"
threshold_pps = 1500
ban_time_seconds = 4
"#,
    )
    .unwrap();
    let cap = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/vectors-syn-udp-sflow.pcapng");
    let mut out = Vec::new();
    run(&cfg, &[cap], &ReplayOptions::default(), &mut out).unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| -> Vec<&Value> { lines.iter().filter(|l| l["event"] == kind).collect() };
    let (start, end) = (of("start"), of("end"));
    assert_eq!((start.len(), end.len()), (1, 1), "{lines:?}");
    assert_eq!(start[0]["ip"], "127.0.0.90");
    assert_eq!(end[0]["id"], start[0]["id"]);
    assert_eq!(types(start[0]), ["syn_flood", "udp_flood"], "{}", start[0]);
    assert_eq!(types(end[0]), ["syn_flood", "udp_flood"], "{}", end[0]);
    for v in end[0]["vectors"].as_array().unwrap() {
        let share = v["share"].as_f64().unwrap();
        assert!((0.2..0.8).contains(&share), "{v}");
        assert!(v["peak_pps"].as_u64().unwrap() > 500, "{v}");
    }
    // The shares so far decide the type: updates carry the old and new type, and the end's
    // type is its dominant vector's.
    for u in of("update") {
        if let Some(old) = u["old_type"].as_str() {
            assert_ne!(Some(old), u["new_type"].as_str(), "{u}");
            assert_eq!(u["new_type"], u["attack_type"], "{u}");
        }
    }
    assert_eq!(end[0]["attack_type"], end[0]["vectors"][0]["type"]);
    // The same capture gives the same lines every time.
    let mut again = Vec::new();
    run(
        &cfg,
        &[std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/vectors-syn-udp-sflow.pcapng")],
        &ReplayOptions::default(),
        &mut again,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8(again).unwrap().lines().count(),
        lines.len()
    );
}
