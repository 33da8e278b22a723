//! The aggregate stage as one value: records in ([`RecordSink`]), routed to the
//! protected hosts they touch and applied shard by shard (one lock per shard per batch);
//! once a second, what changed out ([`Aggregate::second`]); the detect stage's
//! [`Command`]s in ([`Aggregate::apply`], [`Aggregate::sweep`]); plain views for
//! the API and `replay --totals`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::Mutex;

use super::delta::{DeltaAccumulator, HostDelta};
use super::networks::Networks;
use super::rate::{proto_index, Counters, Rates};
use super::seam::{Command, HostChange, RecordSink, Scratch, SecondSink};
use super::table::{host_addr, HostKey, HostTable, Pending, Shard};
use super::top::{TopBoard, TopBy, TopRanks};
use super::view::{DirectionView, HostTotals, HostView};
use crate::config::Config;
use crate::decode::FlowRecord;
use crate::metrics::{Cap, CapReached, Metrics};
use crate::model::{Direction, TopSource};

/// How often idle hosts are swept out of the table.
const SWEEP_INTERVAL_MS: i64 = 10_000;

/// The hostgroups as the aggregate stage needs them (translated from the config by the
/// wiring, which also hands the detect stage its thresholds): index = group number.
pub struct GroupLayout {
    /// Each group's prefixes (empty for the default group unless it names its own).
    pub prefixes: Vec<Vec<IpNet>>,
    /// The group of protected addresses no group's prefix covers.
    pub default_group: u16,
    /// Whether the group's sum is kept (a total threshold reads it): a rate update per
    /// record, so only where needed.
    pub summed: Vec<bool>,
    /// Names, for the host view.
    pub names: Vec<String>,
}

pub struct Aggregate {
    networks: Networks,
    pub table: HostTable,
    metrics: Arc<Metrics>,
    window_seconds: u32,
    idle_seconds: u32,
    /// `[detection] top_sources`: how many sources a watched host's answer carries.
    top_n: usize,
    group_names: Vec<String>,
    summed: Vec<bool>,
    last_sweep_ms: AtomicI64,
    /// Per-second deltas per host-direction, one accumulator per table shard: only when
    /// something ships them (cluster collector role); None keeps ingest as it was.
    deltas: Option<Vec<Mutex<DeltaAccumulator>>>,
    /// Whether ingest applies records to the local host table (off on a cluster node
    /// that only collects: its detectors apply the deltas instead).
    local_table: bool,
    /// The busiest host-directions as of the last pass.
    top_hosts: TopBoard,
    /// `[detection] max_watched_hosts`, and the hosts whose sources are tracked now.
    max_watched: usize,
    watched: AtomicUsize,
}

impl Aggregate {
    /// The table's hash is seeded with `seed`, or at random without one (see
    /// `Pipeline::with_seed`).
    pub fn new(
        cfg: &Config,
        protected: &[IpNet],
        whitelist: &[IpNet],
        groups: GroupLayout,
        metrics: Arc<Metrics>,
        seed: Option<u64>,
    ) -> Aggregate {
        let networks = Networks::new(protected, &groups.prefixes, groups.default_group, whitelist);
        let shards = if cfg.aggregate.shards == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.aggregate.shards
        };
        let table = HostTable::new(
            seed,
            shards,
            cfg.aggregate.max_tracked_hosts,
            cfg.aggregate.window_seconds,
            cfg.aggregate.max_flow_spread_seconds,
            &groups.summed,
        );
        if cfg.aggregate.host_totals {
            table.keep_totals(false);
        }
        Aggregate {
            networks,
            table,
            metrics,
            window_seconds: cfg.aggregate.window_seconds,
            idle_seconds: cfg.aggregate.idle_timeout_seconds,
            top_n: cfg.detection.top_sources,
            group_names: groups.names,
            summed: groups.summed,
            last_sweep_ms: AtomicI64::new(0),
            deltas: None,
            local_table: true,
            top_hosts: TopBoard::default(),
            max_watched: cfg.detection.max_watched_hosts,
            watched: AtomicUsize::new(0),
        }
    }

    /// Makes ingest accumulate per-second deltas per host-direction (at most
    /// `cap_per_second` host-directions per second in all), drained with
    /// [`Self::drain_deltas`]; with `local_table` false, records no longer go to the
    /// local host table.
    pub fn enable_deltas(&mut self, cfg: &Config, cap_per_second: usize, local_table: bool) {
        let n = self.table.shards.len();
        let per = cap_per_second.div_ceil(n).max(1);
        self.deltas = Some(
            (0..n)
                .map(|_| {
                    Mutex::new(DeltaAccumulator::new(
                        cfg.aggregate.window_seconds,
                        cfg.aggregate.max_flow_spread_seconds,
                        per,
                    ))
                })
                .collect(),
        );
        self.local_table = local_table;
    }

    /// Every accumulated delta of a second before `sec` (empty without
    /// [`Self::enable_deltas`]); host-seconds lost to the cap are counted.
    pub fn drain_deltas(&self, sec: u32) -> Vec<HostDelta> {
        let mut out = Vec::new();
        let mut lost = 0;
        for d in self.deltas.iter().flatten() {
            let mut d = d.lock();
            d.drain_before(sec, &mut out);
            lost += std::mem::take(&mut d.overflow);
        }
        if lost > 0 {
            self.metrics.cluster.delta_overflow.inc_by(lost);
        }
        out
    }

    /// Applies deltas shipped from elsewhere to the host table. The hostgroup comes from
    /// this node's own networks (not the sender's index); a host that is not protected
    /// here is skipped.
    pub fn apply_deltas(&self, deltas: &[HostDelta]) {
        let mut per: Vec<Vec<(HostKey, u16, u32, Counters)>> =
            (0..self.table.shards.len()).map(|_| Vec::new()).collect();
        for d in deltas {
            let Some(group) = self.networks.protected_group(d.key.ip) else {
                continue;
            };
            per[self.table.shard_of(&d.key)].push((d.key, group, d.sec, d.counters));
        }
        for (i, v) in per.iter().enumerate() {
            if v.is_empty() {
                continue;
            }
            let mut s = self.table.shards[i].lock();
            for (k, g, sec, c) in v {
                s.apply_delta(k, *g, *sec, c);
            }
        }
    }

    /// Makes the next pass look at every tracked host `f` accepts (see
    /// [`Shard::mark_dirty_where`]).
    pub fn revisit_where(&self, f: impl Fn(&HostKey) -> bool) {
        for s in &self.table.shards {
            s.lock().mark_dirty_where(&f);
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    pub fn window_seconds(&self) -> u32 {
        self.window_seconds
    }

    /// The hostgroup of `ip`: its protected group, else the default one.
    pub fn group_of(&self, ip: IpAddr) -> u16 {
        self.networks
            .protected_group(ip)
            .unwrap_or(self.networks.default_group)
    }

    /// Queues record `ri` for its shard if its host in direction `d` is protected;
    /// returns whether it was.
    #[inline(always)]
    fn route(
        &self,
        r: &FlowRecord,
        ri: usize,
        d: Direction,
        proto: usize,
        traffic: &mut [[(u64, u64); 4]; 2],
        s: &mut Scratch,
    ) -> bool {
        // `d` is a constant at each (inlined) call, so this is a plain field read.
        let ip = host_addr(r, d);
        let Some(group) = self.networks.protected_group(ip) else {
            return false;
        };
        let t = &mut traffic[d as usize][proto];
        t.0 += r.packets;
        t.1 += r.bytes;
        let hash = self.table.hash_of(&HostKey { ip, dir: d });
        s.per_shard[self.table.shard_of_hash(hash)].push(Pending {
            hash,
            rec: ri as u32,
            group,
            dir: d,
            v6: ip.is_ipv6(),
        });
        true
    }

    /// The per-second pass's aggregate half at `now_sec`: every host-direction written
    /// since the last pass that `owned` accepts is ranked for the top lists and, unless
    /// whitelisted, shown to `sink` if it [wants](SecondSink::wants) it; then, per shard,
    /// the hosts `sink` asks for are answered; then the summed hostgroups' totals. The
    /// shards are read in parallel (see the body); `sink` sees them one after another.
    /// Publishes the tracked-host count, evictions and the top lists.
    pub fn second<S: SecondSink + Sync>(
        &self,
        now_sec: u32,
        owned: &(impl Fn(&HostKey) -> bool + Sync),
        sink: &mut S,
    ) {
        let shards = &self.table.shards;
        // The read of the shards (every dirty host's sums and rates, the top lists, the
        // sink's look at each) is the bulk of the pass, and each shard's needs only that
        // shard's lock: one thread per shard when there is enough to read (1 M changed
        // hosts took 117–161 ms on one core, 83–95 ms on two; benches/README.md). Only the
        // hosts the sink wants reach it, shard by shard, in order.
        let scans: Vec<ShardScan> = {
            let sink = &*sink;
            let dirty: usize = shards.iter().map(|s| s.lock().dirty_len()).sum();
            if shards.len() > 1 && dirty >= PARALLEL_SECOND_MIN_DIRTY {
                std::thread::scope(|sc| {
                    let hs: Vec<_> = (0..shards.len())
                        .map(|i| sc.spawn(move || self.scan_shard(i, now_sec, owned, sink)))
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                        .collect()
                })
            } else {
                (0..shards.len())
                    .map(|i| self.scan_shard(i, now_sec, owned, sink))
                    .collect()
            }
        };
        let mut tracked = 0usize;
        let mut top = TopRanks::default();
        for scan in scans {
            tracked += scan.tracked;
            top.merge(scan.top);
            for c in &scan.changed {
                sink.changed(c);
            }
            for (k, c, sources) in scan.answers {
                sink.answer(&k, c, sources);
            }
        }
        for (gi, _) in self.summed.iter().enumerate().filter(|(_, s)| **s) {
            let mut sums = Counters::default();
            for s in shards {
                sums.add(&s.lock().group_sum(gi, now_sec));
            }
            sink.group_total(gi as u16, sums);
        }
        self.metrics.tracked_hosts.set(tracked as i64);
        self.publish_top(top, now_sec);
    }

    /// One shard's part of [`Self::second`]: its dirty hosts drained (offered to the top
    /// lists; those the sink wants kept), and the readings of the asked hosts it holds.
    fn scan_shard<S: SecondSink + Sync>(
        &self,
        i: usize,
        now_sec: u32,
        owned: &(impl Fn(&HostKey) -> bool + Sync),
        sink: &S,
    ) -> ShardScan {
        let mut shard = self.table.shards[i].lock();
        let mut scan = ShardScan {
            tracked: shard.len(),
            ..ShardScan::default()
        };
        self.publish_evictions(&mut shard);
        shard.drain_dirty(now_sec, |k, e| {
            if !owned(k) {
                return;
            }
            scan.top.offer(k, &e.rates);
            if self.networks.is_whitelisted(k.ip) {
                return;
            }
            let c = HostChange::of(k, e);
            if sink.wants(&c) {
                scan.changed.push(c);
            }
        });
        // Hosts under attack: those that saw no traffic this second still need a look,
        // so their attack can end; all get their top sources refreshed.
        for &(si, k) in sink.asked() {
            if si == i {
                let c = shard.get(&k, now_sec).map(|e| HostChange::of(&k, &e));
                scan.answers.push((k, c, shard.top_sources(&k, self.top_n)));
            }
        }
        scan
    }

    /// The shard of each of `keys`, for [`SecondSink::asked`]: hashed once per pass.
    pub fn with_shards(&self, keys: impl Iterator<Item = HostKey>) -> Vec<(usize, HostKey)> {
        keys.map(|k| (self.table.shard_of(&k), k)).collect()
    }

    /// Applies the detect stage's watch and unwatch commands in order; returns, for each
    /// watch, the host's top sources seen so far (its recent records). Keep commands are
    /// for [`Self::sweep`] and are ignored here.
    pub fn apply(&self, cmds: &[Command]) -> Vec<(HostKey, Vec<TopSource>)> {
        let mut sources = Vec::new();
        let mut not_watched = 0;
        for c in cmds {
            match c {
                Command::Watch(k) => {
                    let mut shard = self.table.shards[self.table.shard_of(k)].lock();
                    // Only `apply` watches and unwatches, and the wiring calls it under
                    // the detector lock: the count and the cap check do not race.
                    if self.watched.load(Ordering::Relaxed) < self.max_watched {
                        shard.watch(*k);
                        self.watched.fetch_add(1, Ordering::Relaxed);
                    } else {
                        not_watched += 1;
                    }
                    sources.push((*k, shard.top_sources(k, self.top_n)));
                }
                Command::Unwatch(k) => {
                    if self.table.shards[self.table.shard_of(k)].lock().unwatch(k) {
                        self.watched.fetch_sub(1, Ordering::Relaxed);
                    }
                }
                Command::Keep(_) => {}
            }
        }
        CapReached {
            cap: Cap::WatchedHosts,
            n: not_watched,
        }
        .emit(&self.metrics);
        sources
    }

    /// Hosts whose sources are tracked now.
    pub fn watched(&self) -> usize {
        self.watched.load(Ordering::Relaxed)
    }

    /// Whether a sweep is due at `now_ms`: every [`SWEEP_INTERVAL_MS`], or sooner when
    /// the cap refused hosts.
    pub fn sweep_due(&self, now_ms: i64) -> bool {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let pressure = self
            .table
            .shards
            .iter()
            .any(|s| s.lock().refused_since_sweep);
        now_ms - last >= SWEEP_INTERVAL_MS || pressure
    }

    /// Evicts idle hosts (see [`Shard::sweep`]), keeping those of `keep`'s
    /// [`Command::Keep`]s.
    pub fn sweep(&self, now_ms: i64, keep: &[Command]) {
        self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        let keep: ahash::AHashSet<HostKey> = keep
            .iter()
            .filter_map(|c| match c {
                Command::Keep(k) => Some(*k),
                _ => None,
            })
            .collect();
        let now_sec = (now_ms / 1000).max(0) as u32;
        let keep = |k: &HostKey| keep.contains(k);
        let mut tracked = 0;
        for s in &self.table.shards {
            let mut s = s.lock();
            s.sweep(now_sec, self.idle_seconds, &keep);
            self.publish_evictions(&mut s);
            tracked += s.len();
        }
        self.metrics.tracked_hosts.set(tracked as i64);
    }

    /// Moves a shard's eviction counts into the metrics.
    fn publish_evictions(&self, s: &mut Shard) {
        for (reason, n) in [
            ("idle", &mut s.evicted_idle),
            ("pressure", &mut s.evicted_pressure),
            ("cap_refused", &mut s.refused),
        ] {
            let n = std::mem::take(n);
            if n > 0 {
                self.metrics
                    .host_evictions
                    .with_label_values(&[reason])
                    .inc_by(n);
            }
        }
    }

    pub fn host(&self, ip: IpAddr, now_ms: i64) -> Option<HostView> {
        let now_sec = (now_ms / 1000).max(0) as u32;
        let mut directions = Vec::new();
        for dir in Direction::ALL {
            let key = HostKey { ip, dir };
            if let Some(e) = self.table.get(&key, now_sec) {
                directions.push(DirectionView {
                    direction: dir,
                    hostgroup: self
                        .group_names
                        .get(usize::from(e.group))
                        .cloned()
                        .unwrap_or_default(),
                    totals: self.table.totals_of(&key),
                    last_seen: e.last_seen_sec,
                    rates: e.rates,
                });
            }
        }
        (!directions.is_empty()).then_some(HostView { ip, directions })
    }

    /// Keeps lifetime totals per host-direction from now on, including those of hosts
    /// evicted later (replay: totals of the whole capture).
    pub fn keep_totals(&self) {
        self.table.keep_totals(true);
    }

    /// Every tracked host-direction's totals (kept only after [`Self::keep_totals`] or
    /// with `[aggregate] host_totals`), sorted by address then direction.
    pub fn totals(&self) -> Vec<HostTotals> {
        let mut v = Vec::new();
        for s in &self.table.shards {
            s.lock().for_each_total(|k, c| {
                v.push(HostTotals {
                    ip: k.ip,
                    direction: k.dir,
                    totals: *c,
                })
            });
        }
        v.sort_by_key(|a| (a.ip, a.direction));
        v
    }

    /// The `n` busiest host-directions (at most [`super::TOP_HOSTS_MAX`]) as of the last
    /// pass. Takes no shard lock and not the detector: a reader called back to back
    /// cannot slow the collectors or the pass (issue 15).
    pub fn top(&self, n: usize, by: TopBy) -> Vec<(HostKey, Rates)> {
        self.top_hosts.top(n, by)
    }

    /// Ends a pass's top lists: hosts of the previous lists the pass did not visit (no
    /// traffic this second) are read again, so a host whose average decays stays listed
    /// as it did when the API walked the table; then the lists replace the old ones.
    fn publish_top(&self, mut top: TopRanks, now_sec: u32) {
        for k in self.top_hosts.listed() {
            if let Some(e) = self.table.get(&k, now_sec) {
                top.offer_keyed(&k, &e.rates, false);
            }
        }
        self.top_hosts.publish(top.finish(&self.metrics));
    }
}

/// Below this many changed hosts a pass reads the shards on its own thread. Not tuned by
/// measurement: starting a thread costs tens of µs, and 50 000 hosts are a few ms of pass
/// on one core (1 M took 117–161 ms).
const PARALLEL_SECOND_MIN_DIRTY: usize = 50_000;

/// What [`Aggregate::scan_shard`] read of one shard.
#[derive(Default)]
struct ShardScan {
    tracked: usize,
    top: TopRanks,
    /// The changed hosts the sink wants, in drain order.
    changed: Vec<HostChange>,
    answers: Vec<(HostKey, Option<HostChange>, Vec<TopSource>)>,
}

impl RecordSink for Aggregate {
    fn scratch(&self) -> Scratch {
        Scratch {
            per_shard: (0..self.table.shards.len()).map(|_| Vec::new()).collect(),
        }
    }

    // `#[inline]`: without it (measured once, cachegrind), LLVM also stopped inlining
    // `Ewma::add` into `Shard::apply_hashed` and the ingest profile took 523.5
    // instructions per record instead of 476.9 (469.1 before the split); see
    // benches/README.md.
    #[inline]
    fn ingest(&self, recs: &[FlowRecord], now_ms: i64, s: &mut Scratch) {
        let mut unprotected = 0u64;
        // [direction][tcp, udp, icmp, other] packets and bytes, summed per batch so the
        // shared counters are touched once per batch, not per record.
        let mut traffic = [[(0u64, 0u64); 4]; 2];
        for (ri, r) in recs.iter().enumerate() {
            let proto = proto_index(r.protocol);
            // Both directions written out rather than looped over `Direction::ALL`: the
            // loop kept its state on the stack, and an array of (direction, address)
            // pairs before it stalled on store forwarding. With the ranges counted
            // instead of searched (`Networks`), 84 fewer instructions per record of ~630
            // (cachegrind over 2 M records to 10 000 hosts).
            let incoming = self.route(r, ri, Direction::Incoming, proto, &mut traffic, s);
            let outgoing = self.route(r, ri, Direction::Outgoing, proto, &mut traffic, s);
            if !(incoming || outgoing) {
                unprotected += 1;
            }
        }
        for (i, v) in s.per_shard.iter_mut().enumerate() {
            if v.is_empty() {
                continue;
            }
            if let Some(d) = &self.deltas {
                d[i].lock().add_all(v, recs, now_ms);
            }
            if self.local_table {
                self.table.shards[i].lock().apply_all(v, recs, now_ms);
            }
            v.clear();
        }
        if unprotected > 0 {
            self.metrics.records_unprotected.inc_by(unprotected);
        }
        for (d, dir) in Direction::ALL.iter().enumerate() {
            for (p, name) in ["tcp", "udp", "icmp", "other"].iter().enumerate() {
                let (pk, by) = traffic[d][p];
                if pk > 0 || by > 0 {
                    let l = [dir.as_str(), name];
                    self.metrics
                        .traffic_packets
                        .with_label_values(&l)
                        .inc_by(pk);
                    self.metrics.traffic_bytes.with_label_values(&l).inc_by(by);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record {
        asked: Vec<(usize, HostKey)>,
        changed: Vec<HostChange>,
        answered: Vec<(HostKey, Option<HostChange>)>,
        groups: Vec<u16>,
    }

    impl SecondSink for Record {
        fn asked(&self) -> &[(usize, HostKey)] {
            &self.asked
        }
        fn changed(&mut self, c: &HostChange) {
            self.changed.push(*c);
        }
        fn answer(&mut self, key: &HostKey, c: Option<HostChange>, _: Vec<TopSource>) {
            self.answered.push((*key, c));
        }
        fn group_total(&mut self, group: u16, _: Counters) {
            self.groups.push(group);
        }
    }

    /// Wants only the hosts whose last octet is 7 (what a detector wanting only hosts
    /// over a threshold looks like to the stage).
    struct Sevens(Record);

    impl SecondSink for Sevens {
        fn asked(&self) -> &[(usize, HostKey)] {
            &self.0.asked
        }
        fn wants(&self, c: &HostChange) -> bool {
            matches!(c.ip, IpAddr::V4(a) if a.octets()[3] == 7)
        }
        fn changed(&mut self, c: &HostChange) {
            self.0.changed(c)
        }
        fn answer(&mut self, key: &HostKey, c: Option<HostChange>, s: Vec<TopSource>) {
            self.0.answer(key, c, s)
        }
        fn group_total(&mut self, group: u16, sums: Counters) {
            self.0.group_total(group, sums)
        }
    }

    /// Enough changed hosts for the shards to be read on threads of their own (four
    /// shards, whatever the machine's cores): the sink sees exactly the hosts it wants,
    /// once each; the asked ones are answered; the top lists merged from all shards put
    /// the busiest host first; every host is counted.
    #[test]
    fn a_parallel_second_shows_what_the_sink_wants_and_ranks_all_shards() {
        let mut cfg = Config::from_toml_str("[networks]\nprotected = [\"10.0.0.0/8\"]\n").unwrap();
        cfg.aggregate.shards = 4;
        let a = one_group(&cfg, false);
        let n = 2 * PARALLEL_SECOND_MIN_DIRTY as u32;
        let dst = |i: u32| std::net::Ipv4Addr::from(0x0A00_0000 | i).to_string();
        let recs: Vec<FlowRecord> = (0..n)
            .map(|i| FlowRecord {
                // One host far busier than the rest.
                packets: if i == 12_345 { 1_000_000 } else { 100 },
                ..udp("198.51.100.1", &dst(i))
            })
            .collect();
        let sink: &dyn RecordSink = &a;
        let mut s = sink.scratch();
        let t0 = 1_800_000_000_000i64;
        for chunk in recs.chunks(1000) {
            sink.ingest(chunk, t0 + 500, &mut s);
        }
        let key = |i: u32| HostKey {
            ip: dst(i).parse().unwrap(),
            dir: Direction::Incoming,
        };
        let asked: Vec<HostKey> = (0..8).map(|i| key(i * 1000 + 1)).collect();
        let mut r = Sevens(Record {
            asked: a.with_shards(asked.iter().copied()),
            ..Record::default()
        });
        let all = |_: &HostKey| true;
        a.second((t0 / 1000) as u32 + 1, &all, &mut r);
        let mut got: Vec<u32> =
            r.0.changed
                .iter()
                .map(|c| match c.ip {
                    IpAddr::V4(a) => u32::from(a) & 0x00FF_FFFF,
                    IpAddr::V6(_) => u32::MAX,
                })
                .collect();
        got.sort_unstable();
        let want: Vec<u32> = (0..n).filter(|i| i & 0xFF == 7).collect();
        assert_eq!(got, want);
        let mut answered: Vec<HostKey> = r.0.answered.iter().map(|(k, _)| *k).collect();
        answered.sort();
        let mut asked = asked;
        asked.sort();
        assert_eq!(answered, asked);
        assert!(r.0.answered.iter().all(|(_, c)| c.is_some()));
        assert_eq!(a.top(1, TopBy::Pps)[0].0, key(12_345));
        let max = super::super::TOP_HOSTS_MAX;
        assert_eq!(a.top(max, TopBy::Pps).len(), max);
        assert_eq!(a.metrics.tracked_hosts.get(), i64::from(n));
    }

    /// The stage for `cfg`'s networks with the one default hostgroup, `summed` or not.
    fn one_group(cfg: &Config, summed: bool) -> Aggregate {
        let layout = GroupLayout {
            prefixes: vec![Vec::new()],
            default_group: 0,
            summed: vec![summed],
            names: vec!["default".into()],
        };
        Aggregate::new(
            cfg,
            &cfg.protected_prefixes().unwrap(),
            &cfg.whitelist_prefixes().unwrap(),
            layout,
            Arc::new(Metrics::new()),
            None,
        )
    }

    fn udp(src: &str, dst: &str) -> FlowRecord {
        FlowRecord {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: crate::decode::PROTO_UDP,
            packets: 100,
            bytes: 10_000,
            flows: 1,
            ..FlowRecord::default()
        }
    }

    /// Once a second the stage shows what was written (not whitelisted hosts, not
    /// unprotected ones), answers the hosts asked for even without traffic, and sums
    /// only the groups that are summed.
    #[test]
    fn the_second_shows_written_hosts_and_answers_asked_ones() {
        let cfg = Config::from_toml_str(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            whitelist = ["192.0.2.9/32"]
            "#,
        )
        .unwrap();
        let a = one_group(&cfg, true);
        let sink: &dyn RecordSink = &a;
        let mut s = sink.scratch();
        let t0 = 1_800_000_000_000i64;
        let recs = [
            udp("198.51.100.1", "192.0.2.7"),
            udp("198.51.100.1", "192.0.2.9"),
            udp("198.51.100.1", "203.0.113.1"),
        ];
        sink.ingest(&recs, t0 + 500, &mut s);
        let all = |_: &HostKey| true;
        let mut r = Record::default();
        a.second((t0 / 1000) as u32 + 1, &all, &mut r);
        let ips: Vec<String> = r.changed.iter().map(|c| c.ip.to_string()).collect();
        assert_eq!(ips, ["192.0.2.7"]);
        assert!(r.changed[0].rates.pps > 0);
        assert_eq!(r.groups, [0]);
        // The next second nothing is written; the host asked for is answered anyway.
        let key = r.changed[0].key();
        let mut r = Record {
            asked: a.with_shards([key].into_iter()),
            ..Record::default()
        };
        a.second((t0 / 1000) as u32 + 2, &all, &mut r);
        assert!(r.changed.is_empty());
        assert_eq!(r.answered.len(), 1);
        assert_eq!(r.answered[0].0, key);
        assert!(r.answered[0].1.is_some_and(|c| c.rates.pps > 0));
    }
}
