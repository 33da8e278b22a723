//! Cluster mode without NATS: the wire cost of the delta frame (exact bytes, printed
//! before the timed runs) and the detector's merge (decode frames + apply the deltas to
//! the host table) in host entries/s on one core.
//!
//! `cargo bench --bench cluster` (criterion); the byte counts do not depend on the
//! machine.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::pipeline;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use flowguard::aggregate::{Counters, HostDelta, HostKey};
use flowguard::cluster::{frame, lease};
use flowguard::model::Direction;

const SEC: u32 = 1_700_000_000;
const HOSTS: u32 = 10_000;

/// Host-direction `i`'s counters of one second in one of the profiles below.
fn counters(profile: &str, i: u32) -> Counters {
    // Rates spread over three orders of magnitude (10 to ~10 000 pps), 500 B packets.
    let p = 10 + u64::from(i * 7919 % 10_000);
    let (b, f) = (p * 500, 1 + p / 50);
    let mut c = Counters {
        packets: p,
        bytes: b,
        flows: f,
        ..Counters::default()
    };
    match profile {
        "udp" => {
            (c.udp_packets, c.udp_bytes, c.udp_flows) = (p, b, f);
        }
        "tcp_syn" => {
            (c.tcp_packets, c.tcp_bytes, c.tcp_flows) = (p, b, f);
            (c.tcp_syn_packets, c.tcp_syn_bytes) = (p / 10 + 1, b / 10 + 1);
        }
        _ => {
            // Mixed: TCP (with some SYN), UDP and ICMP and a few fragments.
            (c.tcp_packets, c.tcp_bytes, c.tcp_flows) = (p / 2, b / 2, f / 2 + 1);
            (c.tcp_syn_packets, c.tcp_syn_bytes) = (p / 20 + 1, b / 20 + 1);
            (c.udp_packets, c.udp_bytes, c.udp_flows) = (p / 3, b / 3, f / 3 + 1);
            (c.icmp_packets, c.icmp_bytes, c.icmp_flows) = (p / 10, b / 10, 1);
            (c.fragment_packets, c.fragment_bytes) = (p / 100, b / 100);
        }
    }
    c
}

fn deltas(profile: &str, v6: bool) -> Vec<HostDelta> {
    (0..HOSTS)
        .map(|i| {
            let ip = if v6 {
                IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, (i >> 16) as u16, i as u16])
            } else {
                IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))
            };
            HostDelta {
                key: HostKey {
                    ip,
                    dir: Direction::Incoming,
                },
                group: 0,
                sec: SEC,
                counters: counters(profile, i),
            }
        })
        .collect()
}

fn encode(d: &[HostDelta]) -> Vec<Vec<u8>> {
    frame::encode_second(
        "collector-a",
        7,
        SEC,
        d,
        |k| lease::partition_of(k.ip, 64),
        900_000,
    )
    .into_iter()
    .map(|(_, f)| f)
    .collect()
}

/// Exact bytes on the wire (frame payloads; NATS adds its own ~60-byte message header
/// per frame, i.e. per partition per second, not per host).
fn wire_report() {
    for v6 in [false, true] {
        for profile in ["udp", "tcp_syn", "mixed"] {
            let d = deltas(profile, v6);
            let frames = encode(&d);
            let bytes: usize = frames.iter().map(Vec::len).sum();
            println!(
                "wire {} {profile:8}: {HOSTS} host-directions in {} frames, {bytes} bytes, {:.1} bytes per host-direction per second",
                if v6 { "IPv6" } else { "IPv4" },
                frames.len(),
                bytes as f64 / f64::from(HOSTS)
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    wire_report();
    let mut g = c.benchmark_group("cluster");
    g.throughput(Throughput::Elements(u64::from(HOSTS)));
    let d = deltas("mixed", false);
    g.bench_function("encode_10k_hosts", |b| b.iter(|| black_box(encode(&d))));
    let frames = encode(&d);
    g.bench_function("decode_10k_hosts", |b| {
        b.iter(|| {
            for f in &frames {
                black_box(frame::decode(f).expect("frame"));
            }
        })
    });
    // The detector's merge of one collector's second: decode every frame and apply its
    // deltas to the host table (10 000 tracked hosts, warm).
    let p = pipeline("10.0.0.0/8", 1_000_000);
    for f in &frames {
        p.apply_deltas(&frame::decode(f).expect("frame").deltas);
    }
    assert_eq!(p.aggregate.table.len(), HOSTS as usize);
    g.bench_function("merge_10k_hosts", |b| {
        b.iter(|| {
            for f in &frames {
                p.apply_deltas(&frame::decode(f).expect("frame").deltas);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
