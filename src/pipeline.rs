//! decode → aggregate → detect, wired once for both the live service and `replay`.
//!
//! [`Pipeline::ingest`] takes decoded records and a time, routes each record to the
//! protected hosts it touches, and applies the updates shard by shard (one lock per shard
//! per batch). [`Pipeline::tick`] is the once-per-second detection pass; it returns the
//! attack events it produced. Who calls them with which clock is the only difference
//! between `flowguard run` (wall clock, collector threads, a ticker task) and `flowguard
//! replay` (capture timestamps, one thread).

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::Mutex;
use serde::Serialize;

use crate::aggregate::{
    host_addr, Counters, DeltaAccumulator, HostDelta, HostEntry, HostKey, HostTable, Networks,
    Pending, Rates, Shard,
};
use crate::config::{Config, ConfigError};
use crate::decode::{DecodeErrorKind, DecodeOutcome, FlowRecord, Version};
use crate::detect::classify::exceeded;
use crate::detect::{Attack, Claim, Detector, Group, Observation, Transition};
use crate::metrics::{Cap, CapReached, Metrics};
use crate::model::{AttackEvent, Direction, EventKind};

/// How often idle hosts are swept out of the table.
const SWEEP_INTERVAL_MS: i64 = 10_000;

pub struct Pipeline {
    networks: Networks,
    pub table: HostTable,
    detector: Mutex<Detector>,
    metrics: Arc<Metrics>,
    window_seconds: u32,
    idle_seconds: u32,
    top_n: usize,
    /// Representative address of each hostgroup, used as the "ip" of a group-total
    /// (carpet bombing) attack: the group's first prefix.
    group_ip: Vec<IpAddr>,
    last_sweep_ms: AtomicI64,
    /// Per-second deltas per host-direction, one accumulator per table shard: only when
    /// something ships them (cluster collector role); None keeps ingest as it was.
    deltas: Option<Vec<Mutex<DeltaAccumulator>>>,
    /// Whether ingest applies records to the local host table (off on a cluster node
    /// that only collects: its detectors apply the deltas instead).
    local_table: bool,
    /// The busiest host-directions as of the last detection pass. Readers clone the `Arc`
    /// (the lock is held for that only), so no reader touches a shard or the detector.
    top_hosts: Mutex<Arc<TopHosts>>,
    /// `[detection] max_watched_hosts`, and the hosts whose sources are tracked now.
    max_watched: usize,
    watched: AtomicUsize,
    /// `[detection] max_attack_host_series`, and the hosts that have those series now.
    max_host_series: usize,
    host_series: Mutex<ahash::AHashSet<(IpAddr, Direction)>>,
}

/// Most host-directions `GET /api/v1/hosts?top=N` (and the console) can list: the length
/// of each top list the detection pass keeps.
pub const TOP_HOSTS_MAX: usize = 1000;

/// The busiest host-directions by pps, bps and flows/s, kept by the detection pass.
#[derive(Debug, Default)]
pub struct TopHosts {
    /// Indexed by `TopBy as usize`: busiest first, ties by address; at most
    /// [`TOP_HOSTS_MAX`] each.
    by: [Vec<(HostKey, Rates)>; 3],
}

/// Per-thread buffers for [`Pipeline::ingest`], reused across batches so the hot path
/// does not allocate.
pub struct Scratch {
    per_shard: Vec<Vec<Pending>>,
}

/// One host-direction in `--totals` output and the hosts API.
#[derive(Debug, Clone, Serialize)]
pub struct HostTotals {
    pub ip: IpAddr,
    pub direction: Direction,
    #[serde(flatten)]
    pub totals: Counters,
}

#[derive(Debug, Clone, Serialize)]
pub struct DirectionView {
    pub direction: Direction,
    pub hostgroup: String,
    /// Lifetime totals: only with `[aggregate] host_totals` (or `replay --totals`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<Counters>,
    /// Newest second (unix) with traffic.
    pub last_seen: u32,
    pub rates: Rates,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostView {
    pub ip: IpAddr,
    pub directions: Vec<DirectionView>,
}

impl Pipeline {
    pub fn new(cfg: &Config, metrics: Arc<Metrics>) -> Result<Pipeline, ConfigError> {
        Pipeline::with_seed(cfg, metrics, None)
    }

    /// A pipeline whose host-table hash is seeded with `seed` instead of at random, so
    /// that which hosts share a shard (and so the recent-records ring that seeds attack
    /// reports) is the same on every run: `replay` is reproducible. The service keeps
    /// random seeds: a known hash lets an attacker craft colliding addresses.
    pub fn with_seed(
        cfg: &Config,
        metrics: Arc<Metrics>,
        seed: Option<u64>,
    ) -> Result<Pipeline, ConfigError> {
        let protected = cfg.protected_prefixes()?;
        let whitelist = cfg.whitelist_prefixes()?;
        let mut groups: Vec<Group> = cfg.hostgroups.iter().map(Group::from_config).collect();
        let mut prefixes: Vec<Vec<IpNet>> =
            cfg.hostgroups.iter().map(|g| g.prefixes.clone()).collect();
        let default_group = match cfg
            .hostgroups
            .iter()
            .position(|g| g.name == "default" || g.prefixes.is_empty())
        {
            Some(i) => i,
            None => {
                // No default group configured: the rest of the protected networks is
                // tracked (visible in the API) but has no thresholds.
                groups.push(Group {
                    name: "default".into(),
                    incoming: Default::default(),
                    outgoing: Default::default(),
                    total: None,
                    ban_time_seconds: 300,
                });
                prefixes.push(Vec::new());
                groups.len() - 1
            }
        };
        // A named default group's own prefixes still count as its prefixes.
        let group_ip = prefixes
            .iter()
            .map(|p| {
                p.first()
                    .or(protected.first())
                    .map(|n| n.network())
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]))
            })
            .collect();
        let networks = Networks::new(&protected, &prefixes, default_group as u16, &whitelist);
        let shards = if cfg.aggregate.shards == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.aggregate.shards
        };
        // Hostgroup sums cost a rate update per record: kept only where a total threshold
        // reads them.
        let summed: Vec<bool> = groups.iter().map(|g| g.total.is_some()).collect();
        let table = HostTable::new(
            seed,
            shards,
            cfg.aggregate.max_tracked_hosts,
            cfg.aggregate.window_seconds,
            cfg.aggregate.max_flow_spread_seconds,
            &summed,
        );
        if cfg.aggregate.host_totals {
            table.keep_totals(false);
        }
        Ok(Pipeline {
            networks,
            table,
            detector: Mutex::new(
                Detector::new(
                    groups,
                    cfg.detection.trigger_seconds,
                    cfg.detection.outgoing,
                    cfg.detection.recent_attacks,
                )
                .with_switches(cfg.detection.incoming, cfg.detection.ipv6)
                .with_vector_min_share(cfg.detection.vector_min_share_percent / 100.0)
                .with_max_active(cfg.detection.max_active_attacks),
            ),
            metrics,
            window_seconds: cfg.aggregate.window_seconds,
            idle_seconds: cfg.aggregate.idle_timeout_seconds,
            top_n: cfg.detection.top_sources,
            group_ip,
            last_sweep_ms: AtomicI64::new(0),
            deltas: None,
            local_table: true,
            top_hosts: Mutex::new(Arc::new(TopHosts::default())),
            max_watched: cfg.detection.max_watched_hosts,
            watched: AtomicUsize::new(0),
            max_host_series: cfg.detection.max_attack_host_series,
            host_series: Mutex::new(Default::default()),
        })
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

    /// Takes over attack `a` (known from elsewhere: another detector started it) as an
    /// active attack of this detector, unless one is active for its host already.
    pub fn adopt(&self, ev: &AttackEvent, now_ms: i64) -> bool {
        let key = HostKey {
            ip: ev.ip,
            dir: ev.direction,
        };
        let group = self
            .networks
            .protected_group(ev.ip)
            .unwrap_or(self.networks.default_group);
        let adopted = self.detector.lock().adopt(ev, group, now_ms);
        if adopted {
            self.table.shards[self.table.shard_of(&key)]
                .lock()
                .watch(key);
        }
        adopted
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn networks(&self) -> &Networks {
        &self.networks
    }

    pub fn scratch(&self) -> Scratch {
        Scratch {
            per_shard: (0..self.table.shards.len()).map(|_| Vec::new()).collect(),
        }
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

    /// Applies decoded records at time `now_ms`.
    pub fn ingest(&self, recs: &[FlowRecord], now_ms: i64, s: &mut Scratch) {
        let mut unprotected = 0u64;
        // [direction][tcp, udp, icmp, other] packets and bytes, summed per batch so the
        // shared counters are touched once per batch, not per record.
        let mut traffic = [[(0u64, 0u64); 4]; 2];
        for (ri, r) in recs.iter().enumerate() {
            let proto = crate::aggregate::rate::proto_index(r.protocol);
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

    /// The per-second detection pass at `now_ms`; returns the events it produced.
    pub fn tick(&self, now_ms: i64) -> Vec<AttackEvent> {
        self.tick_owned(now_ms, |_| true)
    }

    /// The detection pass over the host-directions `owned` accepts only (a cluster
    /// detector's partitions; group totals count when `owned` accepts the group's key).
    /// Attacks on hosts no longer owned are dropped without an event: their new owner
    /// adopts them.
    pub fn tick_owned(&self, now_ms: i64, owned: impl Fn(&HostKey) -> bool) -> Vec<AttackEvent> {
        let timer = self.metrics.detection_pass_seconds.start_timer();
        let now_sec = (now_ms / 1000).max(0) as u32;
        let mut det = self.detector.lock();
        for k in det.forget_where(|k| !owned(k)) {
            self.table.shards[self.table.shard_of(&k)]
                .lock()
                .unwatch(&k);
        }
        // Hosts under attack with their shard, hashed once per pass.
        let active: Vec<(usize, HostKey)> = det
            .active()
            .map(|a| (self.table.shard_of(&a.key()), a.key()))
            .collect();
        let mut obs = Vec::new();
        let mut tracked = 0usize;
        let mut top = TopRanks::default();
        for (i, shard) in self.table.shards.iter().enumerate() {
            let mut shard = shard.lock();
            tracked += shard.len();
            self.publish_evictions(&mut shard);
            let mut seen = Vec::new();
            shard.drain_dirty(now_sec, |k, e| {
                if !owned(k) {
                    return;
                }
                top.offer(k, &e.rates);
                if self.networks.is_whitelisted(k.ip) {
                    return;
                }
                let Some(t) = det.thresholds(e.group, k.dir) else {
                    return;
                };
                let over = exceeded(t, &e.rates);
                if over.is_some() || det.is_active(k) {
                    seen.push(*k);
                    obs.push(observation(k, e, over));
                }
            });
            // Hosts under attack: those that saw no traffic this second still need a look,
            // so their attack can end; all get their top sources refreshed.
            for (_, k) in active.iter().filter(|(s, _)| *s == i) {
                if !seen.contains(k) {
                    if let Some(e) = shard.get(k, now_sec) {
                        let over = det
                            .thresholds(e.group, k.dir)
                            .and_then(|t| exceeded(t, &e.rates));
                        obs.push(observation(k, &e, over));
                    }
                }
                let top = shard.top_sources(k, self.top_n);
                if let Some(a) = det.get_active_mut(k) {
                    if !top.is_empty() {
                        a.top_sources = top;
                    }
                }
            }
        }
        obs.extend(
            self.group_observations(&det, now_sec)
                .into_iter()
                .filter(|o| owned(&o.key)),
        );
        // Shards are visited in hash order, which is random per process; attacks that
        // start in the same pass get their ids in address order instead, so a replay is
        // reproducible.
        obs.sort_by_key(|o| o.key);
        let transitions = det.observe(now_ms, &obs);
        let events = self.events_of(&mut det, transitions, now_ms);
        self.metrics.tracked_hosts.set(tracked as i64);
        self.publish_top(top, now_sec);
        self.sweep_if_due(now_ms, &det);
        drop(det);
        timer.observe_duration();
        events
    }

    /// Hostgroup totals (incoming) against `[hostgroup.total]` thresholds.
    fn group_observations(&self, det: &Detector, now_sec: u32) -> Vec<Observation> {
        let mut out = Vec::new();
        for (gi, g) in det.groups().iter().enumerate() {
            let Some(t) = &g.total else { continue };
            let mut counters = Counters::default();
            for s in &self.table.shards {
                counters.add(&s.lock().group_sum(gi, now_sec));
            }
            let rates = Rates::from_window(&counters, self.window_seconds);
            let key = HostKey {
                ip: self.group_ip[gi],
                dir: Direction::Incoming,
            };
            let over = exceeded(t, &rates);
            if over.is_some() || det.is_active(&key) {
                out.push(Observation {
                    key,
                    group: gi as u16,
                    counters,
                    rates,
                    over: over.map(|_| "hostgroup_total"),
                });
            }
        }
        out
    }

    fn count_events(&self, events: &[AttackEvent]) {
        let mut series = self.host_series.lock();
        let mut over_cap = 0;
        for e in events {
            let labels = [e.direction.as_str(), e.attack_type.as_str()];
            let ip = e.ip.to_string();
            // Per-host series only for the first `max_host_series` attacks in progress.
            let host = (e.ip, e.direction);
            let has_series = match e.event {
                EventKind::Start if series.len() < self.max_host_series => series.insert(host),
                EventKind::Start => {
                    over_cap += 1;
                    false
                }
                EventKind::Update => series.contains(&host),
                EventKind::End => series.remove(&host),
            };
            match e.event {
                EventKind::Start => {
                    self.metrics.attacks_total.with_label_values(&labels).inc();
                    self.metrics.attacks_active.with_label_values(&labels).inc();
                    if !has_series {
                        continue;
                    }
                    let hl = [ip.as_str(), e.direction.as_str()];
                    self.metrics
                        .attack_host_pps
                        .with_label_values(&hl)
                        .set(e.pps as i64);
                    self.metrics
                        .attack_host_bps
                        .with_label_values(&hl)
                        .set(e.bps as i64);
                }
                EventKind::Update => {
                    if let Some(old) = e.previous_attack_type {
                        // The active gauge follows the type, so the end decrements the
                        // series the attack is counted in.
                        let old_labels = [e.direction.as_str(), old.as_str()];
                        self.metrics
                            .attacks_active
                            .with_label_values(&old_labels)
                            .dec();
                        self.metrics.attacks_active.with_label_values(&labels).inc();
                        self.metrics
                            .attack_type_changes
                            .with_label_values(&[
                                e.direction.as_str(),
                                old.as_str(),
                                e.attack_type.as_str(),
                            ])
                            .inc();
                    }
                    if !has_series {
                        continue;
                    }
                    let hl = [ip.as_str(), e.direction.as_str()];
                    self.metrics
                        .attack_host_pps
                        .with_label_values(&hl)
                        .set(e.pps as i64);
                    self.metrics
                        .attack_host_bps
                        .with_label_values(&hl)
                        .set(e.bps as i64);
                }
                EventKind::End => {
                    self.metrics.attacks_active.with_label_values(&labels).dec();
                    if !has_series {
                        continue;
                    }
                    let hl = [ip.as_str(), e.direction.as_str()];
                    // Per-host series exist only while the host is under attack.
                    let _ = self.metrics.attack_host_pps.remove_label_values(&hl);
                    let _ = self.metrics.attack_host_bps.remove_label_values(&hl);
                }
            }
        }
        CapReached {
            cap: Cap::AttackHostSeries,
            n: over_cap,
        }
        .emit(&self.metrics);
    }

    fn sweep_if_due(&self, now_ms: i64, det: &Detector) {
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let pressure = self
            .table
            .shards
            .iter()
            .any(|s| s.lock().refused_since_sweep);
        if now_ms - last < SWEEP_INTERVAL_MS && !pressure {
            return;
        }
        self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        let now_sec = (now_ms / 1000).max(0) as u32;
        let keep = |k: &HostKey| det.is_active(k);
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

    /// An external detector's ban/unban (FastNetMon hook); returns the events produced.
    pub fn claim(&self, now_ms: i64, mut c: Claim) -> Vec<AttackEvent> {
        c.group = self
            .networks
            .protected_group(c.key.ip)
            .unwrap_or(self.networks.default_group);
        let mut det = self.detector.lock();
        let transitions = det.claim(now_ms, &c);
        self.events_of(&mut det, transitions, now_ms)
    }

    /// Turns detector transitions into attack events (and counts them): a start begins
    /// tracking the host's sources and carries the top ones seen so far; an end stops it.
    fn events_of(
        &self,
        det: &mut Detector,
        transitions: Vec<Transition>,
        now_ms: i64,
    ) -> Vec<AttackEvent> {
        let mut events = Vec::new();
        let mut not_watched = 0;
        for t in transitions {
            match t {
                Transition::Start(k) => {
                    let mut shard = self.table.shards[self.table.shard_of(&k)].lock();
                    // Only `events_of` watches and unwatches, under the detector lock.
                    if self.watched.load(Ordering::Relaxed) < self.max_watched {
                        shard.watch(k);
                        self.watched.fetch_add(1, Ordering::Relaxed);
                    } else {
                        not_watched += 1;
                    }
                    let top = shard.top_sources(&k, self.top_n);
                    drop(shard);
                    if let Some(a) = det.get_active_mut(&k) {
                        if !top.is_empty() {
                            a.top_sources = top;
                        }
                        events.push(a.event(EventKind::Start, now_ms));
                    }
                }
                Transition::Update(k) => {
                    if let Some(a) = det.get_active(&k) {
                        events.push(a.event(EventKind::Update, now_ms));
                    }
                }
                Transition::Changed {
                    key,
                    previous_type,
                    new_vectors,
                } => {
                    if let Some(a) = det.get_active(&key) {
                        events.push(a.change_event(now_ms, previous_type, new_vectors));
                    }
                }
                Transition::End(k) => {
                    if self.table.shards[self.table.shard_of(&k)]
                        .lock()
                        .unwatch(&k)
                    {
                        self.watched.fetch_sub(1, Ordering::Relaxed);
                    }
                    if let Some(a) = det.ended(&k) {
                        events.push(a.event(EventKind::End, now_ms));
                    }
                }
            }
        }
        self.count_events(&events);
        CapReached {
            cap: Cap::ActiveAttacks,
            n: det.take_refused(),
        }
        .emit(&self.metrics);
        CapReached {
            cap: Cap::WatchedHosts,
            n: not_watched,
        }
        .emit(&self.metrics);
        events
    }

    pub fn active_attacks(&self) -> usize {
        self.detector.lock().active().count()
    }

    /// Active attacks first (newest first), then recent ones.
    pub fn attacks(&self) -> Vec<Attack> {
        let det = self.detector.lock();
        let mut v: Vec<Attack> = det.active().cloned().collect();
        v.sort_by_key(|a| std::cmp::Reverse(a.start_ms));
        v.extend(det.recent().cloned());
        v
    }

    pub fn attack(&self, id: &str) -> Option<Attack> {
        self.detector.lock().find(id).cloned()
    }

    /// The largest ban time of any group, for draining a replay.
    pub fn max_ban_ms(&self) -> i64 {
        let det = self.detector.lock();
        (0..det.groups().len())
            .map(|g| det.ban_time_ms(g as u16))
            .max()
            .unwrap_or(0)
    }

    pub fn window_seconds(&self) -> u32 {
        self.window_seconds
    }

    pub fn host(&self, ip: IpAddr, now_ms: i64) -> Option<HostView> {
        let now_sec = (now_ms / 1000).max(0) as u32;
        let det = self.detector.lock();
        let mut directions = Vec::new();
        for dir in Direction::ALL {
            let key = HostKey { ip, dir };
            if let Some(e) = self.table.get(&key, now_sec) {
                directions.push(DirectionView {
                    direction: dir,
                    hostgroup: det
                        .groups()
                        .get(usize::from(e.group))
                        .map(|g| g.name.clone())
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

    /// The `n` busiest host-directions (at most [`TOP_HOSTS_MAX`]) as of the last
    /// detection pass. Takes no shard lock and not the detector: a reader called back to
    /// back cannot slow the collectors or the pass (issue 15).
    pub fn top(&self, n: usize, by: TopBy) -> Vec<(HostKey, Rates)> {
        let snap = self.top_hosts.lock().clone();
        snap.by[by as usize]
            .iter()
            .take(n.min(TOP_HOSTS_MAX))
            .copied()
            .collect()
    }

    /// Ends a pass's top lists: hosts of the previous lists the pass did not visit (no
    /// traffic this second) are read again, so a host whose average decays stays listed
    /// as it did when the API walked the table; then the lists replace the old ones.
    fn publish_top(&self, mut top: TopRanks, now_sec: u32) {
        let prev = self.top_hosts.lock().clone();
        let mut again: Vec<HostKey> = prev.by.iter().flatten().map(|(k, _)| *k).collect();
        again.sort_unstable();
        again.dedup();
        for k in again {
            if let Some(e) = self.table.get(&k, now_sec) {
                top.offer_keyed(&k, &e.rates, false);
            }
        }
        let lists = top.finish(&self.metrics);
        *self.top_hosts.lock() = Arc::new(lists);
    }
}

/// What the detector is shown of host-direction `k` read as `e`.
fn observation(k: &HostKey, e: &HostEntry, over: Option<&'static str>) -> Observation {
    Observation {
        key: *k,
        group: e.group,
        counters: e.sums,
        rates: e.rates,
        over,
    }
}

/// The busiest hosts among those with traffic in the last second (the ones a pass
/// visits), per direction: a bounded, address-free view for dashboards; and, with their
/// addresses, the [`TopHosts`] lists the API reads.
#[derive(Default)]
struct TopRanks {
    pps: [Vec<u64>; 2],
    bps: [Vec<u64>; 2],
    keyed: [Keyed; 3],
}

/// The best [`TOP_HOSTS_MAX`] host-directions by one metric, collected in O(hosts) time
/// and O(TOP_HOSTS_MAX) memory: once the list is full, an offer no better than its worst
/// entry is one comparison.
#[derive(Default)]
struct Keyed {
    v: Vec<(u64, HostKey, Rates)>,
    /// The worst kept entry once the list was first cut: (metric, key).
    worst: Option<(u64, HostKey)>,
}

/// Busiest first, ties by address (the order the table walk used).
fn rank(a: &(u64, HostKey), b: &(u64, HostKey)) -> std::cmp::Ordering {
    b.0.cmp(&a.0).then(a.1.cmp(&b.1))
}

impl Keyed {
    fn offer(&mut self, x: u64, k: &HostKey, r: &Rates, cut: bool) {
        if let Some(w) = &self.worst {
            if rank(&(x, *k), w) != std::cmp::Ordering::Less {
                return;
            }
        }
        self.v.push((x, *k, *r));
        if cut && self.v.len() >= 2 * TOP_HOSTS_MAX {
            self.v.select_nth_unstable_by(TOP_HOSTS_MAX - 1, order);
            self.v.truncate(TOP_HOSTS_MAX);
            // `select_nth_unstable_by` left the worst kept entry last.
            self.worst = self.v.last().map(|e| (e.0, e.1));
        }
    }

    /// The list, busiest first. A host offered twice (visited by the pass, then read
    /// again) keeps its first entry; the cuts during the pass never see a host twice.
    fn finish(&mut self) -> Vec<(HostKey, Rates)> {
        self.v.sort_unstable_by(order);
        let mut seen = ahash::AHashSet::with_capacity(self.v.len());
        self.v.retain(|e| seen.insert(e.1));
        self.v.truncate(TOP_HOSTS_MAX);
        self.v.iter().map(|e| (e.1, e.2)).collect()
    }
}

fn order(a: &(u64, HostKey, Rates), b: &(u64, HostKey, Rates)) -> std::cmp::Ordering {
    rank(&(a.0, a.1), &(b.0, b.1))
}

impl TopRanks {
    fn offer(&mut self, k: &HostKey, r: &Rates) {
        let d = k.dir as usize;
        for (v, x) in [(&mut self.pps[d], r.pps), (&mut self.bps[d], r.bps)] {
            v.push(x);
            if v.len() > 4 * crate::metrics::TOP_HOST_RANKS {
                v.sort_unstable_by(|a, b| b.cmp(a));
                v.truncate(crate::metrics::TOP_HOST_RANKS);
            }
        }
        self.offer_keyed(k, r, true);
    }

    /// Offers `k` to the lists with addresses only; `cut`: whether the lists may be cut
    /// to size now (not while hosts already offered are offered again).
    fn offer_keyed(&mut self, k: &HostKey, r: &Rates, cut: bool) {
        for by in [TopBy::Pps, TopBy::Bps, TopBy::Flows] {
            self.keyed[by as usize].offer(by.of(r), k, r, cut);
        }
    }

    /// Publishes the address-free ranks; returns the lists with addresses.
    fn finish(mut self, m: &Metrics) -> TopHosts {
        for dir in Direction::ALL {
            let d = dir as usize;
            self.pps[d].sort_unstable_by(|a, b| b.cmp(a));
            self.bps[d].sort_unstable_by(|a, b| b.cmp(a));
            for rank in 0..crate::metrics::TOP_HOST_RANKS {
                let l = [dir.as_str(), &(rank + 1).to_string()];
                m.top_host_pps
                    .with_label_values(&l)
                    .set(self.pps[d].get(rank).copied().unwrap_or(0) as i64);
                m.top_host_bps
                    .with_label_values(&l)
                    .set(self.bps[d].get(rank).copied().unwrap_or(0) as i64);
            }
        }
        let mut out = TopHosts::default();
        for (i, k) in self.keyed.iter_mut().enumerate() {
            out.by[i] = k.finish();
        }
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TopBy {
    Pps,
    Bps,
    Flows,
}

impl TopBy {
    fn of(self, r: &Rates) -> u64 {
        match self {
            TopBy::Pps => r.pps,
            TopBy::Bps => r.bps,
            TopBy::Flows => r.flows_per_second,
        }
    }
}

/// Counts one decoded datagram in the collect metrics.
/// Decode outcomes summed over a batch of datagrams, so the labelled counters (a label
/// hash and a lock each) are touched once per batch instead of once per datagram.
#[derive(Debug, Default)]
pub struct DecodeTally {
    /// Datagrams and records per [`Version`] (index = `Version as usize`).
    datagrams: [u64; VERSIONS],
    records: [u64; VERSIONS],
    errors: [u64; ERROR_KINDS],
    skips: crate::decode::Skips,
    template_misses: u64,
    counter_samples: u64,
}

const VERSIONS: usize = 5;
const ERROR_KINDS: usize = 4;
/// Every version and error kind, in any order: the tally is indexed by discriminant.
const VERSION_OF: [Version; VERSIONS] = [
    Version::V5,
    Version::V9,
    Version::Ipfix,
    Version::Sflow5,
    Version::Unknown,
];
const ERROR_OF: [DecodeErrorKind; ERROR_KINDS] = [
    DecodeErrorKind::Truncated,
    DecodeErrorKind::BadVersion,
    DecodeErrorKind::Malformed,
    DecodeErrorKind::UnsupportedHeader,
];

impl DecodeTally {
    pub fn add(&mut self, oc: &DecodeOutcome) {
        let v = oc.version.unwrap_or(Version::Unknown) as usize;
        self.datagrams[v] += 1;
        self.records[v] += oc.records as u64;
        if let Some(e) = oc.error {
            self.errors[e as usize] += 1;
        }
        self.skips.merge(&oc.skips);
        self.template_misses += oc.template_misses as u64;
        self.counter_samples += oc.counter_samples as u64;
    }

    /// Adds the tally to the metrics of `collector` and starts over.
    pub fn flush(&mut self, m: &Metrics, collector: &str) {
        for v in VERSION_OF {
            let (i, l) = (v as usize, [collector, v.label()]);
            if self.datagrams[i] > 0 {
                m.datagrams.with_label_values(&l).inc_by(self.datagrams[i]);
            }
            if self.records[i] > 0 {
                m.flow_records.with_label_values(&l).inc_by(self.records[i]);
            }
        }
        for e in ERROR_OF {
            let n = self.errors[e as usize];
            if n > 0 {
                m.decode_errors
                    .with_label_values(&[collector, e.label()])
                    .inc_by(n);
            }
        }
        for r in crate::decode::SkipReason::ALL {
            let n = self.skips.get(r);
            if n > 0 {
                m.records_skipped
                    .with_label_values(&[collector, r.label()])
                    .inc_by(n);
            }
        }
        if self.template_misses > 0 {
            m.template_misses
                .with_label_values(&[collector])
                .inc_by(self.template_misses);
        }
        if self.counter_samples > 0 {
            m.counter_samples
                .with_label_values(&[collector])
                .inc_by(self.counter_samples);
        }
        *self = DecodeTally::default();
    }
}

/// Counts one datagram's decode outcome (for callers without a batch).
pub fn count_decode(m: &Metrics, collector: &str, oc: &DecodeOutcome) {
    let mut t = DecodeTally::default();
    t.add(oc);
    t.flush(m, collector);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{PROTO_ICMPV6, PROTO_UDP};
    use crate::model::AttackType;

    fn pipeline(toml: &str) -> Pipeline {
        let cfg = Config::from_toml_str(toml).unwrap();
        Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap()
    }

    fn udp(src: &str, dst: &str, packets: u64) -> FlowRecord {
        FlowRecord {
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            src_port: 5353,
            dst_port: 53,
            protocol: PROTO_UDP,
            packets,
            bytes: packets * 100,
            flows: 1,
            ..FlowRecord::default()
        }
    }

    /// Feeds `per_second(sec)` records for seconds t0.., ticking after each second;
    /// returns every event.
    fn run(
        p: &Pipeline,
        secs: i64,
        per_second: impl Fn(i64) -> Vec<FlowRecord>,
    ) -> Vec<AttackEvent> {
        let t0 = 1_800_000_000_000i64;
        let mut s = p.scratch();
        let mut ev = Vec::new();
        for i in 0..secs {
            p.ingest(&per_second(i), t0 + i * 1000 + 500, &mut s);
            ev.extend(p.tick(t0 + (i + 1) * 1000));
        }
        ev
    }

    const PROTECTED_24: &str = r#"
        [networks]
        protected = ["192.0.2.0/24"]
        [[hostgroup]]
        name = "default"
        threshold_pps = 100000000
        "#;

    #[test]
    fn top_hosts_come_from_the_pass_busiest_first_and_are_capped() {
        let p = pipeline(PROTECTED_24);
        // Host h gets h × 10 pps; the flows metric orders the other way round.
        run(&p, 3, |_| {
            (1..=200u64)
                .map(|h| FlowRecord {
                    flows: (300 - h) as _,
                    ..udp("198.51.100.9", &format!("192.0.2.{h}"), h * 10)
                })
                .collect()
        });
        let top = p.top(5, TopBy::Pps);
        let ips: Vec<String> = top.iter().map(|(k, _)| k.ip.to_string()).collect();
        assert_eq!(
            ips,
            [
                "192.0.2.200",
                "192.0.2.199",
                "192.0.2.198",
                "192.0.2.197",
                "192.0.2.196"
            ]
        );
        assert!(top.windows(2).all(|w| w[0].1.pps >= w[1].1.pps));
        assert_eq!(p.top(1, TopBy::Flows)[0].0.ip.to_string(), "192.0.2.1");
        assert_eq!(p.top(1, TopBy::Bps)[0].0.ip.to_string(), "192.0.2.200");
        // Incoming only (the sources are not protected): 200 host-directions.
        assert_eq!(p.top(TOP_HOSTS_MAX + 5, TopBy::Pps).len(), 200);
    }

    #[test]
    fn top_hosts_keep_the_best_thousand_of_many_and_a_decaying_host() {
        let p = Pipeline::new(
            &Config::from_toml_str(
                r#"
                [networks]
                protected = ["10.0.0.0/8"]
                "#,
            )
            .unwrap(),
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let host = |i: u64| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255);
        // 5000 hosts, 10·i pps each (apart by more than the integer rates round away),
        // then one second where only a quiet host sends.
        run(&p, 2, |_| {
            (1..=5000u64)
                .map(|i| udp("198.51.100.9", &host(i), 10 * i))
                .collect()
        });
        let top = p.top(TOP_HOSTS_MAX, TopBy::Pps);
        assert_eq!(top.len(), TOP_HOSTS_MAX);
        assert_eq!(top[0].0.ip.to_string(), host(5000));
        assert_eq!(top[TOP_HOSTS_MAX - 1].0.ip.to_string(), host(4001));
        let t0 = 1_800_000_000_000i64;
        let mut s = p.scratch();
        p.ingest(&[udp("198.51.100.9", &host(1), 1)], t0 + 2_500, &mut s);
        p.tick(t0 + 3_000);
        // The busiest hosts sent nothing this second: still listed, from the table.
        let top = p.top(3, TopBy::Pps);
        assert_eq!(top[0].0.ip.to_string(), host(5000));
        assert!(top[0].1.pps > 0);
    }

    /// The hosts reader takes neither a shard lock nor the detector: with every one of
    /// them held (as a collector or the detection pass would), it still answers.
    #[test]
    fn the_top_hosts_reader_takes_no_lock_the_collectors_or_the_pass_need() {
        let p = pipeline(PROTECTED_24);
        run(&p, 2, |_| vec![udp("198.51.100.9", "192.0.2.7", 500)]);
        let shards: Vec<_> = p.table.shards.iter().map(|s| s.lock()).collect();
        let det = p.detector.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|sc| {
            sc.spawn(|| {
                let _ = tx.send(p.top(10, TopBy::Pps));
            });
            let got = rx.recv_timeout(std::time::Duration::from_secs(20));
            // Release before asserting, so a failure is a failure and not a hang.
            drop(det);
            drop(shards);
            let top = got.expect("top() waited for a shard or detector lock");
            assert_eq!(top.len(), 1);
            assert_eq!(top[0].0.ip.to_string(), "192.0.2.7");
        });
    }

    fn capped(caps: &str) -> Pipeline {
        pipeline(&format!(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [detection]
            {caps}
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            ban_time_seconds = 2
            "#
        ))
    }

    /// Three hosts flooded for 3 s, then 17 quiet seconds (the averages decay, the ban
    /// time passes, their attacks end).
    fn three_floods(p: &Pipeline) -> Vec<AttackEvent> {
        run(p, 20, |i| {
            if i < 3 {
                (1..=3)
                    .map(|h| udp(&format!("198.51.100.{h}"), &format!("192.0.2.{h}"), 30_000))
                    .collect()
            } else {
                Vec::new()
            }
        })
    }

    fn overflow(p: &Pipeline, cap: Cap) -> u64 {
        p.metrics
            .cap_overflow
            .with_label_values(&[cap.as_str()])
            .get()
    }

    #[test]
    fn the_active_attack_cap_refuses_new_attacks_and_counts_them() {
        let p = capped("max_active_attacks = 2");
        let ev = three_floods(&p);
        let starts = ev.iter().filter(|e| e.event == EventKind::Start).count();
        assert_eq!(starts, 2, "{ev:?}");
        // The third host is refused on each pass it is over the threshold: at least the
        // 3 flooded seconds (more while its average decays).
        let refused = overflow(&p, Cap::ActiveAttacks);
        assert!(refused >= 3, "{refused}");
        assert_eq!(p.active_attacks(), 0);
        // A hook claim at the cap is refused too.
        let claim = |ip: &str| Claim {
            key: HostKey {
                ip: ip.parse().unwrap(),
                dir: Direction::Incoming,
            },
            ban: true,
            attack_type: AttackType::UdpFlood,
            protocol: crate::model::Protocol::Udp,
            pps: 1,
            group: 0,
        };
        let t = 1_800_000_100_000;
        assert_eq!(p.claim(t, claim("192.0.2.50")).len(), 1);
        assert_eq!(p.claim(t, claim("192.0.2.51")).len(), 1);
        assert!(p.claim(t, claim("192.0.2.52")).is_empty());
        assert_eq!(overflow(&p, Cap::ActiveAttacks), refused + 1);
    }

    #[test]
    fn over_the_watched_host_cap_an_attack_starts_without_top_sources() {
        let p = capped("max_watched_hosts = 1");
        let ev = three_floods(&p);
        let starts: Vec<_> = ev.iter().filter(|e| e.event == EventKind::Start).collect();
        assert_eq!(starts.len(), 3);
        let with_sources = starts.iter().filter(|e| !e.top_sources.is_empty()).count();
        assert_eq!(with_sources, 1, "{starts:?}");
        assert_eq!(overflow(&p, Cap::WatchedHosts), 2);
        // All ended: the cap is free again.
        assert_eq!(p.watched.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn over_the_series_cap_an_attack_gets_no_per_host_series() {
        let p = capped("max_attack_host_series = 1");
        let series = |p: &Pipeline| {
            p.metrics
                .render()
                .lines()
                .filter(|l| l.starts_with("flowguard_attack_host_pps{"))
                .count()
        };
        run(&p, 2, |_| {
            (1..=3)
                .map(|h| udp("198.51.100.9", &format!("192.0.2.{h}"), 30_000))
                .collect()
        });
        assert_eq!(p.active_attacks(), 3);
        assert_eq!(series(&p), 1);
        assert_eq!(overflow(&p, Cap::AttackHostSeries), 2);
        let p = capped("max_attack_host_series = 1");
        three_floods(&p);
        assert_eq!(p.active_attacks(), 0);
        assert_eq!(
            series(&p),
            0,
            "the one series is removed at its attack's end"
        );
        assert_eq!(p.host_series.lock().len(), 0);
    }

    #[test]
    fn carpet_bombing_over_a_24_is_caught_by_the_group_total() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "web"
            prefixes = ["192.0.2.0/24"]
            threshold_pps = 1000
            ban_time_seconds = 3
            [hostgroup.total]
            threshold_pps = 50000
            "#,
        );
        // 254 hosts × 400 pps: each under 1000, together 101 600 pps.
        let ev = run(&p, 12, |i| {
            if i < 6 {
                (1..255)
                    .map(|h| udp("198.51.100.9", &format!("192.0.2.{h}"), 400))
                    .collect()
            } else {
                Vec::new()
            }
        });
        let starts: Vec<_> = ev.iter().filter(|e| e.event == EventKind::Start).collect();
        assert_eq!(
            starts.len(),
            1,
            "one group attack, no per-host one: {starts:?}"
        );
        let s = starts[0];
        assert_eq!(s.ip, "192.0.2.0".parse::<IpAddr>().unwrap());
        assert_eq!(
            (s.hostgroup.as_str(), s.attack_type),
            ("web", AttackType::UdpFlood)
        );
        assert!(ev.iter().any(|e| e.event == EventKind::End && e.id == s.id));
    }

    #[test]
    fn most_specific_hostgroup_decides_the_thresholds() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            [[hostgroup]]
            name = "dns"
            prefixes = ["192.0.2.53/32"]
            threshold_pps = 100000
            "#,
        );
        // 5000 pps to each: over the default threshold, under the dns one.
        let ev = run(&p, 3, |_| {
            vec![
                udp("198.51.100.9", "192.0.2.53", 5000),
                udp("198.51.100.9", "192.0.2.80", 5000),
            ]
        });
        let started: Vec<_> = ev
            .iter()
            .filter(|e| e.event == EventKind::Start)
            .map(|e| (e.ip.to_string(), e.hostgroup.clone()))
            .collect();
        assert_eq!(
            started,
            vec![("192.0.2.80".to_string(), "default".to_string())]
        );
    }

    #[test]
    fn ipv6_icmp_flood_and_whitelist() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["2001:db8::/32"]
            whitelist = ["2001:db8::beef/128"]
            [[hostgroup]]
            name = "default"
            threshold_icmp_pps = 1000
            "#,
        );
        let icmp6 = |dst: &str| FlowRecord {
            protocol: PROTO_ICMPV6,
            src_port: 0,
            dst_port: 0,
            ..udp("2001:db8:ffff::1", dst, 20_000)
        };
        let ev = run(&p, 3, |_| {
            vec![icmp6("2001:db8::1"), icmp6("2001:db8::beef")]
        });
        let starts: Vec<_> = ev.iter().filter(|e| e.event == EventKind::Start).collect();
        assert_eq!(
            starts.len(),
            1,
            "the whitelisted host never starts one: {starts:?}"
        );
        assert_eq!(starts[0].ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        assert_eq!(starts[0].attack_type, AttackType::IcmpFlood);
        assert_eq!(starts[0].protocol, crate::model::Protocol::Icmp);
        // Still tracked, visible in the API.
        assert!(p
            .host("2001:db8::beef".parse().unwrap(), 1_800_000_003_000)
            .is_some());
    }

    #[test]
    fn the_text_report_parses_back_with_fastnetmons_labels() {
        let p = pipeline(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            "#,
        );
        run(&p, 3, |_| vec![udp("198.51.100.9", "192.0.2.7", 30_000)]);
        let a = p.attacks().into_iter().next().expect("an attack");
        let text = crate::detect::report::text(&a, &Rates::default());
        let r = crate::fnm_report::parse_report(&text);
        assert_eq!(r.ip, Some(a.ip));
        assert_eq!(r.attack_type, Some(AttackType::UdpFlood));
        assert_eq!(r.protocol, Some(crate::model::Protocol::Udp));
        assert_eq!(r.direction.as_deref(), Some("incoming"));
        assert_eq!(r.initial_attack_power, Some(a.initial.pps));
        assert_eq!(r.total_incoming_pps, Some(a.initial.pps));
        assert_eq!(r.incoming_udp_pps, Some(a.initial.udp_pps));
        assert_eq!(
            r.total_incoming_traffic_mbps,
            Some(a.initial.bps / 1_000_000)
        );
        assert!(text.contains("Top sources"), "{text}");
        assert!(text.contains("198.51.100.9"), "{text}");
    }

    /// The cluster seam: two collecting pipelines ship per-second deltas, a third merges
    /// them; it sees the rates and attacks of one pipeline fed everything, and a victim
    /// at 0.6 × threshold on each half is detected in the merge only.
    #[test]
    fn merged_deltas_of_two_halves_detect_like_one_pipeline() {
        let toml = r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 10000
            ban_time_seconds = 3
            "#;
        let cfg = Config::from_toml_str(toml).unwrap();
        let one = pipeline(toml);
        let merged = pipeline(toml);
        let halves: Vec<Pipeline> = (0..2)
            .map(|_| {
                let mut p = Pipeline::new(&cfg, Arc::new(Metrics::new())).unwrap();
                p.enable_deltas(&cfg, 10_000, false);
                p
            })
            .collect();
        let t0 = 1_800_000_000_000i64;
        let mut s1 = one.scratch();
        let mut hs: Vec<Scratch> = halves.iter().map(|p| p.scratch()).collect();
        let (mut ev_one, mut ev_merged) = (Vec::new(), Vec::new());
        for i in 0..14i64 {
            let now = t0 + i * 1000 + 500;
            for j in 0..10 {
                // 12 000 pps to .10 while i < 8 (6 000 through each half), 1 500 to .20
                // throughout.
                let mut recs = vec![udp("198.51.100.9", "192.0.2.20", 150)];
                if i < 8 {
                    recs.push(udp("198.51.100.9", "192.0.2.10", 1200));
                }
                one.ingest(&recs, now + j, &mut s1);
                halves[(j % 2) as usize].ingest(&recs, now + j, &mut hs[(j % 2) as usize]);
            }
            let end = t0 + (i + 1) * 1000;
            ev_one.extend(one.tick(end));
            let sec = (end / 1000) as u32;
            for h in &halves {
                let d = h.drain_deltas(sec);
                assert!(
                    d.iter().all(|x| x.sec + 1 == sec),
                    "only the second that ended"
                );
                merged.apply_deltas(&d);
            }
            assert!(
                halves.iter().all(|h| h.table.is_empty()),
                "collectors keep no table"
            );
            ev_merged.extend(merged.tick(end));
            let ip = "192.0.2.10".parse().unwrap();
            let (a, b) = (one.host(ip, end), merged.host(ip, end));
            if let (Some(a), Some(b)) = (a, b) {
                let (ra, rb) = (a.directions[0].rates.pps, b.directions[0].rates.pps);
                assert!(
                    ra.abs_diff(rb) <= ra / 100 + 1,
                    "second {i}: {ra} vs {rb} pps"
                );
            }
        }
        let kinds = |v: &[AttackEvent]| -> Vec<(EventKind, IpAddr, i64)> {
            v.iter()
                .filter(|e| e.event != EventKind::Update)
                .map(|e| (e.event, e.ip, e.time_ms))
                .collect()
        };
        assert_eq!(kinds(&ev_one), kinds(&ev_merged));
        assert_eq!(
            kinds(&ev_merged)
                .iter()
                .filter(|e| e.0 == EventKind::Start)
                .count(),
            1,
            "{ev_merged:?}"
        );
    }
}
