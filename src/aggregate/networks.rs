//! Longest-prefix matching for protected networks, hostgroups and the whitelist.
//!
//! Prefixes are inserted into one hash map per distinct prefix length ([`PrefixMap`]),
//! then compiled into a sorted list of disjoint address ranges ([`RangeMap`]): every
//! prefix start and end is a range boundary, so the longest match is the same for every
//! address of a range. A lookup counts the boundaries at or below the address (two per
//! prefix at most; straight through up to `LINEAR_MAX` ranges, by binary search
//! beyond), with no hashing: it runs once or twice per flow record, and the per-length
//! hash probes it replaced were a fifth of the collector's CPU.
//! The protected networks and the hostgroups compile into one map, so a record's
//! destination costs one search for both "protected?" and "which group?".

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

/// Builder: one hash map per distinct prefix length, probed from the longest length down.
#[derive(Debug, Clone)]
struct PrefixMap<T> {
    v4: Vec<(u8, HashMap<u32, T>)>,
    v6: Vec<(u8, HashMap<u128, T>)>,
}

impl<T> Default for PrefixMap<T> {
    fn default() -> Self {
        PrefixMap {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl<T: Clone> PrefixMap<T> {
    /// Inserts `net`; an equal prefix inserted later replaces the earlier value.
    pub fn insert(&mut self, net: IpNet, value: T) {
        let len = net.prefix_len();
        match net.network() {
            IpAddr::V4(a) => {
                let key = u32::from(a) & mask4(len);
                let pos = self.v4.iter().position(|(l, _)| *l == len);
                let m = match pos {
                    Some(p) => &mut self.v4[p].1,
                    None => {
                        self.v4.push((len, HashMap::new()));
                        self.v4.sort_by_key(|e| std::cmp::Reverse(e.0));
                        let p = self.v4.iter().position(|(l, _)| *l == len).unwrap_or(0);
                        &mut self.v4[p].1
                    }
                };
                m.insert(key, value);
            }
            IpAddr::V6(a) => {
                let key = u128::from(a) & mask6(len);
                let pos = self.v6.iter().position(|(l, _)| *l == len);
                let m = match pos {
                    Some(p) => &mut self.v6[p].1,
                    None => {
                        self.v6.push((len, HashMap::new()));
                        self.v6.sort_by_key(|e| std::cmp::Reverse(e.0));
                        let p = self.v6.iter().position(|(l, _)| *l == len).unwrap_or(0);
                        &mut self.v6[p].1
                    }
                };
                m.insert(key, value);
            }
        }
    }

    /// Value of the longest prefix containing `ip`.
    fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(l, m)| m.get(&(a & mask4(*l))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(l, m)| m.get(&(a & mask6(*l))))
            }
        }
    }

    /// Every address where the longest match may change: each prefix's first address and
    /// the one after its last (0 is always one).
    fn boundaries(&self) -> Boundaries {
        let mut b = Boundaries {
            v4: vec![0],
            v6: vec![0],
        };
        for (len, m) in &self.v4 {
            let host = !mask4(*len);
            for &start in m.keys() {
                b.v4.push(start);
                // None when the prefix runs to the end of the address space.
                b.v4.extend((start | host).checked_add(1));
            }
        }
        for (len, m) in &self.v6 {
            let host = !mask6(*len);
            for &start in m.keys() {
                b.v6.push(start);
                b.v6.extend((start | host).checked_add(1));
            }
        }
        b
    }
}

struct Boundaries {
    v4: Vec<u32>,
    v6: Vec<u128>,
}

/// Most ranges counted linearly instead of by binary search (see [`Ranges::get`]).
const LINEAR_MAX: usize = 16;

/// Sorted disjoint ranges, each with the value every address in it maps to.
#[derive(Debug, Clone)]
struct Ranges<K, V> {
    /// First address of each range; `starts[0]` is 0, so every address is in one range.
    starts: Vec<K>,
    values: Vec<Option<V>>,
}

impl<K: Ord + Copy, V: Copy + PartialEq> Ranges<K, V> {
    /// Ranges from the boundaries, each valued by `value_at` its first address; adjacent
    /// ranges with equal values merge.
    fn build(bounds: Vec<K>, mut value_at: impl FnMut(K) -> Option<V>) -> Self {
        let mut r = Ranges {
            starts: Vec::with_capacity(bounds.len()),
            values: Vec::with_capacity(bounds.len()),
        };
        for b in bounds {
            let v = value_at(b);
            if r.values.last() != Some(&v) {
                r.starts.push(b);
                r.values.push(v);
            }
        }
        r
    }

    #[inline]
    fn get(&self, a: K) -> Option<V> {
        // The first range starts at 0, so the count of starts ≤ a is at least 1
        // whenever the map is non-empty. A few ranges (a handful of protected prefixes,
        // the usual case) are counted straight through, with no branch on the address;
        // the binary search's loop cost several times the instructions, twice per record
        // (cachegrind: see `Aggregate::ingest` in `stage.rs`).
        let i = if self.starts.len() <= LINEAR_MAX {
            self.starts.iter().map(|s| usize::from(*s <= a)).sum()
        } else {
            self.starts.partition_point(|s| *s <= a)
        };
        self.values.get(i.checked_sub(1)?).copied().flatten()
    }
}

/// Longest-prefix match compiled to ranges, IPv4 and IPv6.
#[derive(Debug, Clone)]
pub struct RangeMap<V> {
    v4: Ranges<u32, V>,
    v6: Ranges<u128, V>,
}

impl<V: Copy + PartialEq> RangeMap<V> {
    /// `value_at(ip)` must be constant between consecutive boundaries (of all `bounds`).
    fn compile(bounds: &[Boundaries], mut value_at: impl FnMut(IpAddr) -> Option<V>) -> Self {
        let mut v4: Vec<u32> = bounds.iter().flat_map(|b| b.v4.iter().copied()).collect();
        let mut v6: Vec<u128> = bounds.iter().flat_map(|b| b.v6.iter().copied()).collect();
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        RangeMap {
            v4: Ranges::build(v4, |a| value_at(IpAddr::from(a.to_be_bytes()))),
            v6: Ranges::build(v6, |a| value_at(IpAddr::from(a.to_be_bytes()))),
        }
    }

    #[inline]
    pub fn get(&self, ip: IpAddr) -> Option<V> {
        match ip {
            IpAddr::V4(a) => self.v4.get(u32::from(a)),
            IpAddr::V6(a) => self.v6.get(u128::from(a)),
        }
    }
}

impl<V> Default for RangeMap<V> {
    fn default() -> Self {
        RangeMap {
            v4: Ranges {
                starts: Vec::new(),
                values: Vec::new(),
            },
            v6: Ranges {
                starts: Vec::new(),
                values: Vec::new(),
            },
        }
    }
}

/// Protected networks, each address's hostgroup, and the whitelist.
#[derive(Debug, Clone, Default)]
pub struct Networks {
    /// The hostgroup of each protected address; None outside the protected networks.
    protected: RangeMap<u16>,
    whitelist: RangeMap<()>,
    /// Group of protected addresses no hostgroup prefix covers.
    pub default_group: u16,
}

impl Networks {
    /// `groups[i]` holds the prefixes of hostgroup `i`; `default_group` covers the rest.
    pub fn new(
        protected: &[IpNet],
        groups: &[Vec<IpNet>],
        default_group: u16,
        whitelist: &[IpNet],
    ) -> Self {
        let mut prot = PrefixMap::default();
        for p in protected {
            prot.insert(p.trunc(), ());
        }
        let mut grp = PrefixMap::default();
        for (i, g) in groups.iter().enumerate() {
            for p in g {
                grp.insert(p.trunc(), i as u16);
            }
        }
        // Boundaries of both sets, so that both "protected?" and "which group?" are
        // constant within each compiled range.
        let protected = RangeMap::compile(&[prot.boundaries(), grp.boundaries()], |ip| {
            prot.lookup(ip)?;
            Some(grp.lookup(ip).copied().unwrap_or(default_group))
        });
        let mut wl = PrefixMap::default();
        for p in whitelist {
            wl.insert(p.trunc(), ());
        }
        let whitelist = RangeMap::compile(&[wl.boundaries()], |ip| wl.lookup(ip).copied());
        Networks {
            protected,
            whitelist,
            default_group,
        }
    }

    /// The hostgroup of `ip` if it is protected.
    #[inline]
    pub fn protected_group(&self, ip: IpAddr) -> Option<u16> {
        self.protected.get(ip)
    }

    pub fn is_whitelisted(&self, ip: IpAddr) -> bool {
        self.whitelist.get(ip).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    /// The longest match by brute force over the prefixes (`groups[i]` → `i`; of equal
    /// prefixes the later group's, as `Networks::new` keeps it).
    fn brute(groups: &[Vec<IpNet>], ip: IpAddr) -> Option<u16> {
        let mut best: Option<(u8, u16)> = None;
        for (g, nets) in groups.iter().enumerate() {
            for n in nets {
                if n.contains(&ip) && best.is_none_or(|(l, _)| n.prefix_len() >= l) {
                    best = Some((n.prefix_len(), g as u16));
                }
            }
        }
        best.map(|(_, g)| g)
    }

    #[test]
    fn few_and_many_ranges_give_the_longest_match() {
        // 3 prefixes compile to fewer ranges than LINEAR_MAX (counted straight through),
        // 40 to more (binary search): both must agree with brute force everywhere,
        // including the range edges.
        let mut x = 0x2545_F491u32;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for count in [3usize, 40] {
            let groups: Vec<Vec<IpNet>> = (0..count)
                .map(|_| {
                    let len = 8 + (next() % 17) as u8;
                    let a = std::net::Ipv4Addr::from(next() & 0x0FFF_FFFF | 0x0A00_0000);
                    vec![IpNet::new(IpAddr::V4(a), len).unwrap().trunc()]
                })
                .collect();
            let all: Vec<IpNet> = groups.iter().flatten().copied().collect();
            let nets = Networks::new(&all, &groups, u16::MAX, &[]);
            assert_eq!(
                nets.protected.v4.starts.len() <= LINEAR_MAX,
                count == 3,
                "{count} prefixes: {} ranges",
                nets.protected.v4.starts.len()
            );
            let mut probes: Vec<u32> = nets.protected.v4.starts.clone();
            probes.extend(probes.clone().iter().map(|a| a.wrapping_sub(1)));
            probes.extend((0..20_000).map(|_| next()));
            probes.extend((0..20_000).map(|_| next() & 0x0FFF_FFFF | 0x0A00_0000));
            for a in probes {
                let ip = IpAddr::V4(a.into());
                assert_eq!(nets.protected_group(ip), brute(&groups, ip), "{ip}");
            }
        }
    }

    #[test]
    fn most_specific_group_wins_and_default_covers_the_rest() {
        let nets = Networks::new(
            &[n("192.0.2.0/24"), n("2001:db8::/32")],
            &[
                vec![n("192.0.2.0/25")],
                vec![n("192.0.2.128/28"), n("2001:db8:1::/48")],
            ],
            7,
            &[n("192.0.2.200/32")],
        );
        assert_eq!(nets.protected_group("192.0.2.1".parse().unwrap()), Some(0));
        assert_eq!(
            nets.protected_group("192.0.2.130".parse().unwrap()),
            Some(1)
        );
        assert_eq!(
            nets.protected_group("192.0.2.250".parse().unwrap()),
            Some(7)
        );
        assert_eq!(
            nets.protected_group("2001:db8:1::5".parse().unwrap()),
            Some(1)
        );
        assert_eq!(
            nets.protected_group("2001:db8:2::5".parse().unwrap()),
            Some(7)
        );
        assert_eq!(nets.protected_group("198.51.100.1".parse().unwrap()), None);
        assert!(nets.is_whitelisted("192.0.2.200".parse().unwrap()));
        assert!(!nets.is_whitelisted("192.0.2.201".parse().unwrap()));
    }

    #[test]
    fn zero_length_prefix_matches_everything() {
        let nets = Networks::new(&[n("0.0.0.0/0")], &[], 0, &[]);
        assert_eq!(
            nets.protected_group("203.0.113.9".parse().unwrap()),
            Some(0)
        );
        assert_eq!(nets.protected_group("::1".parse().unwrap()), None);
    }

    /// Brute force: the longest prefix of `nets` containing `ip`.
    fn longest<T>(nets: &[(IpNet, T)], ip: IpAddr) -> Option<&T> {
        nets.iter()
            .filter(|(p, _)| p.contains(&ip))
            .max_by_key(|(p, _)| p.prefix_len())
            .map(|(_, v)| v)
    }

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// The compiled ranges agree with a brute-force longest match for random nested
    /// prefixes, at every prefix edge (first, last, one before, one after) and at random
    /// addresses; group prefixes outside the protected networks protect nothing.
    #[test]
    fn compiled_ranges_match_brute_force_longest_prefix() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            // Addresses from a small pool of /8s so prefixes nest and overlap.
            let v4 = |rng: &mut Rng, min_len: u64| -> IpNet {
                let a = ((rng.next() % 4) as u32 + 10) << 24 | (rng.next() as u32 & 0x00ff_ffff);
                let len = (min_len + rng.next() % (33 - min_len)) as u8;
                IpNet::from(ipnet::Ipv4Net::new(a.into(), len).unwrap()).trunc()
            };
            let v6 = |rng: &mut Rng| -> IpNet {
                let a = (0x2001_0db8u128 << 96) | (u128::from(rng.next()) << 32);
                let len = (32 + rng.next() % 97) as u8;
                IpNet::from(ipnet::Ipv6Net::new(a.into(), len).unwrap()).trunc()
            };
            let mut protected: Vec<IpNet> =
                (0..1 + rng.next() % 4).map(|_| v4(&mut rng, 8)).collect();
            protected.push(v6(&mut rng));
            if round % 10 == 0 {
                protected.push(n("0.0.0.0/0"));
                protected.push(n("255.255.255.255/32"));
                protected.push(n("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"));
            }
            let groups: Vec<Vec<IpNet>> = (0..3)
                .map(|_| {
                    let mut g: Vec<IpNet> = (0..rng.next() % 5).map(|_| v4(&mut rng, 12)).collect();
                    g.push(v6(&mut rng));
                    g
                })
                .collect();
            let whitelist: Vec<IpNet> = (0..rng.next() % 3).map(|_| v4(&mut rng, 16)).collect();
            let nets = Networks::new(&protected, &groups, 9, &whitelist);

            let prot: Vec<(IpNet, ())> = protected.iter().map(|p| (*p, ())).collect();
            let grp: Vec<(IpNet, u16)> = groups
                .iter()
                .enumerate()
                .flat_map(|(i, g)| g.iter().map(move |p| (*p, i as u16)))
                .collect();
            let wl: Vec<(IpNet, ())> = whitelist.iter().map(|p| (*p, ())).collect();
            let mut probes: Vec<IpAddr> = Vec::new();
            for p in protected
                .iter()
                .chain(groups.iter().flatten())
                .chain(&whitelist)
            {
                for a in [p.network(), p.broadcast()] {
                    probes.push(a);
                    match a {
                        IpAddr::V4(x) => {
                            let x = u32::from(x);
                            probes.extend(
                                [x.wrapping_sub(1), x.wrapping_add(1)]
                                    .map(|y| IpAddr::from(y.to_be_bytes())),
                            );
                        }
                        IpAddr::V6(x) => {
                            let x = u128::from(x);
                            probes.extend(
                                [x.wrapping_sub(1), x.wrapping_add(1)]
                                    .map(|y| IpAddr::from(y.to_be_bytes())),
                            );
                        }
                    }
                }
            }
            for _ in 0..2000 {
                let x = ((rng.next() % 4) as u32 + 10) << 24 | (rng.next() as u32 & 0x00ff_ffff);
                probes.push(IpAddr::from(x.to_be_bytes()));
                probes.push(IpAddr::from(
                    ((0x2001_0db8u128 << 96) | (u128::from(rng.next()) << 32)).to_be_bytes(),
                ));
            }
            probes.extend(
                [
                    "0.0.0.0",
                    "255.255.255.255",
                    "::",
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                ]
                .map(|a| a.parse::<IpAddr>().unwrap()),
            );
            for ip in probes {
                let want = longest(&prot, ip).map(|_| longest(&grp, ip).copied().unwrap_or(9));
                assert_eq!(nets.protected_group(ip), want, "round {round} ip {ip}");
                assert_eq!(
                    nets.is_whitelisted(ip),
                    longest(&wl, ip).is_some(),
                    "round {round} ip {ip}"
                );
            }
        }
    }

    #[test]
    fn nothing_protected_protects_nothing() {
        let nets = Networks::new(&[], &[], 0, &[]);
        assert_eq!(nets.protected_group("10.0.0.1".parse().unwrap()), None);
        assert_eq!(nets.protected_group("::1".parse().unwrap()), None);
        assert!(!Networks::default().is_whitelisted("10.0.0.1".parse().unwrap()));
    }
}
