//! Detect stage: hostgroup thresholds → attacks with a lifecycle.
//!
//! [`Detector`] is a pure state machine: the pass ([`pass`]) hands it, once per second,
//! an [`Observation`] for every host written during that second that is over a
//! threshold or under attack, and every host under attack, and it answers with
//! [`Transition`]s. It takes `now` as an argument and never touches a clock, a socket or
//! the host table; [`pass`] turns transitions into the [`crate::aggregate::Command`]s the
//! wiring applies to the table, and into attack events.
//!
//! Lifecycle, per host and direction (one attack at a time):
//! - start: a threshold of the host's group is exceeded on `trigger_seconds`
//!   consecutive passes (default 1: the first pass that sees it, i.e. within one second
//!   of the window average crossing the threshold);
//! - update: peak rates are kept while it lasts; its vectors are tracked and its type is
//!   the classification of its traffic so far, re-evaluated on every pass (see
//!   [`vectors`]): a change of type or a new vector is a [`Transition::Changed`];
//! - end: once every rate has stayed under the thresholds for `ban_time_seconds` (never
//!   while still over: FastNetMon's `unban_only_if_attack_finished`);
//! - whitelisted hosts never start one (the aggregate stage does not show them).
//!
//! Attacks may also be claimed by an external detector (the FastNetMon hook): a claim on
//! a host that already has an attack joins it instead of starting a second one, and the
//! attack ends only when both flowguard's own detection and the external detector say
//! it has ended.

pub mod classify;
pub mod config;
pub mod pass;
pub mod report;
pub mod telemetry;
pub mod vectors;

pub use pass::{Detection, Hostgroups, Locked, Pass};

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::aggregate::{Counters, HostKey, Rates};
use crate::model::{
    AttackEvent, AttackType, Direction, EventKind, Protocol, TopSource, Vector, VectorSummary,
};
use config::{HostgroupConfig, Thresholds};
use vectors::{VectorSet, VectorTracker};

/// A hostgroup as the detector uses it.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub incoming: Thresholds,
    pub outgoing: Thresholds,
    pub total: Option<Thresholds>,
    pub ban_time_seconds: u32,
}

impl Group {
    pub fn from_config(g: &HostgroupConfig) -> Group {
        Group {
            name: g.name.clone(),
            incoming: g.incoming(),
            outgoing: g.outgoing_thresholds(),
            total: g.total.clone(),
            ban_time_seconds: g.ban_time_seconds,
        }
    }
}

/// One host-direction's window as seen by a detection pass.
#[derive(Debug, Clone)]
pub struct Observation {
    pub key: HostKey,
    pub group: u16,
    /// Averaged counters, rate × window (what a window of that length would sum).
    pub counters: Counters,
    pub rates: Rates,
    /// The threshold broken, if any.
    pub over: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Attack {
    pub id: String,
    pub ip: std::net::IpAddr,
    pub direction: Direction,
    pub hostgroup: String,
    #[serde(skip)]
    pub group: u16,
    pub attack_type: AttackType,
    pub protocol: Protocol,
    /// Which threshold started it (`external` for a hook claim).
    pub threshold: String,
    pub start_ms: i64,
    pub last_over_ms: i64,
    pub end_ms: Option<i64>,
    pub initial: Rates,
    pub current: Rates,
    pub peak_pps: u64,
    pub peak_bps: u64,
    /// Averaged counters (rate × window) when the attack started (what it was classified on).
    #[serde(skip)]
    pub counters: Counters,
    pub top_sources: Vec<TopSource>,
    /// Its vectors so far, dominant first (refreshed on every pass).
    pub vectors: Vec<VectorSummary>,
    /// The latest changes of its type (at most [`MAX_TYPE_CHANGES`], oldest dropped).
    pub type_changes: VecDeque<TypeChange>,
    /// How many times its type changed in all.
    pub type_changes_total: u32,
    /// flowguard's own detection still sees it.
    pub own_active: bool,
    /// An external detector (FastNetMon hook) still claims it.
    pub external_active: bool,
    #[serde(skip)]
    last_update_ms: i64,
    /// The traffic so far and the vectors (None until flowguard's own detection sees it).
    #[serde(skip)]
    tracker: Option<VectorTracker>,
    /// The type was given by an external detector: it is kept, not re-derived.
    #[serde(skip)]
    external_type: bool,
}

/// A change of an attack's type, as the API lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TypeChange {
    /// Always `update`: the event that carried the change.
    pub event: EventKind,
    pub time_ms: i64,
    pub old_type: AttackType,
    pub new_type: AttackType,
    pub protocol: Protocol,
}

/// Type changes an attack keeps (the count goes on).
pub const MAX_TYPE_CHANGES: usize = 32;

impl Attack {
    pub fn key(&self) -> HostKey {
        HostKey {
            ip: self.ip,
            dir: self.direction,
        }
    }

    pub fn event(&self, kind: EventKind, now_ms: i64) -> AttackEvent {
        AttackEvent {
            event: kind,
            id: self.id.clone(),
            ip: self.ip,
            direction: self.direction,
            attack_type: self.attack_type,
            protocol: self.protocol,
            time_ms: now_ms,
            pps: self.current.pps,
            bps: self.current.bps,
            flows_per_second: self.current.flows_per_second,
            peak_pps: self.peak_pps,
            hostgroup: self.hostgroup.clone(),
            top_sources: self.top_sources.clone(),
            vectors: self.vectors.clone(),
            previous_attack_type: None,
            new_vectors: Vec::new(),
        }
    }

    /// The update event for a [`Transition::Changed`].
    pub fn change_event(
        &self,
        now_ms: i64,
        previous_type: Option<AttackType>,
        new_vectors: VectorSet,
    ) -> AttackEvent {
        AttackEvent {
            previous_attack_type: previous_type,
            new_vectors: new_vectors.iter().collect(),
            ..self.event(EventKind::Update, now_ms)
        }
    }

    /// The dominant vector (largest share so far), if flowguard's detection saw any.
    pub fn dominant(&self) -> Option<&VectorSummary> {
        self.vectors.first()
    }

    /// Whether `v` is one of its vectors.
    pub fn has_vector(&self, v: Vector) -> bool {
        self.vectors.iter().any(|s| s.vector == v)
    }

    fn record_type_change(&mut self, now_ms: i64, old: AttackType) {
        self.type_changes.push_back(TypeChange {
            event: EventKind::Update,
            time_ms: now_ms,
            old_type: old,
            new_type: self.attack_type,
            protocol: self.protocol,
        });
        while self.type_changes.len() > MAX_TYPE_CHANGES {
            self.type_changes.pop_front();
        }
        self.type_changes_total = self.type_changes_total.saturating_add(1);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start(HostKey),
    Update(HostKey),
    /// The attack's type changed (`previous_type`, what it was) or vectors started to
    /// count (`new_vectors`) on this pass.
    Changed {
        key: HostKey,
        previous_type: Option<AttackType>,
        new_vectors: VectorSet,
    },
    /// The attack has been moved to the recent list.
    End(HostKey),
}

/// An external detector's verdict on a host.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: HostKey,
    pub ban: bool,
    pub attack_type: AttackType,
    pub protocol: Protocol,
    pub pps: u64,
    pub group: u16,
}

/// Updates are re-emitted at most this often per attack.
const UPDATE_INTERVAL_MS: i64 = 10_000;

pub struct Detector {
    groups: Vec<Group>,
    trigger_passes: u32,
    detect_outgoing: bool,
    detect_incoming: bool,
    detect_ipv6: bool,
    recent_cap: usize,
    active: HashMap<HostKey, Attack>,
    recent: VecDeque<Attack>,
    pending: HashMap<HostKey, u32>,
    seq: u64,
    vector_min_share: f64,
    /// `[detection] max_active_attacks`.
    max_active: usize,
    /// Starts refused because `max_active` was reached, since the last
    /// [`Detector::take_refused`].
    refused: u64,
}

impl Detector {
    pub fn new(
        groups: Vec<Group>,
        trigger_seconds: u32,
        detect_outgoing: bool,
        recent_cap: usize,
    ) -> Detector {
        Detector {
            groups,
            trigger_passes: trigger_seconds.max(1),
            detect_outgoing,
            detect_incoming: true,
            detect_ipv6: true,
            recent_cap,
            active: HashMap::new(),
            recent: VecDeque::new(),
            pending: HashMap::new(),
            seq: 0,
            vector_min_share: vectors::DEFAULT_MIN_SHARE,
            max_active: usize::MAX,
            refused: 0,
        }
    }

    /// `[detection] max_active_attacks`: beyond it, no attack starts (counted).
    pub fn with_max_active(mut self, n: usize) -> Detector {
        self.max_active = n;
        self
    }

    /// Starts refused at the active-attack cap since the last call.
    pub fn take_refused(&mut self) -> u64 {
        std::mem::take(&mut self.refused)
    }

    /// `[detection] incoming` and `ipv6`: which hosts flowguard's own detection may start
    /// attacks on. External claims are not filtered: the detector that sent them decided.
    pub fn with_switches(mut self, incoming: bool, ipv6: bool) -> Detector {
        self.detect_incoming = incoming;
        self.detect_ipv6 = ipv6;
        self
    }

    /// Whether flowguard's own detection may start an attack on `key`.
    pub fn watches(&self, key: &HostKey) -> bool {
        let dir = match key.dir {
            Direction::Incoming => self.detect_incoming,
            Direction::Outgoing => self.detect_outgoing,
        };
        dir && (self.detect_ipv6 || key.ip.is_ipv4())
    }

    /// The share (0..=1) of an attack's packets at which a vector counts (default 20 %).
    pub fn with_vector_min_share(mut self, share: f64) -> Detector {
        self.vector_min_share = share;
        self
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Thresholds for a host of `group` in direction `dir`; None when that direction is
    /// not watched.
    pub fn thresholds(&self, group: u16, dir: Direction) -> Option<&Thresholds> {
        let g = self.groups.get(usize::from(group))?;
        match dir {
            Direction::Incoming if self.detect_incoming => Some(&g.incoming),
            Direction::Incoming => None,
            Direction::Outgoing if self.detect_outgoing => Some(&g.outgoing),
            Direction::Outgoing => None,
        }
    }

    pub fn active(&self) -> impl Iterator<Item = &Attack> {
        self.active.values()
    }

    pub fn recent(&self) -> impl Iterator<Item = &Attack> {
        self.recent.iter().rev()
    }

    pub fn get_active(&self, key: &HostKey) -> Option<&Attack> {
        self.active.get(key)
    }

    pub fn get_active_mut(&mut self, key: &HostKey) -> Option<&mut Attack> {
        self.active.get_mut(key)
    }

    pub fn find(&self, id: &str) -> Option<&Attack> {
        self.active
            .values()
            .chain(self.recent.iter())
            .find(|a| a.id == id)
    }

    pub fn is_active(&self, key: &HostKey) -> bool {
        self.active.contains_key(key)
    }

    fn new_attack(&mut self, key: HostKey, group: u16, now_ms: i64) -> Attack {
        self.seq += 1;
        Attack {
            id: format!("{}-{}", now_ms / 1000, self.seq),
            ip: key.ip,
            direction: key.dir,
            hostgroup: self
                .groups
                .get(usize::from(group))
                .map(|g| g.name.clone())
                .unwrap_or_default(),
            group,
            attack_type: AttackType::Unknown,
            protocol: Protocol::Unknown,
            threshold: String::new(),
            start_ms: now_ms,
            last_over_ms: now_ms,
            end_ms: None,
            initial: Rates::default(),
            current: Rates::default(),
            peak_pps: 0,
            peak_bps: 0,
            counters: Counters::default(),
            top_sources: Vec::new(),
            vectors: Vec::new(),
            type_changes: VecDeque::new(),
            type_changes_total: 0,
            own_active: false,
            external_active: false,
            last_update_ms: now_ms,
            tracker: None,
            external_type: false,
        }
    }

    /// The thresholds an attack's own vector thresholds are read from: the group's total
    /// thresholds for a hostgroup-total attack, else the host's.
    fn vector_thresholds(&self, a: &Attack) -> Option<Thresholds> {
        if a.threshold == "hostgroup_total" {
            return self
                .groups
                .get(usize::from(a.group))
                .and_then(|g| g.total.clone());
        }
        self.thresholds(a.group, a.direction).cloned()
    }

    fn ban_ms(&self, group: u16) -> i64 {
        i64::from(
            self.groups
                .get(usize::from(group))
                .map_or(300, |g| g.ban_time_seconds),
        ) * 1000
    }

    /// One detection pass at `now_ms`.
    pub fn observe(&mut self, now_ms: i64, obs: &[Observation]) -> Vec<Transition> {
        let mut out = Vec::new();
        let mut pending = HashMap::new();
        for o in obs {
            let vt = self.active.get(&o.key).map(|a| self.vector_thresholds(a));
            let min_share = self.vector_min_share;
            if let (Some(a), Some(vt)) = (self.active.get_mut(&o.key), vt) {
                a.current = o.rates;
                a.peak_pps = a.peak_pps.max(o.rates.pps);
                a.peak_bps = a.peak_bps.max(o.rates.bps);
                let over = o.over.is_some();
                let new_vectors = match &mut a.tracker {
                    Some(tr) => tr.observe(now_ms, &o.rates, vt.as_ref(), over).new_vectors,
                    None => {
                        // An externally claimed attack that our own detection sees for the
                        // first time: what it finds now is its baseline, not a change (the
                        // next update carries the vectors to mitigation).
                        let (tr, _) = VectorTracker::begin(
                            min_share,
                            now_ms,
                            &o.counters,
                            &o.rates,
                            vt.as_ref(),
                            over,
                        );
                        a.tracker = Some(tr);
                        VectorSet::default()
                    }
                };
                let mut previous_type = None;
                if let Some(tr) = &a.tracker {
                    a.vectors = tr.summaries();
                    if !a.external_type {
                        let (t, p) = tr.classify();
                        a.protocol = p;
                        if t != a.attack_type {
                            let old = a.attack_type;
                            a.attack_type = t;
                            a.record_type_change(now_ms, old);
                            previous_type = Some(old);
                        }
                    }
                }
                if over {
                    a.last_over_ms = now_ms;
                    if !a.own_active {
                        // An externally claimed attack that our own detection now sees too.
                        a.own_active = true;
                    }
                }
                if previous_type.is_some() || !new_vectors.is_empty() {
                    a.last_update_ms = now_ms;
                    out.push(Transition::Changed {
                        key: o.key,
                        previous_type,
                        new_vectors,
                    });
                } else if over && now_ms - a.last_update_ms >= UPDATE_INTERVAL_MS {
                    a.last_update_ms = now_ms;
                    out.push(Transition::Update(o.key));
                }
                continue;
            }
            let Some(which) = o.over else { continue };
            // Hostgroup totals come in as observations too; one check covers both.
            if !self.watches(&o.key) {
                continue;
            }
            let n = self.pending.get(&o.key).copied().unwrap_or(0) + 1;
            if n < self.trigger_passes {
                pending.insert(o.key, n);
                continue;
            }
            if self.active.len() >= self.max_active {
                self.refused += 1;
                continue;
            }
            let mut a = self.new_attack(o.key, o.group, now_ms);
            a.threshold = which.to_string();
            let vt = self.vector_thresholds(&a);
            let (tr, _) = VectorTracker::begin(
                self.vector_min_share,
                now_ms,
                &o.counters,
                &o.rates,
                vt.as_ref(),
                true,
            );
            // The traffic so far is the window it started on: today's classification.
            let (t, p) = tr.classify();
            a.attack_type = t;
            a.protocol = p;
            a.vectors = tr.summaries();
            a.tracker = Some(tr);
            a.initial = o.rates;
            a.current = o.rates;
            a.peak_pps = o.rates.pps;
            a.peak_bps = o.rates.bps;
            a.counters = o.counters;
            a.own_active = true;
            self.active.insert(o.key, a);
            out.push(Transition::Start(o.key));
        }
        self.pending = pending;
        // End what has stayed under every threshold for the ban time.
        let mut ended = Vec::new();
        for (k, a) in self.active.iter_mut() {
            if a.own_active
                && now_ms - a.last_over_ms
                    >= i64::from(
                        self.groups
                            .get(usize::from(a.group))
                            .map_or(300, |g| g.ban_time_seconds),
                    ) * 1000
            {
                a.own_active = false;
            }
            if !a.own_active && !a.external_active {
                ended.push(*k);
            }
        }
        ended.sort();
        for k in ended {
            self.finish(k, now_ms);
            out.push(Transition::End(k));
        }
        out
    }

    /// Takes over an attack another detector started (a cluster partition changed
    /// owner), keeping its id, type and start: it goes on as if this detector had
    /// started it, and ends here after the ban time under every threshold. False if an
    /// attack on its host is active already.
    pub fn adopt(&mut self, ev: &AttackEvent, group: u16, now_ms: i64) -> bool {
        let key = HostKey {
            ip: ev.ip,
            dir: ev.direction,
        };
        if self.active.contains_key(&key) {
            return false;
        }
        let mut a = self.new_attack(key, group, ev.time_ms);
        a.id = ev.id.clone();
        a.attack_type = ev.attack_type;
        a.protocol = ev.protocol;
        a.threshold = "adopted".into();
        a.last_over_ms = now_ms;
        a.last_update_ms = now_ms;
        a.initial.pps = ev.pps;
        a.current.pps = ev.pps;
        a.peak_pps = ev.peak_pps;
        a.own_active = true;
        self.active.insert(key, a);
        true
    }

    /// Drops, without ending them, the active attacks whose host `gone` accepts (their
    /// partition moved to another detector, which adopts them); returns their hosts.
    pub fn forget_where(&mut self, gone: impl Fn(&HostKey) -> bool) -> Vec<HostKey> {
        let keys: Vec<HostKey> = self.active.keys().filter(|k| gone(k)).copied().collect();
        for k in &keys {
            self.active.remove(k);
            self.pending.remove(k);
        }
        keys
    }

    /// An external detector's ban/unban.
    pub fn claim(&mut self, now_ms: i64, c: &Claim) -> Vec<Transition> {
        let mut out = Vec::new();
        if c.ban {
            if let Some(a) = self.active.get_mut(&c.key) {
                a.external_active = true;
                if a.attack_type == AttackType::Unknown && c.attack_type != AttackType::Unknown {
                    let old = a.attack_type;
                    a.attack_type = c.attack_type;
                    a.protocol = c.protocol;
                    a.external_type = true;
                    a.record_type_change(now_ms, old);
                    out.push(Transition::Changed {
                        key: c.key,
                        previous_type: Some(old),
                        new_vectors: VectorSet::default(),
                    });
                }
                return out;
            }
            if self.active.len() >= self.max_active {
                self.refused += 1;
                return out;
            }
            let mut a = self.new_attack(c.key, c.group, now_ms);
            a.attack_type = c.attack_type;
            a.protocol = c.protocol;
            a.threshold = "external".into();
            a.external_type = true;
            a.initial.pps = c.pps;
            a.current.pps = c.pps;
            a.peak_pps = c.pps;
            a.external_active = true;
            self.active.insert(c.key, a);
            out.push(Transition::Start(c.key));
        } else if let Some(a) = self.active.get_mut(&c.key) {
            a.external_active = false;
            if !a.own_active {
                self.finish(c.key, now_ms);
                out.push(Transition::End(c.key));
            }
        }
        out
    }

    fn finish(&mut self, key: HostKey, now_ms: i64) {
        if let Some(mut a) = self.active.remove(&key) {
            a.end_ms = Some(now_ms);
            self.recent.push_back(a);
            while self.recent.len() > self.recent_cap {
                self.recent.pop_front();
            }
        }
    }

    /// The ended attack for an `End` transition (the most recent one for that key).
    pub fn ended(&self, key: &HostKey) -> Option<&Attack> {
        self.recent.iter().rev().find(|a| a.key() == *key)
    }

    /// Ban time of a group in ms (for tests and reports).
    pub fn ban_time_ms(&self, group: u16) -> i64 {
        self.ban_ms(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(pps: u64, ban: u32) -> Group {
        let t = Thresholds {
            threshold_pps: Some(pps),
            ..Thresholds::default()
        };
        Group {
            name: "g".into(),
            incoming: t.clone(),
            outgoing: t,
            total: None,
            ban_time_seconds: ban,
        }
    }

    fn key(ip: &str) -> HostKey {
        HostKey {
            ip: ip.parse().unwrap(),
            dir: Direction::Incoming,
        }
    }

    fn obs(d: &Detector, ip: &str, pps: u64) -> Observation {
        let c = Counters {
            packets: pps * 5,
            udp_packets: pps * 5,
            ..Counters::default()
        };
        let rates = Rates::from_window(&c, 5);
        Observation {
            key: key(ip),
            group: 0,
            counters: c,
            rates,
            over: classify::exceeded(d.thresholds(0, Direction::Incoming).unwrap(), &rates),
        }
    }

    #[test]
    fn starts_on_first_pass_over_and_ends_after_ban_time_under() {
        let mut d = Detector::new(vec![group(1000, 10)], 1, false, 10);
        assert!(d.observe(1_000, &[obs(&d, "192.0.2.1", 500)]).is_empty());
        let o = obs(&d, "192.0.2.1", 5000);
        assert_eq!(
            d.observe(2_000, &[o]),
            vec![Transition::Start(key("192.0.2.1"))]
        );
        let a = d.get_active(&key("192.0.2.1")).unwrap();
        assert_eq!(
            (a.attack_type, a.protocol),
            (AttackType::UdpFlood, Protocol::Udp)
        );
        // Still over at 5 s: the ban time counts from the last pass over.
        let o = obs(&d, "192.0.2.1", 8000);
        assert!(d.observe(5_000, &[o]).is_empty());
        assert_eq!(d.get_active(&key("192.0.2.1")).unwrap().peak_pps, 8000);
        let under = obs(&d, "192.0.2.1", 10);
        assert!(
            d.observe(14_000, std::slice::from_ref(&under)).is_empty(),
            "9 s under < ban time"
        );
        assert_eq!(
            d.observe(15_000, &[under]),
            vec![Transition::End(key("192.0.2.1"))]
        );
        let ended = d.ended(&key("192.0.2.1")).unwrap();
        assert_eq!(ended.end_ms, Some(15_000));
        assert_eq!(ended.peak_pps, 8000);
        // Without traffic at all (no observation), it would also have ended.
    }

    #[test]
    fn never_ends_while_over_and_retriggers_as_a_new_attack() {
        let mut d = Detector::new(vec![group(1000, 2)], 1, false, 10);
        let over = obs(&d, "192.0.2.1", 5000);
        d.observe(1_000, std::slice::from_ref(&over));
        for t in 2..20 {
            assert!(d
                .observe(t * 1000, std::slice::from_ref(&over))
                .iter()
                .all(|t| !matches!(t, Transition::End(_))));
        }
        let first = d.get_active(&key("192.0.2.1")).unwrap().id.clone();
        assert_eq!(
            d.observe(30_000, &[]),
            vec![Transition::End(key("192.0.2.1"))]
        );
        assert_eq!(
            d.observe(31_000, &[over]),
            vec![Transition::Start(key("192.0.2.1"))]
        );
        assert_ne!(d.get_active(&key("192.0.2.1")).unwrap().id, first);
    }

    #[test]
    fn trigger_seconds_needs_consecutive_passes() {
        let mut d = Detector::new(vec![group(1000, 2)], 3, false, 10);
        let over = obs(&d, "192.0.2.1", 5000);
        assert!(d.observe(1_000, std::slice::from_ref(&over)).is_empty());
        assert!(d.observe(2_000, &[]).is_empty()); // a gap resets the count
        assert!(d.observe(3_000, std::slice::from_ref(&over)).is_empty());
        assert!(d.observe(4_000, std::slice::from_ref(&over)).is_empty());
        assert_eq!(d.observe(5_000, &[over]).len(), 1);
    }

    #[test]
    fn outgoing_is_not_watched_unless_enabled() {
        let d = Detector::new(vec![group(1000, 2)], 1, false, 10);
        assert!(d.thresholds(0, Direction::Outgoing).is_none());
        let d = Detector::new(vec![group(1000, 2)], 1, true, 10);
        assert!(d.thresholds(0, Direction::Outgoing).is_some());
    }

    #[test]
    fn incoming_and_ipv6_switches_stop_starts_but_not_claims() {
        let mut d = Detector::new(vec![group(1000, 2)], 1, true, 10).with_switches(false, true);
        assert!(d.thresholds(0, Direction::Incoming).is_none());
        assert!(d.thresholds(0, Direction::Outgoing).is_some());
        // An observation over the threshold (as a hostgroup total would be) starts nothing.
        let mut o = obs(
            &Detector::new(vec![group(1000, 2)], 1, false, 10),
            "192.0.2.1",
            5000,
        );
        assert!(o.over.is_some());
        assert!(d.observe(1_000, std::slice::from_ref(&o)).is_empty());
        o.key.dir = Direction::Outgoing;
        assert_eq!(d.observe(2_000, std::slice::from_ref(&o)).len(), 1);

        let mut d = Detector::new(vec![group(1000, 2)], 1, false, 10).with_switches(true, false);
        let mut v6 = obs(&d, "192.0.2.1", 5000);
        v6.key.ip = "2001:db8::1".parse().unwrap();
        assert!(d.observe(1_000, std::slice::from_ref(&v6)).is_empty());
        let v4 = obs(&d, "192.0.2.1", 5000);
        assert_eq!(d.observe(1_000, &[v4]).len(), 1);
        // FastNetMon's own ban of an IPv6 host still counts: it made that decision.
        let claim = Claim {
            key: v6.key,
            ban: true,
            attack_type: AttackType::UdpFlood,
            protocol: Protocol::Udp,
            pps: 1,
            group: 0,
        };
        assert_eq!(d.claim(2_000, &claim).len(), 1);
    }

    #[test]
    fn external_claim_and_own_detection_are_one_attack() {
        let mut d = Detector::new(vec![group(1000, 2)], 1, false, 10);
        let claim = Claim {
            key: key("192.0.2.1"),
            ban: true,
            attack_type: AttackType::SynFlood,
            protocol: Protocol::Tcp,
            pps: 4000,
            group: 0,
        };
        assert_eq!(
            d.claim(1_000, &claim),
            vec![Transition::Start(key("192.0.2.1"))]
        );
        // Own detection sees it too: no second start.
        let over = obs(&d, "192.0.2.1", 5000);
        assert!(d.observe(2_000, &[over]).is_empty());
        // Unban while own detection still holds it: not over yet.
        let unban = Claim {
            ban: false,
            ..claim.clone()
        };
        assert!(d.claim(3_000, &unban).is_empty());
        assert!(d.is_active(&key("192.0.2.1")));
        // Own detection ends it after its ban time.
        assert_eq!(
            d.observe(4_000, &[]),
            vec![Transition::End(key("192.0.2.1"))]
        );
        // A claim alone ends with its unban.
        d.claim(10_000, &claim);
        assert_eq!(
            d.claim(11_000, &unban),
            vec![Transition::End(key("192.0.2.1"))]
        );
    }

    /// A window of `syn` SYN and `udp` UDP packets per second (5 s window).
    fn mixed(d: &Detector, ip: &str, syn: u64, udp: u64) -> Observation {
        let c = Counters {
            packets: 5 * (syn + udp),
            bytes: 5 * (syn * 60 + udp * 100),
            tcp_packets: 5 * syn,
            tcp_bytes: 5 * syn * 60,
            tcp_syn_packets: 5 * syn,
            tcp_syn_bytes: 5 * syn * 60,
            udp_packets: 5 * udp,
            udp_bytes: 5 * udp * 100,
            ..Counters::default()
        };
        let rates = Rates::from_window(&c, 5);
        Observation {
            key: key(ip),
            group: 0,
            counters: c,
            rates,
            over: classify::exceeded(d.thresholds(0, Direction::Incoming).unwrap(), &rates),
        }
    }

    fn vector_names(a: &Attack) -> Vec<Vector> {
        a.vectors.iter().map(|v| v.vector).collect()
    }

    #[test]
    fn a_vector_appearing_late_changes_the_type_once_and_is_one_attack() {
        let mut d = Detector::new(vec![group(1000, 5)], 1, false, 10);
        let k = key("192.0.2.1");
        // UDP first, as softflowd exports it.
        let o = mixed(&d, "192.0.2.1", 0, 10_000);
        assert_eq!(d.observe(1_000, &[o]), vec![Transition::Start(k)]);
        assert_eq!(d.get_active(&k).unwrap().attack_type, AttackType::UdpFlood);
        assert_eq!(vector_names(d.get_active(&k).unwrap()), [Vector::Udp]);
        // SYN joins one second later: a new vector, same type for now.
        let both = mixed(&d, "192.0.2.1", 13_000, 10_000);
        let mut syn = VectorSet::default();
        syn.insert(Vector::Syn);
        assert_eq!(
            d.observe(2_000, std::slice::from_ref(&both)),
            vec![Transition::Changed {
                key: k,
                previous_type: None,
                new_vectors: syn
            }]
        );
        // The SYN share of the traffic so far passes half: the type changes, once.
        let mut changes = Vec::new();
        for t in 3..60 {
            for tr in d.observe(t * 1000, std::slice::from_ref(&both)) {
                match tr {
                    Transition::Changed { previous_type, .. } => changes.push((t, previous_type)),
                    Transition::Update(_) => {}
                    other => panic!("unexpected {other:?} at {t}"),
                }
            }
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].1, Some(AttackType::UdpFlood));
        let a = d.get_active(&k).unwrap();
        assert_eq!(
            (a.attack_type, a.protocol),
            (AttackType::SynFlood, Protocol::Tcp)
        );
        assert_eq!(vector_names(a), [Vector::Syn, Vector::Udp]);
        assert_eq!(a.type_changes_total, 1);
        assert_eq!(a.type_changes[0].old_type, AttackType::UdpFlood);
        assert_eq!(a.type_changes[0].new_type, AttackType::SynFlood);
        let ev = a.event(EventKind::End, 99_000);
        assert_eq!(ev.vectors.len(), 2);
        // Ends once, with both vectors.
        assert_eq!(d.observe(70_000, &[]), vec![Transition::End(k)]);
        assert_eq!(
            vector_names(d.ended(&k).unwrap()),
            [Vector::Syn, Vector::Udp]
        );
    }

    #[test]
    fn a_vector_fading_and_returning_is_no_new_change() {
        let mut d = Detector::new(vec![group(1000, 5)], 1, false, 10);
        let k = key("192.0.2.1");
        let both = mixed(&d, "192.0.2.1", 10_000, 10_000);
        d.observe(1_000, std::slice::from_ref(&both));
        let first = d.get_active(&k).unwrap().attack_type;
        let faded = mixed(&d, "192.0.2.1", 19_000, 500);
        let mut seen = Vec::new();
        for t in 2..40 {
            let o = if (10..20).contains(&t) { &faded } else { &both };
            seen.extend(
                d.observe(t * 1000, std::slice::from_ref(o))
                    .into_iter()
                    .filter(|tr| !matches!(tr, Transition::Update(_))),
            );
            let a = d.get_active(&k).unwrap();
            assert_eq!(vector_names(a).len(), 2, "udp stays listed at {t}");
            let udp = a.vectors.iter().find(|v| v.vector == Vector::Udp).unwrap();
            assert_eq!(udp.active, !(10..20).contains(&t), "at {t}");
        }
        // SYN's share so far creeps over half while UDP is faded: that may change the type,
        // but no vector is ever new again.
        assert!(
            seen.iter().all(|tr| matches!(
                tr,
                Transition::Changed { new_vectors, .. } if new_vectors.is_empty()
            )),
            "{seen:?} (first type {first})"
        );
    }

    #[test]
    fn single_vector_attack_is_unchanged_from_today() {
        let mut d = Detector::new(vec![group(1000, 5)], 1, false, 10);
        let k = key("192.0.2.1");
        let mut all = Vec::new();
        for t in 1..30 {
            let o = obs(&d, "192.0.2.1", 5000 + t as u64 * 100);
            all.extend(d.observe(t * 1000, &[o]));
        }
        all.extend(d.observe(40_000, &[]));
        assert_eq!(all.first(), Some(&Transition::Start(k)));
        assert_eq!(all.last(), Some(&Transition::End(k)));
        assert!(
            all[1..all.len() - 1]
                .iter()
                .all(|t| *t == Transition::Update(k)),
            "only periodic updates: {all:?}"
        );
        let a = d.ended(&k).unwrap();
        assert_eq!(
            (a.attack_type, a.protocol),
            (AttackType::UdpFlood, Protocol::Udp)
        );
        assert_eq!(vector_names(a), [Vector::Udp]);
        assert_eq!(a.vectors[0].share, 1.0);
        assert_eq!(a.vectors[0].peak_pps, a.peak_pps);
        assert_eq!(a.type_changes_total, 0);
    }

    #[test]
    fn a_pulse_wave_is_one_attack() {
        // Bursts of 3 s far over the threshold, 4 s apart, ban time 10 s.
        let mut d = Detector::new(vec![group(1000, 10)], 1, false, 10);
        let k = key("192.0.2.1");
        let mut all = Vec::new();
        for t in 1..40 {
            let pps = if t % 7 < 3 { 50_000 } else { 0 };
            let o = obs(&d, "192.0.2.1", pps);
            all.extend(d.observe(t * 1000, &[o]));
        }
        all.extend(d.observe(60_000, &[]));
        let starts = all
            .iter()
            .filter(|t| matches!(t, Transition::Start(_)))
            .count();
        let ends = all
            .iter()
            .filter(|t| matches!(t, Transition::End(_)))
            .count();
        assert_eq!((starts, ends), (1, 1), "{all:?}");
        assert_eq!(all.last(), Some(&Transition::End(k)));
    }

    #[test]
    fn recent_list_is_bounded() {
        let mut d = Detector::new(vec![group(1000, 1)], 1, false, 2);
        for i in 0..5u64 {
            let ip = format!("192.0.2.{i}");
            let o = obs(&d, &ip, 5000);
            d.observe(i as i64 * 10_000, &[o]);
            d.observe(i as i64 * 10_000 + 5_000, &[]);
        }
        assert_eq!(d.recent().count(), 2);
    }
}
