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
//! Bounded: at most `cap` host-directions per second are held; further ones are counted
//! in [`DeltaAccumulator::overflow`] and lost.

use std::collections::HashMap;

use super::rate::{place, Counters, Decay, Dither};
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

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// One shard's deltas of the seconds not yet drained.
pub struct DeltaAccumulator {
    decay: Decay,
    dither: Dither,
    max_spread_ms: u32,
    cap: usize,
    held: FastMap<(u32, HostKey), (u16, Counters)>,
    /// Host-seconds refused at the cap since the counter was last taken.
    pub overflow: u64,
}

impl DeltaAccumulator {
    pub fn new(window_seconds: u32, max_spread_seconds: u32, cap: usize) -> DeltaAccumulator {
        DeltaAccumulator {
            decay: Decay::new(window_seconds),
            dither: Dither::new(0xD1B5_4A32_D192_ED03),
            max_spread_ms: max_spread_seconds.saturating_mul(1000),
            cap,
            held: FastMap::default(),
            overflow: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Adds record `r` of host-direction `key` (hostgroup `group`) arriving at `now_ms`.
    pub fn add(&mut self, key: HostKey, group: u16, r: &FlowRecord, now_ms: i64) {
        let (sec, weight) = place(r, now_ms, self.max_spread_ms, &self.decay);
        let (p, b) = if weight >= 1.0 {
            (r.packets, r.bytes)
        } else {
            (
                self.dither.round(r.packets as f64 * weight),
                self.dither.round(r.bytes as f64 * weight),
            )
        };
        let c = Counters::of(r, p, b, u64::from(r.flows));
        let full = self.held.len() >= self.cap;
        match self.held.get_mut(&(sec, key)) {
            Some(e) => e.1.add(&c),
            None if full => self.overflow += 1,
            None => {
                self.held.insert((sec, key), (group, c));
            }
        }
    }

    /// Adds a batch routed to this shard (the same items the host table applies).
    pub fn add_all(&mut self, items: &[Pending], recs: &[FlowRecord], now_ms: i64) {
        for u in items {
            if let Some(r) = recs.get(u.rec as usize) {
                self.add(u.key(r), u.group, r, now_ms);
            }
        }
    }

    /// Moves every delta of a second before `sec` to `out`.
    pub fn drain_before(&mut self, sec: u32, out: &mut Vec<HostDelta>) {
        self.held.retain(|(s, key), (group, counters)| {
            if *s < sec {
                out.push(HostDelta {
                    key: *key,
                    group: *group,
                    sec: *s,
                    counters: *counters,
                });
                false
            } else {
                true
            }
        });
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
