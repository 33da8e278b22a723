//! Datagram builders for the load generator and the benches: NetFlow v5, v9, IPFIX and
//! sFlow v5 byte layouts written by hand (not through the parsers under test), so a
//! decoder bug cannot hide behind a matching encoder bug.
//!
//! Pure: flows and header values in, bytes out. Shared with `benches/` via `#[path]`.
#![allow(dead_code)]

use std::net::Ipv4Addr;

/// One exported flow (or one sampled packet, for sFlow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub packets: u32,
    pub bytes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V5,
    V9,
    Ipfix,
    Sflow,
}

impl Format {
    pub fn parse(s: &str) -> Option<Format> {
        Some(match s {
            "v5" | "netflow5" => Format::V5,
            "v9" | "netflow9" => Format::V9,
            "ipfix" => Format::Ipfix,
            "sflow" | "sflow5" => Format::Sflow,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Format::V5 => "v5",
            Format::V9 => "v9",
            Format::Ipfix => "ipfix",
            Format::Sflow => "sflow",
        }
    }

    /// Records per datagram that keep a datagram under a 1500-byte MTU (v5's own limit
    /// is 30).
    pub fn max_per_datagram(self) -> usize {
        match self {
            Format::V5 => 30,
            Format::V9 => 45,
            Format::Ipfix => 45,
            Format::Sflow => 12,
        }
    }
}

/// Template id used for v9 and IPFIX data.
pub const TEMPLATE_ID: u16 = 256;

fn p16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn p32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// NetFlow v5: 24-byte header, 48-byte records. first = last = `uptime_ms`, so every
/// record ended at export time.
pub fn v5(flows: &[Flow], seq: u32, uptime_ms: u32, unix_secs: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(24 + 48 * flows.len());
    p16(&mut v, 5);
    p16(&mut v, flows.len() as u16);
    p32(&mut v, uptime_ms);
    p32(&mut v, unix_secs);
    p32(&mut v, 0); // nsecs
    p32(&mut v, seq);
    v.push(0); // engine type
    v.push(0); // engine id
    p16(&mut v, 0); // sampling: none
    for f in flows {
        v.extend_from_slice(&f.src.octets());
        v.extend_from_slice(&f.dst.octets());
        p32(&mut v, 0); // next hop
        p16(&mut v, 1); // input
        p16(&mut v, 2); // output
        p32(&mut v, f.packets);
        p32(&mut v, f.bytes);
        p32(&mut v, uptime_ms); // first
        p32(&mut v, uptime_ms); // last
        p16(&mut v, f.src_port);
        p16(&mut v, f.dst_port);
        v.push(0); // pad
        v.push(f.tcp_flags);
        v.push(f.protocol);
        v.push(0); // tos
        p16(&mut v, 0); // src as
        p16(&mut v, 0); // dst as
        v.push(32);
        v.push(16);
        p16(&mut v, 0);
    }
    v
}

/// Byte offset of record `i`'s source address in a v5 datagram.
pub fn v5_src_offset(i: usize) -> usize {
    24 + 48 * i
}

/// Byte offset of record `i`'s destination address in a v5 datagram.
pub fn v5_dst_offset(i: usize) -> usize {
    24 + 48 * i + 4
}

/// (element id, length) of the v9/IPFIX data template: the fields a router sends for a
/// plain IPv4 flow. v9 carries first/last switched (sysUpTime ms); IPFIX none (records
/// end at export time).
const V9_FIELDS: &[(u16, u16)] = &[
    (8, 4),  // IPV4_SRC_ADDR
    (12, 4), // IPV4_DST_ADDR
    (7, 2),  // L4_SRC_PORT
    (11, 2), // L4_DST_PORT
    (4, 1),  // PROTOCOL
    (6, 1),  // TCP_FLAGS
    (2, 4),  // IN_PKTS
    (1, 4),  // IN_BYTES
    (22, 4), // FIRST_SWITCHED
    (21, 4), // LAST_SWITCHED
];
const IPFIX_FIELDS: &[(u16, u16)] = &[
    (8, 4),
    (12, 4),
    (7, 2),
    (11, 2),
    (4, 1),
    (6, 1),
    (2, 8), // packetDeltaCount, reduced-size encoding is allowed but 8 is the norm
    (1, 8), // octetDeltaCount
];

fn v9_header(v: &mut Vec<u8>, count: u16, uptime_ms: u32, unix_secs: u32, seq: u32, sid: u32) {
    p16(v, 9);
    p16(v, count);
    p32(v, uptime_ms);
    p32(v, unix_secs);
    p32(v, seq);
    p32(v, sid);
}

/// A v9 datagram holding only the data template.
pub fn v9_template(source_id: u32, seq: u32, uptime_ms: u32, unix_secs: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    v9_header(&mut v, 1, uptime_ms, unix_secs, seq, source_id);
    p16(&mut v, 0); // template flowset
    p16(&mut v, (4 + 4 + 4 * V9_FIELDS.len()) as u16);
    put_template(&mut v, V9_FIELDS);
    v
}

/// One template record: id, field count, (element id, length) pairs.
fn put_template(v: &mut Vec<u8>, fields: &[(u16, u16)]) {
    p16(v, TEMPLATE_ID);
    p16(v, fields.len() as u16);
    for (id, len) in fields {
        p16(v, *id);
        p16(v, *len);
    }
}

/// The fields both data templates start with: addresses, ports, protocol, TCP flags.
fn put_flow_key(v: &mut Vec<u8>, f: &Flow) {
    v.extend_from_slice(&f.src.octets());
    v.extend_from_slice(&f.dst.octets());
    p16(v, f.src_port);
    p16(v, f.dst_port);
    v.push(f.protocol);
    v.push(f.tcp_flags);
}

/// A v9 datagram of data records for [`v9_template`].
pub fn v9_data(
    flows: &[Flow],
    source_id: u32,
    seq: u32,
    uptime_ms: u32,
    unix_secs: u32,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + 30 * flows.len());
    v9_header(
        &mut v,
        flows.len() as u16,
        uptime_ms,
        unix_secs,
        seq,
        source_id,
    );
    let start = v.len();
    p16(&mut v, TEMPLATE_ID);
    p16(&mut v, 0); // length, patched below
    for f in flows {
        put_flow_key(&mut v, f);
        p32(&mut v, f.packets);
        p32(&mut v, f.bytes);
        p32(&mut v, uptime_ms);
        p32(&mut v, uptime_ms);
    }
    while (v.len() - start) % 4 != 0 {
        v.push(0);
    }
    let len = (v.len() - start) as u16;
    v[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    v
}

fn ipfix_header(v: &mut Vec<u8>, export_time: u32, seq: u32, domain: u32) {
    p16(v, 10);
    p16(v, 0); // length, patched
    p32(v, export_time);
    p32(v, seq);
    p32(v, domain);
}

fn ipfix_finish(v: &mut [u8]) {
    let len = v.len() as u16;
    v[2..4].copy_from_slice(&len.to_be_bytes());
}

/// An IPFIX message holding only the data template.
pub fn ipfix_template(domain: u32, seq: u32, export_time: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(64);
    ipfix_header(&mut v, export_time, seq, domain);
    p16(&mut v, 2); // template set
    p16(&mut v, (4 + 4 + 4 * IPFIX_FIELDS.len()) as u16);
    put_template(&mut v, IPFIX_FIELDS);
    ipfix_finish(&mut v);
    v
}

/// An IPFIX message of data records for [`ipfix_template`].
pub fn ipfix_data(flows: &[Flow], domain: u32, seq: u32, export_time: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(20 + 30 * flows.len());
    ipfix_header(&mut v, export_time, seq, domain);
    p16(&mut v, TEMPLATE_ID);
    p16(&mut v, (4 + 30 * flows.len()) as u16);
    for f in flows {
        put_flow_key(&mut v, f);
        v.extend_from_slice(&u64::from(f.packets).to_be_bytes());
        v.extend_from_slice(&u64::from(f.bytes).to_be_bytes());
    }
    ipfix_finish(&mut v);
    v
}

/// The sampled packet's headers: Ethernet + IPv4 + TCP (20 bytes) or UDP (8 bytes).
fn packet_header(f: &Flow) -> Vec<u8> {
    let mut h = Vec::with_capacity(64);
    h.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let ip_len = (f.bytes / f.packets.max(1)).clamp(40, 1500) as u16;
    h.push(0x45);
    h.push(0);
    h.extend_from_slice(&ip_len.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0]); // id, DF
    h.push(64);
    h.push(f.protocol);
    h.extend_from_slice(&[0, 0]); // checksum: nobody checks it
    h.extend_from_slice(&f.src.octets());
    h.extend_from_slice(&f.dst.octets());
    h.extend_from_slice(&f.src_port.to_be_bytes());
    h.extend_from_slice(&f.dst_port.to_be_bytes());
    if f.protocol == 6 {
        h.extend_from_slice(&[
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            0,
            0x50,
            f.tcp_flags,
            0xff,
            0xff,
            0,
            0,
            0,
            0,
        ]);
    } else {
        h.extend_from_slice(&(ip_len - 20).to_be_bytes());
        h.extend_from_slice(&[0, 0]);
    }
    h
}

/// sFlow v5 datagram: one flow sample (format 1) per flow, each with one sampled-header
/// record (Ethernet). `f.packets` is ignored: a sample is one packet, scaled by
/// `sampling_rate` at the collector.
pub fn sflow(
    flows: &[Flow],
    agent: Ipv4Addr,
    seq: u32,
    uptime_ms: u32,
    sampling_rate: u32,
) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + 120 * flows.len());
    p32(&mut v, 5);
    p32(&mut v, 1); // agent address type IPv4
    v.extend_from_slice(&agent.octets());
    p32(&mut v, 0); // sub agent
    p32(&mut v, seq);
    p32(&mut v, uptime_ms);
    p32(&mut v, flows.len() as u32);
    for (i, f) in flows.iter().enumerate() {
        let hdr = packet_header(f);
        let padded = hdr.len().div_ceil(4) * 4;
        let rec_len = 16 + padded;
        let sample_len = 32 + 8 + rec_len;
        p32(&mut v, 1); // flow sample
        p32(&mut v, sample_len as u32);
        p32(&mut v, seq.wrapping_mul(64).wrapping_add(i as u32));
        p32(&mut v, 3); // source id: ifIndex 3
        p32(&mut v, sampling_rate);
        p32(
            &mut v,
            seq.wrapping_mul(64)
                .wrapping_add(i as u32)
                .wrapping_mul(sampling_rate),
        );
        p32(&mut v, 0); // drops
        p32(&mut v, 1); // input
        p32(&mut v, 2); // output
        p32(&mut v, 1); // records
        p32(&mut v, 1); // sampled header
        p32(&mut v, rec_len as u32);
        p32(&mut v, 1); // ethernet
        let ip_len = (f.bytes / f.packets.max(1)).clamp(40, 1500);
        p32(&mut v, ip_len + 14 + 4); // frame length incl. FCS
        p32(&mut v, 4); // stripped (FCS)
        p32(&mut v, hdr.len() as u32);
        v.extend_from_slice(&hdr);
        v.resize(v.len() + padded - hdr.len(), 0);
    }
    v
}
