//! The busiest host-directions, ranked during the per-second pass over the hosts written
//! that second: address-free ranks for dashboards (`flowguard_top_host_*`) and, with
//! addresses, the lists `GET /api/v1/hosts?top=N` and the console read. Readers clone an
//! `Arc` of the last pass's lists: they never touch a shard.

use std::sync::Arc;

use parking_lot::Mutex;

use super::rate::Rates;
use super::table::HostKey;
use crate::metrics::Metrics;
use crate::model::Direction;
/// Most host-directions `GET /api/v1/hosts?top=N` (and the console) can list: the length
/// of each top list the per-second pass keeps.
pub const TOP_HOSTS_MAX: usize = 1000;

/// The busiest host-directions by pps, bps and flows/s, kept by the per-second pass.
#[derive(Debug, Default)]
pub struct TopHosts {
    /// Indexed by `TopBy as usize`: busiest first, ties by address; at most
    /// [`TOP_HOSTS_MAX`] each.
    by: [Vec<(HostKey, Rates)>; 3],
}

/// The busiest hosts among those with traffic in the last second (the ones a pass
/// visits), per direction: a bounded, address-free view for dashboards; and, with their
/// addresses, the [`TopHosts`] lists the API reads.
#[derive(Default)]
pub(crate) struct TopRanks {
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

/// Keeps an address-free rank list at the ranks published once it holds four times as
/// many values: O(log ranks) amortised per value, O(ranks) memory.
fn cut_ranks(v: &mut Vec<u64>) {
    if v.len() > 4 * crate::metrics::TOP_HOST_RANKS {
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.truncate(crate::metrics::TOP_HOST_RANKS);
    }
}

impl TopRanks {
    pub(crate) fn offer(&mut self, k: &HostKey, r: &Rates) {
        let d = k.dir as usize;
        for (v, x) in [(&mut self.pps[d], r.pps), (&mut self.bps[d], r.bps)] {
            v.push(x);
            cut_ranks(v);
        }
        self.offer_keyed(k, r, true);
    }

    /// Adds the ranks of another part of the same pass (another shard's hosts: no host
    /// is in both).
    pub(crate) fn merge(&mut self, other: TopRanks) {
        for d in 0..2 {
            for (v, o) in [
                (&mut self.pps[d], &other.pps[d]),
                (&mut self.bps[d], &other.bps[d]),
            ] {
                v.extend_from_slice(o);
                cut_ranks(v);
            }
        }
        for (mine, theirs) in self.keyed.iter_mut().zip(other.keyed) {
            for (x, k, r) in theirs.v {
                mine.offer(x, &k, &r, true);
            }
        }
    }

    /// Offers `k` to the lists with addresses only; `cut`: whether the lists may be cut
    /// to size now (not while hosts already offered are offered again).
    pub(crate) fn offer_keyed(&mut self, k: &HostKey, r: &Rates, cut: bool) {
        for by in [TopBy::Pps, TopBy::Bps, TopBy::Flows] {
            self.keyed[by as usize].offer(by.of(r), k, r, cut);
        }
    }

    /// Publishes the address-free ranks; returns the lists with addresses.
    pub(crate) fn finish(mut self, m: &Metrics) -> TopHosts {
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

/// The last pass's [`TopHosts`], swapped whole at the end of each pass.
#[derive(Default)]
pub struct TopBoard(Mutex<Arc<TopHosts>>);

impl TopBoard {
    /// The `n` busiest host-directions (at most [`TOP_HOSTS_MAX`]) by `by`.
    pub fn top(&self, n: usize, by: TopBy) -> Vec<(HostKey, Rates)> {
        let snap = self.0.lock().clone();
        snap.by[by as usize]
            .iter()
            .take(n.min(TOP_HOSTS_MAX))
            .copied()
            .collect()
    }

    /// Every host-direction of the current lists, sorted, without repeats.
    pub(crate) fn listed(&self) -> Vec<HostKey> {
        let prev = self.0.lock().clone();
        let mut keys: Vec<HostKey> = prev.by.iter().flatten().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    pub(crate) fn publish(&self, lists: TopHosts) {
        *self.0.lock() = Arc::new(lists);
    }
}
