//! `[[hostgroup]]` configuration: thresholds per group of protected prefixes.
//!
//! A threshold of 0 or absent is off. `[hostgroup.outgoing]` overrides, key by key, the
//! thresholds for outgoing traffic (by default outgoing uses the same thresholds as
//! incoming). `[hostgroup.total]` holds thresholds on the sum over every host of the group
//! (incoming), which catches carpet bombing where each host stays under its own limit.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Calls `$m!` with the name of every threshold key, so the list is written once.
macro_rules! threshold_keys {
    ($m:ident) => {
        $m! {
            threshold_pps, threshold_mbps, threshold_flows,
            threshold_tcp_pps, threshold_tcp_mbps, threshold_tcp_flows,
            threshold_udp_pps, threshold_udp_mbps, threshold_udp_flows,
            threshold_icmp_pps, threshold_icmp_mbps, threshold_icmp_flows,
            threshold_syn_pps, threshold_syn_mbps,
            threshold_fragment_pps, threshold_fragment_mbps
        }
    };
}

macro_rules! thresholds_struct {
    ($($f:ident),*) => {
        /// Per-direction thresholds. pps and flows are per second, mbps is megabits/s.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Thresholds {
            $(pub $f: Option<u64>,)*
        }

        impl Thresholds {
            /// `self` with every key that `over` sets replaced by `over`'s value.
            pub fn overridden_by(&self, over: &Thresholds) -> Thresholds {
                Thresholds { $($f: over.$f.or(self.$f)),* }
            }
        }

        // The thresholds sit at the top level of `[[hostgroup]]` (FastNetMon's layout).
        // serde's `flatten` would hide unknown keys from the config checker, so the
        // fields are spelled out here instead.
        /// One `[[hostgroup]]`.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        pub struct HostgroupConfig {
            pub name: String,
            /// Prefixes of this group; the most specific prefix over all groups wins. A
            /// group with no prefixes (or named `default`) covers the rest of the
            /// protected networks.
            #[serde(default)]
            pub prefixes: Vec<IpNet>,
            /// An attack ends once every rate has stayed under the thresholds this long.
            #[serde(default = "default_ban_time")]
            pub ban_time_seconds: u32,
            /// Overrides for outgoing traffic, key by key.
            #[serde(default)]
            pub outgoing: Option<Thresholds>,
            /// Thresholds on the sum over all hosts of the group (incoming).
            #[serde(default)]
            pub total: Option<Thresholds>,
            $(#[serde(default)] pub $f: Option<u64>,)*
        }

        impl HostgroupConfig {
            /// Thresholds for incoming traffic (the top-level keys).
            pub fn incoming(&self) -> Thresholds {
                Thresholds { $($f: self.$f),* }
            }
        }
    };
}

threshold_keys!(thresholds_struct);

impl HostgroupConfig {
    /// Thresholds for outgoing traffic: incoming, overridden by `[hostgroup.outgoing]`.
    pub fn outgoing_thresholds(&self) -> Thresholds {
        match &self.outgoing {
            Some(o) => self.incoming().overridden_by(o),
            None => self.incoming(),
        }
    }
}

fn default_ban_time() -> u32 {
    300
}

pub fn validate_hostgroups(groups: &[HostgroupConfig]) -> Vec<String> {
    let mut p = Vec::new();
    let mut names = std::collections::HashSet::new();
    let mut defaults = 0;
    for (i, g) in groups.iter().enumerate() {
        if g.name.is_empty() {
            p.push(format!("hostgroup[{i}].name: must not be empty"));
        }
        if !names.insert(g.name.clone()) {
            p.push(format!("hostgroup[{i}].name: {:?} is used twice", g.name));
        }
        if g.prefixes.is_empty() || g.name == "default" {
            defaults += 1;
        }
    }
    if defaults > 1 {
        p.push("hostgroup: more than one default group (no prefixes, or named \"default\")".into());
    }
    p
}
