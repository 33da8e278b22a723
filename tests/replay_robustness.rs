//! `replay` on captures that real capture writers produce with faults: a record header
//! whose sub-second field is out of range (`ts_usec` = 1 000 000) is counted and the
//! replay goes on; a record cut short by the end of the file ends it, counted.

use flowguard::config::Config;
use flowguard::replay::{run, ReplayOptions, Summary};

const CONFIG: &str = r#"
[api]
listen = "127.0.0.1:0"
[networks]
protected = ["203.0.113.0/24"]
[[hostgroup]]
name = "default"
threshold_pps = 1000000000
threshold_mbps = 1000000000
"#;

/// One NetFlow v5 datagram with one record to `dst` of `packets` packets.
fn v5(dst: [u8; 4], packets: u32) -> Vec<u8> {
    let mut v = vec![0, 5, 0, 1];
    v.extend(100_000u32.to_be_bytes()); // sysUpTime
    v.extend(1_700_000_000u32.to_be_bytes());
    v.extend([0u8; 12]); // nsecs, sequence, engine, sampling
    let mut r = vec![0u8; 48];
    r[0..4].copy_from_slice(&[198, 51, 100, 1]);
    r[4..8].copy_from_slice(&dst);
    r[16..20].copy_from_slice(&packets.to_be_bytes());
    r[20..24].copy_from_slice(&(packets * 100).to_be_bytes());
    r[24..28].copy_from_slice(&99_000u32.to_be_bytes());
    r[28..32].copy_from_slice(&99_500u32.to_be_bytes());
    r[38] = 17;
    v.extend(r);
    v
}

/// A raw IPv4/UDP packet (pcap link type 101) carrying `payload` to port 2055.
fn ip_udp(payload: &[u8]) -> Vec<u8> {
    let total = (20 + 8 + payload.len()) as u16;
    let mut p = vec![0x45, 0];
    p.extend(total.to_be_bytes());
    p.extend([0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 9, 10, 0, 0, 1]);
    p.extend(40000u16.to_be_bytes());
    p.extend(2055u16.to_be_bytes());
    p.extend((8 + payload.len() as u16).to_be_bytes());
    p.extend([0, 0]);
    p.extend_from_slice(payload);
    p
}

fn pcap(records: &[(u32, u32, Vec<u8>)], cut_last_by: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend(0xa1b2_c3d4u32.to_le_bytes());
    f.extend(2u16.to_le_bytes());
    f.extend(4u16.to_le_bytes());
    f.extend([0u8; 8]);
    f.extend(65535u32.to_le_bytes());
    f.extend(101u32.to_le_bytes()); // LINKTYPE_RAW
    for (sec, usec, data) in records {
        f.extend(sec.to_le_bytes());
        f.extend(usec.to_le_bytes());
        f.extend((data.len() as u32).to_le_bytes());
        f.extend((data.len() as u32).to_le_bytes());
        f.extend(data);
    }
    f.truncate(f.len() - cut_last_by);
    f
}

fn replay(bytes: &[u8]) -> (Summary, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.pcap");
    std::fs::write(&path, bytes).unwrap();
    let cfg = Config::from_toml_str(CONFIG).unwrap();
    let mut out = Vec::new();
    let opts = ReplayOptions {
        totals: true,
        ..ReplayOptions::default()
    };
    let s = run(&cfg, &[path], &opts, &mut out).expect("the replay goes on");
    (s, String::from_utf8(out).unwrap())
}

fn incoming_packets(out: &str, ip: &str) -> Option<u64> {
    out.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["ip"] == ip && v["direction"] == "incoming")
        .and_then(|v| v["packets"].as_u64())
}

#[test]
fn a_bad_sub_second_field_is_counted_and_the_replay_goes_on() {
    let recs = vec![
        (1_700_000_000, 0, ip_udp(&v5([203, 0, 113, 1], 5))),
        (1_700_000_000, 1_000_000, ip_udp(&v5([203, 0, 113, 1], 7))),
        (1_700_000_002, 0, ip_udp(&v5([203, 0, 113, 2], 11))),
    ];
    let (s, out) = replay(&pcap(&recs, 0));
    assert_eq!((s.datagrams, s.bad_capture_records), (3, 1), "{}", s.line());
    assert_eq!(incoming_packets(&out, "203.0.113.1"), Some(12));
    assert_eq!(incoming_packets(&out, "203.0.113.2"), Some(11));
    assert!(s.line().contains("1 bad capture records"), "{}", s.line());
}

#[test]
fn a_record_cut_short_by_the_end_of_the_file_ends_it_counted() {
    let recs = vec![
        (1_700_000_000, 0, ip_udp(&v5([203, 0, 113, 1], 5))),
        (1_700_000_001, 0, ip_udp(&v5([203, 0, 113, 2], 7))),
    ];
    let (s, out) = replay(&pcap(&recs, 10));
    assert_eq!((s.datagrams, s.bad_capture_records), (1, 1), "{}", s.line());
    assert_eq!(incoming_packets(&out, "203.0.113.1"), Some(5));
    assert_eq!(incoming_packets(&out, "203.0.113.2"), None);
}
