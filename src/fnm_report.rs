//! FastNetMon's attack report: the text a notify script gets on stdin with `ban`.
//!
//! [`parse_report`] reads every form from 1.1.x to 1.2.6+: it matches lines by their label,
//! ignores lines it does not know, tolerates missing ones, and stops at the 1.2.6 dump
//! sections ("Attack traffic dump", "Flow dump"), whose packet lines carry `protocol:` and
//! similar words that must not be mistaken for report fields. [`FnmReport::to_text`] writes
//! the 1.2.4 form (labels, order, units, the blank line before the packet sizes), so tools
//! written against FastNetMon's reports can read flowguard's own.
//!
//! Pure: text in, struct out; no I/O.

use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{AttackType, Direction, Protocol};

/// One numeric report line: its label, its unit, and where its value lives.
struct Counter {
    label: &'static str,
    unit: &'static str,
    get: fn(&FnmReport) -> Option<u64>,
    set: fn(&mut FnmReport) -> &mut Option<u64>,
}

/// Declares the report struct and the table of numeric lines from one list, so a field
/// cannot be added to one and forgotten in the other. The list is in FastNetMon's order.
macro_rules! report {
    ($( $field:ident = $label:literal, $unit:literal; )*) => {
        /// A FastNetMon attack report. Every field is optional: older versions lack some
        /// lines, 1.2.6 dropped the averages, and `unban` carries no report at all.
        /// Traffic values are in megabits per second, rates per second.
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct FnmReport {
            pub ip: Option<IpAddr>,
            pub attack_type: Option<AttackType>,
            pub initial_attack_power: Option<u64>,
            pub peak_attack_power: Option<u64>,
            /// FastNetMon's direction name as written (`incoming`, `outgoing`, `internal`,
            /// `other`); kept as text because flowguard's [`Direction`] has only two.
            pub direction: Option<String>,
            pub protocol: Option<Protocol>,
            $(pub $field: Option<u64>,)*
            /// Bytes; FastNetMon up to 1.2.5 only.
            pub average_incoming_packet_size: Option<f64>,
            pub average_outgoing_packet_size: Option<f64>,
        }

        const COUNTERS: &[Counter] = &[
            $(Counter {
                label: $label,
                unit: $unit,
                get: |r| r.$field,
                set: |r| &mut r.$field,
            },)*
        ];
    };
}

report! {
    total_incoming_traffic_mbps = "Total incoming traffic", "mbps";
    total_outgoing_traffic_mbps = "Total outgoing traffic", "mbps";
    total_incoming_pps = "Total incoming pps", "packets per second";
    total_outgoing_pps = "Total outgoing pps", "packets per second";
    total_incoming_flows = "Total incoming flows", "flows per second";
    total_outgoing_flows = "Total outgoing flows", "flows per second";
    average_incoming_traffic_mbps = "Average incoming traffic", "mbps";
    average_outgoing_traffic_mbps = "Average outgoing traffic", "mbps";
    average_incoming_pps = "Average incoming pps", "packets per second";
    average_outgoing_pps = "Average outgoing pps", "packets per second";
    average_incoming_flows = "Average incoming flows", "flows per second";
    average_outgoing_flows = "Average outgoing flows", "flows per second";
    incoming_fragmented_traffic_mbps = "Incoming ip fragmented traffic", "mbps";
    outgoing_fragmented_traffic_mbps = "Outgoing ip fragmented traffic", "mbps";
    incoming_fragmented_pps = "Incoming ip fragmented pps", "packets per second";
    outgoing_fragmented_pps = "Outgoing ip fragmented pps", "packets per second";
    incoming_dropped_traffic_mbps = "Incoming dropped traffic", "mbps";
    outgoing_dropped_traffic_mbps = "Outgoing dropped traffic", "mbps";
    incoming_dropped_pps = "Incoming dropped pps", "packets per second";
    outgoing_dropped_pps = "Outgoing dropped pps", "packets per second";
    incoming_tcp_traffic_mbps = "Incoming tcp traffic", "mbps";
    outgoing_tcp_traffic_mbps = "Outgoing tcp traffic", "mbps";
    incoming_tcp_pps = "Incoming tcp pps", "packets per second";
    outgoing_tcp_pps = "Outgoing tcp pps", "packets per second";
    incoming_syn_tcp_traffic_mbps = "Incoming syn tcp traffic", "mbps";
    outgoing_syn_tcp_traffic_mbps = "Outgoing syn tcp traffic", "mbps";
    incoming_syn_tcp_pps = "Incoming syn tcp pps", "packets per second";
    outgoing_syn_tcp_pps = "Outgoing syn tcp pps", "packets per second";
    incoming_udp_traffic_mbps = "Incoming udp traffic", "mbps";
    outgoing_udp_traffic_mbps = "Outgoing udp traffic", "mbps";
    incoming_udp_pps = "Incoming udp pps", "packets per second";
    outgoing_udp_pps = "Outgoing udp pps", "packets per second";
    incoming_icmp_traffic_mbps = "Incoming icmp traffic", "mbps";
    outgoing_icmp_traffic_mbps = "Outgoing icmp traffic", "mbps";
    incoming_icmp_pps = "Incoming icmp pps", "packets per second";
    outgoing_icmp_pps = "Outgoing icmp pps", "packets per second";
}

const AVG_SIZE_IN: &str = "Average packet size for incoming traffic";
const AVG_SIZE_OUT: &str = "Average packet size for outgoing traffic";

/// Whether `line` opens one of the 1.2.6+ dump sections that follow the report.
pub fn is_dump_header(line: &str) -> bool {
    let l = line.trim_start().to_ascii_lowercase();
    l.starts_with("attack traffic dump") || l.starts_with("flow dump")
}

/// The report part of a notify script's stdin: everything before the dump sections.
pub fn report_section(text: &str) -> &str {
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        if is_dump_header(line) {
            break;
        }
        end += line.len();
    }
    &text[..end]
}

/// First whitespace-separated token of `value` as a non-negative integer; fractional values
/// (`12.7`) are rounded, so a future FastNetMon printing decimals still parses.
fn parse_u64(value: &str) -> Option<u64> {
    let tok = value.split_whitespace().next()?;
    if let Ok(v) = tok.parse::<u64>() {
        return Some(v);
    }
    let f = tok.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

fn parse_f64(value: &str) -> Option<f64> {
    let f = value.split_whitespace().next()?.parse::<f64>().ok()?;
    f.is_finite().then_some(f)
}

/// Parses a FastNetMon report. Never fails: what it cannot read stays `None`. When a label
/// appears twice, the first one wins (later sections of old reports reuse words).
pub fn parse_report(text: &str) -> FnmReport {
    let mut r = FnmReport::default();
    for line in text.lines() {
        if is_dump_header(line) {
            break;
        }
        let Some((label, value)) = line.split_once(':') else {
            continue;
        };
        let label = label.trim();
        let value = value.trim();
        if label.eq_ignore_ascii_case("IP") {
            if r.ip.is_none() {
                // Some versions print `IP: a.b.c.d/32`; the address is what matters.
                let addr = value.split(['/', ' ']).next().unwrap_or("");
                r.ip = addr.parse().ok();
            }
        } else if label.eq_ignore_ascii_case("Attack type") {
            if r.attack_type.is_none() && !value.is_empty() {
                r.attack_type = Some(AttackType::parse(value));
            }
        } else if label.eq_ignore_ascii_case("Attack protocol") {
            if r.protocol.is_none() && !value.is_empty() {
                r.protocol = Some(Protocol::parse(value));
            }
        } else if label.eq_ignore_ascii_case("Attack direction") {
            if r.direction.is_none() && !value.is_empty() {
                r.direction = Some(value.to_ascii_lowercase());
            }
        } else if label.eq_ignore_ascii_case("Initial attack power") {
            r.initial_attack_power = r.initial_attack_power.or(parse_u64(value));
        } else if label.eq_ignore_ascii_case("Peak attack power") {
            r.peak_attack_power = r.peak_attack_power.or(parse_u64(value));
        } else if label.eq_ignore_ascii_case(AVG_SIZE_IN) {
            r.average_incoming_packet_size = r.average_incoming_packet_size.or(parse_f64(value));
        } else if label.eq_ignore_ascii_case(AVG_SIZE_OUT) {
            r.average_outgoing_packet_size = r.average_outgoing_packet_size.or(parse_f64(value));
        } else if let Some(c) = COUNTERS
            .iter()
            .find(|c| c.label.eq_ignore_ascii_case(label))
        {
            let slot = (c.set)(&mut r);
            if slot.is_none() {
                *slot = parse_u64(value);
            }
        }
    }
    r
}

/// Per-direction view of the rates classification needs.
struct Rates {
    total: u64,
    tcp: u64,
    syn: u64,
    udp: u64,
    icmp: u64,
    fragments: u64,
}

impl FnmReport {
    /// True when not a single report line was recognised (no report, or not FastNetMon's).
    pub fn is_empty(&self) -> bool {
        *self == FnmReport::default()
    }

    fn rates(&self, dir: Direction) -> Rates {
        let z = |v: Option<u64>| v.unwrap_or(0);
        let r = match dir {
            Direction::Incoming => Rates {
                total: z(self.total_incoming_pps),
                tcp: z(self.incoming_tcp_pps),
                syn: z(self.incoming_syn_tcp_pps),
                udp: z(self.incoming_udp_pps),
                icmp: z(self.incoming_icmp_pps),
                fragments: z(self.incoming_fragmented_pps),
            },
            Direction::Outgoing => Rates {
                total: z(self.total_outgoing_pps),
                tcp: z(self.outgoing_tcp_pps),
                syn: z(self.outgoing_syn_tcp_pps),
                udp: z(self.outgoing_udp_pps),
                icmp: z(self.outgoing_icmp_pps),
                fragments: z(self.outgoing_fragmented_pps),
            },
        };
        Rates {
            total: r
                .total
                .max(r.tcp.saturating_add(r.udp).saturating_add(r.icmp)),
            ..r
        }
    }

    /// Attack type and protocol derived from the per-protocol packet rates of `dir` alone:
    /// the protocol with the most packets; fragments making up half the packets or more →
    /// `ip_fragmentation`; SYN packets making up half the TCP packets or more →
    /// `syn_flood`; other TCP → `unknown` (FastNetMon has no name for it).
    pub fn derive_from_rates(&self, dir: Direction) -> (AttackType, Protocol) {
        let r = self.rates(dir);
        // Ties go to the first in this order, so the result does not depend on hashing.
        let mut proto = Protocol::Unknown;
        let mut best = 0;
        for (pps, p) in [
            (r.tcp, Protocol::Tcp),
            (r.udp, Protocol::Udp),
            (r.icmp, Protocol::Icmp),
        ] {
            if pps > best {
                best = pps;
                proto = p;
            }
        }
        let fragments_dominate = r.fragments > 0 && r.fragments.saturating_mul(2) >= r.total;
        let kind = if fragments_dominate {
            AttackType::IpFragmentation
        } else {
            match proto {
                Protocol::Tcp if r.syn.saturating_mul(2) >= r.tcp => AttackType::SynFlood,
                Protocol::Udp => AttackType::UdpFlood,
                Protocol::Icmp => AttackType::IcmpFlood,
                _ => AttackType::Unknown,
            }
        };
        (kind, proto)
    }

    /// Attack type and protocol for an attack in direction `dir`: the report's own
    /// `Attack type:`/`Attack protocol:` lines when they name something, otherwise derived
    /// from the per-protocol rates (FastNetMon 1.2.6+ often says `unknown`).
    pub fn classify(&self, dir: Direction) -> (AttackType, Protocol) {
        let dir = match self.direction.as_deref() {
            Some("outgoing") => Direction::Outgoing,
            Some("incoming") => Direction::Incoming,
            _ => dir,
        };
        let (derived_type, derived_proto) = self.derive_from_rates(dir);
        let kind = self
            .attack_type
            .filter(|t| *t != AttackType::Unknown)
            .unwrap_or(derived_type);
        let implied = match kind {
            AttackType::SynFlood => Protocol::Tcp,
            AttackType::UdpFlood => Protocol::Udp,
            AttackType::IcmpFlood => Protocol::Icmp,
            AttackType::IpFragmentation | AttackType::Unknown => derived_proto,
        };
        let proto = self
            .protocol
            .filter(|p| *p != Protocol::Unknown)
            .unwrap_or(implied);
        (kind, proto)
    }

    /// The report in FastNetMon 1.2.4's text form. Lines whose value is `None` are left
    /// out (set a field to `Some(0)` to print a zero, as FastNetMon does); the 1.2.6
    /// `dropped` lines are printed, where 1.2.6 puts them, only when present.
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(2048);
        // Writing into a String cannot fail; the results are ignored for that reason.
        if let Some(ip) = self.ip {
            let _ = writeln!(s, "IP: {ip}");
        }
        if let Some(t) = self.attack_type {
            let _ = writeln!(s, "Attack type: {t}");
        }
        if let Some(v) = self.initial_attack_power {
            let _ = writeln!(s, "Initial attack power: {v} packets per second");
        }
        if let Some(v) = self.peak_attack_power {
            let _ = writeln!(s, "Peak attack power: {v} packets per second");
        }
        if let Some(d) = &self.direction {
            let _ = writeln!(s, "Attack direction: {d}");
        }
        if let Some(p) = self.protocol {
            let _ = writeln!(s, "Attack protocol: {p}");
        }
        for c in COUNTERS {
            if let Some(v) = (c.get)(self) {
                let _ = writeln!(s, "{}: {v} {}", c.label, c.unit);
            }
        }
        if self.average_incoming_packet_size.is_some()
            || self.average_outgoing_packet_size.is_some()
        {
            s.push('\n');
            // FastNetMon prints one decimal and a trailing space after "bytes".
            if let Some(v) = self.average_incoming_packet_size {
                let _ = writeln!(s, "{AVG_SIZE_IN}: {v:.1} bytes ");
            }
            if let Some(v) = self.average_outgoing_packet_size {
                let _ = writeln!(s, "{AVG_SIZE_OUT}: {v:.1} bytes ");
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLES: &str = include_str!("../tests/data/hooks/fastnetmon-1.2.4-notify-samples.txt");
    const FLOODS: &str = include_str!("../tests/data/hooks/fastnetmon-1.2.4-notify-floods.txt");

    /// (argv, stdin) of every call in the `=== ... ARGS:` recording.
    fn sample_calls() -> Vec<(Vec<String>, String)> {
        let mut out = Vec::new();
        let mut cur: Option<(Vec<String>, String)> = None;
        for line in SAMPLES.split_inclusive('\n') {
            if let Some(rest) = line.strip_prefix("=== ") {
                if let Some((_, args)) = rest.split_once("ARGS: ") {
                    cur = Some((
                        args.split_whitespace().map(String::from).collect(),
                        String::new(),
                    ));
                } else if rest.trim_end() == "END" {
                    out.extend(cur.take());
                }
            } else if let Some((_, body)) = cur.as_mut() {
                body.push_str(line);
            }
        }
        out
    }

    /// (argv, stdin) of every call in the `##### BAN|UNBAN` recording.
    fn flood_calls() -> Vec<(Vec<String>, String)> {
        let mut out: Vec<(Vec<String>, String)> = Vec::new();
        for line in FLOODS.split_inclusive('\n') {
            if line.starts_with("##### ") {
                out.push((Vec::new(), String::new()));
            } else if let Some(rest) = line.strip_prefix("# notify argv: ") {
                if let Some(last) = out.last_mut() {
                    last.0 = rest.split_whitespace().take(4).map(String::from).collect();
                }
            } else if line.starts_with('#') {
            } else if let Some(last) = out.last_mut() {
                last.1.push_str(line);
            }
        }
        out
    }

    fn bans() -> Vec<(Vec<String>, String)> {
        sample_calls()
            .into_iter()
            .chain(flood_calls())
            .filter(|(a, _)| a.get(3).map(String::as_str) == Some("ban"))
            .collect()
    }

    /// A 1.2.6-style report made from a 1.2.4 one per the contract: no averages, four
    /// `dropped` lines after `Outgoing ip fragmented pps`, then the dump sections.
    fn to_126(report: &str) -> String {
        let mut s = String::new();
        for line in report.lines() {
            if line.starts_with("Average") || line.is_empty() {
                continue;
            }
            s.push_str(line);
            s.push('\n');
            if line.starts_with("Outgoing ip fragmented pps") {
                s.push_str("Incoming dropped traffic: 0 mbps\nOutgoing dropped traffic: 0 mbps\n");
                s.push_str("Incoming dropped pps: 7 packets per second\nOutgoing dropped pps: 0 packets per second\n");
            }
        }
        s.push_str("\nAttack traffic dump\n");
        s.push_str("2024-01-01 10:00:00.000000 10.9.9.9:4444 > 127.0.0.10:80 protocol: udp frag: 0 packets: 1 size: 60 bytes ttl: 64 sample ratio: 1\n");
        s.push_str("Attack type: icmp_flood\nIncoming tcp pps: 999999 packets per second\n");
        s.push_str("\nFlow dump\nIP: 10.9.9.9\nAttack protocol: udp\n");
        s
    }

    #[test]
    fn recordings_hold_five_bans() {
        // Guards the helpers above: a broken splitter would make the tests below vacuous.
        let b = bans();
        assert_eq!(b.len(), 5);
        assert!(b.iter().all(|(_, body)| body.contains("IP: 127.0.0.10")));
    }

    #[test]
    fn parses_real_124_reports() {
        let calls = sample_calls();
        let icmp = parse_report(&calls[0].1);
        assert_eq!(icmp.ip, Some("127.0.0.10".parse().unwrap()));
        assert_eq!(icmp.attack_type, Some(AttackType::IcmpFlood));
        assert_eq!(icmp.protocol, Some(Protocol::Icmp));
        assert_eq!(icmp.direction.as_deref(), Some("incoming"));
        assert_eq!(icmp.initial_attack_power, Some(3524));
        assert_eq!(icmp.incoming_icmp_pps, Some(3524));
        assert_eq!(icmp.incoming_tcp_pps, Some(0));
        assert_eq!(icmp.average_incoming_packet_size, Some(28.0));
        assert_eq!(icmp.incoming_dropped_pps, None);
        let syn = parse_report(&calls[2].1);
        assert_eq!(syn.attack_type, Some(AttackType::SynFlood));
        assert_eq!(syn.total_incoming_traffic_mbps, Some(1));
        assert_eq!(syn.incoming_syn_tcp_pps, Some(4366));
        assert_eq!(syn.average_incoming_packet_size, Some(42.6));
        // Every numeric line of the report was recognised.
        for (_, body) in bans() {
            let r = parse_report(&body);
            for c in COUNTERS.iter().filter(|c| !c.label.contains("dropped")) {
                assert!((c.get)(&r).is_some(), "{} not parsed", c.label);
            }
        }
    }

    #[test]
    fn to_text_reproduces_the_real_reports() {
        for (args, body) in bans() {
            let text = parse_report(&body).to_text();
            assert_eq!(
                text.trim_end_matches('\n'),
                body.trim_end_matches('\n'),
                "round trip of {args:?}"
            );
        }
    }

    #[test]
    fn report_lines_match_the_argv() {
        for (args, body) in bans() {
            let r = parse_report(&body);
            assert_eq!(
                r.ip.map(|i| i.to_string()).as_deref(),
                Some(args[0].as_str())
            );
            assert_eq!(r.direction.as_deref(), Some(args[1].as_str()));
            assert_eq!(
                r.initial_attack_power.map(|p| p.to_string()).as_deref(),
                Some(args[2].as_str())
            );
        }
    }

    #[test]
    fn derived_classification_agrees_with_fastnetmon() {
        for (_, body) in bans() {
            let r = parse_report(&body);
            let want = (r.attack_type.unwrap(), r.protocol.unwrap());
            assert_ne!(want.0, AttackType::Unknown);
            // Without the Attack type/protocol lines, the rates must give the same answer.
            let stripped: String = body
                .lines()
                .filter(|l| !l.starts_with("Attack type") && !l.starts_with("Attack protocol"))
                .map(|l| format!("{l}\n"))
                .collect();
            let bare = parse_report(&stripped);
            assert_eq!(bare.attack_type, None);
            assert_eq!(bare.classify(Direction::Incoming), want);
            assert_eq!(r.classify(Direction::Incoming), want);
        }
    }

    #[test]
    fn parses_126_reports_and_stops_at_dumps() {
        for (_, body) in bans() {
            let orig = parse_report(&body);
            let text = to_126(&body);
            let r = parse_report(&text);
            assert_eq!(r.attack_type, orig.attack_type);
            assert_eq!(r.protocol, orig.protocol);
            assert_eq!(r.ip, orig.ip);
            assert_eq!(
                r.incoming_tcp_pps, orig.incoming_tcp_pps,
                "dump line leaked"
            );
            assert_eq!(r.average_incoming_pps, None);
            assert_eq!(r.average_incoming_packet_size, None);
            assert_eq!(r.incoming_dropped_pps, Some(7));
            assert_eq!(r.outgoing_dropped_traffic_mbps, Some(0));
            // Round trip of the report part, 1.2.6 layout included.
            assert_eq!(
                r.to_text(),
                report_section(&text).trim_end_matches('\n').to_string() + "\n"
            );
        }
    }

    #[test]
    fn fastnetmon_126_unknown_type_is_derived() {
        let body = &flood_calls()
            .into_iter()
            .find(|(a, b)| a[3] == "ban" && b.contains("udp_flood"))
            .unwrap()
            .1;
        let text = to_126(body)
            .replace("Attack type: udp_flood", "Attack type: unknown")
            .replace("Attack protocol: udp", "Attack protocol: unknown");
        let r = parse_report(&text);
        assert_eq!(r.attack_type, Some(AttackType::Unknown));
        assert_eq!(
            r.classify(Direction::Incoming),
            (AttackType::UdpFlood, Protocol::Udp)
        );
    }

    #[test]
    fn fragments_and_plain_tcp() {
        let frag = parse_report(
            "Total incoming pps: 1000 packets per second\nIncoming ip fragmented pps: 800 packets per second\nIncoming udp pps: 1000 packets per second\n",
        );
        assert_eq!(
            frag.classify(Direction::Incoming),
            (AttackType::IpFragmentation, Protocol::Udp)
        );
        let ack = parse_report("Incoming tcp pps: 1000 packets per second\nIncoming syn tcp pps: 10 packets per second\n");
        assert_eq!(
            ack.classify(Direction::Incoming),
            (AttackType::Unknown, Protocol::Tcp)
        );
        // Outgoing attacks look at the outgoing lines.
        let out = parse_report("Attack direction: outgoing\nIncoming icmp pps: 50 packets per second\nOutgoing udp pps: 900 packets per second\n");
        assert_eq!(
            out.classify(Direction::Incoming),
            (AttackType::UdpFlood, Protocol::Udp)
        );
    }

    #[test]
    fn old_and_broken_input_is_tolerated() {
        // 1.1.x without notify_script_pass_details: nothing on stdin.
        assert!(parse_report("").is_empty());
        assert_eq!(
            parse_report("").classify(Direction::Incoming),
            (AttackType::Unknown, Protocol::Unknown)
        );
        let r = parse_report("garbage\n:::\nIP: not-an-ip\nTotal incoming pps: lots\nIncoming udp pps: 12.6 packets per second\nIP: 2001:db8::1\n\u{0}\u{feff}");
        assert_eq!(
            r.ip,
            Some("2001:db8::1".parse().unwrap()),
            "first readable IP wins"
        );
        assert_eq!(r.total_incoming_pps, None);
        assert_eq!(r.incoming_udp_pps, Some(13));
        let v6 = parse_report("IP: 2001:db8::1\n");
        assert_eq!(v6.ip, Some("2001:db8::1".parse().unwrap()));
    }
}
