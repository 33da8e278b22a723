//! Golden test over real vendor exports (`../shared/vectors/external-logstash`: Cisco,
//! Juniper, Huawei, H3C, Palo Alto, Fortigate, MikroTik, Ixia, Barracuda, YAF, ...): every
//! capture replayed with everything protected; where tshark decodes the capture, the
//! incoming packets and bytes per destination equal its `.truth.json` exactly. Corrupt
//! captures (`*invalid*`) must replay to the end with their errors counted.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use flowguard::config::Config;
use flowguard::replay::{run, ReplayOptions, Summary};
use serde_json::Value;

const CONFIG: &str = r#"
[api]
listen = "127.0.0.1:0"
[networks]
protected = ["0.0.0.0/0", "::/0"]
[aggregate]
idle_timeout_seconds = 3600
[[hostgroup]]
name = "default"
threshold_pps = 1000000000
threshold_mbps = 1000000000
"#;

fn dir() -> PathBuf {
    common::vectors().join("external-logstash")
}

type Totals = BTreeMap<String, (u64, u64)>;

fn replay(path: &std::path::Path) -> (Totals, Summary) {
    let cfg = Config::from_toml_str(CONFIG).unwrap();
    let mut out = Vec::new();
    let opts = ReplayOptions {
        totals: true,
        ..ReplayOptions::default()
    };
    let summary = run(&cfg, &[path.to_path_buf()], &opts, &mut out)
        .unwrap_or_else(|e| panic!("{}: replay failed: {e:#}", path.display()));
    let mut got = Totals::new();
    for l in String::from_utf8(out).unwrap().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        if v["direction"] != "incoming" {
            continue;
        }
        let (p, b) = (v["packets"].as_u64().unwrap(), v["bytes"].as_u64().unwrap());
        if p > 0 || b > 0 {
            got.insert(v["ip"].as_str().unwrap().to_string(), (p, b));
        }
    }
    (got, summary)
}

#[test]
fn vendor_exports_match_tshark_per_destination() {
    let mut pcaps: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (../shared must sit beside the repo)",
                dir().display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pcap"))
        .collect();
    pcaps.sort();
    assert!(pcaps.len() >= 50, "only {} captures found", pcaps.len());
    let (mut exact, mut compared, mut wrong) = (0, 0, Vec::new());
    for p in &pcaps {
        let name = p.file_stem().unwrap().to_string_lossy().to_string();
        let (got, summary) = replay(p);
        if name.contains("invalid") {
            assert!(
                summary.decode_errors > 0 || summary.skips.total() > 0,
                "{name}: a corrupt capture with nothing counted: {}",
                summary.line()
            );
            continue;
        }
        let truth: Value =
            serde_json::from_str(&std::fs::read_to_string(p.with_extension("truth.json")).unwrap())
                .unwrap();
        if truth["tshark_decodes"] != true {
            continue;
        }
        let want: Totals = truth["hosts"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(ip, h)| {
                (
                    ip.clone(),
                    (h["packets"].as_u64().unwrap(), h["bytes"].as_u64().unwrap()),
                )
            })
            .filter(|(_, (p, b))| *p > 0 || *b > 0)
            .collect();
        compared += 1;
        if got == want {
            exact += 1;
        } else {
            wrong.push(format!(
                "{name}: got {got:?}\n  want {want:?}\n  {}",
                summary.line()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(compared >= 40, "only {compared} captures compared");
    eprintln!("{exact} of {compared} vendor captures exact");
}

/// The captures that once lost records silently now say what they did not count, and
/// the padded ones (Palo Alto, Cisco ACI) raise no decode error.
#[test]
fn padded_and_empty_field_exports_decode_without_errors() {
    for name in [
        "nf9-paloalto-81",
        "nf9-cisco-aci",
        "ipfix-ixia-256",
        "ipfix-ixia-271",
        "nf9-h3c-varstring",
    ] {
        let (got, s) = replay(&dir().join(format!("{name}.pcap")));
        assert_eq!(s.decode_errors, 0, "{name}: {}", s.line());
        assert!(!got.is_empty(), "{name}: no traffic: {}", s.line());
    }
}
