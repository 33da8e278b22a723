//! The deployment files hold together without a Docker engine or systemd running:
//! docker-compose.yml, the Dockerfile, the Prometheus and Grafana provisioning they mount,
//! the default ports of flowguard's configuration, and the systemd unit.

mod common;
use common::ops as ops_support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use ops_support::*;
use serde_yaml_ng::Value as Yaml;

fn compose() -> Yaml {
    serde_yaml_ng::from_str(&read(&root().join("docker-compose.yml")))
        .expect("docker-compose.yml is YAML")
}

fn yaml_file(rel: &str) -> Yaml {
    serde_yaml_ng::from_str(&read(&root().join(rel))).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn strs(v: &Yaml) -> Vec<String> {
    v.as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect()
}

/// One Dockerfile instruction, continuation lines joined.
struct Instr {
    op: String,
    args: String,
}

fn dockerfile() -> Vec<Instr> {
    let text = read(&root().join("Dockerfile"));
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(s) = t.strip_suffix('\\') {
            cur.push_str(s);
            cur.push(' ');
            continue;
        }
        cur.push_str(t);
        let (op, args) = cur.split_once(char::is_whitespace).unwrap_or((&cur, ""));
        out.push(Instr {
            op: op.to_ascii_uppercase(),
            args: args.trim().to_string(),
        });
        cur.clear();
    }
    out
}

/// `(port, protocol)` pairs, protocol "tcp" or "udp".
type Ports = BTreeSet<(u16, String)>;

fn parse_port(spec: &str) -> (u16, String) {
    let (p, proto) = spec.split_once('/').unwrap_or((spec, "tcp"));
    let port = p.rsplit(':').next().unwrap_or(p);
    (
        port.parse()
            .unwrap_or_else(|_| panic!("bad port spec {spec:?}")),
        proto.to_string(),
    )
}

/// The ports flowguard listens on in its default configuration: the API's default, and
/// every `[[collector]]` of collectors/*.toml.
fn default_ports() -> Ports {
    let mut p = Ports::new();
    let api = flowguard::config::ApiConfig::default().listen;
    p.insert((api.port(), "tcp".into()));
    for f in files_with_ext(&root().join("collectors"), ".toml") {
        let t: toml::Table =
            toml::from_str(&read(&f)).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        for c in t
            .get("collector")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
        {
            let listen = c.get("listen").and_then(|l| l.as_str()).unwrap_or_default();
            let addr: std::net::SocketAddr = listen
                .parse()
                .unwrap_or_else(|_| panic!("{}: collector listen {listen:?}", f.display()));
            assert!(
                !addr.ip().is_loopback(),
                "{}: collector listens on {addr}: inside the container nothing outside could \
                 reach it; the bundled layout should listen on 0.0.0.0 / [::]",
                f.display()
            );
            p.insert((addr.port(), "udp".into()));
        }
    }
    p
}

#[test]
fn dockerfile_stages_copies_and_runtime() {
    let ins = dockerfile();
    let mut problems = Vec::new();
    let mut stages = Vec::new();
    let mut images = Vec::new();
    for i in &ins {
        if i.op == "FROM" {
            let w: Vec<&str> = i.args.split_whitespace().collect();
            images.push(w[0].to_string());
            if w.len() >= 3 && w[1].eq_ignore_ascii_case("as") {
                stages.push(w[2].to_string());
            }
        }
    }
    assert_eq!(
        images,
        vec!["rust:1-bookworm", "debian:bookworm-slim"],
        "a rust:1-bookworm builder and a debian:bookworm-slim runtime"
    );
    let ignored: Vec<String> = std::fs::read_to_string(root().join(".dockerignore"))
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().trim_end_matches('/').to_string())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    // Per stage: instructions after its FROM.
    let mut stage_idx = -1i32;
    let mut runtime_user = None;
    let mut entry = None;
    let mut exposed = Ports::new();
    let mut env = BTreeMap::new();
    let mut built = false;
    for i in &ins {
        match i.op.as_str() {
            "FROM" => stage_idx += 1,
            "RUN" if i.args.contains("cargo build") => {
                built = i.args.contains("--release") && i.args.contains("--locked");
                // mitigator-sim is a workspace crate of its own: only a workspace build
                // (or one naming its package) makes the binary the image installs.
                if i.args.contains("target/release/mitigator-sim")
                    && !i.args.contains("--workspace")
                    && !i.args.contains("-p mitigator-sim")
                {
                    problems.push("the image installs mitigator-sim without building its crate (cargo build --workspace)".into());
                }
            }
            "COPY" | "ADD" => {
                let words: Vec<&str> = i.args.split_whitespace().collect();
                let from = words.iter().find_map(|w| w.strip_prefix("--from="));
                let rest: Vec<&str> = words
                    .iter()
                    .filter(|w| !w.starts_with("--"))
                    .copied()
                    .collect();
                let srcs = &rest[..rest.len().saturating_sub(1)];
                match from {
                    Some(st) => {
                        if !stages.iter().any(|s| s == st) {
                            problems.push(format!("COPY --from={st}: no such build stage"));
                        }
                    }
                    None => {
                        for s in srcs {
                            let p = s.trim_end_matches('/');
                            if p != "." && !root().join(p).exists() {
                                problems.push(format!("COPY {s}: not in the build context"));
                            }
                            if ignored.iter().any(|ig| ig == p) {
                                problems.push(format!("COPY {s}: excluded by .dockerignore"));
                            }
                        }
                    }
                }
            }
            "USER" if stage_idx == 1 => runtime_user = Some(i.args.clone()),
            "ENTRYPOINT" if stage_idx == 1 => entry = Some(i.args.clone()),
            "EXPOSE" => {
                for p in i.args.split_whitespace() {
                    exposed.insert(parse_port(p));
                }
            }
            "ENV" => {
                if let Some((k, v)) = i.args.split_once('=') {
                    env.insert(k.trim().to_string(), v.trim().to_string());
                }
            }
            _ => {}
        }
    }
    if !built {
        problems.push("the builder does not run `cargo build --release --locked`".into());
    }
    match runtime_user.as_deref() {
        None | Some("root") | Some("0") => problems.push("the runtime stage runs as root".into()),
        Some(_) => {}
    }
    let entry = entry.unwrap_or_default();
    let ep: Vec<String> = serde_json::from_str(&entry).unwrap_or_default();
    if ep != ["flowguard", "run"] {
        problems.push(format!(
            "ENTRYPOINT is {entry}, want [\"flowguard\", \"run\"] in exec form"
        ));
    }
    for want in default_ports() {
        if !exposed.contains(&want) {
            problems.push(format!("EXPOSE lacks {}/{}", want.0, want.1));
        }
    }
    // The API must be reachable from the Prometheus container, on the port EXPOSEd.
    match env.get("FLOWGUARD__API__LISTEN") {
        Some(l) => {
            let a: std::net::SocketAddr = l.parse().expect("FLOWGUARD__API__LISTEN address");
            if a.ip().is_loopback() {
                problems.push(format!(
                    "FLOWGUARD__API__LISTEN={l} is unreachable from other containers"
                ));
            }
            if !exposed.contains(&(a.port(), "tcp".into())) {
                problems.push(format!("API port {} not EXPOSEd", a.port()));
            }
        }
        None => {
            problems.push("no ENV FLOWGUARD__API__LISTEN: the API would listen on loopback".into())
        }
    }
    assert!(problems.is_empty(), "Dockerfile:\n{}", problems.join("\n"));
}

/// Host paths a service bind-mounts, with their container paths.
fn binds(svc: &Yaml) -> Vec<(PathBuf, String)> {
    strs(&svc["volumes"])
        .into_iter()
        .filter(|v| v.starts_with("./") || v.starts_with('/'))
        .map(|v| {
            let mut it = v.split(':');
            let src = it.next().unwrap_or_default().to_string();
            let dst = it.next().unwrap_or_default().to_string();
            (root().join(src.trim_start_matches("./")), dst)
        })
        .collect()
}

#[test]
fn compose_services_files_ports_and_profiles() {
    let c = compose();
    let services = c["services"].as_mapping().expect("services");
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(String::from))
        .collect();
    let mut problems = Vec::new();
    for want in ["flowguard", "prometheus", "grafana", "mitigator-sim"] {
        if !names.contains(want) {
            problems.push(format!("no service {want}"));
        }
    }
    let declared_volumes: BTreeSet<String> = c["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for (k, svc) in services {
        let name = k.as_str().unwrap_or("?");
        let build = &svc["build"];
        if build.is_null() && svc["image"].as_str().unwrap_or("").is_empty() {
            problems.push(format!("{name}: neither image nor build"));
        }
        if !build.is_null() {
            let ctx = build["context"].as_str().or(build.as_str()).unwrap_or(".");
            let df = build["dockerfile"].as_str().unwrap_or("Dockerfile");
            let ctxp = root().join(ctx);
            if !ctxp.join(df).is_file() {
                problems.push(format!("{name}: build {ctx}/{df} does not exist"));
            }
        } else if let Some(img) = svc["image"].as_str() {
            // Pulled images are pinned to a version, never "latest".
            if !img.contains(':') || img.ends_with(":latest") {
                problems.push(format!("{name}: image {img} is not pinned"));
            }
        }
        for (src, dst) in binds(svc) {
            if !src.exists() {
                problems.push(format!(
                    "{name}: mounts {} which does not exist",
                    src.display()
                ));
            }
            if dst.is_empty() {
                problems.push(format!("{name}: mount of {} has no target", src.display()));
            }
        }
        for v in strs(&svc["volumes"]) {
            if !(v.starts_with("./") || v.starts_with('/')) {
                let vol = v.split(':').next().unwrap_or_default();
                if !declared_volumes.contains(vol) {
                    problems.push(format!("{name}: named volume {vol} not declared"));
                }
            }
        }
        for d in strs(&svc["depends_on"]) {
            if !names.contains(&d) {
                problems.push(format!("{name}: depends on unknown service {d}"));
            }
        }
    }

    // The demo profile holds the simulator, and only it; the base stack has no profile.
    let sim = &c["services"]["mitigator-sim"];
    if !strs(&sim["profiles"]).contains(&"demo".to_string()) {
        problems.push("mitigator-sim is not in the demo profile".into());
    }
    if strs(&sim["entrypoint"]).first().map(String::as_str) != Some("mitigator-sim") {
        problems.push("mitigator-sim does not use the mitigator-sim entrypoint".into());
    }
    if sim["image"] != c["services"]["flowguard"]["image"] {
        problems.push("mitigator-sim does not run flowguard's image".into());
    }
    for base in ["flowguard", "prometheus", "grafana"] {
        if !c["services"][base]["profiles"].is_null() {
            problems.push(format!("{base} must not be behind a profile"));
        }
    }

    // flowguard publishes exactly the ports its default configuration listens on.
    let published: Ports = strs(&c["services"]["flowguard"]["ports"])
        .iter()
        .map(|p| parse_port(p))
        .collect();
    let want = default_ports();
    if published != want {
        problems.push(format!(
            "flowguard publishes {published:?}, its default config listens on {want:?}"
        ));
    }
    assert!(
        problems.is_empty(),
        "docker-compose.yml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn compose_prometheus_scrapes_flowguard_and_loads_the_rules() {
    let c = compose();
    let prom = &c["services"]["prometheus"];
    let cfg_rel = "dashboards/prometheus/prometheus.yml";
    let cfg = yaml_file(cfg_rel);
    let mounts = binds(prom);
    let cfg_target = mounts
        .iter()
        .find(|(s, _)| s == &root().join(cfg_rel))
        .map(|(_, d)| d.clone())
        .expect("compose mounts dashboards/prometheus/prometheus.yml into prometheus");
    let args = strs(&prom["command"]);
    assert!(
        args.iter()
            .any(|a| a == &format!("--config.file={cfg_target}")),
        "prometheus is not started with --config.file={cfg_target}: {args:?}"
    );
    let cfg_dir_in = Path::new(&cfg_target).parent().expect("config dir");
    for rf in strs(&cfg["rule_files"]) {
        let host = root().join("dashboards/prometheus").join(&rf);
        assert!(
            host.is_file(),
            "rule file {rf} missing beside prometheus.yml"
        );
        let inside = cfg_dir_in.join(&rf);
        assert!(
            mounts
                .iter()
                .any(|(s, d)| s == &host && Path::new(d) == inside),
            "rule file {rf} is not mounted at {}",
            inside.display()
        );
    }
    let api_port = flowguard::config::ApiConfig::default().listen.port();
    let targets: Vec<String> = cfg["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|j| j["job_name"] == "flowguard")
        .flat_map(|j| {
            j["static_configs"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|s| strs(&s["targets"]))
        .collect();
    assert_eq!(
        targets,
        vec![format!("flowguard:{api_port}")],
        "the flowguard job must scrape the flowguard service on the API port"
    );
    // The alert FlowguardDown keys on this job name.
    assert!(read(&root().join("dashboards/prometheus/alerts.yml")).contains("job=\"flowguard\""));
}

#[test]
fn compose_grafana_provisioning_points_at_files_that_exist() {
    let c = compose();
    let g = &c["services"]["grafana"];
    let mounts = binds(g);
    let mounted = |host: &str| -> Option<String> {
        mounts
            .iter()
            .find(|(s, _)| s == &root().join(host))
            .map(|(_, d)| d.clone())
    };
    let mut problems = Vec::new();
    for (host, target) in [
        (
            "dashboards/grafana/provisioning/datasources",
            "/etc/grafana/provisioning/datasources",
        ),
        (
            "dashboards/grafana/provisioning/dashboards",
            "/etc/grafana/provisioning/dashboards",
        ),
    ] {
        if mounted(host).as_deref() != Some(target) {
            problems.push(format!("{host} is not mounted at {target}"));
        }
        if files_with_ext(&root().join(host), ".yml").is_empty() {
            problems.push(format!("{host} holds no .yml"));
        }
    }
    // Datasource: points at the prometheus service.
    let ds = yaml_file("dashboards/grafana/provisioning/datasources/prometheus.yml");
    let url = ds["datasources"][0]["url"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if url != "http://prometheus:9090" {
        problems.push(format!("datasource url {url}, want http://prometheus:9090"));
    }
    // Dashboard provider: its path is a mount of a directory that holds the dashboards.
    let prov = yaml_file("dashboards/grafana/provisioning/dashboards/flowguard.yml");
    for p in prov["providers"].as_sequence().into_iter().flatten() {
        let path = p["options"]["path"].as_str().unwrap_or_default();
        match mounts.iter().find(|(_, d)| d == path) {
            None => problems.push(format!("provider path {path} is not a grafana mount")),
            Some((src, _)) => {
                let json = files_with_ext(src, ".json");
                if json.is_empty() {
                    problems.push(format!(
                        "{} (mounted at {path}) holds no dashboards",
                        src.display()
                    ));
                }
            }
        }
    }
    // The home dashboard named in the environment is one of the mounted files.
    if let Some(home) = g["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].as_str() {
        let found = mounts.iter().any(|(src, d)| {
            Path::new(home)
                .strip_prefix(d)
                .is_ok_and(|rel| src.join(rel).is_file())
        });
        if !found {
            problems.push(format!("home dashboard {home} is not a mounted file"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn unit_keys(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section = String::new();
    for l in text.lines() {
        let l = l.trim();
        if l.starts_with('#') || l.is_empty() {
            continue;
        }
        if l.starts_with('[') {
            section = l.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        if let Some((k, v)) = l.split_once('=') {
            m.entry(format!("{section}.{}", k.trim()))
                .or_default()
                .push(v.trim().to_string());
        }
    }
    m
}

#[test]
fn systemd_unit_is_hardened() {
    let text = read(&root().join("flowguard.service"));
    let k = unit_keys(&text);
    let one = |key: &str| -> String {
        k.get(&format!("Service.{key}"))
            .and_then(|v| v.last().cloned())
            .unwrap_or_else(|| panic!("flowguard.service: no {key}="))
    };
    let expect = [
        ("User", "flowguard"),
        ("DynamicUser", "no"),
        ("StateDirectory", "flowguard"),
        ("ConfigurationDirectory", "flowguard"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
        ("Restart", "on-failure"),
    ];
    let mut problems = Vec::new();
    for (key, want) in expect {
        let got = one(key);
        if got != want {
            problems.push(format!("{key}={got}, want {want}"));
        }
    }
    let filters = k
        .get("Service.SystemCallFilter")
        .cloned()
        .unwrap_or_default();
    if !filters.iter().any(|f| f == "@system-service") {
        problems.push(format!(
            "SystemCallFilter lacks @system-service: {filters:?}"
        ));
    }
    if one("LimitNOFILE").parse::<u64>().unwrap_or(0) < 4096 {
        problems.push("LimitNOFILE below 4096".into());
    }
    // No capability unless a default port is privileged.
    let caps = one("CapabilityBoundingSet");
    let privileged = default_ports().iter().any(|(p, _)| *p < 1024);
    let allowed = if privileged {
        "CAP_NET_BIND_SERVICE"
    } else {
        ""
    };
    if caps != allowed {
        problems.push(format!("CapabilityBoundingSet={caps}, want {allowed:?}"));
    }
    let exec = one("ExecStart");
    if !exec.ends_with("flowguard run") || !exec.starts_with('/') {
        problems.push(format!("ExecStart={exec}, want /path/to/flowguard run"));
    }
    assert!(
        problems.is_empty(),
        "flowguard.service:\n{}",
        problems.join("\n")
    );

    // systemd's own parser, when present. `verify` only warns (exit 0) on unknown keys and
    // bad values, so any line about the unit is a failure. ExecStart must point at an
    // executable for verify, so the copy runs the binary under test.
    let Some(sa) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("systemd-analyze"))
            .find(|c| c.is_file())
    }) else {
        eprintln!("systemd-analyze not installed: checked the unit's keys only");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("flowguard.service");
    let bin = env!("CARGO_BIN_EXE_flowguard");
    std::fs::write(&unit, text.replace(&exec, &format!("{bin} run"))).expect("write unit");
    let out = Command::new(sa)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze");
    let msgs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = msgs
        .lines()
        .filter(|l| l.contains("flowguard.service"))
        .collect();
    assert!(
        out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify ({}):\n{msgs}",
        out.status
    );
}
