//! The information elements of one v9/IPFIX record that flowguard reads, and the rules
//! that turn them into [`FlowRecord`]s. Both decoders (the crate path in
//! [`super::netflow`] and the byte-level path in [`super::fast`]) fill a [`Fields`]
//! through the one [`Fields::put`], so every precedence rule lives here once:
//!
//! - counters: delta (IE 1/2) before post (23/24) before totals (85/86), whatever the
//!   template order (a firewall's template may list totals first and deltas later);
//! - addresses: a template may carry IPv4 and IPv6 fields (IOS XR MPLS/SRv6-aware
//!   templates, IE 8/12 and 27/28 in any order) and fill one family with zeros: the family
//!   that is set counts; when both are, the one `ipVersion` (IE 60) names, else IPv4 (the
//!   customer address of an IPv4-over-SRv6/MPLS flow, not the locator). Next hops,
//!   post-NAT and tunnel endpoints are never read as host addresses;
//! - sampling forms of RFC 5477 and Cisco v9: `samplingInterval` (34),
//!   `samplerRandomInterval` (50), systematic count-based interval + space (305/306),
//!   random n-out-of-N `samplingSize`/`samplingPopulation` (309/310), uniform
//!   probabilistic `samplingProbability` (311), each read as "1 in N";
//! - RFC 5103 biflow: reverse counters (PEN 29305) are the reverse direction's traffic,
//!   counted when the collector's `biflow_reverse` is on;
//! - Cisco NSEL: `initiatorOctets`/`responderOctets`/`initiatorPackets`/
//!   `responderPackets` (231/232/298/299) are running totals per connection, re-sent with
//!   every update event, so they are not added as traffic; a connection counts once, as
//!   a flow, at its create (or deny) event;
//! - packet sections (`ipHeaderPacketSection` 313, `dataLinkFrameSection` 315, as Juniper
//!   inline monitoring exports): the sampled packet's header, read like an sFlow sampled
//!   header — one packet of its IP length, times the selector's rate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::packet::{decode_header, HeaderStart};
use super::{FlowRecord, PROTO_TCP, PROTO_UDP};

/// Element ids of RFC 5103 reverse elements (PEN 29305) are the forward id with this bit.
pub(super) const REVERSE: u16 = 0x8000;

/// One field's value as both decoders hand it over.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Uint(u64),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Float(f64),
    Bytes(&'a [u8]),
}

impl Value<'_> {
    fn uint(self) -> Option<u64> {
        match self {
            Value::Uint(n) => Some(n),
            _ => None,
        }
    }
}

/// Which record kinds are not traffic, for the skipped-records counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No source or destination address of one family.
    NoAddress,
    /// A packet section whose header could not be read.
    BadSection,
}

/// How a counter of one kind was reported: index 0 delta, 1 post, 2 total.
type Counter = [Option<u64>; 3];

fn first(c: &Counter) -> Option<u64> {
    c[0].or(c[1]).or(c[2])
}

/// The fields of one v9/IPFIX record that flowguard reads.
#[derive(Debug, Default, Clone)]
pub(super) struct Fields<'a> {
    bytes: Counter,
    packets: Counter,
    rev_bytes: Counter,
    rev_packets: Counter,
    nsel: bool,
    firewall_event: Option<u8>,
    pub(super) protocol: Option<u8>,
    tcp_flags: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
    src4: Option<Ipv4Addr>,
    dst4: Option<Ipv4Addr>,
    src6: Option<Ipv6Addr>,
    dst6: Option<Ipv6Addr>,
    ip_version: Option<u8>,
    pub(super) first: Option<u64>,
    pub(super) last: Option<u64>,
    pub(super) start_abs_ms: Option<u64>,
    pub(super) end_abs_ms: Option<u64>,
    sampling_interval: Option<u64>,
    sampler_random_interval: Option<u64>,
    packet_interval: Option<u64>,
    packet_space: Option<u64>,
    sampling_size: Option<u64>,
    sampling_population: Option<u64>,
    sampling_probability: Option<f64>,
    /// v9 FLOW_SAMPLER_ID / IPFIX samplerId (48) or selectorId (302).
    pub(super) sampler_id: Option<u64>,
    fragment_offset: Option<u64>,
    more_fragments: Option<bool>,
    pub(super) system_init_ms: Option<u64>,
    section: Option<(u16, &'a [u8])>,
}

/// Element ids [`Fields::put`] reads (the fast path compiles only these).
pub(super) fn is_read(id: u16) -> bool {
    matches!(id & !REVERSE, 1 | 2 | 23 | 24 | 85 | 86)
        || matches!(
            id,
            4 | 6 | 7 | 8 | 11 | 12 | 21 | 22 | 27 | 28 | 34 | 48 | 50 | 60 | 88 | 150
                ..=153
                    | 160
                    | 197
                    | 231
                    | 232
                    | 233
                    | 298
                    | 299
                    | 302
                    | 305
                    | 306
                    | 309
                    | 310
                    | 311
                    | 313
                    | 315
        )
}

/// How the fast path must hand a field of this id and wire length to [`Fields::put`]
/// (None = a length the element cannot have: the template is not compiled).
pub(super) fn wire_kind(id: u16, len: u16) -> Option<Kind> {
    let var = len == 0xFFFF;
    let num = (1..=8).contains(&len);
    Some(match id {
        8 | 12 if len == 4 => Kind::V4,
        27 | 28 if len == 16 => Kind::V6,
        8 | 12 | 27 | 28 => return None,
        311 if len == 4 => Kind::F32,
        311 if len == 8 => Kind::F64,
        311 => return None,
        313 | 315 => Kind::Bytes,
        _ if num => Kind::Uint,
        _ if var => Kind::Skip,
        _ => return None,
    })
}

/// How the fast path reads a compiled field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Uint,
    V4,
    V6,
    F32,
    F64,
    Bytes,
    Skip,
}

impl<'a> Fields<'a> {
    /// Takes one field. Repeated counters and addresses keep their first value; for
    /// everything else the last one wins.
    pub(super) fn put(&mut self, id: u16, v: Value<'a>) {
        let keep = |slot: &mut Option<u64>, v: Value| {
            if slot.is_none() {
                *slot = v.uint();
            }
        };
        match id {
            1 => keep(&mut self.bytes[0], v),
            23 => keep(&mut self.bytes[1], v),
            85 => keep(&mut self.bytes[2], v),
            2 => keep(&mut self.packets[0], v),
            24 => keep(&mut self.packets[1], v),
            86 => keep(&mut self.packets[2], v),
            x if x == REVERSE | 1 => keep(&mut self.rev_bytes[0], v),
            x if x == REVERSE | 23 => keep(&mut self.rev_bytes[1], v),
            x if x == REVERSE | 85 => keep(&mut self.rev_bytes[2], v),
            x if x == REVERSE | 2 => keep(&mut self.rev_packets[0], v),
            x if x == REVERSE | 24 => keep(&mut self.rev_packets[1], v),
            x if x == REVERSE | 86 => keep(&mut self.rev_packets[2], v),
            231 | 232 | 298 | 299 => self.nsel = true,
            233 => self.firewall_event = v.uint().map(|x| x as u8),
            4 => self.protocol = v.uint().map(|x| x as u8),
            6 => self.tcp_flags = v.uint().map(|x| x as u8),
            7 => self.src_port = v.uint().map(|x| x as u16),
            11 => self.dst_port = v.uint().map(|x| x as u16),
            8 | 12 | 27 | 28 => self.put_addr(id, v),
            60 => self.ip_version = v.uint().map(|x| x as u8),
            22 => self.first = v.uint(),
            21 => self.last = v.uint(),
            // flowStart/EndSeconds are seconds on the wire (the crate's `as_u64` already
            // gives ms, and its path hands them over converted).
            150..=153 => {
                let ms = v.uint();
                if id == 150 || id == 152 {
                    self.start_abs_ms = ms;
                } else {
                    self.end_abs_ms = ms;
                }
            }
            34 => self.sampling_interval = v.uint(),
            50 => self.sampler_random_interval = v.uint(),
            305 => self.packet_interval = v.uint(),
            306 => self.packet_space = v.uint(),
            309 => self.sampling_size = v.uint(),
            310 => self.sampling_population = v.uint(),
            311 => {
                self.sampling_probability = match v {
                    Value::Float(p) => Some(p),
                    _ => None,
                }
            }
            48 | 302 => self.sampler_id = v.uint(),
            88 => self.fragment_offset = v.uint(),
            // fragmentFlags: "more fragments" as netflow_parser reads it (0x04), so both
            // paths agree.
            197 => self.more_fragments = v.uint().map(|x| x & 0x04 != 0),
            160 => self.system_init_ms = v.uint(),
            313 | 315 => {
                if let Value::Bytes(b) = v {
                    self.section = Some((id, b));
                }
            }
            _ => {}
        }
    }

    fn put_addr(&mut self, id: u16, v: Value) {
        match (id, v) {
            (8, Value::V4(a)) if self.src4.is_none() => self.src4 = Some(a),
            (12, Value::V4(a)) if self.dst4.is_none() => self.dst4 = Some(a),
            (27, Value::V6(a)) if self.src6.is_none() => self.src6 = Some(a),
            (28, Value::V6(a)) if self.dst6.is_none() => self.dst6 = Some(a),
            _ => {}
        }
    }

    /// Sampling rate (1 in N) this record announces, if any, in whichever RFC 5477 /
    /// Cisco form it uses.
    pub(super) fn sampling_rate(&self) -> Option<u32> {
        let clamp = |n: u64| (n >= 1).then(|| n.min(u64::from(u32::MAX)) as u32);
        if let Some(n) = self.sampling_interval.or(self.sampler_random_interval) {
            if let Some(r) = clamp(n) {
                return Some(r);
            }
        }
        // Systematic count-based: select `interval` packets, then skip `space` packets.
        if let Some(i) = self.packet_interval.filter(|i| *i > 0) {
            let n = i.saturating_add(self.packet_space.unwrap_or(0));
            return clamp(div_round(n, i));
        }
        // Random n-out-of-N: `size` packets drawn from each `population`.
        if let (Some(n), Some(pop)) = (
            self.sampling_size.filter(|n| *n > 0),
            self.sampling_population,
        ) {
            return clamp(div_round(pop, n));
        }
        if let Some(p) = self.sampling_probability.filter(|p| *p > 0.0 && *p <= 1.0) {
            return clamp((1.0 / p).round() as u64);
        }
        None
    }

    /// The record's addresses by the family rule in the module doc.
    fn addresses(&self) -> Option<(IpAddr, IpAddr)> {
        let four = (self.src4.is_some() || self.dst4.is_some()).then(|| {
            let s = self.src4.unwrap_or(Ipv4Addr::UNSPECIFIED);
            let d = self.dst4.unwrap_or(Ipv4Addr::UNSPECIFIED);
            (
                IpAddr::V4(s),
                IpAddr::V4(d),
                !(s.is_unspecified() && d.is_unspecified()),
            )
        });
        let six = (self.src6.is_some() || self.dst6.is_some()).then(|| {
            let s = self.src6.unwrap_or(Ipv6Addr::UNSPECIFIED);
            let d = self.dst6.unwrap_or(Ipv6Addr::UNSPECIFIED);
            (
                IpAddr::V6(s),
                IpAddr::V6(d),
                !(s.is_unspecified() && d.is_unspecified()),
            )
        });
        let pick = match (four, six) {
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => match (a.2, b.2) {
                (true, true) if self.ip_version == Some(6) => b,
                (false, true) => b,
                _ => a,
            },
            (None, None) => return None,
        };
        // One family's address alone is half a flow: it has no destination or source.
        let whole = match pick.0 {
            IpAddr::V4(_) => self.src4.is_some() && self.dst4.is_some(),
            IpAddr::V6(_) => self.src6.is_some() && self.dst6.is_some(),
        };
        whole.then_some((pick.0, pick.1))
    }

    /// The records this one stands for at sampling rate `rate`: the flow itself and, for
    /// an RFC 5103 biflow record with reverse traffic and `reverse` on, the reverse
    /// direction.
    pub(super) fn records(
        &self,
        rate: u32,
        reverse: bool,
        out: &mut Vec<FlowRecord>,
    ) -> Result<(), Skip> {
        let rate64 = u64::from(rate);
        if let Some((id, bytes)) = self.section {
            return self.section_record(id, bytes, rate, out);
        }
        let (src, dst) = self.addresses().ok_or(Skip::NoAddress)?;
        let mut flows = 1;
        if self.nsel && first(&self.packets).is_none() && first(&self.bytes).is_none() {
            // Cisco NSEL event: 1 = created, 3 = denied count the connection; 2 =
            // deleted, 4 = alert, 5 = update repeat a connection already counted.
            flows = u32::from(matches!(self.firewall_event, None | Some(1) | Some(3)));
        }
        let mut r = FlowRecord {
            src,
            dst,
            src_port: self.src_port.unwrap_or(0),
            dst_port: self.dst_port.unwrap_or(0),
            protocol: self.protocol.unwrap_or(0),
            tcp_flags: self.tcp_flags.unwrap_or(0),
            packets: first(&self.packets).unwrap_or(0).saturating_mul(rate64),
            bytes: first(&self.bytes).unwrap_or(0).saturating_mul(rate64),
            flows,
            ..FlowRecord::default()
        };
        r.fragment = self.more_fragments == Some(true)
            || self.fragment_offset.is_some_and(|o| o > 0)
            || ports_zero_fragment(&r);
        out.push(r);
        let (rp, rb) = (first(&self.rev_packets), first(&self.rev_bytes));
        if reverse && (rp.unwrap_or(0) > 0 || rb.unwrap_or(0) > 0) {
            out.push(FlowRecord {
                src: r.dst,
                dst: r.src,
                src_port: r.dst_port,
                dst_port: r.src_port,
                packets: rp.unwrap_or(0).saturating_mul(rate64),
                bytes: rb.unwrap_or(0).saturating_mul(rate64),
                // The biflow is one flow, already counted forward.
                flows: 0,
                ..r
            });
        }
        Ok(())
    }

    fn section_record(
        &self,
        id: u16,
        bytes: &[u8],
        rate: u32,
        out: &mut Vec<FlowRecord>,
    ) -> Result<(), Skip> {
        let start = match id {
            315 => HeaderStart::Ethernet,
            _ => match bytes.first().map(|b| b >> 4) {
                Some(6) => HeaderStart::Ipv6,
                _ => HeaderStart::Ipv4,
            },
        };
        let h = decode_header(start, bytes).ok_or(Skip::BadSection)?;
        out.push(FlowRecord {
            src: h.src,
            dst: h.dst,
            src_port: h.src_port,
            dst_port: h.dst_port,
            protocol: h.protocol,
            tcp_flags: h.tcp_flags,
            fragment: h.fragment,
            packets: u64::from(rate),
            bytes: u64::from(h.ip_len) * u64::from(rate),
            // A sampled packet, like an sFlow sample: no flow count of its own.
            flows: 0,
            ..FlowRecord::default()
        });
        Ok(())
    }
}

fn div_round(n: u64, d: u64) -> u64 {
    n.saturating_add(d / 2) / d
}

pub(super) fn ports_zero_fragment(r: &FlowRecord) -> bool {
    (r.protocol == PROTO_TCP || r.protocol == PROTO_UDP) && r.src_port == 0 && r.dst_port == 0
}
