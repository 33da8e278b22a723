//! Instruction-count harness for the decode stage: the criterion decode bench's datagrams
//! (`benches/decode.rs`: the load generator's encoders, 10 000 destinations) decoded
//! `ROUNDS` times per format. No sockets, no threads, deterministic, so instruction
//! counts under valgrind are exact and comparable between builds where timings on a
//! shared VM are not:
//!
//! ```text
//! cargo build --release --example decode_profile
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/decode_profile v9 200
//! valgrind --tool=cachegrind --cache-sim=no target/release/examples/decode_profile v9 0
//! ```
//!
//! (total − setup) / records = instructions per record (benches/README.md has figures).
#[path = "../src/bin/flowguard-loadgen/gen.rs"]
mod gen;

use std::net::{Ipv4Addr, SocketAddr};

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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let f = match args.get(1).map(String::as_str) {
        Some("v5") => Format::V5,
        Some("ipfix") => Format::Ipfix,
        Some("sflow") => Format::Sflow,
        _ => Format::V9,
    };
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let per = f.max_per_datagram();
    let dgrams: Vec<Vec<u8>> = (0..64u32)
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
    let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut out: Vec<FlowRecord> = Vec::with_capacity(per * 64);
    let mut nf = NetflowDecoder::new(SamplingOverrides::default());
    let mut sf = SflowDecoder::new(SamplingOverrides::default());
    match f {
        Format::V9 => {
            nf.decode(
                from,
                &gen::v9_template(1, 0, 3_600_000, 1_700_000_000),
                &mut out,
            );
        }
        Format::Ipfix => {
            nf.decode(from, &gen::ipfix_template(1, 0, 1_700_000_000), &mut out);
        }
        _ => {}
    }
    let mut total = 0usize;
    for _ in 0..rounds {
        out.clear();
        for p in &dgrams {
            match f {
                Format::Sflow => sf.decode(from, p, &mut out),
                _ => nf.decode(from, p, &mut out),
            };
        }
        total += out.len();
    }
    println!("{} records decoded", total);
}
