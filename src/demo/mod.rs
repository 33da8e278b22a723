//! `flowguard demo`: the whole mission on loopback in one command.
//!
//! Starts `mitigator-sim` (the binary next to this one) and a flowguard service on
//! 127.0.0.1, replays a bundled capture of real softflowd NetFlow v9 exports (an ICMP
//! flood, a UDP flood and a fragmented UDP flood against 127.0.0.21–23, cut from the
//! shared test vectors) to flowguard's collector at the capture's own pace, and prints each
//! attack and each MITIGATOR call as they happen, then the end. Everything stays on
//! loopback and stops by itself.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Cursor};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use flowguard::config::Config;
use flowguard::service::Service;

/// Real softflowd NetFlow v9 export datagrams, 8 s of them.
const CAPTURE: &[u8] = include_bytes!("floods-nf9.pcap");

/// Datagrams of the bundled capture: (seconds since the first, UDP payload).
fn datagrams() -> anyhow::Result<Vec<(f64, Vec<u8>)>> {
    let mut r = pcap_file::pcap::PcapReader::new(Cursor::new(CAPTURE))?;
    let mut out = Vec::new();
    let mut t0 = None;
    while let Some(p) = r.next_packet() {
        let p = p?;
        let t = p.timestamp.as_secs_f64();
        let t0 = *t0.get_or_insert(t);
        let payload = match etherparse::SlicedPacket::from_ethernet(&p.data) {
            Ok(s) => match s.transport {
                Some(etherparse::TransportSlice::Udp(u)) => Some(u.payload().to_vec()),
                _ => None,
            },
            Err(_) => None,
        };
        if let Some(payload) = payload {
            out.push((t - t0, payload));
        }
    }
    Ok(out)
}

struct SimProcess(std::process::Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_sim() -> anyhow::Result<(SimProcess, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let sim = exe.with_file_name("mitigator-sim");
    if !sim.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release` (it ships with flowguard)",
            sim.display()
        );
    }
    let mut child = Command::new(&sim)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--username",
            "demo",
            "--password",
            "demo",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", sim.display()))?;
    let out = child.stdout.take().context("simulator stdout")?;
    let guard = SimProcess(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(10))
        .context("mitigator-sim did not start")?
        .parse()?;
    Ok((guard, addr))
}

fn demo_config(sim: SocketAddr, state: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::from_toml_str(&format!(
        r#"
[api]
listen = "127.0.0.1:0"
[[collector]]
name = "demo"
protocol = "netflow"
listen = "127.0.0.1:0"
[networks]
protected = ["127.0.0.16/28"]
[[hostgroup]]
name = "default"
threshold_pps = 3000
ban_time_seconds = 5
[mitigator]
url = "http://{sim}"
username = "demo"
password = "demo"
default_policy = 1
[state]
dir = "{}"
"#,
        state.display()
    ))?)
}

pub fn run(speed: f64) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(speed.clamp(0.1, 100.0)))
}

async fn run_async(speed: f64) -> anyhow::Result<()> {
    let (_sim, sim_addr) = start_sim()?;
    let state = std::env::temp_dir().join(format!("flowguard-demo-{}", std::process::id()));
    std::fs::create_dir_all(&state)?;
    let svc = Service::start(demo_config(sim_addr, &state)?).await?;
    let collector = svc.collector_addrs[0];
    println!("flowguard demo");
    println!("  MITIGATOR simulator  http://{sim_addr}");
    println!(
        "  flowguard API        http://{}  (try /api/v1/attacks while it runs)",
        svc.api_addr
    );
    println!("  replaying real softflowd NetFlow v9 exports of three floods to {collector} at {speed}x\n");

    let dgs = datagrams()?;
    let total = dgs.len();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        let t0 = Instant::now();
        for (t, p) in dgs {
            let due = Duration::from_secs_f64(t / speed);
            if let Some(left) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(left);
            }
            sock.send_to(&p, collector)?;
        }
        Ok(())
    });

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()?;
    let started = Instant::now();
    let mut seen_calls = 0usize;
    let mut printed: HashSet<(String, bool)> = HashSet::new();
    let mut done_at: Option<Instant> = None;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stamp = format!("[{:>5.1}s]", started.elapsed().as_secs_f64());
        for a in svc.pipeline.detection.attacks().iter().rev() {
            let ended = a.end_ms.is_some();
            if printed.insert((a.id.clone(), false)) {
                println!(
                    "{stamp} ATTACK  {} {} {} ({}) {} pps, top source {}",
                    a.ip,
                    a.direction,
                    a.attack_type,
                    a.protocol,
                    a.initial.pps,
                    a.top_sources
                        .first()
                        .map(|t| t.ip.to_string())
                        .unwrap_or_else(|| "-".into())
                );
            }
            if ended && printed.insert((a.id.clone(), true)) {
                println!(
                    "{stamp} ENDED   {} {} (peak {} pps)",
                    a.ip, a.attack_type, a.peak_pps
                );
            }
        }
        if let Ok(r) = http.get(format!("http://{sim_addr}/sim/log")).send().await {
            if let Ok(Value::Array(log)) = r.json::<Value>().await {
                for e in log.iter().skip(seen_calls) {
                    let path = e["path"]
                        .as_str()
                        .unwrap_or("")
                        .trim_start_matches("/api/v4/");
                    let q = e["query"]
                        .as_str()
                        .filter(|q| !q.is_empty())
                        .map(|q| format!("?{q}"))
                        .unwrap_or_default();
                    // The login body holds the password: never print it.
                    let body = e["body"]
                        .as_str()
                        .filter(|b| !b.is_empty() && !path.starts_with("users/session"))
                        .map(|b| format!(" {b}"))
                        .unwrap_or_default();
                    println!(
                        "{stamp} MITIGATOR {} {path}{q}{body} -> {}",
                        e["method"].as_str().unwrap_or(""),
                        e["status"]
                    );
                }
                seen_calls = log.len();
            }
        }
        let replay_done = sender.is_finished();
        if replay_done
            && done_at.is_none()
            && svc.pipeline.detection.active_attacks() == 0
            && !printed.is_empty()
        {
            done_at = Some(Instant::now());
        }
        // Two seconds more for the last switch-offs to show, or give up after 90 s.
        if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(2))
            || started.elapsed() > Duration::from_secs(90)
        {
            break;
        }
    }
    match sender.join() {
        Ok(r) => r?,
        Err(_) => bail!("sender thread panicked"),
    }
    // Ask the simulator what is still on rather than assuming.
    let on: Vec<String> = match http
        .get(format!("http://{sim_addr}/sim/state"))
        .send()
        .await
    {
        Ok(r) => switched_on(&r.json::<Value>().await.unwrap_or(Value::Null)["switches"]),
        Err(_) => vec!["(simulator state unavailable)".into()],
    };
    println!(
        "\ndone: {total} datagrams replayed, {} attacks, {seen_calls} MITIGATOR calls; {}",
        printed.iter().filter(|(_, e)| !e).count(),
        if on.is_empty() {
            "every switch is off again".to_string()
        } else {
            format!("still on: {}", on.join(", "))
        }
    );
    svc.shutdown().await;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

/// `policy/switch` names that are on in a `/sim/state` answer (any nesting of objects
/// whose leaves are switch values).
fn switched_on(state: &Value) -> Vec<String> {
    fn walk(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    walk(x, path, out);
                    path.pop();
                }
            }
            Value::Number(n) if n.as_u64().unwrap_or(0) != 0 => out.push(path.join("/")),
            Value::Bool(true) => out.push(path.join("/")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(state, &mut Vec::new(), &mut out);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bundled_capture_holds_netflow_v9_datagrams() {
        let d = super::datagrams().unwrap();
        assert!(d.len() > 1000);
        assert!(d.iter().all(|(_, p)| p.get(..2) == Some(&[0, 9][..])));
        assert!(
            d.last().unwrap().0 > 5.0,
            "several seconds of capture to pace"
        );
    }
}
