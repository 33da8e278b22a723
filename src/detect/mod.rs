//! Detect stage: hostgroup thresholds → attacks with a lifecycle.
//!
//! [`Detector`] is a pure state machine: the pipeline hands it, once per second, an
//! [`Observation`] for every host written during that second and every host under
//! attack, and it answers with [`Transition`]s. It takes `now` as an argument and never
//! touches a clock, a socket or the host table.
//!
//! Lifecycle, per host and direction (one attack at a time):
//! - start: a threshold of the host's group is exceeded on `trigger_seconds`
//!   consecutive passes (default 1: the first pass that sees it, i.e. within one second
//!   of the window average crossing the threshold);
//! - update: peak rates are kept while it lasts;
//! - end: once every rate has stayed under the thresholds for `ban_time_seconds` (never
//!   while still over: FastNetMon's `unban_only_if_attack_finished`);
//! - whitelisted hosts never start one (the pipeline filters them).
//!
//! Attacks may also be claimed by an external detector (the FastNetMon hook): a claim on
//! a host that already has an attack joins it instead of starting a second one, and the
//! attack ends only when both flowguard's own detection and the external detector say
//! it has ended.

pub mod classify;
pub mod config;
pub mod report;

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::aggregate::{Counters, HostKey, Rates};
use crate::model::{AttackEvent, AttackType, Direction, EventKind, Protocol, TopSource};
use config::{HostgroupConfig, Thresholds};

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
    /// flowguard's own detection still sees it.
    pub own_active: bool,
    /// An external detector (FastNetMon hook) still claims it.
    pub external_active: bool,
    #[serde(skip)]
    last_update_ms: i64,
}

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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Start(HostKey),
    Update(HostKey),
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
        }
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
            own_active: false,
            external_active: false,
            last_update_ms: now_ms,
        }
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
            if let Some(a) = self.active.get_mut(&o.key) {
                a.current = o.rates;
                a.peak_pps = a.peak_pps.max(o.rates.pps);
                a.peak_bps = a.peak_bps.max(o.rates.bps);
                if o.over.is_some() {
                    a.last_over_ms = now_ms;
                    if !a.own_active {
                        // An externally claimed attack that our own detection now sees too.
                        a.own_active = true;
                    }
                    if now_ms - a.last_update_ms >= UPDATE_INTERVAL_MS {
                        a.last_update_ms = now_ms;
                        out.push(Transition::Update(o.key));
                    }
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
            let mut a = self.new_attack(o.key, o.group, now_ms);
            let (t, p) = classify::classify(&o.counters);
            a.attack_type = t;
            a.protocol = p;
            a.threshold = which.to_string();
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

    /// An external detector's ban/unban.
    pub fn claim(&mut self, now_ms: i64, c: &Claim) -> Vec<Transition> {
        let mut out = Vec::new();
        if c.ban {
            if let Some(a) = self.active.get_mut(&c.key) {
                a.external_active = true;
                if a.attack_type == AttackType::Unknown && c.attack_type != AttackType::Unknown {
                    a.attack_type = c.attack_type;
                    a.protocol = c.protocol;
                    out.push(Transition::Update(c.key));
                }
                return out;
            }
            let mut a = self.new_attack(c.key, c.group, now_ms);
            a.attack_type = c.attack_type;
            a.protocol = c.protocol;
            a.threshold = "external".into();
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
