//! v9/IPFIX fast path: data records of known templates decoded straight from the bytes.
//!
//! Why: `netflow_parser` builds a `Vec` of (field, value) pairs per record; at millions of
//! records per second that allocation dominated decoding (~0.45 µs per record, see
//! `benches/README.md`). Here a template is compiled once into the offsets of the fields
//! flowguard reads, and a data record becomes a [`Fields`] with no allocation; the
//! field → record mapping after that is the crate path's own (`NetflowDecoder::v9_record`
//! / `ipfix_record`), so both paths give the same records (tested on generated data and on
//! the shared captures).
//!
//! Only datagrams made of data sets whose templates are all here take the fast path.
//! Anything else — template and options sets, options data (sampling), unknown templates,
//! malformed lengths — goes to the crate, which stays the authority for templates; its
//! datagrams are also scanned here to learn (or forget) templates. A template that uses a
//! variable-length field or reads a field in an encoding not handled here is not compiled:
//! its data always takes the crate path.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::netflow::Fields;
use super::{be16, be32, Version};

/// Compiled templates kept at most (over all exporters); beyond it new ones are not
/// compiled and their data takes the crate path.
const MAX_TEMPLATES: usize = 65_536;

/// (exporter transport address, v9 = true / IPFIX = false, source id or observation
/// domain, template id): v9 and IPFIX template ids from one address are separate
/// namespaces, as they are in netflow_parser's scoping.
type Key = (SocketAddr, bool, u32, u16);

/// One field flowguard reads: its element id, offset in the record and length.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u16,
    off: u16,
    len: u16,
}

#[derive(Debug, Clone)]
struct Template {
    slots: Vec<Slot>,
    rec_len: usize,
}

#[derive(Default)]
pub(super) struct FastTemplates {
    map: HashMap<Key, Template, ahash::RandomState>,
}

pub(super) enum Plan {
    V9 { scope: u32, sys_up_time: u32 },
    Ipfix { scope: u32, export_ms: u64 },
}

/// Whether a field of this id and length is read here exactly as the crate reads it
/// (`None` = the template cannot be compiled). Ids flowguard ignores are always fine.
fn supported(id: u16, len: u16) -> Option<bool> {
    let num = matches!(len, 1 | 2 | 3 | 4 | 8);
    let ok = match id {
        1 | 2 | 23 | 24 | 85 | 86 | 34 | 50 | 305 | 306 | 21 | 22 | 88 => num,
        4 => len == 1,
        6 => len == 1 || len == 2,
        7 | 11 => len == 2,
        8 | 12 => len == 4,
        27 | 28 => len == 16,
        // Absolute timestamps, system init time and fragment flags have their own value
        // types in the crate: left to it.
        150..=153 | 160 | 197 => false,
        _ => return Some(false),
    };
    ok.then_some(true)
}

fn uint(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x))
}

impl FastTemplates {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    fn header(payload: &[u8], v: Version) -> Option<(usize, u32)> {
        match v {
            Version::V9 => Some((20, be32(payload, 16)?)),
            Version::Ipfix => {
                // The message length must be the datagram's: anything else is for the
                // crate to judge.
                if usize::from(be16(payload, 2)?) != payload.len() {
                    return None;
                }
                Some((16, be32(payload, 12)?))
            }
            _ => None,
        }
    }

    /// Set ids, offsets and lengths of a datagram's sets; None if any length is off.
    fn sets(
        payload: &[u8],
        start: usize,
    ) -> Option<impl Iterator<Item = (u16, usize, usize)> + '_> {
        // Validate first so callers never act on half a datagram.
        let mut off = start;
        while off + 4 <= payload.len() {
            let len = usize::from(be16(payload, off + 2)?);
            if len < 4 || off + len > payload.len() {
                return None;
            }
            off += len;
        }
        let mut off = start;
        Some(std::iter::from_fn(move || {
            if off + 4 > payload.len() {
                return None;
            }
            let id = be16(payload, off)?;
            let len = usize::from(be16(payload, off + 2)?);
            let r = (id, off, len);
            off += len;
            Some(r)
        }))
    }

    /// Can this datagram take the fast path? Only data sets, all of compiled templates.
    pub(super) fn plan(&self, from: SocketAddr, payload: &[u8], v: Version) -> Option<Plan> {
        if self.map.is_empty() {
            return None;
        }
        let (start, scope) = Self::header(payload, v)?;
        let mut any = false;
        for (id, _, _) in Self::sets(payload, start)? {
            if id < 256 || !self.map.contains_key(&(from, v == Version::V9, scope, id)) {
                return None;
            }
            any = true;
        }
        if !any {
            return None;
        }
        Some(match v {
            Version::V9 => Plan::V9 {
                scope,
                sys_up_time: be32(payload, 4)?,
            },
            _ => Plan::Ipfix {
                scope,
                export_ms: u64::from(be32(payload, 4)?) * 1000,
            },
        })
    }

    /// Calls `f` with each data record's fields; only after [`plan`] said yes.
    pub(super) fn for_each_record(
        &self,
        from: SocketAddr,
        payload: &[u8],
        v: Version,
        scope: u32,
        mut f: impl FnMut(&Fields),
    ) {
        let Some((start, _)) = Self::header(payload, v) else {
            return;
        };
        let Some(sets) = Self::sets(payload, start) else {
            return;
        };
        for (id, off, len) in sets {
            let Some(t) = self.map.get(&(from, v == Version::V9, scope, id)) else {
                continue;
            };
            let body = &payload[off + 4..off + len];
            // Trailing bytes shorter than a record are padding.
            for rec in body.chunks_exact(t.rec_len) {
                f(&t.fields(rec));
            }
        }
    }

    /// Learns (or forgets) the templates of a datagram the crate parsed.
    pub(super) fn learn(&mut self, from: SocketAddr, payload: &[u8], v: Version) {
        let Some((start, scope)) = Self::header(payload, v) else {
            return;
        };
        let Some(sets) = Self::sets(payload, start) else {
            return;
        };
        let tmpl_set = if v == Version::V9 { 0 } else { 2 };
        let sets: Vec<_> = sets.filter(|s| s.0 == tmpl_set).collect();
        for (_, off, len) in sets {
            let body = &payload[off + 4..off + len];
            let mut p = 0;
            while p + 4 <= body.len() {
                let (Some(tid), Some(count)) = (be16(body, p), be16(body, p + 2)) else {
                    break;
                };
                p += 4;
                if tid < 256 {
                    break; // padding or garbage: stop at this set
                }
                let key = (from, v == Version::V9, scope, tid);
                if count == 0 {
                    self.map.remove(&key); // IPFIX template withdrawal
                    continue;
                }
                let mut slots = Vec::new();
                let mut rec_len = 0usize;
                let mut ok = true;
                for _ in 0..count {
                    let (Some(raw), Some(flen)) = (be16(body, p), be16(body, p + 2)) else {
                        ok = false;
                        break;
                    };
                    p += 4;
                    let enterprise = v == Version::Ipfix && raw & 0x8000 != 0;
                    if enterprise {
                        p += 4;
                    }
                    if flen == 0xFFFF || flen == 0 {
                        ok = false; // variable length: the crate's job
                    } else if !enterprise {
                        match supported(raw, flen) {
                            Some(true) => slots.push(Slot {
                                id: raw,
                                off: rec_len as u16,
                                len: flen,
                            }),
                            Some(false) => {}
                            None => ok = false,
                        }
                    }
                    rec_len += usize::from(flen);
                }
                if p > body.len() {
                    ok = false;
                }
                // A redefinition to something not compiled must not leave the old layout.
                self.map.remove(&key);
                if ok
                    && rec_len > 0
                    && rec_len <= usize::from(u16::MAX)
                    && self.map.len() < MAX_TEMPLATES
                {
                    self.map.insert(key, Template { slots, rec_len });
                }
            }
        }
    }
}

impl Template {
    /// The record's fields, with the crate path's precedence: the first of several byte,
    /// packet and address fields wins, the last of anything else.
    fn fields(&self, rec: &[u8]) -> Fields {
        let mut f = Fields::default();
        for s in &self.slots {
            let b = &rec[usize::from(s.off)..usize::from(s.off) + usize::from(s.len)];
            match s.id {
                1 | 23 | 85 if f.bytes.is_none() => f.bytes = Some(uint(b)),
                2 | 24 | 86 if f.packets.is_none() => f.packets = Some(uint(b)),
                4 => f.protocol = Some(b[0]),
                6 => f.tcp_flags = Some(uint(b) as u8),
                7 => f.src_port = Some(uint(b) as u16),
                11 => f.dst_port = Some(uint(b) as u16),
                8 if f.src.is_none() => f.src = Some(IpAddr::V4(Ipv4Addr::from(uint(b) as u32))),
                12 if f.dst.is_none() => f.dst = Some(IpAddr::V4(Ipv4Addr::from(uint(b) as u32))),
                27 if f.src.is_none() => f.src = v6(b),
                28 if f.dst.is_none() => f.dst = v6(b),
                22 => f.first = Some(uint(b)),
                21 => f.last = Some(uint(b)),
                34 => f.sampling_interval = Some(uint(b)),
                50 => f.sampler_random_interval = Some(uint(b)),
                305 => f.packet_interval = Some(uint(b)),
                306 => f.packet_space = Some(uint(b)),
                88 => f.fragment_offset = Some(uint(b)),
                _ => {}
            }
        }
        f
    }
}

fn v6(b: &[u8]) -> Option<IpAddr> {
    let a: [u8; 16] = b.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(a)))
}

/// The load generator's encoders, written independently of both decoders.
#[cfg(test)]
#[path = "../bin/flowguard-loadgen/gen.rs"]
mod gen;

#[cfg(test)]
mod tests {
    use super::gen;
    use std::net::{Ipv4Addr, SocketAddr};

    use super::super::{DecodeOutcome, FlowRecord, NetflowDecoder, SamplingOverrides};

    fn flows(n: u32) -> Vec<gen::Flow> {
        (0..n)
            .map(|i| gen::Flow {
                src: Ipv4Addr::from(0xC612_0000 + i * 7),
                dst: Ipv4Addr::from(0x6440_0001 + i * 13),
                src_port: 1000 + i as u16,
                dst_port: if i % 2 == 0 { 53 } else { 0 },
                protocol: if i % 3 == 0 { 17 } else { 6 },
                tcp_flags: (i % 64) as u8,
                packets: 1 + i * 1000,
                bytes: 40 + i * 1_000_003,
            })
            .collect()
    }

    fn run(fast: bool, dgrams: &[Vec<u8>]) -> (Vec<FlowRecord>, Vec<DecodeOutcome>, usize) {
        let from: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let mut d = NetflowDecoder::new(SamplingOverrides::default());
        d.set_fast_path(fast);
        let mut out = Vec::new();
        let mut ocs = Vec::new();
        for p in dgrams {
            ocs.push(d.decode(from, p, &mut out));
        }
        (out, ocs, d.fast.map.len())
    }

    #[test]
    fn fast_path_gives_the_crates_records() {
        let f = flows(45);
        let v9 = vec![
            gen::v9_template(7, 0, 5_000_000, 1_700_000_000),
            gen::v9_data(&f, 7, 1, 5_000_000, 1_700_000_000),
            gen::v9_data(&f[..3], 7, 2, 5_001_000, 1_700_000_001),
        ];
        let ipfix = vec![
            gen::ipfix_template(3, 0, 1_700_000_000),
            gen::ipfix_data(&f, 3, 1, 1_700_000_000),
            gen::ipfix_data(&f[10..], 3, 2, 1_700_000_002),
        ];
        for (d, n) in [(v9, 45 + 3), (ipfix, 45 + 35)] {
            let (slow, slow_oc, _) = run(false, &d);
            let (quick, quick_oc, compiled) = run(true, &d);
            assert_eq!(compiled, 1, "the template was compiled");
            assert_eq!(slow.len(), n);
            assert_eq!(quick, slow);
            assert_eq!(quick_oc, slow_oc);
        }
    }

    #[test]
    fn unknown_or_redefined_templates_fall_back_to_the_crate() {
        let f = flows(5);
        let mut redefined = gen::ipfix_template(3, 0, 1_700_000_000);
        // Same template id, now with a variable-length field appended: not compiled.
        redefined.extend_from_slice(&[0, 0, 0, 0]);
        let n = redefined.len();
        redefined[n - 4..n - 2].copy_from_slice(&82u16.to_be_bytes()); // interfaceName
        redefined[n - 2..].copy_from_slice(&0xFFFFu16.to_be_bytes());
        // Patch set length, field count and message length.
        let set_len = u16::from_be_bytes([redefined[18], redefined[19]]) + 4;
        redefined[18..20].copy_from_slice(&set_len.to_be_bytes());
        let cnt = u16::from_be_bytes([redefined[22], redefined[23]]) + 1;
        redefined[22..24].copy_from_slice(&cnt.to_be_bytes());
        redefined[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        let d = vec![
            gen::ipfix_data(&f, 3, 0, 1_700_000_000), // before any template: a miss
            gen::ipfix_template(3, 1, 1_700_000_000),
            gen::ipfix_data(&f, 3, 2, 1_700_000_000),
            redefined,
        ];
        let (slow, slow_oc, _) = run(false, &d);
        let (quick, quick_oc, compiled) = run(true, &d);
        assert_eq!(quick_oc[0].template_misses, 1);
        assert_eq!(compiled, 0, "the redefinition removed the compiled layout");
        assert_eq!(quick, slow);
        assert_eq!(quick_oc, slow_oc);
        assert_eq!(quick.len(), 5);
    }
}
