//! Shared vocabulary of the pipeline: directions, protocols, attack types and the
//! [`AttackEvent`] that the detect stage hands to the mitigate stage.
//!
//! This module owns no behaviour; it exists so that stages agree on names without
//! depending on each other. Serialized names are FastNetMon's, so reports and JSON output
//! read the same to an operator who knows FastNetMon.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Which way traffic crosses the protected network's edge, seen from the protected host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// The destination address is protected.
    Incoming,
    /// The source address is protected.
    Outgoing,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Incoming, Direction::Outgoing];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        }
    }

    pub fn parse(s: &str) -> Option<Direction> {
        match s {
            "incoming" => Some(Direction::Incoming),
            "outgoing" => Some(Direction::Outgoing),
            _ => None,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attack protocol, FastNetMon's `Attack protocol:` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Unknown,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
            Protocol::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> Protocol {
        match s.trim().to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" | "icmpv6" => Protocol::Icmp,
            _ => Protocol::Unknown,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Attack classification, FastNetMon's `Attack type:` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackType {
    SynFlood,
    IcmpFlood,
    UdpFlood,
    IpFragmentation,
    Unknown,
}

impl AttackType {
    pub const ALL: [AttackType; 5] = [
        AttackType::SynFlood,
        AttackType::IcmpFlood,
        AttackType::UdpFlood,
        AttackType::IpFragmentation,
        AttackType::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AttackType::SynFlood => "syn_flood",
            AttackType::IcmpFlood => "icmp_flood",
            AttackType::UdpFlood => "udp_flood",
            AttackType::IpFragmentation => "ip_fragmentation",
            AttackType::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> AttackType {
        match s.trim() {
            "syn_flood" => AttackType::SynFlood,
            "icmp_flood" => AttackType::IcmpFlood,
            "udp_flood" => AttackType::UdpFlood,
            "ip_fragmentation" => AttackType::IpFragmentation,
            _ => AttackType::Unknown,
        }
    }
}

impl fmt::Display for AttackType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One source address (and its most frequent port) of attack traffic with its share.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopSource {
    pub ip: IpAddr,
    /// The port this address sends at least half of its packets from, if there is one
    /// (none when ports vary, as in a SYN flood with random source ports).
    pub port: Option<u16>,
    /// Share of the attack's sampled packets, 0.0..=1.0.
    pub share: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Start,
    Update,
    End,
}

/// An attack lifecycle event. The detect stage emits these (for its own detection and for
/// events that arrive through the FastNetMon hook), the mitigate stage consumes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackEvent {
    pub event: EventKind,
    pub id: String,
    pub ip: IpAddr,
    pub direction: Direction,
    pub attack_type: AttackType,
    pub protocol: Protocol,
    /// Unix time of the event in milliseconds (capture clock in replay).
    pub time_ms: i64,
    pub pps: u64,
    pub bps: u64,
    pub flows_per_second: u64,
    pub peak_pps: u64,
    pub hostgroup: String,
    pub top_sources: Vec<TopSource>,
}
