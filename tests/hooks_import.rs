//! `import-fastnetmon`: FastNetMon configurations in, loadable flowguard TOML out.

use std::path::Path;

use flowguard::config::Config;
use flowguard::hooks::cli::{run_import, ImportArgs};
use flowguard::hooks::import::convert;
use ipnet::IpNet;

const TEST_CONF: &str = include_str!("data/hooks/fastnetmon-test.conf");

fn nets(v: &[&str]) -> Vec<IpNet> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn load(toml: &str) -> Config {
    Config::from_toml_str(toml).unwrap_or_else(|e| panic!("{e}\n--- output ---\n{toml}"))
}

#[test]
fn the_reference_test_conf_imports_from_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("networks_list"),
        "# protected\n127.0.0.16/28\n127.0.0.32/27\n::1/128\n",
    )
    .unwrap();
    std::fs::write(dir.join("whitelist"), "127.0.0.20\n").unwrap();
    let conf = TEST_CONF
        .replace("@DIR@", &dir.display().to_string())
        .replace("@NOTIFY@", "/usr/local/bin/fastnetmon-notify.sh");
    let path = dir.join("fastnetmon.conf");
    std::fs::write(&path, conf).unwrap();

    let toml = run_import(&ImportArgs { path }).unwrap();
    let cfg = load(&toml);
    assert_eq!(
        cfg.networks.protected,
        nets(&["127.0.0.16/28", "127.0.0.32/27", "::1/128"])
    );
    assert_eq!(cfg.networks.whitelist, nets(&["127.0.0.20/32"]));
    assert_eq!(cfg.aggregate.window_seconds, 5);
    // netflow_sampling_ratio is FastNetMon's rate for exports that announce none.
    assert!(cfg.collectors.iter().all(|c| c.sampling_rate.is_none()));
    let listeners: Vec<(String, Option<u32>)> = cfg
        .collectors
        .iter()
        .map(|c| (c.label(), c.fallback_sampling_rate))
        .collect();
    assert_eq!(
        listeners,
        vec![
            ("netflow-12055".to_string(), Some(1)),
            ("sflow-16343".to_string(), None)
        ]
    );
    assert_eq!(cfg.collectors[0].listen.to_string(), "127.0.0.1:12055");
    assert_eq!(cfg.hostgroups.len(), 1);
    let g = &cfg.hostgroups[0];
    assert_eq!(g.name, "default");
    assert!(g.prefixes.is_empty());
    assert_eq!(g.ban_time_seconds, 30);
    assert_eq!(g.threshold_pps, Some(2000));
    assert_eq!(g.threshold_mbps, Some(1000));
    assert_eq!(g.threshold_flows, None, "ban_for_flows = off");
    // process_outgoing_traffic = off, incoming and IPv6 on.
    assert!(!cfg.detection.outgoing && cfg.detection.incoming && cfg.detection.ipv6);
    assert!(
        toml.contains("# Behaviour changes: none"),
        "the test config maps exactly\n{toml}"
    );
    // Nothing silently dropped: FastNetMon-only settings come out as comments.
    for want in [
        "# unsupported: logging_level = debug",
        "# unsupported: prometheus_port = 19209",
        "# notify_script_path = /usr/local/bin/fastnetmon-notify.sh:",
    ] {
        assert!(toml.contains(want), "{want:?} missing in\n{toml}");
    }
    assert!(!toml.contains("# unsupported: threshold_pps"), "{toml}");
}

#[test]
fn missing_conf_file_is_an_error() {
    let err = run_import(&ImportArgs {
        path: "/nonexistent/fastnetmon.conf".into(),
    })
    .unwrap_err();
    assert!(format!("{err:#}").contains("/nonexistent/fastnetmon.conf"));
}

const RICH: &str = r#"
# A production-like FastNetMon configuration.
enable_ban = on
ban_time = 1900
networks_list_path = /etc/networks_list
white_list_path = /etc/missing_whitelist
average_calculation_time = 15

ban_for_pps = on
ban_for_bandwidth = off
ban_for_flows = on
threshold_pps = 20000
threshold_mbps = 1000
threshold_flows = 3500

ban_for_tcp_pps = on
threshold_tcp_pps = 100000
ban_for_udp_bandwidth = on
threshold_udp_mbps = 500
ban_for_icmp_pps = off
threshold_icmp_pps = 5000
ban_for_tcp_syn_pps = on
threshold_tcp_syn_pps = 3000
ban_for_ip_fragments_pps = on
threshold_ip_fragments_pps = 800
ban_for_tcp_syn_bandwidth = on
process_outgoing_traffic = on
enable_ban_ipv6 = off
unban_only_if_attack_finished = off

hostgroup = customers:198.51.100.0/24,203.0.113.0/25
hostgroup = web:192.0.2.10/32
hostgroup = customers:2001:db8::/48
hostgroup = quiet:192.0.2.128/25
customers_ban_for_pps = on
customers_threshold_pps = 50000
customers_ban_for_bandwidth = on
customers_threshold_mbps = 800
customers_ban_for_udp_pps = on
customers_threshold_udp_pps = 9000
web_threshold_pps = 1000
web_threshold_mbps = 70
web_ban_for_bandwidth = on
web_ban_for_flows = off
web_threshold_flows = 100
quiet_enable_ban = off
quiet_threshold_pps = 1

netflow = on
netflow_port = 2055,2056
netflow_host = 0.0.0.0
netflow_sampling_ratio = 1000
sflow = on
sflow_host = ::
sflow_port = 6343
interfaces = eth3,eth4
mirror_afpacket = on
exabgp = on
exabgp_community = 65001:666
"#;

#[test]
fn a_rich_conf_maps_every_supported_key() {
    let read = |p: &Path| {
        (p == Path::new("/etc/networks_list")).then(|| {
            "198.51.100.0/24\n203.0.113.0/24\n192.0.2.0/24\n2001:db8::/32\nbogus\n".to_string()
        })
    };
    let toml = convert(RICH, &read);
    let cfg = load(&toml);

    assert_eq!(
        cfg.networks.protected,
        nets(&[
            "198.51.100.0/24",
            "203.0.113.0/24",
            "192.0.2.0/24",
            "2001:db8::/32"
        ])
    );
    assert!(cfg.networks.whitelist.is_empty());
    assert!(toml.contains("white_list_path = /etc/missing_whitelist could not be read"));
    assert!(toml.contains("\"bogus\" is not a prefix"), "{toml}");
    assert_eq!(cfg.aggregate.window_seconds, 15);

    let listen: Vec<String> = cfg
        .collectors
        .iter()
        .map(|c| c.listen.to_string())
        .collect();
    assert_eq!(listen, ["0.0.0.0:2055", "0.0.0.0:2056", "[::]:6343"]);
    assert_eq!(cfg.collectors[0].sampling_rate, None, "never an override");
    assert_eq!(cfg.collectors[0].fallback_sampling_rate, Some(1000));
    assert_eq!(cfg.collectors[1].fallback_sampling_rate, Some(1000));
    assert_eq!(
        cfg.collectors[2].fallback_sampling_rate, None,
        "sFlow carries its rate"
    );
    assert!(cfg.detection.outgoing, "process_outgoing_traffic = on");
    assert!(cfg.detection.incoming);
    assert!(!cfg.detection.ipv6, "enable_ban_ipv6 = off");

    let names: Vec<&str> = cfg.hostgroups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["default", "customers", "web", "quiet"]);
    assert!(cfg.hostgroups.iter().all(|g| g.ban_time_seconds == 1900));

    let d = &cfg.hostgroups[0];
    assert_eq!(d.threshold_pps, Some(20000));
    assert_eq!(d.threshold_mbps, None, "ban_for_bandwidth = off");
    assert_eq!(d.threshold_flows, Some(3500));
    assert_eq!(d.threshold_tcp_pps, Some(100000));
    assert_eq!(d.threshold_udp_mbps, Some(500));
    assert_eq!(d.threshold_icmp_pps, None, "ban_for_icmp_pps = off");
    assert_eq!(d.threshold_syn_pps, Some(3000));
    assert_eq!(d.threshold_fragment_pps, Some(800));
    assert_eq!(d.threshold_syn_mbps, None);
    assert!(toml.contains("ban_for_tcp_syn_bandwidth is on but threshold_tcp_syn_mbps is not set"));

    let c = &cfg.hostgroups[1];
    assert_eq!(
        c.prefixes,
        nets(&["198.51.100.0/24", "203.0.113.0/25", "2001:db8::/48"])
    );
    assert_eq!(c.threshold_pps, Some(50000));
    assert_eq!(c.threshold_mbps, Some(800));
    assert_eq!(c.threshold_udp_pps, Some(9000));

    let w = &cfg.hostgroups[2];
    assert_eq!(w.prefixes, nets(&["192.0.2.10/32"]));
    // A group's switches start off in FastNetMon (a fresh ban_settings_t), not from the
    // global ones: web_ban_for_pps is not set, so web_threshold_pps never applied.
    assert_eq!(w.threshold_pps, None);
    assert!(toml.contains("web_threshold_pps = 1000 not imported: web_ban_for_pps is not set"));
    assert_eq!(w.threshold_mbps, Some(70));
    assert_eq!(w.threshold_flows, None);

    let q = &cfg.hostgroups[3];
    assert_eq!(q.threshold_pps, None, "quiet_enable_ban = off");
    assert_eq!(q.incoming(), Default::default());

    for want in [
        "# unsupported: interfaces = eth3,eth4",
        "# unsupported: exabgp_community = 65001:666",
    ] {
        assert!(toml.contains(want), "{want:?} missing in\n{toml}");
    }
    // What changes detection is in the header, before any setting.
    let header: Vec<&str> = toml.lines().take_while(|l| l.starts_with('#')).collect();
    let header = header.join("\n");
    for want in [
        "Behaviour changes: flowguard will detect differently",
        "mirror_afpacket = on: flowguard reads NetFlow/IPFIX/sFlow exports only; the traffic FastNetMon captured on eth3,eth4 is not seen",
        "unban_only_if_attack_finished = off",
        "white_list_path = /etc/missing_whitelist could not be read",
        "\"bogus\" is not a prefix",
    ] {
        assert!(header.contains(want), "{want:?} not in the header\n{toml}");
    }
    for consumed in [
        "customers_threshold_pps",
        "web_threshold_pps",
        "ban_time",
        "netflow_port",
    ] {
        assert!(
            !toml.contains(&format!("# unsupported: {consumed}")),
            "{consumed} should be imported\n{toml}"
        );
    }
}

#[test]
fn enable_ban_off_means_dry_run() {
    let toml = convert(
        "enable_ban = off\nban_for_pps = on\nthreshold_pps = 10\n",
        &|_| None,
    );
    let cfg = load(&toml);
    assert_eq!(cfg.mitigator.dry_run, Some(true));
    assert_eq!(cfg.hostgroups[0].threshold_pps, Some(10));
    // FastNetMon's defaults for the list files are tried and reported.
    assert!(toml.contains("networks_list_path = /etc/networks_list could not be read"));
}

/// Every `key = value` line of a FastNetMon config: mentioned in the output (mapped with a
/// comment, a behaviour change, a note, or unsupported), or one of the keys whose flowguard
/// equivalent carries the same name or value without a comment.
fn assert_every_key_accounted_for(conf: &str, toml: &str) {
    const MAPPED_SILENTLY: &[&str] = &[
        "ban_time",
        "netflow_port",
        "netflow_host",
        "sflow_port",
        "sflow_host",
        "netflow",
        "sflow",
        "enable_ban",
        "hostgroup",
    ];
    for line in conf.lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let k = k.trim();
        let silent = MAPPED_SILENTLY.contains(&k)
            || k.starts_with("ban_for_")
            || k.starts_with("threshold_")
            || k.contains("_threshold_")
            || k.contains("_ban_for_");
        assert!(
            silent || toml.contains(k),
            "{k} is not accounted for\n{toml}"
        );
    }
}

#[test]
fn the_stock_debian_config_imports_with_every_key_accounted_for() {
    // The configuration the Debian package installs (CI installs it, see .ci/test).
    let Ok(conf) = std::fs::read_to_string("/etc/fastnetmon.conf") else {
        if std::env::var("FLOWGUARD_SKIP_REAL_TOOLS").as_deref() == Ok("1") {
            return;
        }
        panic!("/etc/fastnetmon.conf missing: apt-get install fastnetmon, or set FLOWGUARD_SKIP_REAL_TOOLS=1");
    };
    let toml = convert(&conf, &|_| Some("192.0.2.0/24\n".to_string()));
    let cfg = load(&toml);
    assert_every_key_accounted_for(&conf, &toml);
    let g = &cfg.hostgroups[0];
    // Debian's: ban_for_pps and ban_for_bandwidth on, 20000 pps and 1000 mbps, ban_time 1900;
    // the per-protocol thresholds are there but switched off.
    assert_eq!(
        (g.threshold_pps, g.threshold_mbps),
        (Some(20000), Some(1000))
    );
    assert_eq!(g.threshold_tcp_pps, None);
    assert_eq!(g.ban_time_seconds, 1900);
    assert!(
        cfg.detection.outgoing,
        "Debian's process_outgoing_traffic = on"
    );
    assert!(cfg.detection.incoming && cfg.detection.ipv6);
}

#[test]
fn the_rich_config_accounts_for_every_key() {
    let read = |_: &Path| Some("198.51.100.0/24\n".to_string());
    let toml = convert(RICH, &read);
    load(&toml);
    assert_every_key_accounted_for(RICH, &toml);
}

#[test]
fn incoming_off_and_missing_switches() {
    let toml = convert(
        "process_incoming_traffic = off\nenable_connection_tracking = off\nban_for_flows = on\nthreshold_flows = 10\nban_for_pps = on\nthreshold_pps = 5\n",
        &|_| None,
    );
    let cfg = load(&toml);
    assert!(!cfg.detection.incoming);
    // FastNetMon's default for process_outgoing_traffic is on.
    assert!(cfg.detection.outgoing);
    // Flows are counted only with connection tracking in FastNetMon: never triggered there.
    assert_eq!(cfg.hostgroups[0].threshold_flows, None);
    assert_eq!(cfg.hostgroups[0].threshold_pps, Some(5));
    assert!(toml.contains("enable_connection_tracking = on"), "{toml}");
}
