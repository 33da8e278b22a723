//! Instruction counts of `Pipeline::ingest` on the record shapes two senders produce, to
//! find what costs flowguard more on the independent sender's stream (issue 18):
//!
//! - `loadgen`: flowguard-loadgen's v5 stream as `examples/ingest_profile.rs` models it
//!   (10 000 random hosts of a /16, sources spread over a /16, TCP/UDP, flags 0x18,
//!   3 packets, first = last: a zero-length flow);
//! - `flowsend`: `../shared/tools/flowsend.c`'s v5 records as decoded: 10 000 consecutive
//!   destinations, sources cycling over 65 000 addresses, TCP SYN, 1 packet of 64 bytes,
//!   first = last − 1 s (a one-second flow, spread over the seconds it spans);
//! - `flowsend-nodur`: flowsend's with a zero duration; `flowsend-nosyn`: with flags 0x18.
//!
//! ```text
//! cargo build --release --example ingest_shapes
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/ingest_shapes SHAPE 2000000
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/ingest_shapes SHAPE 0
//! ```
//!
//! (total − setup) / N = instructions per record.
#[path = "../benches/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};

use flowguard::decode::FlowRecord;

fn main() {
    let shape = std::env::args().nth(1).unwrap_or_else(|| "loadgen".into());
    let n: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let p = common::pipeline("100.64.0.0/16", 1_000_000);
    let mut s = p.scratch();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let hosts: Vec<u32> = (0..10_000)
        .map(|_| 0x6440_0000 | (next() as u32 & 0xffff))
        .collect();
    let recs: Vec<FlowRecord> = (0..1_000_020u32)
        .map(|i| match shape.as_str() {
            "loadgen" => {
                let r = next();
                FlowRecord {
                    src: IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (r >> 40) as u32 & 0xffff)),
                    dst: IpAddr::V4(Ipv4Addr::from(hosts[(r % 10_000) as usize])),
                    src_port: (r >> 16) as u16,
                    dst_port: 443,
                    protocol: if r & 3 == 0 { 17 } else { 6 },
                    tcp_flags: 0x18,
                    packets: 3,
                    bytes: 1500,
                    flows: 1,
                    ..FlowRecord::default()
                }
            }
            s => FlowRecord {
                src: IpAddr::V4(Ipv4Addr::from(0x7F63_0000 + (i % 65_000) + 1)),
                dst: IpAddr::V4(Ipv4Addr::from(0x6440_0000 + (i % 10_000))),
                src_port: 1024 + (i % 30) as u16,
                dst_port: 80,
                protocol: 6,
                tcp_flags: if s == "flowsend-nosyn" { 0x18 } else { 0x02 },
                packets: 1,
                bytes: 64,
                flows: 1,
                duration_ms: if s == "flowsend-nodur" { 0 } else { 1000 },
                ..FlowRecord::default()
            },
        })
        .collect();
    // Arrival times within the second vary, as on the wire (a record ending on a second
    // boundary would not span two seconds).
    let mut now = 1_700_000_000_123i64;
    let mut done = 0;
    while done < n {
        for b in recs.chunks(1920) {
            p.ingest(b, now, &mut s);
            now += 1; // 1920 records per ms: ~2 M/s
            done += b.len();
            if done % (1920 * 500) == 0 {
                p.tick(now);
            }
            if done >= n {
                break;
            }
        }
    }
    println!(
        "{shape}: {done} records, {} host-directions tracked",
        p.aggregate.table.len()
    );
}
