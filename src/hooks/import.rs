//! `flowguard import-fastnetmon`: a FastNetMon configuration rewritten as flowguard TOML.
//!
//! What maps: the protected networks and whitelist (the files' prefixes are copied in, so
//! the result does not depend on FastNetMon's files staying around), the global thresholds
//! as the `default` hostgroup, each FastNetMon `hostgroup = name:prefix,...` with its
//! `<name>_*` keys as a `[[hostgroup]]`, `ban_time`, the NetFlow/sFlow listeners, and
//! `average_calculation_time` as the window, `process_incoming_traffic`,
//! `process_outgoing_traffic` and `enable_ban_ipv6` as the `[detection]` switches, and
//! `netflow_sampling_ratio` as the collector's `fallback_sampling_rate` (FastNetMon uses it
//! only when a router announces no rate; so does that key). A threshold is imported only
//! when its `ban_for_*` switch is on, since FastNetMon ignores it otherwise (an absent switch
//! is off: FastNetMon's `ban_settings_t` starts with every switch off).
//!
//! Nothing disappears silently: whatever would make flowguard detect differently from
//! FastNetMon (a setting flowguard lacks, a value it cannot take, a file it cannot read) is
//! listed in the output's header under "Behaviour changes"; FastNetMon-only settings that do
//! not change detection (logging, BGP, databases) come out at the end as
//! `# unsupported: key = value` comments.
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
    t("threshold_pps", "ban_for_pps", false, "threshold_pps"),
    t(
        "threshold_mbps",
        "ban_for_bandwidth",
        false,
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
];

/// Packet-capture inputs: flowguard reads flow exports only, so with one of these on,
/// FastNetMon saw traffic that flowguard will not.
const CAPTURE_KEYS: &[&str] = &[
    "pcap",
    "mirror",
    "mirror_afpacket",
    "mirror_afxdp",
    "mirror_netmap",
    "pfring",
];

/// Flow-count thresholds: FastNetMon 1.2.x counts flows only with connection tracking on.
const FLOW_THRESHOLDS: &[&str] = &[
    "threshold_flows",
    "threshold_tcp_flows",
    "threshold_udp_flows",
    "threshold_icmp_flows",
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
    conntrack: bool,
    notes: &mut Vec<String>,
    changes: &mut Vec<String>,
) -> Vec<(&'static str, u64)> {
    let mut out = Vec::new();
    for m in THRESHOLDS {
        let switch = get(m.ban_for);
        let enabled = switch.as_deref().map_or_else(|| ban_default(m), is_on);
        if enabled && !conntrack && FLOW_THRESHOLDS.contains(&m.fnm) {
            if let Some(v) = get(m.fnm) {
                notes.push(format!(
                    "{label}{} = {} not imported: FastNetMon counts flows only with enable_connection_tracking = on, so it never triggered",
                    m.fnm,
                    one_line(&v)
                ));
            }
            continue;
        }
        match (get(m.fnm), enabled) {
            (Some(v), true) => match v.trim().parse::<u64>() {
                Ok(n) => out.push((m.flowguard, n)),
                Err(_) => changes.push(format!(
                    "{label}{} = {}: not a number, skipped",
                    m.fnm,
                    one_line(&v)
                )),
            },
            (Some(v), false) if switch.is_none() => notes.push(format!(
                "{label}{} = {} not imported: {label}{} is not set, and FastNetMon's default is off",
                m.fnm,
                one_line(&v),
                m.ban_for
            )),
            (Some(v), false) => notes.push(format!(
                "{label}{} = {} not imported: {label}{} is off",
                m.fnm,
                one_line(&v),
                m.ban_for
            )),
            (None, true) if get(m.ban_for).is_some() => changes.push(format!(
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
    // Exact equivalents worth a word (printed at the end) ...
    let mut notes: Vec<String> = Vec::new();
    // ... and everything that makes flowguard detect differently (printed first).
    let mut changes: Vec<String> = Vec::new();
    let get = |k: &str| p.map.get(k).cloned();
    // The body; the header goes in front once the behaviour changes are known.
    // Writing into a String cannot fail; results are ignored for that reason.
    let mut out = String::new();

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
                let prefixes = parse_prefixes(&text, &path, &mut changes);
                net_lines.push(format!("# from {key} = {}", one_line(&path)));
                net_lines.push(format!("{fg_key} = {}", toml_list(&prefixes)));
            }
            None => {
                net_lines.push(format!(
                    "# {key} = {} could not be read: list the prefixes in {fg_key} = [...] here",
                    one_line(&path)
                ));
                changes.push(format!(
                    "{key} = {} could not be read: [networks] {fg_key} is empty until you fill it in",
                    one_line(&path)
                ));
            }
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
            _ => changes.push(format!(
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

    // Which hosts and directions are watched.
    let mut detection = Vec::new();
    for (key, fg_key) in [
        ("process_incoming_traffic", "incoming"),
        ("process_outgoing_traffic", "outgoing"),
        ("enable_ban_ipv6", "ipv6"),
    ] {
        used.insert(key.to_string());
        // FastNetMon's defaults for all three are on; flowguard's for outgoing is off, so
        // that one is always written.
        let on = get(key).map_or(true, |v| is_on(&v));
        let flowguard_default = fg_key != "outgoing";
        if on != flowguard_default || get(key).is_some() {
            let from = get(key).map_or_else(
                || format!("{key} not set (FastNetMon's default: on)"),
                |v| format!("{key} = {}", one_line(&v)),
            );
            detection.push(format!("# from {from}\n{fg_key} = {on}"));
        }
    }
    if !detection.is_empty() {
        let _ = writeln!(out, "\n[detection]\n{}", detection.join("\n"));
    }

    // Inputs flowguard does not have.
    for k in CAPTURE_KEYS {
        used.insert(k.to_string());
        if let Some(v) = get(k) {
            if is_on(&v) {
                let ifs =
                    get("interfaces").map_or(String::new(), |i| format!(" on {}", one_line(&i)));
                changes.push(format!(
                    "{k} = on: flowguard reads NetFlow/IPFIX/sFlow exports only; the traffic FastNetMon captured{ifs} is not seen (export flows from the routers instead)"
                ));
            } else {
                notes.push(format!("{k} = off: packet capture, not needed"));
            }
        }
    }

    // Timing and lifecycle settings flowguard has fixed.
    for (key, flowguard, why) in [
        (
            "unban_only_if_attack_finished",
            "on",
            "flowguard ends an attack only once every rate stayed under the thresholds for the ban time; FastNetMon would unban after ban_time even while the attack went on",
        ),
        (
            "speed_calculation_delay",
            "1",
            "flowguard computes rates and checks thresholds every second",
        ),
        (
            "monitor_local_ip_addresses",
            "off",
            "flowguard does not add this machine's own addresses to the protected networks; list them in [networks] protected",
        ),
        (
            "netflow_divide_counters_on_interval_length",
            "off",
            "flowguard always spreads a flow's counters over its first..last span",
        ),
    ] {
        used.insert(key.to_string());
        if let Some(v) = get(key) {
            let same = if matches!(flowguard, "on" | "off") {
                is_on(&v) == (flowguard == "on")
            } else {
                v.trim() == flowguard
            };
            if same {
                notes.push(format!("{key} = {}: flowguard behaves the same", one_line(&v)));
            } else {
                changes.push(format!("{key} = {}: {why}", one_line(&v)));
            }
        }
    }

    // Flow counts need connection tracking in FastNetMon (its default: on).
    used.insert("enable_connection_tracking".into());
    let conntrack = get("enable_connection_tracking").map_or(true, |v| is_on(&v));
    if let Some(v) = get("enable_connection_tracking") {
        notes.push(format!(
            "enable_connection_tracking = {}: flowguard counts flows from the exported records{}",
            one_line(&v),
            if conntrack {
                ""
            } else {
                "; flow thresholds FastNetMon could not use are left out (see below)"
            }
        ));
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
            changes.push(format!(
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
                    _ => changes.push(format!(
                        "netflow_sampling_ratio = {}: not a positive number, skipped",
                        one_line(&v)
                    )),
                }
            }
        }
        // FastNetMon accepts several comma-separated ports for NetFlow.
        for port in ports.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let Ok(port) = port.parse::<u16>() else {
                changes.push(format!(
                    "{port_key} = {}: {port:?} is not a port, skipped",
                    one_line(&ports)
                ));
                continue;
            };
            let addr = SocketAddr::new(ip, port);
            if listeners.contains(&addr) {
                changes.push(format!("{proto} listener {addr} is already used, skipped"));
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
                // FastNetMon applies netflow_sampling_ratio only to exports that announce no
                // rate: the fallback, never an override of what a router says.
                let _ = writeln!(
                    out,
                    "# from netflow_sampling_ratio\nfallback_sampling_rate = {n}"
                );
            }
        }
    }

    // Hostgroups: the global thresholds first, as the default group.
    used.insert("ban_time".into());
    let ban_time = match get("ban_time") {
        Some(v) => match v.trim().parse::<u32>() {
            Ok(0) => {
                changes.push(
                    "ban_time = 0 (FastNetMon never unbans): flowguard has no such setting; ban_time_seconds stays at its default, 300"
                        .into(),
                );
                None
            }
            Ok(n) => Some(n),
            Err(_) => {
                changes.push(format!(
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
    // A hostgroup's settings start from a fresh `ban_settings_t` in FastNetMon, not from
    // the global ones: a switch the group does not set is off.
    let group_ban_for = |m: &ThresholdMap| m.default_on;
    let global = thresholds(
        &get,
        &|m| m.default_on,
        "",
        conntrack,
        &mut notes,
        &mut changes,
    );
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
            changes.push(format!(
                "hostgroup = {}: expected name:prefix,prefix",
                one_line(line)
            ));
            continue;
        };
        let name = name.trim().to_string();
        if name.is_empty() {
            changes.push(format!("hostgroup = {}: no name", one_line(line)));
            continue;
        }
        let mut prefixes = Vec::new();
        for s in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match parse_prefix(s) {
                Some(n) => prefixes.push(n),
                None => changes.push(format!(
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
            changes.push(format!("hostgroup {name} has no usable prefixes, skipped"));
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
        if fg_name != name {
            changes.push(format!(
                "hostgroup {name} is named {fg_name} here (policy_by_hostgroup keys use the new name)"
            ));
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
        let th = thresholds(
            &lookup,
            &group_ban_for,
            &label,
            conntrack,
            &mut notes,
            &mut changes,
        );
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
    let mut head = String::new();
    let _ = writeln!(
        head,
        "# flowguard configuration converted from FastNetMon's by `flowguard import-fastnetmon`."
    );
    let _ = writeln!(
        head,
        "# Review it: [api], [mitigator] and [state] still need setting."
    );
    if changes.is_empty() {
        let _ = writeln!(
            head,
            "# Behaviour changes: none; every setting that affects detection maps to flowguard."
        );
    } else {
        let _ = writeln!(
            head,
            "# Behaviour changes: flowguard will detect differently from FastNetMon here:"
        );
        for c in &changes {
            let _ = writeln!(head, "#   - {c}");
        }
    }
    let mut out = head + &out;
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
            "ban_for_pps = on\nthreshold_pps = 5000\nthreshold_mbps = 10\nban_for_flows = off\nthreshold_flows = 10\nban_time = 60\nnetflow = on\nnetflow_port = 2055,2056\nnetflow_host = 127.0.0.1\nnetflow_sampling_ratio = 100\n",
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
        // An absent switch is off in FastNetMon (ban_settings_t starts all off).
        assert_eq!(g.threshold_mbps, None);
        assert!(
            toml.contains("threshold_mbps = 10 not imported: ban_for_bandwidth is not set"),
            "{toml}"
        );
        // The ratio is a fallback, never an override of what a router announces.
        let c = &cfg.collectors[0];
        assert_eq!(
            (c.sampling_rate, c.fallback_sampling_rate),
            (None, Some(100))
        );
        // FastNetMon watches outgoing traffic unless told not to.
        assert!(cfg.detection.outgoing && cfg.detection.incoming && cfg.detection.ipv6);
        // The unreadable whitelist is a behaviour change: it is in the header.
        let header: String = toml.lines().take_while(|l| l.starts_with('#')).collect();
        assert!(header.contains("white_list_path"), "{toml}");
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
            "ban_for_pps = on\nthreshold_pps = lots\nnetflow_host = router.example\nnetflow_port = 1\nsflow = on\nsflow_port = 99999\nhostgroup = broken\nhostgroup = empty:nonsense\nhostgroup = default:192.0.2.0/24\nban_time = x\nweird line\n",
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
