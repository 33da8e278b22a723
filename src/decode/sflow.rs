//! sFlow v5 decoding on top of `sflow-parser`.
//!
//! Flow samples (compact and expanded) become one [`FlowRecord`] each, scaled by the
//! sample's own sampling rate (or a config override). The packet comes from the
//! `sampled_header` record (decoded by [`super::packet`]); when a sample has no header
//! but a `sampled_ipv4`/`sampled_ipv6` record, that is used instead. Counter samples are
//! counted only. sFlow samples are instants: `duration_ms` and `end_age_ms` are 0.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use sflow_parser::models::{FlowData, HeaderProtocol};
use sflow_parser::{SampleData, SampleRecord};

use super::packet::{decode_header, HeaderStart};
use super::{DecodeErrorKind, DecodeOutcome, FlowRecord, SamplingOverrides, Version};

/// Exporters whose last sampling rate we remember for metrics.
const MAX_EXPORTERS: usize = 10_000;

pub struct SflowDecoder {
    overrides: SamplingOverrides,
    last_rate: HashMap<IpAddr, u32>,
}

impl SflowDecoder {
    pub fn new(overrides: SamplingOverrides) -> Self {
        SflowDecoder {
            overrides,
            last_rate: HashMap::new(),
        }
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
        let mut oc = DecodeOutcome {
            version: Some(Version::sniff(payload)),
            ..DecodeOutcome::default()
        };
        if oc.version != Some(Version::Sflow5) {
            oc.error = Some(DecodeErrorKind::BadVersion);
            return oc;
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
        let rate = self
            .overrides
            .for_exporter(exporter)
            .unwrap_or(wire_rate)
            .max(1);
        if self.last_rate.len() < MAX_EXPORTERS || self.last_rate.contains_key(&exporter) {
            self.last_rate.insert(exporter, wire_rate.max(1));
        }
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
                            oc.skipped += 1;
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
                        None => oc.skipped += 1,
                    }
                }
                FlowData::SampledIpv4(v4) if info.is_none() => {
                    info = Some(super::packet::HeaderInfo {
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
                    info = Some(super::packet::HeaderInfo {
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
        if let Some(h) = info {
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
                flows: 0,
                end_age_ms: 0,
                duration_ms: 0,
            });
        }
    }
}
