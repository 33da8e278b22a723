//! Attack reports in FastNetMon's text form, built on the hooks' [`FnmReport`] so the
//! labels are exactly the ones FastNetMon 1.2.4 hands its notify script, followed by what
//! FastNetMon cannot give: the top sources of the attack traffic with their share.
//!
//! Pure: an attack (and the other direction's rates) in, text out.

use std::fmt::Write;

use super::Attack;
use crate::aggregate::Rates;
use crate::hooks::fastnetmon::FnmReport;
use crate::model::Direction;

/// FastNetMon's `ban` report for `a`. Rates are those the attack started with;
/// `other` is the host's traffic in the opposite direction at the same time.
pub fn text(a: &Attack, other: &Rates) -> String {
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
        attack_type: Some(a.attack_type),
        initial_attack_power: Some(a.initial.pps),
        peak_attack_power: Some(a.peak_pps),
        direction: Some(a.direction.as_str().to_string()),
        protocol: Some(a.protocol),
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
