//! Decode throughput per format: records/s through flowguard's decoders, on datagrams
//! built by the load generator's encoder (30-60 records per NetFlow datagram, 12 samples
//! per sFlow datagram, 10 000 destination hosts).

#[path = "../src/bin/flowguard-loadgen/gen.rs"]
mod gen;

use std::net::{Ipv4Addr, SocketAddr};

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides, SflowDecoder};
use gen::{Flow, Format};

fn flows(n: usize, seed: u32) -> Vec<Flow> {
    (0..n as u32)
        .map(|i| {
            let h = (seed * 977 + i * 131) % 10_000;
            Flow {
                src: Ipv4Addr::from(0xC612_0000 | (h * 7919 % 0x2_0000)),
                dst: Ipv4Addr::from(0x6440_0001 + h),
                src_port: 1024 + (h % 60000) as u16,
                dst_port: 443,
                protocol: if h % 4 == 0 { 17 } else { 6 },
                tcp_flags: 0x18,
                packets: 3,
                bytes: 1500,
            }
        })
        .collect()
}

fn datagrams(f: Format) -> (Vec<Vec<u8>>, Option<Vec<u8>>, usize) {
    let per = f.max_per_datagram();
    let d: Vec<Vec<u8>> = (0..64u32)
        .map(|s| {
            let fl = flows(per, s);
            match f {
                Format::V5 => gen::v5(&fl, s, 3_600_000, 1_700_000_000),
                Format::V9 => gen::v9_data(&fl, 1, s, 3_600_000, 1_700_000_000),
                Format::Ipfix => gen::ipfix_data(&fl, 1, s, 1_700_000_000),
                Format::Sflow => gen::sflow(&fl, Ipv4Addr::LOCALHOST, s, 3_600_000, 1000),
            }
        })
        .collect();
    let t = match f {
        Format::V9 => Some(gen::v9_template(1, 0, 3_600_000, 1_700_000_000)),
        Format::Ipfix => Some(gen::ipfix_template(1, 0, 1_700_000_000)),
        _ => None,
    };
    (d, t, per * 64)
}

fn bench(c: &mut Criterion) {
    let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut g = c.benchmark_group("decode");
    for f in [Format::V5, Format::V9, Format::Ipfix, Format::Sflow] {
        let (dgrams, tmpl, recs) = datagrams(f);
        g.throughput(Throughput::Elements(recs as u64));
        let mut out: Vec<FlowRecord> = Vec::with_capacity(recs);
        if f == Format::Sflow {
            let mut d = SflowDecoder::new(SamplingOverrides::default());
            g.bench_function(f.name(), |b| {
                b.iter(|| {
                    out.clear();
                    for p in &dgrams {
                        d.decode(from, p, &mut out);
                    }
                    assert_eq!(out.len(), recs);
                    black_box(&out);
                })
            });
        } else {
            let mut d = NetflowDecoder::new(SamplingOverrides::default());
            if let Some(t) = &tmpl {
                d.decode(from, t, &mut out);
            }
            g.bench_function(f.name(), |b| {
                b.iter(|| {
                    out.clear();
                    for p in &dgrams {
                        d.decode(from, p, &mut out);
                    }
                    assert_eq!(out.len(), recs);
                    black_box(&out);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
