//! v9/IPFIX fast path: data records of known templates decoded straight from the bytes.
//!
//! Why: `netflow_parser` builds a `Vec` of (field, value) pairs per record; at millions of
//! records per second that allocation dominated decoding (~0.45 µs per record, see
//! `benches/README.md`). Here a template is compiled once into the offsets, widths and
//! meanings ([`fields::meaning`]) of the fields flowguard reads, and a data record fills
//! one reused [`Fields`] with no allocation and no dispatch on element ids; the
//! field → record mapping after that is the crate path's own (`NetflowDecoder::v9_record`
//! / `ipfix_record`), so both paths give the same records (tested on generated data and on
//! the shared captures).
//!
//! Datagrams made only of data sets whose templates are all here take the fast path
//! whole. Anything else — template and options sets, options data (sampling), unknown
//! templates, malformed lengths — goes to the crate, which stays the authority for
//! templates; its datagrams are also scanned here to learn (or forget) templates, and
//! their data sets of compiled templates are still read here (`fast_sets_of_mixed`).
//! Variable-length fields (IPFIX, and v9 length 65535 as H3C sends) are compiled; a
//! template that reads a field in an encoding not handled here is not: its data always
//! takes the crate path.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::fields::{self, Fields, Ie, Kind, REVERSE};
use super::{be16, be32, Version};

/// Compiled templates kept at most (over all exporters); beyond it new ones are not
/// compiled and their data takes the crate path.
const MAX_TEMPLATES: usize = 65_536;

/// RFC 5103 reverse information elements are enterprise elements of this PEN.
const PEN_REVERSE: u32 = 29305;

/// (exporter transport address, v9 = true / IPFIX = false, source id or observation
/// domain, template id): v9 and IPFIX template ids from one address are separate
/// namespaces, as they are in netflow_parser's scoping.
type Key = (SocketAddr, bool, u32, u16);

/// One template field: what flowguard reads it as (`Kind::Skip` = not read), how, and
/// its wire length (0xFFFF = variable, RFC 7011 §7; H3C sends the same in v9).
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// The element id, for a packet section (313 or 315).
    id: u16,
    ie: Ie,
    kind: Kind,
    off: u16,
    len: u16,
}

#[derive(Debug, Clone)]
struct Template {
    /// Fixed layout: only the fields read, at their offsets. Variable layout: every
    /// field, in order (offsets unused), since each record's lengths differ.
    slots: Vec<Slot>,
    /// Record length of a fixed layout; None when a field is variable-length.
    fixed: Option<usize>,
    /// The shortest a record can be (each variable field at least its length byte):
    /// fewer bytes left at the end of a set are padding.
    min_len: usize,
}

/// Bounds the crate also enforces, so both refuse the same templates.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_fields: usize,
    pub(super) max_record_bytes: usize,
}

pub(super) struct FastTemplates {
    map: HashMap<Key, Template, ahash::RandomState>,
    limits: Limits,
}

pub(super) enum Plan {
    V9 { scope: u32, sys_up_time: u32 },
    Ipfix { scope: u32, export_ms: u64 },
}

/// What walking one data set gave besides its records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct SetWalk {
    /// A record ran past the end of its set (a variable length longer than the rest).
    pub(super) overrun: bool,
}

/// A big-endian unsigned integer of 1 to 8 bytes (RFC 7011 §6.2 reduced-size encoding;
/// the common widths have kinds of their own, read as one load).
fn uint(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x))
}

/// Where the sets of a datagram start and its observation domain / source id.
pub(super) fn header(payload: &[u8], v: Version) -> Option<(usize, u32)> {
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

/// Length of `payload` without the zero bytes some exporters append after the last set
/// (Palo Alto pads datagrams to 1400 bytes, Cisco ACI appends 64): the walk stops where
/// a set header would be all zeros and everything after it is zero too. None if the sets
/// do not tile the rest (for the crate to judge).
pub(super) fn unpadded_len(payload: &[u8], start: usize) -> Option<usize> {
    let mut off = start;
    while off + 4 <= payload.len() {
        let len = usize::from(be16(payload, off + 2)?);
        if len < 4 || off + len > payload.len() {
            return payload[off..].iter().all(|b| *b == 0).then_some(off);
        }
        off += len;
    }
    if off < payload.len() && !payload[off..].iter().all(|b| *b == 0) {
        return None;
    }
    Some(off.min(payload.len()))
}

/// Set ids, offsets and lengths of a datagram's sets, up to `end` (see
/// [`unpadded_len`]).
pub(super) fn sets(
    payload: &[u8],
    start: usize,
) -> Option<impl Iterator<Item = (u16, usize, usize)> + '_> {
    // Validate first so callers never act on half a datagram.
    let end = unpadded_len(payload, start)?;
    let mut off = start;
    Some(std::iter::from_fn(move || {
        if off + 4 > end {
            return None;
        }
        let id = be16(payload, off)?;
        let len = usize::from(be16(payload, off + 2)?);
        let r = (id, off, len);
        off += len;
        Some(r)
    }))
}

impl FastTemplates {
    pub(super) fn new(limits: Limits) -> Self {
        FastTemplates {
            map: HashMap::default(),
            limits,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn knows(&self, from: SocketAddr, v: Version, scope: u32, id: u16) -> bool {
        self.map.contains_key(&(from, v == Version::V9, scope, id))
    }

    /// Can this datagram take the fast path? Only data sets, all of compiled templates.
    pub(super) fn plan(&self, from: SocketAddr, payload: &[u8], v: Version) -> Option<Plan> {
        if self.map.is_empty() {
            return None;
        }
        let (start, scope) = header(payload, v)?;
        let mut any = false;
        for (id, _, _) in sets(payload, start)? {
            if id < 256 || !self.knows(from, v, scope, id) {
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

    /// Calls `f` with each record's fields of the data set at `off..off + len` of
    /// `payload`, whose template (`id`) is compiled.
    pub(super) fn for_each_in_set<'a>(
        &self,
        key: (SocketAddr, Version, u32),
        set: (u16, usize, usize),
        payload: &'a [u8],
        mut f: impl FnMut(&Fields<'a>),
    ) -> SetWalk {
        let (from, v, scope) = key;
        let (id, off, len) = set;
        let mut walk = SetWalk::default();
        let Some(t) = self.map.get(&(from, v == Version::V9, scope, id)) else {
            return walk;
        };
        let body = &payload[off + 4..off + len];
        // One `Fields` for the whole set, cleared per record (one store).
        let mut fl = Fields::default();
        if let Some(rec_len) = t.fixed {
            // Trailing bytes shorter than a record are padding.
            for rec in body.chunks_exact(rec_len) {
                fl.clear();
                t.fixed_fields(rec, &mut fl);
                f(&fl);
            }
            return walk;
        }
        let mut p = 0;
        while body.len() - p >= t.min_len {
            fl.clear();
            match t.var_fields(&body[p..], &mut fl) {
                Some(used) => {
                    f(&fl);
                    p += used;
                }
                None => {
                    walk.overrun = true;
                    break;
                }
            }
        }
        walk
    }

    /// Calls `f` with each data record's fields; only after [`plan`] said yes.
    pub(super) fn for_each_record<'a>(
        &self,
        from: SocketAddr,
        payload: &'a [u8],
        v: Version,
        scope: u32,
        mut f: impl FnMut(&Fields<'a>),
    ) -> SetWalk {
        let mut walk = SetWalk::default();
        let Some((start, _)) = header(payload, v) else {
            return walk;
        };
        let Some(sets) = sets(payload, start) else {
            return walk;
        };
        for set in sets {
            let w = self.for_each_in_set((from, v, scope), set, payload, &mut f);
            walk.overrun |= w.overrun;
        }
        walk
    }

    /// Learns (or forgets) the templates of a datagram the crate parsed; returns how many
    /// template records were refused (over the limits, or malformed).
    pub(super) fn learn(&mut self, from: SocketAddr, payload: &[u8], v: Version) -> usize {
        let Some((start, scope)) = header(payload, v) else {
            return 0;
        };
        let Some(sets) = sets(payload, start) else {
            return 0;
        };
        let tmpl_set = if v == Version::V9 { 0 } else { 2 };
        let sets: Vec<_> = sets.filter(|s| s.0 == tmpl_set).collect();
        let mut refused = 0;
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
                let (t, ok) = self.compile(v, body, &mut p, count);
                // A redefinition to something not compiled must not leave the old layout.
                self.map.remove(&key);
                match t {
                    Ok(Some(t)) if ok && self.map.len() < MAX_TEMPLATES => {
                        self.map.insert(key, t);
                    }
                    Ok(_) => {}
                    Err(()) => refused += 1,
                }
                if !ok {
                    break;
                }
            }
        }
        refused
    }

    /// One template record at `body[*p..]` with `count` fields; moves `p` past it.
    /// Returns the template and whether the walk may go on.
    /// Err = refused (over the limits, or no field with a length); Ok(None) = valid but
    /// not compiled here. A zero-length field among others is legal and reads nothing.
    #[allow(clippy::result_unit_err)]
    fn compile(
        &self,
        v: Version,
        body: &[u8],
        p: &mut usize,
        count: u16,
    ) -> (Result<Option<Template>, ()>, bool) {
        let mut all = Vec::with_capacity(usize::from(count));
        let mut fixed_len = 0usize;
        let mut var = false;
        let refuse = usize::from(count) > self.limits.max_fields;
        let mut compilable = true;
        for _ in 0..count {
            let (Some(raw), Some(flen)) = (be16(body, *p), be16(body, *p + 2)) else {
                return (Err(()), false);
            };
            *p += 4;
            let mut id = raw;
            if v == Version::Ipfix && raw & 0x8000 != 0 {
                let Some(pen) = be32(body, *p) else {
                    return (Err(()), false);
                };
                *p += 4;
                // Reverse counters are read; other enterprise elements are skipped.
                id = if pen == PEN_REVERSE {
                    (raw & 0x7FFF) | REVERSE
                } else {
                    0
                };
            }
            let (ie, kind) = match fields::meaning(id) {
                None => (Ie::Nsel, Kind::Skip),
                Some(ie) => match fields::wire_kind(id & !REVERSE, flen) {
                    Some(k) => (ie, k),
                    None => {
                        // Read in another encoding than ours: the crate's job.
                        compilable = false;
                        (ie, Kind::Skip)
                    }
                },
            };
            if flen == 0xFFFF {
                var = true;
            } else {
                fixed_len += usize::from(flen);
            }
            all.push(Slot {
                id,
                ie,
                kind,
                off: 0,
                len: flen,
            });
        }
        if refuse || fixed_len > self.limits.max_record_bytes || (fixed_len == 0 && !var) {
            return (Err(()), true);
        }
        if !compilable {
            return (Ok(None), true);
        }
        let t = if var {
            let vars = all.iter().filter(|s| s.len == 0xFFFF).count();
            Template {
                slots: all,
                fixed: None,
                min_len: fixed_len + vars,
            }
        } else {
            let mut off = 0u16;
            let mut slots = Vec::new();
            for s in all {
                if s.kind != Kind::Skip {
                    slots.push(Slot { off, ..s });
                }
                off = off.wrapping_add(s.len);
            }
            Template {
                slots,
                fixed: Some(fixed_len),
                min_len: fixed_len,
            }
        };
        (Ok(Some(t)), true)
    }
}

impl Slot {
    /// Stores this field's bytes `b` (of its wire length) into `f`.
    #[inline]
    fn store<'a>(&self, b: &'a [u8], f: &mut Fields<'a>) {
        let n = match self.kind {
            Kind::U8 => b.first().map(|x| u64::from(*x)),
            Kind::U16 => b.try_into().ok().map(|x| u64::from(u16::from_be_bytes(x))),
            Kind::U32 => b.try_into().ok().map(|x| u64::from(u32::from_be_bytes(x))),
            Kind::U64 => b.try_into().ok().map(u64::from_be_bytes),
            _ => None,
        };
        if let Some(n) = n {
            f.put_uint(self.ie, n);
            return;
        }
        match self.kind {
            Kind::U8 | Kind::U16 | Kind::U32 | Kind::U64 => {}
            Kind::Uint => f.put_uint(self.ie, uint(b)),
            Kind::Secs => f.put_uint(self.ie, uint(b).saturating_mul(1000)),
            Kind::V6 => {
                if let Ok(a) = <[u8; 16]>::try_from(b) {
                    f.put_v6(self.ie, a);
                }
            }
            Kind::F32 => {
                if let Ok(x) = b.try_into() {
                    f.put_float(self.ie, f64::from(f32::from_be_bytes(x)));
                }
            }
            Kind::F64 => {
                if let Ok(x) = b.try_into() {
                    f.put_float(self.ie, f64::from_be_bytes(x));
                }
            }
            Kind::Bytes => f.put_section(self.id, b),
            Kind::Skip => {}
        }
    }
}

impl Template {
    /// One record of a fixed layout into `f` (cleared).
    #[inline]
    fn fixed_fields<'a>(&self, rec: &'a [u8], f: &mut Fields<'a>) {
        for s in &self.slots {
            let (o, l) = (usize::from(s.off), usize::from(s.len));
            // In bounds by construction (the record is the template's length); `get`
            // keeps a logic error from ever being a panic on input.
            if let Some(b) = rec.get(o..o + l) {
                s.store(b, f);
            }
        }
    }

    /// One record of a variable-length layout into `f` (cleared); the bytes it used, or
    /// None if a length runs past the end.
    fn var_fields<'a>(&self, rec: &'a [u8], f: &mut Fields<'a>) -> Option<usize> {
        let mut p = 0usize;
        for s in &self.slots {
            let mut len = usize::from(s.len);
            if s.len == 0xFFFF {
                // RFC 7011 §7: one length byte, or 255 and two more.
                len = usize::from(*rec.get(p)?);
                p += 1;
                if len == 255 {
                    len = usize::from(be16(rec, p)?);
                    p += 2;
                }
            }
            let b = rec.get(p..p.checked_add(len)?)?;
            p += len;
            // An empty value (length 0: an empty string or list) is legal and says
            // nothing; a numeric or address field of another length is not read.
            if !b.is_empty() && (s.len != 0xFFFF || matches!(s.kind, Kind::Bytes)) {
                s.store(b, f);
            }
        }
        Some(p)
    }
}

/// The load generator's encoders, written independently of both decoders.
#[cfg(test)]
#[path = "../../crates/flowguard-loadgen/src/gen.rs"]
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
        // Same template id, now with a source address of 16 bytes appended, an encoding
        // the fast path does not read: not compiled.
        redefined.extend_from_slice(&[0, 0, 0, 0]);
        let n = redefined.len();
        redefined[n - 4..n - 2].copy_from_slice(&8u16.to_be_bytes());
        redefined[n - 2..].copy_from_slice(&16u16.to_be_bytes());
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
