//! Collectors: UDP sockets that receive exported datagrams, and the receive threads that
//! decode them (each thread owns its decoders) and hand the records on.
//!
//! A `[[collector]]` runs `threads` receive threads (default: one per core), each with its
//! own socket bound to the collector's address with `SO_REUSEPORT`. The kernel picks the
//! socket of a datagram by hashing its 4-tuple, so one exporter (source address and port)
//! always lands in the same thread: each thread owns its decoders, and template and
//! sampling state never cross threads. Each receives in batches with `recvmmsg(2)` (up to
//! [`BATCH`] datagrams per system call) into a large `SO_RCVBUF`; the kernel's count of
//! datagrams it dropped because a socket queue was full is read with `SO_MEMINFO`. Each
//! thread decodes its batch and hands the records to the aggregate stage (a
//! [`RecordSink`]) with one lock per shard per batch (per shard and delta accumulator on a
//! cluster collector): no channel send and no heap allocation per record on this path.
//!
//! What the threads of one collector share ([`Shared`]) is touched per datagram of an
//! exporter without a series of its own, per new exporter, and every `DROPS_EVERY_MS`,
//! never per record: the per-exporter series (prometheus counters, atomic) are created
//! once under a lock and then cached by each thread, and the per-thread gauges (socket
//! drops, exporter scopes, templates) are summed every `DROPS_EVERY_MS` (250 ms).
//!
//! The exporter allow-list is checked before any parsing, so spoofed datagrams cannot
//! touch real exporters' template state; refused datagrams are counted by reason.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ipnet::IpNet;
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};

use crate::aggregate::RecordSink;
use crate::clock::Clock;
use crate::config::{CollectorConfig, CollectorProtocol};
use crate::decode::netflow::{NetflowLimits, MAX_SOURCES};
use crate::decode::{FlowRecord, NetflowDecoder, SflowDecoder, Version};
use crate::metrics::{Metrics, MAX_EXPORTER_SERIES};

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
/// How often each thread reads its socket's drop count (and its decoder's exporter and
/// template counts) and publishes them for the collector's gauges.
const DROPS_EVERY_MS: i64 = 250;
/// How often idle exporter scopes are looked for.
const PRUNE_EVERY_MS: i64 = 60_000;

/// A bound collector: one socket per receive thread, all on the same address; not yet
/// running.
pub struct Bound {
    pub cfg: CollectorConfig,
    pub label: String,
    pub sockets: Vec<UdpSocket>,
    pub local: SocketAddr,
}

/// Binds every collector; all errors at once.
pub fn bind_all(cfgs: &[CollectorConfig]) -> anyhow::Result<Vec<Bound>> {
    let mut out = Vec::new();
    let mut errs = Vec::new();
    for (i, c) in cfgs.iter().enumerate() {
        match bind_group(c, c.thread_count()) {
            Ok((sockets, local)) => out.push(Bound {
                label: c.label(),
                cfg: c.clone(),
                sockets,
                local,
            }),
            Err(e) => errs.push(format!("collector[{i}] {}: {e}", c.listen)),
        }
    }
    if !errs.is_empty() {
        anyhow::bail!("cannot bind collectors:\n  {}", errs.join("\n  "));
    }
    Ok(out)
}

/// `n` sockets on `c.listen` (the port the kernel chose for the first if it is 0).
fn bind_group(c: &CollectorConfig, n: usize) -> io::Result<(Vec<UdpSocket>, SocketAddr)> {
    let n = n.max(1);
    if n == 1 {
        let s = bind(c, c.listen, false)?;
        let local = s.local_addr()?;
        return Ok((vec![s], local));
    }
    // SO_REUSEPORT would let us join a group another process of the same user already
    // bound there (a second flowguard), silently splitting its traffic; a probe bound
    // without it fails with "address in use" as a single socket would.
    if c.listen.port() != 0 {
        drop(bind(c, c.listen, false)?);
    }
    let first = bind(c, c.listen, true)?;
    let local = first.local_addr()?;
    let mut out = vec![first];
    for _ in 1..n {
        out.push(bind(c, local, true)?);
    }
    Ok((out, local))
}

fn bind(c: &CollectorConfig, at: SocketAddr, reuse_port: bool) -> io::Result<UdpSocket> {
    let domain = if at.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    // The kernel caps this at net.core.rmem_max; a bigger queue absorbs bursts while a
    // batch is being decoded.
    let _ = s.set_recv_buffer_size(c.receive_buffer_bytes);
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    if reuse_port {
        #[cfg(unix)]
        s.set_reuse_port(true)?;
    }
    s.bind(&at.into())?;
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

/// Starts the receive threads of a bound collector, handing what they decode to `sink`
/// (the aggregate stage, or anything else that takes records) and counting into
/// `metrics`; records are stamped with `clock`'s "now" as they arrive. The handle
/// returned ends when all of them have stopped.
pub fn spawn<S: RecordSink + 'static>(
    b: Bound,
    sink: Arc<S>,
    metrics: Arc<Metrics>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let label = b.label.clone();
    let workers = start(b, sink, metrics, clock, stop)?;
    std::thread::Builder::new()
        .name(format!("collect-{label}"))
        .spawn(move || {
            for w in workers {
                let _ = w.join();
            }
        })
}

/// Starts one receive thread per socket of `b`; each one's handle returns the datagrams
/// it received.
fn start<S: RecordSink + 'static>(
    b: Bound,
    sink: Arc<S>,
    metrics: Arc<Metrics>,
    clock: Clock,
    stop: Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<u64>>> {
    let Bound {
        cfg,
        label,
        sockets,
        local,
    } = b;
    let shared = Arc::new(Shared::new(label, sockets.len()));
    let cfg = Arc::new(cfg);
    let mut out = Vec::with_capacity(sockets.len());
    for (i, socket) in sockets.into_iter().enumerate() {
        let w = Worker {
            index: i,
            cfg: cfg.clone(),
            shared: shared.clone(),
            socket,
            local,
            clock: clock.clone(),
        };
        let (p, m, st) = (sink.clone(), metrics.clone(), stop.clone());
        out.push(
            std::thread::Builder::new()
                .name(format!("collect-{i}-{}", shared.label))
                .spawn(move || receive_loop(w, p, m, st))?,
        );
    }
    Ok(out)
}

/// One exporter's own series: the handles are looked up once, so a datagram costs an
/// atomic add or two, not a label lookup (formatting the address label per datagram was
/// measurable). At most [`MAX_EXPORTER_SERIES`] per collector, shared by its threads.
struct ExporterSeries {
    /// The sampling rate last set on its gauge, 0 before any (set only when it changes).
    rate: AtomicU32,
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
            rate: AtomicU32::new(0),
            records: m.exporter_records.with_label_values(&l),
            errors: m.exporter_decode_errors.with_label_values(&l),
            templates: netflow.then(|| m.exporter_templates_known.with_label_values(&l)),
        }
    }
}

/// One thread's share of the per-collector gauges, written every `DROPS_EVERY_MS`.
#[derive(Default)]
struct ThreadGauges {
    drops: u32,
    exporters: usize,
    templates: usize,
    templates_by_exporter: HashMap<IpAddr, usize>,
}

/// What the threads of one collector share. Locked per new exporter, per datagram of an
/// exporter that has no series, and every `DROPS_EVERY_MS` per thread; never per record.
struct Shared {
    label: String,
    /// Exporters with their own series. One is given a series by its first well-formed
    /// datagram, so garbage from random sources cannot take the slots.
    series: Mutex<HashMap<IpAddr, Arc<ExporterSeries>, ahash::RandomState>>,
    gauges: Mutex<Vec<ThreadGauges>>,
}

impl Shared {
    fn new(label: String, threads: usize) -> Self {
        Shared {
            label,
            series: Mutex::new(HashMap::default()),
            gauges: Mutex::new((0..threads).map(|_| ThreadGauges::default()).collect()),
        }
    }

    /// The series of `ip`, created if `well_formed` and there is room (else counted).
    fn series_for(
        &self,
        m: &crate::metrics::Metrics,
        ip: IpAddr,
        well_formed: bool,
        netflow: bool,
    ) -> Option<Arc<ExporterSeries>> {
        let mut all = self.series.lock();
        if let Some(s) = all.get(&ip) {
            return Some(s.clone());
        }
        if !well_formed {
            return None;
        }
        if all.len() >= MAX_EXPORTER_SERIES {
            m.exporter_series_overflow.inc();
            return None;
        }
        let s = Arc::new(ExporterSeries::new(m, &self.label, ip, netflow));
        all.insert(ip, s.clone());
        Some(s)
    }

    /// Stores thread `index`'s gauges and sets the collector's gauges to the sums over
    /// its threads. Sums are exact: an exporter scope (address, port, source id) lives
    /// in exactly one thread.
    fn publish(&self, m: &crate::metrics::Metrics, index: usize, mine: ThreadGauges) {
        let (drops, exporters, templates, per) = {
            let mut g = self.gauges.lock();
            g[index] = mine;
            let mut per: HashMap<IpAddr, usize> = HashMap::new();
            for t in g.iter() {
                for (ip, n) in &t.templates_by_exporter {
                    *per.entry(*ip).or_default() += n;
                }
            }
            (
                g.iter().map(|t| i64::from(t.drops)).sum::<i64>(),
                g.iter().map(|t| t.exporters).sum::<usize>(),
                g.iter().map(|t| t.templates).sum::<usize>(),
                per,
            )
        };
        let l = [self.label.as_str()];
        m.socket_drops.with_label_values(&l).set(drops);
        m.exporters_known
            .with_label_values(&l)
            .set(exporters as i64);
        m.templates_known
            .with_label_values(&l)
            .set(templates as i64);
        for (ip, s) in self.series.lock().iter() {
            if let Some(g) = &s.templates {
                g.set(per.get(ip).copied().unwrap_or(0) as i64);
            }
        }
    }
}

/// One receive thread's socket and identity.
struct Worker {
    index: usize,
    cfg: Arc<CollectorConfig>,
    shared: Arc<Shared>,
    socket: UdpSocket,
    local: SocketAddr,
    clock: Clock,
}

enum Decoder {
    // Boxed: the NetFlow decoder's caches make it much larger than the sFlow one.
    Netflow(Box<NetflowDecoder>),
    Sflow(SflowDecoder),
}

fn receive_loop<S: RecordSink>(
    w: Worker,
    sink: Arc<S>,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let cfg = &*w.cfg;
    let label = w.shared.label.as_str();
    let ov = cfg.sampling();
    let mut dec = match cfg.protocol {
        CollectorProtocol::Netflow => {
            // The cap on exporter scopes is the collector's, not each thread's: every
            // thread's decoder gets its share, so N threads hold no more than one did.
            let threads = w.shared.gauges.lock().len().max(1);
            let limits = NetflowLimits {
                max_sources: MAX_SOURCES.div_ceil(threads),
                ..NetflowLimits::default()
            };
            let mut d = NetflowDecoder::with_limits(ov, limits);
            d.set_biflow_reverse(cfg.biflow_reverse);
            Decoder::Netflow(Box::new(d))
        }
        CollectorProtocol::Sflow => Decoder::Sflow(SflowDecoder::new(ov)),
    };
    let allowed: Vec<IpNet> = cfg.allowed_exporters.clone();
    let mut rx = BatchReceiver::new();
    let mut records: Vec<FlowRecord> = Vec::with_capacity(BATCH * 32);
    let mut scratch = sink.scratch();
    // This thread's cache of the collector's exporter series: only exporters that have
    // one (at most MAX_EXPORTER_SERIES). A miss locks the shared map, and an exporter that
    // gets no series (over the cap, or no well-formed datagram yet) misses every time:
    // once per datagram, not per record. Caching the refusal would need a bound of its
    // own against spoofed sources; not done.
    let mut labelled: HashMap<IpAddr, Arc<ExporterSeries>, ahash::RandomState> = HashMap::default();
    let netflow = matches!(cfg.protocol, CollectorProtocol::Netflow);
    let mut tally = DecodeTally::default();
    let mut last_gauges = 0i64;
    let mut last_publish = 0i64;
    let mut received = 0u64;
    // What the kernel granted (SO_RCVBUF reads back the doubled, truesize-accounted
    // limit), and the last second's arrivals, for the coalescing wait.
    let rcvbuf = socket2::SockRef::from(&w.socket)
        .recv_buffer_size()
        .unwrap_or(0) as u64;
    let (mut sec_dgrams, mut sec_bytes) = (0u64, 0u64);
    let mut coalesce = coalesce_for(rcvbuf, 0, 0);
    let mut last_prune = w.clock.now_ms();
    tracing::info!(collector = %label, listen = %w.local, thread = w.index, "collector listening");
    while !stop.load(Ordering::Relaxed) {
        let n = match rx.recv(&w.socket) {
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
                tracing::warn!(collector = %label, error = %e, "receive failed");
                std::thread::sleep(Duration::from_millis(100));
                0
            }
        };
        received += n as u64;
        let now_ms = w.clock.now_ms();
        records.clear();
        for i in 0..n {
            let (from, payload, truncated) = rx.get(i);
            sec_dgrams += 1;
            sec_bytes += payload.len() as u64;
            if !allowed.is_empty() && !allowed.iter().any(|p| p.contains(&from.ip())) {
                metrics
                    .datagrams_dropped
                    .with_label_values(&[label, "not_allowed"])
                    .inc();
                continue;
            }
            if truncated {
                metrics
                    .datagrams_dropped
                    .with_label_values(&[label, "truncated"])
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
            let series = match labelled.entry(ip) {
                Entry::Occupied(o) => Some(&**o.into_mut()),
                Entry::Vacant(v) => w
                    .shared
                    .series_for(&metrics, ip, oc.error.is_none(), netflow)
                    .map(|s| &**v.insert(s)),
            };
            if let Some(s) = series {
                if oc.records > 0 {
                    s.records.inc_by(oc.records as u64);
                }
                if oc.error.is_some() {
                    s.errors.inc();
                }
                if let Some(rate) = oc
                    .sampling_rate
                    .filter(|r| s.rate.load(Ordering::Relaxed) != *r)
                {
                    if s.rate.swap(rate, Ordering::Relaxed) == 0 {
                        tracing::info!(collector = %label, exporter = %ip, sampling_rate = rate, "new exporter");
                    }
                    metrics
                        .exporter_sampling_rate
                        .with_label_values(&[label, &ip.to_string()])
                        .set(i64::from(rate));
                }
            }
        }
        tally.flush(&metrics, label);
        if !records.is_empty() {
            sink.ingest(&records, now_ms, &mut scratch);
        }
        if now_ms - last_prune >= PRUNE_EVERY_MS {
            last_prune = now_ms;
            if let Decoder::Netflow(d) = &mut dec {
                let n = d.prune_idle(EXPORTER_IDLE);
                if n > 0 {
                    tracing::info!(collector = %label, scopes = n, "forgot idle exporter scopes");
                }
            }
        }
        if now_ms - last_gauges >= 1000 {
            last_gauges = now_ms;
            coalesce = coalesce_for(rcvbuf, sec_dgrams, sec_bytes);
            (sec_dgrams, sec_bytes) = (0, 0);
        }
        if now_ms - last_publish >= DROPS_EVERY_MS {
            last_publish = now_ms;
            let mine = match &dec {
                Decoder::Netflow(d) => ThreadGauges {
                    drops: socket_drops(&w.socket).unwrap_or(0),
                    exporters: d.exporters(),
                    templates: d.templates_known(),
                    templates_by_exporter: d.templates_by_exporter(),
                },
                Decoder::Sflow(d) => ThreadGauges {
                    drops: socket_drops(&w.socket).unwrap_or(0),
                    exporters: d.exporters(),
                    ..ThreadGauges::default()
                },
            };
            w.shared.publish(&metrics, w.index, mine);
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
    tracing::info!(collector = %label, thread = w.index, datagrams = received, "collector stopped");
    received
}

/// What [`receive_only`] took in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkCounts {
    pub datagrams: u64,
    pub bytes: u64,
    /// `recvmmsg` calls that returned datagrams.
    pub calls: u64,
}

/// The collectors' receive path with nothing decoded, for the receive-only benchmark
/// (`examples/recv_sink.rs`): the same buffers, batch size, receive timeout and
/// coalescing wait as a collector thread, so its CPU per datagram is what the kernel and
/// the system calls cost flowguard before any decoding. Runs until `stop`.
pub fn receive_only(sock: &UdpSocket, stop: &AtomicBool) -> SinkCounts {
    let mut rx = BatchReceiver::new();
    let rcvbuf = socket2::SockRef::from(sock).recv_buffer_size().unwrap_or(0) as u64;
    let mut c = SinkCounts::default();
    // A bench path with no service: the wall clock, as a collector's in production.
    let clock = Clock::system();
    let (mut sec_dgrams, mut sec_bytes, mut last) = (0u64, 0u64, clock.now_ms());
    let mut coalesce = coalesce_for(rcvbuf, 0, 0);
    while !stop.load(Ordering::Relaxed) {
        let n = rx.recv(sock).unwrap_or(0);
        if n > 0 {
            c.calls += 1;
        }
        for i in 0..n {
            let len = rx.hdrs[i].msg_len as u64;
            c.datagrams += 1;
            c.bytes += len;
            sec_dgrams += 1;
            sec_bytes += len;
        }
        let now = clock.now_ms();
        if now - last >= 1000 {
            last = now;
            coalesce = coalesce_for(rcvbuf, sec_dgrams, sec_bytes);
            (sec_dgrams, sec_bytes) = (0, 0);
        }
        if n > 0 && n < BATCH && !coalesce.is_zero() {
            std::thread::sleep(coalesce);
        }
    }
    c
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

/// Several receive threads on one port, through the real sockets on loopback.
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod thread_tests {
    use super::*;
    use crate::aggregate::Aggregate;
    use crate::config::Config;
    use crate::pipeline::Pipeline;
    use std::time::Instant;

    fn p16(v: &mut Vec<u8>, x: u16) {
        v.extend_from_slice(&x.to_be_bytes());
    }
    fn p32(v: &mut Vec<u8>, x: u32) {
        v.extend_from_slice(&x.to_be_bytes());
    }

    /// A NetFlow v5 datagram of `n` UDP records to `dst`, `packets` each.
    pub(crate) fn v5(dst: [u8; 4], n: u16, packets: u32, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        p16(&mut v, 5);
        p16(&mut v, n);
        p32(&mut v, 1_000_000); // uptime
        p32(&mut v, 1_800_000_000);
        p32(&mut v, 0);
        p32(&mut v, seq);
        p32(&mut v, 0); // engine, sampling: none
        for _ in 0..n {
            v.extend_from_slice(&[198, 51, 100, 7]);
            v.extend_from_slice(&dst);
            p32(&mut v, 0);
            p32(&mut v, 0); // input, output
            p32(&mut v, packets);
            p32(&mut v, packets * 100);
            p32(&mut v, 1_000_000); // first
            p32(&mut v, 1_000_000); // last
            p16(&mut v, 5353);
            p16(&mut v, 53);
            v.extend_from_slice(&[0, 0, 17, 0]); // pad, flags, protocol, tos
            p32(&mut v, 0); // AS numbers
            v.extend_from_slice(&[24, 24, 0, 0]);
        }
        v
    }

    const V9_FIELDS: [(u16, u16); 5] = [(8, 4), (12, 4), (4, 1), (2, 4), (1, 4)];

    fn v9_header(v: &mut Vec<u8>, count: u16, seq: u32) {
        p16(v, 9);
        p16(v, count);
        p32(v, 1_000_000);
        p32(v, 1_800_000_000);
        p32(v, seq);
        p32(v, 7); // source id
    }

    /// A v9 datagram with only template 256 (src, dst, protocol, packets, bytes).
    fn v9_template(seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v9_header(&mut v, 1, seq);
        p16(&mut v, 0);
        p16(&mut v, (8 + 4 * V9_FIELDS.len()) as u16);
        p16(&mut v, 256);
        p16(&mut v, V9_FIELDS.len() as u16);
        for (id, len) in V9_FIELDS {
            p16(&mut v, id);
            p16(&mut v, len);
        }
        v
    }

    /// A v9 datagram of `n` records of template 256 to `dst`.
    fn v9_data(dst: [u8; 4], n: u16, packets: u32, seq: u32) -> Vec<u8> {
        let mut v = Vec::new();
        v9_header(&mut v, n, seq);
        let start = v.len();
        p16(&mut v, 256);
        p16(&mut v, 0);
        for _ in 0..n {
            v.extend_from_slice(&[198, 51, 100, 9]);
            v.extend_from_slice(&dst);
            v.push(17);
            p32(&mut v, packets);
            p32(&mut v, packets * 100);
        }
        while (v.len() - start) % 4 != 0 {
            v.push(0);
        }
        let len = (v.len() - start) as u16;
        v[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
        v
    }

    fn setup(threads: usize) -> (Bound, Arc<Aggregate>) {
        let cfg = Config::from_toml_str(&format!(
            r#"
            [[collector]]
            protocol = "netflow"
            listen = "127.0.0.1:0"
            threads = {threads}
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 100000000
            "#
        ))
        .unwrap();
        let p = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
        p.aggregate.keep_totals();
        let mut bound = bind_all(&cfg.collectors).unwrap();
        (bound.remove(0), p.aggregate.clone())
    }

    fn records(p: &Aggregate, label: &str, version: &str) -> u64 {
        p.metrics()
            .flow_records
            .with_label_values(&[label, version])
            .get()
    }

    /// Waits (at most 10 s) until the collector counted `want` records of `version`.
    fn wait_for(p: &Aggregate, label: &str, version: &str, want: u64) {
        let t0 = Instant::now();
        while records(p, label, version) < want && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn packets_to(p: &Aggregate, ip: &str) -> u64 {
        let ip: IpAddr = ip.parse().unwrap();
        p.totals()
            .iter()
            .filter(|t| t.ip == ip)
            .map(|t| t.totals.packets)
            .sum()
    }

    #[test]
    fn threads_default_to_the_cores_and_bind_one_socket_each() {
        let (b, _) = setup(0);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(b.sockets.len(), cores);
        let (b, _) = setup(3);
        assert_eq!(b.sockets.len(), 3);
        for s in &b.sockets {
            assert_eq!(s.local_addr().unwrap(), b.local);
        }
    }

    #[test]
    fn a_busy_port_is_refused_even_with_several_threads() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let cfg = Config::from_toml_str(&format!(
            "[[collector]]\nprotocol = \"netflow\"\nlisten = \"{}\"\nthreads = 2\n",
            taken.local_addr().unwrap()
        ))
        .unwrap();
        assert!(bind_all(&cfg.collectors).is_err());
    }

    /// Two threads on one port, 32 exporters (source ports) on 127.0.0.1: both threads
    /// receive, nothing is lost or counted twice, and each v9 exporter's template (sent
    /// from the same source port as its data) is known in the thread its data reaches.
    #[test]
    fn two_threads_on_one_port_share_the_exporters_and_the_totals_are_exact() {
        let (b, p) = setup(2);
        let (to, label) = (b.local, b.label.clone());
        assert_eq!(b.sockets.len(), 2);
        let stop = Arc::new(AtomicBool::new(false));
        let workers = start(
            b,
            p.clone(),
            p.metrics().clone(),
            Clock::system(),
            stop.clone(),
        )
        .unwrap();
        // Bounded: 32 exporters × 20 datagrams × 30 records (v5), then 32 × (1 template
        // + 20 data datagrams × 10 records) (v9), all to our own loopback port.
        let exporters: Vec<UdpSocket> = (0..32)
            .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        let mut seq = 0;
        for _ in 0..20 {
            for e in &exporters {
                seq += 1;
                e.send_to(&v5([192, 0, 2, 1], 30, 3, seq), to).unwrap();
            }
            // Paced: the receive buffers are large, but this stays far from them.
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_for(&p, &label, "v5", 32 * 20 * 30);
        for (i, e) in exporters.iter().enumerate() {
            e.send_to(&v9_template(i as u32), to).unwrap();
        }
        // Templates first on every socket, so no data datagram overtakes its template.
        std::thread::sleep(Duration::from_millis(300));
        for k in 0..20 {
            for e in &exporters {
                e.send_to(&v9_data([192, 0, 2, 2], 10, 5, 100 + k), to)
                    .unwrap();
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_for(&p, &label, "v9", 32 * 20 * 10);
        // One more publish period, so both threads' gauges are summed.
        std::thread::sleep(Duration::from_millis(2 * DROPS_EVERY_MS as u64 + 100));
        stop.store(true, Ordering::Relaxed);
        let per_thread: Vec<u64> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        let m = p.metrics();

        assert_eq!(per_thread.len(), 2);
        assert!(
            per_thread.iter().all(|&n| n > 0),
            "both threads receive: {per_thread:?}"
        );
        // 32 × (20 v5 + 1 template + 20 v9) datagrams, each received exactly once.
        assert_eq!(per_thread.iter().sum::<u64>(), 32 * 41, "{per_thread:?}");
        assert_eq!(records(&p, &label, "v5"), 32 * 20 * 30);
        assert_eq!(records(&p, &label, "v9"), 32 * 20 * 10);
        assert_eq!(m.template_misses.with_label_values(&[&label]).get(), 0);
        assert_eq!(packets_to(&p, "192.0.2.1"), 32 * 20 * 30 * 3);
        assert_eq!(packets_to(&p, "192.0.2.2"), 32 * 20 * 10 * 5);
        // Gauges summed over the threads: 32 v9 scopes and their 32 templates, plus the
        // v5 exporters the decoder keeps (one per source port).
        assert_eq!(m.templates_known.with_label_values(&[&label]).get(), 32);
        assert_eq!(
            m.exporter_templates_known
                .with_label_values(&[&label, "127.0.0.1"])
                .get(),
            32
        );
        // One exporter address, one series, whichever threads its ports landed in.
        assert_eq!(
            m.exporter_records
                .with_label_values(&[&label, "127.0.0.1"])
                .get(),
            32 * 20 * 30 + 32 * 20 * 10
        );
        assert_eq!(m.exporter_series_overflow.get(), 0);
    }
}
