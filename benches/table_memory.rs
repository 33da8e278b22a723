//! Bytes of resident memory per tracked host-direction, IPv4 and IPv6, measured: a
//! random-destination flood of 3 x the cap distinct hosts through `Pipeline::ingest` (and
//! the once-a-second pass, which drains dirty lists and sweeps) at the default cap of
//! 1 M host-directions, in a process of its own per family so one family's freed memory
//! does not hide the other's. Prints RSS growth over the run divided by hosts tracked.
//!
//! `cargo bench --bench table_memory` (both families) or `... -- v6` (one). The daemon's
//! own figure for IPv4 (`benches/README.md`, the /8 walk) is end to end; this one is the
//! table alone, and the only one for IPv6, which the load generator does not produce.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

use common::pipeline;
use flowguard::decode::FlowRecord;

const CAP: usize = 1_000_000;
/// Distinct hosts offered: three times the cap, so the table fills and then churns.
const OFFERED: u32 = 3_000_000;
/// Records per ingest call and per simulated second.
const CHUNK: usize = 1920;
const PER_SECOND: u32 = 1_000_000;

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The `i`th host of the flood: a stride walk over the protected prefix, so the hosts
/// are distinct and in no useful order.
fn host(v6: bool, i: u32) -> IpAddr {
    let n = i.wrapping_mul(2_654_435_761) & 0x00FF_FFFF;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x0A00_0000 | n))
    }
}

fn measure(v6: bool) {
    let (name, protected, src) = if v6 {
        (
            "IPv6",
            "2001:db8::/32",
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb9, 0, 0, 0, 0, 0, 1)),
        )
    } else {
        (
            "IPv4",
            "10.0.0.0/8",
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)),
        )
    };
    let before = rss_bytes();
    let p = pipeline(protected, CAP);
    let mut s = p.scratch();
    let mut recs = Vec::with_capacity(CHUNK);
    let t0: i64 = 1_700_000_000_000;
    let mut at_cap = None;
    let mut i = 0u32;
    while i < OFFERED {
        recs.clear();
        for _ in 0..CHUNK {
            recs.push(FlowRecord {
                src,
                dst: host(v6, i),
                src_port: 40000,
                dst_port: 80,
                protocol: 6,
                tcp_flags: 0x02,
                packets: 1,
                bytes: 60,
                flows: 1,
                ..FlowRecord::default()
            });
            i += 1;
        }
        let now = t0 + i64::from(i / PER_SECOND) * 1000;
        p.ingest(&recs, now, &mut s);
        if i % PER_SECOND < CHUNK as u32 {
            p.tick(now);
        }
        if at_cap.is_none() && p.aggregate.table.len() >= CAP {
            at_cap = Some(rss_bytes());
        }
    }
    p.tick(t0 + i64::from(OFFERED / PER_SECOND + 1) * 1000);
    let end = rss_bytes();
    let tracked = p.aggregate.table.len() as u64;
    let at_cap = at_cap.unwrap_or(end);
    println!(
        "{name}: offered {OFFERED} distinct hosts, cap {CAP}, tracked {tracked}; RSS +{:.1} MB \
         at the cap, +{:.1} MB at the end: {:.1} bytes per host-direction",
        (at_cap - before) as f64 / 1e6,
        (end - before) as f64 / 1e6,
        (end - before) as f64 / tracked.max(1) as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let picked: Vec<&str> = ["v4", "v6"]
        .into_iter()
        .filter(|f| args.iter().any(|a| a == f))
        .collect();
    match picked.as_slice() {
        [f] => measure(*f == "v6"),
        _ => {
            // Each family in a process of its own.
            let exe = std::env::current_exe().expect("own path");
            for f in ["v4", "v6"] {
                let st = Command::new(&exe).arg(f).status().expect("run child");
                assert!(st.success(), "{f}: {st}");
            }
        }
    }
}
