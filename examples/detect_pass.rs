//! The detection pass at 1 M hosts changing per second: a pipeline with 1 M tracked IPv4
//! host-directions (the default cap, a /8 protected) gets one record for every one of them
//! each simulated second, then `Pipeline::tick` runs; the pass is timed alone (wall and
//! this process's CPU, `getrusage`), ingest is not. Thresholds are out of reach, as in
//! the benches, so the figure is the pass's own cost: drain 1 M dirty hosts, read their
//! rates, rank the top lists.
//!
//! ```text
//! cargo build --release --example detect_pass
//! target/release/examples/detect_pass            # 10 passes after 2 warm-up seconds
//! target/release/examples/detect_pass 20 500000  # passes, hosts
//! ```
//!
//! Prints one line per pass and the median/max; figures and the machine's load go in
//! benches/README.md ("Detection pass at 1 M hosts changing per second").
#[path = "../benches/common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use flowguard::decode::FlowRecord;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() {
    let arg = |i: usize, default: u64| -> u64 {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (passes, hosts) = (arg(1, 10) as u32, arg(2, 1_000_000) as u32);
    let p = common::pipeline("10.0.0.0/8", 1_000_000);
    let mut s = p.scratch();
    // Host i, spread over the /8 (a stride walk, no useful order), UDP or TCP.
    let rec = |i: u32, sec: u32| FlowRecord {
        src: IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (i % 0x2_0000))),
        dst: IpAddr::V4(Ipv4Addr::from(
            0x0A00_0000 | (i.wrapping_mul(2_654_435_761) & 0x00FF_FFFF),
        )),
        src_port: 40000,
        dst_port: 443,
        protocol: if i % 4 == 0 { 17 } else { 6 },
        tcp_flags: 0x18,
        // Varying per second, so every rate really changes.
        packets: 3 + u64::from((i ^ sec) % 5),
        bytes: 1500,
        flows: 1,
        ..FlowRecord::default()
    };
    let t0: i64 = 1_700_000_000_000;
    let mut recs = Vec::with_capacity(1920);
    let (mut walls, mut cpus) = (Vec::new(), Vec::new());
    for sec in 0..passes + 2 {
        let now = t0 + i64::from(sec) * 1000;
        let mut i = 0;
        while i < hosts {
            recs.clear();
            recs.extend((i..(i + 1920).min(hosts)).map(|h| rec(h, sec)));
            p.ingest(&recs, now + 500, &mut s);
            i += 1920;
        }
        let (w, c) = (Instant::now(), cpu_seconds());
        let ev = p.tick(now + 1000);
        let (wall, cpu) = (w.elapsed().as_secs_f64(), cpu_seconds() - c);
        assert!(ev.is_empty(), "no attack at these rates");
        // The first two seconds fill the table and warm the top lists.
        if sec >= 2 {
            println!(
                "pass {}: {:.1} ms wall, {:.1} ms CPU, {} tracked",
                sec - 1,
                wall * 1e3,
                cpu * 1e3,
                p.aggregate.table.len()
            );
            walls.push(wall);
            cpus.push(cpu);
        }
    }
    let stat = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2] * 1e3, v[v.len() - 1] * 1e3)
    };
    let ((wm, wx), (cm, cx)) = (stat(&mut walls), stat(&mut cpus));
    println!(
        "{hosts} hosts changing per second, {passes} passes: median {wm:.1} ms wall ({cm:.1} ms CPU), max {wx:.1} ms wall ({cx:.1} ms CPU)"
    );
}
