//! `flowguard-loadgen` as a real process: it refuses non-loopback targets, and what it
//! says it offered is what flowguard's own decoders read from the wire.

use std::net::UdpSocket;
use std::process::Command;
use std::time::{Duration, Instant};

use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides, SflowDecoder, Version};

const EXE: &str = env!("CARGO_BIN_EXE_flowguard-loadgen");

#[test]
fn refuses_targets_outside_loopback() {
    for bad in [
        "10.1.2.3:2055",
        "192.0.2.1:2055",
        "[2001:db8::1]:2055",
        "0.0.0.0:2055",
    ] {
        let out = Command::new(EXE)
            .args(["--target", bad, "--duration", "1", "--rate", "10"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(out.stdout.is_empty(), "{bad}: nothing offered");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("refused"),
            "{bad}"
        );
    }
    let out = Command::new(EXE)
        .args(["--target", "127.0.0.1:9", "--duration", "301"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "duration cap");
}

/// Runs loadgen against a local socket and decodes everything received.
fn roundtrip(format: &str, extra: &[&str]) -> (serde_json::Value, Vec<FlowRecord>, usize) {
    roundtrip_at(format, "20000", "0.5", extra)
}

/// [`roundtrip`] at a given `--rate` and `--duration`.
fn roundtrip_at(
    format: &str,
    rate: &str,
    duration: &str,
    extra: &[&str],
) -> (serde_json::Value, Vec<FlowRecord>, usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket2::SockRef::from(&sock)
        .set_recv_buffer_size(4 << 20)
        .unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let target = sock.local_addr().unwrap().to_string();
    let mut child = Command::new(EXE)
        .args([
            "--format",
            format,
            "--target",
            &target,
            "--rate",
            rate,
            "--duration",
            duration,
            "--hosts",
            "500",
        ])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut nf = NetflowDecoder::new(SamplingOverrides::default());
    let mut sf = SflowDecoder::new(SamplingOverrides::default());
    let mut recs = Vec::new();
    let mut dgrams = 0;
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                dgrams += 1;
                let p = &buf[..n];
                let oc = if Version::sniff(p) == Version::Sflow5 {
                    sf.decode(from, p, &mut recs)
                } else {
                    nf.decode(from, p, &mut recs)
                };
                assert_eq!(oc.error, None, "{format}: {oc:?}");
                assert_eq!(oc.template_misses, 0, "{format}: template sent first");
            }
            Err(_) => {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
            }
        }
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v, recs, dgrams)
}

#[test]
fn offered_records_decode_as_offered_in_every_format() {
    for format in ["v5", "v9", "ipfix", "sflow"] {
        let (v, recs, dgrams) = roundtrip(
            format,
            &[
                "--prefix",
                "100.64.0.0/16",
                "--attack-host",
                "100.64.7.7",
                "--attack-share",
                "0.25",
                "--sampling-rate",
                "1",
            ],
        );
        let offered = v["records"].as_u64().unwrap();
        assert!(offered > 5000, "{format}: {v}");
        assert_eq!(recs.len() as u64, offered, "{format}: {v}");
        assert_eq!(
            dgrams as u64,
            v["datagrams"].as_u64().unwrap() + v["template_datagrams"].as_u64().unwrap(),
            "{format}"
        );
        let net: ipnet::IpNet = "100.64.0.0/16".parse().unwrap();
        assert!(recs.iter().all(|r| net.contains(&r.dst)), "{format}");
        let attack: Vec<_> = recs
            .iter()
            .filter(|r| r.dst == "100.64.7.7".parse::<std::net::IpAddr>().unwrap())
            .collect();
        assert_eq!(
            attack.len() as u64,
            v["attack_records"].as_u64().unwrap(),
            "{format}"
        );
        assert!(attack.iter().all(|r| r.is_syn()), "{format}: SYN flood");
        let normal_hosts: std::collections::HashSet<_> = recs.iter().map(|r| r.dst).collect();
        assert!(
            normal_hosts.len() >= 400,
            "{format}: {} hosts",
            normal_hosts.len()
        );
    }
}

#[test]
fn walk_prefix_spreads_destinations_over_the_prefix() {
    let (_, recs, _) = roundtrip("v5", &["--walk-prefix", "--prefix", "10.0.0.0/8"]);
    let hosts: std::collections::HashSet<_> = recs.iter().map(|r| r.dst).collect();
    assert!(recs.len() > 5000);
    assert_eq!(hosts.len(), recs.len(), "every record a new destination");
    let net: ipnet::IpNet = "10.0.0.0/8".parse().unwrap();
    assert!(recs.iter().all(|r| net.contains(&r.dst)));
}

#[test]
fn walk_sources_gives_every_record_a_new_source_in_the_source_prefix() {
    let (v, recs, _) = roundtrip(
        "v5",
        &[
            "--walk-sources",
            "--source-prefix",
            "10.0.0.0/12",
            "--attack-host",
            "100.64.7.7",
            "--attack-share",
            "0.25",
        ],
    );
    assert!(recs.len() > 5000, "{v}");
    assert_eq!(recs.len() as u64, v["records"].as_u64().unwrap(), "{v}");
    let sources: std::collections::HashSet<_> = recs.iter().map(|r| r.src).collect();
    assert_eq!(sources.len(), recs.len(), "every record a new source");
    let src_net: ipnet::IpNet = "10.0.0.0/12".parse().unwrap();
    assert!(recs.iter().all(|r| src_net.contains(&r.src)));
    // Attack records are walked too and still go to the attacked host as SYNs;
    // destinations are left alone.
    let attacked: std::net::IpAddr = "100.64.7.7".parse().unwrap();
    let attack: Vec<_> = recs.iter().filter(|r| r.dst == attacked).collect();
    assert_eq!(attack.len() as u64, v["attack_records"].as_u64().unwrap());
    assert!(attack.len() > 1000 && attack.iter().all(|r| r.is_syn()));
    let dst_net: ipnet::IpNet = "100.64.0.0/16".parse().unwrap();
    assert!(recs.iter().all(|r| dst_net.contains(&r.dst)));
    assert_eq!(v["walk_sources"], true);
    assert_eq!(v["source_prefix"], "10.0.0.0/12");
}

#[test]
fn source_prefix_without_walking_sets_the_pool_sources() {
    let (_, recs, _) = roundtrip("v5", &["--source-prefix", "203.0.113.0/24"]);
    let net: ipnet::IpNet = "203.0.113.0/24".parse().unwrap();
    assert!(recs.len() > 5000);
    assert!(recs.iter().all(|r| net.contains(&r.src)));
}

#[test]
fn walks_stay_distinct_when_a_batch_is_larger_than_the_pool() {
    // As fast as possible: every sendmmsg batch is full (32 datagrams) while the pool
    // holds 17 (500 hosts / 30 per datagram). A walked datagram is rewritten in place, so
    // a batch holding it twice would send the second rewrite twice.
    let (v, recs, _) = roundtrip_at(
        "v5",
        "0",
        "0.05",
        &[
            "--walk-prefix",
            "--prefix",
            "10.0.0.0/8",
            "--walk-sources",
            // A /8 of sources too (addresses inside the records only; the datagrams go
            // to loopback): a fast machine sends over 2^20 records in 0.05 s (1.39 M
            // seen), which came round a /12.
            "--source-prefix",
            "11.0.0.0/8",
        ],
    );
    assert_eq!(v["pool_datagrams"], 17, "{v}");
    assert!(recs.len() > 1000, "{} records received: {v}", recs.len());
    // Fewer than 2^24 records: neither walk has come round yet.
    assert!(v["records"].as_u64().unwrap() < 1 << 24, "{v}");
    let dsts: std::collections::HashSet<_> = recs.iter().map(|r| r.dst).collect();
    let srcs: std::collections::HashSet<_> = recs.iter().map(|r| r.src).collect();
    assert_eq!(dsts.len(), recs.len(), "destinations repeated");
    assert_eq!(srcs.len(), recs.len(), "sources repeated");
}

#[test]
fn walks_are_for_v5_only() {
    for flag in ["--walk-prefix", "--walk-sources"] {
        let out = Command::new(EXE)
            .args([
                "--format",
                "v9",
                "--target",
                "127.0.0.1:9",
                "--duration",
                "1",
            ])
            .arg(flag)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag}");
        assert!(out.stdout.is_empty(), "{flag}: nothing offered");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("v5 only"),
            "{flag}"
        );
    }
}
