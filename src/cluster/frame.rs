//! The delta frame: one collector's per-host counter deltas of one second for one
//! partition, in a compact versioned binary form. Pure: encoding and decoding only.
//!
//! Layout (integers big-endian, counters LEB128):
//!
//! ```text
//! "FG" | version u8 (= 1) | node id length u8 | node id | config hash u64 | second u32
//! | partition u16 | frame index u16 | frames in the second u16 | entries u32
//! entry: tag u8 (bit 0 IPv6, bit 1 outgoing) | address (4 or 16) | field mask u16
//!        | one varint per set bit, in `Counters` field order
//! ```
//!
//! A collector sends every second at least one frame (an empty one if it saw nothing), so
//! a detector can tell "nothing" from "not yet"; `index`/`total` let it know when it has
//! all of a collector's frames of that second. A host-direction with one protocol costs
//! about 1 + 4 + 2 + 6 × 3 = 25 bytes for IPv4.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::aggregate::rate::FIELDS;
use crate::aggregate::{Counters, HostDelta, HostKey};
use crate::model::Direction;

pub const MAGIC: [u8; 2] = *b"FG";
pub const VERSION: u8 = 1;
/// Entries accepted in one frame: a bound against a forged count (a real frame is cut
/// by size long before).
pub const MAX_ENTRIES: u32 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("not a delta frame (bad magic)")]
    Magic,
    #[error("delta frame version {0}, this node reads {VERSION}")]
    Version(u8),
    #[error("truncated delta frame")]
    Truncated,
    #[error("delta frame from unknown node {0:?}")]
    UnknownNode(String),
    #[error("delta frame from node {0:?} with another config hash")]
    ConfigHash(String),
}

impl FrameError {
    /// The `reason` label of `flowguard_cluster_bad_frames_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::Magic => "magic",
            FrameError::Version(_) => "version",
            FrameError::Truncated => "truncated",
            FrameError::UnknownNode(_) => "unknown_node",
            FrameError::ConfigHash(_) => "config_hash",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub node: String,
    pub config_hash: u64,
    pub sec: u32,
    pub partition: u16,
    pub index: u16,
    pub total: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub header: Header,
    pub deltas: Vec<HostDelta>,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode_entry(out: &mut Vec<u8>, d: &HostDelta) {
    let out_bit = if d.key.dir == Direction::Outgoing {
        2
    } else {
        0
    };
    match d.key.ip {
        IpAddr::V4(a) => {
            out.push(out_bit);
            out.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            out.push(out_bit | 1);
            out.extend_from_slice(&a.octets());
        }
    }
    let f = d.counters.to_array();
    let mask = f
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0)
        .fold(0u16, |m, (i, _)| m | (1 << i));
    out.extend_from_slice(&mask.to_be_bytes());
    for v in f.into_iter().filter(|v| *v != 0) {
        put_varint(out, v);
    }
}

fn header_bytes(h: &Header, entries: u32) -> Vec<u8> {
    let node = &h.node.as_bytes()[..h.node.len().min(255)];
    let mut out = Vec::with_capacity(24 + node.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(node.len() as u8);
    out.extend_from_slice(node);
    out.extend_from_slice(&h.config_hash.to_be_bytes());
    out.extend_from_slice(&h.sec.to_be_bytes());
    out.extend_from_slice(&h.partition.to_be_bytes());
    out.extend_from_slice(&h.index.to_be_bytes());
    out.extend_from_slice(&h.total.to_be_bytes());
    out.extend_from_slice(&entries.to_be_bytes());
    out
}

/// Encodes one collector's deltas of second `sec` into frames of at most
/// `max_frame_bytes` (a host entry is never split), grouped by `partition_of` the host:
/// (partition, frame) pairs, numbered 0..n across the second. At least one frame, so an
/// idle second is announced too.
pub fn encode_second(
    node: &str,
    config_hash: u64,
    sec: u32,
    deltas: &[HostDelta],
    partition_of: impl Fn(&HostKey) -> u16,
    max_frame_bytes: usize,
) -> Vec<(u16, Vec<u8>)> {
    let mut sorted: Vec<(u16, &HostDelta)> =
        deltas.iter().map(|d| (partition_of(&d.key), d)).collect();
    sorted.sort_by_key(|(p, d)| (*p, d.key));
    // Bodies first (partition, entries, bytes); headers once the count is known.
    let budget = max_frame_bytes.saturating_sub(24 + node.len()).max(64);
    let mut bodies: Vec<(u16, u32, Vec<u8>)> = Vec::new();
    for (p, d) in sorted {
        let mut e = Vec::with_capacity(40);
        encode_entry(&mut e, d);
        match bodies.last_mut() {
            Some((bp, n, b)) if *bp == p && b.len() + e.len() <= budget => {
                b.extend_from_slice(&e);
                *n += 1;
            }
            _ => bodies.push((p, 1, e)),
        }
    }
    if bodies.is_empty() {
        bodies.push((0, 0, Vec::new()));
    }
    let total = bodies.len().min(usize::from(u16::MAX)) as u16;
    bodies
        .into_iter()
        .take(usize::from(total))
        .enumerate()
        .map(|(i, (p, n, b))| {
            let h = Header {
                node: node.to_string(),
                config_hash,
                sec,
                partition: p,
                index: i as u16,
                total,
            };
            let mut out = header_bytes(&h, n);
            out.extend_from_slice(&b);
            (p, out)
        })
        .collect()
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(FrameError::Truncated);
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let a = self.take(2)?;
        Ok(u16::from_be_bytes([a[0], a[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let a = self.take(4)?;
        Ok(u32::from_be_bytes([a[0], a[1], a[2], a[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let a = self.take(8)?;
        let mut x = [0u8; 8];
        x.copy_from_slice(a);
        Ok(u64::from_be_bytes(x))
    }
    fn varint(&mut self) -> Result<u64, FrameError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        // Longer than a u64: not a frame this encoder wrote.
        Err(FrameError::Truncated)
    }
}

/// Decodes the header only (enough to check the sender before the body).
pub fn decode_header(b: &[u8]) -> Result<(Header, u32, usize), FrameError> {
    let mut r = Reader { b };
    if r.take(2)? != MAGIC {
        return Err(FrameError::Magic);
    }
    let v = r.u8()?;
    if v != VERSION {
        return Err(FrameError::Version(v));
    }
    let n = usize::from(r.u8()?);
    let node = String::from_utf8_lossy(r.take(n)?).into_owned();
    let h = Header {
        node,
        config_hash: r.u64()?,
        sec: r.u32()?,
        partition: r.u16()?,
        index: r.u16()?,
        total: r.u16()?,
    };
    let entries = r.u32()?;
    Ok((h, entries, b.len() - r.b.len()))
}

/// Decodes a whole frame. Never panics on any input.
pub fn decode(b: &[u8]) -> Result<Frame, FrameError> {
    let (header, entries, used) = decode_header(b)?;
    if entries > MAX_ENTRIES {
        return Err(FrameError::Truncated);
    }
    let mut r = Reader { b: &b[used..] };
    // Each entry is at least 7 bytes: a count beyond that is a cut frame.
    if (entries as usize).saturating_mul(7) > r.b.len() {
        return Err(FrameError::Truncated);
    }
    let mut deltas = Vec::with_capacity(entries as usize);
    for _ in 0..entries {
        let tag = r.u8()?;
        let ip = if tag & 1 == 0 {
            let a = r.take(4)?;
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            let mut x = [0u8; 16];
            x.copy_from_slice(r.take(16)?);
            IpAddr::V6(Ipv6Addr::from(x))
        };
        let dir = if tag & 2 == 0 {
            Direction::Incoming
        } else {
            Direction::Outgoing
        };
        let mask = r.u16()?;
        let mut f = [0u64; FIELDS];
        for (i, v) in f.iter_mut().enumerate() {
            if mask & (1 << i) != 0 {
                *v = r.varint()?;
            }
        }
        deltas.push(HostDelta {
            key: HostKey { ip, dir },
            group: 0,
            sec: header.sec,
            counters: Counters::from_array(f),
        });
    }
    Ok(Frame { header, deltas })
}

/// Whether a frame's sender may be merged: a known collector with this node's config
/// hash. `known` returns the config hash of a live collector, None for others.
pub fn check_sender(
    h: &Header,
    known: impl Fn(&str) -> Option<u64>,
    hash: u64,
) -> Result<(), FrameError> {
    match known(&h.node) {
        None => Err(FrameError::UnknownNode(h.node.clone())),
        Some(x) if x != hash => Err(FrameError::ConfigHash(h.node.clone())),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(ip: &str, dir: Direction, packets: u64) -> HostDelta {
        HostDelta {
            key: HostKey {
                ip: ip.parse().unwrap(),
                dir,
            },
            group: 0,
            sec: 1_800_000_000,
            counters: Counters {
                packets,
                bytes: packets * 1400,
                flows: 3,
                udp_packets: packets,
                udp_bytes: packets * 1400,
                udp_flows: 3,
                ..Counters::default()
            },
        }
    }

    fn sample() -> Vec<HostDelta> {
        vec![
            delta("192.0.2.1", Direction::Incoming, 6000),
            delta("192.0.2.1", Direction::Outgoing, 1),
            delta("2001:db8::7", Direction::Incoming, u64::MAX),
            delta("192.0.2.200", Direction::Incoming, 0),
        ]
    }

    fn part(k: &HostKey) -> u16 {
        crate::cluster::lease::partition_of(k.ip, 64)
    }

    #[test]
    fn round_trip_keeps_every_counter_and_partition() {
        let d = sample();
        let frames = encode_second("A", 7, 1_800_000_000, &d, part, 1 << 20);
        let mut back = Vec::new();
        for (p, f) in &frames {
            let fr = decode(f).unwrap();
            assert_eq!(fr.header.partition, *p);
            assert_eq!(fr.header.total as usize, frames.len());
            assert_eq!((fr.header.node.as_str(), fr.header.config_hash), ("A", 7));
            for x in &fr.deltas {
                assert_eq!(part(&x.key), *p);
            }
            back.extend(fr.deltas);
        }
        let mut want = d.clone();
        want.sort_by_key(|x| x.key);
        back.sort_by_key(|x| x.key);
        assert_eq!(back, want);
    }

    #[test]
    fn an_idle_second_is_one_empty_frame() {
        let frames = encode_second("A", 7, 5, &[], part, 1 << 20);
        assert_eq!(frames.len(), 1);
        let fr = decode(&frames[0].1).unwrap();
        assert_eq!(
            (fr.header.index, fr.header.total, fr.deltas.len()),
            (0, 1, 0)
        );
    }

    #[test]
    fn frames_are_cut_by_size_and_numbered() {
        let d: Vec<HostDelta> = (0..2000)
            .map(|i| {
                delta(
                    &format!("10.0.{}.{}", i / 256, i % 256),
                    Direction::Incoming,
                    100 + i,
                )
            })
            .collect();
        let frames = encode_second("A", 7, 5, &d, |_| 3, 4096);
        assert!(frames.len() > 5, "{} frames", frames.len());
        let mut n = 0;
        for (i, (_, f)) in frames.iter().enumerate() {
            assert!(f.len() <= 4096, "{} bytes", f.len());
            let fr = decode(f).unwrap();
            assert_eq!(fr.header.index as usize, i);
            n += fr.deltas.len();
        }
        assert_eq!(n, 2000);
    }

    #[test]
    fn a_typical_host_direction_costs_well_under_64_bytes() {
        let d: Vec<HostDelta> = (0..1000)
            .map(|i| {
                delta(
                    &format!("10.1.{}.{}", i / 256, i % 256),
                    Direction::Incoming,
                    5000 + i,
                )
            })
            .collect();
        let bytes: usize = encode_second("collector-a", 7, 5, &d, |_| 0, 1 << 20)
            .iter()
            .map(|(_, f)| f.len())
            .sum();
        assert!(
            bytes / 1000 <= 64,
            "{} bytes per host-direction",
            bytes / 1000
        );
    }

    #[test]
    fn wrong_version_truncation_and_garbage_are_refused() {
        let (_, f) = encode_second("A", 7, 5, &sample(), |_| 0, 1 << 20).remove(0);
        let mut v2 = f.clone();
        v2[2] = 2;
        assert_eq!(decode(&v2), Err(FrameError::Version(2)));
        assert_eq!(decode(&v2).unwrap_err().reason(), "version");
        for cut in 0..f.len() {
            let e = decode(&f[..cut]).unwrap_err();
            assert_eq!(e, FrameError::Truncated, "cut at {cut}");
        }
        assert_eq!(decode(b"XX\x01"), Err(FrameError::Magic));
        // A forged entry count cannot make the decoder allocate or read past the end.
        let mut big = f.clone();
        let at = 2 + 1 + 1 + 1 + 8 + 4 + 2 + 2 + 2;
        big[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(&big), Err(FrameError::Truncated));
        // Every byte sequence decodes or fails, never panics.
        let mut x = 0x1234_5678u32;
        for _ in 0..2000 {
            let mut g = f.clone();
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let i = (x as usize >> 8) % g.len();
            g[i] ^= (x >> 3) as u8 | 1;
            let _ = decode(&g);
        }
    }

    #[test]
    fn unknown_senders_and_other_configs_are_refused() {
        let (_, f) = encode_second("Z", 7, 5, &[], |_| 0, 1 << 20).remove(0);
        let h = decode(&f).unwrap().header;
        let known = |n: &str| (n == "A").then_some(7u64);
        assert_eq!(
            check_sender(&h, known, 7),
            Err(FrameError::UnknownNode("Z".into()))
        );
        let h = Header {
            node: "A".into(),
            ..h
        };
        assert_eq!(check_sender(&h, known, 7), Ok(()));
        assert_eq!(
            check_sender(&h, known, 8).unwrap_err().reason(),
            "config_hash"
        );
    }
}
