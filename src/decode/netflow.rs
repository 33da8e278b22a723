//! NetFlow v5, v9 and IPFIX decoding on top of `netflow_parser`.
//!
//! Templates are scoped per exporter as RFC 3954 §5.1 / RFC 7011 §3.1 require (exporter
//! address + source id / observation domain) by the crate's `AutoScopedParser`, whose
//! exporter count is capped (LRU). This module adds what the crate leaves to us:
//! the sampling table learned from options data per exporter scope, IPFIX
//! `systemInitTimeMilliseconds` for sysUpTime-relative timestamps, and the mapping of a
//! record's fields onto a [`FlowRecord`].
//!
//! Data sets of templates already seen are read straight from the bytes
//! ([`super::fast`]), also inside datagrams the crate parses: the crate parses every
//! datagram that carries templates, options or a set the fast path does not know, and
//! stays the authority for options data (sampling) and for templates the fast path does
//! not compile; its records are used only for data sets of such templates. That way a
//! data set the crate refuses (an empty variable-length field, a v9 template with
//! variable-length fields) is still decoded, and zero padding after the last set is cut
//! before the crate sees it. What a record's fields mean is decided once, in
//! [`super::fields`].
//!
//! Hostile input: every cache here is bounded ([`NetflowLimits`]): exporter scopes (LRU,
//! plus [`NetflowDecoder::prune_idle`]), templates per scope, fields per template and the
//! record size a template may declare. Templates over a limit are refused and the
//! datagram counts as `malformed`. A template id re-announced with another layout simply
//! replaces the old one in that exporter's scope only. None of this can protect real
//! exporters from a spoofer who forges their address; the collector's allow-list keeps
//! everyone else away from the parser.
//!
//! Fragments: NetFlow has no per-packet view. A record counts as fragments when the
//! exporter says so (`fragmentFlags` with MF set, or a non-zero `fragmentOffset`), or
//! when a TCP/UDP record has both ports 0: exporters such as softflowd (and most routers)
//! file non-first fragments, which carry no L4 header, under ports 0/0.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use netflow_parser::variable_versions::field_value::FieldValue;
use netflow_parser::variable_versions::ipfix::lookup::IPFixField;
use netflow_parser::variable_versions::ipfix::{FlowSetBody as IpfixBody, IPFix};
use netflow_parser::variable_versions::v9::lookup::V9Field;
use netflow_parser::variable_versions::v9::{FlowSetBody as V9Body, V9};
use netflow_parser::{AutoScopedParser, NetflowError, NetflowPacket, NetflowParser};

use super::fast;
use super::fields::{Fields, Skip, Value, REVERSE};
use super::{
    be16, be32, DecodeErrorKind, DecodeOutcome, ExporterSampling, FlowRecord, SamplingOverrides,
    SkipReason, Version,
};

/// Largest end age we believe; more means a broken exporter clock, and the record is
/// treated as ending at export time.
const MAX_END_AGE_MS: u64 = 3_600_000;

/// The scope options data applies to: exporter address and source id / domain.
type ScopeKey = (IpAddr, u32);

/// Samplers (selectors) remembered per exporter scope; beyond it the oldest goes.
const MAX_SAMPLERS: usize = 64;

#[derive(Debug, Default, Clone)]
struct ScopeState {
    /// Rate announced by options data that names no sampler.
    sampling_rate: Option<u32>,
    /// Rates announced per sampler / selector id (v9 FLOW_SAMPLER_ID 48, IPFIX
    /// samplerId 48 / selectorId 302), at most [`MAX_SAMPLERS`].
    samplers: Vec<(u64, u32)>,
    /// IPFIX systemInitTimeMilliseconds (Unix ms).
    system_init_ms: Option<u64>,
}

impl ScopeState {
    /// Takes what one options record announces.
    fn learn(&mut self, f: &Fields) {
        if let Some(rate) = f.sampling_rate() {
            match f.sampler_id() {
                Some(id) => {
                    if let Some(s) = self.samplers.iter_mut().find(|s| s.0 == id) {
                        s.1 = rate;
                    } else {
                        if self.samplers.len() >= MAX_SAMPLERS {
                            self.samplers.remove(0);
                        }
                        self.samplers.push((id, rate));
                    }
                }
                None => self.sampling_rate = Some(rate),
            }
        }
        if let Some(init) = f.system_init_ms() {
            self.system_init_ms = Some(init);
        }
    }

    /// The rate options data announced for a record of `sampler` (None = the record
    /// names none). A named sampler gets its own rate; one whose options have not come
    /// yet gets none while other samplers are known (it may differ from all of them).
    /// A record that names none gets the scope's single announced rate, if there is
    /// exactly one.
    fn rate_for(&self, sampler: Option<u64>) -> Option<u32> {
        match sampler {
            Some(id) => match self.samplers.iter().find(|s| s.0 == id) {
                Some(s) => Some(s.1),
                None if self.samplers.is_empty() => self.sampling_rate,
                None => None,
            },
            None => {
                let mut rates = self
                    .sampling_rate
                    .into_iter()
                    .chain(self.samplers.iter().map(|s| s.1));
                let r = rates.next()?;
                rates.all(|x| x == r).then_some(r)
            }
        }
    }
}

/// What the data records of one exporter scope (address, source id / observation
/// domain) share: the configured sampling and the options data learned so far.
struct RecordContext<'s> {
    sampling: ExporterSampling,
    scope: Option<&'s ScopeState>,
}

impl RecordContext<'_> {
    /// Rate in force for a v9/IPFIX record: an override, else what the record itself
    /// announces, else what options data announced for its sampler, else the fallback.
    fn rate(&self, f: &Fields) -> u32 {
        self.sampling.resolve(|| {
            f.sampling_rate()
                .or_else(|| self.scope.and_then(|s| s.rate_for(f.sampler_id())))
        })
    }
}

/// Default cap on exporter scopes with template state (address + port + source id /
/// observation domain); the least recently used one is dropped beyond it.
pub const MAX_SOURCES: usize = 1_024;

/// Bounds on the template state one decoder keeps. Worst-case memory is about
/// `max_sources` × 4 caches × `templates_per_source` × `max_fields` × 24 bytes (IPFIX
/// fields; v9 fields take less): with the defaults, 1 024 × 4 × 64 × 128 × 24 B = 768 MiB
/// if a spoofer fills every slot, which is why collectors facing untrusted networks
/// should set `allowed_exporters`. Real exporters use a handful of templates of 10-80
/// fields: one exporter scope costs a few hundred KiB at most
/// (tests/hostile_templates.rs measures it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetflowLimits {
    /// Exporter scopes with template state (LRU beyond it).
    pub max_sources: usize,
    /// Templates per scope and template kind (LRU beyond it).
    pub templates_per_source: usize,
    /// Fields per template; larger templates are refused.
    pub max_fields: usize,
    /// Bytes of one record as a template declares it; larger templates are refused.
    pub max_record_bytes: usize,
}

impl Default for NetflowLimits {
    fn default() -> Self {
        NetflowLimits {
            max_sources: MAX_SOURCES,
            templates_per_source: 64,
            max_fields: 128,
            max_record_bytes: 4096,
        }
    }
}

pub struct NetflowDecoder {
    parser: AutoScopedParser,
    scopes: HashMap<ScopeKey, ScopeState>,
    overrides: SamplingOverrides,
    pub(super) fast: fast::FastTemplates,
    fast_enabled: bool,
    /// Count RFC 5103 reverse counters as the reverse direction's traffic.
    biflow_reverse: bool,
    limits: NetflowLimits,
    /// Exporters whose v5 datagrams took the fast path (the crate, which never saw them,
    /// does not count them); at most `limits.max_sources`.
    v5_sources: HashMap<SocketAddr, V5Source, ahash::RandomState>,
}

#[derive(Debug, Clone, Copy)]
struct V5Source {
    /// Sent since the last prune; `last_seen` is brought up to date by the prune, so the
    /// hot path needs no clock read.
    touched: bool,
    last_seen: Instant,
}

/// Header and record sizes of NetFlow v5 (fixed format).
const V5_HEADER: usize = 24;
const V5_RECORD: usize = 48;
/// Records per v5 datagram as the crate accepts them (Cisco's maximum).
const V5_MAX_RECORDS: usize = 30;

/// The fields of one v5 record that flowguard reads, from the crate or from the bytes.
struct V5Flow {
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    tcp_flags: u8,
    packets: u32,
    octets: u32,
    first: u32,
    last: u32,
}

impl V5Flow {
    fn of_crate(f: &netflow_parser::static_versions::v5::FlowSet) -> V5Flow {
        V5Flow {
            src: f.src_addr,
            dst: f.dst_addr,
            src_port: f.src_port,
            dst_port: f.dst_port,
            protocol: f.protocol_number,
            tcp_flags: f.tcp_flags,
            packets: f.d_pkts,
            octets: f.d_octets,
            first: f.first,
            last: f.last,
        }
    }

    /// From one 48-byte record (v5 layout: addresses at 0 and 4, packets 16, octets 20,
    /// first 24, last 28, ports 32 and 34, flags 37, protocol 38).
    fn of_bytes(b: &[u8; V5_RECORD]) -> V5Flow {
        let u32_at = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        V5Flow {
            src: u32_at(0).into(),
            dst: u32_at(4).into(),
            src_port: u16::from_be_bytes([b[32], b[33]]),
            dst_port: u16::from_be_bytes([b[34], b[35]]),
            protocol: b[38],
            tcp_flags: b[37],
            packets: u32_at(16),
            octets: u32_at(20),
            first: u32_at(24),
            last: u32_at(28),
        }
    }
}

impl NetflowDecoder {
    pub fn new(overrides: SamplingOverrides) -> Self {
        Self::with_limits(overrides, NetflowLimits::default())
    }

    /// A decoder with explicit cache bounds (zeros are raised to 1).
    pub fn with_limits(overrides: SamplingOverrides, limits: NetflowLimits) -> Self {
        let limits = NetflowLimits {
            max_sources: limits.max_sources.max(1),
            templates_per_source: limits.templates_per_source.max(1),
            max_fields: limits.max_fields.max(1),
            max_record_bytes: limits.max_record_bytes.max(1),
        };
        let builder = NetflowParser::builder()
            .with_cache_size(limits.templates_per_source)
            .with_max_field_count(limits.max_fields)
            .with_max_template_total_size(limits.max_record_bytes);
        // The builder only refuses zeros, which were raised above; should it ever refuse
        // anything else, fall back to the crate's own (also bounded) defaults rather than
        // fail to start a collector.
        let parser = AutoScopedParser::try_with_builder(builder)
            .and_then(|p| p.with_max_sources(limits.max_sources))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "netflow parser limits refused; using defaults");
                AutoScopedParser::new()
            });
        NetflowDecoder {
            parser,
            scopes: HashMap::new(),
            overrides,
            fast: fast::FastTemplates::new(fast::Limits {
                max_fields: limits.max_fields,
                max_record_bytes: limits.max_record_bytes,
            }),
            fast_enabled: true,
            biflow_reverse: false,
            limits,
            v5_sources: HashMap::default(),
        }
    }

    /// Switches the v9/IPFIX fast path off (every datagram through `netflow_parser`),
    /// for tests and benches that compare the two.
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_enabled = on;
    }

    /// Counts the reverse counters of RFC 5103 biflow records as traffic from the
    /// destination to the source (collector option `biflow_reverse`).
    pub fn set_biflow_reverse(&mut self, on: bool) {
        self.biflow_reverse = on;
    }

    /// Exporters whose v5 datagrams took the fast path.
    pub fn fast_v5_exporters(&self) -> usize {
        self.v5_sources.len()
    }

    /// Templates compiled for the fast path.
    pub fn fast_templates(&self) -> usize {
        self.fast.len()
    }

    pub fn limits(&self) -> NetflowLimits {
        self.limits
    }

    /// Forgets exporter scopes that sent nothing for `older_than` (their templates and
    /// learned sampling state); returns how many went. A returning exporter re-sends its
    /// templates within its refresh interval.
    pub fn prune_idle(&mut self, older_than: Duration) -> usize {
        let now = Instant::now();
        let before = self.v5_sources.len();
        self.v5_sources.retain(|_, s| {
            if std::mem::take(&mut s.touched) {
                s.last_seen = now;
            }
            now.duration_since(s.last_seen) < older_than
        });
        let n = before - self.v5_sources.len() + self.parser.prune_idle_sources(older_than);
        if n > 0 {
            let live: std::collections::HashSet<IpAddr> = self
                .parser
                .v9_info()
                .iter()
                .map(|(k, _)| k.addr.ip())
                .chain(self.parser.ipfix_info().iter().map(|(k, _)| k.addr.ip()))
                .chain(self.parser.legacy_info().iter().map(|(a, _)| a.ip()))
                .collect();
            self.scopes.retain(|(a, _), _| live.contains(a));
        }
        n
    }

    /// Exporters known: the crate's scopes (v9/IPFIX template state, v5 parsers; at most
    /// `max_sources`) plus v5 exporters only the fast path has seen (at most
    /// `max_sources` more, and only an address each).
    pub fn exporters(&self) -> usize {
        // A v5 exporter that sent odd datagrams through the crate is known to both.
        let legacy = self.parser.legacy_info();
        let fast_only = self
            .v5_sources
            .keys()
            .filter(|a| !legacy.iter().any(|(l, _)| **l == **a))
            .count();
        self.parser.source_count() + fast_only
    }

    /// Templates cached over all exporters.
    pub fn templates_known(&self) -> usize {
        let v9: usize = self
            .parser
            .v9_info()
            .iter()
            .map(|(_, i)| i.v9.current_size + i.ipfix.current_size)
            .sum();
        let ipfix: usize = self
            .parser
            .ipfix_info()
            .iter()
            .map(|(_, i)| i.v9.current_size + i.ipfix.current_size)
            .sum();
        v9 + ipfix
    }

    /// Templates cached per exporter address (all its ports and source ids / domains
    /// together): at most `max_sources` entries, like the scopes they come from.
    pub fn templates_by_exporter(&self) -> HashMap<IpAddr, usize> {
        let mut m: HashMap<IpAddr, usize> = HashMap::new();
        let v9 = self.parser.v9_info();
        let ipfix = self.parser.ipfix_info();
        let sizes = v9
            .iter()
            .map(|(k, i)| (k.addr.ip(), i.v9.current_size + i.ipfix.current_size))
            .chain(
                ipfix
                    .iter()
                    .map(|(k, i)| (k.addr.ip(), i.v9.current_size + i.ipfix.current_size)),
            );
        // The scopes are keyed by the canonical address the collector passed in.
        for (ip, n) in sizes {
            *m.entry(ip).or_default() += n;
        }
        m
    }

    /// The sampling rate for an exporter address: its override, else the largest
    /// scope-wide rate options data announced (any scope), else 1. Rates carried in records
    /// or v5 headers, per-sampler rates and the fallback are not looked at; the exporter
    /// metric takes each datagram's [`DecodeOutcome::sampling_rate`] instead.
    pub fn sampling_rate_of(&self, exporter: IpAddr) -> u32 {
        if let Some(r) = self.overrides.for_exporter(exporter) {
            return r;
        }
        self.scopes
            .iter()
            .filter(|((a, _), _)| *a == exporter)
            .filter_map(|(_, s)| s.sampling_rate)
            .max()
            .unwrap_or(1)
    }

    /// Decodes one datagram from `from`, appending records to `out`.
    pub fn decode(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<FlowRecord>,
    ) -> DecodeOutcome {
        // An IPv4 exporter reaching a dual-stack socket is the IPv4 exporter everywhere.
        let from = super::canonical(from);
        let mut oc = DecodeOutcome {
            version: Some(Version::sniff(payload)),
            ..DecodeOutcome::default()
        };
        if !matches!(oc.version, Some(Version::V5 | Version::V9 | Version::Ipfix)) {
            oc.error = Some(if payload.len() < 2 {
                DecodeErrorKind::Truncated
            } else {
                DecodeErrorKind::BadVersion
            });
            return oc;
        }
        let v = oc.version.unwrap_or(Version::Unknown);
        if self.fast_enabled && v == Version::V5 && self.try_v5(from, payload, out, &mut oc) {
            return oc;
        }
        if self.fast_enabled && v != Version::V5 && self.try_fast(from, payload, v, out, &mut oc) {
            return oc;
        }
        // Zero padding after the last set is not a set: the crate would refuse it.
        let payload =
            match fast::header(payload, v).map(|(start, _)| fast::unpadded_len(payload, start)) {
                Some(Some(n)) if n < payload.len() && v == Version::V9 => &payload[..n],
                _ => payload,
            };
        let result = self.parser.parse_from_source(from, payload);
        let refused = if self.fast_enabled && v != Version::V5 {
            // The crate saw this datagram's templates; the fast path learns them too.
            self.fast.learn(from, payload, v)
        } else {
            0
        };
        let before = out.len();
        for pkt in &result.packets {
            match pkt {
                NetflowPacket::V5(v5) => self.v5(from.ip(), v5, out, &mut oc),
                NetflowPacket::V9(v9) => self.v9(from, v9, out, &mut oc),
                NetflowPacket::IPFix(ipfix) => self.ipfix(from, ipfix, out, &mut oc),
                _ => oc.skips.add(SkipReason::Unsupported, 1),
            }
        }
        let mut whole = false;
        if self.fast_enabled && v != Version::V5 {
            whole = self.fast_sets_of_mixed(from, payload, v, &result.packets, out, &mut oc);
        }
        oc.records = out.len() - before;
        // The crate drops an IPFIX set it cannot use (e.g. a template over the limits)
        // without an error; count such a datagram as malformed all the same.
        if let [NetflowPacket::IPFix(msg)] = result.packets.as_slice() {
            if result.error.is_none() && msg.flowsets.len() < ipfix_set_count(payload) && !whole {
                oc.error = Some(DecodeErrorKind::Malformed);
            }
        }
        if let Some(e) = result.error {
            // The crate refuses things real exporters send (a zero-length variable field,
            // RFC 7011 §7); when every set was read here and no template was refused,
            // its error is about something decoded all the same.
            if !(whole && refused == 0) {
                oc.error = Some(match e {
                    NetflowError::Incomplete { .. } => DecodeErrorKind::Truncated,
                    NetflowError::UnsupportedVersion { .. } => DecodeErrorKind::BadVersion,
                    _ => DecodeErrorKind::Malformed,
                });
            }
        }
        if refused > 0 {
            oc.error = Some(DecodeErrorKind::Malformed);
        }
        oc
    }

    /// In a datagram the crate parsed (it carried templates or options, or a set the
    /// fast path did not know), the data sets of compiled templates are read from the
    /// bytes; the crate's records were used only for the others (see `v9`/`ipfix`).
    /// Returns whether every set of the datagram was accounted for without a fault.
    fn fast_sets_of_mixed(
        &self,
        from: SocketAddr,
        payload: &[u8],
        v: Version,
        packets: &[NetflowPacket],
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) -> bool {
        let Some((start, scope)) = fast::header(payload, v) else {
            return false;
        };
        let Some(sets) = fast::sets(payload, start) else {
            return false;
        };
        // Set ids the crate answered for (templates, options, data it decoded or could not).
        let crate_ids: Vec<u16> = packets
            .iter()
            .flat_map(|p| -> Vec<u16> {
                match p {
                    NetflowPacket::V9(m) => {
                        m.flowsets.iter().map(|f| f.header.flowset_id).collect()
                    }
                    NetflowPacket::IPFix(m) => {
                        m.flowsets.iter().map(|f| f.header.header_id).collect()
                    }
                    _ => Vec::new(),
                }
            })
            .collect();
        let exporter = from.ip();
        let mut whole = true;
        // Template sets were read here too (`learn`, whose refusals the caller counts).
        let tmpl_set = if v == Version::V9 { 0 } else { 2 };
        for set in sets {
            let id = set.0;
            if id == tmpl_set {
                continue;
            }
            if id < 256 || !self.fast.knows(from, v, scope, id) {
                whole &= crate_ids.contains(&id);
                continue;
            }
            let ctx = self.context(exporter, scope);
            let walk = match v {
                Version::V9 => {
                    let up = be32(payload, 4).unwrap_or(0);
                    self.fast
                        .for_each_in_set((from, v, scope), set, payload, |f| {
                            self.v9_record(&ctx, up, f, out, oc)
                        })
                }
                _ => {
                    let export_ms = u64::from(be32(payload, 4).unwrap_or(0)) * 1000;
                    self.fast
                        .for_each_in_set((from, v, scope), set, payload, |f| {
                            self.ipfix_record(&ctx, export_ms, f, out, oc)
                        })
                }
            };
            whole &= !walk.overrun;
        }
        whole
    }

    fn scope_mut(&mut self, key: ScopeKey) -> &mut ScopeState {
        // Bounded like the parser's sources: beyond the cap an arbitrary learned entry is
        // dropped (`make_room`; it is re-learned from the next options record).
        // A real exporter re-announces its options within its refresh interval.
        make_room(&mut self.scopes, &key, self.limits.max_sources);
        self.scopes.entry(key).or_default()
    }

    /// What the data records of one exporter scope share, looked up once per datagram.
    fn context(&self, exporter: IpAddr, scope: u32) -> RecordContext<'_> {
        RecordContext {
            sampling: self.overrides.exporter(exporter),
            scope: self.scopes.get(&(exporter, scope)),
        }
    }

    fn v5(
        &mut self,
        exporter: IpAddr,
        v5: &netflow_parser::static_versions::v5::V5,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) {
        let h = &v5.header;
        let flows = v5.flowsets.iter().map(V5Flow::of_crate);
        self.v5_records(exporter, h.sampling_interval, h.sys_up_time, flows, out, oc);
    }

    /// v5 fast path: the records straight from the bytes, with no allocation. Takes only
    /// datagrams the crate would parse whole into exactly one packet — 1 to 30 records
    /// and not a byte more — so both paths give the same records (tests/fast_decode.rs);
    /// anything else goes to the crate, which stays the authority on errors.
    // Not inlined into `decode`: the v5 loop compiled on its own does not share
    // registers with the v9/IPFIX code around it (5 instructions per record less under
    // cachegrind, benches/README.md).
    #[inline(never)]
    fn try_v5(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) -> bool {
        let (Some(count), Some(sys_up_time), Some(interval)) =
            (be16(payload, 2), be32(payload, 4), be16(payload, 22))
        else {
            return false;
        };
        let count = usize::from(count);
        if count == 0 || count > V5_MAX_RECORDS || payload.len() != V5_HEADER + count * V5_RECORD {
            return false;
        }
        self.note_v5_source(from);
        let flows = payload[V5_HEADER..]
            .chunks_exact(V5_RECORD)
            .filter_map(|c| c.try_into().ok())
            .map(V5Flow::of_bytes);
        let before = out.len();
        self.v5_records(from.ip(), interval, sys_up_time, flows, out, oc);
        oc.records = out.len() - before;
        true
    }

    fn note_v5_source(&mut self, from: SocketAddr) {
        if let Some(s) = self.v5_sources.get_mut(&from) {
            s.touched = true;
            return;
        }
        // The entry only counts towards the exporters gauge.
        make_room(&mut self.v5_sources, &from, self.limits.max_sources);
        self.v5_sources.insert(
            from,
            V5Source {
                touched: true,
                last_seen: Instant::now(),
            },
        );
    }

    /// v5 records of one datagram, from either path.
    fn v5_records(
        &mut self,
        exporter: IpAddr,
        sampling_interval: u16,
        sys_up_time: u32,
        flows: impl Iterator<Item = V5Flow>,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) {
        // Top two bits are the mode, the low 14 the interval (Cisco v5 layout).
        let interval = u32::from(sampling_interval & 0x3FFF);
        let wire = (interval > 1).then_some(interval);
        let rate = self.overrides.resolve(exporter, wire);
        oc.sampling_rate = Some(rate);
        for f in flows {
            let mut r = FlowRecord {
                src: IpAddr::V4(f.src),
                dst: IpAddr::V4(f.dst),
                src_port: f.src_port,
                dst_port: f.dst_port,
                protocol: f.protocol,
                tcp_flags: f.tcp_flags,
                packets: u64::from(f.packets) * u64::from(rate),
                bytes: u64::from(f.octets) * u64::from(rate),
                flows: 1,
                ..FlowRecord::default()
            };
            set_times(&mut r, sys_up_time, f.first, f.last);
            r.fragment = r.ports_zero_fragment();
            out.push(r);
        }
    }

    fn v9(&mut self, from: SocketAddr, v9: &V9, out: &mut Vec<FlowRecord>, oc: &mut DecodeOutcome) {
        let exporter = from.ip();
        let scope = v9.header.source_id;
        // Options first: a datagram may carry the sampling options and the data it
        // applies to together.
        for fs in &v9.flowsets {
            if let V9Body::OptionsData(od) = &fs.body {
                for rec in &od.fields {
                    let f =
                        crate_fields(rec.options_fields.iter().map(|(k, v)| (u16::from(*k), v)));
                    self.scope_mut((exporter, scope)).learn(&f);
                    oc.skips.add(SkipReason::Options, 1);
                }
            }
        }
        for fs in &v9.flowsets {
            // Sets of compiled templates are read from the bytes (`fast_sets_of_mixed`).
            let id = fs.header.flowset_id;
            if self.fast_enabled && self.fast.knows(from, Version::V9, scope, id) {
                continue;
            }
            match &fs.body {
                V9Body::Data(d) => {
                    let ctx = self.context(exporter, scope);
                    for rec in &d.fields {
                        let f = crate_fields(rec.iter().map(|(k, v)| (v9_id(k), v)));
                        self.v9_record(&ctx, v9.header.sys_up_time, &f, out, oc);
                    }
                }
                V9Body::NoTemplate(_) => {
                    oc.template_misses += 1;
                    oc.skips.add(SkipReason::NoTemplate, 1);
                }
                _ => {}
            }
        }
    }

    fn ipfix(
        &mut self,
        from: SocketAddr,
        msg: &IPFix,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) {
        let exporter = from.ip();
        let scope = msg.header.observation_domain_id;
        let export_ms = u64::from(msg.header.export_time) * 1000;
        for fs in &msg.flowsets {
            let recs: Vec<Fields> = match &fs.body {
                IpfixBody::OptionsData(od) => od
                    .fields
                    .iter()
                    .map(|rec| crate_fields(rec.iter().map(|(k, v)| (ipfix_id(k), v))))
                    .collect(),
                IpfixBody::V9OptionsData(od) => od
                    .fields
                    .iter()
                    .map(|rec| {
                        crate_fields(rec.options_fields.iter().map(|(k, v)| (u16::from(*k), v)))
                    })
                    .collect(),
                _ => continue,
            };
            oc.skips.add(SkipReason::Options, recs.len() as u64);
            for f in recs {
                self.scope_mut((exporter, scope)).learn(&f);
            }
        }
        let ctx = self.context(exporter, scope);
        for fs in &msg.flowsets {
            let id = fs.header.header_id;
            if self.fast_enabled && self.fast.knows(from, Version::Ipfix, scope, id) {
                continue;
            }
            let recs: Vec<Fields> = match &fs.body {
                IpfixBody::Data(d) => d
                    .fields
                    .iter()
                    .map(|rec| crate_fields(rec.iter().map(|(k, v)| (ipfix_id(k), v))))
                    .collect(),
                IpfixBody::V9Data(d) => d
                    .fields
                    .iter()
                    .map(|rec| crate_fields(rec.iter().map(|(k, v)| (v9_id(k), v))))
                    .collect(),
                IpfixBody::NoTemplate(_) => {
                    oc.template_misses += 1;
                    oc.skips.add(SkipReason::NoTemplate, 1);
                    continue;
                }
                _ => continue,
            };
            for f in recs {
                self.ipfix_record(&ctx, export_ms, &f, out, oc);
            }
        }
    }

    /// A record's traffic at `rate`, or the reason it has none.
    fn push_records(
        &self,
        f: &Fields,
        rate: u32,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) -> bool {
        match f.records(rate, self.biflow_reverse, out) {
            Ok(()) => true,
            Err(Skip::NoAddress) => {
                oc.skips.add(SkipReason::NoAddress, 1);
                false
            }
            Err(Skip::BadSection) => {
                oc.skips.add(SkipReason::BadHeader, 1);
                false
            }
        }
    }

    /// One v9 data record's fields → records (shared by the crate path and the fast
    /// path, so both map fields identically).
    fn v9_record(
        &self,
        ctx: &RecordContext,
        sys_up_time: u32,
        f: &Fields,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) {
        let rate = ctx.rate(f);
        oc.sampling_rate = Some(rate);
        let at = out.len();
        if self.push_records(f, rate, out, oc) {
            if let (Some(first), Some(last)) = (f.first(), f.last()) {
                for r in &mut out[at..] {
                    set_times(r, sys_up_time, first as u32, last as u32);
                }
            }
        }
    }

    /// One IPFIX data record's fields → records (crate path and fast path).
    fn ipfix_record(
        &self,
        ctx: &RecordContext,
        export_ms: u64,
        f: &Fields,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) {
        let rate = ctx.rate(f);
        let init = ctx.scope.and_then(|s| s.system_init_ms);
        oc.sampling_rate = Some(rate);
        let at = out.len();
        if !self.push_records(f, rate, out, oc) {
            return;
        }
        // Absolute end/start if the record has them, else sysUpTime-relative
        // ones with the learned init time; without either, the record ends at
        // export time.
        let (start, end) = match (f.start_abs_ms(), f.end_abs_ms(), f.first(), f.last(), init) {
            (Some(s), Some(e), ..) => (Some(s), Some(e)),
            // Saturating: both come from the wire (fuzzing found the overflow).
            (_, _, Some(fi), Some(la), Some(init)) => {
                (Some(init.saturating_add(fi)), Some(init.saturating_add(la)))
            }
            (_, _, Some(fi), Some(la), None) => (
                Some(export_ms.saturating_sub(la - fi.min(la))),
                Some(export_ms),
            ),
            _ => (None, None),
        };
        if let (Some(s), Some(e)) = (start, end) {
            let e_age = export_ms.saturating_sub(e);
            for r in &mut out[at..] {
                r.end_age_ms = if e_age > MAX_END_AGE_MS {
                    0
                } else {
                    e_age as u32
                };
                r.duration_ms = e.saturating_sub(s).min(MAX_END_AGE_MS) as u32;
            }
        }
    }

    /// Decodes a v9/IPFIX datagram without the crate when it holds only data sets of
    /// templates [`FastTemplates`] knows; returns false (having written nothing) when it
    /// cannot, and the crate path takes the datagram.
    fn try_fast(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        v: Version,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) -> bool {
        let Some(plan) = self.fast.plan(from, payload, v) else {
            return false;
        };
        let exporter = from.ip();
        let before = out.len();
        let walk = match plan {
            fast::Plan::V9 { scope, sys_up_time } => {
                let ctx = self.context(exporter, scope);
                self.fast.for_each_record(from, payload, v, scope, |f| {
                    self.v9_record(&ctx, sys_up_time, f, out, oc)
                })
            }
            fast::Plan::Ipfix { scope, export_ms } => {
                let ctx = self.context(exporter, scope);
                self.fast.for_each_record(from, payload, v, scope, |f| {
                    self.ipfix_record(&ctx, export_ms, f, out, oc)
                })
            }
        };
        if walk.overrun {
            // The records before the bad length stand; the rest of that set is lost.
            oc.error = Some(DecodeErrorKind::Malformed);
        }
        oc.records = out.len() - before;
        true
    }
}

/// Sets in the first IPFIX message of `payload`, by walking the set headers within the
/// message length (RFC 7011 §3.3.2); a set shorter than its own header ends the walk.
fn ipfix_set_count(payload: &[u8]) -> usize {
    let Some(len) = payload
        .get(2..4)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return 0;
    };
    let end = len.min(payload.len());
    let (mut off, mut n) = (16, 0);
    while off + 4 <= end {
        let set_len = usize::from(u16::from_be_bytes([payload[off + 2], payload[off + 3]]));
        if set_len < 4 {
            break;
        }
        n += 1;
        off += set_len;
    }
    n
}

fn v9_id(f: &V9Field) -> u16 {
    u16::from(*f)
}

/// Element id of an IPFIX field as [`Fields::put`] reads it: the IANA id, or the forward
/// id with [`REVERSE`] for an RFC 5103 reverse element (0 for other enterprise elements).
fn ipfix_id(f: &IPFixField) -> u16 {
    use netflow_parser::variable_versions::ipfix::lookup::{
        IANAIPFixField as I, ReverseInformationElement as R,
    };
    use std::sync::OnceLock;
    // The crate maps numbers to its enums but not back; the ids flowguard reads are all
    // below 512.
    type Back = (HashMap<I, u16>, HashMap<R, u16>);
    static BACK: OnceLock<Back> = OnceLock::new();
    let (iana, rev) = BACK.get_or_init(|| {
        let ids = (1..512u16).filter(|id| super::fields::is_read(*id));
        let iana = ids.clone().map(|id| (I::from(id), id)).collect();
        let rev = ids.map(|id| (R::from(id), id)).collect();
        (iana, rev)
    });
    match f {
        IPFixField::IANA(f) => iana.get(f).copied().unwrap_or(0),
        IPFixField::ReverseInformationElement(r) => rev.get(r).map_or(0, |id| id | REVERSE),
        _ => 0,
    }
}

/// Hard cap against spoofed sources: when `map` is full and `key` is new, an arbitrary
/// entry is forgotten to make room for it.
fn make_room<K, V, S>(map: &mut HashMap<K, V, S>, key: &K, cap: usize)
where
    K: Eq + std::hash::Hash + Copy,
    S: std::hash::BuildHasher,
{
    if map.len() >= cap && !map.contains_key(key) {
        if let Some(k) = map.keys().next().copied() {
            map.remove(&k);
        }
    }
}

/// first/last are sysUpTime milliseconds; the export header's sysUpTime anchors them.
fn set_times(r: &mut FlowRecord, sys_up_time: u32, first: u32, last: u32) {
    let age = u64::from(sys_up_time.wrapping_sub(last));
    r.end_age_ms = if age > MAX_END_AGE_MS { 0 } else { age as u32 };
    let dur = u64::from(last.wrapping_sub(first));
    r.duration_ms = if dur > MAX_END_AGE_MS { 0 } else { dur as u32 };
}

/// A crate-decoded record's fields (crate path; the fast path reads the same ids from
/// the bytes).
fn crate_fields<'a>(it: impl Iterator<Item = (u16, &'a FieldValue)>) -> Fields<'a> {
    let mut f = Fields::default();
    for (id, v) in it {
        let val = match v {
            FieldValue::Ip4Addr(a) => Value::V4(*a),
            FieldValue::Ip6Addr(a) => Value::V6(*a),
            FieldValue::Float64(p) => Value::Float(*p),
            FieldValue::Vec(b) => Value::Bytes(b),
            FieldValue::TcpControlBits(b, _) => Value::Uint(u64::from(u16::from(*b))),
            FieldValue::FragmentFlags(fl) => Value::Uint(u64::from(u8::from(*fl))),
            FieldValue::FirewallEvent(e) => Value::Uint(u64::from(u8::from(*e))),
            FieldValue::ProtocolType(p) => Value::Uint(u64::from(u8::from(*p))),
            other => match other.as_u64() {
                Some(n) => Value::Uint(n),
                None => continue,
            },
        };
        f.put(id, val);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(id: u16, body: &[u8]) -> Vec<u8> {
        let mut v = id.to_be_bytes().to_vec();
        v.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn ipfix(sets: &[Vec<u8>]) -> Vec<u8> {
        let body = sets.concat();
        let mut v = vec![0, 10];
        v.extend_from_slice(&((16 + body.len()) as u16).to_be_bytes());
        v.extend_from_slice(&1_800_000_000u32.to_be_bytes());
        v.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 7]);
        v.extend_from_slice(&body);
        v
    }

    /// Options template 300 (scope: observationDomainId; `fields` as options), and one
    /// options record with `values`.
    fn options(fields: &[(u16, u16)], values: &[u8]) -> Vec<Vec<u8>> {
        let mut t = vec![1, 44];
        t.extend_from_slice(&(1 + fields.len() as u16).to_be_bytes());
        t.extend_from_slice(&[0, 1, 0, 149, 0, 4]);
        for (id, len) in fields {
            t.extend_from_slice(&id.to_be_bytes());
            t.extend_from_slice(&len.to_be_bytes());
        }
        let mut d = vec![0, 0, 0, 7];
        d.extend_from_slice(values);
        vec![set(3, &t), set(300, &d)]
    }

    /// Template 301: src, dst, packets, bytes, flowStart/EndSysUpTime; one record.
    fn data(first: u32, last: u32) -> Vec<Vec<u8>> {
        let mut t = vec![1, 45, 0, 6];
        for (id, len) in [(8u16, 4u16), (12, 4), (2, 4), (1, 4), (22, 4), (21, 4)] {
            t.extend_from_slice(&id.to_be_bytes());
            t.extend_from_slice(&len.to_be_bytes());
        }
        let mut d = vec![198, 51, 100, 1, 192, 0, 2, 1, 0, 0, 0, 10, 0, 0, 3, 232];
        d.extend_from_slice(&first.to_be_bytes());
        d.extend_from_slice(&last.to_be_bytes());
        vec![set(2, &t), set(301, &d)]
    }

    fn decode(d: &mut NetflowDecoder, dg: &[u8]) -> (DecodeOutcome, Vec<FlowRecord>) {
        let mut out = Vec::new();
        let oc = d.decode("192.0.2.1:4739".parse().unwrap(), dg, &mut out);
        (oc, out)
    }

    #[test]
    fn huge_system_init_time_does_not_overflow() {
        // Fuzzing found: systemInitTimeMilliseconds near u64::MAX plus a sysUpTime-relative
        // flow start overflowed (a panic with overflow checks, garbage without).
        let mut d = NetflowDecoder::new(SamplingOverrides::default());
        let mut sets = options(&[(160, 8)], &(u64::MAX - 10).to_be_bytes());
        sets.extend(data(u32::MAX, u32::MAX));
        let (oc, out) = decode(&mut d, &ipfix(&sets));
        assert_eq!(oc.error, None, "{oc:?}");
        assert_eq!(out.len(), 1);
        // The end lies in the future of the export: no age, and no span.
        assert_eq!((out[0].end_age_ms, out[0].duration_ms), (0, 0));
        assert_eq!((out[0].packets, out[0].bytes), (10, 1000));
    }

    #[test]
    fn huge_sampling_interval_and_space_do_not_overflow() {
        let mut d = NetflowDecoder::new(SamplingOverrides::default());
        let mut v = u64::MAX.to_be_bytes().to_vec();
        v.extend_from_slice(&u64::MAX.to_be_bytes());
        let mut sets = options(&[(305, 8), (306, 8)], &v);
        sets.extend(data(1000, 2000));
        let (oc, out) = decode(&mut d, &ipfix(&sets));
        assert_eq!(oc.error, None, "{oc:?}");
        assert_eq!(out.len(), 1);
        // (MAX saturating+ MAX) / MAX = 1: sampling 1 in 1.
        assert_eq!(oc.sampling_rate, Some(1));
        assert_eq!(out[0].packets, 10);
    }

    #[test]
    fn flow_seconds_are_read_as_seconds() {
        let mut d = NetflowDecoder::new(SamplingOverrides::default());
        let mut t = vec![1, 46, 0, 4];
        for (id, len) in [(8u16, 4u16), (12, 4), (150, 4), (151, 4)] {
            t.extend_from_slice(&id.to_be_bytes());
            t.extend_from_slice(&len.to_be_bytes());
        }
        // Started 10 s before export, ended 2 s before it.
        let mut r = vec![198, 51, 100, 1, 192, 0, 2, 1];
        r.extend_from_slice(&(1_800_000_000u32 - 10).to_be_bytes());
        r.extend_from_slice(&(1_800_000_000u32 - 2).to_be_bytes());
        let (oc, out) = decode(&mut d, &ipfix(&[set(2, &t), set(302, &r)]));
        assert_eq!(oc.error, None, "{oc:?}");
        assert_eq!((out[0].end_age_ms, out[0].duration_ms), (2000, 8000));
    }
}
