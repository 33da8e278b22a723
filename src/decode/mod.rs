//! Decode stage: exported datagrams → [`FlowRecord`]s.
//!
//! Owns per-exporter decoding state (NetFlow v9/IPFIX templates, learned sampling rates
//! per exporter scope and sampler, IPFIX system-init times) and nothing else: it does no
//! I/O. Callers pass the datagram and its source address; records come out with packets
//! and bytes already scaled by the sampling rate in force. The only clock read is the
//! idle-scope bookkeeping of `NetflowDecoder` (`prune_idle` and the crate's LRU).
//!
//! Bad input never panics: a datagram that fails part-way yields the records decoded
//! before the failure plus an error kind, which the caller counts.

mod fast;
mod fields;
pub mod netflow;
pub mod packet;
pub mod sflow;

use std::net::{IpAddr, Ipv4Addr};

pub use netflow::NetflowDecoder;
pub use sflow::SflowDecoder;

/// One flow record or flow sample, protocol-neutral.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowRecord {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6, ...).
    pub protocol: u8,
    /// TCP flags (OR of all packets of a NetFlow record; one packet's for sFlow).
    pub tcp_flags: u8,
    /// The packets are IP fragments (see `netflow` and `sflow` for how each knows).
    pub fragment: bool,
    /// Packets, scaled by the sampling rate.
    pub packets: u64,
    /// Bytes (IP length), scaled by the sampling rate.
    pub bytes: u64,
    /// Flow records this stands for: 1 for a NetFlow/IPFIX record, 0 for an sFlow sample
    /// (sFlow has no notion of flows).
    pub flows: u32,
    /// How long before the datagram was exported the flow's last packet was seen, in ms,
    /// by the exporter's own clock (immune to its clock skew). Decoded, but rates count a
    /// record on arrival: see `aggregate::rate::place` for why.
    pub end_age_ms: u32,
    /// first..last switched span in ms (0 for sFlow samples and one-packet flows).
    pub duration_ms: u32,
}

impl Default for FlowRecord {
    fn default() -> Self {
        FlowRecord {
            src: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            src_port: 0,
            dst_port: 0,
            protocol: 0,
            tcp_flags: 0,
            fragment: false,
            packets: 0,
            bytes: 0,
            flows: 0,
            end_age_ms: 0,
            duration_ms: 0,
        }
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

impl FlowRecord {
    /// SYN without ACK: a connection attempt that never completed.
    pub fn is_syn(&self) -> bool {
        self.protocol == PROTO_TCP && self.tcp_flags & TCP_SYN != 0 && self.tcp_flags & TCP_ACK == 0
    }

    /// TCP or UDP with both ports zero: a non-first fragment (it has no transport
    /// header), as flow exporters that carry no fragment fields report it.
    #[inline]
    pub(crate) fn ports_zero_fragment(&self) -> bool {
        (self.protocol == PROTO_TCP || self.protocol == PROTO_UDP)
            && self.src_port == 0
            && self.dst_port == 0
    }
}

/// Protocol version of a datagram, as labelled in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V5,
    V9,
    Ipfix,
    Sflow5,
    Unknown,
}

impl Version {
    pub fn label(self) -> &'static str {
        match self {
            Version::V5 => "v5",
            Version::V9 => "v9",
            Version::Ipfix => "ipfix",
            Version::Sflow5 => "sflow5",
            Version::Unknown => "unknown",
        }
    }

    /// Recognises the export protocol from the first bytes of a UDP payload.
    pub fn sniff(payload: &[u8]) -> Version {
        if payload.len() >= 4 && payload[..4] == [0, 0, 0, 5] {
            return Version::Sflow5;
        }
        match payload.get(..2) {
            Some([0, 5]) => Version::V5,
            Some([0, 9]) => Version::V9,
            Some([0, 10]) => Version::Ipfix,
            _ => Version::Unknown,
        }
    }
}

/// Why (part of) a datagram was not decoded; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeErrorKind {
    Truncated,
    BadVersion,
    Malformed,
    UnsupportedHeader,
}

impl DecodeErrorKind {
    pub fn label(self) -> &'static str {
        match self {
            DecodeErrorKind::Truncated => "truncated",
            DecodeErrorKind::BadVersion => "bad_version",
            DecodeErrorKind::Malformed => "malformed",
            DecodeErrorKind::UnsupportedHeader => "unsupported_header",
        }
    }
}

/// What decoding one datagram produced besides the records themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeOutcome {
    pub version: Option<Version>,
    pub records: usize,
    /// Data flowsets that arrived before their template (v9/IPFIX).
    pub template_misses: usize,
    /// sFlow counter samples (counted, not used).
    pub counter_samples: usize,
    /// Records not counted as traffic inside an otherwise good datagram, by reason.
    pub skips: Skips,
    pub error: Option<DecodeErrorKind>,
    /// Sampling rate applied to this datagram's records (the last one, if several).
    pub sampling_rate: Option<u32>,
}

/// Why a record (or, before its template, a data set) was not counted as traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// v9/IPFIX data set before its template, or of a template that was refused (one
    /// per set: without the template its records cannot be told apart).
    NoTemplate,
    /// No source and destination address of one family (e.g. a layer-2-only record).
    NoAddress,
    /// A record kind flowguard does not read (an sFlow header protocol other than
    /// Ethernet, IPv4 or IPv6).
    Unsupported,
    /// A sampled header (sFlow, or an IPFIX packet section) that could not be read.
    BadHeader,
    /// Options data (sampling, interface tables): read for its settings, not traffic.
    Options,
}

impl SkipReason {
    pub const ALL: [SkipReason; 5] = [
        SkipReason::NoTemplate,
        SkipReason::NoAddress,
        SkipReason::Unsupported,
        SkipReason::BadHeader,
        SkipReason::Options,
    ];

    pub fn label(self) -> &'static str {
        match self {
            SkipReason::NoTemplate => "no_template",
            SkipReason::NoAddress => "no_address",
            SkipReason::Unsupported => "unsupported",
            SkipReason::BadHeader => "bad_header",
            SkipReason::Options => "options",
        }
    }
}

/// Skipped records by [`SkipReason`] (index = discriminant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skips(pub [u64; 5]);

impl Skips {
    pub fn add(&mut self, r: SkipReason, n: u64) {
        self.0[r as usize] += n;
    }

    pub fn get(&self, r: SkipReason) -> u64 {
        self.0[r as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    pub fn merge(&mut self, o: &Skips) {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
    }
}

/// Sampling rates from config: overrides, applied before anything learned from the wire,
/// and a fallback, applied only when the exporter announced no rate at all.
#[derive(Debug, Clone, Default)]
pub struct SamplingOverrides {
    pub collector: Option<u32>,
    pub per_exporter: std::collections::HashMap<IpAddr, u32>,
    /// Used only for records whose exporter announced no rate (FastNetMon's
    /// `netflow_sampling_ratio` has this meaning).
    pub fallback: Option<u32>,
}

impl SamplingOverrides {
    pub fn for_exporter(&self, exporter: IpAddr) -> Option<u32> {
        self.per_exporter.get(&exporter).copied().or(self.collector)
    }

    /// What applies to `exporter`, looked up once (per datagram, not per record).
    pub fn exporter(&self, exporter: IpAddr) -> ExporterSampling {
        ExporterSampling {
            fixed: self.for_exporter(exporter),
            fallback: self.fallback,
        }
    }

    /// The rate in force for `exporter` (see [`ExporterSampling::resolve`]).
    pub fn resolve(&self, exporter: IpAddr, announced: Option<u32>) -> u32 {
        self.exporter(exporter).resolve(|| announced)
    }
}

/// One exporter's sampling configuration.
#[derive(Debug, Clone, Copy)]
pub struct ExporterSampling {
    fixed: Option<u32>,
    fallback: Option<u32>,
}

impl ExporterSampling {
    /// The rate in force: an override, else what the exporter announced (asked only
    /// when no override applies), else the fallback, else 1 (never 0).
    pub fn resolve(&self, announced: impl FnOnce() -> Option<u32>) -> u32 {
        self.fixed
            .or_else(|| announced().filter(|r| *r > 0))
            .or(self.fallback)
            .unwrap_or(1)
            .max(1)
    }
}

/// Big-endian u16 at byte `o` of `b`, if it is all there.
pub(crate) fn be16(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        b.get(o..o.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Big-endian u32 at byte `o` of `b`, if it is all there.
pub(crate) fn be32(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        b.get(o..o.checked_add(4)?)?.try_into().ok()?,
    ))
}

/// The exporter address as flowguard keys it: an IPv4 exporter that reached a
/// dual-stack (`[::]`) socket arrives as `::ffff:a.b.c.d` and is the IPv4 exporter.
pub fn canonical(a: std::net::SocketAddr) -> std::net::SocketAddr {
    match a {
        std::net::SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => std::net::SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}
