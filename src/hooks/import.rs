//! `flowguard import-fastnetmon`: a FastNetMon configuration rewritten as flowguard TOML.
//!
//! What maps: the protected networks and whitelist (the files' prefixes are copied in, so
//! the result does not depend on FastNetMon's files staying around), the global thresholds
//! as the `default` hostgroup, each FastNetMon `hostgroup = name:prefix,...` with its
//! `<name>_*` keys as a `[[hostgroup]]`, `ban_time`, the NetFlow/sFlow listeners, and
//! `average_calculation_time` as the window. A threshold is imported only when its
//! `ban_for_*` switch is on, since FastNetMon ignores it otherwise. Everything else comes
//! out as a `# unsupported: key = value` comment, so nothing disappears silently.
//!
//! Pure: the configuration text and a file reader in, TOML text out.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use ipnet::IpNet;

/// One threshold: FastNetMon's threshold key, the `ban_for_*` switch that enables it, that
/// switch's FastNetMon default, and flowguard's key.
struct ThresholdMap {
    fnm: &'static str,
    ban_for: &'static str,
    default_on: bool,
    flowguard: &'static str,
}

const fn t(
    fnm: &'static str,
    ban_for: &'static str,
    default_on: bool,
    flowguard: &'static str,
) -> ThresholdMap {
    ThresholdMap {
        fnm,
        ban_for,
        default_on,
        flowguard,
    }
}

const THRESHOLDS: &[ThresholdMap] = &[
    t("threshold_pps", "ban_for_pps", true, "threshold_pps"),
    t(
        "threshold_mbps",
        "ban_for_bandwidth",
        true,
        "threshold_mbps",
    ),
    t("threshold_flows", "ban_for_flows", false, "threshold_flows"),
    t(
        "threshold_tcp_pps",
        "ban_for_tcp_pps",
        false,
        "threshold_tcp_pps",
    ),
    t(
        "threshold_tcp_mbps",
        "ban_for_tcp_bandwidth",
        false,
        "threshold_tcp_mbps",
    ),
    t(
        "threshold_tcp_flows",
        "ban_for_tcp_flows",
        false,
        "threshold_tcp_flows",
    ),
    t(
        "threshold_udp_pps",
        "ban_for_udp_pps",
        false,
        "threshold_udp_pps",
    ),
    t(
        "threshold_udp_mbps",
        "ban_for_udp_bandwidth",
        false,
        "threshold_udp_mbps",
    ),
    t(
        "threshold_udp_flows",
        "ban_for_udp_flows",
        false,
        "threshold_udp_flows",
    ),
    t(
        "threshold_icmp_pps",
        "ban_for_icmp_pps",
        false,
        "threshold_icmp_pps",
    ),
    t(
        "threshold_icmp_mbps",
        "ban_for_icmp_bandwidth",
        false,
        "threshold_icmp_mbps",
    ),
    t(
        "threshold_icmp_flows",
        "ban_for_icmp_flows",
        false,
        "threshold_icmp_flows",
    ),
    t(
        "threshold_tcp_syn_pps",
        "ban_for_tcp_syn_pps",
        false,
        "threshold_syn_pps",
    ),
    t(
        "threshold_tcp_syn_mbps",
        "ban_for_tcp_syn_bandwidth",
        false,
        "threshold_syn_mbps",
    ),
    t(
        "threshold_ip_fragments_pps",
        "ban_for_ip_fragments_pps",
        false,
        "threshold_fragment_pps",
    ),
    t(
        "threshold_ip_fragments_mbps",
        "ban_for_ip_fragments_bandwidth",
        false,
        "threshold_fragment_mbps",
    ),
];

/// FastNetMon's defaults for the list files when the config does not name them.
const DEFAULT_NETWORKS_LIST: &str = "/etc/networks_list";
const DEFAULT_WHITE_LIST: &str = "/etc/networks_whitelist";

/// Keys whose meaning flowguard has by design (or which only concern FastNetMon's own
/// plumbing): each gets a comment saying so instead of "unsupported".
const NOTES: &[(&str, &str)] = &[
    (
        "notify_script_path",
        "point it at collectors/fastnetmon-notify.sh to keep FastNetMon as a detector",
    ),
    (
        "notify_script_pass_details",
        "the hook reads the report whenever FastNetMon sends one",
    ),
    (
        "unban_only_if_attack_finished",
        "flowguard always ends an attack only after ban_time_seconds under every threshold",
    ),
    (
        "process_incoming_traffic",
        "flowguard watches both directions; [hostgroup.outgoing] overrides outgoing thresholds",
    ),
    (
        "process_outgoing_traffic",
        "flowguard watches both directions; [hostgroup.outgoing] overrides outgoing thresholds",
    ),
];

fn is_on(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "on" | "yes" | "true" | "1" | "enable" | "enabled"
    )
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn toml_list<T: ToString>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(|i| toml_str(&i.to_string())).collect();
    format!("[{}]", v.join(", "))
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// Prefixes of a FastNetMon list file, one per line, `#` comments; unreadable lines are
/// reported in `notes` and skipped rather than failing the whole import.
fn parse_prefixes(text: &str, what: &str, notes: &mut Vec<String>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        match parse_prefix(l) {
            Some(p) => out.push(p),
            None => notes.push(format!(
                "{what} line {}: {:?} is not a prefix, skipped",
                n + 1,
                one_line(l)
            )),
        }
    }
    out
}

fn parse_prefix(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

struct Parsed {
    /// Last value of each key (FastNetMon's own rule), except `hostgroup`.
    map: HashMap<String, String>,
    /// Keys in first-seen order, for stable output.
    order: Vec<String>,
    /// `hostgroup` lines in order.
    hostgroups: Vec<String>,
    /// Lines that are not `key = value`.
    junk: Vec<String>,
}

fn parse_conf(text: &str) -> Parsed {
    let mut p = Parsed {
        map: HashMap::new(),
        order: Vec::new(),
        hostgroups: Vec::new(),
        junk: Vec::new(),
    };
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            p.junk.push(one_line(l));
            continue;
        };
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if k == "hostgroup" {
            p.hostgroups.push(v);
            continue;
        }
        if !p.map.contains_key(&k) {
            p.order.push(k.clone());
        }
        p.map.insert(k, v);
    }
    p
}

/// Thresholds of one group, given how to look its keys up.
fn thresholds(
    get: &dyn Fn(&str) -> Option<String>,
    ban_default: &dyn Fn(&ThresholdMap) -> bool,
    label: &str,
    notes: &mut Vec<String>,
) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for m in THRESHOLDS {
        let enabled = get(m.ban_for).map_or_else(|| ban_default(m), |v| is_on(&v));
        match (get(m.fnm), enabled) {
            (Some(v), true) => match v.trim().parse::<u64>() {
                Ok(n) => out.push((m.flowguard, n)),
                Err(_) => notes.push(format!(
                    "{label}{} = {}: not a number, skipped",
                    m.fnm,
                    one_line(&v)
                )),
            },
            (Some(v), false) => notes.push(format!(
                "{label}{} = {} not imported: {label}{} is off",
                m.fnm,
                one_line(&v),
                m.ban_for
            )),
            (None, true) if get(m.ban_for).is_some() => notes.push(format!(
                "{label}{} is on but {label}{} is not set: set {} yourself",
                m.ban_for, m.fnm, m.flowguard
            )),
            (None, _) => {}
        }
    }
    out
}

/// Converts FastNetMon's configuration text to flowguard TOML. `read_file` reads the
/// networks and whitelist files the configuration names (`None` when unreadable).
pub fn convert(fastnetmon_conf: &str, read_file: &dyn Fn(&Path) -> Option<String>) -> String {
    let p = parse_conf(fastnetmon_conf);
    let mut used: HashSet<String> = HashSet::new();
    let mut notes: Vec<String> = Vec::new();
    let get = |k: &str| p.map.get(k).cloned();
    let mut out = String::new();
    // Writing into a String cannot fail; results are ignored for that reason.
    let _ = writeln!(
        out,
        "# flowguard configuration converted from FastNetMon's by `flowguard import-fastnetmon`."
    );
    let _ = writeln!(
        out,
        "# Review it: [api], [mitigator] and [state] still need setting."
    );

    // Networks.
    let mut net_lines = Vec::new();
    for (key, default, fg_key) in [
        ("networks_list_path", DEFAULT_NETWORKS_LIST, "protected"),
        ("white_list_path", DEFAULT_WHITE_LIST, "whitelist"),
    ] {
        used.insert(key.to_string());
        let path = get(key).unwrap_or_else(|| default.to_string());
        match read_file(Path::new(&path)) {
            Some(text) => {
                let prefixes = parse_prefixes(&text, &path, &mut notes);
                net_lines.push(format!("# from {key} = {}", one_line(&path)));
                net_lines.push(format!("{fg_key} = {}", toml_list(&prefixes)));
            }
            None => net_lines.push(format!(
                "# {key} = {} could not be read: list the prefixes in {fg_key} = [...] here",
                one_line(&path)
            )),
        }
    }
    let _ = writeln!(out, "\n[networks]");
    for l in net_lines {
        let _ = writeln!(out, "{l}");
    }

    // Window.
    used.insert("average_calculation_time".into());
    if let Some(v) = get("average_calculation_time") {
        match v.trim().parse::<u32>() {
            Ok(n) if (1..=60).contains(&n) => {
                let _ = writeln!(
                    out,
                    "\n[aggregate]\n# from average_calculation_time\nwindow_seconds = {n}"
                );
            }
            _ => notes.push(format!(
                "average_calculation_time = {} is not 1..=60, skipped",
                one_line(&v)
            )),
        }
    }

    // Global ban switch.
    used.insert("enable_ban".into());
    let global_ban = get("enable_ban").map_or(true, |v| is_on(&v));
    if !global_ban {
        let _ = writeln!(
            out,
            "\n[mitigator]\n# enable_ban = off in FastNetMon: detect and report, never mitigate\ndry_run = true"
        );
    }

    // Collectors.
    let mut listeners: Vec<SocketAddr> = Vec::new();
    for (proto, default_port) in [("netflow", 2055u16), ("sflow", 6343u16)] {
        let host_key = format!("{proto}_host");
        let port_key = format!("{proto}_port");
        for k in [proto.to_string(), host_key.clone(), port_key.clone()] {
            used.insert(k);
        }
        let has_keys = get(&host_key).is_some() || get(&port_key).is_some();
        let enabled = get(proto).map_or(has_keys, |v| is_on(&v));
        if !enabled {
            if has_keys {
                notes.push(format!("{proto} is off: its listener is not imported"));
            }
            continue;
        }
        let host = get(&host_key).unwrap_or_else(|| "0.0.0.0".into());
        let Ok(ip) = host.trim().parse::<IpAddr>() else {
            notes.push(format!(
                "{host_key} = {}: not an IP address, {proto} listener skipped",
                one_line(&host)
            ));
            continue;
        };
        let ports = get(&port_key).unwrap_or_else(|| default_port.to_string());
        let mut sampling = None;
        if proto == "netflow" {
            used.insert("netflow_sampling_ratio".into());
            if let Some(v) = get("netflow_sampling_ratio") {
                match v.trim().parse::<u32>() {
                    Ok(n) if n >= 1 => sampling = Some(n),
                    _ => notes.push(format!(
                        "netflow_sampling_ratio = {}: not a positive number, skipped",
                        one_line(&v)
                    )),
                }
            }
        }
        // FastNetMon accepts several comma-separated ports for NetFlow.
        for port in ports.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Ok(port) = port.parse::<u16>() else {
                notes.push(format!(
                    "{port_key} = {}: {port:?} is not a port, skipped",
                    one_line(&ports)
                ));
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            if listeners.contains(&addr) {
                notes.push(format!("{proto} listener {addr} is already used, skipped"));
                continue;
            }
            listeners.push(addr);
            let _ = writeln!(
                out,
                "\n[[collector]]\nprotocol = {}\nlisten = {}",
                toml_str(proto),
                toml_str(&addr.to_string())
            );
            if let Some(n) = sampling {
                let _ = writeln!(out, "sampling_rate = {n}");
            }
        }
    }

    // Hostgroups: the global thresholds first, as the default group.
    used.insert("ban_time".into());
    let ban_time = match get("ban_time") {
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) => Some(n),
            Err(_) => {
                notes.push(format!(
                    "ban_time = {}: not a number, skipped",
                    one_line(&v)
                ));
                None
            }
        },
        None => None,
    };
    for m in THRESHOLDS {
        used.insert(m.fnm.to_string());
        used.insert(m.ban_for.to_string());
    }
    let global_ban_for = |m: &ThresholdMap| get(m.ban_for).map_or(m.default_on, |v| is_on(&v));
    let global = thresholds(&get, &|m| m.default_on, "", &mut notes);
    let write_group = |out: &mut String,
                       name: &str,
                       prefixes: &[IpNet],
                       th: &[(&str, u64)],
                       comment: Option<&str>| {
        let _ = writeln!(out, "\n[[hostgroup]]\nname = {}", toml_str(name));
        if let Some(c) = comment {
            let _ = writeln!(out, "# {c}");
        }
        if !prefixes.is_empty() {
            let _ = writeln!(out, "prefixes = {}", toml_list(prefixes));
        }
        if let Some(b) = ban_time {
            let _ = writeln!(out, "ban_time_seconds = {b}");
        }
        for (k, v) in th {
            let _ = writeln!(out, "{k} = {v}");
        }
    };
    write_group(
        &mut out,
        "default",
        &[],
        &global,
        Some("FastNetMon's global thresholds"),
    );

    // FastNetMon hostgroups, merged by name in first-seen order.
    let mut groups: BTreeMap<usize, (String, Vec<IpNet>)> = BTreeMap::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for line in &p.hostgroups {
        let Some((name, list)) = line.split_once(':') else {
            notes.push(format!(
                "hostgroup = {}: expected name:prefix,prefix",
                one_line(line)
            ));
            continue;
        };
        let name = name.trim().to_string();
        if name.is_empty() {
            notes.push(format!("hostgroup = {}: no name", one_line(line)));
            continue;
        }
        let mut prefixes = Vec::new();
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse_prefix(s) {
                Some(n) => prefixes.push(n),
                None => notes.push(format!(
                    "hostgroup {name}: {:?} is not a prefix, skipped",
                    one_line(s)
                )),
            }
        }
        let next = index.len();
        let i = *index.entry(name.clone()).or_insert(next);
        groups
            .entry(i)
            .or_insert_with(|| (name, Vec::new()))
            .1
            .extend(prefixes);
    }
    let mut taken: HashSet<String> = HashSet::from(["default".to_string()]);
    for (name, prefixes) in groups.into_values() {
        let label = format!("{name}_");
        // Mark the group's keys as understood, whatever happens to the group below.
        let enable_key = format!("{label}enable_ban");
        used.insert(enable_key.clone());
        for m in THRESHOLDS {
            used.insert(format!("{label}{}", m.fnm));
            used.insert(format!("{label}{}", m.ban_for));
        }
        if prefixes.is_empty() {
            notes.push(format!("hostgroup {name} has no usable prefixes, skipped"));
            continue;
        }
        // `default` means "the rest of the networks" in flowguard; FastNetMon's group of
        // that name covers only its prefixes, so it is renamed.
        let mut fg_name = if name == "default" {
            "default_hostgroup".to_string()
        } else {
            name.clone()
        };
        while !taken.insert(fg_name.clone()) {
            fg_name.push('_');
        }
        let enabled = get(&enable_key).map_or(global_ban, |v| is_on(&v));
        if !enabled {
            write_group(
                &mut out,
                &fg_name,
                &prefixes,
                &[],
                Some(&format!(
                    "{enable_key} = off: no thresholds, so these hosts never start an attack"
                )),
            );
            continue;
        }
        let lookup = |k: &str| get(&format!("{label}{k}"));
        let th = thresholds(&lookup, &global_ban_for, &label, &mut notes);
        let comment = (fg_name != name).then(|| format!("FastNetMon hostgroup {name}"));
        write_group(&mut out, &fg_name, &prefixes, &th, comment.as_deref());
    }

    // What is left: explained, or listed as unsupported.
    let mut tail = Vec::new();
    for (k, why) in NOTES {
        if let Some(v) = get(k) {
            used.insert(k.to_string());
            tail.push(format!("# {k} = {}: {why}", one_line(&v)));
        }
    }
    for n in notes {
        tail.push(format!("# note: {n}"));
    }
    for k in &p.order {
        if !used.contains(k) {
            let v = p.map.get(k).map(String::as_str).unwrap_or("");
            tail.push(format!("# unsupported: {} = {}", one_line(k), one_line(v)));
        }
    }
    for j in &p.junk {
        tail.push(format!("# unsupported line: {j}"));
    }
    if !tail.is_empty() {
        let _ = writeln!(out, "\n# --- FastNetMon settings not carried over ---");
        for l in tail {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn files(map: &'static [(&'static str, &'static str)]) -> impl Fn(&Path) -> Option<String> {
        move |p: &Path| {
            map.iter()
                .find(|(k, _)| Path::new(k) == p)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn minimal_conf_loads_and_keeps_values() {
        let toml = convert(
            "threshold_pps = 5000\nban_for_flows = off\nthreshold_flows = 10\nban_time = 60\nnetflow = on\nnetflow_port = 2055,2056\nnetflow_host = 127.0.0.1\n",
            &files(&[("/etc/networks_list", "10.0.0.0/8\n")]),
        );
        let cfg = Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(
            cfg.networks.protected,
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        assert_eq!(cfg.collectors.len(), 2);
        let g = &cfg.hostgroups[0];
        assert_eq!(
            (g.threshold_pps, g.threshold_flows, g.ban_time_seconds),
            (Some(5000), None, 60)
        );
        assert!(
            toml.contains("threshold_flows = 10 not imported: ban_for_flows is off"),
            "{toml}"
        );
        assert!(
            toml.contains("white_list_path = /etc/networks_whitelist could not be read"),
            "{toml}"
        );
    }

    #[test]
    fn odd_values_become_comments_not_errors() {
        let toml = convert(
            "threshold_pps = lots\nnetflow_host = router.example\nnetflow_port = 1\nsflow = on\nsflow_port = 99999\nhostgroup = broken\nhostgroup = empty:nonsense\nhostgroup = default:192.0.2.0/24\nban_time = x\nweird line\n",
            &|_| None,
        );
        let cfg = Config::from_toml_str(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert!(cfg.collectors.is_empty(), "{toml}");
        assert_eq!(cfg.hostgroups.len(), 2);
        assert_eq!(cfg.hostgroups[1].name, "default_hostgroup");
        for want in [
            "threshold_pps = lots: not a number",
            "router.example",
            "99999",
            "hostgroup = broken",
            "empty has no usable prefixes",
            "# unsupported line: weird line",
        ] {
            assert!(toml.contains(want), "{want} missing in\n{toml}");
        }
    }
}
