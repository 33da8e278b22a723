//! The pure cores of cluster mode: partitioning, rendezvous assignment, lease
//! freshness, when a second closes, and the controller's attack lifecycle. No I/O; every
//! function that needs the time takes `now_ms`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{AttackEvent, Direction, EventKind};

/// FNV-1a 64: a stable hash (the same in every process and build, unlike the host
/// table's seeded one), so every node maps a host to the same partition.
fn fnv(parts: &[&[u8]]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in *p {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// MurmurHash3's finalizer: FNV-1a alone keeps the order of inputs that differ in one
/// early byte ("C" and "D" rank the same way for nearly every partition), which would make
/// rendezvous give one node everything.
fn mix(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The partition of a protected host (both directions of a host go together).
pub fn partition_of(ip: IpAddr, partitions: u16) -> u16 {
    let h = match ip {
        IpAddr::V4(a) => fnv(&[&a.octets()]),
        IpAddr::V6(a) => fnv(&[&a.octets()]),
    };
    (mix(h) % u64::from(partitions.max(1))) as u16
}

/// Rendezvous (highest random weight) owner of `partition` among `nodes`: when a node
/// joins or leaves, only the partitions it wins or held move.
pub fn rendezvous<'a>(partition: u16, nodes: &[&'a str]) -> Option<&'a str> {
    nodes
        .iter()
        .copied()
        .max_by_key(|n| (mix(fnv(&[n.as_bytes(), &partition.to_be_bytes()])), *n))
}

/// What a node writes to the members bucket every heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: String,
    pub roles: Vec<String>,
    pub heartbeat_ms: i64,
    pub config_hash: u64,
}

impl Member {
    pub fn has(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// Members whose heartbeat is younger than `ttl_ms` (the bucket's TTL removes them a
/// little later; a stale one must not count meanwhile).
pub fn live(members: &[Member], now_ms: i64, ttl_ms: i64) -> impl Iterator<Item = &Member> {
    members
        .iter()
        .filter(move |m| now_ms - m.heartbeat_ms < ttl_ms)
}

/// The time membership is judged at: `now` while the leases bucket is read on time, else
/// shortly after its last good read. A node that cannot read the bucket (a JetStream
/// stream leader election after a NATS server loss takes 4–9 s with NATS 2.9's raft
/// timeouts) cannot tell a silent member from an unanswered read; ageing every member
/// out would make a detector refuse every collector's frames for as long as it lasts.
pub fn judged_at(now_ms: i64, last_read_ms: i64, interval_ms: i64) -> i64 {
    now_ms.min(last_read_ms + 2 * interval_ms)
}

/// The collectors a detector merges: those live by heartbeat, and those whose frames it
/// admitted within `ttl_ms` (`heard`: node → its member record and the last frame's
/// time). A collector connected to a NATS server that lags after a server loss can fail
/// its heartbeat writes for many seconds while its frames still arrive; dropping them
/// would halve a split victim's sums and end its attack. A node never admitted is not in
/// `heard`, so unknown nodes stay refused.
pub fn merged_collectors(
    live: Vec<Member>,
    heard: &HashMap<String, (Member, i64)>,
    now_ms: i64,
    ttl_ms: i64,
) -> Vec<Member> {
    let mut out = live;
    for (node, (m, last)) in heard {
        if now_ms - last < ttl_ms && !out.iter().any(|x| &x.node_id == node) {
            out.push(m.clone());
        }
    }
    out
}

/// Whether a detector keeps a partition whose renewal failed. Refused (another node wrote
/// the key since: wrong last revision) ends it at once; unanswered (the bucket has no
/// stream leader, or NATS is away) keeps it while the last good renewal, timed from when
/// it was sent, is younger than `hold_ms`. While nobody can write the bucket nobody can
/// take the partition either; should another node reach the bucket and take it, this
/// node's next renewal is refused, and a start both sent meanwhile is one attack to the
/// controller (its lifecycle is per host).
pub fn keep_partition(refused: bool, renewed_ms: i64, now_ms: i64, hold_ms: i64) -> bool {
    !refused && now_ms - renewed_ms < hold_ms
}

/// A lease is fresh, and its holder may act on it, while its last successful renewal is
/// younger than half the TTL: the key outlives that by the other half, so no other node
/// can hold it while this one still acts (clocks on one site differ by far less).
pub fn lease_fresh(renewed_ms: Option<i64>, now_ms: i64, ttl_ms: i64) -> bool {
    renewed_ms.is_some_and(|r| now_ms - r < ttl_ms / 2)
}

/// Which collectors' frames of each second a detector has, to know when it closes.
#[derive(Debug, Default)]
pub struct SecondBook {
    /// second → collector → (frames received, frames announced).
    seen: BTreeMap<u32, HashMap<String, (u16, u16)>>,
    /// Seconds merged already: frames for them are late.
    closed_before: u32,
}

/// Seconds a book keeps open at most (a bound against frames for far-future seconds).
const MAX_OPEN_SECONDS: usize = 16;

impl SecondBook {
    /// Notes a frame; false if its second is closed already (a late frame) or out of
    /// the open range.
    pub fn note(&mut self, node: &str, sec: u32, total: u16) -> bool {
        if sec < self.closed_before {
            return false;
        }
        if !self.seen.contains_key(&sec) && self.seen.len() >= MAX_OPEN_SECONDS {
            return false;
        }
        let e = self
            .seen
            .entry(sec)
            .or_default()
            .entry(node.to_string())
            .or_insert((0, total));
        e.0 = e.0.saturating_add(1);
        true
    }

    /// The oldest open second if it may close at `now_ms`: every collector in `live`
    /// sent all its frames of it, or `wait_ms` passed since it ended.
    pub fn closable(&self, live: &BTreeSet<String>, now_ms: i64, wait_ms: i64) -> Option<u32> {
        let (&sec, by) = self.seen.iter().next()?;
        let end_ms = (i64::from(sec) + 1) * 1000;
        let complete = live
            .iter()
            .all(|c| by.get(c).is_some_and(|(got, total)| got >= total));
        (now_ms >= end_ms && (complete || now_ms >= end_ms + wait_ms)).then_some(sec)
    }

    /// Marks `sec` (and every earlier second) merged.
    pub fn close(&mut self, sec: u32) {
        self.closed_before = self.closed_before.max(sec + 1);
        self.seen.retain(|s, _| *s > sec);
    }
}

impl SecondBook {
    /// The collectors that sent frames of `sec` (before it is closed).
    pub fn senders(&self, sec: u32) -> BTreeSet<String> {
        self.seen
            .get(&sec)
            .map(|by| by.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// Holds attack ends that may come of a gap in the data: a second merged without a
/// collector that sent the seconds before it (restarting, or cut off) has lower sums
/// than the traffic had, so an end decided within `hold_secs` after such a second waits
/// until `hold_secs` full seconds have followed it. If the attack was still on, the
/// detector starts it again meanwhile (the controller, per host, takes that start as the
/// same attack) and the held end is dropped; if it was really over, the end goes out
/// late by at most `hold_secs`.
#[derive(Debug)]
pub struct GapGuard {
    /// Collector → the last second it sent frames of.
    recent: HashMap<String, u32>,
    /// The last second merged with a recent collector missing.
    last_gap: Option<u32>,
    hold_secs: u32,
    /// "ip/direction" → the held end.
    held: BTreeMap<String, AttackEvent>,
}

/// A collector silent this long is gone, not restarting: its absence is no gap.
const RECENT_SECONDS: u32 = 30;
/// Held ends at most (one per host under attack; more are let through).
const MAX_HELD: usize = 100_000;

impl GapGuard {
    pub fn new(hold_secs: u32) -> GapGuard {
        GapGuard {
            recent: HashMap::new(),
            last_gap: None,
            hold_secs,
            held: BTreeMap::new(),
        }
    }

    /// Notes who sent second `sec`, now merged; true if a recent collector is missing.
    pub fn merged(&mut self, sec: u32, senders: &BTreeSet<String>) -> bool {
        self.recent
            .retain(|_, last| sec.saturating_sub(*last) <= RECENT_SECONDS);
        let gap = self
            .recent
            .iter()
            .any(|(c, last)| *last < sec && !senders.contains(c));
        for c in senders {
            let e = self.recent.entry(c.clone()).or_insert(sec);
            *e = (*e).max(sec);
        }
        if gap {
            self.last_gap = Some(sec);
        }
        gap
    }

    fn in_gap(&self, sec: u32) -> bool {
        self.last_gap
            .is_some_and(|g| sec.saturating_sub(g) < self.hold_secs)
    }

    /// The events of the pass after second `sec` that go out now, held ends that may
    /// go out now included.
    pub fn filter(&mut self, sec: u32, events: Vec<AttackEvent>) -> Vec<AttackEvent> {
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let k = host_id(ev.ip, ev.direction);
            match ev.event {
                EventKind::End if self.in_gap(sec) && self.held.len() < MAX_HELD => {
                    self.held.insert(k, ev);
                }
                EventKind::Start => {
                    // It went on: the end was the gap's.
                    self.held.remove(&k);
                    out.push(ev);
                }
                _ => out.push(ev),
            }
        }
        if !self.in_gap(sec) {
            out.extend(std::mem::take(&mut self.held).into_values());
        }
        out
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

/// The controller's view of attacks, by host: what survives a leader change (in the
/// state bucket, written with compare-and-set).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// "ip/direction" → the attack's start event (type refreshed by updates).
    pub active: BTreeMap<String, AttackEvent>,
    /// The last event-stream sequence applied.
    pub last_seq: u64,
}

pub fn host_id(ip: IpAddr, dir: Direction) -> String {
    format!("{ip}/{}", dir.as_str())
}

impl Lifecycle {
    /// Applies stream event `seq`; returns the event mitigation must see (carrying the
    /// attack id this lifecycle knows the host by), or None. Per host, not per detector
    /// attack id: a second start for a host under attack (a detector that took over, two
    /// FastNetMon instances reporting one victim) is one attack, and an end for a host
    /// not under attack (a replay) is nothing.
    pub fn apply(&mut self, seq: u64, ev: AttackEvent) -> Option<AttackEvent> {
        if seq != 0 && seq <= self.last_seq {
            return None;
        }
        self.last_seq = self.last_seq.max(seq);
        let k = host_id(ev.ip, ev.direction);
        match (ev.event, self.active.get_mut(&k)) {
            (EventKind::Start, None) => {
                self.active.insert(k, ev.clone());
                Some(ev)
            }
            (EventKind::Start | EventKind::Update, Some(a)) => {
                a.attack_type = ev.attack_type;
                a.protocol = ev.protocol;
                a.pps = ev.pps;
                a.bps = ev.bps;
                a.vectors = ev.vectors.clone();
                let id = a.id.clone();
                // A start seen again continues the attack: an update of it.
                Some(AttackEvent {
                    event: EventKind::Update,
                    id,
                    ..ev
                })
            }
            (EventKind::Update, None) => None,
            (EventKind::End, Some(_)) => {
                let a = self.active.remove(&k)?;
                Some(AttackEvent { id: a.id, ..ev })
            }
            (EventKind::End, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttackType, Protocol};

    fn ev(kind: EventKind, id: &str, ip: &str) -> AttackEvent {
        AttackEvent {
            event: kind,
            id: id.into(),
            ip: ip.parse().unwrap(),
            direction: Direction::Incoming,
            attack_type: AttackType::UdpFlood,
            protocol: Protocol::Udp,
            time_ms: 1,
            pps: 12_000,
            bps: 0,
            flows_per_second: 0,
            peak_pps: 12_000,
            hostgroup: "default".into(),
            top_sources: Vec::new(),
            vectors: Vec::new(),
            previous_attack_type: None,
            new_vectors: Vec::new(),
        }
    }

    #[test]
    fn partitions_are_stable_and_spread() {
        let ip: IpAddr = "127.16.0.10".parse().unwrap();
        assert_eq!(partition_of(ip, 64), partition_of(ip, 64));
        let used: BTreeSet<u16> = (0..=255u8)
            .map(|i| partition_of(IpAddr::from([10, 0, 0, i]), 64))
            .collect();
        assert!(used.len() > 48, "{} of 64 partitions used", used.len());
        assert!(used.iter().all(|p| *p < 64));
    }

    #[test]
    fn rendezvous_moves_only_the_partitions_of_the_node_that_left() {
        let three = ["C", "D", "E"];
        let two = ["C", "D"];
        let mut moved = 0;
        for p in 0..64 {
            let a = rendezvous(p, &three).unwrap();
            let b = rendezvous(p, &two).unwrap();
            if a != "E" {
                assert_eq!(a, b, "partition {p} moved though its owner stayed");
            } else {
                moved += 1;
            }
        }
        assert!(moved > 5 && moved < 40, "{moved}");
        assert_eq!(rendezvous(3, &[]), None);
        // Names one letter apart still share the partitions about evenly.
        let c = (0..64)
            .filter(|p| rendezvous(*p, &two) == Some("C"))
            .count();
        assert!((20..=44).contains(&c), "C holds {c} of 64");
    }

    #[test]
    fn membership_is_judged_as_of_the_last_good_read_while_reads_fail() {
        let m = vec![Member {
            node_id: "A".into(),
            roles: vec!["collector".into()],
            heartbeat_ms: 10_000,
            config_hash: 0,
        }];
        // Read on time: judged now, and A ages out after the TTL as before.
        assert_eq!(judged_at(13_500, 13_000, 1000), 13_500);
        assert_eq!(live(&m, judged_at(14_500, 14_000, 1000), 4000).count(), 0);
        // Reads failing since 11 000 (A's heartbeat was fresh then): A stays live.
        let at = judged_at(20_000, 11_000, 1000);
        assert_eq!(at, 13_000);
        assert_eq!(live(&m, at, 4000).count(), 1);
    }

    #[test]
    fn a_collector_heard_from_stays_merged_while_its_heartbeat_is_stale() {
        let m = |n: &str| Member {
            node_id: n.into(),
            roles: vec!["collector".into()],
            heartbeat_ms: 0,
            config_hash: 7,
        };
        let heard: HashMap<String, (Member, i64)> = [
            ("A".to_string(), (m("A"), 10_000)),
            ("B".to_string(), (m("B"), 1_000)),
        ]
        .into();
        let got = merged_collectors(vec![m("C")], &heard, 12_000, 4000);
        let names: Vec<&str> = got.iter().map(|x| x.node_id.as_str()).collect();
        // C by heartbeat, A by its recent frame; B's last frame is older than the TTL.
        assert_eq!(names, ["C", "A"]);
    }

    #[test]
    fn a_partition_is_kept_through_unanswered_renewals_only() {
        assert!(keep_partition(false, 10_000, 21_000, 12_000));
        assert!(!keep_partition(false, 10_000, 22_000, 12_000));
        assert!(!keep_partition(true, 10_000, 10_500, 12_000));
    }

    #[test]
    fn a_lease_is_fresh_for_half_its_ttl() {
        assert!(lease_fresh(Some(1000), 2999, 4000));
        assert!(!lease_fresh(Some(1000), 3000, 4000));
        assert!(!lease_fresh(None, 0, 4000));
    }

    #[test]
    fn a_second_closes_when_every_live_collector_sent_it_or_after_the_wait() {
        let live: BTreeSet<String> = ["A".to_string(), "B".to_string()].into();
        let mut b = SecondBook::default();
        assert!(b.note("A", 100, 2));
        assert!(b.note("A", 100, 2));
        assert_eq!(b.closable(&live, 101_050, 1500), None, "B missing");
        assert!(b.note("B", 100, 1));
        assert_eq!(b.closable(&live, 100_900, 1500), None, "not over yet");
        assert_eq!(b.closable(&live, 101_050, 1500), Some(100));
        b.close(100);
        assert!(!b.note("B", 100, 1), "late");
        assert!(b.note("A", 101, 1));
        assert_eq!(b.closable(&live, 102_400, 1500), None);
        assert_eq!(b.closable(&live, 103_500, 1500), Some(101), "bounded wait");
    }

    #[test]
    fn an_end_decided_in_a_gap_is_held_until_full_seconds_follow() {
        let ab: BTreeSet<String> = ["A".to_string(), "B".to_string()].into();
        let b: BTreeSet<String> = ["B".to_string()].into();
        let mut g = GapGuard::new(5);
        assert!(!g.merged(100, &ab));
        assert!(!g.merged(101, &ab));
        // A restarts: 102-103 without it.
        assert!(g.merged(102, &b));
        assert!(g.merged(103, &b));
        let out = g.filter(103, vec![ev(EventKind::End, "c-1", "192.0.2.1")]);
        assert!(out.is_empty(), "held: {out:?}");
        assert_eq!(g.held(), 1);
        // A is back; the attack goes on: the detector starts it again.
        assert!(!g.merged(104, &ab));
        let out = g.filter(104, vec![ev(EventKind::Start, "c-2", "192.0.2.1")]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event, EventKind::Start);
        assert_eq!(g.held(), 0, "the held end was the gap's");
        // A real end in a gap goes out once hold_secs full seconds follow it.
        assert!(g.merged(105, &b));
        assert!(g
            .filter(105, vec![ev(EventKind::End, "c-2", "192.0.2.1")])
            .is_empty());
        for s in 106..110 {
            g.merged(s, &ab);
            assert!(g.filter(s, Vec::new()).is_empty(), "still held at {s}");
        }
        g.merged(110, &ab);
        let out = g.filter(110, Vec::new());
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].event, out[0].id.as_str()), (EventKind::End, "c-2"));
        // Ends outside a gap pass at once; a collector gone for good stops being missed.
        assert_eq!(
            g.filter(111, vec![ev(EventKind::End, "x", "192.0.2.9")])
                .len(),
            1
        );
        for s in 112..150 {
            g.merged(s, &b);
        }
        assert!(!g.merged(150, &b), "A is gone, not restarting");
    }

    #[test]
    fn the_lifecycle_is_per_host_and_ends_once() {
        let mut l = Lifecycle::default();
        let s = l
            .apply(1, ev(EventKind::Start, "c-1", "192.0.2.1"))
            .unwrap();
        assert_eq!((s.event, s.id.as_str()), (EventKind::Start, "c-1"));
        // Another detector's start for the same host (it took the partition over).
        let u = l
            .apply(2, ev(EventKind::Start, "d-7", "192.0.2.1"))
            .unwrap();
        assert_eq!((u.event, u.id.as_str()), (EventKind::Update, "c-1"));
        // Replayed sequence numbers are ignored.
        assert!(l.apply(2, ev(EventKind::End, "d-7", "192.0.2.1")).is_none());
        let e = l.apply(3, ev(EventKind::End, "d-7", "192.0.2.1")).unwrap();
        assert_eq!((e.event, e.id.as_str()), (EventKind::End, "c-1"));
        assert!(l.apply(4, ev(EventKind::End, "c-1", "192.0.2.1")).is_none());
        assert!(l.active.is_empty());
        assert_eq!(l.last_seq, 4);
    }
}
