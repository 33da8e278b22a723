//! `[mitigator]` configuration: where the appliance is, how to log in, which policy and
//! which countermeasures an attack gets, and how hard to retry.
//!
//! Owns the pure lookups derived from it (policy for an address, countermeasures for an
//! attack, API names of countermeasures) so the planner and the worker share one reading.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::model::{AttackEvent, AttackType, Protocol, TopSource};

/// Environment variable read for the password when neither `password` nor
/// `password_file` is set.
pub const PASSWORD_ENV: &str = "FLOWGUARD_MITIGATOR_PASSWORD";

/// Keys accepted in `[mitigator.countermeasures]`.
const CM_KEYS: [&str; 8] = [
    "syn_flood",
    "icmp_flood",
    "udp_flood",
    "ip_fragmentation",
    "tcp",
    "udp",
    "icmp",
    "default",
];

/// A secret string: deserializes from a plain string, never shows in `Debug` or logs.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MitigatorConfig {
    /// Base URL of the appliance, e.g. `https://mitigator.example.net` (the `/api/v4/`
    /// suffix is added); none = dry run.
    pub url: Option<String>,
    pub username: String,
    /// Plain password; prefer `password_file` or the `FLOWGUARD_MITIGATOR_PASSWORD`
    /// environment variable.
    #[serde(skip_serializing)]
    pub password: Option<Secret>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Verify the appliance's certificate (on by default; appliances often have a
    /// self-signed one: give its CA in `ca_file` rather than switching this off).
    pub verify_tls: bool,
    /// PEM file of the CA (or the self-signed certificate) to trust instead of the system
    /// roots.
    pub ca_file: Option<PathBuf>,
    /// Log the calls instead of making them. Default: on when no `url` is set.
    pub dry_run: Option<bool>,
    /// Policy of addresses no other rule matches (1 is MITIGATOR's default policy).
    pub default_policy: u32,
    /// Policy per flowguard hostgroup name.
    pub policy_by_hostgroup: BTreeMap<String, u32>,
    /// Policy per prefix (`"203.0.113.0/24" = 5`); the longest matching prefix wins and
    /// takes precedence over `policy_by_hostgroup`.
    pub policy_by_prefix: BTreeMap<String, u32>,
    /// Countermeasures per attack type (`syn_flood`, `icmp_flood`, `udp_flood`,
    /// `ip_fragmentation`), then per protocol (`tcp`, `udp`, `icmp`), then `default`.
    /// Entries here override the built-in rule: SYN flood or TCP → `tcp`, ICMP flood or
    /// ICMP → `acl`, anything else → `sorb`. Names are v20.08+ names.
    pub countermeasures: BTreeMap<String, Vec<String>>,
    /// Talk to a pre-v20.08 appliance: `tcp` is sent as `tcpFloodProt`, `sorb` as
    /// `sourceLimiter`.
    pub legacy_names: bool,
    pub connect_timeout_seconds: f64,
    pub request_timeout_seconds: f64,
    /// Attempts per call on timeouts, connection errors and 5xx (never on 4xx).
    pub retries: u32,
    /// First back-off between attempts; doubles per attempt, with jitter.
    pub retry_base_ms: u64,
    /// Cap on the back-off, also between background retries while the appliance is down.
    pub retry_max_ms: u64,
    /// After a restart, attacks restored from the state file are ended (and their switches
    /// released) unless a Start or End for them arrives within this many seconds.
    pub restore_grace_seconds: u64,
    /// Put this many of an attack's top sources into the temporary blacklist (`tbl`) of
    /// its policy; 0 = off.
    pub tbl_top_sources: usize,
    /// Only a top source carrying at least this share of the attack's packets, in percent,
    /// goes to the temporary blacklist: the sources of a random-source (spoofed) flood
    /// each carry a tiny share and are someone else's addresses.
    pub tbl_min_source_share_percent: f64,
    pub tbl_ttl_seconds: u32,
    /// Steps a backend's queue holds (while MITIGATOR or the BGP daemon is down) before
    /// new ones are coalesced into queued ones for the same resource; counted in
    /// `flowguard_cap_overflow_total{cap="mitigation_queue"}`. Nothing is dropped: the
    /// desired state is in the state file and each step is decided from it when it runs.
    pub max_queued_operations: usize,
}

impl Default for MitigatorConfig {
    fn default() -> Self {
        MitigatorConfig {
            url: None,
            username: String::new(),
            password: None,
            password_file: None,
            verify_tls: true,
            ca_file: None,
            dry_run: None,
            default_policy: 1,
            policy_by_hostgroup: BTreeMap::new(),
            policy_by_prefix: BTreeMap::new(),
            countermeasures: BTreeMap::new(),
            legacy_names: false,
            connect_timeout_seconds: 3.0,
            request_timeout_seconds: 30.0,
            retries: 3,
            retry_base_ms: 250,
            retry_max_ms: 30_000,
            restore_grace_seconds: 600,
            tbl_top_sources: 0,
            tbl_min_source_share_percent: 5.0,
            tbl_ttl_seconds: 600,
            max_queued_operations: 1000,
        }
    }
}

impl MitigatorConfig {
    /// Dry run when asked for, or when there is nowhere to send calls.
    pub fn is_dry_run(&self) -> bool {
        self.dry_run.unwrap_or(self.url.is_none())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.connect_timeout_seconds.clamp(0.001, 3600.0))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.request_timeout_seconds.clamp(0.001, 3600.0))
    }

    /// The password from `password`, else `password_file`, else the environment.
    pub fn resolve_password(&self) -> Result<Secret, String> {
        if let Some(p) = &self.password {
            return Ok(p.clone());
        }
        if let Some(f) = &self.password_file {
            let s = std::fs::read_to_string(f)
                .map_err(|e| format!("mitigator.password_file: {}: {e}", f.display()))?;
            return Ok(Secret(s.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Ok(p) = std::env::var(PASSWORD_ENV) {
            return Ok(Secret(p));
        }
        Err(format!(
            "mitigator.password: required (or mitigator.password_file, or {PASSWORD_ENV})"
        ))
    }

    /// Policy for an attacked address: longest `policy_by_prefix` match, then
    /// `policy_by_hostgroup`, then `default_policy`.
    pub fn policy_for(&self, ip: IpAddr, hostgroup: &str) -> u32 {
        let best = self
            .policy_by_prefix
            .iter()
            .filter_map(|(k, v)| parse_prefix(k).map(|n| (n, *v)))
            .filter(|(n, _)| n.contains(&ip))
            .max_by_key(|(n, _)| n.prefix_len());
        if let Some((_, p)) = best {
            return p;
        }
        self.policy_by_hostgroup
            .get(hostgroup)
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// Countermeasures (API names, deduplicated, in configured order) for an attack.
    pub fn countermeasures_for(&self, attack: AttackType, proto: Protocol) -> Vec<String> {
        let mut keys = Vec::new();
        if attack != AttackType::Unknown {
            keys.push(attack.as_str());
        }
        if proto != Protocol::Unknown {
            keys.push(proto.as_str());
        }
        keys.push("default");
        let logical: Vec<String> = keys
            .iter()
            .find_map(|k| {
                self.countermeasures
                    .get(*k)
                    .cloned()
                    .or_else(|| builtin_countermeasures(k))
            })
            .unwrap_or_default();
        let mut out: Vec<String> = Vec::new();
        for n in logical {
            let n = self.api_name(&n);
            if !out.contains(&n) {
                out.push(n);
            }
        }
        out
    }

    /// Countermeasures for an attack event: each of its vectors' (dominant first), through
    /// the same map by the vector's own type and protocol, so a single-vector attack gets
    /// what its type got before vectors existed; an event without vectors (an external
    /// detector's attack) gets its type's.
    pub fn countermeasures_for_event(&self, ev: &AttackEvent) -> Vec<String> {
        if ev.vectors.is_empty() {
            return self.countermeasures_for(ev.attack_type, ev.protocol);
        }
        let mut out: Vec<String> = Vec::new();
        for v in &ev.vectors {
            for c in self.countermeasures_for(v.attack_type, v.protocol) {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        out
    }

    /// The temporary-blacklist prefixes for an attack's top sources (at most
    /// `tbl_top_sources`, each with at least `tbl_min_source_share_percent` of the
    /// attack's packets), and how many of those top sources were skipped for their share.
    pub fn tbl_selection(&self, top: &[TopSource]) -> (Vec<String>, usize) {
        let mut skipped = 0;
        let prefixes = top
            .iter()
            .take(self.tbl_top_sources)
            .filter(|s| {
                let keep = s.share * 100.0 >= self.tbl_min_source_share_percent;
                skipped += usize::from(!keep);
                keep
            })
            .map(|s| IpNet::from(s.ip).to_string())
            .collect();
        (prefixes, skipped)
    }

    /// The name MITIGATOR knows a countermeasure by, for the configured generation.
    pub fn api_name(&self, logical: &str) -> String {
        if self.legacy_names {
            match logical {
                "tcp" => return "tcpFloodProt".into(),
                "sorb" => return "sourceLimiter".into(),
                _ => {}
            }
        }
        logical.to_string()
    }
}

/// The seed's rule: SYN flood or TCP → tcp; ICMP flood or ICMP → acl; else sorb.
fn builtin_countermeasures(key: &str) -> Option<Vec<String>> {
    match key {
        "syn_flood" | "tcp" => Some(vec!["tcp".into()]),
        "icmp_flood" | "icmp" => Some(vec!["acl".into()]),
        "default" => Some(vec!["sorb".into()]),
        _ => None,
    }
}

fn parse_prefix(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

/// A switch name MITIGATOR could have: letters, digits, underscore.
pub fn valid_switch_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Semantic checks of `[mitigator]`; every problem names its key.
pub fn validate(cfg: &MitigatorConfig) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(u) = &cfg.url {
        match reqwest::Url::parse(u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {}
            Ok(_) => p.push(format!(
                "mitigator.url: {u:?} must be an http(s) URL with a host"
            )),
            Err(e) => p.push(format!("mitigator.url: {u:?}: {e}")),
        }
    }
    if cfg.dry_run == Some(false) && cfg.url.is_none() {
        p.push("mitigator.url: required when mitigator.dry_run = false".into());
    }
    if !cfg.is_dry_run() {
        if cfg.username.is_empty() {
            p.push("mitigator.username: required when mitigator.url is set".into());
        }
        if cfg.password.is_some() && cfg.password_file.is_some() {
            p.push("mitigator.password_file: give either password or password_file".into());
        } else if let Err(e) = cfg.resolve_password() {
            p.push(e);
        }
    }
    if let Some(f) = &cfg.ca_file {
        match std::fs::read(f) {
            Ok(b) if reqwest::Certificate::from_pem_bundle(&b).is_ok_and(|v| !v.is_empty()) => {}
            Ok(_) => p.push(format!(
                "mitigator.ca_file: {}: no PEM certificate in it",
                f.display()
            )),
            Err(e) => p.push(format!("mitigator.ca_file: {}: {e}", f.display())),
        }
    }
    if cfg.default_policy == 0 {
        p.push("mitigator.default_policy: policy ids start at 1".into());
    }
    for (k, v) in &cfg.policy_by_hostgroup {
        if *v == 0 {
            p.push(format!(
                "mitigator.policy_by_hostgroup.{k}: policy ids start at 1"
            ));
        }
    }
    for (k, v) in &cfg.policy_by_prefix {
        if parse_prefix(k).is_none() {
            p.push(format!(
                "mitigator.policy_by_prefix.{k}: not a prefix or address"
            ));
        }
        if *v == 0 {
            p.push(format!(
                "mitigator.policy_by_prefix.{k}: policy ids start at 1"
            ));
        }
    }
    for (k, names) in &cfg.countermeasures {
        if !CM_KEYS.contains(&k.as_str()) {
            p.push(format!(
                "mitigator.countermeasures.{k}: unknown key (expected one of {})",
                CM_KEYS.join(", ")
            ));
        }
        for n in names {
            if !valid_switch_name(n) || n == "toggle" {
                p.push(format!(
                    "mitigator.countermeasures.{k}: {n:?} is not a countermeasure name"
                ));
            }
        }
    }
    for (key, v) in [
        ("connect_timeout_seconds", cfg.connect_timeout_seconds),
        ("request_timeout_seconds", cfg.request_timeout_seconds),
    ] {
        if !(v.is_finite() && v > 0.0 && v <= 3600.0) {
            p.push(format!("mitigator.{key}: must be in (0, 3600]"));
        }
    }
    if cfg.retries == 0 || cfg.retries > 100 {
        p.push("mitigator.retries: must be 1..=100".into());
    }
    if cfg.retry_base_ms == 0 {
        p.push("mitigator.retry_base_ms: must be at least 1".into());
    }
    if cfg.retry_max_ms < cfg.retry_base_ms {
        p.push("mitigator.retry_max_ms: must be at least mitigator.retry_base_ms".into());
    }
    let share = cfg.tbl_min_source_share_percent;
    if !(share.is_finite() && (0.0..=100.0).contains(&share)) {
        p.push("mitigator.tbl_min_source_share_percent: must be in [0, 100]".into());
    }
    if cfg.tbl_top_sources > 0 && cfg.tbl_ttl_seconds == 0 {
        p.push("mitigator.tbl_ttl_seconds: must be at least 1 when tbl_top_sources > 0".into());
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Vector, VectorSummary};

    #[test]
    fn default_countermeasures_follow_the_seed_rule() {
        let c = MitigatorConfig::default();
        use AttackType as A;
        use Protocol as P;
        assert_eq!(c.countermeasures_for(A::SynFlood, P::Tcp), ["tcp"]);
        assert_eq!(c.countermeasures_for(A::IcmpFlood, P::Icmp), ["acl"]);
        assert_eq!(c.countermeasures_for(A::UdpFlood, P::Udp), ["sorb"]);
        assert_eq!(c.countermeasures_for(A::Unknown, P::Tcp), ["tcp"]);
        assert_eq!(c.countermeasures_for(A::Unknown, P::Icmp), ["acl"]);
        assert_eq!(c.countermeasures_for(A::IpFragmentation, P::Udp), ["sorb"]);
        let legacy = MitigatorConfig {
            legacy_names: true,
            ..Default::default()
        };
        assert_eq!(
            legacy.countermeasures_for(A::SynFlood, P::Tcp),
            ["tcpFloodProt"]
        );
        assert_eq!(
            legacy.countermeasures_for(A::UdpFlood, P::Udp),
            ["sourceLimiter"]
        );
        assert_eq!(legacy.countermeasures_for(A::IcmpFlood, P::Icmp), ["acl"]);
    }

    #[test]
    fn configured_countermeasures_override_per_key() {
        let mut c = MitigatorConfig::default();
        c.countermeasures
            .insert("udp_flood".into(), vec!["lim".into(), "sorb".into()]);
        assert_eq!(
            c.countermeasures_for(AttackType::UdpFlood, Protocol::Udp),
            ["lim", "sorb"]
        );
        // Untouched keys keep the built-in rule.
        assert_eq!(
            c.countermeasures_for(AttackType::SynFlood, Protocol::Tcp),
            ["tcp"]
        );
    }

    fn event(t: AttackType, p: Protocol, vectors: &[(Vector, Protocol)]) -> AttackEvent {
        AttackEvent {
            event: crate::model::EventKind::Start,
            id: "a".into(),
            ip: "192.0.2.1".parse().unwrap(),
            direction: crate::model::Direction::Incoming,
            attack_type: t,
            protocol: p,
            time_ms: 0,
            pps: 0,
            bps: 0,
            flows_per_second: 0,
            peak_pps: 0,
            hostgroup: String::new(),
            top_sources: Vec::new(),
            vectors: vectors
                .iter()
                .map(|(v, p)| VectorSummary {
                    attack_type: v.attack_type(),
                    vector: *v,
                    protocol: *p,
                    share: 0.5,
                    pps: 0,
                    bps: 0,
                    peak_pps: 0,
                    peak_bps: 0,
                    over_threshold: false,
                    active: true,
                    since_ms: 0,
                })
                .collect(),
            previous_attack_type: None,
            new_vectors: Vec::new(),
        }
    }

    #[test]
    fn every_vector_gets_its_countermeasure_and_single_vectors_are_unchanged() {
        use AttackType as A;
        use Protocol as P;
        use Vector as V;
        let c = MitigatorConfig::default();
        // The issue's case: classified udp_flood first, SYN as well.
        let e = event(A::UdpFlood, P::Udp, &[(V::Syn, P::Tcp), (V::Udp, P::Udp)]);
        assert_eq!(c.countermeasures_for_event(&e), ["tcp", "sorb"]);
        let e = event(
            A::Unknown,
            P::Unknown,
            &[
                (V::Icmp, P::Icmp),
                (V::Fragments, P::Udp),
                (V::Other, P::Unknown),
            ],
        );
        assert_eq!(c.countermeasures_for_event(&e), ["acl", "sorb"]);
        // One vector: exactly what its type gave before vectors existed.
        for (t, p, v) in [
            (A::SynFlood, P::Tcp, V::Syn),
            (A::IcmpFlood, P::Icmp, V::Icmp),
            (A::UdpFlood, P::Udp, V::Udp),
            (A::IpFragmentation, P::Udp, V::Fragments),
            (A::Unknown, P::Tcp, V::Other),
        ] {
            let e = event(t, p, &[(v, p)]);
            assert_eq!(
                c.countermeasures_for_event(&e),
                c.countermeasures_for(t, p),
                "{t} {p}"
            );
        }
        // No vectors (an external detector's attack): its type's.
        assert_eq!(
            c.countermeasures_for_event(&event(A::IcmpFlood, P::Icmp, &[])),
            ["acl"]
        );
        // The configured map applies per vector.
        let mut c = MitigatorConfig::default();
        c.countermeasures
            .insert("udp_flood".into(), vec!["lim".into()]);
        let e = event(A::SynFlood, P::Tcp, &[(V::Syn, P::Tcp), (V::Udp, P::Udp)]);
        assert_eq!(c.countermeasures_for_event(&e), ["tcp", "lim"]);
    }

    #[test]
    fn only_sources_with_a_real_share_go_to_the_blacklist() {
        let src = |ip: &str, share: f64| TopSource {
            ip: ip.parse().unwrap(),
            port: None,
            share,
        };
        let top = [
            src("198.51.100.1", 0.60),
            src("198.51.100.2", 0.05),
            src("198.51.100.3", 0.049),
            src("198.51.100.4", 0.001),
            src("198.51.100.5", 0.30),
        ];
        let c = MitigatorConfig {
            tbl_top_sources: 4,
            ..Default::default()
        };
        assert_eq!(
            c.tbl_selection(&top),
            (
                vec!["198.51.100.1/32".to_string(), "198.51.100.2/32".to_string()],
                2
            )
        );
        // A spoofed flood: every source tiny, none blacklisted.
        let spoofed: Vec<TopSource> = (0..10)
            .map(|i| src(&format!("203.0.113.{i}"), 0.0001))
            .collect();
        assert_eq!(c.tbl_selection(&spoofed), (Vec::new(), 4));
        let off = MitigatorConfig::default();
        assert_eq!(off.tbl_selection(&top), (Vec::new(), 0));
        let bad = MitigatorConfig {
            tbl_min_source_share_percent: 101.0,
            ..Default::default()
        };
        assert!(validate(&bad)
            .join("\n")
            .contains("mitigator.tbl_min_source_share_percent:"));
    }

    #[test]
    fn longest_prefix_wins_then_hostgroup_then_default() {
        let mut c = MitigatorConfig {
            default_policy: 7,
            ..Default::default()
        };
        c.policy_by_prefix.insert("10.0.0.0/8".into(), 2);
        c.policy_by_prefix.insert("10.1.0.0/16".into(), 3);
        c.policy_by_prefix.insert("2001:db8::/32".into(), 4);
        c.policy_by_hostgroup.insert("web".into(), 5);
        assert_eq!(c.policy_for("10.1.2.3".parse().unwrap(), "web"), 3);
        assert_eq!(c.policy_for("10.2.2.3".parse().unwrap(), "web"), 2);
        assert_eq!(c.policy_for("2001:db8::1".parse().unwrap(), "x"), 4);
        assert_eq!(c.policy_for("192.0.2.1".parse().unwrap(), "web"), 5);
        assert_eq!(c.policy_for("192.0.2.1".parse().unwrap(), "other"), 7);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let mut c = MitigatorConfig {
            url: Some("ftp://x".into()),
            default_policy: 0,
            retries: 0,
            connect_timeout_seconds: -1.0,
            password: Some(Secret::new("a")),
            password_file: Some("/nonexistent".into()),
            ..Default::default()
        };
        c.policy_by_prefix.insert("nonsense".into(), 1);
        c.countermeasures.insert("bogus".into(), vec!["t/x".into()]);
        let all = validate(&c).join("\n");
        for k in [
            "mitigator.url:",
            "mitigator.username:",
            "mitigator.password_file:",
            "mitigator.default_policy:",
            "mitigator.policy_by_prefix.nonsense:",
            "mitigator.countermeasures.bogus: unknown key",
            "mitigator.countermeasures.bogus: \"t/x\"",
            "mitigator.connect_timeout_seconds:",
            "mitigator.retries:",
        ] {
            assert!(all.contains(k), "missing {k} in:\n{all}");
        }
        assert!(validate(&MitigatorConfig::default()).is_empty());
    }

    #[test]
    fn password_never_shows_in_debug() {
        let c = MitigatorConfig {
            password: Some(Secret::new("hunter2")),
            ..Default::default()
        };
        let d = format!("{c:?}");
        assert!(!d.contains("hunter2"), "{d}");
        assert!(d.contains("redacted"));
    }

    #[test]
    fn loads_from_the_service_config() {
        let cfg = crate::config::Config::from_toml_str(
            r#"
            [mitigator]
            url = "http://127.0.0.1:1"
            username = "admin"
            password = "secret"
            [mitigator.policy_by_prefix]
            "10.0.0.0/8" = 3
            [mitigator.countermeasures]
            udp_flood = ["lim"]
            "#,
        )
        .map_err(|e| e.problems)
        .unwrap();
        assert_eq!(cfg.mitigator.policy_for("10.9.9.9".parse().unwrap(), ""), 3);
        assert_eq!(
            cfg.mitigator
                .countermeasures_for(AttackType::UdpFlood, Protocol::Udp),
            ["lim"]
        );
        let err = crate::config::Config::from_toml_str("[mitigator]\nurll = \"x\"\n").unwrap_err();
        assert!(
            err.problems
                .join("\n")
                .contains("mitigator.urll: unknown key"),
            "{:?}",
            err.problems
        );
    }
}
