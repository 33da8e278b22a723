//! Golden tests: the shared real-exporter captures through `replay`.
//! NetFlow v5/v9/IPFIX totals must equal tshark's ground truth exactly; sFlow (1 in 10)
//! within sampling error; the four floods are classified right, start and end, and the
//! single-flow download is never an attack.

mod common;

use std::collections::HashMap;

use flowguard::config::Config;
use flowguard::replay::{run, ReplayOptions};
use serde_json::Value;

fn replay(file: &str, totals: bool) -> Vec<Value> {
    let cfg = Config::from_toml_str(&common::check_config(3000)).unwrap();
    let mut out = Vec::new();
    let opts = ReplayOptions {
        totals,
        ..ReplayOptions::default()
    };
    run(&cfg, &[common::vectors().join(file)], &opts, &mut out).unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn incoming_totals(lines: &[Value]) -> HashMap<String, Value> {
    lines
        .iter()
        .filter(|l| {
            l.get("direction").and_then(Value::as_str) == Some("incoming")
                && l.get("event").is_none()
        })
        .map(|l| (l["ip"].as_str().unwrap().to_string(), l.clone()))
        .collect()
}

#[test]
fn netflow_totals_match_tshark_exactly() {
    for v in ["5", "9", "10"] {
        let lines = replay(&format!("v-softflowd-nf{v}.pcap"), true);
        let got = incoming_totals(&lines);
        let truth = std::fs::read_to_string(
            common::vectors().join(format!("v-softflowd-nf{v}.truth.jsonl")),
        )
        .unwrap();
        let mut checked = 0;
        for t in truth.lines() {
            let t: Value = serde_json::from_str(t).unwrap();
            let dst = t["dst"].as_str().unwrap();
            if dst == "127.0.0.1" {
                continue; // not protected in this config
            }
            let proto = match t["proto"].as_u64().unwrap() {
                6 => "tcp",
                17 => "udp",
                1 | 58 => "icmp",
                p => panic!("unexpected protocol {p}"),
            };
            let g = &got[dst];
            assert_eq!(
                g[format!("{proto}_packets")],
                t["packets"],
                "nf{v} {dst} packets"
            );
            assert_eq!(g[format!("{proto}_bytes")], t["bytes"], "nf{v} {dst} bytes");
            assert_eq!(g["flows"], t["flows"], "nf{v} {dst} flows");
            checked += 1;
        }
        assert_eq!(
            checked, 5,
            "nf{v}: every attack target and the download checked"
        );
        // softflowd files non-first fragments under ports 0/0: 20 000 of the 25 000.
        assert_eq!(got["127.0.0.23"]["fragment_packets"], 20_000, "nf{v}");
        assert_eq!(got["127.0.0.20"]["tcp_syn_packets"], 20_000, "nf{v}");
    }
}

#[test]
fn sflow_estimates_are_within_sampling_error() {
    let lines = replay("v-pmacctd-sflow.pcap", true);
    let got = incoming_totals(&lines);
    for (ip, field, want) in [
        ("127.0.0.20", "tcp_packets", 20_000.0),
        ("127.0.0.21", "icmp_packets", 20_000.0),
        ("127.0.0.22", "udp_packets", 20_000.0),
        ("127.0.0.23", "udp_packets", 25_000.0),
    ] {
        let v = got[ip][field].as_f64().unwrap();
        // ~2 000 samples: the standard error is about 2.2 %; allow 10 %.
        assert!(
            (v - want).abs() / want < 0.10,
            "{ip} {field}: {v} vs {want}"
        );
    }
    // Sampled headers show every fragment of the fragmented flood as a fragment.
    let frag = got["127.0.0.23"]["fragment_packets"].as_f64().unwrap();
    assert!(
        (frag - 25_000.0).abs() / 25_000.0 < 0.10,
        "fragments {frag}"
    );
    // Flows are a NetFlow notion; sFlow samples count none.
    assert_eq!(got["127.0.0.20"]["flows"], 0);
}

#[test]
fn each_capture_gives_the_four_attacks_and_nothing_on_the_download() {
    let want = [
        ("127.0.0.20", "syn_flood", "tcp"),
        ("127.0.0.21", "icmp_flood", "icmp"),
        ("127.0.0.22", "udp_flood", "udp"),
        ("127.0.0.23", "ip_fragmentation", "udp"),
    ];
    for cap in [
        "v-softflowd-nf5.pcap",
        "v-softflowd-nf9.pcap",
        "v-softflowd-nf10.pcap",
        "v-pmacctd-sflow.pcap",
    ] {
        let events: Vec<Value> = replay(cap, false)
            .into_iter()
            .filter(|l| l.get("event").is_some())
            .collect();
        for (ip, ty, proto) in want {
            let starts: Vec<&Value> = events
                .iter()
                .filter(|e| e["ip"] == ip && e["event"] == "start")
                .collect();
            let ends: Vec<&Value> = events
                .iter()
                .filter(|e| e["ip"] == ip && e["event"] == "end")
                .collect();
            assert_eq!(starts.len(), 1, "{cap} {ip}: one start, got {starts:?}");
            assert_eq!(ends.len(), 1, "{cap} {ip}: one end");
            let s = starts[0];
            assert_eq!(
                (s["attack_type"].as_str(), s["protocol"].as_str()),
                (Some(ty), Some(proto)),
                "{cap} {ip}"
            );
            assert_eq!(s["direction"], "incoming");
            assert_eq!(s["id"], ends[0]["id"]);
            assert!(s["pps"].as_u64().unwrap() > 3000);
            assert_eq!(s["top_sources"][0]["ip"], "127.0.0.1", "{cap} {ip}");
            // Times are RFC 3339 on the capture clock (the capture was made 2026-11-27).
            let t = s["time"].as_str().unwrap();
            assert!(t.starts_with("2026-11-27T06:59:"), "{cap} {t}");
            assert!(ends[0]["time"].as_str().unwrap() > t);
        }
        assert!(
            !events.iter().any(|e| e["ip"] == "127.0.0.24"),
            "{cap}: the download is not an attack: {events:?}"
        );
        assert_eq!(events.len(), 8, "{cap}: nothing else");
    }
}

#[test]
fn attack_ends_after_ban_time_on_the_capture_clock() {
    // The SYN flood's last packets were sent at :05.27 (v-traffic.log); with a 5 s
    // window and a 5 s ban time, the end comes 5..=12 s after the start.
    let events = replay("v-softflowd-nf5.pcap", false);
    let parse = |e: &Value| humantime::parse_rfc3339(e["time"].as_str().unwrap()).unwrap();
    let s = events
        .iter()
        .find(|e| e["ip"] == "127.0.0.20" && e["event"] == "start")
        .unwrap();
    let e = events
        .iter()
        .find(|e| e["ip"] == "127.0.0.20" && e["event"] == "end")
        .unwrap();
    let d = parse(e).duration_since(parse(s)).unwrap().as_secs();
    assert!((5..=12).contains(&d), "lasted {d} s");
}

#[test]
fn pcapng_gives_the_same_events_and_times_as_pcap() {
    // pcapng timestamps are ticks of the interface's resolution (µs unless if_tsresol
    // says otherwise); dumpcap, which made the shared vectors, writes pcapng.
    if !common::require_tool("editcap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ng = dir.path().join("nf5.pcapng");
    let st = std::process::Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(common::vectors().join("v-softflowd-nf5.pcap"))
        .arg(&ng)
        .status()
        .unwrap();
    assert!(st.success());
    let cfg = Config::from_toml_str(&common::check_config(3000)).unwrap();
    let mut out = Vec::new();
    run(&cfg, &[ng], &ReplayOptions::default(), &mut out).unwrap();
    let from_ng: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let from_pcap = replay("v-softflowd-nf5.pcap", false);
    assert_eq!(from_ng, from_pcap);
}
