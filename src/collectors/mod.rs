//! Collectors: UDP sockets that receive exported datagrams. I/O only.
//!
//! One OS thread per `[[collector]]`, receiving in batches with `recvmmsg(2)` (up to
//! [`BATCH`] datagrams per system call) into a large `SO_RCVBUF`; the kernel's count of
//! datagrams it dropped because the socket queue was full is read with `SO_MEMINFO`.
//! Each thread owns its decoders (template state never crosses threads), decodes the
//! batch and hands the records to the aggregate stage (a [`RecordSink`]), one lock per
//! shard per batch: no channel send and no heap allocation per record on this path.
//!
//! The exporter allow-list is checked before any parsing, so spoofed datagrams cannot
//! touch real exporters' template state; refused datagrams are counted by reason.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::IpNet;
use socket2::{Domain, Protocol, Socket, Type};

use crate::aggregate::{Aggregate, RecordSink};
use crate::clock::system_now_ms;
use crate::config::{CollectorConfig, CollectorProtocol};
use crate::decode::{FlowRecord, NetflowDecoder, SflowDecoder, Version};
use crate::metrics::MAX_EXPORTER_SERIES;

pub mod tally;
use tally::DecodeTally;

/// Datagrams per `recvmmsg` call.
pub const BATCH: usize = 64;
/// Longest wait after draining the socket before reading again (see [`coalesce_for`]).
const MAX_COALESCE: Duration = Duration::from_millis(2);
/// Kernel bookkeeping charged to the receive buffer per datagram beyond its payload
/// (skb and its shared info), rounded up.
const SKB_OVERHEAD_BYTES: u64 = 1024;
/// Receive buffer per datagram: the largest UDP payload.
const DGRAM_MAX: usize = 65_536;
/// Distance between two receive buffers. Not a power of two: datagrams fill only the
/// first 1-9 KB of each buffer, and at a 64 KiB stride those first lines of all 64
/// buffers fall into the same few cache sets and evict each other (and the host table)
/// between the kernel's copy and the decode. The extra 1.5 KB spreads them out.
const STRIDE: usize = DGRAM_MAX + 1536;
/// NetFlow exporter scopes silent for this long lose their template state (bounded
/// memory under a churn of spoofed or decommissioned exporters).
const EXPORTER_IDLE: Duration = Duration::from_secs(3600);
/// How often the kernel's drop count of the socket is read.
const DROPS_EVERY_MS: i64 = 250;
/// How often idle exporter scopes are looked for.
const PRUNE_EVERY_MS: i64 = 60_000;

/// A bound collector socket, not yet running.
pub struct Bound {
    pub cfg: CollectorConfig,
    pub label: String,
    pub socket: UdpSocket,
    pub local: SocketAddr,
}

/// Binds every collector; all errors at once.
pub fn bind_all(cfgs: &[CollectorConfig]) -> anyhow::Result<Vec<Bound>> {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, c) in cfgs.iter().enumerate() {
        match bind(c) {
            Ok(socket) => {
                let local = socket.local_addr()?;
                out.push(Bound {
                    label: c.label(),
                    cfg: c.clone(),
                    socket,
                    local,
                });
            }
            Err(e) => errs.push(format!("collector[{i}] {}: {e}", c.listen)),
        }
    }
    if !errs.is_empty() {
        anyhow::bail!("cannot bind collectors:\n  {}", errs.join("\n  "));
    }
    Ok(out)
}

fn bind(c: &CollectorConfig) -> io::Result<UdpSocket> {
    let domain = if c.listen.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps this at net.core.rmem_max; a bigger queue absorbs bursts while a
    // batch is being decoded.
    let _ = s.set_recv_buffer_size(c.receive_buffer_bytes);
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.bind(&c.listen.into())?;
    Ok(s.into())
}

/// Datagrams the kernel dropped on `sock` because its queue was full, cumulative since
/// it opened (`SO_MEMINFO`, the counter `/proc/net/udp` shows). Polled a few times a
/// second: `SO_RXQ_OVFL` would report the same count as a control message on every
/// datagram, which cost ~3 % of the CPU per sFlow sample.
#[cfg(target_os = "linux")]
fn socket_drops(sock: &UdpSocket) -> Option<u32> {
    use std::os::fd::AsRawFd;
    /// SK_MEMINFO_DROPS in linux/sock_diag.h.
    const DROPS: usize = 8;
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large,
    // and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    (rc == 0 && len as usize > DROPS * 4).then_some(info[DROPS])
}

#[cfg(not(target_os = "linux"))]
fn socket_drops(_sock: &UdpSocket) -> Option<u32> {
    None
}

/// Starts the receive thread of a bound collector.
pub fn spawn(
    b: Bound,
    pipeline: Arc<Aggregate>,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("collect-{}", b.label))
        .spawn(move || receive_loop(b, pipeline, stop))
}

/// One exporter's own series: the handles are looked up once, so a datagram costs an
/// atomic add or two, not a label lookup (formatting the address label per datagram was
/// measurable). At most [`MAX_EXPORTER_SERIES`] per collector.
struct ExporterSeries {
    /// The sampling rate last set on its gauge (set only when it changes).
    rate: Option<u32>,
    records: prometheus::IntCounter,
    errors: prometheus::IntCounter,
    /// NetFlow collectors only (sFlow has no templates).
    templates: Option<prometheus::IntGauge>,
}

impl ExporterSeries {
    fn new(m: &crate::metrics::Metrics, collector: &str, ip: IpAddr, netflow: bool) -> Self {
        let ip = ip.to_string();
        let l = [collector, ip.as_str()];
        ExporterSeries {
            rate: None,
            records: m.exporter_records.with_label_values(&l),
            errors: m.exporter_decode_errors.with_label_values(&l),
            templates: netflow.then(|| m.exporter_templates_known.with_label_values(&l)),
        }
    }
}

enum Decoder {
    // Boxed: the NetFlow decoder's caches make it much larger than the sFlow one.
    Netflow(Box<NetflowDecoder>),
    Sflow(SflowDecoder),
}

fn receive_loop(b: Bound, pipeline: Arc<Aggregate>, stop: Arc<AtomicBool>) {
    let metrics = pipeline.metrics().clone();
    let ov = b.cfg.sampling();
    let mut dec = match b.cfg.protocol {
        CollectorProtocol::Netflow => {
            let mut d = NetflowDecoder::new(ov);
            d.set_biflow_reverse(b.cfg.biflow_reverse);
            Decoder::Netflow(Box::new(d))
        }
        CollectorProtocol::Sflow => Decoder::Sflow(SflowDecoder::new(ov)),
    };
    let allowed: Vec<IpNet> = b.cfg.allowed_exporters.clone();
    let mut rx = BatchReceiver::new();
    let mut records: Vec<FlowRecord> = Vec::with_capacity(BATCH * 32);
    let mut scratch = pipeline.scratch();
    // Exporters with their own series. One is given a series by its first well-formed
    // datagram, so garbage from random sources cannot take the slots.
    let mut labelled: HashMap<IpAddr, ExporterSeries, ahash::RandomState> = HashMap::default();
    let netflow = matches!(b.cfg.protocol, CollectorProtocol::Netflow);
    let mut tally = DecodeTally::default();
    let mut last_gauges = 0i64;
    let mut last_drops = 0i64;
    // What the kernel granted (SO_RCVBUF reads back the doubled, truesize-accounted
    // limit), and the last second's arrivals, for the coalescing wait.
    let rcvbuf = socket2::SockRef::from(&b.socket)
        .recv_buffer_size()
        .unwrap_or(0) as u64;
    let (mut sec_dgrams, mut sec_bytes) = (0u64, 0u64);
    let mut coalesce = coalesce_for(rcvbuf, 0, 0);
    let mut last_prune = system_now_ms();
    tracing::info!(collector = %b.label, listen = %b.local, "collector listening");
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(&b.socket) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                0
            }
            Err(e) => {
                tracing::warn!(collector = %b.label, error = %e, "receive failed");
                std::thread::sleep(Duration::from_millis(100));
                0
            }
        };
        let now_ms = system_now_ms();
        records.clear();
        for i in 0..n {
            let (from, payload, truncated) = rx.get(i);
            sec_dgrams += 1;
            sec_bytes += payload.len() as u64;
            if !allowed.is_empty() && !allowed.iter().any(|p| p.contains(&from.ip())) {
                metrics
                    .datagrams_dropped
                    .with_label_values(&[&b.label, "not_allowed"])
                    .inc();
                continue;
            }
            if truncated {
                metrics
                    .datagrams_dropped
                    .with_label_values(&[&b.label, "truncated"])
                    .inc();
                continue;
            }
            let oc = match &mut dec {
                Decoder::Netflow(d) => d.decode(from, payload, &mut records),
                Decoder::Sflow(d) => {
                    if Version::sniff(payload) == Version::Sflow5 {
                        d.decode(from, payload, &mut records)
                    } else {
                        let mut oc = crate::decode::DecodeOutcome {
                            version: Some(Version::Unknown),
                            ..Default::default()
                        };
                        oc.error = Some(crate::decode::DecodeErrorKind::BadVersion);
                        oc
                    }
                }
            };
            tally.add(&oc);
            let ip = from.ip();
            let n = labelled.len();
            let series = match labelled.entry(ip) {
                Entry::Occupied(o) => Some(o.into_mut()),
                Entry::Vacant(v) if oc.error.is_none() && n < MAX_EXPORTER_SERIES => {
                    Some(v.insert(ExporterSeries::new(&metrics, &b.label, ip, netflow)))
                }
                Entry::Vacant(_) => {
                    if oc.error.is_none() {
                        metrics.exporter_series_overflow.inc();
                    }
                    None
                }
            };
            if let Some(s) = series {
                if oc.records > 0 {
                    s.records.inc_by(oc.records as u64);
                }
                if oc.error.is_some() {
                    s.errors.inc();
                }
                if let Some(rate) = oc.sampling_rate.filter(|r| s.rate != Some(*r)) {
                    if s.rate.is_none() {
                        tracing::info!(collector = %b.label, exporter = %ip, sampling_rate = rate, "new exporter");
                    }
                    s.rate = Some(rate);
                    metrics
                        .exporter_sampling_rate
                        .with_label_values(&[&b.label, &ip.to_string()])
                        .set(i64::from(rate));
                }
            }
        }
        tally.flush(&metrics, &b.label);
        if !records.is_empty() {
            pipeline.ingest(&records, now_ms, &mut scratch);
        }
        if now_ms - last_drops >= DROPS_EVERY_MS {
            last_drops = now_ms;
            if let Some(d) = socket_drops(&b.socket) {
                metrics
                    .socket_drops
                    .with_label_values(&[&b.label])
                    .set(i64::from(d));
            }
        }
        if now_ms - last_prune >= PRUNE_EVERY_MS {
            last_prune = now_ms;
            if let Decoder::Netflow(d) = &mut dec {
                let n = d.prune_idle(EXPORTER_IDLE);
                if n > 0 {
                    tracing::info!(collector = %b.label, scopes = n, "forgot idle exporter scopes");
                }
            }
        }
        if now_ms - last_gauges >= 1000 {
            last_gauges = now_ms;
            coalesce = coalesce_for(rcvbuf, sec_dgrams, sec_bytes);
            (sec_dgrams, sec_bytes) = (0, 0);
            let (exporters, templates) = match &dec {
                Decoder::Netflow(d) => {
                    let per = d.templates_by_exporter();
                    for (ip, s) in &labelled {
                        if let Some(g) = &s.templates {
                            g.set(per.get(ip).copied().unwrap_or(0) as i64);
                        }
                    }
                    (d.exporters(), d.templates_known())
                }
                Decoder::Sflow(d) => (d.exporters(), 0),
            };
            metrics
                .exporters_known
                .with_label_values(&[&b.label])
                .set(exporters as i64);
            metrics
                .templates_known
                .with_label_values(&[&b.label])
                .set(templates as i64);
        }
        // Coalescing: a partial batch means the socket is drained. Waiting a moment lets
        // the next datagrams queue up so they come in one call instead of one wake-up
        // each: at 1 M records/s that is ~30 datagrams per call instead of 1-2, and the
        // per-call cost (syscall, wake-up) was most of the CPU per record there. Full
        // batches never wait, so a flood is read as fast as before.
        if n > 0 && n < BATCH && !coalesce.is_zero() {
            std::thread::sleep(coalesce);
        }
    }
    tracing::info!(collector = %b.label, "collector stopped");
}

/// How long to wait after draining the socket, given the receive buffer the kernel granted
/// (`rcvbuf` bytes) and the last second's arrivals: at most [`MAX_COALESCE`], and no
/// longer than it takes the arrivals to fill a quarter of the buffer, so the wait cannot
/// cause drops (a fixed 1 ms could, at 3 M v5 records/s, with the common 208 KiB default
/// buffer: here the wait shrinks to ~0.4 ms). With room to spare, 2 ms instead of 1 ms
/// halves the wake-ups: ~4 % less CPU per record at 1-3 M v5 records/s in A/B runs.
fn coalesce_for(rcvbuf: u64, dgrams_per_sec: u64, bytes_per_sec: u64) -> Duration {
    if dgrams_per_sec == 0 {
        return MAX_COALESCE;
    }
    let truesize = bytes_per_sec / dgrams_per_sec + SKB_OVERHEAD_BYTES;
    let room = rcvbuf / 4 / truesize; // datagrams a quarter of the buffer holds
    let micros = room.saturating_mul(1_000_000) / dgrams_per_sec;
    Duration::from_micros(micros).min(MAX_COALESCE)
}

/// Buffers for one `recvmmsg` batch, allocated once per thread.
struct BatchReceiver {
    /// BATCH receive buffers of DGRAM_MAX bytes in one allocation, STRIDE apart.
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl BatchReceiver {
    fn new() -> Self {
        BatchReceiver {
            bufs: vec![0u8; BATCH * STRIDE],
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            iovs: Vec::with_capacity(BATCH),
            // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// Receives up to BATCH datagrams; blocks up to the socket's read timeout.
    fn recv(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        self.iovs.clear();
        for b in self.bufs.chunks_exact_mut(STRIDE) {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr() as *mut libc::c_void,
                iov_len: DGRAM_MAX,
            });
        }
        for i in 0..BATCH {
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = &mut self.addrs[i] as *mut _ as *mut libc::c_void;
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = std::ptr::null_mut();
            h.msg_hdr.msg_controllen = 0;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // Block for the first datagram (SO_RCVTIMEO bounds the wait), then take whatever
        // else is queued without waiting.
        // SAFETY: every pointer in hdrs points into buffers owned by self that outlive
        // the call; lengths match the buffers.
        let n = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn get(&self, i: usize) -> (SocketAddr, &[u8], bool) {
        let len = self.hdrs[i].msg_len as usize;
        let truncated = self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        // An IPv4 exporter on a dual-stack socket is the IPv4 exporter for the
        // allow-list, the sampling overrides, metric labels and template scope alike.
        let from = crate::decode::canonical(
            sockaddr_to(&self.addrs[i]).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
        );
        let start = i * STRIDE;
        (
            from,
            &self.bufs[start..start + len.min(DGRAM_MAX)],
            truncated,
        )
    }
}

fn sockaddr_to(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in) };
            Some(SocketAddr::from((
                u32::from_be(a.sin_addr.s_addr).to_be_bytes(),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const _ as *const libc::sockaddr_in6) };
            Some(SocketAddr::from((
                a.sin6_addr.s6_addr,
                u16::from_be(a.sin6_port),
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_fits_a_quarter_of_the_buffer() {
        // 8 MiB granted, 100 000 v5 datagrams/s (3 M records/s): the full 2 ms.
        let big = 8 << 20;
        assert_eq!(coalesce_for(big, 100_000, 146_400_000), MAX_COALESCE);
        // The 208 KiB default (425 984 read back): 42 datagrams of room, 0.42 ms.
        let small = coalesce_for(425_984, 100_000, 146_400_000);
        assert_eq!(small, Duration::from_micros(420));
        // Faster than even that: no wait at all rather than drops.
        assert_eq!(coalesce_for(4096, 1_000_000, 1_464_000_000), Duration::ZERO);
        // Nothing arrived (or first second): the full wait, as before any traffic.
        assert_eq!(coalesce_for(425_984, 0, 0), MAX_COALESCE);
        // The wait never exceeds the maximum, however large the buffer.
        assert_eq!(coalesce_for(u64::MAX, 1, 1), MAX_COALESCE);
    }

    /// A socket nobody reads, with the smallest queue, overflows: the kernel's drop
    /// count comes back through SO_MEMINFO (what `flowguard_socket_receive_drops` shows).
    #[cfg(target_os = "linux")]
    #[test]
    fn kernel_drops_are_read_back() {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_recv_buffer_size(1).unwrap(); // raised to the kernel's minimum
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        let rx: UdpSocket = s.into();
        assert_eq!(socket_drops(&rx), Some(0));
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = rx.local_addr().unwrap();
        let dgram = [0u8; 1400];
        // Bounded: 2 000 datagrams to our own loopback socket.
        let sent = (0..2000).filter(|_| tx.send_to(&dgram, to).is_ok()).count();
        let drops = socket_drops(&rx).unwrap() as usize;
        let mut queued = 0;
        rx.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        while rx.recv_from(&mut buf).is_ok() {
            queued += 1;
        }
        assert!(
            drops > 0,
            "no drops reported ({sent} sent, {queued} queued)"
        );
        assert_eq!(
            drops + queued,
            sent,
            "every datagram either queued or counted dropped"
        );
    }
}
