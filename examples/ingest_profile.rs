//! Instruction-count harness for the aggregate stage: `Pipeline::ingest` over N records
//! shaped like `flowguard-loadgen`'s v5 stream (a second argument's count of hosts of a /16,
//! default 10 000; sources
//! outside it) in batches of 1 920 records (64 datagrams of 30), with the per-second pass
//! every 500 batches. No sockets, no threads, deterministic, so instruction counts under
//! valgrind are exact and comparable between builds where timings on a shared VM are not:
//!
//! ```text
//! cargo build --release --example ingest_profile
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/ingest_profile 2000000
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/ingest_profile 0   # setup only
//! ```
//!
//! (total − setup) / N = instructions per record (benches/README.md has the figures).
#[path = "../benches/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};

use flowguard::decode::FlowRecord;

fn main() {
    let arg = |i: usize, default: u64| -> u64 {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (n, nh) = (arg(1, 2_000_000) as usize, arg(2, 10_000));
    // The benches' pipeline: thresholds this traffic (~600 packets/s per host) never reaches.
    let p = common::pipeline("100.64.0.0/16", 1_000_000);
    let mut s = p.scratch();
    let mut x: u64 = 0x1234_5678_9abc_def1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let hosts: Vec<u32> = (0..nh)
        .map(|_| 0x6440_0000 | (next() as u32 & 0xffff))
        .collect();
    let recs: Vec<FlowRecord> = (0..1_000_000)
        .map(|_| {
            let r = next();
            FlowRecord {
                src: IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (r >> 40) as u32 & 0xffff)),
                dst: IpAddr::V4(Ipv4Addr::from(hosts[(r % nh) as usize])),
                src_port: (r >> 16) as u16,
                dst_port: 443,
                protocol: if r & 3 == 0 { 17 } else { 6 },
                tcp_flags: 0x18,
                packets: 3,
                bytes: 1500,
                flows: 1,
                ..FlowRecord::default()
            }
        })
        .collect();
    let mut now = 1_700_000_000_000i64;
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
        "{} records, {} host-directions tracked",
        done,
        p.aggregate.table.len()
    );
}
