//! Attack classification in FastNetMon's vocabulary, and which threshold a rate breaks.
//!
//! Rule (on the attack traffic's averaged counters, one direction of one host):
//! 1. fragments ≥ half the packets → `ip_fragmentation` (checked first: a fragment flood
//!    is also a UDP or TCP flood, and the fragments are what hurts);
//! 2. TCP SYN without ACK ≥ half → `syn_flood`;
//! 3. ICMP (v4 or v6) ≥ half → `icmp_flood`;
//! 4. UDP ≥ half → `udp_flood`;
//! 5. otherwise `unknown`.
//!
//! The protocol is the one of the winning class, or for `ip_fragmentation` and `unknown`
//! whichever of tcp/udp/icmp carries at least half of all the packets, else `unknown`
//! (the counters do not say which protocol the fragments carry). FastNetMon applies a
//! similar majority rule with a 90 % share; half is used here so a flood mixed with
//! legitimate traffic is still named.

use crate::aggregate::{Counters, Rates};
use crate::detect::config::Thresholds;
use crate::model::{AttackType, Protocol};

pub fn classify(c: &Counters) -> (AttackType, Protocol) {
    let total = c.packets.max(1);
    let half = |x: u64| x * 2 >= total && x > 0;
    let majority = || {
        if half(c.tcp_packets) {
            Protocol::Tcp
        } else if half(c.udp_packets) {
            Protocol::Udp
        } else if half(c.icmp_packets) {
            Protocol::Icmp
        } else {
            Protocol::Unknown
        }
    };
    if half(c.fragment_packets) {
        (AttackType::IpFragmentation, majority())
    } else if half(c.tcp_syn_packets) {
        (AttackType::SynFlood, Protocol::Tcp)
    } else if half(c.icmp_packets) {
        (AttackType::IcmpFlood, Protocol::Icmp)
    } else if half(c.udp_packets) {
        (AttackType::UdpFlood, Protocol::Udp)
    } else {
        (AttackType::Unknown, majority())
    }
}

/// The first threshold that `r` breaks, by its config key name, or None.
///
/// "Over" means strictly above, as in FastNetMon; 0 means off. A threshold that is not
/// set costs one branch (a hostgroup sets a few of the 16): building all 16 (limit,
/// value) pairs first, with their six divisions to Mbit/s, was 9 % of the detection
/// pass at 1 M hosts (perf).
pub fn exceeded(t: &Thresholds, r: &Rates) -> Option<&'static str> {
    let over = |lim: Option<u64>, val: u64| matches!(lim, Some(l) if l > 0 && val > l);
    let over_mbps =
        |lim: Option<u64>, bps: u64| matches!(lim, Some(l) if l > 0 && bps / 1_000_000 > l);
    let checks: [(bool, &'static str); 16] = [
        (over(t.threshold_pps, r.pps), "threshold_pps"),
        (over_mbps(t.threshold_mbps, r.bps), "threshold_mbps"),
        (
            over(t.threshold_flows, r.flows_per_second),
            "threshold_flows",
        ),
        (over(t.threshold_tcp_pps, r.tcp_pps), "threshold_tcp_pps"),
        (
            over_mbps(t.threshold_tcp_mbps, r.tcp_bps),
            "threshold_tcp_mbps",
        ),
        (
            over(t.threshold_tcp_flows, r.tcp_flows_per_second),
            "threshold_tcp_flows",
        ),
        (over(t.threshold_udp_pps, r.udp_pps), "threshold_udp_pps"),
        (
            over_mbps(t.threshold_udp_mbps, r.udp_bps),
            "threshold_udp_mbps",
        ),
        (
            over(t.threshold_udp_flows, r.udp_flows_per_second),
            "threshold_udp_flows",
        ),
        (over(t.threshold_icmp_pps, r.icmp_pps), "threshold_icmp_pps"),
        (
            over_mbps(t.threshold_icmp_mbps, r.icmp_bps),
            "threshold_icmp_mbps",
        ),
        (
            over(t.threshold_icmp_flows, r.icmp_flows_per_second),
            "threshold_icmp_flows",
        ),
        (
            over(t.threshold_syn_pps, r.tcp_syn_pps),
            "threshold_syn_pps",
        ),
        (
            over_mbps(t.threshold_syn_mbps, r.tcp_syn_bps),
            "threshold_syn_mbps",
        ),
        (
            over(t.threshold_fragment_pps, r.fragment_pps),
            "threshold_fragment_pps",
        ),
        (
            over_mbps(t.threshold_fragment_mbps, r.fragment_bps),
            "threshold_fragment_mbps",
        ),
    ];
    checks.iter().find(|(o, _)| *o).map(|(_, k)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(f: impl FnOnce(&mut Counters)) -> Counters {
        let mut c = Counters::default();
        f(&mut c);
        c
    }

    #[test]
    fn the_four_floods_and_unknown() {
        let syn = c(|c| {
            c.packets = 100;
            c.tcp_packets = 100;
            c.tcp_syn_packets = 95;
        });
        assert_eq!(classify(&syn), (AttackType::SynFlood, Protocol::Tcp));
        let icmp = c(|c| {
            c.packets = 100;
            c.icmp_packets = 90;
            c.udp_packets = 10;
        });
        assert_eq!(classify(&icmp), (AttackType::IcmpFlood, Protocol::Icmp));
        let udp = c(|c| {
            c.packets = 100;
            c.udp_packets = 100;
        });
        assert_eq!(classify(&udp), (AttackType::UdpFlood, Protocol::Udp));
        // softflowd: 20 000 of 25 000 UDP packets in the ports-0/0 fragment record.
        let frag = c(|c| {
            c.packets = 25_000;
            c.udp_packets = 25_000;
            c.fragment_packets = 20_000;
        });
        assert_eq!(
            classify(&frag),
            (AttackType::IpFragmentation, Protocol::Udp)
        );
        let bulk_tcp = c(|c| {
            c.packets = 100;
            c.tcp_packets = 100;
        });
        assert_eq!(classify(&bulk_tcp), (AttackType::Unknown, Protocol::Tcp));
        assert_eq!(
            classify(&Counters::default()),
            (AttackType::Unknown, Protocol::Unknown)
        );
    }

    #[test]
    fn thresholds_are_strict_and_zero_is_off() {
        let t = Thresholds {
            threshold_pps: Some(1000),
            threshold_mbps: Some(0),
            threshold_syn_pps: Some(10),
            ..Thresholds::default()
        };
        let mut r = Rates {
            pps: 1000,
            bps: 10_000_000_000,
            ..Rates::default()
        };
        assert_eq!(exceeded(&t, &r), None);
        r.pps = 1001;
        assert_eq!(exceeded(&t, &r), Some("threshold_pps"));
        r.pps = 5;
        r.tcp_syn_pps = 11;
        assert_eq!(exceeded(&t, &r), Some("threshold_syn_pps"));
    }
}
