//! Configuration: loading, merging and validation of every section.
//!
//! Each component owns its own config struct (collectors, networks, aggregate, hostgroups,
//! mitigator, ...); this module only assembles them. Sources, later ones winning:
//! the files (`--config FILE`, repeatable, or the bundled layout `collectors/*.toml` +
//! `thresholds/*.toml` + optional `flowguard.toml` under a config directory), then
//! `FLOWGUARD__SECTION__KEY` environment variables, then `--set section.key=value` flags.
//!
//! Unknown keys are rejected, and every problem is reported at once, each naming its key.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::detect::config::HostgroupConfig;
use crate::mitigate::MitigatorConfig;

/// Every problem found in a configuration, each naming the key that caused it.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(p: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![p.into()],
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub api: ApiConfig,
    #[serde(rename = "collector")]
    pub collectors: Vec<CollectorConfig>,
    pub networks: NetworksConfig,
    pub aggregate: AggregateConfig,
    #[serde(rename = "hostgroup")]
    pub hostgroups: Vec<HostgroupConfig>,
    pub detection: DetectionConfig,
    pub mitigator: MitigatorConfig,
    /// `[bgp]`: blackhole and FlowSpec routes through a BGP daemon (mitigate stage).
    pub bgp: crate::mitigate::BgpConfig,
    pub state: StateConfig,
    /// `[cluster]`: cluster mode on NATS JetStream (none: a single node, as before).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// `[api]`: the HTTP server. `Debug` redacts the token.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Loopback by default: the API is not meant to face the network.
    pub listen: SocketAddr,
    /// Bearer token required by write endpoints (`POST /api/v1/events/...`). Without one,
    /// write endpoints answer 401 to everyone.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9909)),
            token: None,
            max_body_bytes: 256 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CollectorProtocol {
    /// NetFlow v5, v9 and IPFIX on one socket; the version comes from each header.
    Netflow,
    Sflow,
}

/// One `[[collector]]`: a UDP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CollectorConfig {
    /// Label in metrics and logs; defaults to `<protocol>-<port>`.
    #[serde(default)]
    pub name: Option<String>,
    pub protocol: CollectorProtocol,
    pub listen: SocketAddr,
    /// Overrides every exporter's sampling rate on this collector (1 in N).
    #[serde(default)]
    pub sampling_rate: Option<u32>,
    /// Per-exporter sampling-rate overrides, keyed by exporter IP address.
    #[serde(default)]
    pub exporter_sampling_rate: std::collections::BTreeMap<String, u32>,
    /// Sampling rate (1 in N) for records whose exporter announces none; unlike
    /// `sampling_rate` it never overrides an announced rate.
    #[serde(default)]
    pub fallback_sampling_rate: Option<u32>,
    /// Only datagrams from these sources are parsed (empty = everyone). Checked before
    /// parsing, so spoofed datagrams cannot touch real exporters' template state.
    #[serde(default)]
    pub allowed_exporters: Vec<IpNet>,
    /// Count the reverse counters of RFC 5103 biflow records (IPFIX PEN 29305, as YAF
    /// exports) as traffic from the flow's destination to its source. Off by default:
    /// then per-destination totals are those of the forward counters, as tshark and
    /// most collectors sum them.
    #[serde(default)]
    pub biflow_reverse: bool,
    /// SO_RCVBUF asked for; the kernel caps it at net.core.rmem_max.
    #[serde(default = "default_rcvbuf")]
    pub receive_buffer_bytes: usize,
    /// Receive threads, each with its own socket bound to `listen` with SO_REUSEPORT: the
    /// kernel hashes each exporter (source address and port) to one socket, so its
    /// template and sampling state stay in one thread. 0 (the default) = one per core.
    #[serde(default)]
    pub threads: usize,
}

/// Most receive threads one collector may ask for.
pub const MAX_COLLECTOR_THREADS: usize = 256;

fn default_rcvbuf() -> usize {
    32 * 1024 * 1024
}

impl CollectorConfig {
    pub fn label(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let p = match self.protocol {
                CollectorProtocol::Netflow => "netflow",
                CollectorProtocol::Sflow => "sflow",
            };
            format!("{p}-{}", self.listen.port())
        })
    }

    /// Receive threads to start: `threads`, or one per core when it is 0.
    pub fn thread_count(&self) -> usize {
        if self.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.threads
        }
        .min(MAX_COLLECTOR_THREADS)
    }

    /// The decode stage's sampling settings of this collector.
    pub fn sampling(&self) -> crate::decode::SamplingOverrides {
        crate::decode::SamplingOverrides {
            collector: self.sampling_rate,
            per_exporter: self
                .exporter_sampling_rate
                .iter()
                .filter_map(|(k, v)| Some((k.parse().ok()?, *v)))
                .collect(),
            fallback: self.fallback_sampling_rate,
        }
    }
}

/// `[networks]`: what is protected.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NetworksConfig {
    pub protected: Vec<IpNet>,
    /// A FastNetMon `networks_list` file: one prefix per line, `#` comments.
    pub protected_file: Option<PathBuf>,
    /// Hosts and prefixes that never start an attack.
    pub whitelist: Vec<IpNet>,
    /// A FastNetMon `white_list` file.
    pub whitelist_file: Option<PathBuf>,
}

/// `[aggregate]`: the host table and its windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AggregateConfig {
    /// Averaging time W of the rates: each is an exponentially weighted moving average of
    /// per-second counts with weight 2/(W+1) for the newest second (FastNetMon's
    /// `average_calculation_time`). A steady rate reads exactly; a 1-second burst of N
    /// reads 2N/(W+1) at first.
    pub window_seconds: u32,
    /// Hard cap on tracked host-directions (about 100 bytes each). At the cap a new host
    /// replaces the least busy of a small sample (never a host under attack); both
    /// replacements and refusals are counted.
    pub max_tracked_hosts: usize,
    /// A host-direction with no traffic for this long is evicted.
    pub idle_timeout_seconds: u32,
    /// Host-table shards (0 = one per core).
    pub shards: usize,
    /// 0 (the default): a NetFlow record counts whole in the second it arrives, as
    /// FastNetMon counts it. Above 0: its packets are spread over its first..last span (at
    /// most this many seconds) ending at arrival, which damps one long download reported
    /// at its end but reads steadily exported traffic low (see README, Counters and rates).
    pub max_flow_spread_seconds: u32,
    /// Keep lifetime totals per host-direction (shown by the hosts API): 128 bytes more
    /// per host-direction on top of ~90, so off by default.
    pub host_totals: bool,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        AggregateConfig {
            window_seconds: 5,
            max_tracked_hosts: 1_000_000,
            idle_timeout_seconds: 60,
            shards: 0,
            max_flow_spread_seconds: 0,
            host_totals: false,
        }
    }
}

/// `[detection]`: settings of the detect stage that are not per hostgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectionConfig {
    /// How many top source addresses an attack report lists.
    pub top_sources: usize,
    /// How many ended attacks `/api/v1/attacks` keeps.
    pub recent_attacks: usize,
    /// Consecutive seconds over a threshold before an attack starts.
    pub trigger_seconds: u32,
    /// Also detect attacks sent by protected hosts (FastNetMon's
    /// `process_outgoing_traffic`). Off by default: a protected server's own bulk
    /// uploads are not floods.
    pub outgoing: bool,
    /// Detect attacks on protected hosts (FastNetMon's `process_incoming_traffic`,
    /// hostgroup totals included). On by default.
    pub incoming: bool,
    /// Detect attacks on IPv6 hosts too (FastNetMon's `enable_ban_ipv6`). Off: their
    /// traffic is still counted and shown, but never starts an attack. On by default.
    pub ipv6: bool,
    /// A vector (syn, icmp, udp, fragments, other) of an attack counts when it carries at
    /// least this share of the attack's packets, in percent (or breaks a threshold of its
    /// own).
    pub vector_min_share_percent: f64,
    /// Attacks in progress at most (own detection and hook claims together); a host
    /// over a threshold while the cap is reached starts no attack and is counted in
    /// `flowguard_cap_overflow_total{cap="active_attacks"}`, once per detection pass.
    pub max_active_attacks: usize,
    /// Attacks whose sources are tracked (the top sources of reports and the temporary
    /// blacklist) at most; an attack over the cap has no top sources and is counted in
    /// `flowguard_cap_overflow_total{cap="watched_hosts"}`.
    pub max_watched_hosts: usize,
    /// Attacks with their own `flowguard_attack_host_pps`/`_bps` series at most; an
    /// attack over the cap gets no series and is counted in
    /// `flowguard_cap_overflow_total{cap="attack_host_series"}`.
    pub max_attack_host_series: usize,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            top_sources: 10,
            recent_attacks: 1000,
            trigger_seconds: 1,
            outgoing: false,
            incoming: true,
            ipv6: true,
            vector_min_share_percent: 20.0,
            max_active_attacks: 10_000,
            max_watched_hosts: 1_000,
            max_attack_host_series: 1_000,
        }
    }
}

/// `[state]`: where flowguard keeps what must survive a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StateConfig {
    pub dir: PathBuf,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            dir: PathBuf::from("/var/lib/flowguard"),
        }
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Explicit files (`--config`), merged in order.
    pub files: Vec<PathBuf>,
    /// Bundled layout root, used when `files` is empty.
    pub dir: Option<PathBuf>,
    /// `--set key=value` overrides.
    pub sets: Vec<String>,
    /// Read `FLOWGUARD__...` environment variables.
    pub env: bool,
}

/// The files of the bundled layout under `dir`: `collectors/*.toml`, `thresholds/*.toml`,
/// then `flowguard.toml` if present, each group in name order.
pub fn layout_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["collectors", "thresholds"] {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join(sub))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        v.sort();
        out.extend(v);
    }
    let main = dir.join("flowguard.toml");
    if main.is_file() {
        out.push(main);
    }
    out
}

/// The default config directory: the current directory when it holds the bundled layout
/// (a source checkout), else `/etc/flowguard`.
pub fn default_dir() -> PathBuf {
    if Path::new("collectors").is_dir() && Path::new("thresholds").is_dir() {
        PathBuf::from(".")
    } else {
        PathBuf::from("/etc/flowguard")
    }
}

impl Config {
    /// Loads, merges and validates; all problems come back together.
    pub fn load(src: &Sources) -> Result<Config, ConfigError> {
        let files = if src.files.is_empty() {
            let dir = src.dir.clone().unwrap_or_else(default_dir);
            let f = layout_files(&dir);
            if f.is_empty() {
                return Err(ConfigError::one(format!(
                    "no configuration found under {} (expected collectors/*.toml and thresholds/*.toml); pass --config FILE",
                    dir.display()
                )));
            }
            f
        } else {
            src.files.clone()
        };
        let mut b = config::Config::builder();
        let mut problems = Vec::new();
        for f in &files {
            if !f.is_file() {
                problems.push(format!("{}: no such file", f.display()));
                continue;
            }
            b = b.add_source(config::File::from(f.as_path()).format(config::FileFormat::Toml));
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        if src.env {
            b = b.add_source(
                config::Environment::with_prefix("FLOWGUARD")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("networks.protected")
                    .with_list_parse_key("networks.whitelist"),
            );
        }
        for s in &src.sets {
            let Some((k, v)) = s.split_once('=') else {
                problems.push(format!("--set {s}: expected key=value"));
                continue;
            };
            // Parse the value as TOML when it is valid TOML (numbers, booleans, arrays),
            // else take it as a string, so `--set api.listen=127.0.0.1:1` needs no quotes.
            let val: config::Value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
                Ok(t) => {
                    toml_to_config(t.get("v").cloned().unwrap_or(toml::Value::String(v.into())))
                }
                Err(_) => config::Value::from(v.to_string()),
            };
            match b.set_override(k.trim(), val) {
                Ok(nb) => b = nb,
                Err(e) => {
                    problems.push(format!("--set {k}: {e}"));
                    b = config::Config::builder();
                }
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let merged = b.build().map_err(|e| ConfigError::one(e.to_string()))?;
        let value: config::Value = merged
            .try_deserialize()
            .map_err(|e| ConfigError::one(e.to_string()))?;
        Self::from_value(value)
    }

    /// Parses one TOML text holding any sections (tests, `import-fastnetmon` output).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let b = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .map_err(|e| ConfigError::one(e.to_string()))?;
        let value: config::Value = b
            .try_deserialize()
            .map_err(|e| ConfigError::one(e.to_string()))?;
        Self::from_value(value)
    }

    fn from_value(value: config::Value) -> Result<Config, ConfigError> {
        let mut unknown = BTreeSet::new();
        let mut note_unknown = |path: serde_ignored::Path<'_>| {
            unknown.insert(tidy_path(&path.to_string()));
        };
        let de = serde_ignored::Deserializer::new(value, &mut note_unknown);
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(de);
        let mut problems: Vec<String> = unknown
            .into_iter()
            .map(|k| format!("{k}: unknown key"))
            .collect();
        match parsed {
            Ok(cfg) => {
                problems.extend(cfg.validate());
                if problems.is_empty() {
                    Ok(cfg)
                } else {
                    Err(ConfigError { problems })
                }
            }
            Err(e) => {
                problems.push(format!("{}: {}", e.path(), e.inner()));
                Err(ConfigError { problems })
            }
        }
    }

    /// Semantic checks; every problem names its key.
    pub fn validate(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(c) = &self.cluster {
            p.extend(c.validate());
            if !self.collectors.is_empty() && !c.has(crate::cluster::Role::Collector) {
                p.push("collector: listeners need \"collector\" in cluster.roles".into());
            }
        }
        let mut ports = std::collections::HashMap::new();
        for (i, c) in self.collectors.iter().enumerate() {
            // Port 0 asks the kernel for a free port: never a clash.
            if c.listen.port() == 0 {
            } else if let Some(prev) = ports.insert(c.listen, i) {
                p.push(format!(
                    "collector[{i}].listen: {} is already used by collector[{prev}]",
                    c.listen
                ));
            }
            if c.threads > MAX_COLLECTOR_THREADS {
                p.push(format!(
                    "collector[{i}].threads: at most {MAX_COLLECTOR_THREADS} (0 = one per core)"
                ));
            }
            if c.sampling_rate == Some(0) {
                p.push(format!("collector[{i}].sampling_rate: must be at least 1"));
            }
            if c.fallback_sampling_rate == Some(0) {
                p.push(format!(
                    "collector[{i}].fallback_sampling_rate: must be at least 1"
                ));
            }
            for (k, v) in &c.exporter_sampling_rate {
                if k.parse::<std::net::IpAddr>().is_err() {
                    p.push(format!(
                        "collector[{i}].exporter_sampling_rate.{k}: not an IP address"
                    ));
                }
                if *v == 0 {
                    p.push(format!(
                        "collector[{i}].exporter_sampling_rate.{k}: must be at least 1"
                    ));
                }
            }
        }
        if let Some(f) = &self.networks.protected_file {
            if let Err(e) = read_prefix_file(f) {
                p.push(format!("networks.protected_file: {e}"));
            }
        }
        if let Some(f) = &self.networks.whitelist_file {
            if let Err(e) = read_prefix_file(f) {
                p.push(format!("networks.whitelist_file: {e}"));
            }
        }
        if self.aggregate.window_seconds == 0 || self.aggregate.window_seconds > 60 {
            p.push("aggregate.window_seconds: must be 1..=60".into());
        }
        if self.aggregate.max_tracked_hosts == 0 || self.aggregate.max_tracked_hosts > 1 << 30 {
            p.push("aggregate.max_tracked_hosts: must be 1..=1073741824".into());
        }
        if self.aggregate.idle_timeout_seconds == 0 {
            p.push("aggregate.idle_timeout_seconds: must be at least 1".into());
        }
        if self.detection.trigger_seconds == 0 {
            p.push("detection.trigger_seconds: must be at least 1".into());
        }
        let share = self.detection.vector_min_share_percent;
        if !(share.is_finite() && share > 0.0 && share <= 100.0) {
            p.push("detection.vector_min_share_percent: must be in (0, 100]".into());
        }
        p.extend(crate::detect::config::validate_hostgroups(&self.hostgroups));
        p.extend(crate::mitigate::config::validate(&self.mitigator));
        p.extend(crate::mitigate::bgp_config::validate(&self.bgp));
        p
    }

    /// Protected prefixes from the list and the optional file.
    pub fn protected_prefixes(&self) -> Result<Vec<IpNet>, ConfigError> {
        let mut v = self.networks.protected.clone();
        if let Some(f) = &self.networks.protected_file {
            v.extend(read_prefix_file(f).map_err(ConfigError::one)?);
        }
        Ok(v)
    }

    pub fn whitelist_prefixes(&self) -> Result<Vec<IpNet>, ConfigError> {
        let mut v = self.networks.whitelist.clone();
        if let Some(f) = &self.networks.whitelist_file {
            v.extend(read_prefix_file(f).map_err(ConfigError::one)?);
        }
        Ok(v)
    }
}

/// `hostgroup.0.outgoing.?.x` (serde_ignored's form) → `hostgroup[0].outgoing.x`.
fn tidy_path(p: &str) -> String {
    let mut out = String::new();
    for seg in p.split('.').filter(|s| *s != "?") {
        if seg.chars().all(|c| c.is_ascii_digit()) && !out.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

fn toml_to_config(v: toml::Value) -> config::Value {
    match v {
        toml::Value::String(s) => s.into(),
        toml::Value::Integer(i) => i.into(),
        toml::Value::Float(f) => f.into(),
        toml::Value::Boolean(b) => b.into(),
        toml::Value::Array(a) => a.into_iter().map(toml_to_config).collect::<Vec<_>>().into(),
        toml::Value::Table(t) => t
            .into_iter()
            .map(|(k, v)| (k, toml_to_config(v)))
            .collect::<std::collections::HashMap<_, _>>()
            .into(),
        toml::Value::Datetime(d) => d.to_string().into(),
    }
}

/// Reads a FastNetMon-style prefix list: one prefix or address per line, `#` comments.
pub fn read_prefix_file(path: &Path) -> Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_prefix_list(&text).map_err(|e| format!("{}: {e}", path.display()))
}

pub fn parse_prefix_list(text: &str) -> Result<Vec<IpNet>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let net = l
            .parse::<IpNet>()
            .or_else(|_| l.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| format!("line {}: {l:?} is not a prefix", n + 1))?;
        out.push(net);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_and_bad_values_are_all_reported() {
        let err = Config::from_toml_str(
            r#"
            [api]
            listen = "127.0.0.1:1"
            bogus = 1
            [networks]
            protectd = []
            [aggregate]
            window_seconds = 0
            "#,
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("api.bogus: unknown key"), "{all}");
        assert!(all.contains("networks.protectd: unknown key"), "{all}");
        assert!(all.contains("aggregate.window_seconds"), "{all}");
    }

    #[test]
    fn unknown_key_inside_a_hostgroup_is_reported() {
        let err = Config::from_toml_str(
            r#"
            [[hostgroup]]
            name = "default"
            threshold_pps = 10
            threshold_ppz = 10
            [hostgroup.outgoing]
            threshold_mbps = 5
            threshold_mpbs = 5
            "#,
        )
        .unwrap_err();
        let all = err.problems.join("\n");
        assert!(all.contains("threshold_ppz: unknown key"), "{all}");
        assert!(
            all.contains("hostgroup[0].outgoing.threshold_mpbs: unknown key"),
            "{all}"
        );
    }

    #[test]
    fn duplicate_listener_is_named() {
        let err = Config::from_toml_str(
            r#"
            [[collector]]
            protocol = "netflow"
            listen = "127.0.0.1:2055"
            [[collector]]
            protocol = "sflow"
            listen = "127.0.0.1:2055"
            "#,
        )
        .unwrap_err();
        assert!(
            err.problems[0].contains("collector[1].listen"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn prefix_list_parses_fastnetmon_format() {
        let v =
            parse_prefix_list("# comment\n10.0.0.0/8\n\n2001:db8::/32 # v6\n192.0.2.1\n").unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[2].to_string(), "192.0.2.1/32");
        assert!(parse_prefix_list("nonsense\n")
            .unwrap_err()
            .contains("line 1"));
    }
}
