//! The decode bench's input, shared by `benches/decode.rs` (criterion) and
//! `examples/decode_profile.rs` (instruction counts) so both measure the same datagrams:
//! the load generator's encoders, 10 000 destination hosts.

use std::net::Ipv4Addr;

use crate::gen::{self, Flow, Format};

pub fn flows(n: usize, seed: u32) -> Vec<Flow> {
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

/// 64 datagrams of `f`, the template they need (v9/IPFIX), and their record count.
pub fn datagrams(f: Format) -> (Vec<Vec<u8>>, Option<Vec<u8>>, usize) {
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
