//! The host table: one shard per core, each behind its own lock.
//!
//! Writers (collector threads) group a datagram batch's updates by shard and take each
//! shard's lock once per batch, never per record. The detection pass visits only the
//! hosts written since the previous pass (the shard's dirty list) plus hosts under
//! attack, so idle hosts cost nothing per second.
//!
//! Compact: a host-direction is a slot in a dense array (84 bytes for IPv4, 96 for IPv6:
//! address, group, flags and its [`Ewma`] rates) found through a [`SlotIndex`] of 4-byte
//! slot numbers (~6–8 bytes per host at its load), about 92 bytes in all for IPv4 instead
//! of ~1 KB for a ring of per-second buckets. The hot set of a busy collector fits in L2, which is what the per-record cost
//! is made of. Lifetime totals per host (128 bytes more) are kept only on request
//! (`replay --totals`, `[aggregate] host_totals`).
//!
//! Bounded: at most `cap` host-directions per shard. A new host at the cap replaces the
//! least busy of 8 sampled host-directions (sampled LFU; hosts under attack are never
//! chosen), counted as a pressure eviction; only if none can go is it refused and
//! counted. After refusals the idle timeout shrinks to the window length. Idle hosts are
//! swept periodically; freed slots are reused, so memory stays flat at the cap.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use parking_lot::Mutex;

use super::index::SlotIndex;
use super::rate::{place, Class, Counters, Decay, Dither, Ewma, Rates, Wide};
use crate::decode::FlowRecord;
use crate::model::{Direction, TopSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostKey {
    pub ip: IpAddr,
    pub dir: Direction,
}

/// A host-direction as read at some second.
#[derive(Debug, Clone, Copy)]
pub struct HostEntry {
    pub group: u16,
    /// Newest second with traffic.
    pub last_seen_sec: u32,
    /// Decaying sums as of the last complete second (rates × `window_seconds`).
    pub sums: Counters,
    pub rates: Rates,
}

/// Everything of a slot but its address.
#[derive(Debug, Clone, Copy)]
struct Meta {
    group: u16,
    dir: Direction,
    flags: u8,
    rates: Ewma,
}

/// Most slots reserved up front per family and shard (400 MB of address space for IPv6);
/// a larger cap grows by doubling past it.
const MAX_RESERVED_SLOTS: usize = 1 << 22;

/// Slots looked at per eviction at the cap.
const EVICTION_PROBES: usize = 8;

/// Marks an IPv6 slot number in the dirty list (slot numbers stay below 2^31: the cap).
const V6_BIT: u32 = 1 << 31;

const LIVE: u8 = 1;
const DIRTY: u8 = 2;

#[derive(Debug, Clone, Copy)]
struct Slot<K> {
    key: K,
    m: Meta,
}

impl<K: SlotKey> Slot<K> {
    fn host_key(&self) -> HostKey {
        HostKey {
            ip: self.key.ip(),
            dir: self.m.dir,
        }
    }
}

/// An address as a slot stores it: IPv4 in 4 bytes, IPv6 in 16 (4-byte aligned, not 16
/// as u128 would be).
trait SlotKey: Copy + Eq {
    fn ip(self) -> IpAddr;
    fn hash_with(self, h: &KeyHasher, dir: Direction) -> u64;
}

impl SlotKey for u32 {
    fn ip(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }

    #[inline]
    fn hash_with(self, h: &KeyHasher, dir: Direction) -> u64 {
        h.v4(self, dir)
    }
}

impl SlotKey for [u32; 4] {
    fn ip(self) -> IpAddr {
        let [a, b, c, d] = self;
        let v = u128::from(a) << 96 | u128::from(b) << 64 | u128::from(c) << 32 | u128::from(d);
        IpAddr::V6(Ipv6Addr::from(v))
    }

    #[inline]
    fn hash_with(self, h: &KeyHasher, dir: Direction) -> u64 {
        h.v6(self, dir)
    }
}

/// The keyed hash of a host-direction: one 64×64→128-bit multiply folded to 64 bits
/// (two for IPv6) with secret per-process keys, the primitive aHash's fallback is made
/// of, inlined. A general-purpose hasher (`ahash::RandomState::hash_one` of the key
/// tuple, used before) spent three such rounds plus a call on it: 38 instructions more per
/// record, of ~670 (cachegrind). Every output bit depends on every key bit (the high half of the
/// product mixes them), which the index's bucket (low bits), tag (bits 24+) and shard
/// (bits 40+) all need; the keys are random, so addresses cannot be chosen to collide.
#[derive(Debug, Clone)]
pub struct KeyHasher {
    k: [u64; 4],
}

#[inline(always)]
fn fold_mul(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl KeyHasher {
    /// Random keys, or keys derived from `seed` (reproducible replays).
    pub fn new(seed: Option<u64>) -> KeyHasher {
        let mut k = [0u64; 4];
        match seed {
            Some(mut x) => {
                for v in &mut k {
                    // splitmix64
                    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    let mut z = x;
                    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
                    *v = z ^ (z >> 31);
                }
            }
            None => {
                let r = ahash::RandomState::new();
                for (i, v) in k.iter_mut().enumerate() {
                    *v = r.hash_one(i);
                }
            }
        }
        // A multiplier with its low bit set never maps two inputs of the low half alike.
        k[1] |= 1;
        k[3] |= 1;
        KeyHasher { k }
    }

    #[inline(always)]
    pub fn v4(&self, a: u32, dir: Direction) -> u64 {
        fold_mul((u64::from(a) << 8 | dir as u64) ^ self.k[0], self.k[1])
    }

    #[inline(always)]
    pub fn v6(&self, a: [u32; 4], dir: Direction) -> u64 {
        let hi = u64::from(a[0]) << 32 | u64::from(a[1]);
        let lo = u64::from(a[2]) << 32 | u64::from(a[3]);
        let x = fold_mul(hi ^ self.k[0], lo ^ self.k[2]);
        fold_mul(x ^ dir as u64 ^ self.k[2].rotate_left(29), self.k[3])
    }
}

fn v6_key(a: Ipv6Addr) -> [u32; 4] {
    let v = u128::from(a);
    [
        (v >> 96) as u32,
        (v >> 64) as u32,
        (v >> 32) as u32,
        v as u32,
    ]
}

/// Slots of one address family and their index.
struct Family<K> {
    slots: Vec<Slot<K>>,
    index: SlotIndex,
    free: Vec<u32>,
    /// Where the next look for an eviction victim starts.
    hand: usize,
}

impl<K: SlotKey> Family<K> {
    /// Slot room for `cap` is reserved up front: address space only, pages become
    /// resident as slots fill. Growing by doubling instead would leave the old arrays
    /// behind in the allocator's heap and double the resident size per host.
    fn new(cap: usize) -> Family<K> {
        Family {
            slots: Vec::with_capacity(cap.min(MAX_RESERVED_SLOTS)),
            // Slot numbers stay below the cap (freed slots are reused first).
            index: SlotIndex::for_values(cap),
            free: Vec::new(),
            hand: 0,
        }
    }

    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Prefetches the slot the home bucket of `hash` names (the bucket itself should have
    /// been prefetched a little earlier); both ends, as a slot may straddle two lines.
    #[inline]
    fn prefetch_slot(&self, hash: u64) {
        if let Some(s) = self
            .index
            .home(hash)
            .and_then(|i| self.slots.get(i as usize))
        {
            super::index::prefetch_all(s);
        }
    }

    fn find(&self, hash: u64, key: K, dir: Direction) -> Option<u32> {
        let slots = &self.slots;
        self.index.find(hash, |i| {
            let s = &slots[i as usize];
            s.key == key && s.m.dir == dir
        })
    }

    /// The hash of what slot `i` holds.
    fn rehash<'a>(slots: &'a [Slot<K>], h: &'a KeyHasher) -> impl Fn(u32) -> u64 + 'a {
        move |i| {
            let s = &slots[i as usize];
            s.key.hash_with(h, s.m.dir)
        }
    }

    /// Inserts `key` (not present) with `group`; returns its slot.
    fn insert(&mut self, h: &KeyHasher, hash: u64, key: K, dir: Direction, group: u16) -> u32 {
        let slots = &mut self.slots;
        let mut slot = Slot {
            key,
            m: Meta {
                group,
                dir,
                flags: LIVE,
                rates: Ewma::default(),
            },
        };
        let i = match self.free.pop() {
            Some(i) => {
                // A freed slot still on the dirty list keeps its place there: the new host
                // is visited by that entry, and the list never holds a slot twice.
                slot.m.flags |= slots[i as usize].m.flags & DIRTY;
                slots[i as usize] = slot;
                i
            }
            None => {
                slots.push(slot);
                (slots.len() - 1) as u32
            }
        };
        self.index.insert(hash, i, Self::rehash(slots, h));
        i
    }

    /// Frees the slot with the least traffic (smallest averaged packet sum) among the next
    /// `probes` live slots from the clock hand that `keep` does not protect: sampled
    /// least-frequently-used, as Redis evicts. Returns the evicted key.
    fn evict_one(
        &mut self,
        h: &KeyHasher,
        probes: usize,
        keep: impl Fn(&HostKey) -> bool,
    ) -> Option<HostKey> {
        let n = self.slots.len();
        let mut best: Option<(u64, usize)> = None;
        for _ in 0..probes.min(n) {
            let i = self.hand % n;
            self.hand = i + 1;
            let s = &self.slots[i];
            if s.m.flags & LIVE == 0 {
                continue;
            }
            let weight = s.m.rates.packet_sum();
            if best.is_some_and(|(w, _)| w <= weight) {
                continue;
            }
            if keep(&s.host_key()) {
                continue;
            }
            best = Some((weight, i));
        }
        let (_, i) = best?;
        let key = self.slots[i].host_key();
        self.free_slot(h, i);
        Some(key)
    }

    /// Takes live slot `i` out of the index and onto the free list.
    fn free_slot(&mut self, h: &KeyHasher, i: usize) {
        let s = self.slots[i];
        let hash = s.key.hash_with(h, s.m.dir);
        self.index
            .remove(hash, i as u32, Self::rehash(&self.slots, h));
        // DIRTY stays: the slot's entry on the dirty list is still there (see insert).
        self.slots[i].m.flags &= DIRTY;
        self.free.push(i as u32);
    }

    /// Removes every live slot `evict` says to, freeing it for reuse.
    fn retain(&mut self, h: &KeyHasher, mut evict: impl FnMut(HostKey, &Meta) -> bool) {
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.m.flags & LIVE != 0 && evict(s.host_key(), &s.m) {
                self.free_slot(h, i);
            }
        }
    }
}

/// One record's effect on one protected host, as the collectors queue it per shard: the
/// key's hash computed once (it picks the shard and the index bucket), the record by its
/// position in the batch, not copied, and the host as which of its addresses (16 bytes:
/// a batch of them is written and read back once per record).
#[derive(Debug, Clone, Copy)]
pub struct Pending {
    pub hash: u64,
    pub rec: u32,
    pub group: u16,
    /// Which address of the record: the destination (incoming) or the source.
    pub dir: Direction,
    pub v6: bool,
}

impl Pending {
    /// The host this is about, from its record.
    #[inline]
    pub fn key(&self, r: &FlowRecord) -> HostKey {
        HostKey {
            ip: host_addr(r, self.dir),
            dir: self.dir,
        }
    }
}

/// The address of `r` that is the host in direction `dir`: the destination of incoming
/// traffic, the source of outgoing.
#[inline]
pub fn host_addr(r: &FlowRecord, dir: Direction) -> IpAddr {
    match dir {
        Direction::Incoming => r.dst,
        Direction::Outgoing => r.src,
    }
}

/// The other end of `r` seen from its host in direction `dir`: address and port.
#[inline]
fn peer_of(r: &FlowRecord, dir: Direction) -> (IpAddr, u16) {
    match dir {
        Direction::Incoming => (r.src, r.src_port),
        Direction::Outgoing => (r.dst, r.dst_port),
    }
}

/// The hash a slot of `key` is indexed under: [`SlotKey::hash_with`] of its stored form.
#[inline]
fn key_hash(h: &KeyHasher, key: &HostKey) -> u64 {
    match key.ip {
        IpAddr::V4(a) => u32::from(a).hash_with(h, key.dir),
        IpAddr::V6(a) => v6_key(a).hash_with(h, key.dir),
    }
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
/// A shard's share of a batch from which the ring samples records instead of taking
/// each: every [`RING_SAMPLE`]th from a random start, each weighing [`RING_SAMPLE`] times
/// its packets (the random start keeps a stream that cycles through sources with that
/// period from losing some of them for good). Writing every record cost ~40
/// instructions of ~500 per record (cachegrind), and at a million records per second the
/// ring held only the last 16 ms; sampled, it holds 4 times as long and source shares
/// read the same. Below this (low rates, tests) every record goes in.
const RING_SAMPLE_MIN_BATCH: usize = 256;
const RING_SAMPLE: usize = 4;
/// Distinct sources tracked per attacked host; later sources go to "other".
const MAX_SOURCES: usize = 1024;

/// The maps written per record of an attacked host: aHash, not the standard SipHash
/// (30 M records to 100 hosts, all over the threshold: 3.33 → 2.71 s).
type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

#[derive(Debug, Default, Clone)]
struct SourceTracker {
    by_source: FastMap<IpAddr, (u64, FastMap<u16, u64>)>,
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
                // Only a port that carries at least half of the address's packets: with
                // random source ports (a SYN flood) there is none, and naming one would
                // only report which ports happened to be seen first.
                port: ports
                    .iter()
                    .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                    .filter(|(_, n)| **n * 2 >= *p)
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
    v4: Family<u32>,
    v6: Family<[u32; 4]>,
    hasher: KeyHasher,
    /// Slots written since the last pass: the slot number, top bit set for IPv6.
    dirty: Vec<u32>,
    /// Incoming traffic summed per hostgroup (carpet-bombing detection).
    /// Incoming sums per hostgroup, for groups with `[hostgroup.total]` thresholds
    /// only (None for the others: one fewer rate update per record).
    groups: Vec<Option<Ewma<Wide>>>,
    decay: Decay,
    dither: Dither,
    ring: Vec<RingEntry>,
    ring_pos: usize,
    /// Picks where the ring's sample of a batch starts (an LCG: its top bits are random
    /// enough).
    ring_lcg: u64,
    watched: FastMap<HostKey, SourceTracker>,
    /// Lifetime totals per tracked host-direction, when asked for.
    totals: Option<FastMap<HostKey, Counters>>,
    /// Totals outlive the host's eviction (replay: totals of the whole capture; the
    /// capture bounds them). Off for the live service, whose totals follow the table.
    totals_keep_evicted: bool,
    cap: usize,
    window_seconds: u32,
    max_spread_ms: u32,
    /// New hosts refused because the shard was full (counts since the metrics last took
    /// them).
    pub refused: u64,
    /// Hosts were refused since the last sweep: the next pass sweeps harder.
    pub refused_since_sweep: bool,
    pub evicted_idle: u64,
    pub evicted_pressure: u64,
}

/// Slot `i`'s state, mutably, taking only the two families (so other shard fields stay
/// borrowable beside it).
fn slot_meta_mut<'a>(
    v4: &'a mut Family<u32>,
    v6: &'a mut Family<[u32; 4]>,
    is_v6: bool,
    i: u32,
) -> &'a mut Meta {
    if is_v6 {
        &mut v6.slots[i as usize].m
    } else {
        &mut v4.slots[i as usize].m
    }
}

/// The last complete second at `now_sec`: what a pass at `now_sec` reads.
fn eval_sec(now_sec: u32) -> u32 {
    now_sec.saturating_sub(1)
}

impl Shard {
    /// `summed_groups[i]`: whether hostgroup `i` needs its incoming sum.
    pub fn new(
        cap: usize,
        window_seconds: u32,
        max_spread_seconds: u32,
        summed_groups: &[bool],
    ) -> Shard {
        Shard {
            v4: Family::new(cap),
            v6: Family::new(cap),
            hasher: KeyHasher::new(None),
            dirty: Vec::new(),
            groups: summed_groups
                .iter()
                .map(|&on| on.then(Ewma::default))
                .collect(),
            decay: Decay::new(window_seconds),
            dither: Dither::new(0x9E37_79B9_7F4A_7C15),
            ring: Vec::with_capacity(RING_LEN),
            ring_pos: 0,
            ring_lcg: 0x853C_49E6_748F_EA9B,
            watched: FastMap::default(),
            totals: None,
            totals_keep_evicted: false,
            cap,
            window_seconds,
            max_spread_ms: max_spread_seconds.saturating_mul(1000),
            refused: 0,
            refused_since_sweep: false,
            evicted_idle: 0,
            evicted_pressure: 0,
        }
    }

    /// Keeps lifetime totals per host-direction from now on; with `keep_evicted`, also
    /// those of hosts evicted since (`replay --totals`).
    pub fn keep_totals(&mut self, keep_evicted: bool) {
        self.totals.get_or_insert_with(HashMap::default);
        self.totals_keep_evicted = keep_evicted;
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key and state of slot `i` of the IPv6 (`v6`) or IPv4 family.
    fn slot(&self, v6: bool, i: u32) -> (HostKey, &Meta) {
        if v6 {
            let s = &self.v6.slots[i as usize];
            (s.host_key(), &s.m)
        } else {
            let s = &self.v4.slots[i as usize];
            (s.host_key(), &s.m)
        }
    }

    fn find(&self, key: &HostKey) -> Option<(bool, u32)> {
        self.find_hashed(key, key_hash(&self.hasher, key))
    }

    fn find_hashed(&self, key: &HostKey, hash: u64) -> Option<(bool, u32)> {
        match key.ip {
            IpAddr::V4(a) => self
                .v4
                .find(hash, u32::from(a), key.dir)
                .map(|i| (false, i)),
            IpAddr::V6(a) => self.v6.find(hash, v6_key(a), key.dir).map(|i| (true, i)),
        }
    }

    fn entry(&self, v6: bool, i: u32, now_sec: u32) -> HostEntry {
        let (_, m) = self.slot(v6, i);
        let sums = m.rates.sums(eval_sec(now_sec), &self.decay);
        HostEntry {
            group: m.group,
            last_seen_sec: m.rates.last_sec(),
            sums,
            rates: Rates::from_window(&sums, self.window_seconds),
        }
    }

    /// At the cap, makes room for `key`, which is new: the least busy of a few sampled
    /// host-directions (never one under attack) goes. A host new to a full table (a real
    /// flood target during a random-destination flood) is thereby tracked at once instead
    /// of after the next sweep. Returns whether the table is still full.
    fn make_room(&mut self, key: &HostKey) -> bool {
        let watched = &self.watched;
        let keep = |k: &HostKey| watched.contains_key(k);
        let gone = match key.ip {
            IpAddr::V4(_) => self.v4.evict_one(&self.hasher, EVICTION_PROBES, keep),
            IpAddr::V6(_) => self.v6.evict_one(&self.hasher, EVICTION_PROBES, keep),
        };
        match gone {
            Some(k) => {
                self.evicted_pressure += 1;
                if let Some(t) = self.totals.as_mut().filter(|_| !self.totals_keep_evicted) {
                    t.remove(&k);
                }
                false
            }
            None => true,
        }
    }

    /// The slot for `key`, not in the table: made room for at the cap, then inserted.
    /// None if the table is full and nothing could go. Out of line: a host's first record
    /// is rare next to its others, and the hot path stays small.
    #[cold]
    #[inline(never)]
    fn insert_new(&mut self, key: &HostKey, hash: u64, group: u16) -> Option<(bool, u32)> {
        if self.len() >= self.cap && self.make_room(key) {
            return None;
        }
        Some(match key.ip {
            IpAddr::V4(a) => (
                false,
                self.v4
                    .insert(&self.hasher, hash, u32::from(a), key.dir, group),
            ),
            IpAddr::V6(a) => (
                true,
                self.v6
                    .insert(&self.hasher, hash, v6_key(a), key.dir, group),
            ),
        })
    }

    /// Applies a batch of routed records. The index bucket and then the slot of the
    /// records a few places ahead are prefetched, so their cache misses overlap with the
    /// work on the current one instead of stalling it: with 10 000 hosts the two
    /// dependent misses (bucket, then slot) were half of this function's time.
    pub fn apply_all(&mut self, items: &[Pending], recs: &[FlowRecord], now_ms: i64) {
        const BUCKET_AHEAD: usize = 16;
        const SLOT_AHEAD: usize = 8;
        for (j, u) in items.iter().enumerate() {
            if let Some(a) = items.get(j + BUCKET_AHEAD) {
                match a.v6 {
                    false => self.v4.index.prefetch(a.hash),
                    true => self.v6.index.prefetch(a.hash),
                }
            }
            if let Some(b) = items.get(j + SLOT_AHEAD) {
                match b.v6 {
                    false => self.v4.prefetch_slot(b.hash),
                    true => self.v6.prefetch_slot(b.hash),
                }
            }
            if let Some(r) = recs.get(u.rec as usize) {
                self.apply_hashed(&u.key(r), u.hash, u.group, r, now_ms);
            }
        }
        // The ring in a pass of its own, so the loop above has no branch on which records
        // it samples.
        let (start, step) = if items.len() >= RING_SAMPLE_MIN_BATCH {
            self.ring_lcg = self
                .ring_lcg
                .wrapping_mul(0x5851_F42D_4C95_7F2D)
                .wrapping_add(0x1405_7B7E_F767_814F);
            ((self.ring_lcg >> 62) as usize, RING_SAMPLE)
        } else {
            (0, 1)
        };
        for u in items.iter().skip(start).step_by(step) {
            if let Some(r) = recs.get(u.rec as usize) {
                self.ring_add(&u.key(r), r, step as u64);
            }
        }
    }

    /// Applies record `r` to host-direction `key` (whose [`HostTable::hash_of`] is `hash`),
    /// all but the recent-records ring ([`Shard::ring_add`]).
    pub fn apply_hashed(
        &mut self,
        key: &HostKey,
        hash: u64,
        group: u16,
        r: &FlowRecord,
        now_ms: i64,
    ) {
        let Some((v6, i)) = self.slot_for(key, hash, group) else {
            return;
        };
        let (sec, weight) = place(r, now_ms, self.max_spread_ms, &self.decay);
        let class = Class::of(r);
        let flows = u64::from(r.flows);
        // Split borrows: the slot, the decay table and the dither are separate fields.
        let (decay, dither) = (&self.decay, &mut self.dither);
        let m = slot_meta_mut(&mut self.v4, &mut self.v6, v6, i);
        m.rates
            .add(sec, weight, class, r.packets, r.bytes, flows, decay, dither);
        if m.flags & DIRTY == 0 {
            m.flags |= DIRTY;
            self.dirty.push(if v6 { i | V6_BIT } else { i });
        }
        if key.dir == Direction::Incoming {
            if let Some(Some(g)) = self.groups.get_mut(usize::from(group)) {
                g.add(sec, weight, class, r.packets, r.bytes, flows, decay, dither);
            }
        }
        if let Some(t) = &mut self.totals {
            t.entry(*key)
                .or_default()
                .add(&Counters::of(r, r.packets, r.bytes, flows));
        }
        if !self.watched.is_empty() {
            if let Some(t) = self.watched.get_mut(key) {
                let (peer, port) = peer_of(r, key.dir);
                t.add(peer, port, r.packets);
            }
        }
    }

    /// The slot of `key`, inserted if new; None (counted as refused) when the table is
    /// full and nothing could be evicted for it.
    #[inline(always)]
    fn slot_for(&mut self, key: &HostKey, hash: u64, group: u16) -> Option<(bool, u32)> {
        if let Some(f) = self.find_hashed(key, hash) {
            return Some(f);
        }
        let new = self.insert_new(key, hash, group);
        if new.is_none() {
            self.refused += 1;
            self.refused_since_sweep = true;
        }
        new
    }

    /// Applies one second's counter deltas of host-direction `key` (merged from
    /// collectors in cluster mode) as of second `sec`: the slot's rates, the hostgroup
    /// sum and totals, as [`Shard::apply_hashed`] does for a record. No recent-records
    /// ring or source tracking: deltas carry no peers.
    pub fn apply_delta(&mut self, key: &HostKey, group: u16, sec: u32, c: &Counters) {
        let hash = key_hash(&self.hasher, key);
        let Some((v6, i)) = self.slot_for(key, hash, group) else {
            return;
        };
        let (decay, dither) = (&self.decay, &mut self.dither);
        let m = slot_meta_mut(&mut self.v4, &mut self.v6, v6, i);
        m.rates.add_counters(sec, c, decay, dither);
        if m.flags & DIRTY == 0 {
            m.flags |= DIRTY;
            self.dirty.push(if v6 { i | V6_BIT } else { i });
        }
        if key.dir == Direction::Incoming {
            if let Some(Some(g)) = self.groups.get_mut(usize::from(group)) {
                g.add_counters(sec, c, decay, dither);
            }
        }
        if let Some(t) = &mut self.totals {
            t.entry(*key).or_default().add(c);
        }
    }

    /// Puts record `r` of host-direction `key` into the recent-records ring, its packets
    /// weighing `weight` times (the ring's sampling rate).
    fn ring_add(&mut self, key: &HostKey, r: &FlowRecord, weight: u64) {
        let (peer, port) = peer_of(r, key.dir);
        let packets = r.packets.saturating_mul(weight);
        // Consecutive records of one peer to one host fold into one entry, so a
        // single-source flood does not flush everyone else out of the ring.
        let last = (self.ring_pos + RING_LEN - 1) % RING_LEN;
        if let Some(l) = self.ring.get_mut(last) {
            if l.key == *key && l.peer == peer {
                l.packets = l.packets.saturating_add(packets);
                return;
            }
        }
        let entry = RingEntry {
            key: *key,
            peer,
            peer_port: port,
            packets,
        };
        if self.ring.len() < RING_LEN {
            self.ring.push(entry);
        } else {
            self.ring[self.ring_pos] = entry;
        }
        self.ring_pos = (self.ring_pos + 1) % RING_LEN;
    }

    /// How many host-directions are listed as written since the last drain.
    pub fn dirty_len(&self) -> usize {
        self.dirty.len()
    }

    /// Calls `f` for every host written since the last call, read at `now_sec`, then
    /// forgets them.
    pub fn drain_dirty(&mut self, now_sec: u32, mut f: impl FnMut(&HostKey, &HostEntry)) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &d in &dirty {
            let (v6, i) = (d & V6_BIT != 0, d & !V6_BIT);
            let m = slot_meta_mut(&mut self.v4, &mut self.v6, v6, i);
            // A slot is listed at most once (DIRTY survives a free and a reuse), so the
            // list is never longer than the slots. A slot freed and not reused since is
            // skipped.
            let live = m.flags & LIVE != 0;
            m.flags &= !DIRTY;
            if live {
                let (key, _) = self.slot(v6, i);
                f(&key, &self.entry(v6, i, now_sec));
            }
        }
        // The allocation is kept: a list rebuilt from nothing every pass makes RSS swing
        // by the list's size under a flood of new hosts.
        dirty.clear();
        self.dirty = dirty;
    }

    pub fn get(&self, key: &HostKey, now_sec: u32) -> Option<HostEntry> {
        self.find(key).map(|(v6, i)| self.entry(v6, i, now_sec))
    }

    pub fn group_sum(&self, group: usize, now_sec: u32) -> Counters {
        self.groups
            .get(group)
            .and_then(Option::as_ref)
            .map(|g| g.sums(eval_sec(now_sec), &self.decay))
            .unwrap_or_default()
    }

    /// Evicts hosts idle for `idle_seconds`; under cap pressure (hosts were refused),
    /// hosts idle for longer than the window go too. Hosts in `keep` stay.
    pub fn sweep(&mut self, now_sec: u32, idle_seconds: u32, keep: &dyn Fn(&HostKey) -> bool) {
        let pressure = std::mem::take(&mut self.refused_since_sweep);
        let short = self.window_seconds + 1;
        let (mut idle, mut press) = (0, 0);
        let mut gone = Vec::new();
        let mut evict = |k: HostKey, m: &Meta| {
            let age = now_sec.saturating_sub(m.rates.last_sec());
            let out = if keep(&k) {
                false
            } else if age >= idle_seconds {
                idle += 1;
                true
            } else if pressure && age >= short {
                press += 1;
                true
            } else {
                false
            };
            if out {
                gone.push(k);
            }
            out
        };
        self.v4.retain(&self.hasher, &mut evict);
        self.v6.retain(&self.hasher, &mut evict);
        if let Some(t) = self.totals.as_mut().filter(|_| !self.totals_keep_evicted) {
            for k in &gone {
                t.remove(k);
            }
        }
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

    /// Stops tracking `key`'s sources; returns whether they were tracked.
    pub fn unwatch(&mut self, key: &HostKey) -> bool {
        self.watched.remove(key).is_some()
    }

    pub fn top_sources(&self, key: &HostKey, n: usize) -> Vec<TopSource> {
        self.watched.get(key).map(|t| t.top(n)).unwrap_or_default()
    }

    /// Every host read at `now_sec`, for `top` queries.
    pub fn for_each(&self, now_sec: u32, mut f: impl FnMut(&HostKey, &HostEntry)) {
        for (v6, n) in [(false, self.v4.slots.len()), (true, self.v6.slots.len())] {
            for i in 0..n as u32 {
                let (key, m) = self.slot(v6, i);
                if m.flags & LIVE != 0 {
                    f(&key, &self.entry(v6, i, now_sec));
                }
            }
        }
    }

    /// Lists every host `f` accepts for the next pass, as if written (a cluster detector
    /// that takes a partition over looks at its hosts at once, traffic or not).
    pub fn mark_dirty_where(&mut self, f: impl Fn(&HostKey) -> bool) {
        for (v6, n) in [(false, self.v4.slots.len()), (true, self.v6.slots.len())] {
            for i in 0..n as u32 {
                let (key, flags) = {
                    let (k, m) = self.slot(v6, i);
                    (k, m.flags)
                };
                if flags & LIVE != 0 && flags & DIRTY == 0 && f(&key) {
                    slot_meta_mut(&mut self.v4, &mut self.v6, v6, i).flags |= DIRTY;
                    self.dirty.push(if v6 { i | V6_BIT } else { i });
                }
            }
        }
    }

    /// Lifetime totals of every tracked host-direction, if kept.
    pub fn for_each_total(&self, mut f: impl FnMut(&HostKey, &Counters)) {
        for (k, c) in self.totals.iter().flatten() {
            f(k, c);
        }
    }

    pub fn totals_of(&self, key: &HostKey) -> Option<Counters> {
        self.totals.as_ref()?.get(key).copied()
    }
}

/// The shards and the hash that spreads hosts over them.
pub struct HostTable {
    pub shards: Vec<Mutex<Shard>>,
    hasher: KeyHasher,
}

impl HostTable {
    /// `seed`: a fixed hash seed (reproducible replays), or None for a random one.
    pub fn new(
        seed: Option<u64>,
        shards: usize,
        cap_total: usize,
        window_seconds: u32,
        max_spread_seconds: u32,
        summed_groups: &[bool],
    ) -> HostTable {
        let n = shards.max(1);
        let per = cap_total.div_ceil(n).max(1);
        let hasher = KeyHasher::new(seed);
        HostTable {
            shards: (0..n)
                .map(|_| {
                    let mut s = Shard::new(per, window_seconds, max_spread_seconds, summed_groups);
                    // One hasher for the table and its shards: a key's hash, computed once
                    // per record, picks both the shard and the index bucket.
                    s.hasher = hasher.clone();
                    Mutex::new(s)
                })
                .collect(),
            hasher,
        }
    }

    /// Keeps lifetime totals per host-direction (128 bytes each more); see
    /// [`Shard::keep_totals`] for `keep_evicted`.
    pub fn keep_totals(&self, keep_evicted: bool) {
        for s in &self.shards {
            s.lock().keep_totals(keep_evicted);
        }
    }

    #[inline]
    pub fn hash_of(&self, key: &HostKey) -> u64 {
        key_hash(&self.hasher, key)
    }

    /// The shard of a key hash: its high bits (the index uses the low ones, the tags the
    /// middle ones), scaled to the shard count by a multiply instead of a division (a
    /// 64-bit `div` was 7 % of the ingest loop).
    pub fn shard_of_hash(&self, hash: u64) -> usize {
        (((hash >> 40) * self.shards.len() as u64) >> 24) as usize
    }

    pub fn shard_of(&self, key: &HostKey) -> usize {
        self.shard_of_hash(self.hash_of(key))
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &HostKey, now_sec: u32) -> Option<HostEntry> {
        self.shards[self.shard_of(key)].lock().get(key, now_sec)
    }

    pub fn totals_of(&self, key: &HostKey) -> Option<Counters> {
        self.shards[self.shard_of(key)].lock().totals_of(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_spreads_neighbours_over_buckets_shards_and_tags() {
        let h = KeyHasher::new(Some(7));
        // Seeded keys are reproducible; the random ones differ from them.
        assert_eq!(
            h.v4(1, Direction::Incoming),
            KeyHasher::new(Some(7)).v4(1, Direction::Incoming)
        );
        assert_ne!(
            h.v4(1, Direction::Incoming),
            KeyHasher::new(None).v4(1, Direction::Incoming)
        );
        // 2^16 neighbouring addresses (a /16, the usual protected block), both
        // directions: the bucket bits (low 14), the tag bits (24..32) and the shard
        // (bits 40+, into 4) must each come out near uniform. A hash that ignored the
        // direction, or left the high half of the product out, fails here.
        for v6 in [false, true] {
            let mut buckets = vec![0u32; 1 << 14];
            let mut tags = [0u32; 256];
            let mut shards = [0u32; 4];
            let mut seen = std::collections::HashSet::new();
            let n = 1u32 << 17;
            for i in 0..n {
                let (a, dir) = (0x6440_0000 | (i >> 1), Direction::ALL[(i & 1) as usize]);
                let x = if v6 {
                    h.v6([0x2001_0db8, 0, 0, a], dir)
                } else {
                    h.v4(a, dir)
                };
                // No two keys share a full hash (both directions of an address included).
                assert!(seen.insert(x), "v6={v6} {a:#x} {dir:?}");
                buckets[(x & 0x3fff) as usize] += 1;
                tags[(x >> 24) as u8 as usize] += 1;
                shards[(((x >> 40) * 4) >> 24) as usize] += 1;
            }
            // Expected 8 per bucket, 512 per tag, 32 768 per shard. Bounds: the 99.9 %
            // quantile of chi² over its degrees of freedom (16 383, 255, 3); a skewed hash
            // lands far above them (chi²/df in the tens or thousands).
            let chi2 = |c: &[u32]| {
                let e = f64::from(n) / c.len() as f64;
                let df = (c.len() - 1) as f64;
                c.iter()
                    .map(|&o| (f64::from(o) - e).powi(2) / e)
                    .sum::<f64>()
                    / df
            };
            for (what, c, bound) in [
                ("bucket", &buckets[..], 1.04),
                ("tag", &tags[..], 1.29),
                ("shard", &shards[..], 5.4),
            ] {
                let x = chi2(c);
                assert!(x < bound, "v6={v6} {what}: chi²/df {x:.2}");
            }
        }
    }

    /// One record's effect on one protected host, hash not yet computed.
    struct Update {
        key: HostKey,
        group: u16,
        rec: FlowRecord,
    }

    impl Shard {
        fn apply(&mut self, u: &Update, now_ms: i64) {
            let hash = key_hash(&self.hasher, &u.key);
            self.apply_hashed(&u.key, hash, u.group, &u.rec, now_ms);
            self.ring_add(&u.key, &u.rec, 1);
        }
    }

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
    fn at_the_cap_the_least_busy_host_makes_room_and_attacked_hosts_never_do() {
        let mut s = Shard::new(2, 5, 300, &[true]);
        let t0 = 1_000_000_000;
        let key = |ip: &str| upd(ip, "198.51.100.1", 0).key;
        s.apply(&upd("192.0.2.1", "198.51.100.1", 100), t0);
        s.apply(&upd("192.0.2.2", "198.51.100.1", 1), t0);
        // A new host at the cap replaces the least busy one (.2), not the flood target.
        s.apply(&upd("192.0.2.3", "198.51.100.1", 50), t0);
        assert_eq!((s.len(), s.evicted_pressure, s.refused), (2, 1, 0));
        assert!(s.get(&key("192.0.2.2"), t0_sec(t0)).is_none());
        assert_eq!(
            s.get(&key("192.0.2.1"), t0_sec(t0)).unwrap().sums.packets,
            167
        );
        // Hosts under attack (watched) never go: with both watched, a newcomer is refused.
        s.watch(key("192.0.2.1"));
        s.watch(key("192.0.2.3"));
        s.apply(&upd("192.0.2.4", "198.51.100.1", 1), t0);
        assert_eq!((s.len(), s.refused), (2, 1));
        assert!(s.get(&key("192.0.2.4"), t0_sec(t0)).is_none());
        // Existing hosts still update at the cap.
        s.apply(&upd("192.0.2.1", "198.51.100.1", 1), t0 + 10_000);
        // After refusals, the sweep also evicts hosts idle longer than the window: .3,
        // unless kept (hosts under attack are passed in `keep`).
        s.unwatch(&key("192.0.2.3"));
        s.sweep(1_000_010, 60, &|k| k.ip.to_string() == "192.0.2.1");
        assert_eq!((s.len(), s.evicted_pressure), (1, 2));
        // Plain idle eviction.
        s.sweep(1_000_100, 60, &|_| false);
        assert_eq!((s.len(), s.evicted_idle), (0, 1));
    }

    fn t0_sec(t0_ms: i64) -> u32 {
        (t0_ms / 1000) as u32 + 1
    }

    #[test]
    fn dirty_hosts_are_visited_once() {
        let mut s = Shard::new(10, 5, 300, &[true]);
        for _ in 0..3 {
            s.apply(&upd("192.0.2.1", "198.51.100.1", 1), 5_000);
        }
        s.apply(&upd("192.0.2.2", "198.51.100.1", 1), 5_000);
        let mut n = 0;
        s.drain_dirty(5, |_, _| n += 1);
        assert_eq!(n, 2);
        s.drain_dirty(5, |_, _| n += 1);
        assert_eq!(n, 2, "nothing written since");
    }

    #[test]
    fn churn_at_the_cap_keeps_the_dirty_list_within_the_slots() {
        // A flood of new hosts at a cap of 4: every record evicts a host and reuses its
        // slot. The dirty list must not grow with the records (it once held an entry per
        // reuse, ~1 MB a second per 150 k new hosts), and each host written and still
        // tracked is visited once.
        let mut s = Shard::new(4, 5, 300, &[true]);
        for n in 0..1000u32 {
            let dst = std::net::Ipv4Addr::from(0x0a00_0000 + n).to_string();
            s.apply(&upd(&dst, "198.51.100.1", 1), 5_000);
            assert!(s.dirty.len() <= s.v4.slots.len(), "{}", s.dirty.len());
        }
        assert_eq!(s.len(), 4);
        let (mut seen, mut tracked) = (Vec::new(), Vec::new());
        s.drain_dirty(5, |k, _| seen.push(k.ip));
        s.for_each(5, |k, _| tracked.push(k.ip));
        seen.sort();
        tracked.sort();
        assert_eq!(seen, tracked, "every tracked host once, no freed one");
        // Written again after the pass: listed again, once.
        s.apply(&upd("10.0.3.231", "198.51.100.1", 1), 5_000);
        s.apply(&upd("10.0.3.231", "198.51.100.1", 1), 5_000);
        let mut n = 0;
        s.drain_dirty(5, |_, _| n += 1);
        assert_eq!(n, 1);
    }

    #[test]
    fn slots_are_small_reused_after_eviction_and_both_families_work() {
        assert!(std::mem::size_of::<Slot<u32>>() <= 84);
        assert!(std::mem::size_of::<Slot<[u32; 4]>>() <= 96);
        let mut s = Shard::new(3, 5, 300, &[true]);
        s.apply(&upd("192.0.2.1", "198.51.100.1", 7), 5_000);
        s.apply(&upd("2001:db8::1", "2001:db8:1::1", 9), 5_000);
        let v6 = upd("2001:db8::1", "2001:db8:1::1", 0).key;
        let e = s.get(&v6, 6).unwrap();
        // 9 packets in one second read 9·2/(W+1) = 3 pps (window-equivalent sum 15).
        assert_eq!((e.rates.pps, e.rates.udp_pps, e.last_seen_sec), (3, 3, 5));
        s.sweep(100, 60, &|_| false);
        assert!(s.is_empty());
        assert!(s.get(&v6, 100).is_none());
        // The freed slots are reused, not appended.
        s.apply(&upd("192.0.2.2", "198.51.100.1", 1), 100_000);
        s.apply(&upd("192.0.2.3", "198.51.100.1", 1), 100_000);
        assert_eq!((s.v4.slots.len(), s.len()), (2, 2));
        let mut seen = Vec::new();
        s.for_each(101, |k, _| seen.push(k.ip.to_string()));
        seen.sort();
        assert_eq!(seen, ["192.0.2.2", "192.0.2.3"]);
        // Each host is visited once by the pass, stale dirty entries of freed slots not.
        let mut n = 0;
        s.drain_dirty(101, |_, _| n += 1);
        assert_eq!(n, 2);
    }

    #[test]
    fn totals_are_kept_only_on_request_and_exactly() {
        let mut s = Shard::new(10, 5, 300, &[true]);
        s.apply(&upd("192.0.2.1", "198.51.100.1", 3), 5_000);
        let key = upd("192.0.2.1", "198.51.100.1", 0).key;
        assert_eq!(s.totals_of(&key), None);
        s.keep_totals(false);
        for t in [5_000, 9_000, 70_000] {
            s.apply(&upd("192.0.2.1", "198.51.100.1", 1_000_001), t);
        }
        let t = s.totals_of(&key).unwrap();
        assert_eq!(
            (t.packets, t.bytes, t.udp_flows),
            (3_000_003, 300_000_300, 3)
        );
    }

    #[test]
    fn replay_totals_outlive_idle_eviction_and_live_ones_do_not() {
        for keep_evicted in [true, false] {
            let mut s = Shard::new(10, 5, 300, &[true]);
            s.keep_totals(keep_evicted);
            s.apply(&upd("192.0.2.1", "198.51.100.1", 7), 5_000);
            let key = upd("192.0.2.1", "198.51.100.1", 0).key;
            s.sweep(1_000, 60, &|_| false);
            assert_eq!((s.len(), s.evicted_idle), (0, 1), "the host was evicted");
            let t = s.totals_of(&key).map(|t| t.packets);
            assert_eq!(
                t,
                keep_evicted.then_some(7),
                "keep_evicted = {keep_evicted}"
            );
        }
    }

    #[test]
    fn large_batches_sample_the_ring_without_losing_a_periodic_source() {
        // One host, four sources in strict rotation, 400 records per batch: the ring
        // takes every 4th record from a random start, weighing 4. A fixed start would
        // only ever see one source; every record would fill the ring with 40 000.
        let mut s = Shard::new(10, 5, 300, &[true]);
        let srcs = [
            "198.51.100.1",
            "198.51.100.2",
            "198.51.100.3",
            "198.51.100.4",
        ];
        let recs: Vec<FlowRecord> = (0..400)
            .map(|i| upd("192.0.2.1", srcs[i % 4], 10).rec)
            .collect();
        let key = upd("192.0.2.1", srcs[0], 0).key;
        let hash = key_hash(&s.hasher, &key);
        let items: Vec<Pending> = (0..400)
            .map(|i| Pending {
                hash,
                rec: i,
                group: 0,
                dir: Direction::Incoming,
                v6: false,
            })
            .collect();
        for b in 0..100 {
            s.apply_all(&items, &recs, 5_000 + b);
        }
        assert!(s.ring.len() <= 100 * 100, "sampled: {}", s.ring.len());
        s.watch(key);
        let t = &s.watched[&key];
        // Every batch puts 100 records × 10 packets × 4 in, whatever its start.
        assert_eq!(t.total, 100 * 400 * 10);
        let top = s.top_sources(&key, 4);
        assert_eq!(top.len(), 4, "{top:?}");
        for src in &top {
            assert!((0.1..0.4).contains(&src.share), "{top:?}");
        }
    }

    #[test]
    fn watched_host_reports_top_sources_with_shares() {
        let mut s = Shard::new(10, 5, 300, &[true]);
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
