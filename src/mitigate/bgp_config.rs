//! `[bgp]` configuration: which BGP daemon flowguard drives (GoBGP, through its `gobgp`
//! client), the safety limits every route passes, and the actions per hostgroup
//! (`[bgp.hostgroup.NAME]`; every action is off unless configured).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::route::Escalation;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BgpConfig {
    /// gRPC API of the gobgpd that holds the sessions to the routers, `host:port`
    /// (gobgpd's `--api-hosts`); none = dry run (routes are logged, not announced).
    pub gobgp_api: Option<String>,
    /// The `gobgp` client program (Debian package `gobgpd`).
    pub gobgp_cli: PathBuf,
    /// Log the routes instead of announcing them. Default: on when no `gobgp_api` is set.
    pub dry_run: Option<bool>,
    /// Each `gobgp` call is killed after this long and counts as a failure (retried).
    pub command_timeout_seconds: f64,
    /// First back-off between retries while gobgpd is unreachable; doubles, with jitter.
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How often the announced routes are looked up in gobgpd and re-added when missing
    /// (gobgpd was restarted and lost them).
    pub reassert_interval_seconds: u64,
    /// Next hop of blackhole routes (routers map it to a discard route). Defaults:
    /// 192.0.2.1 (TEST-NET-1) and 100::1 (RFC 6666's discard prefix).
    pub next_hop_v4: IpAddr,
    pub next_hop_v6: IpAddr,
    /// Added to every route flowguard announces, e.g. `"65001:4242"`. With it set, a route
    /// found in gobgpd without it is someone else's and is never withdrawn.
    pub marker_community: Option<String>,
    /// Never announce a prefix shorter than these.
    pub min_prefix_length_v4: u8,
    pub min_prefix_length_v6: u8,
    /// Never more than this many routes wanted at once; more are refused and counted.
    pub max_routes: usize,
    /// Actions per hostgroup name.
    pub hostgroup: BTreeMap<String, BgpActions>,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig {
            gobgp_api: None,
            gobgp_cli: PathBuf::from("gobgp"),
            dry_run: None,
            command_timeout_seconds: 5.0,
            retry_base_ms: 250,
            retry_max_ms: 10_000,
            reassert_interval_seconds: 5,
            next_hop_v4: IpAddr::from([192, 0, 2, 1]),
            next_hop_v6: "100::1"
                .parse()
                .unwrap_or(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
            marker_community: None,
            min_prefix_length_v4: 32,
            min_prefix_length_v6: 128,
            max_routes: 1000,
            hostgroup: BTreeMap::new(),
        }
    }
}

/// `[bgp.hostgroup.NAME]`: what an attack on a host of that group gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BgpActions {
    /// Announce the attacked host as a blackhole route.
    pub blackhole: bool,
    pub blackhole_communities: Vec<String>,
    /// Only while the attack's rate is at or above this (bits/s)...
    pub blackhole_above_bps: Option<u64>,
    /// ...or once the attack has lasted this long (whichever comes first; neither set:
    /// from the start).
    pub blackhole_after_seconds: Option<u64>,
    /// Announce a FlowSpec rule per vector of the attack (destination = the host, its
    /// protocol and, where one port carries the attack, that port).
    pub flowspec: bool,
    /// Rate-limit matching traffic to this many bytes/s instead of discarding it.
    pub flowspec_rate_limit_bytes_per_second: Option<u64>,
    pub flowspec_communities: Vec<String>,
    pub flowspec_above_bps: Option<u64>,
    pub flowspec_after_seconds: Option<u64>,
    /// Length of the announced prefix around the host (a host route by default; must
    /// not be shorter than `min_prefix_length_v4`/`_v6`).
    pub prefix_length_v4: u8,
    pub prefix_length_v6: u8,
}

impl Default for BgpActions {
    fn default() -> Self {
        BgpActions {
            blackhole: false,
            blackhole_communities: vec!["65535:666".into()],
            blackhole_above_bps: None,
            blackhole_after_seconds: None,
            flowspec: false,
            flowspec_rate_limit_bytes_per_second: None,
            flowspec_communities: Vec::new(),
            flowspec_above_bps: None,
            flowspec_after_seconds: None,
            prefix_length_v4: 32,
            prefix_length_v6: 128,
        }
    }
}

/// What a hostgroup without a `[bgp.hostgroup.NAME]` table gets: nothing.
static NO_ACTIONS: std::sync::LazyLock<BgpActions> = std::sync::LazyLock::new(BgpActions::default);

fn escalation(above_bps: Option<u64>, after_seconds: Option<u64>) -> Escalation {
    Escalation {
        above_bps,
        after_ms: after_seconds.map(|s| (s.min(i64::MAX as u64 / 1000) as i64) * 1000),
    }
}

impl BgpActions {
    pub fn blackhole_escalation(&self) -> Escalation {
        escalation(self.blackhole_above_bps, self.blackhole_after_seconds)
    }

    pub fn flowspec_escalation(&self) -> Escalation {
        escalation(self.flowspec_above_bps, self.flowspec_after_seconds)
    }

    pub fn any(&self) -> bool {
        self.blackhole || self.flowspec
    }
}

impl BgpConfig {
    pub fn is_dry_run(&self) -> bool {
        self.dry_run.unwrap_or(self.gobgp_api.is_none())
    }

    /// Some hostgroup has a BGP action: the BGP backend has work to do.
    pub fn enabled(&self) -> bool {
        self.hostgroup.values().any(BgpActions::any)
    }

    pub fn actions_for(&self, hostgroup: &str) -> &BgpActions {
        self.hostgroup.get(hostgroup).unwrap_or(&NO_ACTIONS)
    }

    pub fn command_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.command_timeout_seconds.clamp(0.001, 3600.0))
    }
}

/// `A:B` with both halves 0..=65535 (RFC 1997 communities).
pub fn valid_community(s: &str) -> bool {
    s.split_once(':')
        .is_some_and(|(a, b)| a.parse::<u16>().is_ok() && b.parse::<u16>().is_ok())
}

/// Semantic checks of `[bgp]`; every problem names its key.
pub fn validate(cfg: &BgpConfig) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(a) = &cfg.gobgp_api {
        let ok = a
            .rsplit_once(':')
            .is_some_and(|(h, port)| !h.is_empty() && port.parse::<u16>().is_ok_and(|n| n > 0));
        if !ok {
            p.push(format!("bgp.gobgp_api: {a:?} must be host:port"));
        }
    }
    if cfg.dry_run == Some(false) && cfg.gobgp_api.is_none() {
        p.push("bgp.gobgp_api: required when bgp.dry_run = false".into());
    }
    let t = cfg.command_timeout_seconds;
    if !(t.is_finite() && t > 0.0 && t <= 3600.0) {
        p.push("bgp.command_timeout_seconds: must be in (0, 3600]".into());
    }
    if cfg.retry_base_ms == 0 {
        p.push("bgp.retry_base_ms: must be at least 1".into());
    }
    if cfg.retry_max_ms < cfg.retry_base_ms {
        p.push("bgp.retry_max_ms: must be at least bgp.retry_base_ms".into());
    }
    if cfg.reassert_interval_seconds == 0 {
        p.push("bgp.reassert_interval_seconds: must be at least 1".into());
    }
    if !cfg.next_hop_v4.is_ipv4() {
        p.push("bgp.next_hop_v4: must be an IPv4 address".into());
    }
    if !cfg.next_hop_v6.is_ipv6() {
        p.push("bgp.next_hop_v6: must be an IPv6 address".into());
    }
    if let Some(m) = &cfg.marker_community {
        if !valid_community(m) {
            p.push(format!(
                "bgp.marker_community: {m:?} is not a community (A:B)"
            ));
        }
    }
    if cfg.min_prefix_length_v4 > 32 {
        p.push("bgp.min_prefix_length_v4: must be 0..=32".into());
    }
    if cfg.min_prefix_length_v6 > 128 {
        p.push("bgp.min_prefix_length_v6: must be 0..=128".into());
    }
    if cfg.max_routes == 0 {
        p.push("bgp.max_routes: must be at least 1".into());
    }
    for (name, a) in &cfg.hostgroup {
        let k = |key: &str| format!("bgp.hostgroup.{name}.{key}");
        for (key, list) in [
            ("blackhole_communities", &a.blackhole_communities),
            ("flowspec_communities", &a.flowspec_communities),
        ] {
            for c in list {
                if !valid_community(c) {
                    p.push(format!("{}: {c:?} is not a community (A:B)", k(key)));
                }
            }
        }
        if a.prefix_length_v4 > 32 {
            p.push(format!("{}: must be 0..=32", k("prefix_length_v4")));
        }
        if a.prefix_length_v6 > 128 {
            p.push(format!("{}: must be 0..=128", k("prefix_length_v6")));
        }
        if a.flowspec_rate_limit_bytes_per_second == Some(0) {
            p.push(format!(
                "{}: must be at least 1 (to drop everything, leave it unset: discard)",
                k("flowspec_rate_limit_bytes_per_second")
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = BgpConfig {
            gobgp_api: Some("nonsense".into()),
            marker_community: Some("1:2:3".into()),
            max_routes: 0,
            min_prefix_length_v4: 33,
            next_hop_v4: "::1".parse().unwrap(),
            ..Default::default()
        };
        c.hostgroup.insert(
            "web".into(),
            BgpActions {
                blackhole_communities: vec!["65535:66666".into()],
                prefix_length_v6: 129,
                flowspec_rate_limit_bytes_per_second: Some(0),
                ..Default::default()
            },
        );
        let all = validate(&c).join("\n");
        for k in [
            "bgp.gobgp_api:",
            "bgp.marker_community:",
            "bgp.max_routes:",
            "bgp.min_prefix_length_v4:",
            "bgp.next_hop_v4:",
            "bgp.hostgroup.web.blackhole_communities: \"65535:66666\"",
            "bgp.hostgroup.web.prefix_length_v6:",
            "bgp.hostgroup.web.flowspec_rate_limit_bytes_per_second:",
        ] {
            assert!(all.contains(k), "missing {k} in:\n{all}");
        }
        assert!(validate(&BgpConfig::default()).is_empty());
    }

    #[test]
    fn loads_from_the_service_config_and_rejects_unknown_keys() {
        let cfg = crate::config::Config::from_toml_str(
            r#"
            [bgp]
            gobgp_api = "127.0.0.1:50051"
            [bgp.hostgroup.web]
            blackhole = true
            blackhole_above_bps = 1000000
            flowspec = true
            "#,
        )
        .map_err(|e| e.problems)
        .unwrap();
        assert!(!cfg.bgp.is_dry_run());
        assert!(cfg.bgp.enabled());
        let a = cfg.bgp.actions_for("web");
        assert_eq!(a.blackhole_communities, ["65535:666"]);
        assert_eq!(a.blackhole_escalation().above_bps, Some(1_000_000));
        assert!(!cfg.bgp.actions_for("other").any());
        let err = crate::config::Config::from_toml_str("[bgp.hostgroup.web]\nblackhol = true\n")
            .unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("bgp.hostgroup.web.blackhol: unknown key"),
            "{:?}",
            err.problems
        );
    }
}
