//! `flowguard-loadgen`: sends NetFlow v5/v9/IPFIX or sFlow v5 at a given record rate to a
//! loopback UDP address, for benchmarks (see `benches/README.md`).
//!
//! Datagrams are built before the clock starts (a pool cycled through) and sent with
//! `sendmmsg(2)` in batches, paced against the wall clock. Hard limits: the target must be
//! a loopback address (127.0.0.0/8 or ::1) and the run lasts at most [`MAX_SECONDS`].
//! Addresses *inside* the exported records are just data (a protected range such as
//! 100.64.0.0/16, sources from `--source-prefix`, by default the 198.18.0.0/15 benchmark
//! range); `--walk-prefix` and `--walk-sources` rewrite them on the fly so a run can offer
//! millions of distinct destinations or sources (the bounded-state tests).
//!
//! Prints one JSON object on stdout saying what it offered.

mod gen;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use ipnet::Ipv4Net;
use rand::{Rng, SeedableRng};

use gen::{Flow, Format};

/// Longest run allowed, whatever `--duration` says.
const MAX_SECONDS: f64 = 300.0;
/// Datagrams kept in the normal-traffic pool at most.
const MAX_POOL: usize = 16_384;

#[derive(Parser, Debug)]
#[command(
    name = "flowguard-loadgen",
    about = "Send generated NetFlow/IPFIX/sFlow to a loopback collector at a given rate"
)]
struct Cli {
    /// v5, v9, ipfix or sflow.
    #[arg(long, default_value = "v5")]
    format: String,
    /// Collector address; must be loopback (127.0.0.0/8 or ::1).
    #[arg(long)]
    target: SocketAddr,
    /// Records (sFlow: flow samples) per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Seconds to send (at most 300).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Distinct destination hosts of the normal traffic.
    #[arg(long, default_value_t = 10_000)]
    hosts: u32,
    /// The protected prefix destinations are taken from (record contents only).
    #[arg(long, default_value = "100.64.0.0/16")]
    prefix: Ipv4Net,
    /// Records per datagram (default: the most that fit a 1500-byte MTU; v5 at most 30).
    #[arg(long)]
    per_datagram: Option<usize>,
    /// Packets per normal record (NetFlow); bytes are 500 per packet.
    #[arg(long, default_value_t = 1)]
    packets: u32,
    /// sFlow sampling rate announced in every sample.
    #[arg(long, default_value_t = 1)]
    sampling_rate: u32,
    /// Exporters: one sending socket (own source port, own templates) each.
    #[arg(long, default_value_t = 1)]
    exporters: usize,
    /// Rewrite v5 destinations on the fly so they walk the whole prefix (a random-
    /// destination flood for the host-table cap test). v5 only.
    #[arg(long)]
    walk_prefix: bool,
    /// The prefix record sources are taken from (record contents only; the UDP source
    /// stays loopback).
    #[arg(long, default_value = "198.18.0.0/15")]
    source_prefix: Ipv4Net,
    /// Rewrite v5 sources on the fly, normal and attack records alike, so they walk the
    /// whole `--source-prefix` (a flood from a million distinct sources needs a /12).
    /// Each address is used once before the walk repeats. v5 only.
    #[arg(long)]
    walk_sources: bool,
    /// One host that receives a flood mixed into the normal traffic.
    #[arg(long)]
    attack_host: Option<Ipv4Addr>,
    /// syn or udp.
    #[arg(long, default_value = "syn")]
    attack_kind: String,
    /// Share of datagrams that carry the attack (0..1].
    #[arg(long, default_value_t = 0.05)]
    attack_share: f64,
    /// Seconds after the start when the attack begins.
    #[arg(long, default_value_t = 0.0)]
    attack_start: f64,
    /// Packets per attack record (NetFlow).
    #[arg(long, default_value_t = 100)]
    attack_packets: u32,
    /// Datagrams per sendmmsg call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Seconds between v9/IPFIX template datagrams.
    #[arg(long, default_value_t = 1.0)]
    template_interval: f64,
    /// Pin the sending thread to this CPU.
    #[arg(long)]
    cpu: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Refuses anything but loopback: this tool must never send to the network.
fn check_target(t: &SocketAddr) -> Result<(), String> {
    let ok = match t.ip() {
        IpAddr::V4(a) => a.octets()[0] == 127,
        IpAddr::V6(a) => a == std::net::Ipv6Addr::LOCALHOST,
    };
    if !ok {
        return Err(format!(
            "target {t} refused: only 127.0.0.0/8 and ::1 are allowed"
        ));
    }
    if t.port() == 0 {
        return Err(format!("target {t} refused: port 0"));
    }
    Ok(())
}

/// The whole pre-built traffic: normal and attack pools plus template datagrams.
struct Plan {
    format: Format,
    normal: Vec<Vec<u8>>,
    normal_records: Vec<u32>,
    attack: Vec<Vec<u8>>,
    attack_records: Vec<u32>,
    templates: Vec<u8>,
}

/// A walk over every address of a prefix: a fixed odd stride modulo the prefix size
/// visits each address once per period, in an order that spreads consecutive addresses
/// over the whole prefix (and so over the host table's shards).
struct Walk {
    base: u32,
    mask: u32,
    pos: u32,
}

impl Walk {
    fn new(p: &Ipv4Net) -> Walk {
        Walk {
            base: u32::from(p.network()),
            mask: host_mask(p),
            pos: 0,
        }
    }

    fn next(&mut self) -> [u8; 4] {
        self.pos = self.pos.wrapping_add(0x9E37_79B1);
        (self.base | (self.pos & self.mask)).to_be_bytes()
    }
}

/// The host bits of a prefix (0 for a /32, all ones for a /0).
fn host_mask(p: &Ipv4Net) -> u32 {
    u32::MAX.checked_shr(u32::from(p.prefix_len())).unwrap_or(0)
}

/// A random address of `p`.
fn random_in(rng: &mut rand::rngs::StdRng, p: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(p.network()) | rng.gen_range(0..=host_mask(p)))
}

fn normal_flow(rng: &mut rand::rngs::StdRng, src: &Ipv4Net, dst: Ipv4Addr, packets: u32) -> Flow {
    let udp = rng.gen_ratio(1, 4);
    Flow {
        src: random_in(rng, src),
        dst,
        src_port: rng.gen_range(1024..65535),
        dst_port: if udp { 53 } else { 443 },
        protocol: if udp { 17 } else { 6 },
        tcp_flags: if udp { 0 } else { 0x18 },
        packets,
        bytes: packets * 500,
    }
}

fn attack_flow(
    rng: &mut rand::rngs::StdRng,
    src: &Ipv4Net,
    dst: Ipv4Addr,
    kind: &str,
    packets: u32,
) -> Flow {
    let syn = kind != "udp";
    Flow {
        src: random_in(rng, src),
        dst,
        src_port: rng.gen_range(1024..65535),
        dst_port: if syn { 80 } else { 53 },
        protocol: if syn { 6 } else { 17 },
        tcp_flags: if syn { 0x02 } else { 0 },
        packets,
        bytes: packets * if syn { 60 } else { 1000 },
    }
}

fn encode(fmt: Format, flows: &[Flow], seq: u32, sampling: u32) -> Vec<u8> {
    let uptime = 3_600_000;
    let now = 1_700_000_000;
    match fmt {
        Format::V5 => gen::v5(flows, seq, uptime, now),
        Format::V9 => gen::v9_data(flows, 1, seq, uptime, now),
        Format::Ipfix => gen::ipfix_data(flows, 1, seq, now),
        Format::Sflow => gen::sflow(flows, Ipv4Addr::new(127, 0, 0, 1), seq, uptime, sampling),
    }
}

fn build(cli: &Cli, fmt: Format, per: usize) -> Plan {
    let mut rng = rand::rngs::StdRng::seed_from_u64(cli.seed);
    let span = (1u64 << (32 - cli.prefix.prefix_len())).max(1);
    let base = u32::from(cli.prefix.network());
    let hosts = u64::from(cli.hosts.max(1)).min(span);
    let npool = (hosts as usize).div_ceil(per).clamp(16, MAX_POOL);
    let mut normal = Vec::with_capacity(npool);
    let mut normal_records = Vec::with_capacity(npool);
    let mut h = 0u64;
    for i in 0..npool {
        let flows: Vec<Flow> = (0..per)
            .map(|_| {
                // Host 0 would be the network address: start at 1 when there is room.
                let off = if span > 2 {
                    1 + h % (span - 1).min(hosts)
                } else {
                    h % span
                };
                h += 1;
                normal_flow(
                    &mut rng,
                    &cli.source_prefix,
                    Ipv4Addr::from(base.wrapping_add(off as u32)),
                    cli.packets,
                )
            })
            .collect();
        normal.push(encode(fmt, &flows, i as u32, cli.sampling_rate));
        normal_records.push(per as u32);
    }
    let mut attack = Vec::new();
    let mut attack_records = Vec::new();
    if let Some(a) = cli.attack_host {
        for i in 0..64 {
            let flows: Vec<Flow> = (0..per)
                .map(|_| {
                    attack_flow(
                        &mut rng,
                        &cli.source_prefix,
                        a,
                        &cli.attack_kind,
                        cli.attack_packets,
                    )
                })
                .collect();
            attack.push(encode(fmt, &flows, (npool + i) as u32, cli.sampling_rate));
            attack_records.push(per as u32);
        }
    }
    let templates = match fmt {
        Format::V9 => gen::v9_template(1, 0, 3_600_000, 1_700_000_000),
        Format::Ipfix => gen::ipfix_template(1, 0, 1_700_000_000),
        _ => Vec::new(),
    };
    Plan {
        format: fmt,
        normal,
        normal_records,
        attack,
        attack_records,
        templates,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(target_os = "linux")]
fn pin(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes within it; pid 0 = this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin(_cpu: usize) {}

/// Sends `bufs` (indices into the pools) on a connected socket with one sendmmsg call;
/// returns how many went out.
fn send_batch(sock: &UdpSocket, bufs: &[&[u8]]) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut iovs: Vec<libc::iovec> = bufs
        .iter()
        .map(|b| libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain data; all-zero is valid (no name: the socket is connected).
    let mut hdrs: Vec<libc::mmsghdr> = vec![unsafe { std::mem::zeroed() }; bufs.len()];
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points at an iovec that points at a live buffer.
    let n = unsafe {
        libc::sendmmsg(
            sock.as_raw_fd(),
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            0,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn run(cli: Cli) -> Result<serde_json::Value, String> {
    check_target(&cli.target)?;
    let fmt = Format::parse(&cli.format).ok_or_else(|| format!("unknown format {}", cli.format))?;
    if !(cli.duration > 0.0 && cli.duration <= MAX_SECONDS) {
        return Err(format!("--duration must be in (0, {MAX_SECONDS}]"));
    }
    if cli.walk_prefix && fmt != Format::V5 {
        return Err("--walk-prefix is for v5 only".into());
    }
    if cli.walk_sources && fmt != Format::V5 {
        return Err("--walk-sources is for v5 only".into());
    }
    if !(cli.attack_share > 0.0 && cli.attack_share <= 1.0) {
        return Err("--attack-share must be in (0, 1]".into());
    }
    let per = cli
        .per_datagram
        .unwrap_or(fmt.max_per_datagram())
        .clamp(1, fmt.max_per_datagram());
    let batch = cli.batch.clamp(1, 1024);
    let exporters = cli.exporters.clamp(1, 64);
    let mut plan = build(&cli, fmt, per);
    let bind: SocketAddr = if cli.target.is_ipv4() {
        "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?
    } else {
        "[::1]:0".parse().map_err(|e| format!("{e}"))?
    };
    let mut socks = Vec::new();
    for _ in 0..exporters {
        let s = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
        s.connect(cli.target).map_err(|e| format!("connect: {e}"))?;
        let s2 = socket2::SockRef::from(&s);
        let _ = s2.set_send_buffer_size(4 << 20);
        socks.push(s);
    }
    if let Some(c) = cli.cpu {
        pin(c);
    }
    let attack_every = if plan.attack.is_empty() {
        u64::MAX
    } else {
        (1.0 / cli.attack_share).round().max(1.0) as u64
    };
    // Datagrams per second; the pool's records per datagram are all equal.
    let dgram_rate = if cli.rate == 0 {
        f64::INFINITY
    } else {
        cli.rate as f64 / per as f64
    };
    let mut dst_walk = Walk::new(&cli.prefix);
    let mut src_walk = Walk::new(&cli.source_prefix);
    // Walked datagrams are rewritten in place before the batch goes out, so one batch
    // must not hold the same pool datagram twice (the second rewrite would overwrite the
    // first): at most one pool's worth per batch.
    let batch = if cli.walk_prefix || cli.walk_sources {
        let smallest = if plan.attack.is_empty() {
            plan.normal.len()
        } else {
            plan.normal.len().min(plan.attack.len())
        };
        batch.min(smallest)
    } else {
        batch
    };

    let (mut datagrams, mut records, mut attack_records, mut attack_dgrams) =
        (0u64, 0u64, 0u64, 0u64);
    let (mut template_dgrams, mut send_errors, mut last_error) = (0u64, 0u64, String::new());
    let (mut ni, mut ai) = (0usize, 0usize);
    let mut attack_first: Option<f64> = None;
    let mut next_template = 0.0f64;
    let started_unix = unix_now();
    let t0 = Instant::now();
    let end = Duration::from_secs_f64(cli.duration);
    let mut sel: Vec<(bool, usize)> = Vec::with_capacity(batch);
    let mut k = 0u64;
    let mut failed = 0u64;
    let mut turn = 0usize;
    loop {
        let el = t0.elapsed();
        if el >= end {
            break;
        }
        let secs = el.as_secs_f64();
        if !plan.templates.is_empty() && secs >= next_template {
            for s in &socks {
                match s.send(&plan.templates) {
                    Ok(_) => template_dgrams += 1,
                    Err(e) => {
                        send_errors += 1;
                        last_error = e.to_string();
                    }
                }
            }
            next_template = secs + cli.template_interval.max(0.01);
        }
        let due = if dgram_rate.is_finite() {
            ((secs * dgram_rate) as u64).saturating_sub(datagrams + failed)
        } else {
            batch as u64
        };
        if due == 0 {
            // Ahead of schedule: sleep when the next datagram is far, else spin.
            let wait = (datagrams + failed + 1) as f64 / dgram_rate - secs;
            if wait > 0.000_2 {
                std::thread::sleep(Duration::from_secs_f64(wait.min(0.001) / 2.0));
            } else {
                std::hint::spin_loop();
            }
            continue;
        }
        let n = (due as usize).min(batch);
        let attacking = !plan.attack.is_empty() && secs >= cli.attack_start;
        sel.clear();
        for _ in 0..n {
            k += 1;
            if attacking && k % attack_every == 0 {
                let i = ai % plan.attack.len();
                ai += 1;
                if cli.walk_sources {
                    let d = &mut plan.attack[i];
                    for r in 0..plan.attack_records[i] as usize {
                        let o = gen::v5_src_offset(r);
                        d[o..o + 4].copy_from_slice(&src_walk.next());
                    }
                }
                sel.push((true, i));
            } else {
                let i = ni % plan.normal.len();
                ni += 1;
                let d = &mut plan.normal[i];
                for r in 0..plan.normal_records[i] as usize {
                    if cli.walk_prefix {
                        let o = gen::v5_dst_offset(r);
                        d[o..o + 4].copy_from_slice(&dst_walk.next());
                    }
                    if cli.walk_sources {
                        let o = gen::v5_src_offset(r);
                        d[o..o + 4].copy_from_slice(&src_walk.next());
                    }
                }
                sel.push((false, i));
            }
        }
        let bufs: Vec<&[u8]> = sel
            .iter()
            .map(|(a, i)| {
                if *a {
                    plan.attack[*i].as_slice()
                } else {
                    plan.normal[*i].as_slice()
                }
            })
            .collect();
        let has_attack = sel.iter().any(|(a, _)| *a);
        let before = if has_attack && attack_first.is_none() {
            Some(unix_now())
        } else {
            None
        };
        let sock = &socks[turn % socks.len()];
        turn += 1;
        match send_batch(sock, &bufs) {
            Ok(m) => {
                for (a, i) in &sel[..m] {
                    datagrams += 1;
                    if *a {
                        let r = u64::from(plan.attack_records[*i]);
                        records += r;
                        attack_records += r;
                        attack_dgrams += 1;
                        if attack_first.is_none() {
                            attack_first = before;
                        }
                    } else {
                        records += u64::from(plan.normal_records[*i]);
                    }
                }
                if m < n {
                    // Partial send: the rest is simply not offered; pacing catches up.
                    send_errors += 1;
                }
            }
            Err(e) => {
                send_errors += 1;
                last_error = e.to_string();
                // Not offered; keep the pacing moving and do not spin on a dead target.
                std::thread::sleep(Duration::from_millis(1));
                failed += n as u64;
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "format": plan.format.name(),
        "target": cli.target.to_string(),
        "exporters": exporters,
        "records_per_datagram": per,
        "hosts": cli.hosts,
        "prefix": cli.prefix.to_string(),
        "source_prefix": cli.source_prefix.to_string(),
        "walk_prefix": cli.walk_prefix,
        "walk_sources": cli.walk_sources,
        "pool_datagrams": plan.normal.len(),
        "datagrams": datagrams,
        "records": records,
        "template_datagrams": template_dgrams,
        "attack_datagrams": attack_dgrams,
        "attack_records": attack_records,
        "attack_host": cli.attack_host.map(|a| a.to_string()),
        "attack_first_sent_unix": attack_first,
        "started_unix": started_unix,
        "seconds": secs,
        "records_per_second": records as f64 / secs,
        "datagrams_per_second": datagrams as f64 / secs,
        "send_errors": send_errors,
        "datagrams_not_sent": failed,
        "last_error": (!last_error.is_empty()).then_some(last_error),
    }))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowguard-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_are_accepted() {
        for ok in ["127.0.0.1:2055", "127.8.9.10:9", "[::1]:6343"] {
            assert!(check_target(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1:2055",
            "0.0.0.0:2055",
            "255.255.255.255:2055",
            "128.0.0.1:2055",
            "[::]:2055",
            "[::ffff:127.0.0.1]:2055",
            "[2001:db8::1]:2055",
            "127.0.0.1:0",
        ] {
            assert!(check_target(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_walk_visits_every_address_of_its_prefix_once_per_period() {
        for p in ["10.0.0.0/20", "192.0.2.0/24", "198.51.100.7/32"] {
            let net: Ipv4Net = p.parse().unwrap();
            let n = 1usize << (32 - net.prefix_len());
            let mut w = Walk::new(&net);
            let seen: std::collections::HashSet<Ipv4Addr> =
                (0..n).map(|_| Ipv4Addr::from(w.next())).collect();
            assert_eq!(seen.len(), n, "{p}");
            assert!(seen.iter().all(|a| net.contains(a)), "{p}");
            // The next period starts over.
            assert!(seen.contains(&Ipv4Addr::from(w.next())), "{p}");
        }
        let all: Ipv4Net = "0.0.0.0/0".parse().unwrap();
        assert_eq!(host_mask(&all), u32::MAX);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let net: Ipv4Net = "203.0.113.0/28".parse().unwrap();
        assert!((0..1000).all(|_| net.contains(&random_in(&mut rng, &net))));
    }
}
