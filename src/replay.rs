//! `flowguard replay`: captures of exported datagrams through the live pipeline code.
//!
//! Reads pcap and pcapng files (Ethernet, raw IP, Linux cooked v1/v2 and BSD loopback
//! link types), takes every UDP datagram whatever its port, recognises NetFlow/IPFIX or
//! sFlow from the payload, and feeds the same decode → aggregate → detect pipeline the
//! service runs, with the capture's timestamps as the clock: a detection pass runs at
//! every whole second of capture time. Attack events are printed as JSON lines as they
//! happen: `start`, `end`, and `update` when an attack's type changes (`old_type`,
//! `new_type`) or vectors start to count (`new_vectors`); every line carries `vectors`.
//!
//! When the captures end, the clock keeps running with no traffic (up to the window plus
//! the longest ban time) so attacks still in progress end as they would in the service;
//! `--no-drain` stops at the last datagram instead.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::pcapng::{Block, PcapNgReader};
use pcap_file::DataLink;
use serde::Serialize;

use crate::aggregate::RecordSink;
use crate::clock::rfc3339;
use crate::collectors::tally::count_decode;
use crate::config::Config;
use crate::decode::{FlowRecord, NetflowDecoder, SflowDecoder, Version};
use crate::metrics::Metrics;
use crate::model::{AttackEvent, AttackType, EventKind, TopSource, Vector, VectorSummary};
use crate::pipeline::Pipeline;

/// Host-table hash seed of every replay (see `Pipeline::with_seed`).
const REPLAY_SEED: u64 = 0x666c_6f77_6775_6172;

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub totals: bool,
    pub no_drain: bool,
    pub progress: bool,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub datagrams: u64,
    pub records: u64,
    pub not_udp: u64,
    pub undecodable: u64,
    /// Datagrams with a decode error, also those that still gave records.
    pub decode_errors: u64,
    /// Records not counted as traffic, by reason.
    #[serde(skip)]
    pub skips: crate::decode::Skips,
    /// Capture records with a bad header (e.g. a sub-second field of a million µs, which
    /// real capture writers produce); read all the same.
    pub bad_capture_records: u64,
    pub attacks: u64,
}

impl Summary {
    /// The replay's closing line: every record not counted has its reason here.
    pub fn line(&self) -> String {
        use crate::decode::SkipReason;
        let skipped: Vec<String> = SkipReason::ALL
            .iter()
            .filter(|r| self.skips.get(**r) > 0)
            .map(|r| format!("{} {}", self.skips.get(*r), r.label()))
            .collect();
        format!(
            "replay: {} datagrams, {} records, {} attacks, {} undecodable, {} with decode errors, \
             {} records skipped{}, {} bad capture records, {} non-UDP packets skipped",
            self.datagrams,
            self.records,
            self.attacks,
            self.undecodable,
            self.decode_errors,
            self.skips.total(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", skipped.join(", "))
            },
            self.bad_capture_records,
            self.not_udp
        )
    }
}

/// A captured UDP datagram.
struct Datagram {
    ts_ms: i64,
    from: SocketAddr,
    dst_port: u16,
    payload: Vec<u8>,
}

/// The replay line for one attack event (issue contract: `time` is RFC 3339 on the
/// capture clock).
#[derive(Serialize)]
struct EventLine<'a> {
    event: &'static str,
    id: &'a str,
    ip: IpAddr,
    direction: &'static str,
    attack_type: &'static str,
    protocol: &'static str,
    time: String,
    pps: u64,
    bps: u64,
    flows_per_second: u64,
    peak_pps: u64,
    hostgroup: &'a str,
    top_sources: &'a [TopSource],
    vectors: &'a [VectorSummary],
    /// Update lines: the type before and after the update, when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    old_type: Option<AttackType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_type: Option<AttackType>,
    /// Update lines: the vectors that started to count.
    #[serde(skip_serializing_if = "<[Vector]>::is_empty")]
    new_vectors: &'a [Vector],
}

pub fn event_line(e: &AttackEvent) -> Option<String> {
    let event = match e.event {
        EventKind::Start => "start",
        EventKind::End => "end",
        // Periodic refreshes of rates are not printed; changes of type or vectors are.
        EventKind::Update if e.is_change() => "update",
        EventKind::Update => return None,
    };
    serde_json::to_string(&EventLine {
        event,
        id: &e.id,
        ip: e.ip,
        direction: e.direction.as_str(),
        attack_type: e.attack_type.as_str(),
        protocol: e.protocol.as_str(),
        time: rfc3339(e.time_ms),
        pps: e.pps,
        bps: e.bps,
        flows_per_second: e.flows_per_second,
        peak_pps: e.peak_pps,
        hostgroup: &e.hostgroup,
        top_sources: &e.top_sources,
        vectors: &e.vectors,
        old_type: e.previous_attack_type,
        new_type: e.previous_attack_type.map(|_| e.attack_type),
        new_vectors: &e.new_vectors,
    })
    .ok()
}

/// Decoders for datagrams sent to one collector's port (its sampling overrides apply),
/// or to any other port.
struct Decoders {
    netflow: NetflowDecoder,
    sflow: SflowDecoder,
}

pub fn run(
    cfg: &Config,
    files: &[PathBuf],
    opts: &ReplayOptions,
    out: &mut dyn Write,
) -> anyhow::Result<Summary> {
    let metrics = Arc::new(Metrics::new());
    // Fixed seed: the same capture gives the same events and reports on every run.
    let pipeline = Pipeline::with_seed(cfg, metrics.clone(), Some(REPLAY_SEED))?;
    if opts.totals {
        pipeline.aggregate.keep_totals();
    }
    // Records go to the aggregate stage as the collectors hand them over.
    let sink: &dyn RecordSink = &*pipeline.aggregate;
    let mut scratch = sink.scratch();
    let mut decoders: HashMap<Option<usize>, Decoders> = HashMap::new();
    let mut records: Vec<FlowRecord> = Vec::with_capacity(1024);
    let mut summary = Summary::default();
    let mut next_tick: Option<i64> = None;
    let mut last_ts = 0i64;
    let emit = |events: Vec<AttackEvent>,
                out: &mut dyn Write,
                summary: &mut Summary|
     -> anyhow::Result<()> {
        for e in &events {
            if e.event == EventKind::Start {
                summary.attacks += 1;
            }
            if let Some(l) = event_line(e) {
                writeln!(out, "{l}")?;
            }
        }
        Ok(())
    };
    for path in files {
        let total_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        let bar = progress_bar(opts.progress, total_bytes, path);
        let mut on_datagram = |d: Datagram, consumed: u64| -> anyhow::Result<()> {
            if let Some(b) = &bar {
                b.set_position(consumed);
            }
            // Detection passes for every whole second the capture clock crossed.
            let nt = next_tick.get_or_insert((d.ts_ms / 1000 + 1) * 1000);
            while *nt <= d.ts_ms {
                let ev = pipeline.tick(*nt);
                emit(ev, out, &mut summary)?;
                *nt += 1000;
            }
            last_ts = last_ts.max(d.ts_ms);
            summary.datagrams += 1;
            let coll = cfg
                .collectors
                .iter()
                .position(|c| c.listen.port() == d.dst_port);
            let dec = decoders.entry(coll).or_insert_with(|| {
                let ov = coll
                    .map(|i| cfg.collectors[i].sampling())
                    .unwrap_or_default();
                let mut netflow = NetflowDecoder::new(ov.clone());
                netflow.set_biflow_reverse(coll.is_some_and(|i| cfg.collectors[i].biflow_reverse));
                Decoders {
                    netflow,
                    sflow: SflowDecoder::new(ov),
                }
            });
            records.clear();
            let oc = match Version::sniff(&d.payload) {
                Version::Sflow5 => dec.sflow.decode(d.from, &d.payload, &mut records),
                _ => dec.netflow.decode(d.from, &d.payload, &mut records),
            };
            count_decode(&metrics, "replay", &oc);
            if oc.error.is_some() {
                summary.decode_errors += 1;
                if oc.records == 0 {
                    summary.undecodable += 1;
                }
            }
            summary.skips.merge(&oc.skips);
            summary.records += records.len() as u64;
            sink.ingest(&records, d.ts_ms, &mut scratch);
            Ok(())
        };
        let mut counts = CaptureCounts::default();
        read_capture(path, &mut on_datagram, &mut counts)
            .with_context(|| format!("reading {}", path.display()))?;
        summary.not_udp += counts.not_udp;
        summary.bad_capture_records += counts.bad_records;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    }
    if let Some(mut nt) = next_tick {
        let limit = if opts.no_drain {
            last_ts + 1000
        } else {
            last_ts
                + i64::from(pipeline.aggregate.window_seconds()) * 1000
                + pipeline.detection.max_ban_ms()
                + 2000
        };
        while nt <= limit {
            let ev = pipeline.tick(nt);
            emit(ev, out, &mut summary)?;
            nt += 1000;
            if nt > last_ts + 1000 && pipeline.detection.active_attacks() == 0 {
                break;
            }
        }
    }
    if opts.totals {
        for t in pipeline.aggregate.totals() {
            writeln!(out, "{}", serde_json::to_string(&t)?)?;
        }
    }
    Ok(summary)
}

fn progress_bar(enabled: bool, len: u64, path: &Path) -> Option<indicatif::ProgressBar> {
    if !enabled {
        return None;
    }
    let b = indicatif::ProgressBar::new(len);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_message(path.display().to_string());
    Some(b)
}

/// What reading a capture passed over.
#[derive(Debug, Default)]
struct CaptureCounts {
    not_udp: u64,
    bad_records: u64,
}

/// Calls `f` for every UDP datagram of a pcap or pcapng file, in file order.
fn read_capture(
    path: &Path,
    f: &mut dyn FnMut(Datagram, u64) -> anyhow::Result<()>,
    counts: &mut CaptureCounts,
) -> anyhow::Result<()> {
    let not_udp = &mut counts.not_udp;
    let mut file = File::open(path)?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .context("file too short for a capture")?;
    drop(file);
    let reader = BufReader::new(File::open(path)?);
    match magic {
        [0x0a, 0x0d, 0x0d, 0x0a] => {
            let mut r = PcapNgReader::new(reader)?;
            // (link type, ticks per second) per interface.
            let mut links: Vec<(DataLink, u128)> = Vec::new();
            let mut n = 0u64;
            while let Some(block) = r.next_block() {
                let block = block?;
                match block {
                    Block::InterfaceDescription(idb) => {
                        links.push((idb.linktype, ticks_per_second(&idb.options)));
                    }
                    Block::EnhancedPacket(epb) => {
                        n += epb.data.len() as u64;
                        let (link, tps) = links
                            .get(epb.interface_id as usize)
                            .copied()
                            .unwrap_or((DataLink::ETHERNET, 1_000_000));
                        // pcap-file hands the raw timestamp ticks over as nanoseconds; the
                        // interface's if_tsresol says what a tick is (default: 1 µs).
                        let ts = (epb.timestamp.as_nanos() * 1000 / tps) as i64;
                        match udp_of(link, &epb.data, ts) {
                            Some(d) => f(d, n)?,
                            None => *not_udp += 1,
                        }
                    }
                    Block::SimplePacket(spb) => {
                        let link = links.first().map_or(DataLink::ETHERNET, |l| l.0);
                        // Simple packet blocks carry no timestamp; they cannot drive the clock.
                        match udp_of(link, &spb.data, 0) {
                            Some(_) | None => *not_udp += 1,
                        }
                    }
                    _ => {}
                }
            }
        }
        [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0xc3, 0xd4]
        | [0x4d, 0x3c, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d] => {
            read_legacy_pcap(reader, magic, f, counts)?;
        }
        _ => bail!("not a pcap or pcapng file"),
    }
    Ok(())
}

/// Timestamp ticks per second of a pcapng interface (`if_tsresol` is 10^-v, or 2^-v
/// with the top bit set; absent means microseconds).
fn ticks_per_second(
    opts: &[pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption],
) -> u128 {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption as O;
    for o in opts {
        if let O::IfTsResol(v) = o {
            let e = u32::from(v & 0x7f);
            return if v & 0x80 != 0 {
                1u128 << e.min(64)
            } else {
                10u128.pow(e.min(18))
            };
        }
    }
    1_000_000
}

/// Largest capture record believed (pcap's usual snaplen); a larger length means the
/// file is broken from there on.
const MAX_PCAP_RECORD: usize = 262_144;

/// Legacy pcap, read here rather than with pcap-file, which stops at the first record
/// header it dislikes: a sub-second field out of range is counted and read as its
/// whole seconds plus the overflow, and the replay goes on. A record whose length runs
/// past the file (or past [`MAX_PCAP_RECORD`]) ends the file, counted.
fn read_legacy_pcap(
    mut r: impl Read,
    magic: [u8; 4],
    f: &mut dyn FnMut(Datagram, u64) -> anyhow::Result<()>,
    counts: &mut CaptureCounts,
) -> anyhow::Result<()> {
    let le = matches!(magic, [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1]);
    let nanos = matches!(magic, [0x4d, 0x3c, 0xb2, 0xa1] | [0xa1, 0xb2, 0x3c, 0x4d]);
    let u32_of = |b: &[u8]| {
        let a = [b[0], b[1], b[2], b[3]];
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let mut hdr = [0u8; 24];
    r.read_exact(&mut hdr).context("pcap header")?;
    let link = DataLink::from(u32_of(&hdr[20..24]));
    let (per_sec, frac_ms) = if nanos {
        (1_000_000_000u64, 1_000_000u64)
    } else {
        (1_000_000, 1_000)
    };
    let mut n = 24u64;
    let mut data = Vec::new();
    loop {
        let mut rh = [0u8; 16];
        match read_full(&mut r, &mut rh)? {
            0 => break,
            16 => {}
            _ => {
                counts.bad_records += 1;
                break;
            }
        }
        let (sec, frac, incl) = (
            u64::from(u32_of(&rh[0..4])),
            u64::from(u32_of(&rh[4..8])),
            u32_of(&rh[8..12]) as usize,
        );
        if frac >= per_sec {
            counts.bad_records += 1;
        }
        if incl > MAX_PCAP_RECORD {
            counts.bad_records += 1;
            break;
        }
        data.resize(incl, 0);
        if read_full(&mut r, &mut data)? < incl {
            counts.bad_records += 1;
            break;
        }
        n += 16 + incl as u64;
        let ts = (sec * 1000 + frac / frac_ms) as i64;
        match udp_of(link, &data, ts) {
            Some(d) => f(d, n)?,
            None => counts.not_udp += 1,
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn udp_of(link: DataLink, data: &[u8], ts_ms: i64) -> Option<Datagram> {
    let sliced = match link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_ip(data.get(16..)?).ok()?,
        DataLink::LINUX_SLL2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        _ => return None,
    };
    let src_ip = match sliced.net.as_ref()? {
        NetSlice::Ipv4(v4) => IpAddr::V4(v4.header().source_addr()),
        NetSlice::Ipv6(v6) => IpAddr::V6(v6.header().source_addr()),
        _ => return None,
    };
    let TransportSlice::Udp(udp) = sliced.transport.as_ref()? else {
        return None;
    };
    Some(Datagram {
        ts_ms,
        from: SocketAddr::new(src_ip, udp.source_port()),
        dst_port: udp.destination_port(),
        payload: udp.payload().to_vec(),
    })
}
