//! End to end: a NetFlow collector with `allowed_exporters` drops datagrams from every
//! other source before parsing, counts them as `not_allowed`, and they never create (or
//! clobber) template state; the allowed exporter's records are decoded and counted.
//!
//! Sends from two loopback addresses (127.0.0.2 allowed, 127.0.0.3 not) to a service
//! started in-process with `Service::start_with` on paused tokio time (`Clock::tokio`):
//! the collectors publish their gauges as the service's clock moves, and the test moves
//! it, so a gauge that must not change is read after a publish that would have changed it.

use std::net::{IpAddr, UdpSocket};
use std::time::{Duration, Instant};

use flowguard::clock::Clock;
use flowguard::config::Config;
use flowguard::service::Service;

const ALLOWED: &str = "127.0.0.2";
const SPOOFED: &str = "127.0.0.3";
const LABEL: &str = "nf";
const TARGET: [u8; 4] = [127, 0, 0, 20];

/// The config, and the state directory it names (removed when dropped).
fn config() -> (Config, tempfile::TempDir) {
    let state = tempfile::tempdir().unwrap();
    let cfg = Config::from_toml_str(&format!(
        r#"
[api]
listen = "127.0.0.1:0"

[[collector]]
name = "{LABEL}"
protocol = "netflow"
listen = "127.0.0.1:0"
allowed_exporters = ["{ALLOWED}/32"]
# One thread: a publish of its gauges then covers every datagram it took before.
threads = 1

[networks]
protected = ["127.0.0.16/28"]

[aggregate]
host_totals = true

[[hostgroup]]
name = "default"
threshold_pps = 1000000000
threshold_mbps = 1000000

[state]
dir = "{}"
"#,
        state.path().display()
    ))
    .unwrap();
    (cfg, state)
}

fn v9(seq: u32, flowset: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 9, 0, 1];
    v.extend_from_slice(&100_000u32.to_be_bytes());
    v.extend_from_slice(&1_800_000_000u32.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(flowset);
    v
}

/// Template 256 with `fields` as (type, length).
fn template(fields: &[(u16, u16)]) -> Vec<u8> {
    template_id(256, fields)
}

fn template_id(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    body.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (t, l) in fields {
        body.extend_from_slice(&t.to_be_bytes());
        body.extend_from_slice(&l.to_be_bytes());
    }
    let mut v = vec![0, 0];
    v.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

const LAYOUT: [(u16, u16); 6] = [(8, 4), (12, 4), (11, 2), (4, 1), (2, 4), (1, 4)];

/// One record in `LAYOUT`: 198.51.100.1 → TARGET:53/udp, `pkts` packets of 100 bytes.
fn data(pkts: u32) -> Vec<u8> {
    let mut rec = vec![198, 51, 100, 1];
    rec.extend_from_slice(&TARGET);
    rec.extend_from_slice(&53u16.to_be_bytes());
    rec.push(17);
    rec.extend_from_slice(&pkts.to_be_bytes());
    rec.extend_from_slice(&(pkts * 100).to_be_bytes());
    while rec.len() % 4 != 0 {
        rec.push(0);
    }
    let mut v = vec![1, 0];
    v.extend_from_slice(&((rec.len() + 4) as u16).to_be_bytes());
    v.extend_from_slice(&rec);
    v
}

/// Waits (real time, at most `secs`) for the collector thread; the service's paused
/// clock moves on by `step` each round (zero: it stands still), as a publish of the
/// collector's gauges needs.
async fn wait_until(what: &str, secs: u64, step: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::advance(step).await;
        std::thread::sleep(Duration::from_millis(5));
    }
}

const STILL: Duration = Duration::ZERO;
const PUBLISH: Duration = Duration::from_millis(100);

#[tokio::test(start_paused = true)]
async fn only_allowed_exporters_reach_the_parser() {
    let (cfg, _state) = config();
    let svc = Service::start_with(cfg, Clock::tokio(1_800_000_000_000))
        .await
        .unwrap();
    let m = svc.metrics.clone();
    let to = svc.collector_addrs[0];
    let allowed = UdpSocket::bind((ALLOWED, 0)).unwrap();
    let spoofed = UdpSocket::bind((SPOOFED, 0)).unwrap();
    let dropped = || {
        m.datagrams_dropped
            .with_label_values(&[LABEL, "not_allowed"])
            .get()
    };
    let decoded = || m.flow_records.with_label_values(&[LABEL, "v9"]).get();
    let datagrams = || m.datagrams.with_label_values(&[LABEL, "v9"]).get();
    let exporters = || m.exporters_known.with_label_values(&[LABEL]).get();
    let templates = || m.templates_known.with_label_values(&[LABEL]).get();

    // The spoofer first: template + data.
    spoofed.send_to(&v9(1, &template(&LAYOUT)), to).unwrap();
    spoofed.send_to(&v9(2, &data(1000)), to).unwrap();
    wait_until("2 not_allowed drops", 5, STILL, || dropped() == 2).await;
    assert_eq!(
        (datagrams(), decoded()),
        (0, 0),
        "spoofed datagrams were parsed"
    );

    // The real exporter. Its template shows in the first publish after it, which covers
    // the spoofer's datagrams too: state they made would show in the same gauges.
    allowed.send_to(&v9(1, &template(&LAYOUT)), to).unwrap();
    allowed.send_to(&v9(2, &data(7)), to).unwrap();
    wait_until("the allowed exporter's record", 5, STILL, || decoded() == 1).await;
    wait_until("a publish with its template", 5, PUBLISH, || {
        templates() >= 1
    })
    .await;
    assert_eq!(
        (exporters(), templates()),
        (1, 1),
        "spoofed datagrams made state"
    );

    // The spoofer redefines template 256 with the fields swapped around, then sends data
    // that would land on another host if it were decoded with that layout.
    let evil = [(12, 4), (8, 4), (11, 2), (4, 1), (1, 4), (2, 4)];
    spoofed.send_to(&v9(3, &template(&evil)), to).unwrap();
    spoofed.send_to(&v9(4, &data(1_000_000)), to).unwrap();
    wait_until("4 not_allowed drops", 5, STILL, || dropped() == 4).await;
    // The real exporter's next record still decodes with its own layout.
    allowed.send_to(&v9(3, &data(5)), to).unwrap();
    wait_until("the second record", 5, STILL, || decoded() == 2).await;
    assert_eq!(
        datagrams(),
        3,
        "only the allowed exporter's datagrams were parsed"
    );
    let host = svc
        .pipeline
        .aggregate
        .host(IpAddr::from(TARGET), svc.clock.now_ms())
        .expect("target host tracked");
    let totals = || host.directions.iter().filter_map(|d| d.totals);
    let total: u64 = totals().map(|t| t.packets).sum();
    let bytes: u64 = totals().map(|t| t.bytes).sum();
    assert_eq!(
        (total, bytes),
        (12, 1200),
        "only the real records were counted"
    );
    // A second template of the real exporter: the publish that shows it also covers the
    // spoofer's redefinition, which must have added nothing.
    allowed
        .send_to(&v9(4, &template_id(257, &LAYOUT)), to)
        .unwrap();
    wait_until("a publish with template 257", 5, PUBLISH, || {
        templates() >= 2
    })
    .await;
    assert_eq!((exporters(), templates()), (1, 2));
    svc.shutdown().await;
}
