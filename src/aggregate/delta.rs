//! Per-second counter deltas per host-direction: the aggregate stage's plain,
//! serializable snapshot of what changed in one second.
//!
//! A record adds to a host's [`Ewma`](super::rate::Ewma) at the second [`place`] puts it
//! in, its packets and bytes weighed for their spread; the accumulator adds the same
//! weighed amounts to that second's [`Counters`] instead. Applying the deltas of every
//! process that saw part of the traffic with [`Shard::apply_delta`](super::Shard) gives
//! the sums one process would have computed from all the records (up to the unbiased
//! rounding of weights). Cluster mode ships them from collectors to detectors.
//!
//! Bounded: at most `cap` host-seconds are held (in practice the current second and the one
//! before it, until the collector drains it); further ones are counted in
//! [`DeltaAccumulator::overflow`] and lost.

use std::collections::BTreeMap;

use super::index::{prefetch_all, SlotIndex};
use super::rate::{add_classed, place, Cells, Class, Compact, Counters, Decay, Dither, FIELDS};
use super::table::{HostKey, Pending};
use crate::decode::FlowRecord;

/// What one host-direction received in one second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostDelta {
    pub key: HostKey,
    /// The hostgroup index the host belongs to (the same config on every node).
    pub group: u16,
    /// Unix second the counters belong to.
    pub sec: u32,
    pub counters: Counters,
}

/// One second's deltas: entries in first-seen order behind the host table's own index
/// ([`SlotIndex`]: linear probing on the low bits of the key hash the router has computed
/// for every record already, tags in the bits entry numbers leave free), so a batch can
/// prefetch the index buckets and entries of the records ahead of it, as the host table
/// does.
///
/// Why not a `HashMap<(second, host), Counters>` (what this was): at 300 k records/s to
/// 10 000 hosts its `get_mut` took 51–54 % of a collector thread (perf, cpu-clock): a
/// cache miss per record into 150-byte buckets with nothing to hide it, and a collector
/// then cost 0.41–0.54 µs per record against a standalone node's 0.20.
struct SecondMap {
    /// Entry numbers (positions in `entries`).
    index: SlotIndex,
    entries: Vec<Entry>,
}

impl SecondMap {
    /// A map for at most `cap` entries (the accumulator's cap: entry numbers below it,
    /// the bits above them tags).
    fn new(cap: usize) -> SecondMap {
        SecondMap {
            index: SlotIndex::for_values(cap),
            entries: Vec::new(),
        }
    }
}

/// Two cache lines, aligned: the batch prefetches both for the records 8 ahead. One
/// second's counts fit [`Compact`] cells (u32 packets and flows, 40-bit bytes: 4 G
/// packets and 1 TB per host-direction per second).
#[repr(align(64))]
struct Entry {
    hash: u64,
    key: HostKey,
    group: u16,
    cells: Compact,
}

impl Entry {
    fn counters(&self) -> Counters {
        let mut a = [0u64; FIELDS];
        for (i, v) in a.iter_mut().enumerate() {
            *v = self.cells.get(i);
        }
        Counters::from_array(a)
    }
}

impl SecondMap {
    #[inline]
    fn prefetch_index(&self, hash: u64) {
        self.index.prefetch(hash);
    }

    /// The entry the home bucket of `hash` names (prefetched by then), if any.
    #[inline]
    fn prefetch_entry(&self, hash: u64) {
        if let Some(e) = self
            .index
            .home(hash)
            .and_then(|n| self.entries.get(n as usize))
        {
            prefetch_all(e);
        }
    }

    /// The cells of `key`, inserted (zero) if new and `room`; None when new and no room.
    #[inline]
    fn entry(&mut self, key: &HostKey, hash: u64, group: u16, room: bool) -> Option<&mut Compact> {
        let entries = &self.entries;
        let found = self.index.find(hash, |n| {
            let e = &entries[n as usize];
            e.hash == hash && e.key == *key
        });
        let at = match found {
            Some(n) => n as usize,
            None if !room => return None,
            None => {
                let n = self.entries.len();
                self.entries.push(Entry {
                    hash,
                    key: *key,
                    group,
                    cells: Compact::default(),
                });
                let entries = &self.entries;
                self.index
                    .insert(hash, n as u32, |v| entries[v as usize].hash);
                n
            }
        };
        Some(&mut self.entries[at].cells)
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Empties it, keeping both allocations.
    fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
    }
}

/// One shard's deltas of the seconds not yet drained.
pub struct DeltaAccumulator {
    decay: Decay,
    dither: Dither,
    max_spread_ms: u32,
    cap: usize,
    /// One map per second, drained whole.
    held: BTreeMap<u32, SecondMap>,
    /// Host-seconds held, over all seconds.
    len: usize,
    /// Drained maps, cleared, kept for their allocation (at most [`SPARE_MAPS`]).
    spare: Vec<SecondMap>,
    /// Host-seconds refused at the cap since the counter was last taken.
    pub overflow: u64,
}

const SPARE_MAPS: usize = 2;

impl DeltaAccumulator {
    pub fn new(window_seconds: u32, max_spread_seconds: u32, cap: usize) -> DeltaAccumulator {
        DeltaAccumulator {
            decay: Decay::new(window_seconds),
            dither: Dither::new(0xD1B5_4A32_D192_ED03),
            max_spread_ms: max_spread_seconds.saturating_mul(1000),
            cap,
            held: BTreeMap::new(),
            len: 0,
            spare: Vec::new(),
            overflow: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds record `r` of host-direction `key` (hostgroup `group`) arriving at `now_ms`,
    /// hashing the key itself: for the tests; ingest goes through [`Self::add_all`] with
    /// the router's hash.
    #[cfg(test)]
    pub fn add(&mut self, key: HostKey, group: u16, r: &FlowRecord, now_ms: i64) {
        let hash = ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(key);
        self.add_hashed(&key, hash, group, r, now_ms);
    }

    /// Adds record `r` of `key` under the key's hash (any hash, as long as it is the same
    /// for a key).
    #[inline]
    fn add_hashed(&mut self, key: &HostKey, hash: u64, group: u16, r: &FlowRecord, now_ms: i64) {
        let (sec, weight) = place(r, now_ms, self.max_spread_ms, &self.decay);
        let (p, b) = if weight >= 1.0 {
            (r.packets, r.bytes)
        } else {
            (
                self.dither.round(r.packets as f64 * weight),
                self.dither.round(r.bytes as f64 * weight),
            )
        };
        let room = self.len < self.cap;
        let (spare, cap) = (&mut self.spare, self.cap);
        let m = self
            .held
            .entry(sec)
            .or_insert_with(|| spare.pop().unwrap_or_else(|| SecondMap::new(cap)));
        let before = m.len();
        match m.entry(key, hash, group, room) {
            Some(c) => add_classed(c, Class::of(r), p, b, u64::from(r.flows)),
            None => self.overflow += 1,
        }
        self.len += m.len() - before;
    }

    /// Adds a batch routed to this shard (the same items the host table applies).
    pub fn add_all(&mut self, items: &[Pending], recs: &[FlowRecord], now_ms: i64) {
        const INDEX_AHEAD: usize = 16;
        const ENTRY_AHEAD: usize = 8;
        let now_sec = (now_ms.max(0) / 1000) as u32;
        for (j, u) in items.iter().enumerate() {
            if let Some(m) = self.held.get(&now_sec) {
                if let Some(a) = items.get(j + INDEX_AHEAD) {
                    m.prefetch_index(a.hash);
                }
                if let Some(a) = items.get(j + ENTRY_AHEAD) {
                    m.prefetch_entry(a.hash);
                }
            }
            if let Some(r) = recs.get(u.rec as usize) {
                self.add_hashed(&u.key(r), u.hash, u.group, r, now_ms);
            }
        }
    }

    /// Moves every delta of a second before `sec` to `out`.
    pub fn drain_before(&mut self, sec: u32, out: &mut Vec<HostDelta>) {
        let keep = self.held.split_off(&sec);
        for (s, mut m) in std::mem::replace(&mut self.held, keep) {
            self.len -= m.len();
            out.extend(m.entries.iter().map(|e| HostDelta {
                key: e.key,
                group: e.group,
                sec: s,
                counters: e.counters(),
            }));
            if self.spare.len() < SPARE_MAPS {
                m.clear();
                self.spare.push(m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::HostTable;
    use crate::decode::PROTO_UDP;
    use crate::model::Direction;

    fn rec(dst: &str, packets: u64, duration_ms: u32) -> FlowRecord {
        FlowRecord {
            src: "198.51.100.1".parse().unwrap(),
            dst: dst.parse().unwrap(),
            protocol: PROTO_UDP,
            packets,
            bytes: packets * 100,
            flows: 1,
            duration_ms,
            ..FlowRecord::default()
        }
    }

    fn key(ip: &str) -> HostKey {
        HostKey {
            ip: ip.parse().unwrap(),
            dir: Direction::Incoming,
        }
    }

    #[test]
    fn deltas_of_two_halves_merge_to_the_sums_of_the_whole() {
        let t0 = 1_800_000_000_000i64;
        // One shard fed every record; two accumulators fed half each, merged into a
        // second shard.
        let whole = HostTable::new(Some(1), 1, 1000, 5, 60, &[false]);
        let merged = HostTable::new(Some(1), 1, 1000, 5, 60, &[false]);
        let (mut a, mut b) = (
            DeltaAccumulator::new(5, 60, 1000),
            DeltaAccumulator::new(5, 60, 1000),
        );
        let k = key("192.0.2.1");
        for s in 0..10i64 {
            for j in 0..10i64 {
                let now = t0 + s * 1000 + j * 90;
                let r = rec("192.0.2.1", 1000 + j as u64, 0);
                whole.shards[0]
                    .lock()
                    .apply_hashed(&k, whole.hash_of(&k), 0, &r, now);
                if j % 2 == 0 {
                    a.add(k, 0, &r, now)
                } else {
                    b.add(k, 0, &r, now)
                }
            }
            let mut out = Vec::new();
            let next = ((t0 + (s + 1) * 1000) / 1000) as u32;
            a.drain_before(next, &mut out);
            b.drain_before(next, &mut out);
            assert_eq!(out.len(), 2, "one delta per accumulator per second");
            for d in out {
                merged.shards[0]
                    .lock()
                    .apply_delta(&d.key, d.group, d.sec, &d.counters);
            }
        }
        let now_sec = ((t0 + 10_000) / 1000) as u32;
        let w = whole.get(&k, now_sec);
        let m = merged.get(&k, now_sec).expect("merged host");
        let w = w.expect("whole host");
        assert_eq!(w.sums, m.sums);
        assert!(m.rates.pps > 0);
    }

    #[test]
    fn the_second_map_finds_every_key_through_growth_and_colliding_hashes() {
        let mut m = SecondMap::new(10_000);
        let k = |i: u32| HostKey {
            ip: std::net::IpAddr::from(i.to_be_bytes()),
            dir: Direction::Incoming,
        };
        // Hashes that collide a lot (7 values) and ones that only share low bits.
        let h = |i: u32| {
            if i % 2 == 0 {
                u64::from(i % 7)
            } else {
                u64::from(i) << 20
            }
        };
        for round in 1..=3u64 {
            for i in 0..5_000 {
                let c = m.entry(&k(i), h(i), 0, true).expect("room");
                c.add(0, round);
            }
        }
        assert_eq!(m.len(), 5_000);
        for i in 0..5_000 {
            assert_eq!(m.entry(&k(i), h(i), 0, false).map(|c| c.get(0)), Some(6));
        }
        assert!(
            m.entry(&k(9_999), h(9_999), 0, false).is_none(),
            "no room: not inserted"
        );
        m.clear();
        assert_eq!(
            (m.len(), m.entry(&k(1), h(1), 0, false).is_none()),
            (0, true)
        );
    }

    #[test]
    fn the_cap_counts_what_it_refuses() {
        let mut a = DeltaAccumulator::new(5, 60, 2);
        let now = 1_800_000_000_500i64;
        for h in 1..=5 {
            let ip = format!("192.0.2.{h}");
            a.add(key(&ip), 0, &rec(&ip, 10, 0), now);
        }
        assert_eq!((a.len(), a.overflow), (2, 3));
        let mut out = Vec::new();
        a.drain_before(1_800_000_000, &mut out);
        assert!(out.is_empty(), "the current second stays");
        a.drain_before(1_800_000_001, &mut out);
        assert_eq!(out.len(), 2);
        assert!(a.is_empty());
    }
}
