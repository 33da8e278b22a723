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

/// One vector of an attack: the part of its packets one kind of flood carries. The five
/// partition the attack's packets (see `detect::vectors` for how the counters are split).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vector {
    /// TCP SYN without ACK.
    Syn,
    Icmp,
    /// UDP that is not a fragment.
    Udp,
    /// IP fragments, whatever they carry.
    Fragments,
    /// Everything else (TCP without SYN, GRE, ...).
    Other,
}

impl Vector {
    pub const ALL: [Vector; 5] = [
        Vector::Syn,
        Vector::Icmp,
        Vector::Udp,
        Vector::Fragments,
        Vector::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Vector::Syn => "syn",
            Vector::Icmp => "icmp",
            Vector::Udp => "udp",
            Vector::Fragments => "fragments",
            Vector::Other => "other",
        }
    }

    /// The attack type an attack made of this vector alone is classified as.
    pub fn attack_type(self) -> AttackType {
        match self {
            Vector::Syn => AttackType::SynFlood,
            Vector::Icmp => AttackType::IcmpFlood,
            Vector::Udp => AttackType::UdpFlood,
            Vector::Fragments => AttackType::IpFragmentation,
            Vector::Other => AttackType::Unknown,
        }
    }
}

impl fmt::Display for Vector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A vector of an attack as events, the API and reports show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VectorSummary {
    /// The attack type of this vector alone (`syn_flood`, `icmp_flood`, `udp_flood`,
    /// `ip_fragmentation`, `unknown` for "other").
    #[serde(rename = "type")]
    pub attack_type: AttackType,
    pub vector: Vector,
    pub protocol: Protocol,
    /// Share of the attack's packets so far, 0.0..=1.0.
    pub share: f64,
    /// Current (window-average) rates.
    pub pps: u64,
    pub bps: u64,
    pub peak_pps: u64,
    pub peak_bps: u64,
    /// It breaks a threshold of its own (`threshold_syn_*` for syn, ...) right now.
    pub over_threshold: bool,
    /// It counts right now (share or own threshold); a vector once counted stays listed
    /// until the attack ends.
    pub active: bool,
    /// When it first counted (unix ms).
    pub since_ms: i64,
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
    /// The attack's vectors so far, dominant first (empty for an external detector's
    /// attack that flowguard's own detection never saw).
    #[serde(default)]
    pub vectors: Vec<VectorSummary>,
    /// On an update: the type before this update, when the update changed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_attack_type: Option<AttackType>,
    /// On an update: the vectors that started to count with this update.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub new_vectors: Vec<Vector>,
}

impl AttackEvent {
    /// An update that changes what the attack is (its type or its vectors); such an
    /// update must reach mitigation, unlike a periodic refresh of rates.
    pub fn is_change(&self) -> bool {
        self.event == EventKind::Update
            && (self.previous_attack_type.is_some() || !self.new_vectors.is_empty())
    }
}
