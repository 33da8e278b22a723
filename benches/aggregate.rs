//! The host table and the detection pass: records/s through `Pipeline::ingest` (prefix
//! lookup, shard routing, rate update) over 10 000 hosts, and `Pipeline::tick` with
//! 1 M tracked host-directions of which only a few had traffic since the last pass.

mod common;

use std::net::{IpAddr, Ipv4Addr};

use common::pipeline;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use flowguard::decode::FlowRecord;

fn rec(dst: u32, i: u32) -> FlowRecord {
    FlowRecord {
        src: IpAddr::V4(Ipv4Addr::from(0xC612_0000 | (i % 0x2_0000))),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        src_port: 40000,
        dst_port: 443,
        protocol: if i % 4 == 0 { 17 } else { 6 },
        tcp_flags: 0x18,
        packets: 3,
        bytes: 1500,
        flows: 1,
        ..FlowRecord::default()
    }
}

const NOW: i64 = 1_700_000_000_000;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("aggregate");
    // Rate update: batches of 1920 records (64 datagrams x 30) over 10 000 hosts.
    let p = pipeline("100.64.0.0/16", 1_000_000);
    let mut s = p.scratch();
    let batches: Vec<Vec<FlowRecord>> = (0..64u32)
        .map(|b| {
            (0..1920u32)
                .map(|i| rec(0x6440_0001 + (b * 1920 + i) * 7 % 10_000, i))
                .collect()
        })
        .collect();
    g.throughput(Throughput::Elements(1920));
    let mut k = 0usize;
    g.bench_function("ingest_10k_hosts", |b| {
        b.iter(|| {
            p.ingest(&batches[k % batches.len()], NOW, &mut s);
            k += 1;
        })
    });

    // Detection pass with 1 M tracked host-directions, 100 of them dirty.
    let p = pipeline("10.0.0.0/8", 2_000_000);
    let mut s = p.scratch();
    let all: Vec<FlowRecord> = (0..1_000_000u32).map(|i| rec(0x0A00_0000 + i, i)).collect();
    for chunk in all.chunks(4096) {
        p.ingest(chunk, NOW, &mut s);
    }
    p.tick(NOW + 1000);
    assert_eq!(p.aggregate.table.len(), 1_000_000);
    let dirty: Vec<FlowRecord> = (0..100u32)
        .map(|i| rec(0x0A00_0000 + i * 9973, i))
        .collect();
    g.throughput(Throughput::Elements(1));
    g.bench_function("tick_1m_hosts_100_dirty", |b| {
        b.iter_batched(
            || p.ingest(&dirty, NOW + 1000, &mut s),
            |_| black_box(p.tick(NOW + 1000)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
