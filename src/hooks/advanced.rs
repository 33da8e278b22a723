//! FastNetMon Advanced's JSON callbacks: the document its notify script gets on stdin with
//! `notify_script_format = json`, and the body of its web callbacks (the same document).
//!
//! Field names as FastNetMon publishes them ("FastNetMon JSON formats"): `action` (`ban`,
//! `unban`, `attack_status`, `partial_block`, `partial_unblock`), `ip`, `alert_scope`
//! (`host`, `hostgroup`; `network` is read the same way as a host whose `ip` may be a
//! prefix), `hostgroup_name`, `hostgroup_networks`, `attack_details{...}` (type, protocol,
//! direction, powers and per-protocol rates), `packet_dump_detailed[]` and
//! `flow_spec_rules[]`. Unknown fields are ignored; a known field of the wrong type, an
//! unknown action or scope, a missing address, or a hostgroup flowguard does not have is an
//! error naming it, and the event is not applied at all.
//!
//! How each becomes an [`ExternalEvent`]:
//! - `ban` / `unban`: start / end of an attack on the host;
//! - `attack_status`: an update (it also re-asserts an attack flowguard forgot, e.g. after
//!   a restart);
//! - `partial_block` / `partial_unblock`: start / end, classified from the attack details,
//!   else from the packet dump or flow spec rules, so MITIGATOR gets the countermeasure for
//!   that vector; claimed under `<source>/partial`, so ending a partial block does not end
//!   a full ban of the same host or vice versa;
//! - `alert_scope = hostgroup`: an attack on the flowguard hostgroup of that name (Advanced's
//!   `global` is flowguard's default group), keyed like flowguard's own hostgroup-total
//!   attacks: on the group's first prefix, so the mitigation uses the group's policy
//!   (`policy_by_prefix` of that prefix, else `policy_by_hostgroup`).
//!
//! Traffic fields (`*_traffic`) are not carried: classification needs packet rates only,
//! and the published examples do not say their unit.
//!
//! Pure: bytes and the configuration's hostgroups in, an event out.

use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{Map, Value};

use super::event::{truncate_utf8, ExternalEvent, HookAction, MAX_REPORT_BYTES};
use super::HookError;
use crate::config::Config;
use crate::fnm_report::FnmReport;
use crate::model::{AttackType, Direction, Protocol};

/// Source name for Advanced events that name none.
pub const DEFAULT_SOURCE: &str = "fastnetmon-advanced";

/// Hostgroup name → the address attacks on the whole group are keyed by.
#[derive(Debug, Clone, Default)]
pub struct Hostgroups {
    groups: Vec<(String, IpAddr)>,
    /// The group without prefixes (or named `default`), if any.
    default: Option<usize>,
}

impl Hostgroups {
    /// From `[[hostgroup]]` and the protected networks, the way the pipeline keys
    /// hostgroup-total attacks: the group's first prefix, else the first protected one.
    pub fn from_config(cfg: &Config) -> Hostgroups {
        let protected = cfg
            .protected_prefixes()
            .unwrap_or_else(|_| cfg.networks.protected.clone());
        let mut groups = Vec::new();
        let mut default = None;
        for g in &cfg.hostgroups {
            let Some(net) = g.prefixes.first().or(protected.first()) else {
                continue;
            };
            if default.is_none() && (g.name == "default" || g.prefixes.is_empty()) {
                default = Some(groups.len());
            }
            groups.push((g.name.clone(), net.network()));
        }
        Hostgroups { groups, default }
    }

    /// Address and flowguard name of hostgroup `name` (`global` = the default group).
    pub fn resolve(&self, name: &str) -> Option<(&str, IpAddr)> {
        let i = self
            .groups
            .iter()
            .position(|(n, _)| n == name)
            .or(if name == "global" { self.default } else { None })?;
        let (n, ip) = &self.groups[i];
        Some((n.as_str(), *ip))
    }
}

fn bad(msg: impl Into<String>) -> HookError {
    HookError::Malformed(msg.into())
}

fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<Option<&'a str>, HookError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(bad(format!("{at}{key}: expected a string"))),
    }
}

/// A non-negative count; FastNetMon writes integers, a float is rounded.
fn opt_u64(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>, HookError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                return Ok(Some(v));
            }
            match n.as_f64() {
                Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                    Ok(Some(f.round() as u64))
                }
                _ => Err(bad(format!("{at}{key}: expected a non-negative number"))),
            }
        }
        Some(_) => Err(bad(format!("{at}{key}: expected a number"))),
    }
}

fn opt_array<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], HookError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a.as_slice()),
        Some(_) => Err(bad(format!("{key}: expected an array"))),
    }
}

/// `192.0.2.1`, `192.0.2.1/32` or, for a network, `192.0.2.0/24` → the address attacks are
/// keyed by.
fn parse_addr(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<IpNet>().ok().map(|n| n.network()))
}

/// The report fields of `attack_details`, by their JSON names.
fn report_from_details(d: &Map<String, Value>) -> Result<FnmReport, HookError> {
    let at = "attack_details.";
    let mut r = FnmReport::default();
    let u = |k: &str| opt_u64(d, k, at);
    r.attack_type = opt_str(d, "attack_type", at)?.map(AttackType::parse);
    r.protocol = opt_str(d, "attack_protocol", at)?.map(Protocol::parse);
    r.initial_attack_power = u("initial_attack_power")?;
    r.peak_attack_power = u("peak_attack_power")?;
    r.total_incoming_pps = u("total_incoming_pps")?;
    r.total_outgoing_pps = u("total_outgoing_pps")?;
    r.total_incoming_flows = u("total_incoming_flows")?;
    r.total_outgoing_flows = u("total_outgoing_flows")?;
    r.average_incoming_pps = u("average_incoming_pps")?;
    r.average_outgoing_pps = u("average_outgoing_pps")?;
    r.average_incoming_flows = u("average_incoming_flows")?;
    r.average_outgoing_flows = u("average_outgoing_flows")?;
    r.incoming_fragmented_pps = u("incoming_ip_fragmented_pps")?;
    r.outgoing_fragmented_pps = u("outgoing_ip_fragmented_pps")?;
    r.incoming_tcp_pps = u("incoming_tcp_pps")?;
    r.outgoing_tcp_pps = u("outgoing_tcp_pps")?;
    r.incoming_syn_tcp_pps = u("incoming_syn_tcp_pps")?;
    r.outgoing_syn_tcp_pps = u("outgoing_syn_tcp_pps")?;
    r.incoming_udp_pps = u("incoming_udp_pps")?;
    r.outgoing_udp_pps = u("outgoing_udp_pps")?;
    r.incoming_icmp_pps = u("incoming_icmp_pps")?;
    r.outgoing_icmp_pps = u("outgoing_icmp_pps")?;
    Ok(r)
}

/// Packet counts per protocol from `packet_dump_detailed[]` (or, with `packets` absent,
/// one per entry), in the attack's direction, as a report [`FnmReport::classify`] reads.
fn report_from_dump(dump: &[Value], dir: Direction) -> Result<FnmReport, HookError> {
    let (mut tcp, mut syn, mut udp, mut icmp, mut frag, mut total) = (0u64, 0, 0, 0, 0, 0u64);
    for (i, e) in dump.iter().enumerate() {
        let Value::Object(e) = e else {
            return Err(bad(format!(
                "packet_dump_detailed[{i}]: expected an object"
            )));
        };
        let at = format!("packet_dump_detailed[{i}].");
        let n = opt_u64(e, "packets", &at)?.unwrap_or(1).max(1);
        total = total.saturating_add(n);
        match opt_str(e, "protocol", &at)?.map(Protocol::parse) {
            Some(Protocol::Tcp) => {
                tcp += n;
                let flags = opt_str(e, "tcp_flags", &at)?.unwrap_or("");
                if flags.contains("syn") && !flags.contains("ack") {
                    syn += n;
                }
            }
            Some(Protocol::Udp) => udp += n,
            Some(Protocol::Icmp) => icmp += n,
            _ => {}
        }
        if matches!(e.get("fragmentation"), Some(Value::Bool(true))) {
            frag += n;
        }
    }
    let mut r = FnmReport::default();
    match dir {
        Direction::Incoming => {
            r.total_incoming_pps = Some(total);
            r.incoming_tcp_pps = Some(tcp);
            r.incoming_syn_tcp_pps = Some(syn);
            r.incoming_udp_pps = Some(udp);
            r.incoming_icmp_pps = Some(icmp);
            r.incoming_fragmented_pps = Some(frag);
        }
        Direction::Outgoing => {
            r.total_outgoing_pps = Some(total);
            r.outgoing_tcp_pps = Some(tcp);
            r.outgoing_syn_tcp_pps = Some(syn);
            r.outgoing_udp_pps = Some(udp);
            r.outgoing_icmp_pps = Some(icmp);
            r.outgoing_fragmented_pps = Some(frag);
        }
    }
    Ok(r)
}

/// The vector of a flow spec rule set (`protocols`, `tcp_flags`), when all rules agree.
fn class_from_flow_spec(rules: &[Value]) -> Option<(AttackType, Protocol)> {
    let mut found: Option<(AttackType, Protocol)> = None;
    for r in rules {
        let protos = r.get("protocols")?.as_array()?;
        let [p] = protos.as_slice() else { return None };
        let proto = Protocol::parse(p.as_str()?);
        let syn = r
            .get("tcp_flags")
            .and_then(Value::as_array)
            .is_some_and(|f| f.iter().any(|v| v.as_str() == Some("syn")));
        let kind = match proto {
            Protocol::Tcp if syn => AttackType::SynFlood,
            Protocol::Udp => AttackType::UdpFlood,
            Protocol::Icmp => AttackType::IcmpFlood,
            _ => AttackType::Unknown,
        };
        match found {
            None => found = Some((kind, proto)),
            Some(f) if f == (kind, proto) => {}
            Some(_) => return None,
        }
    }
    found.filter(|(_, p)| *p != Protocol::Unknown)
}

/// Parses one Advanced JSON document into the event it stands for. `source` names the
/// instance (the caller's default when the document gives none).
pub fn parse(body: &[u8], groups: &Hostgroups, source: &str) -> Result<ExternalEvent, HookError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Value::Object(doc) = v else {
        return Err(bad("expected a JSON object"));
    };
    let action = opt_str(&doc, "action", "")?.ok_or_else(|| bad("action: missing"))?;
    let (action, partial) = match action {
        "ban" => (HookAction::Ban, false),
        "unban" => (HookAction::Unban, false),
        "attack_status" => (HookAction::AttackDetails, false),
        "partial_block" => (HookAction::Ban, true),
        "partial_unblock" => (HookAction::Unban, true),
        a => {
            return Err(bad(format!(
                "action {:?}: expected ban, unban, attack_status, partial_block or partial_unblock",
                truncate_utf8(a, 40)
            )))
        }
    };
    let empty = Map::new();
    let details = match doc.get("attack_details") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(d)) => d,
        Some(_) => return Err(bad("attack_details: expected an object")),
    };
    let direction_text = opt_str(
        details,
        "attack_detection_threshold_direction",
        "attack_details.",
    )?
    .or(opt_str(details, "attack_direction", "attack_details.")?)
    .unwrap_or("incoming");
    let direction = match direction_text {
        "outgoing" => Direction::Outgoing,
        // Advanced says `unknown` when it cannot tell; an alert about a protected host
        // is an incoming one unless it says otherwise.
        "incoming" | "unknown" | "" => Direction::Incoming,
        d @ ("internal" | "other") => {
            return Err(HookError::Ignored(format!(
                "{} from FastNetMon Advanced: direction {d} names no protected side",
                action.as_str()
            )))
        }
        d => {
            return Err(bad(format!(
                "attack_details.attack_direction {:?}: expected incoming or outgoing",
                truncate_utf8(d, 40)
            )))
        }
    };
    let scope = opt_str(&doc, "alert_scope", "")?.unwrap_or("host");
    let ip = match scope {
        "host" | "network" => {
            let text = opt_str(&doc, "ip", "")?.ok_or_else(|| bad("ip: missing"))?;
            parse_addr(text).ok_or_else(|| {
                bad(format!(
                    "ip {:?} is not an address or prefix",
                    truncate_utf8(text, 60)
                ))
            })?
        }
        "hostgroup" => {
            let name = opt_str(&doc, "hostgroup_name", "")?
                .ok_or_else(|| bad("hostgroup_name: missing for alert_scope hostgroup"))?;
            groups
                .resolve(name)
                .ok_or_else(|| {
                    HookError::NotApplicable(format!(
                        "hostgroup {:?} is not a flowguard [[hostgroup]] (nothing to mitigate it by)",
                        truncate_utf8(name, 60)
                    ))
                })?
                .1
        }
        s => {
            return Err(bad(format!(
                "alert_scope {:?}: expected host, hostgroup or network",
                truncate_utf8(s, 40)
            )))
        }
    };
    let dump = opt_array(&doc, "packet_dump_detailed")?;
    let rules = opt_array(&doc, "flow_spec_rules")?;

    let mut report = report_from_details(details)?;
    report.ip = Some(ip);
    report.direction = Some(direction.as_str().to_string());
    let pps = report
        .initial_attack_power
        .or(report.peak_attack_power)
        .or(match direction {
            Direction::Incoming => report.total_incoming_pps,
            Direction::Outgoing => report.total_outgoing_pps,
        })
        .unwrap_or(0);
    let (mut kind, mut proto) = report.classify(direction);
    if kind == AttackType::Unknown {
        let from_dump = report_from_dump(dump, direction)?;
        if let Some(c) = class_from_flow_spec(rules) {
            (kind, proto) = c;
        } else if !dump.is_empty() {
            (kind, proto) = from_dump.classify(direction);
        }
    } else {
        // Still validate the dump, so a malformed document is refused whatever it holds.
        report_from_dump(dump, direction)?;
    }
    let with_class = action != HookAction::Unban;
    let text = report.to_text();
    let source = match opt_str(&doc, "source", "")? {
        Some(s) => s.to_string(),
        None => source.to_string(),
    };
    let source = if partial {
        format!("{source}/partial")
    } else {
        source
    };
    let ev = ExternalEvent {
        action,
        ip,
        direction,
        pps,
        attack_type: with_class.then_some(kind),
        protocol: with_class.then_some(proto),
        report: Some(truncate_utf8(&text, MAX_REPORT_BYTES).to_string()),
        source: Some(source),
    };
    ev.validate()?;
    Ok(ev)
}

/// Whether `input` looks like a JSON document rather than FastNetMon's text report.
pub fn is_json(input: &str) -> bool {
    input
        .trim_start_matches('\u{feff}')
        .trim_start()
        .starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Hostgroups {
        let cfg = Config::from_toml_str(
            r#"
            [networks]
            protected = ["192.0.2.0/24", "198.51.100.0/24"]
            [[hostgroup]]
            name = "default"
            threshold_pps = 1
            [[hostgroup]]
            name = "web"
            prefixes = ["198.51.100.0/25"]
            "#,
        )
        .unwrap();
        Hostgroups::from_config(&cfg)
    }

    fn parse_str(s: &str) -> Result<ExternalEvent, HookError> {
        parse(s.as_bytes(), &groups(), DEFAULT_SOURCE)
    }

    #[test]
    fn hostgroups_resolve_like_the_pipeline_keys_them() {
        let g = groups();
        assert_eq!(
            g.resolve("web"),
            Some(("web", "198.51.100.0".parse().unwrap()))
        );
        assert_eq!(
            g.resolve("global"),
            Some(("default", "192.0.2.0".parse().unwrap()))
        );
        assert_eq!(g.resolve("nope"), None);
    }

    #[test]
    fn minimal_documents_and_actions() {
        let ev = parse_str(r#"{"action":"unban","ip":"192.0.2.9"}"#).unwrap();
        assert_eq!(
            (ev.action, ev.direction, ev.attack_type),
            (HookAction::Unban, Direction::Incoming, None)
        );
        assert_eq!(ev.source.as_deref(), Some(DEFAULT_SOURCE));
        let ev =
            parse_str(r#"{"action":"attack_status","ip":"2001:db8::1/128","x":{"y":1}}"#).unwrap();
        assert_eq!(ev.action, HookAction::AttackDetails);
        assert_eq!(ev.ip, "2001:db8::1".parse::<IpAddr>().unwrap());
        let ev =
            parse_str(r#"{"action":"partial_unblock","ip":"192.0.2.9","source":"fnm2"}"#).unwrap();
        assert_eq!(ev.action, HookAction::Unban);
        assert_eq!(ev.source.as_deref(), Some("fnm2/partial"));
    }

    #[test]
    fn malformed_documents_name_the_problem() {
        for (doc, want) in [
            ("[1]", "JSON object"),
            ("{", "not JSON"),
            (r#"{"ip":"192.0.2.1"}"#, "action: missing"),
            (r#"{"action":"nuke","ip":"192.0.2.1"}"#, "action \"nuke\""),
            (r#"{"action":"ban"}"#, "ip: missing"),
            (r#"{"action":"ban","ip":"nowhere"}"#, "not an address"),
            (r#"{"action":"ban","ip":7}"#, "ip: expected a string"),
            (
                r#"{"action":"ban","ip":"192.0.2.1","alert_scope":"planet"}"#,
                "alert_scope",
            ),
            (
                r#"{"action":"ban","alert_scope":"hostgroup"}"#,
                "hostgroup_name: missing",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","attack_details":[]}"#,
                "attack_details: expected an object",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","attack_details":{"total_incoming_pps":"many"}}"#,
                "attack_details.total_incoming_pps",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","attack_details":{"incoming_udp_pps":-3}}"#,
                "incoming_udp_pps",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","attack_details":{"attack_direction":"sideways"}}"#,
                "sideways",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","packet_dump_detailed":{}}"#,
                "packet_dump_detailed: expected an array",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","packet_dump_detailed":[1]}"#,
                "packet_dump_detailed[0]",
            ),
            (
                r#"{"action":"ban","ip":"192.0.2.1","source":"a b"}"#,
                "source",
            ),
        ] {
            match parse_str(doc) {
                Err(HookError::Malformed(m)) => assert!(m.contains(want), "{doc}: {m}"),
                other => panic!("{doc}: {other:?}"),
            }
        }
        assert!(matches!(
            parse_str(
                r#"{"action":"ban","ip":"192.0.2.1","attack_details":{"attack_direction":"internal"}}"#
            ),
            Err(HookError::Ignored(_))
        ));
        assert!(matches!(
            parse_str(r#"{"action":"ban","alert_scope":"hostgroup","hostgroup_name":"mars"}"#),
            Err(HookError::NotApplicable(m)) if m.contains("\"mars\" is not a flowguard")
        ));
    }

    #[test]
    fn unknown_type_is_classified_from_the_dump_or_the_flow_spec() {
        let ev = parse_str(
            r#"{"action":"ban","ip":"192.0.2.1","attack_details":{"attack_type":"unknown","attack_protocol":"unknown"},
               "packet_dump_detailed":[
                 {"protocol":"tcp","tcp_flags":"syn","packets":3,"source_ip":"203.0.113.1"},
                 {"protocol":"tcp","tcp_flags":"syn","packets":2},
                 {"protocol":"udp","packets":1}]}"#,
        )
        .unwrap();
        assert_eq!(ev.classified(), (AttackType::SynFlood, Protocol::Tcp));
        let ev = parse_str(
            r#"{"action":"partial_block","ip":"192.0.2.1",
               "flow_spec_rules":[{"destination_prefix":"192.0.2.1/32","protocols":["udp"],"source_ports":[53],"action_type":"discard"}]}"#,
        )
        .unwrap();
        assert_eq!(ev.action, HookAction::Ban);
        assert_eq!(ev.classified(), (AttackType::UdpFlood, Protocol::Udp));
        assert_eq!(ev.source.as_deref(), Some("fastnetmon-advanced/partial"));
    }

    #[test]
    fn is_json_tells_documents_from_text_reports() {
        assert!(is_json("  \n{\"action\":\"ban\"}"));
        assert!(is_json("\u{feff}{}"));
        assert!(!is_json("IP: 192.0.2.1\n"));
        assert!(!is_json(""));
    }
}
