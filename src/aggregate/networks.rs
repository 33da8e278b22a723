//! Longest-prefix matching for protected networks, hostgroups and the whitelist.
//!
//! One hash map per distinct prefix length, probed from the longest length down: cost is
//! the number of distinct lengths (a handful in practice), not the number of prefixes.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct PrefixMap<T> {
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
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
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

    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }
}

/// Protected networks, each address's hostgroup, and the whitelist.
#[derive(Debug, Clone, Default)]
pub struct Networks {
    protected: PrefixMap<()>,
    groups: PrefixMap<u16>,
    whitelist: PrefixMap<()>,
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
        let mut n = Networks {
            default_group,
            ..Networks::default()
        };
        for p in protected {
            n.protected.insert(p.trunc(), ());
        }
        for (i, g) in groups.iter().enumerate() {
            for p in g {
                n.groups.insert(p.trunc(), i as u16);
            }
        }
        for p in whitelist {
            n.whitelist.insert(p.trunc(), ());
        }
        n
    }

    /// The hostgroup of `ip` if it is protected.
    pub fn protected_group(&self, ip: IpAddr) -> Option<u16> {
        self.protected.lookup(ip)?;
        Some(
            self.groups
                .lookup(ip)
                .copied()
                .unwrap_or(self.default_group),
        )
    }

    pub fn is_whitelisted(&self, ip: IpAddr) -> bool {
        self.whitelist.lookup(ip).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
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
}
