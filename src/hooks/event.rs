//! [`ExternalEvent`]: an attack start, update or end reported by another detector.
//!
//! One shape for the three ways such an event travels: built from FastNetMon's notify
//! arguments by the hook, posted as JSON to `POST /api/v1/events/fastnetmon`, and written
//! to the spool. Pure: no I/O.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::HookError;
use crate::fnm_report::{parse_report, report_section};
use crate::model::{AttackType, Direction, Protocol};

/// Largest report kept in an event. FastNetMon's report is about 2 KiB; what follows it
/// (dumps, or garbage) is cut so an event always fits the API's default body limit.
pub const MAX_REPORT_BYTES: usize = 64 * 1024;

/// FastNetMon's notify actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookAction {
    /// Attack start.
    Ban,
    /// Attack end.
    Unban,
    /// More details on a running attack (FastNetMon up to 1.2.5).
    AttackDetails,
}

impl HookAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HookAction::Ban => "ban",
            HookAction::Unban => "unban",
            HookAction::AttackDetails => "attack_details",
        }
    }

    pub fn parse(s: &str) -> Option<HookAction> {
        match s.trim() {
            "ban" => Some(HookAction::Ban),
            "unban" => Some(HookAction::Unban),
            "attack_details" => Some(HookAction::AttackDetails),
            _ => None,
        }
    }
}

/// An attack event from an external detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalEvent {
    pub action: HookAction,
    pub ip: IpAddr,
    pub direction: Direction,
    /// Attack power in packets per second, as the detector measured it.
    pub pps: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attack_type: Option<AttackType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// The detector's report text (FastNetMon's form is understood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// Which detector instance says so (`fastnetmon@host`, `fastnetmon-advanced`, ...): an
    /// attack two instances reported ends only when both have sent their unban. None is
    /// one anonymous source ([`DEFAULT_SOURCE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The source of events that name none.
pub const DEFAULT_SOURCE: &str = "external";
/// Longest source name accepted.
pub const MAX_SOURCE_LEN: usize = 64;

/// A source name: 1..=64 of `A-Z a-z 0-9 . _ - : @ /`, so it is safe in logs and paths.
pub fn valid_source(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SOURCE_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@/".contains(&b))
}

impl ExternalEvent {
    /// Attack type and protocol: the event's own when given, else from the report, else
    /// `unknown`.
    pub fn classified(&self) -> (AttackType, Protocol) {
        let (rt, rp) = match &self.report {
            Some(text) => parse_report(text).classify(self.direction),
            None => (AttackType::Unknown, Protocol::Unknown),
        };
        let kind = self.attack_type.unwrap_or(rt);
        let proto = match self.protocol {
            Some(p) => p,
            // A caller that named only the type still gets the protocol it implies.
            None if self.report.is_none() => match kind {
                AttackType::SynFlood => Protocol::Tcp,
                AttackType::UdpFlood => Protocol::Udp,
                AttackType::IcmpFlood => Protocol::Icmp,
                _ => Protocol::Unknown,
            },
            None => rp,
        };
        (kind, proto)
    }

    /// The reporting instance ([`DEFAULT_SOURCE`] when unnamed).
    pub fn source(&self) -> &str {
        self.source.as_deref().unwrap_or(DEFAULT_SOURCE)
    }

    /// Checks what serde cannot: the source name.
    pub fn validate(&self) -> Result<(), HookError> {
        match &self.source {
            Some(s) if !valid_source(s) => Err(HookError::Malformed(format!(
                "source {:?}: expected 1..={MAX_SOURCE_LEN} of A-Z a-z 0-9 . _ - : @ /",
                truncate_utf8(s, 80)
            ))),
            _ => Ok(()),
        }
    }

    /// `ban 192.0.2.1 incoming 3524 pps syn_flood/tcp from fastnetmon@fw1`, for log lines.
    pub fn summary(&self) -> String {
        let (t, p) = self.classified();
        format!(
            "{} {} {} {} pps {t}/{p} from {}",
            self.action.as_str(),
            self.ip,
            self.direction,
            self.pps,
            self.source()
        )
    }
}

/// Builds the event for FastNetMon's `<IP> <direction> <pps> <action>` call and its stdin.
///
/// Directions FastNetMon uses for traffic that is not to or from one protected host
/// (`internal`, `other`, `unknown`) give [`HookError::Ignored`]. A `ban` or
/// `attack_details` with a report carries the attack type and protocol chosen from that
/// report, so the service never has to guess.
pub fn from_notify(
    ip: &str,
    direction: &str,
    pps: &str,
    action: &str,
    stdin: &str,
) -> Result<ExternalEvent, HookError> {
    let action = HookAction::parse(action).ok_or_else(|| {
        HookError::Usage(format!(
            "action {action:?}: expected ban, unban or attack_details"
        ))
    })?;
    let direction = match direction.trim() {
        "incoming" => Direction::Incoming,
        "outgoing" => Direction::Outgoing,
        d @ ("internal" | "other" | "unknown") => {
            return Err(HookError::Ignored(format!(
                "{} {ip}: direction {d} names no protected side",
                action.as_str()
            )))
        }
        d => {
            return Err(HookError::Usage(format!(
                "direction {d:?}: expected incoming or outgoing"
            )))
        }
    };
    let ip_text = ip.trim();
    // A host route written as a prefix is still one host.
    let ip_text = ip_text
        .strip_suffix("/32")
        .or_else(|| ip_text.strip_suffix("/128"))
        .unwrap_or(ip_text);
    let ip: IpAddr = ip_text
        .parse()
        .map_err(|_| HookError::Usage(format!("IP {ip:?} is not an IP address")))?;
    let pps = parse_pps(pps)
        .ok_or_else(|| HookError::Usage(format!("pps {pps:?} is not a packet rate")))?;

    let report_text = report_section(stdin);
    let report_text = truncate_utf8(report_text, MAX_REPORT_BYTES);
    let parsed = parse_report(report_text);
    let (attack_type, protocol, report) = if parsed.is_empty() {
        (None, None, None)
    } else {
        let (t, p) = parsed.classify(direction);
        let with_class = matches!(action, HookAction::Ban | HookAction::AttackDetails);
        (
            with_class.then_some(t),
            with_class.then_some(p),
            Some(report_text.to_string()),
        )
    };
    Ok(ExternalEvent {
        action,
        ip,
        direction,
        pps,
        attack_type,
        protocol,
        report,
        source: None,
    })
}

fn parse_pps(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Some(v);
    }
    let f = s.parse::<f64>().ok()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then(|| f.round() as u64)
}

pub(crate) fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: &str = "IP: 127.0.0.10\nAttack type: syn_flood\nAttack direction: incoming\nAttack protocol: tcp\nIncoming tcp pps: 4366 packets per second\nIncoming syn tcp pps: 4366 packets per second\n";

    #[test]
    fn ban_carries_class_from_report() {
        let ev = from_notify("127.0.0.10", "incoming", "4366", "ban", SYN).unwrap();
        assert_eq!(ev.action, HookAction::Ban);
        assert_eq!(ev.attack_type, Some(AttackType::SynFlood));
        assert_eq!(ev.protocol, Some(Protocol::Tcp));
        assert_eq!(ev.pps, 4366);
        assert!(ev.report.as_deref().unwrap().contains("syn_flood"));
    }

    #[test]
    fn unban_and_old_ban_have_no_class() {
        let ev = from_notify("127.0.0.10", "incoming", "4366", "unban", "").unwrap();
        assert_eq!((ev.attack_type, ev.protocol, ev.report), (None, None, None));
        let ev = from_notify("10.0.0.1/32", "outgoing", "10", "ban", "\n").unwrap();
        assert_eq!(ev.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(ev.classified(), (AttackType::Unknown, Protocol::Unknown));
    }

    #[test]
    fn bad_and_ignored_arguments() {
        assert!(matches!(
            from_notify("1.2.3.4", "other", "1", "ban", ""),
            Err(HookError::Ignored(_))
        ));
        assert!(matches!(
            from_notify("1.2.3.4", "sideways", "1", "ban", ""),
            Err(HookError::Usage(_))
        ));
        assert!(matches!(
            from_notify("1.2.3.4", "incoming", "1", "block", ""),
            Err(HookError::Usage(_))
        ));
        assert!(matches!(
            from_notify("1.2.3", "incoming", "1", "ban", ""),
            Err(HookError::Usage(_))
        ));
        assert!(matches!(
            from_notify("1.2.3.4", "incoming", "-1", "ban", ""),
            Err(HookError::Usage(_))
        ));
    }

    #[test]
    fn report_is_cut_at_dumps_and_bounded() {
        let stdin = format!("{SYN}\nAttack traffic dump\n{}", "x".repeat(1 << 20));
        let ev = from_notify("127.0.0.10", "incoming", "1", "ban", &stdin).unwrap();
        assert!(!ev.report.as_deref().unwrap().contains("dump"));
        let huge = format!("{SYN}{}", "é".repeat(MAX_REPORT_BYTES));
        let ev = from_notify("127.0.0.10", "incoming", "1", "ban", &huge).unwrap();
        assert!(ev.report.unwrap().len() <= MAX_REPORT_BYTES);
    }

    #[test]
    fn json_shape_and_classification() {
        let ev: ExternalEvent = serde_json::from_str(
            r#"{"action":"attack_details","ip":"2001:db8::1","direction":"incoming","pps":5,"report":"Incoming udp pps: 5 packets per second"}"#,
        )
        .unwrap();
        assert_eq!(ev.classified(), (AttackType::UdpFlood, Protocol::Udp));
        let ev: ExternalEvent = serde_json::from_str(
            r#"{"action":"ban","ip":"192.0.2.1","direction":"outgoing","pps":5,"attack_type":"icmp_flood"}"#,
        )
        .unwrap();
        assert_eq!(ev.classified(), (AttackType::IcmpFlood, Protocol::Icmp));
        let back: ExternalEvent =
            serde_json::from_str(&serde_json::to_string(&ev).unwrap()).unwrap();
        assert_eq!(back, ev);
        assert!(serde_json::from_str::<ExternalEvent>(
            r#"{"action":"ban","ip":"192.0.2.1","direction":"outgoing","pps":5,"colour":1}"#
        )
        .is_err());
    }
}
