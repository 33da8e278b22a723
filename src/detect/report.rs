//! Attack reports in FastNetMon's text form, built on [`FnmReport`] (beside the stages,
//! shared with the hooks, which parse what this writes) so the labels are exactly the
//! ones FastNetMon 1.2.4 hands its notify script, followed by what FastNetMon cannot give:
//! the attack's vectors and the top sources of the attack traffic with their share.
//! "Attack type" and "Attack protocol" name the dominant vector (the largest share of the
//! attack's packets so far); the other vectors are listed after it.
//!
//! Pure: an attack (and the other direction's rates) in, text out.

use std::fmt::Write;

use super::Attack;
use crate::aggregate::Rates;
use crate::fnm_report::FnmReport;
use crate::model::Direction;

/// FastNetMon's `ban` report for `a`. Rates are those the attack started with;
/// `other` is the host's traffic in the opposite direction as the caller read it (the
/// API: its current rates, when the report is asked for).
pub fn text(a: &Attack, other: &Rates) -> String {
    // An attack only an external detector saw has no vectors: its own type stands.
    let (attack_type, protocol) = a
        .dominant()
        .map_or((a.attack_type, a.protocol), |v| (v.attack_type, v.protocol));
    let (inc, out) = match a.direction {
        Direction::Incoming => (&a.initial, other),
        Direction::Outgoing => (other, &a.initial),
    };
    let mbps = |bps: u64| Some(bps / 1_000_000);
    let avg_size = |r: &Rates| {
        if r.pps == 0 {
            0.0
        } else {
            ((r.bps / 8) as f64 / r.pps as f64 * 10.0).round() / 10.0
        }
    };
    let r = FnmReport {
        ip: Some(a.ip),
        attack_type: Some(attack_type),
        initial_attack_power: Some(a.initial.pps),
        peak_attack_power: Some(a.peak_pps),
        direction: Some(a.direction.as_str().to_string()),
        protocol: Some(protocol),
        total_incoming_traffic_mbps: mbps(inc.bps),
        total_outgoing_traffic_mbps: mbps(out.bps),
        total_incoming_pps: Some(inc.pps),
        total_outgoing_pps: Some(out.pps),
        total_incoming_flows: Some(inc.flows_per_second),
        total_outgoing_flows: Some(out.flows_per_second),
        // flowguard's rates are already window averages.
        average_incoming_traffic_mbps: mbps(inc.bps),
        average_outgoing_traffic_mbps: mbps(out.bps),
        average_incoming_pps: Some(inc.pps),
        average_outgoing_pps: Some(out.pps),
        average_incoming_flows: Some(inc.flows_per_second),
        average_outgoing_flows: Some(out.flows_per_second),
        incoming_fragmented_traffic_mbps: mbps(inc.fragment_bps),
        outgoing_fragmented_traffic_mbps: mbps(out.fragment_bps),
        incoming_fragmented_pps: Some(inc.fragment_pps),
        outgoing_fragmented_pps: Some(out.fragment_pps),
        incoming_tcp_traffic_mbps: mbps(inc.tcp_bps),
        outgoing_tcp_traffic_mbps: mbps(out.tcp_bps),
        incoming_tcp_pps: Some(inc.tcp_pps),
        outgoing_tcp_pps: Some(out.tcp_pps),
        incoming_syn_tcp_traffic_mbps: mbps(inc.tcp_syn_bps),
        outgoing_syn_tcp_traffic_mbps: mbps(out.tcp_syn_bps),
        incoming_syn_tcp_pps: Some(inc.tcp_syn_pps),
        outgoing_syn_tcp_pps: Some(out.tcp_syn_pps),
        incoming_udp_traffic_mbps: mbps(inc.udp_bps),
        outgoing_udp_traffic_mbps: mbps(out.udp_bps),
        incoming_udp_pps: Some(inc.udp_pps),
        outgoing_udp_pps: Some(out.udp_pps),
        incoming_icmp_traffic_mbps: mbps(inc.icmp_bps),
        outgoing_icmp_traffic_mbps: mbps(out.icmp_bps),
        incoming_icmp_pps: Some(inc.icmp_pps),
        outgoing_icmp_pps: Some(out.icmp_pps),
        average_incoming_packet_size: Some(avg_size(inc)),
        average_outgoing_packet_size: Some(avg_size(out)),
        ..FnmReport::default()
    };
    let mut s = r.to_text();
    let _ = writeln!(s, "\nAttack id: {}", a.id);
    let _ = writeln!(s, "Hostgroup: {}", a.hostgroup);
    let _ = writeln!(s, "Threshold: {}", a.threshold);
    if a.attack_type != attack_type {
        let _ = writeln!(s, "Classification of all its traffic: {}", a.attack_type);
    }
    if a.vectors.len() > 1 {
        // The rows have no colon, and the heading's label is none FastNetMon knows: a
        // FastNetMon report parser reads this report as FastNetMon's own.
        let _ = writeln!(s, "Other vectors (share of attack packets, peak rates):");
        for v in &a.vectors[1..] {
            let _ = writeln!(
                s,
                "  {} {} {:.1}% peak {} pps {} Mbps{}",
                v.attack_type,
                v.protocol,
                v.share * 100.0,
                v.peak_pps,
                v.peak_bps / 1_000_000,
                if v.over_threshold {
                    " (over its own threshold)"
                } else {
                    ""
                }
            );
        }
    }
    if !a.top_sources.is_empty() {
        let _ = writeln!(s, "Top sources (share of attack packets):");
        for t in &a.top_sources {
            let port = t.port.map(|p| format!(":{p}")).unwrap_or_default();
            let _ = writeln!(s, "  {}{port} {:.1}%", t.ip, t.share * 100.0);
        }
    }
    s
}

/// The BGP routes of an attack as the report lists them under its text: one line each,
/// `route: state (reason)`. The mitigate stage owns the routes; the API hands them here
/// as plain strings so detect does not depend on mitigate.
pub fn routes_section(routes: &[(String, String, Option<String>)]) -> String {
    if routes.is_empty() {
        return String::new();
    }
    let mut s = String::from("BGP routes:\n");
    for (route, state, reason) in routes {
        let why = reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let _ = writeln!(s, "  {route}: {state}{why}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::{Counters, HostKey};
    use crate::detect::config::Thresholds;
    use crate::detect::{classify, Detector, Group, Observation};
    use crate::fnm_report::parse_report;
    use crate::model::{AttackType, Protocol};

    #[test]
    fn attack_type_names_the_dominant_vector_and_the_others_are_listed() {
        let t = Thresholds {
            threshold_pps: Some(1000),
            ..Thresholds::default()
        };
        let g = Group {
            name: "g".into(),
            incoming: t.clone(),
            outgoing: t.clone(),
            total: None,
            ban_time_seconds: 5,
        };
        let mut d = Detector::new(vec![g], 1, false, 10);
        let key = HostKey {
            ip: "192.0.2.1".parse().unwrap(),
            dir: Direction::Incoming,
        };
        // 45 % SYN, 40 % UDP, 15 % ACK: no class has half, the dominant vector is SYN.
        let c = Counters {
            packets: 20_000,
            bytes: 20_000 * 80,
            tcp_packets: 12_000,
            tcp_bytes: 12_000 * 60,
            tcp_syn_packets: 9_000,
            tcp_syn_bytes: 9_000 * 60,
            udp_packets: 8_000,
            udp_bytes: 8_000 * 110,
            ..Counters::default()
        };
        let rates = Rates::from_window(&c, 5);
        let o = Observation {
            key,
            group: 0,
            counters: c,
            rates,
            over: classify::exceeded(&t, &rates),
        };
        d.observe(1_000, &[o]);
        let a = d.get_active(&key).unwrap();
        assert_eq!(a.attack_type, AttackType::Unknown);
        let text = text(a, &Rates::default());
        let r = parse_report(&text);
        assert_eq!(r.attack_type, Some(AttackType::SynFlood), "{text}");
        assert_eq!(r.protocol, Some(Protocol::Tcp));
        assert!(
            text.contains("Classification of all its traffic: unknown"),
            "{text}"
        );
        let others = text
            .split("Other vectors (share of attack packets, peak rates):\n")
            .nth(1)
            .unwrap_or_default();
        assert!(
            others.starts_with("  udp_flood udp 40.0% peak 1600 pps"),
            "{text}"
        );
        assert!(!others.contains("syn_flood"), "{text}");
    }
}
