//! BGP routes flowguard asks a BGP daemon to announce: their types (planned, persisted),
//! how they are built from an attack and its hostgroup's actions, and the safety checks
//! every route passes before it can be announced. Pure: no I/O, no clock.
//!
//! One rule per *vector* of the attack. An [`AttackEvent`] carries one protocol and the
//! top sources with their dominant source port; [`vectors_of`] turns that into a list of
//! (protocol, source port, destination port), so when attacks carry several vectors the
//! list simply gets longer and everything downstream stays as it is.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::bgp_config::{BgpActions, BgpConfig};
use crate::model::{AttackEvent, Protocol};

/// What a FlowSpec rule does with matching traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowAction {
    Discard,
    /// Traffic-rate extended community, bytes per second (RFC 8955 §7.3).
    RateLimit(u64),
}

/// One route. Everything that makes the route what it is lives here, so two attacks
/// asking for the same route share it (reference counted), and a changed configuration
/// makes a different route (the old one is withdrawn, the new one announced).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Route {
    /// Remotely triggered blackhole (RFC 7999): the prefix with its communities.
    Blackhole {
        prefix: IpNet,
        next_hop: IpAddr,
        communities: Vec<String>,
    },
    /// FlowSpec rule (RFC 8955/8956): destination, protocol, optional ports, action.
    Flowspec {
        destination: IpNet,
        /// IP protocol number (6 tcp, 17 udp, 1 icmp, 58 icmpv6); None = any.
        protocol: Option<u8>,
        source_port: Option<u16>,
        destination_port: Option<u16>,
        action: FlowAction,
        communities: Vec<String>,
    },
}

impl Route {
    pub fn kind(&self) -> &'static str {
        match self {
            Route::Blackhole { .. } => "blackhole",
            Route::Flowspec { .. } => "flowspec",
        }
    }

    /// The prefix the route is about (blackholed, or the FlowSpec destination).
    pub fn prefix(&self) -> IpNet {
        match self {
            Route::Blackhole { prefix, .. } => *prefix,
            Route::Flowspec { destination, .. } => *destination,
        }
    }

    /// Short human form for logs, the API and reports.
    pub fn describe(&self) -> String {
        match self {
            Route::Blackhole {
                prefix,
                next_hop,
                communities,
            } => format!(
                "blackhole {prefix} next-hop {next_hop} communities {}",
                communities.join(",")
            ),
            Route::Flowspec {
                destination,
                protocol,
                source_port,
                destination_port,
                action,
                ..
            } => {
                let mut s = format!("flowspec destination {destination}");
                if let Some(p) = protocol {
                    s.push_str(&format!(" protocol {}", protocol_name(*p)));
                }
                if let Some(p) = source_port {
                    s.push_str(&format!(" source-port {p}"));
                }
                if let Some(p) = destination_port {
                    s.push_str(&format!(" destination-port {p}"));
                }
                match action {
                    FlowAction::Discard => s.push_str(" then discard"),
                    FlowAction::RateLimit(b) => s.push_str(&format!(" then rate-limit {b} B/s")),
                }
                s
            }
        }
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// When a route is wanted during its attack. Both unset: from the start to the end.
/// Either set: once the attack's bits/s is at or above `above_bps` (and only while it is),
/// or once the attack has lasted `after_ms`, whichever comes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Escalation {
    pub above_bps: Option<u64>,
    pub after_ms: Option<i64>,
}

impl Escalation {
    pub fn is_unconditional(&self) -> bool {
        self.above_bps.is_none() && self.after_ms.is_none()
    }

    /// Is the route wanted for an attack that started at `started_ms` and runs at `bps`?
    pub fn wanted(&self, bps: u64, started_ms: i64, now: i64) -> bool {
        if self.is_unconditional() {
            return true;
        }
        self.above_bps.is_some_and(|l| bps >= l)
            || self
                .after_ms
                .is_some_and(|a| now.saturating_sub(started_ms) >= a)
    }
}

/// A route an attack asks for, with its condition; `refused` when a safety check failed
/// (it is then never announced, and says why).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutePlan {
    pub route: Route,
    #[serde(default)]
    pub when: Escalation,
    #[serde(default)]
    pub refused: Option<Refusal>,
}

/// Why a route was not announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The prefix is not inside one of the protected networks.
    OutsideProtected,
    /// The prefix is shorter than `[bgp] min_prefix_length_v4`/`_v6`.
    PrefixTooShort,
    /// `[bgp] max_routes` routes are already announced or wanted.
    RouteCap,
}

impl Refusal {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::OutsideProtected => "outside_protected",
            Refusal::PrefixTooShort => "prefix_too_short",
            Refusal::RouteCap => "route_cap",
        }
    }
}

/// One vector of an attack: what a FlowSpec rule matches besides the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vector {
    pub protocol: Protocol,
    pub source_port: Option<u16>,
    pub destination_port: Option<u16>,
}

/// A port must carry at least this share of the attack's packets to go into a rule: a
/// rule on a port that carries a tenth of the flood drops the wrong traffic.
const PORT_SHARE: f64 = 0.5;

/// The FlowSpec vectors of an attack: its protocol, with a source port when the top
/// sources sending from one port carry at least half of the attack's packets (a
/// reflection attack: UDP from port 53, 123, 389...), then the protocol of each further
/// vector the attack has (detect's `vectors`: SYN and UDP together give a TCP and a UDP
/// rule). Events do not carry destination ports yet, so `destination_port` stays None.
pub fn vectors_of(ev: &AttackEvent) -> Vec<Vector> {
    let mut by_port: Vec<(u16, f64)> = Vec::new();
    for t in &ev.top_sources {
        let Some(p) = t.port else { continue };
        match by_port.iter_mut().find(|(q, _)| *q == p) {
            Some(e) => e.1 += t.share,
            None => by_port.push((p, t.share)),
        }
    }
    let ported = matches!(ev.protocol, Protocol::Tcp | Protocol::Udp);
    let source_port = by_port
        .into_iter()
        .filter(|(_, s)| *s >= PORT_SHARE)
        .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))
        .map(|(p, _)| p)
        .filter(|_| ported);
    let main = Vector {
        protocol: ev.protocol,
        source_port,
        destination_port: None,
    };
    // One rule per vector of the attack (the top sources' port belongs to the attack's
    // own protocol); an attack without vectors (an external detector's) gets one.
    let mut out = vec![main];
    for v in &ev.vectors {
        if !out.iter().any(|o| o.protocol == v.protocol) {
            out.push(Vector {
                protocol: v.protocol,
                source_port: None,
                destination_port: None,
            });
        }
    }
    out
}

fn protocol_number(p: Protocol, v6: bool) -> Option<u8> {
    match p {
        Protocol::Tcp => Some(6),
        Protocol::Udp => Some(17),
        Protocol::Icmp if v6 => Some(58),
        Protocol::Icmp => Some(1),
        Protocol::Unknown => None,
    }
}

/// The host route of `ip` at the configured length (a host route by default).
fn host_prefix(ip: IpAddr, a: &BgpActions) -> IpNet {
    let len = match ip {
        IpAddr::V4(_) => a.prefix_length_v4,
        IpAddr::V6(_) => a.prefix_length_v6,
    };
    IpNet::new(ip, len)
        .unwrap_or_else(|_| IpNet::from(ip))
        .trunc()
}

/// The safety checks of one prefix: inside a protected network, not shorter than the
/// limit. (The route cap depends on what else is announced: the planner checks it.)
pub fn check(prefix: IpNet, protected: &[IpNet], cfg: &BgpConfig) -> Option<Refusal> {
    let min = match prefix {
        IpNet::V4(_) => cfg.min_prefix_length_v4,
        IpNet::V6(_) => cfg.min_prefix_length_v6,
    };
    if prefix.prefix_len() < min {
        return Some(Refusal::PrefixTooShort);
    }
    if !protected.iter().any(|n| n.contains(&prefix)) {
        return Some(Refusal::OutsideProtected);
    }
    None
}

/// The routes an attack asks for under its hostgroup's actions, each checked.
pub fn plan(
    ev: &AttackEvent,
    vectors: &[Vector],
    cfg: &BgpConfig,
    protected: &[IpNet],
) -> Vec<RoutePlan> {
    let a = cfg.actions_for(&ev.hostgroup);
    let mut out = Vec::new();
    let v6 = ev.ip.is_ipv6();
    let prefix = host_prefix(ev.ip, a);
    let communities_with_marker = |base: &[String]| {
        let mut c = base.to_vec();
        if let Some(m) = &cfg.marker_community {
            if !c.contains(m) {
                c.push(m.clone());
            }
        }
        c
    };
    if a.blackhole {
        let next_hop = if v6 { cfg.next_hop_v6 } else { cfg.next_hop_v4 };
        let route = Route::Blackhole {
            prefix,
            next_hop,
            communities: communities_with_marker(&a.blackhole_communities),
        };
        out.push(RoutePlan {
            refused: check(prefix, protected, cfg),
            route,
            when: a.blackhole_escalation(),
        });
    }
    if a.flowspec {
        let action = match a.flowspec_rate_limit_bytes_per_second {
            Some(b) => FlowAction::RateLimit(b),
            None => FlowAction::Discard,
        };
        for v in vectors {
            let route = Route::Flowspec {
                destination: prefix,
                protocol: protocol_number(v.protocol, v6),
                source_port: v.source_port,
                destination_port: v.destination_port,
                action,
                communities: communities_with_marker(&a.flowspec_communities),
            };
            if out.iter().any(|p: &RoutePlan| p.route == route) {
                continue;
            }
            out.push(RoutePlan {
                refused: check(prefix, protected, cfg),
                route,
                when: a.flowspec_escalation(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AttackType, Direction, EventKind, TopSource};

    fn ev(ip: &str, proto: Protocol, sources: &[(u16, f64)]) -> AttackEvent {
        AttackEvent {
            event: EventKind::Start,
            id: "a".into(),
            ip: ip.parse().unwrap(),
            direction: Direction::Incoming,
            attack_type: AttackType::UdpFlood,
            protocol: proto,
            time_ms: 0,
            pps: 1,
            bps: 1,
            flows_per_second: 1,
            peak_pps: 1,
            hostgroup: "web".into(),
            top_sources: sources
                .iter()
                .enumerate()
                .map(|(i, (p, s))| TopSource {
                    ip: format!("198.51.100.{}", i + 1).parse().unwrap(),
                    port: Some(*p),
                    share: *s,
                })
                .collect(),
            vectors: Vec::new(),
            previous_attack_type: None,
            new_vectors: Vec::new(),
        }
    }

    fn cfg() -> BgpConfig {
        let mut c = BgpConfig::default();
        let mut a = BgpActions {
            blackhole: true,
            flowspec: true,
            ..Default::default()
        };
        a.blackhole_communities = vec!["65535:666".into()];
        c.hostgroup.insert("web".into(), a);
        c
    }

    fn nets() -> Vec<IpNet> {
        vec![
            "192.0.2.0/24".parse().unwrap(),
            "2001:db8::/32".parse().unwrap(),
        ]
    }

    #[test]
    fn a_dominant_source_port_goes_into_the_vector() {
        let e = ev(
            "192.0.2.1",
            Protocol::Udp,
            &[(53, 0.3), (53, 0.3), (123, 0.2)],
        );
        assert_eq!(vectors_of(&e)[0].source_port, Some(53));
        // No port with half of the packets: no port in the rule.
        let e = ev("192.0.2.1", Protocol::Udp, &[(53, 0.3), (123, 0.3)]);
        assert_eq!(vectors_of(&e)[0].source_port, None);
        // ICMP has no ports whatever the sources say.
        let e = ev("192.0.2.1", Protocol::Icmp, &[(53, 0.9)]);
        assert_eq!(vectors_of(&e)[0].source_port, None);
    }

    #[test]
    fn blackhole_and_one_flowspec_rule_per_vector() {
        let c = cfg();
        let e = ev("192.0.2.1", Protocol::Udp, &[(53, 0.9)]);
        let vs = vec![
            vectors_of(&e)[0],
            Vector {
                protocol: Protocol::Tcp,
                source_port: None,
                destination_port: Some(80),
            },
        ];
        let p = plan(&e, &vs, &c, &nets());
        assert_eq!(p.len(), 3);
        assert_eq!(
            p[0].route.describe(),
            "blackhole 192.0.2.1/32 next-hop 192.0.2.1 communities 65535:666"
        );
        assert_eq!(
            p[1].route.describe(),
            "flowspec destination 192.0.2.1/32 protocol udp source-port 53 then discard"
        );
        assert_eq!(
            p[2].route.describe(),
            "flowspec destination 192.0.2.1/32 protocol tcp destination-port 80 then discard"
        );
        assert!(p.iter().all(|r| r.refused.is_none()));
        // Another hostgroup: defaults are off.
        let mut other = e.clone();
        other.hostgroup = "other".into();
        assert!(plan(&other, &vs, &c, &nets()).is_empty());
    }

    #[test]
    fn v6_host_route_and_rate_limit_and_marker() {
        let mut c = cfg();
        c.marker_community = Some("65001:4242".into());
        c.hostgroup
            .get_mut("web")
            .unwrap()
            .flowspec_rate_limit_bytes_per_second = Some(1000);
        let e = ev("2001:db8::5", Protocol::Icmp, &[]);
        let p = plan(&e, &vectors_of(&e), &c, &nets());
        match &p[0].route {
            Route::Blackhole {
                prefix,
                communities,
                ..
            } => {
                assert_eq!(prefix.to_string(), "2001:db8::5/128");
                assert_eq!(communities, &["65535:666", "65001:4242"]);
            }
            r => panic!("{r:?}"),
        }
        assert_eq!(
            p[1].route.describe(),
            "flowspec destination 2001:db8::5/128 protocol icmpv6 then rate-limit 1000 B/s"
        );
    }

    #[test]
    fn refusals_outside_protected_and_too_short() {
        let mut c = cfg();
        let e = ev("203.0.113.9", Protocol::Udp, &[]);
        let p = plan(&e, &vectors_of(&e), &c, &nets());
        assert!(p
            .iter()
            .all(|r| r.refused == Some(Refusal::OutsideProtected)));
        // A /24 announcement for a host in a protected /24 breaks the /32 limit.
        c.hostgroup.get_mut("web").unwrap().prefix_length_v4 = 24;
        let e = ev("192.0.2.77", Protocol::Udp, &[]);
        let p = plan(&e, &vectors_of(&e), &c, &nets());
        assert_eq!(p[0].route.prefix().to_string(), "192.0.2.0/24");
        assert!(p.iter().all(|r| r.refused == Some(Refusal::PrefixTooShort)));
        // With the limit lowered it passes, still inside the protected /24.
        c.min_prefix_length_v4 = 24;
        assert!(plan(&e, &vectors_of(&e), &c, &nets())
            .iter()
            .all(|r| r.refused.is_none()));
    }

    #[test]
    fn escalation_by_rate_or_by_time() {
        let always = Escalation::default();
        assert!(always.wanted(0, 0, 0));
        let by_rate = Escalation {
            above_bps: Some(1000),
            after_ms: None,
        };
        assert!(!by_rate.wanted(999, 0, 1_000_000));
        assert!(by_rate.wanted(1000, 0, 0));
        let by_time = Escalation {
            above_bps: None,
            after_ms: Some(30_000),
        };
        assert!(!by_time.wanted(u64::MAX, 10_000, 39_999));
        assert!(by_time.wanted(0, 10_000, 40_000));
    }
}
