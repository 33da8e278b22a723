//! sFlow v5 decoding on top of `sflow-parser`.
//!
//! Flow samples (compact and expanded) become one [`FlowRecord`] each, scaled by the
//! sample's own sampling rate (or a config override). The packet comes from the
//! `sampled_header` record (decoded by [`super::packet`]); when a sample has no header
//! but a `sampled_ipv4`/`sampled_ipv6` record, that is used instead. Counter samples are
//! counted only. sFlow samples are instants: `duration_ms` and `end_age_ms` are 0.
//!
//! Fast path: the usual datagram (flow samples with header/IPv4/IPv6 records, counter
//! samples) is read straight from the bytes without the crate's per-sample allocations;
//! anything else (enterprise or unknown formats, inconsistent lengths) goes through
//! `sflow-parser`. Both paths share the rate and record logic and are tested equal on the
//! shared pmacctd capture.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use sflow_parser::models::{FlowData, HeaderProtocol};
use sflow_parser::{SampleData, SampleRecord};

use super::packet::{decode_header, HeaderInfo, HeaderStart};
use super::{
    be32, DecodeErrorKind, DecodeOutcome, FlowRecord, SamplingOverrides, SkipReason, Version,
};

/// Exporters whose last sampling rate we remember for metrics.
const MAX_EXPORTERS: usize = 10_000;

pub struct SflowDecoder {
    overrides: SamplingOverrides,
    last_rate: HashMap<IpAddr, u32, ahash::RandomState>,
    fast_enabled: bool,
}

impl SflowDecoder {
    pub fn new(overrides: SamplingOverrides) -> Self {
        SflowDecoder {
            overrides,
            last_rate: HashMap::default(),
            fast_enabled: true,
        }
    }

    /// Switches the fast path off (every datagram through `sflow-parser`), for tests and
    /// benches that compare the two.
    pub fn set_fast_path(&mut self, on: bool) {
        self.fast_enabled = on;
    }

    pub fn exporters(&self) -> usize {
        self.last_rate.len()
    }

    pub fn sampling_rate_of(&self, exporter: IpAddr) -> u32 {
        self.overrides
            .for_exporter(exporter)
            .or_else(|| self.last_rate.get(&exporter).copied())
            .unwrap_or(1)
    }

    pub fn decode(
        &mut self,
        from: SocketAddr,
        payload: &[u8],
        out: &mut Vec<FlowRecord>,
    ) -> DecodeOutcome {
        let from = super::canonical(from);
        let mut oc = DecodeOutcome {
            version: Some(Version::sniff(payload)),
            ..DecodeOutcome::default()
        };
        if oc.version != Some(Version::Sflow5) {
            oc.error = Some(DecodeErrorKind::BadVersion);
            return oc;
        }
        if self.fast_enabled {
            let before = out.len();
            if self.fast(from.ip(), payload, out, &mut oc).is_some() {
                oc.records = out.len() - before;
                return oc;
            }
            // Something the fast path does not read exactly like the crate: undo and let
            // the crate decide.
            out.truncate(before);
            oc = DecodeOutcome {
                version: Some(Version::Sflow5),
                ..DecodeOutcome::default()
            };
        }
        let dg = match sflow_parser::parse_datagram(payload) {
            Ok(d) => d,
            Err(e) => {
                oc.error = Some(match e {
                    sflow_parser::ParseError::Io(_) => DecodeErrorKind::Truncated,
                    _ => DecodeErrorKind::Malformed,
                });
                return oc;
            }
        };
        let before = out.len();
        for s in &dg.samples {
            self.sample(from.ip(), s, out, &mut oc);
        }
        oc.records = out.len() - before;
        oc
    }

    fn sample(
        &mut self,
        exporter: IpAddr,
        s: &SampleRecord,
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) {
        let (wire_rate, records) = match &s.sample_data {
            SampleData::FlowSample(f) => (f.sampling_rate, &f.flow_records),
            SampleData::FlowSampleExpanded(f) => (f.sampling_rate, &f.flow_records),
            SampleData::CountersSample(_) | SampleData::CountersSampleExpanded(_) => {
                oc.counter_samples += 1;
                return;
            }
            _ => return,
        };
        let rate = self.sample_rate(exporter, wire_rate);
        oc.sampling_rate = Some(rate);
        let mut info = None;
        for r in records {
            match &r.flow_data {
                FlowData::SampledHeader(h) => {
                    let start = match h.protocol {
                        HeaderProtocol::EthernetIso88023 => HeaderStart::Ethernet,
                        HeaderProtocol::Ipv4 => HeaderStart::Ipv4,
                        HeaderProtocol::Ipv6 => HeaderStart::Ipv6,
                        _ => {
                            oc.skips.add(SkipReason::Unsupported, 1);
                            continue;
                        }
                    };
                    match decode_header(start, &h.header) {
                        Some(mut hi) => {
                            if hi.ip_len == 0 {
                                hi.ip_len = h.frame_length;
                            }
                            info = Some(hi);
                            break;
                        }
                        None => oc.skips.add(SkipReason::BadHeader, 1),
                    }
                }
                FlowData::SampledIpv4(v4) if info.is_none() => {
                    info = Some(HeaderInfo {
                        src: IpAddr::V4(v4.src_ip),
                        dst: IpAddr::V4(v4.dst_ip),
                        protocol: v4.protocol as u8,
                        src_port: v4.src_port as u16,
                        dst_port: v4.dst_port as u16,
                        tcp_flags: v4.tcp_flags as u8,
                        fragment: false,
                        ip_len: v4.length,
                    });
                }
                FlowData::SampledIpv6(v6) if info.is_none() => {
                    info = Some(HeaderInfo {
                        src: IpAddr::V6(v6.src_ip),
                        dst: IpAddr::V6(v6.dst_ip),
                        protocol: v6.protocol as u8,
                        src_port: v6.src_port as u16,
                        dst_port: v6.dst_port as u16,
                        tcp_flags: v6.tcp_flags as u8,
                        fragment: false,
                        ip_len: v6.length,
                    });
                }
                _ => {}
            }
        }
        emit(info, rate, out);
    }

    /// Rate in force for a flow sample, remembering the wire rate for metrics.
    fn sample_rate(&mut self, exporter: IpAddr, wire_rate: u32) -> u32 {
        let rate = self.overrides.resolve(exporter, Some(wire_rate));
        if let Some(r) = self.last_rate.get_mut(&exporter) {
            *r = wire_rate.max(1);
        } else if self.last_rate.len() < MAX_EXPORTERS {
            self.last_rate.insert(exporter, wire_rate.max(1));
        }
        rate
    }

    /// Decodes the datagram straight from the bytes, with no allocation: flow samples
    /// (compact and expanded) with sampled-header / sampled-IPv4 / sampled-IPv6 records,
    /// counter samples counted. Returns None, possibly having pushed records the caller
    /// discards, on anything else (other sample formats, enterprise formats, any length
    /// that does not add up): the crate path then takes the datagram.
    fn fast(
        &mut self,
        exporter: IpAddr,
        p: &[u8],
        out: &mut Vec<FlowRecord>,
        oc: &mut DecodeOutcome,
    ) -> Option<()> {
        let mut o = 4;
        let addr_len = match be32(p, o)? {
            1 => 4,
            2 => 16,
            _ => return None,
        };
        o += 4 + addr_len + 12; // address, sub agent, sequence, uptime
        let n = be32(p, o)?;
        o += 4;
        let mut memo: Option<(u32, u32)> = None;
        for _ in 0..n {
            let fmt = be32(p, o)?;
            let len = be32(p, o + 4)? as usize;
            let body = p.get(o + 8..(o + 8).checked_add(len)?)?;
            o += 8 + len;
            let (rate_at, nrec_at) = match fmt {
                1 => (8, 28),
                3 => (12, 40),
                2 | 4 => {
                    oc.counter_samples += 1;
                    continue;
                }
                _ => return None,
            };
            let wire_rate = be32(body, rate_at)?;
            let nrec = be32(body, nrec_at)?;
            // The samples of a datagram nearly always share one rate: look it up (two
            // hash probes) once per datagram, not per sample.
            let rate = match memo {
                Some((w, r)) if w == wire_rate => r,
                _ => {
                    let r = self.sample_rate(exporter, wire_rate);
                    memo = Some((wire_rate, r));
                    r
                }
            };
            oc.sampling_rate = Some(rate);
            let mut r = nrec_at + 4;
            let mut info = None;
            for _ in 0..nrec {
                let rfmt = be32(body, r)?;
                let rlen = be32(body, r + 4)? as usize;
                let rb = body.get(r + 8..(r + 8).checked_add(rlen)?)?;
                r += 8 + rlen;
                match rfmt {
                    1 => {
                        let start = match be32(rb, 0)? {
                            1 => HeaderStart::Ethernet,
                            11 => HeaderStart::Ipv4,
                            12 => HeaderStart::Ipv6,
                            _ => {
                                oc.skips.add(SkipReason::Unsupported, 1);
                                continue;
                            }
                        };
                        let frame_length = be32(rb, 4)?;
                        let hlen = be32(rb, 12)? as usize;
                        let hdr = rb.get(16..16usize.checked_add(hlen)?)?;
                        match decode_header(start, hdr) {
                            Some(mut hi) => {
                                if hi.ip_len == 0 {
                                    hi.ip_len = frame_length;
                                }
                                info = Some(hi);
                                break;
                            }
                            None => oc.skips.add(SkipReason::BadHeader, 1),
                        }
                    }
                    3 if info.is_none() => {
                        let ip = |o: usize| -> Option<IpAddr> {
                            Some(IpAddr::V4(std::net::Ipv4Addr::from(be32(rb, o)?)))
                        };
                        info = Some(sampled_ip(rb, ip(8)?, ip(12)?, 16)?);
                    }
                    4 if info.is_none() => {
                        let ip = |o: usize| -> Option<IpAddr> {
                            let a: [u8; 16] = rb.get(o..o + 16)?.try_into().ok()?;
                            Some(IpAddr::V6(std::net::Ipv6Addr::from(a)))
                        };
                        info = Some(sampled_ip(rb, ip(8)?, ip(24)?, 40)?);
                    }
                    _ => {}
                }
            }
            emit(info, rate, out);
        }
        Some(())
    }
}

/// A sampled_ipv4 (3) or sampled_ipv6 (4) record: IP length, protocol, the addresses
/// (read by the caller), then ports and TCP flags from offset `rest`.
fn sampled_ip(rb: &[u8], src: IpAddr, dst: IpAddr, rest: usize) -> Option<HeaderInfo> {
    Some(HeaderInfo {
        src,
        dst,
        protocol: be32(rb, 4)? as u8,
        src_port: be32(rb, rest)? as u16,
        dst_port: be32(rb, rest + 4)? as u16,
        tcp_flags: be32(rb, rest + 8)? as u8,
        fragment: false,
        ip_len: be32(rb, 0)?,
    })
}

/// One flow sample's record, scaled by its rate; nothing when no record was decodable.
fn emit(info: Option<HeaderInfo>, rate: u32, out: &mut Vec<FlowRecord>) {
    if let Some(h) = info {
        out.push(h.sampled(rate));
    }
}
