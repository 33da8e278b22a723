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
#[path = "../benches/common/decode_input.rs"]
mod decode_input;
#[path = "../crates/flowguard-loadgen/src/gen.rs"]
mod gen;

use std::net::SocketAddr;

use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides, SflowDecoder};
use gen::Format;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let f = match args.get(1).map(String::as_str) {
        Some("v5") => Format::V5,
        Some("ipfix") => Format::Ipfix,
        Some("sflow") => Format::Sflow,
        _ => Format::V9,
    };
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(200);
    let (dgrams, template, per_round) = decode_input::datagrams(f);
    let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let mut out: Vec<FlowRecord> = Vec::with_capacity(per_round);
    let mut nf = NetflowDecoder::new(SamplingOverrides::default());
    let mut sf = SflowDecoder::new(SamplingOverrides::default());
    if let Some(t) = &template {
        nf.decode(from, t, &mut out);
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
