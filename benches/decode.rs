//! Decode throughput per format: records/s through flowguard's decoders, on datagrams
//! built by the load generator's encoder (30 records per v5 datagram, 45 per v9 or IPFIX
//! datagram, 12 samples per sFlow datagram, 10 000 destination hosts).

#[path = "common/decode_input.rs"]
mod decode_input;
#[path = "../crates/flowguard-loadgen/src/gen.rs"]
mod gen;

use std::net::SocketAddr;

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use decode_input::datagrams;
use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides, SflowDecoder};
use gen::Format;

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
