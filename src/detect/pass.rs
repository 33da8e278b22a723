//! The detect stage as one value: [`Detection`] holds the [`Detector`] and the attack
//! metrics; under its lock ([`Locked`]) the per-second pass reads the aggregate stage's
//! [`HostChange`]s (as a [`SecondSink`]) and hook claims and cluster take-overs arrive;
//! each answers with [`Command`]s for the table, and attack events once the wiring has
//! applied them.
//!
//! Nothing here holds a shard or calls the host table: the sources a started attack
//! carries come back as the answer to its [`Command::Watch`].

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use parking_lot::{Mutex, MutexGuard};

use super::classify::exceeded;
use super::config::HostgroupConfig;
use super::telemetry::AttackSeries;
use super::{Attack, Claim, Detector, Group, Observation, Transition};
use crate::aggregate::{Command, Counters, HostChange, HostKey, Rates, SecondSink};
use crate::config::Config;
use crate::metrics::{Cap, CapReached, Metrics};
use crate::model::{AttackEvent, Direction, EventKind, TopSource};

/// The hostgroups of a config, translated once for both stages: index = group number.
pub struct Hostgroups {
    pub groups: Vec<Group>,
    /// Each group's prefixes (for the aggregate stage's [`crate::aggregate::Networks`]).
    pub prefixes: Vec<Vec<IpNet>>,
    /// The group of protected addresses no group's prefix covers.
    pub default_group: u16,
    /// Representative address of each hostgroup, used as the "ip" of a group-total
    /// (carpet bombing) attack: the group's first prefix, else the first protected one.
    pub group_ip: Vec<IpAddr>,
}

impl Hostgroups {
    pub fn of(hostgroups: &[HostgroupConfig], protected: &[IpNet]) -> Hostgroups {
        let mut groups: Vec<Group> = hostgroups.iter().map(Group::from_config).collect();
        let mut prefixes: Vec<Vec<IpNet>> = hostgroups.iter().map(|g| g.prefixes.clone()).collect();
        let default_group = match hostgroups
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
        Hostgroups {
            groups,
            prefixes,
            default_group: default_group as u16,
            group_ip,
        }
    }
}

pub struct Detection {
    pub(crate) detector: Mutex<Detector>,
    metrics: Arc<Metrics>,
    window_seconds: u32,
    group_ip: Vec<IpAddr>,
    pub(crate) series: Mutex<AttackSeries>,
}

impl Detection {
    pub fn new(
        cfg: &Config,
        groups: Vec<Group>,
        group_ip: Vec<IpAddr>,
        metrics: Arc<Metrics>,
    ) -> Detection {
        Detection {
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
            group_ip,
            series: Mutex::new(AttackSeries::new(cfg.detection.max_attack_host_series)),
        }
    }

    /// The detector, for one pass, claim or take-over: held until dropped, so what the
    /// commands it returns do to the table and the events that follow are one step.
    pub fn lock(&self) -> Locked<'_> {
        Locked {
            det: self.detector.lock(),
            d: self,
            transitions: Vec::new(),
        }
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
}

/// The detector under its lock.
pub struct Locked<'a> {
    det: MutexGuard<'a, Detector>,
    d: &'a Detection,
    /// What the last observe or claim produced, turned into events by [`Self::events`].
    transitions: Vec<Transition>,
}

impl<'a> Locked<'a> {
    /// Drops attacks on hosts `owned` no longer accepts, without an event (their new
    /// owner adopts them): unwatch commands.
    pub fn forget_unowned(&mut self, owned: &impl Fn(&HostKey) -> bool) -> Vec<Command> {
        self.det
            .forget_where(|k| !owned(k))
            .into_iter()
            .map(Command::Unwatch)
            .collect()
    }

    /// The hosts under attack.
    pub fn active_keys(&self) -> impl Iterator<Item = HostKey> + '_ {
        self.det.active().map(|a| a.key())
    }

    /// The detection half of the pass at `now_ms` over the host-directions `owned`
    /// accepts; `asked`: the hosts under attack with their shard. Hand it to the
    /// aggregate stage's pass, then [`Pass::observe`].
    pub fn pass<'p, F: Fn(&HostKey) -> bool>(
        &'p mut self,
        now_ms: i64,
        owned: &'p F,
        asked: Vec<(usize, HostKey)>,
    ) -> Pass<'p, 'a, F> {
        Pass {
            l: self,
            now_ms,
            owned,
            asked,
            seen: Default::default(),
            obs: Vec::new(),
        }
    }

    /// An external detector's ban/unban (FastNetMon hook) on a host of group `c.group`.
    pub fn claim(&mut self, now_ms: i64, c: &Claim) -> Vec<Command> {
        let t = self.det.claim(now_ms, c);
        self.commands_of(t)
    }

    /// Takes over attack `ev` (another detector started it) as an active attack of this
    /// detector, unless one is active for its host already: a watch command if it was.
    pub fn adopt(&mut self, ev: &AttackEvent, group: u16, now_ms: i64) -> Option<Command> {
        self.det
            .adopt(ev, group, now_ms)
            .then_some(Command::Watch(HostKey {
                ip: ev.ip,
                dir: ev.direction,
            }))
    }

    /// Keeps `t` for [`Self::events`]; returns what the table must do for it: a start
    /// begins tracking the host's sources, an end stops it.
    fn commands_of(&mut self, t: Vec<Transition>) -> Vec<Command> {
        let cmds = t
            .iter()
            .filter_map(|t| match t {
                Transition::Start(k) => Some(Command::Watch(*k)),
                Transition::End(k) => Some(Command::Unwatch(*k)),
                _ => None,
            })
            .collect();
        self.transitions = t;
        cmds
    }

    /// Turns the last transitions into attack events (and counts them); `sources`: the
    /// answers to their watch commands (a start carries the top sources seen so far).
    pub fn events(
        &mut self,
        now_ms: i64,
        sources: Vec<(HostKey, Vec<TopSource>)>,
    ) -> Vec<AttackEvent> {
        let det = &mut *self.det;
        let mut sources = sources.into_iter();
        let mut events = Vec::new();
        for t in std::mem::take(&mut self.transitions) {
            match t {
                Transition::Start(k) => {
                    // One answer per watch, in order.
                    let top = sources
                        .next()
                        .filter(|(sk, _)| *sk == k)
                        .map(|(_, s)| s)
                        .unwrap_or_default();
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
                    if let Some(a) = det.ended(&k) {
                        events.push(a.event(EventKind::End, now_ms));
                    }
                }
            }
        }
        self.d.series.lock().count(&events, &self.d.metrics);
        CapReached {
            cap: Cap::ActiveAttacks,
            n: det.take_refused(),
        }
        .emit(&self.d.metrics);
        events
    }

    /// The hosts a sweep must keep: those under attack.
    pub fn keep(&self) -> Vec<Command> {
        self.det.active().map(|a| Command::Keep(a.key())).collect()
    }
}

/// The detection half of one pass: observations of what the aggregate stage shows it.
pub struct Pass<'p, 'a, F> {
    l: &'p mut Locked<'a>,
    now_ms: i64,
    owned: &'p F,
    asked: Vec<(usize, HostKey)>,
    /// Hosts under attack already observed this pass (from their change).
    seen: ahash::AHashSet<HostKey>,
    obs: Vec<Observation>,
}

/// What the detector is shown of host-direction `c`.
fn observation(c: &HostChange, over: Option<&'static str>) -> Observation {
    Observation {
        key: c.key(),
        group: c.group,
        counters: c.sums,
        rates: c.rates,
        over,
    }
}

impl<F: Fn(&HostKey) -> bool> SecondSink for Pass<'_, '_, F> {
    fn asked(&self) -> &[(usize, HostKey)] {
        &self.asked
    }

    /// Over a threshold, or under attack: what [`Self::changed`] observes.
    #[inline]
    fn wants(&self, c: &HostChange) -> bool {
        let det = &self.l.det;
        det.thresholds(c.group, c.direction)
            .is_some_and(|t| det.is_active(&c.key()) || exceeded(t, &c.rates).is_some())
    }

    #[inline]
    fn changed(&mut self, c: &HostChange) {
        let det = &self.l.det;
        let Some(t) = det.thresholds(c.group, c.direction) else {
            return;
        };
        let over = exceeded(t, &c.rates);
        let k = c.key();
        let active = det.is_active(&k);
        if over.is_some() || active {
            if active {
                self.seen.insert(k);
            }
            self.obs.push(observation(c, over));
        }
    }

    fn answer(&mut self, key: &HostKey, c: Option<HostChange>, sources: Vec<TopSource>) {
        let det = &mut self.l.det;
        if !self.seen.contains(key) {
            if let Some(c) = c {
                let over = det
                    .thresholds(c.group, c.direction)
                    .and_then(|t| exceeded(t, &c.rates));
                self.obs.push(observation(&c, over));
            }
        }
        if let Some(a) = det.get_active_mut(key) {
            if !sources.is_empty() {
                a.top_sources = sources;
            }
        }
    }

    fn group_total(&mut self, group: u16, sums: Counters) {
        let det = &self.l.det;
        let Some(t) = det
            .groups()
            .get(usize::from(group))
            .and_then(|g| g.total.as_ref())
        else {
            return;
        };
        let rates = Rates::from_window(&sums, self.l.d.window_seconds);
        let key = HostKey {
            ip: self.l.d.group_ip[usize::from(group)],
            dir: Direction::Incoming,
        };
        let over = exceeded(t, &rates);
        if (over.is_some() || det.is_active(&key)) && (self.owned)(&key) {
            self.obs.push(Observation {
                key,
                group,
                counters: sums,
                rates,
                over: over.map(|_| "hostgroup_total"),
            });
        }
    }
}

impl<F> Pass<'_, '_, F> {
    /// Shows the detector this pass's observations; returns the commands its
    /// transitions need (then [`Locked::events`]).
    pub fn observe(mut self) -> Vec<Command> {
        // Shards are visited in hash order, which is random per process; attacks that
        // start in the same pass get their ids in address order instead, so a replay is
        // reproducible.
        self.obs.sort_by_key(|o| o.key);
        let t = self.l.det.observe(self.now_ms, &self.obs);
        self.l.commands_of(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detection(toml: &str) -> Detection {
        let cfg = Config::from_toml_str(toml).unwrap();
        let protected = cfg.protected_prefixes().unwrap();
        let hg = Hostgroups::of(&cfg.hostgroups, &protected);
        Detection::new(&cfg, hg.groups, hg.group_ip, Arc::new(Metrics::new()))
    }

    fn change(ip: &str, pps: u64) -> HostChange {
        let rates = Rates {
            pps,
            udp_pps: pps,
            bps: pps * 800,
            udp_bps: pps * 800,
            ..Rates::default()
        };
        let sums = Counters {
            packets: pps * 5,
            udp_packets: pps * 5,
            bytes: pps * 500,
            udp_bytes: pps * 500,
            flows: 5,
            udp_flows: 5,
            ..Counters::default()
        };
        HostChange {
            ip: ip.parse().unwrap(),
            direction: Direction::Incoming,
            group: 0,
            last_seen_sec: 1_800_000_000,
            sums,
            rates,
        }
    }

    /// The seam is values only: a pass fed serialized-and-back host changes, with no
    /// host table anywhere, starts an attack by asking for a watch, and the start event
    /// carries the sources that answer brings.
    #[test]
    fn detection_runs_on_host_changes_alone_and_answers_with_commands() {
        let d = detection(
            r#"
            [networks]
            protected = ["192.0.2.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1000
            "#,
        );
        let wire =
            serde_json::to_string(&[change("192.0.2.7", 30_000), change("192.0.2.8", 10)]).unwrap();
        let back: Vec<HostChange> = serde_json::from_str(&wire).unwrap();
        assert_eq!(back[0], change("192.0.2.7", 30_000));
        let owned = |_: &HostKey| true;
        let now = 1_800_000_001_000;
        let mut l = d.lock();
        let mut pass = l.pass(now, &owned, Vec::new());
        for c in &back {
            pass.changed(c);
        }
        let cmds = pass.observe();
        let key = back[0].key();
        assert_eq!(cmds, vec![Command::Watch(key)]);
        let src = TopSource {
            ip: "198.51.100.9".parse().unwrap(),
            port: Some(5353),
            share: 1.0,
        };
        let ev = l.events(now, vec![(key, vec![src.clone()])]);
        assert_eq!(ev.len(), 1);
        assert_eq!((ev[0].event, ev[0].ip), (EventKind::Start, key.ip));
        assert_eq!(ev[0].top_sources, vec![src]);
        assert_eq!(l.keep(), vec![Command::Keep(key)]);
    }
}
