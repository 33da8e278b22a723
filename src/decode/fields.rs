//! The information elements of one v9/IPFIX record that flowguard reads, and the rules
//! that turn them into [`FlowRecord`]s. Both decoders (the crate path in
//! [`super::netflow`] and the byte-level path in [`super::fast`]) fill a [`Fields`]
//! through one map of element ids to meanings ([`meaning`]; the fast path applies it once
//! per template, the crate path per field in [`Fields::put`]) and one set of setters, so
//! every precedence rule lives here once:
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
use super::FlowRecord;

/// Element ids of RFC 5103 reverse elements (PEN 29305) are the forward id with this bit.
pub(super) const REVERSE: u16 = 0x8000;

/// One field's value as the crate path hands it over.
#[derive(Debug, Clone, Copy)]
pub(super) enum Value<'a> {
    Uint(u64),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Float(f64),
    Bytes(&'a [u8]),
}

/// Which record kinds are not traffic, for the skipped-records counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// No source or destination address of one family.
    NoAddress,
    /// A packet section whose header could not be read.
    BadSection,
}

/// What a field means to flowguard: one slot of [`Fields`]. The fast path resolves an
/// element id to its meaning once, when it compiles a template, so that a record's field
/// is stored with no dispatch on the id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Ie {
    // Counters, keep-first, in precedence order per kind: delta, post, total.
    Bytes,
    PostBytes,
    TotalBytes,
    Packets,
    PostPackets,
    TotalPackets,
    RevBytes,
    RevPostBytes,
    RevTotalBytes,
    RevPackets,
    RevPostPackets,
    RevTotalPackets,
    // Addresses, keep-first (IPv4 in `nums`, IPv6 in `v6`).
    Src4,
    Dst4,
    Src6,
    Dst6,
    // Everything else: the last one wins.
    Protocol,
    TcpFlags,
    SrcPort,
    DstPort,
    IpVersion,
    First,
    Last,
    StartAbsMs,
    EndAbsMs,
    SamplingInterval,
    SamplerRandomInterval,
    PacketInterval,
    PacketSpace,
    SamplingSize,
    SamplingPopulation,
    /// `f64` bits.
    SamplingProbability,
    /// v9 FLOW_SAMPLER_ID / IPFIX samplerId (48) or selectorId (302).
    SamplerId,
    FragmentOffset,
    /// fragmentFlags as on the wire.
    FragmentFlags,
    SystemInitMs,
    FirewallEvent,
    /// Any of the NSEL initiator/responder counters was present.
    Nsel,
    /// A packet section (313 or 315, told apart by `section_id`).
    Section,
}

const fn bit(ie: Ie) -> u64 {
    1 << ie as u8
}

/// Counters and addresses keep their first value when a template repeats them.
const KEEP_FIRST: u64 = (bit(Ie::Dst6) << 1) - 1;
const SAMPLING: u64 = bit(Ie::SamplingInterval)
    | bit(Ie::SamplerRandomInterval)
    | bit(Ie::PacketInterval)
    | bit(Ie::SamplingSize)
    | bit(Ie::SamplingProbability);
const FOUR: u64 = bit(Ie::Src4) | bit(Ie::Dst4);
const SIX: u64 = bit(Ie::Src6) | bit(Ie::Dst6);
const REV_COUNTERS: u64 = ((bit(Ie::RevTotalPackets) << 1) - 1) & !((bit(Ie::RevBytes)) - 1);

/// What element `id` (with [`REVERSE`] for a reverse element) means, if flowguard reads
/// it.
pub(super) fn meaning(id: u16) -> Option<Ie> {
    use Ie::*;
    Some(match id {
        1 => Bytes,
        23 => PostBytes,
        85 => TotalBytes,
        2 => Packets,
        24 => PostPackets,
        86 => TotalPackets,
        x if x == REVERSE | 1 => RevBytes,
        x if x == REVERSE | 23 => RevPostBytes,
        x if x == REVERSE | 85 => RevTotalBytes,
        x if x == REVERSE | 2 => RevPackets,
        x if x == REVERSE | 24 => RevPostPackets,
        x if x == REVERSE | 86 => RevTotalPackets,
        8 => Src4,
        12 => Dst4,
        27 => Src6,
        28 => Dst6,
        4 => Protocol,
        6 => TcpFlags,
        7 => SrcPort,
        11 => DstPort,
        60 => IpVersion,
        22 => First,
        21 => Last,
        // flowStart/EndSeconds (150/151) are seconds on the wire: the crate's `as_u64`
        // already gives ms, and the fast path scales them (`Kind::Secs`).
        150 | 152 => StartAbsMs,
        151 | 153 => EndAbsMs,
        34 => SamplingInterval,
        50 => SamplerRandomInterval,
        305 => PacketInterval,
        306 => PacketSpace,
        309 => SamplingSize,
        310 => SamplingPopulation,
        311 => SamplingProbability,
        48 | 302 => SamplerId,
        88 => FragmentOffset,
        197 => FragmentFlags,
        160 => SystemInitMs,
        233 => FirewallEvent,
        231 | 232 | 298 | 299 => Nsel,
        313 | 315 => Section,
        _ => return None,
    })
}

/// Element ids [`Fields`] reads (the fast path compiles only these).
pub(super) fn is_read(id: u16) -> bool {
    meaning(id).is_some()
}

/// How the fast path must read a field of this id and wire length (None = a length the
/// element cannot have: the template is not compiled).
pub(super) fn wire_kind(id: u16, len: u16) -> Option<Kind> {
    Some(match (id, len) {
        (8 | 12, 4) => Kind::U32,
        (27 | 28, 16) => Kind::V6,
        (8 | 12 | 27 | 28, _) => return None,
        (311, 4) => Kind::F32,
        (311, 8) => Kind::F64,
        (311, _) => return None,
        (313 | 315, _) => Kind::Bytes,
        (150 | 151, 1..=8) => Kind::Secs,
        (_, 1) => Kind::U8,
        (_, 2) => Kind::U16,
        (_, 4) => Kind::U32,
        (_, 8) => Kind::U64,
        (_, 1..=8) => Kind::Uint,
        (_, 0xFFFF) => Kind::Skip,
        _ => return None,
    })
}

/// How the fast path reads a compiled field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Unsigned integers of the common widths, each read as one load.
    U8,
    U16,
    U32,
    U64,
    /// An unsigned integer of another width (3, 5, 6 or 7 bytes: RFC 7011 §6.2).
    Uint,
    /// Seconds on the wire, stored in ms.
    Secs,
    V6,
    F32,
    F64,
    Bytes,
    Skip,
}

/// Slots of [`Fields::nums`], one per meaning so that indexing by an [`Ie`] needs no
/// bounds check (the IPv6 addresses' and the section's slots are unused).
const NUMS: usize = Ie::Section as usize + 1;

/// The fields of one v9/IPFIX record that flowguard reads. A field is present when its
/// bit in `set` is; the value slots of absent fields hold stale data, so that clearing a
/// record for reuse is one store (the fast path reuses one `Fields` for a whole set).
#[derive(Debug, Clone)]
pub(super) struct Fields<'a> {
    set: u64,
    nums: [u64; NUMS],
    v6: [[u8; 16]; 2],
    section_id: u16,
    section: &'a [u8],
}

impl Default for Fields<'_> {
    fn default() -> Self {
        Fields {
            set: 0,
            nums: [0; NUMS],
            v6: [[0; 16]; 2],
            section_id: 0,
            section: &[],
        }
    }
}

impl<'a> Fields<'a> {
    /// Forgets every field (the value slots are left as they are: `set` says what holds).
    #[inline]
    pub(super) fn clear(&mut self) {
        self.set = 0;
    }

    #[inline]
    fn has(&self, ie: Ie) -> bool {
        self.set & bit(ie) != 0
    }

    #[inline]
    pub(super) fn get(&self, ie: Ie) -> Option<u64> {
        self.has(ie).then(|| self.nums[ie as usize])
    }

    /// Stores a numeric field (an IPv4 address as its u32). Repeated counters and
    /// addresses keep their first value; for everything else the last one wins.
    #[inline]
    pub(super) fn put_uint(&mut self, ie: Ie, n: u64) {
        let b = bit(ie);
        if self.set & b & KEEP_FIRST != 0 {
            return;
        }
        self.nums[ie as usize] = n;
        self.set |= b;
    }

    #[inline]
    pub(super) fn put_v6(&mut self, ie: Ie, a: [u8; 16]) {
        let i = match ie {
            Ie::Src6 => 0,
            Ie::Dst6 => 1,
            _ => return,
        };
        if !self.has(ie) {
            self.v6[i] = a;
            self.set |= bit(ie);
        }
    }

    #[inline]
    pub(super) fn put_float(&mut self, ie: Ie, p: f64) {
        self.put_uint(ie, p.to_bits());
    }

    #[inline]
    pub(super) fn put_section(&mut self, id: u16, b: &'a [u8]) {
        self.section_id = id;
        self.section = b;
        self.set |= bit(Ie::Section);
    }

    /// Takes one field as the crate decoded it. A value of another type than the element
    /// has is not read (and, for a last-wins element, forgets an earlier one).
    pub(super) fn put(&mut self, id: u16, v: Value<'a>) {
        let Some(ie) = meaning(id) else {
            return;
        };
        match (ie, v) {
            (Ie::Nsel, _) => self.set |= bit(Ie::Nsel),
            (Ie::Src4 | Ie::Dst4, Value::V4(a)) => self.put_uint(ie, u64::from(u32::from(a))),
            (Ie::Src6 | Ie::Dst6, Value::V6(a)) => self.put_v6(ie, a.octets()),
            (Ie::Src4 | Ie::Dst4 | Ie::Src6 | Ie::Dst6, _) => {}
            (Ie::Section, Value::Bytes(b)) => self.put_section(id, b),
            (Ie::Section, _) => {}
            (Ie::SamplingProbability, Value::Float(p)) => self.put_float(ie, p),
            (_, Value::Uint(n)) if ie != Ie::SamplingProbability => self.put_uint(ie, n),
            _ => self.set &= !(bit(ie) & !KEEP_FIRST),
        }
    }

    pub(super) fn sampler_id(&self) -> Option<u64> {
        self.get(Ie::SamplerId)
    }

    pub(super) fn system_init_ms(&self) -> Option<u64> {
        self.get(Ie::SystemInitMs)
    }

    pub(super) fn first(&self) -> Option<u64> {
        self.get(Ie::First)
    }

    pub(super) fn last(&self) -> Option<u64> {
        self.get(Ie::Last)
    }

    pub(super) fn start_abs_ms(&self) -> Option<u64> {
        self.get(Ie::StartAbsMs)
    }

    pub(super) fn end_abs_ms(&self) -> Option<u64> {
        self.get(Ie::EndAbsMs)
    }

    /// The first of the delta, post and total counters starting at `delta`.
    #[inline]
    fn counter(&self, delta: Ie) -> Option<u64> {
        let d = delta as usize;
        let three = (self.set >> d) & 0b111;
        match three.trailing_zeros() {
            k @ 0..=2 => Some(self.nums[d + k as usize]),
            _ => None,
        }
    }

    /// Sampling rate (1 in N) this record announces, if any, in whichever RFC 5477 /
    /// Cisco form it uses.
    pub(super) fn sampling_rate(&self) -> Option<u32> {
        if self.set & SAMPLING == 0 {
            return None;
        }
        let clamp = |n: u64| (n >= 1).then(|| n.min(u64::from(u32::MAX)) as u32);
        if let Some(n) = self
            .get(Ie::SamplingInterval)
            .or(self.get(Ie::SamplerRandomInterval))
        {
            if let Some(r) = clamp(n) {
                return Some(r);
            }
        }
        // Systematic count-based: select `interval` packets, then skip `space` packets.
        if let Some(i) = self.get(Ie::PacketInterval).filter(|i| *i > 0) {
            let n = i.saturating_add(self.get(Ie::PacketSpace).unwrap_or(0));
            return clamp(div_round(n, i));
        }
        // Random n-out-of-N: `size` packets drawn from each `population`.
        if let (Some(n), Some(pop)) = (
            self.get(Ie::SamplingSize).filter(|n| *n > 0),
            self.get(Ie::SamplingPopulation),
        ) {
            return clamp(div_round(pop, n));
        }
        if let Some(p) = self
            .get(Ie::SamplingProbability)
            .map(f64::from_bits)
            .filter(|p| *p > 0.0 && *p <= 1.0)
        {
            return clamp((1.0 / p).round() as u64);
        }
        None
    }

    fn v4(&self, ie: Ie) -> Ipv4Addr {
        Ipv4Addr::from(self.get(ie).unwrap_or(0) as u32)
    }

    fn v6(&self, ie: Ie) -> Ipv6Addr {
        let i = usize::from(ie == Ie::Dst6);
        Ipv6Addr::from(if self.has(ie) { self.v6[i] } else { [0; 16] })
    }

    /// The record's addresses by the family rule in the module doc.
    #[inline]
    fn addresses(&self) -> Option<(IpAddr, IpAddr)> {
        let (four, six) = (self.set & FOUR, self.set & SIX);
        // The common case: one family, both addresses.
        if four == FOUR && six == 0 {
            return Some((IpAddr::V4(self.v4(Ie::Src4)), IpAddr::V4(self.v4(Ie::Dst4))));
        }
        let pair4 = || (IpAddr::V4(self.v4(Ie::Src4)), IpAddr::V4(self.v4(Ie::Dst4)));
        let pair6 = || (IpAddr::V6(self.v6(Ie::Src6)), IpAddr::V6(self.v6(Ie::Dst6)));
        let set = |(s, d): (IpAddr, IpAddr)| !(s.is_unspecified() && d.is_unspecified());
        let (pick, whole) = match (four != 0, six != 0) {
            (true, false) => (pair4(), four == FOUR),
            (false, true) => (pair6(), six == SIX),
            (true, true) => {
                let (a, b) = (pair4(), pair6());
                match (set(a), set(b)) {
                    (true, true) if self.get(Ie::IpVersion).map(|v| v as u8) == Some(6) => {
                        (b, six == SIX)
                    }
                    (false, true) => (b, six == SIX),
                    _ => (a, four == FOUR),
                }
            }
            (false, false) => return None,
        };
        // One family's address alone is half a flow: it has no destination or source.
        whole.then_some(pick)
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
        if self.has(Ie::Section) {
            return self.section_record(rate, out);
        }
        let (src, dst) = self.addresses().ok_or(Skip::NoAddress)?;
        let (packets, bytes) = (self.counter(Ie::Packets), self.counter(Ie::Bytes));
        let mut flows = 1;
        if self.has(Ie::Nsel) && packets.is_none() && bytes.is_none() {
            // Cisco NSEL event: 1 = created, 3 = denied count the connection; 2 =
            // deleted, 4 = alert, 5 = update repeat a connection already counted.
            let event = self.get(Ie::FirewallEvent).map(|e| e as u8);
            flows = u32::from(matches!(event, None | Some(1) | Some(3)));
        }
        let small = |ie: Ie| self.get(ie).unwrap_or(0);
        let mut r = FlowRecord {
            src,
            dst,
            src_port: small(Ie::SrcPort) as u16,
            dst_port: small(Ie::DstPort) as u16,
            protocol: small(Ie::Protocol) as u8,
            tcp_flags: small(Ie::TcpFlags) as u8,
            packets: packets.unwrap_or(0).saturating_mul(rate64),
            bytes: bytes.unwrap_or(0).saturating_mul(rate64),
            flows,
            ..FlowRecord::default()
        };
        // fragmentFlags: "more fragments" as netflow_parser reads it (0x04), so both
        // paths agree.
        r.fragment = self.get(Ie::FragmentFlags).is_some_and(|x| x & 0x04 != 0)
            || self.get(Ie::FragmentOffset).is_some_and(|o| o > 0)
            || r.ports_zero_fragment();
        out.push(r);
        if reverse && self.set & REV_COUNTERS != 0 {
            let (rp, rb) = (self.counter(Ie::RevPackets), self.counter(Ie::RevBytes));
            if rp.unwrap_or(0) > 0 || rb.unwrap_or(0) > 0 {
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
        }
        Ok(())
    }

    fn section_record(&self, rate: u32, out: &mut Vec<FlowRecord>) -> Result<(), Skip> {
        let start = match self.section_id {
            315 => HeaderStart::Ethernet,
            _ => match self.section.first().map(|b| b >> 4) {
                Some(6) => HeaderStart::Ipv6,
                _ => HeaderStart::Ipv4,
            },
        };
        let h = decode_header(start, self.section).ok_or(Skip::BadSection)?;
        out.push(h.sampled(rate));
        Ok(())
    }
}

fn div_round(n: u64, d: u64) -> u64 {
    n.saturating_add(d / 2) / d
}
