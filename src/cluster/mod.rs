//! Cluster mode on NATS JetStream: several flowguard processes, each with some of the
//! roles collector, detector and controller (README "Running a cluster").
//!
//! - [`frame`]: the versioned binary delta frame (pure);
//! - [`lease`]: partitioning, rendezvous assignment, lease freshness, second closing and
//!   the controller's attack lifecycle (pure, `now` passed in);
//! - [`node`]: the NATS I/O at the edges: heartbeats, the collector's publisher, the
//!   detector's merge and leases, the controller's election and state;
//! - this module: the `[cluster]` config section.
//!
//! Without a `[cluster]` section none of this runs.

pub mod frame;
pub mod lease;
pub mod node;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Collector,
    Detector,
    Controller,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Collector => "collector",
            Role::Detector => "detector",
            Role::Controller => "controller",
        }
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterConfig {
    /// NATS servers (a JetStream cluster), e.g. `["nats://10.0.0.1:4222", ...]`.
    pub nats_urls: Vec<String>,
    /// This node's name, unique in the cluster: letters, digits, `-` and `_`.
    pub node_id: String,
    pub roles: Vec<Role>,
    /// Partitions of the protected hosts (by a stable hash of the address).
    pub partitions: u16,
    /// Prefix of every subject, stream and bucket name (several clusters on one NATS).
    pub name: String,
    /// Heartbeats, partition and controller lease renewals.
    pub heartbeat_interval_ms: u64,
    /// TTL of the members and leases bucket: a node silent this long is gone.
    pub lease_ttl_ms: u64,
    /// How long after a second ends a detector waits for missing collectors' frames.
    pub merge_wait_ms: u64,
    /// Replicas of the event stream and the state buckets (at most the NATS servers).
    pub replicas: usize,
    /// Largest delta frame (NATS 2.9's default message limit is 1 MiB).
    pub max_frame_bytes: usize,
    /// Host-directions a collector ships per second at most (the rest is counted).
    pub max_hosts_per_second: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            nats_urls: Vec::new(),
            node_id: String::new(),
            roles: Vec::new(),
            partitions: 64,
            name: "flowguard".into(),
            heartbeat_interval_ms: 750,
            lease_ttl_ms: 3000,
            merge_wait_ms: 1500,
            replicas: 3,
            max_frame_bytes: 900_000,
            max_hosts_per_second: 1_000_000,
        }
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl ClusterConfig {
    pub fn has(&self, r: Role) -> bool {
        self.roles.contains(&r)
    }

    /// Semantic checks; every problem names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.nats_urls.is_empty() {
            p.push("cluster.nats_urls: at least one NATS server".into());
        }
        for u in &self.nats_urls {
            if !(u.starts_with("nats://") || u.starts_with("tls://")) {
                p.push(format!(
                    "cluster.nats_urls: {u:?} is not a nats:// or tls:// URL"
                ));
            }
        }
        if !name_ok(&self.node_id) {
            p.push("cluster.node_id: 1 to 64 letters, digits, '-' or '_'".into());
        }
        if !name_ok(&self.name) {
            p.push("cluster.name: 1 to 64 letters, digits, '-' or '_'".into());
        }
        if self.roles.is_empty() {
            p.push("cluster.roles: at least one of collector, detector, controller".into());
        }
        if self.partitions == 0 || self.partitions > 4096 {
            p.push("cluster.partitions: must be 1..=4096".into());
        }
        if self.heartbeat_interval_ms < 100 {
            p.push("cluster.heartbeat_interval_ms: at least 100".into());
        }
        if self.lease_ttl_ms < 3 * self.heartbeat_interval_ms {
            p.push("cluster.lease_ttl_ms: at least 3 heartbeat intervals".into());
        }
        if self.replicas == 0 || self.replicas > 5 {
            p.push("cluster.replicas: must be 1..=5".into());
        }
        if self.max_frame_bytes < 4096 || self.max_frame_bytes > 1 << 20 {
            p.push("cluster.max_frame_bytes: must be 4096..=1048576".into());
        }
        if self.max_hosts_per_second == 0 {
            p.push("cluster.max_hosts_per_second: at least 1".into());
        }
        p
    }
}

/// The hash of what every node must agree on to merge each other's deltas: the
/// partitions and the protected networks with their hostgroups and thresholds. A frame
/// from a node with another hash is refused and counted.
pub fn config_hash(cfg: &crate::config::Config) -> u64 {
    let c = cfg.cluster.as_ref();
    let text = format!(
        "{:?}|{:?}|{:?}|{}",
        c.map(|c| c.partitions),
        cfg.networks,
        cfg.hostgroups,
        cfg.aggregate.window_seconds
    );
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = r#"
        [networks]
        protected = ["127.16.0.0/16"]
        [cluster]
        nats_urls = ["nats://127.0.0.1:14222"]
        node_id = "C"
        roles = ["detector", "controller"]
    "#;

    #[test]
    fn a_cluster_section_parses_with_defaults() {
        let c = Config::from_toml_str(BASE).unwrap().cluster.unwrap();
        assert_eq!((c.partitions, c.node_id.as_str()), (64, "C"));
        assert!(c.has(super::Role::Controller) && !c.has(super::Role::Collector));
        assert!(Config::from_toml_str("").unwrap().cluster.is_none());
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let e = Config::from_toml_str(&format!("{BASE}\nlease_ttl = 3\n")).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.contains("cluster.lease_ttl")),
            "{e:?}"
        );
        let e = Config::from_toml_str(&BASE.replace("\"C\"", "\"a b\"")).unwrap_err();
        assert!(
            e.problems.iter().any(|p| p.contains("cluster.node_id")),
            "{e:?}"
        );
        let e = Config::from_toml_str(&BASE.replace("\"controller\"", "\"boss\"")).unwrap_err();
        assert!(!e.problems.is_empty());
    }
}
