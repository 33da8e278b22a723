//! NetFlow datagrams built by hand, byte by byte, for tests that need exact records on the
//! wire (the load generator's `gen.rs` makes the bulk ones). NetFlow v5 in Cisco's layout:
//! a 24-byte header and 48-byte records, all big-endian.

use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct V5Record {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub packets: u32,
    pub bytes: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub tcp_flags: u8,
    pub proto: u8,
}

/// A UDP flood on 127.0.0.2 (well over the 1000 pps test threshold) plus a little TCP and
/// ICMP to 127.0.0.3, so several protocols and both directions get counted.
pub fn flood_records() -> Vec<V5Record> {
    let mut v: Vec<V5Record> = (0..8u8)
        .map(|i| V5Record {
            src: Ipv4Addr::new(127, 0, 1, 10 + i),
            dst: Ipv4Addr::new(127, 0, 0, 2),
            packets: 5_000,
            bytes: 5_000 * 512,
            src_port: 40_000 + u16::from(i),
            dst_port: 53,
            tcp_flags: 0,
            proto: 17,
        })
        .collect();
    v.push(V5Record {
        src: Ipv4Addr::new(127, 0, 1, 50),
        dst: Ipv4Addr::new(127, 0, 0, 3),
        packets: 20,
        bytes: 20 * 60,
        src_port: 51_000,
        dst_port: 443,
        tcp_flags: 0x18,
        proto: 6,
    });
    v.push(V5Record {
        src: Ipv4Addr::new(127, 0, 1, 51),
        dst: Ipv4Addr::new(127, 0, 0, 3),
        packets: 4,
        bytes: 4 * 84,
        src_port: 0,
        dst_port: 0x0800,
        tcp_flags: 0,
        proto: 1,
    });
    v
}

/// One NetFlow v5 datagram whose flows all ended at `now` (last = sysUptime) and lasted
/// one second, unsampled.
pub fn netflow_v5(records: &[V5Record], flow_sequence: u32, now: SystemTime) -> Vec<u8> {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let uptime_ms: u32 = 3_600_000;
    let mut b = Vec::with_capacity(24 + 48 * records.len());
    b.extend_from_slice(&5u16.to_be_bytes());
    b.extend_from_slice(&(records.len() as u16).to_be_bytes());
    b.extend_from_slice(&uptime_ms.to_be_bytes());
    b.extend_from_slice(&(since.as_secs() as u32).to_be_bytes());
    b.extend_from_slice(&since.subsec_nanos().to_be_bytes());
    b.extend_from_slice(&flow_sequence.to_be_bytes());
    b.push(0); // engine_type
    b.push(0); // engine_id
    b.extend_from_slice(&0u16.to_be_bytes()); // sampling: mode 0, interval 0 = unsampled
    for r in records {
        b.extend_from_slice(&r.src.octets());
        b.extend_from_slice(&r.dst.octets());
        b.extend_from_slice(&[0, 0, 0, 0]); // nexthop
        b.extend_from_slice(&1u16.to_be_bytes()); // input ifindex
        b.extend_from_slice(&2u16.to_be_bytes()); // output ifindex
        b.extend_from_slice(&r.packets.to_be_bytes());
        b.extend_from_slice(&r.bytes.to_be_bytes());
        b.extend_from_slice(&(uptime_ms - 1000).to_be_bytes()); // first
        b.extend_from_slice(&uptime_ms.to_be_bytes()); // last
        b.extend_from_slice(&r.src_port.to_be_bytes());
        b.extend_from_slice(&r.dst_port.to_be_bytes());
        b.push(0); // pad1
        b.push(r.tcp_flags);
        b.push(r.proto);
        b.push(0); // tos
        b.extend_from_slice(&0u16.to_be_bytes()); // src_as
        b.extend_from_slice(&0u16.to_be_bytes()); // dst_as
        b.push(24); // src_mask
        b.push(24); // dst_mask
        b.extend_from_slice(&0u16.to_be_bytes()); // pad2
    }
    b
}
