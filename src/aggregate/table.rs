//! The host table: one shard per core, each a plain hash map behind its own lock.
//!
//! Writers (collector threads) group a datagram batch's updates by shard and take each
//! shard's lock once per batch, never per record. The detection pass visits only the
//! hosts written since the previous pass (the shard's dirty list) plus hosts under
//! attack, so idle hosts cost nothing per second.
//!
//! Bounded: at most `cap` host-directions per shard. A new host beyond the cap is refused
//! and counted; under that pressure the idle timeout shrinks to the window length so
//! room is made for hosts that are active now. Idle hosts are swept periodically.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;

use super::window::{spread, Counters, Window};
use crate::decode::FlowRecord;
use crate::model::{Direction, TopSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub ip: IpAddr,
    pub dir: Direction,
}

#[derive(Debug, Clone)]
pub struct HostEntry {
    pub window: Window,
    pub totals: Counters,
    pub group: u16,
    pub last_seen_sec: u32,
    dirty: bool,
}

/// One record's effect on one protected host.
#[derive(Debug, Clone, Copy)]
pub struct Update {
    pub key: HostKey,
    pub group: u16,
    pub rec: FlowRecord,
}

/// A recent record touching a protected host, kept for attack reports.
#[derive(Debug, Clone, Copy)]
struct RingEntry {
    key: HostKey,
    peer: IpAddr,
    peer_port: u16,
    packets: u64,
}

const RING_LEN: usize = 16_384;
/// Distinct sources tracked per attacked host; later sources go to "other".
const MAX_SOURCES: usize = 1024;

#[derive(Debug, Default, Clone)]
struct SourceTracker {
    by_source: HashMap<IpAddr, (u64, HashMap<u16, u64>)>,
    total: u64,
}

impl SourceTracker {
    fn add(&mut self, peer: IpAddr, port: u16, packets: u64) {
        self.total += packets;
        if self.by_source.len() >= MAX_SOURCES && !self.by_source.contains_key(&peer) {
            return;
        }
        let e = self.by_source.entry(peer).or_default();
        e.0 += packets;
        if e.1.len() < 64 || e.1.contains_key(&port) {
            *e.1.entry(port).or_default() += packets;
        }
    }

    fn top(&self, n: usize) -> Vec<TopSource> {
        let mut v: Vec<_> = self.by_source.iter().collect();
        v.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then(a.0.cmp(b.0)));
        v.into_iter()
            .take(n)
            .map(|(ip, (p, ports))| TopSource {
                ip: *ip,
                port: ports
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .map(|(port, _)| *port)
                    .filter(|p| *p != 0),
                share: if self.total == 0 {
                    0.0
                } else {
                    (*p as f64 / self.total as f64 * 1000.0).round() / 1000.0
                },
            })
            .collect()
    }
}

pub struct Shard {
    hosts: HashMap<HostKey, HostEntry, ahash::RandomState>,
    dirty: Vec<HostKey>,
    /// Incoming traffic summed per hostgroup (carpet-bombing detection).
    groups: Vec<Window>,
    ring: Vec<RingEntry>,
    ring_pos: usize,
    watched: HashMap<HostKey, SourceTracker>,
    cap: usize,
    window_seconds: u32,
    max_spread_ms: u32,
    /// New hosts refused because the shard was full, since the last `take_stats`.
    pub refused: u64,
    pub evicted_idle: u64,
    pub evicted_pressure: u64,
}

impl Shard {
    pub fn new(cap: usize, window_seconds: u32, max_spread_seconds: u32, groups: usize) -> Shard {
        Shard {
            hosts: HashMap::with_hasher(ahash::RandomState::new()),
            dirty: Vec::new(),
            groups: (0..groups).map(|_| Window::new(window_seconds)).collect(),
            ring: Vec::with_capacity(RING_LEN),
            ring_pos: 0,
            watched: HashMap::new(),
            cap,
            window_seconds,
            max_spread_ms: max_spread_seconds.saturating_mul(1000),
            refused: 0,
            evicted_idle: 0,
            evicted_pressure: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Applies one update at time `now_ms`.
    pub fn apply(&mut self, u: &Update, now_ms: i64) {
        let now_sec = (now_ms / 1000) as u32;
        let ws = self.window_seconds;
        let full = self.hosts.len() >= self.cap;
        // One hash probe per record: the entry API both finds and (below the cap) inserts.
        let e = match self.hosts.entry(u.key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(_) if full => {
                self.refused += 1;
                return;
            }
            std::collections::hash_map::Entry::Vacant(v) => v.insert(HostEntry {
                window: Window::new(ws),
                totals: Counters::default(),
                group: u.group,
                last_seen_sec: now_sec,
                dirty: false,
            }),
        };
        e.totals.add(&Counters::of(
            &u.rec,
            u.rec.packets,
            u.rec.bytes,
            u64::from(u.rec.flows),
        ));
        e.last_seen_sec = now_sec;
        let group_window = if u.key.dir == Direction::Incoming {
            self.groups.get_mut(usize::from(u.group))
        } else {
            None
        };
        let win = &mut e.window;
        match group_window {
            Some(g) => spread(&u.rec, now_ms, ws, self.max_spread_ms, |s, c| {
                win.add(s, &c);
                g.add(s, &c);
            }),
            None => spread(&u.rec, now_ms, ws, self.max_spread_ms, |s, c| {
                win.add(s, &c);
            }),
        }
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(u.key);
        }
        let (peer, port) = match u.key.dir {
            Direction::Incoming => (u.rec.src, u.rec.src_port),
            Direction::Outgoing => (u.rec.dst, u.rec.dst_port),
        };
        if !self.watched.is_empty() {
            if let Some(t) = self.watched.get_mut(&u.key) {
                t.add(peer, port, u.rec.packets);
            }
        }
        // Consecutive records of one peer to one host fold into one entry, so a
        // single-source flood does not flush everyone else out of the ring.
        let last = (self.ring_pos + RING_LEN - 1) % RING_LEN;
        if let Some(l) = self.ring.get_mut(last) {
            if l.key == u.key && l.peer == peer {
                l.packets += u.rec.packets;
                return;
            }
        }
        let entry = RingEntry {
            key: u.key,
            peer,
            peer_port: port,
            packets: u.rec.packets,
        };
        if self.ring.len() < RING_LEN {
            self.ring.push(entry);
        } else {
            self.ring[self.ring_pos] = entry;
        }
        self.ring_pos = (self.ring_pos + 1) % RING_LEN;
    }

    /// Calls `f` for every host written since the last call, then forgets them.
    pub fn drain_dirty(&mut self, mut f: impl FnMut(&HostKey, &HostEntry)) {
        for k in std::mem::take(&mut self.dirty) {
            if let Some(e) = self.hosts.get_mut(&k) {
                e.dirty = false;
                f(&k, e);
            }
        }
    }

    pub fn get(&self, key: &HostKey) -> Option<&HostEntry> {
        self.hosts.get(key)
    }

    pub fn group_sum(&self, group: usize, now_sec: u32) -> Counters {
        self.groups
            .get(group)
            .map(|w| w.sum(now_sec))
            .unwrap_or_default()
    }

    /// Evicts hosts idle for `idle_seconds`; under cap pressure (hosts were refused),
    /// hosts idle for longer than the window go too. Hosts in `keep` stay.
    pub fn sweep(&mut self, now_sec: u32, idle_seconds: u32, keep: &dyn Fn(&HostKey) -> bool) {
        let pressure = self.refused > 0;
        let short = self.window_seconds + 1;
        let (mut idle, mut press) = (0, 0);
        self.hosts.retain(|k, e| {
            let age = now_sec.saturating_sub(e.last_seen_sec);
            if keep(k) {
                true
            } else if age >= idle_seconds {
                idle += 1;
                false
            } else if pressure && age >= short {
                press += 1;
                false
            } else {
                true
            }
        });
        self.evicted_idle += idle;
        self.evicted_pressure += press;
    }

    /// Starts tracking sources of `key`, seeded from the recent-records ring.
    pub fn watch(&mut self, key: HostKey) {
        let mut t = SourceTracker::default();
        for r in self.ring.iter().filter(|r| r.key == key) {
            t.add(r.peer, r.peer_port, r.packets);
        }
        self.watched.insert(key, t);
    }

    pub fn unwatch(&mut self, key: &HostKey) {
        self.watched.remove(key);
    }

    pub fn top_sources(&self, key: &HostKey, n: usize) -> Vec<TopSource> {
        self.watched.get(key).map(|t| t.top(n)).unwrap_or_default()
    }

    /// Every host, for `top` queries and `--totals`.
    pub fn for_each(&self, mut f: impl FnMut(&HostKey, &HostEntry)) {
        for (k, e) in &self.hosts {
            f(k, e);
        }
    }
}

/// The shards and the hash that spreads hosts over them.
pub struct HostTable {
    pub shards: Vec<Mutex<Shard>>,
    hasher: ahash::RandomState,
}

impl HostTable {
    pub fn new(
        shards: usize,
        cap_total: usize,
        window_seconds: u32,
        max_spread_seconds: u32,
        groups: usize,
    ) -> HostTable {
        let n = shards.max(1);
        let per = cap_total.div_ceil(n).max(1);
        HostTable {
            shards: (0..n)
                .map(|_| Mutex::new(Shard::new(per, window_seconds, max_spread_seconds, groups)))
                .collect(),
            hasher: ahash::RandomState::new(),
        }
    }

    pub fn shard_of(&self, ip: &IpAddr) -> usize {
        (self.hasher.hash_one(ip) % self.shards.len() as u64) as usize
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &HostKey) -> Option<HostEntry> {
        self.shards[self.shard_of(&key.ip)].lock().get(key).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upd(dst: &str, src: &str, packets: u64) -> Update {
        Update {
            key: HostKey {
                ip: dst.parse().unwrap(),
                dir: Direction::Incoming,
            },
            group: 0,
            rec: FlowRecord {
                src: src.parse().unwrap(),
                dst: dst.parse().unwrap(),
                protocol: 17,
                src_port: 53,
                packets,
                bytes: packets * 100,
                flows: 1,
                ..FlowRecord::default()
            },
        }
    }

    #[test]
    fn cap_refuses_new_hosts_and_pressure_sweep_makes_room() {
        let mut s = Shard::new(2, 5, 300, 1);
        let t0 = 1_000_000_000;
        s.apply(&upd("192.0.2.1", "198.51.100.1", 1), t0);
        s.apply(&upd("192.0.2.2", "198.51.100.1", 1), t0);
        s.apply(&upd("192.0.2.3", "198.51.100.1", 1), t0);
        assert_eq!((s.len(), s.refused), (2, 1));
        // Existing hosts still update at the cap.
        s.apply(&upd("192.0.2.1", "198.51.100.1", 1), t0 + 10_000);
        // 10 s later: .2 is idle longer than the window; pressure evicts it, not .1.
        s.sweep(1_000_010, 60, &|_| false);
        assert_eq!((s.len(), s.evicted_pressure), (1, 1));
        s.refused = 0;
        s.apply(&upd("192.0.2.3", "198.51.100.1", 1), t0 + 10_000);
        assert_eq!(s.len(), 2);
        // Plain idle eviction.
        s.sweep(1_000_100, 60, &|_| false);
        assert_eq!((s.len(), s.evicted_idle), (0, 2));
    }

    #[test]
    fn dirty_hosts_are_visited_once() {
        let mut s = Shard::new(10, 5, 300, 1);
        for _ in 0..3 {
            s.apply(&upd("192.0.2.1", "198.51.100.1", 1), 5_000);
        }
        s.apply(&upd("192.0.2.2", "198.51.100.1", 1), 5_000);
        let mut n = 0;
        s.drain_dirty(|_, _| n += 1);
        assert_eq!(n, 2);
        s.drain_dirty(|_, _| n += 1);
        assert_eq!(n, 2, "nothing written since");
    }

    #[test]
    fn watched_host_reports_top_sources_with_shares() {
        let mut s = Shard::new(10, 5, 300, 1);
        s.apply(&upd("192.0.2.1", "198.51.100.1", 30), 5_000);
        let key = upd("192.0.2.1", "198.51.100.1", 0).key;
        s.watch(key); // seeded from the ring: 198.51.100.1 has 30
        s.apply(&upd("192.0.2.1", "198.51.100.2", 10), 5_000);
        let top = s.top_sources(&key, 5);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        assert_eq!(top[0].port, Some(53));
        assert!((top[0].share - 0.75).abs() < 1e-9);
    }
}
