//! The host table's index: an open-addressing hash table of 4-byte slot numbers with
//! linear probing and backward-shift deletion.
//!
//! Why not `hashbrown::HashTable<u32>` (used before): its deletions leave tombstones, and
//! at the cap every new host evicts an old one. With more than half of the buckets live,
//! hashbrown clears tombstones by doubling the table, so under a random-destination flood
//! the index settled at twice the size it needs (~21 instead of ~8 bytes per host). Backward
//! shift leaves no tombstones: the table only grows with the number of live entries.
//!
//! The caller owns the keys (in its slot array); every operation gets the hash of the key
//! it is about and a closure that hashes or compares a stored slot number.
//!
//! Tags: slot numbers below 2^k need only k bits of a bucket; the other 32 − k hold a
//! few bits of the key's hash. A probe compares the tag first and only reads the slot
//! (a likely cache miss) when it matches: without tags each bucket passed on the way to
//! the right one cost a slot read, ~0.8 per lookup at the usual load.

/// A bucket with no entry.
const EMPTY: u32 = u32::MAX;
/// Grow when more than 7 in 10 buckets are used: linear probing stays short below that.
const MAX_LOAD_TENTHS: usize = 7;

/// A hint to load the cache line holding `*x`; never faults, has no effect on results.
#[inline(always)]
pub fn prefetch<T>(x: &T) {
    prefetch_ptr(x as *const T as *const u8);
}

#[inline(always)]
fn prefetch_ptr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is only a hint: it does not access memory in the language sense
    // and cannot fault, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// [`prefetch`] of every cache line `*x` spans (its first and last byte for anything up
/// to a line long, which may still straddle two).
#[inline(always)]
pub fn prefetch_all<T>(x: &T) {
    let first = x as *const T as *const u8;
    let last = first.wrapping_add(std::mem::size_of::<T>().saturating_sub(1));
    prefetch_ptr(first);
    prefetch_ptr(last);
}

#[derive(Debug, Clone)]
pub struct SlotIndex {
    buckets: Box<[u32]>,
    len: usize,
    /// Bits of a bucket that hold the slot number; the rest is the tag.
    vbits: u32,
    vmask: u32,
}

impl Default for SlotIndex {
    /// An index for any slot number but u32::MAX, without tags.
    fn default() -> Self {
        SlotIndex::for_values(u32::MAX as usize - 1)
    }
}

impl SlotIndex {
    /// An index for slot numbers up to `max`, with the bits they leave free as tags.
    pub fn for_values(max: usize) -> SlotIndex {
        // The number part must never be all ones (with an all-ones tag that would read
        // as EMPTY): room for max + 1 values below the all-ones number.
        let need = usize::BITS - (max.saturating_add(1)).leading_zeros();
        let vbits = need.clamp(1, 32);
        SlotIndex {
            buckets: vec![EMPTY; 16].into_boxed_slice(),
            len: 0,
            vbits,
            vmask: if vbits == 32 {
                u32::MAX
            } else {
                (1 << vbits) - 1
            },
        }
    }

    /// The tag bits of `hash`, in place (zero without tags). Bits 24 and up: the bucket
    /// uses the low bits, the shard bits 40 and up.
    #[inline]
    fn tag(&self, hash: u64) -> u32 {
        // Without tags (32 value bits) the mask clears all: no branch on the hot path.
        ((hash >> 24) as u32).wrapping_shl(self.vbits) & !self.vmask
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes every entry, keeping the buckets' allocation.
    pub fn clear(&mut self) {
        self.buckets.fill(EMPTY);
        self.len = 0;
    }

    /// Buckets allocated (for memory accounting in tests).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    #[inline]
    fn mask(&self) -> usize {
        self.buckets.len() - 1
    }

    /// Asks the CPU to start loading the home bucket of `hash` (see [`prefetch`]).
    #[inline]
    pub fn prefetch(&self, hash: u64) {
        prefetch(&self.buckets[hash as usize & self.mask()]);
    }

    /// The value in the home bucket of `hash`, if any: the likely match, to prefetch.
    #[inline]
    pub fn home(&self, hash: u64) -> Option<u32> {
        Some(self.buckets[hash as usize & self.mask()])
            .filter(|&e| e != EMPTY)
            .map(|e| e & self.vmask)
    }

    /// The stored value for which `is` holds, probing from `hash`.
    #[inline]
    pub fn find(&self, hash: u64, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        let mask = self.mask();
        let (tag, vmask) = (self.tag(hash), self.vmask);
        let mut p = hash as usize & mask;
        loop {
            let e = self.buckets[p];
            if e == EMPTY {
                return None;
            }
            if e & !vmask == tag && is(e & vmask) {
                return Some(e & vmask);
            }
            p = (p + 1) & mask;
        }
    }

    /// Inserts `v` (not present yet) under `hash`; `rehash(v)` gives the hash of any
    /// stored value when the table grows.
    pub fn insert(&mut self, hash: u64, v: u32, rehash: impl Fn(u32) -> u64) {
        // A number wider than the index was made for would corrupt its tag: a bug in the
        // caller, not an input; refuse loudly rather than index a wrong slot.
        assert!(v < self.vmask, "slot number {v} beyond the index's range");
        if (self.len + 1) * 10 > self.buckets.len() * MAX_LOAD_TENTHS {
            self.grow(&rehash);
        }
        self.place(hash, self.tag(hash) | v);
        self.len += 1;
    }

    fn place(&mut self, hash: u64, v: u32) {
        let mask = self.mask();
        let mut p = hash as usize & mask;
        while self.buckets[p] != EMPTY {
            p = (p + 1) & mask;
        }
        self.buckets[p] = v;
    }

    fn grow(&mut self, rehash: &impl Fn(u32) -> u64) {
        let bigger = vec![EMPTY; self.buckets.len() * 2].into_boxed_slice();
        let old = std::mem::replace(&mut self.buckets, bigger);
        for e in old.iter().copied().filter(|&e| e != EMPTY) {
            self.place(rehash(e & self.vmask), e);
        }
    }

    /// Removes `v`, stored under `hash`. Later entries of the probe run move back into the
    /// hole when their home bucket allows it, so no tombstone is left. Returns whether
    /// `v` was there.
    pub fn remove(&mut self, hash: u64, v: u32, rehash: impl Fn(u32) -> u64) -> bool {
        let (mask, vmask) = (self.mask(), self.vmask);
        let mut p = hash as usize & mask;
        loop {
            match self.buckets[p] {
                EMPTY => return false,
                e if e & vmask == v => break,
                _ => p = (p + 1) & mask,
            }
        }
        let mut hole = p;
        let mut q = (p + 1) & mask;
        loop {
            let e = self.buckets[q];
            if e == EMPTY {
                break;
            }
            let home = rehash(e & vmask) as usize & mask;
            // `e` may fill the hole if the hole lies on its probe path: between its home
            // and its bucket, cyclically.
            if (q.wrapping_sub(home) & mask) >= (q.wrapping_sub(hole) & mask) {
                self.buckets[hole] = e;
                hole = q;
            }
            q = (q + 1) & mask;
        }
        self.buckets[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// A deliberately bad hash (many collisions, wrap-around at the table's end) so probe
    /// runs and backward shifts are exercised.
    fn h(v: u32) -> u64 {
        u64::from(v % 7) * 0x9E37_79B9 + u64::from(v % 3)
    }

    #[test]
    fn behaves_like_a_set_under_random_churn() {
        // Untagged, and tagged with the numbers using 9 or 10 of the 32 bits.
        for idx in [
            SlotIndex::default(),
            SlotIndex::for_values(500),
            SlotIndex::for_values(1000),
        ] {
            churn(idx);
        }
    }

    #[test]
    fn tags_use_the_bits_numbers_leave_free() {
        assert_eq!(SlotIndex::for_values(2).vbits, 2);
        assert_eq!(SlotIndex::for_values(3).vbits, 3);
        assert_eq!(SlotIndex::for_values(1_000_000).vbits, 20);
        assert_eq!(SlotIndex::default().vbits, 32);
        // The largest number fits and never reads as EMPTY, whatever the tag.
        let mut idx = SlotIndex::for_values(6);
        idx.insert(u64::MAX, 6, |_| u64::MAX);
        assert_eq!(idx.find(u64::MAX, |e| e == 6), Some(6));
    }

    fn churn(mut idx: SlotIndex) {
        let mut model = HashSet::new();
        let mut x = 12345u64;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = (x % 500) as u32;
            if model.contains(&v) {
                assert!(idx.remove(h(v), v, h));
                model.remove(&v);
            } else {
                assert_eq!(idx.find(h(v), |e| e == v), None);
                idx.insert(h(v), v, h);
                model.insert(v);
            }
            assert_eq!(idx.len(), model.len());
        }
        for v in 0..500 {
            assert_eq!(
                idx.find(h(v), |e| e == v).is_some(),
                model.contains(&v),
                "{v}"
            );
        }
        assert!(!idx.remove(h(9999), 9999, h));
    }

    #[test]
    fn churn_at_a_steady_size_does_not_grow_the_table() {
        let mut idx = SlotIndex::for_values(2_000_000);
        let hash = |v: u32| ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(v);
        for v in 0..10_000 {
            idx.insert(hash(v), v, hash);
        }
        let buckets = idx.buckets();
        // A million replacements: one out, one in, as at the host cap.
        for v in 10_000..1_010_000u32 {
            let old = v - 10_000;
            assert!(idx.remove(hash(old), old, hash));
            idx.insert(hash(v), v, hash);
        }
        assert_eq!((idx.len(), idx.buckets()), (10_000, buckets));
        assert_eq!(buckets, 16_384, "10 000 entries at load ≤ 0.7");
    }
}
