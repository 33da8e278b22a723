//! The v9/IPFIX fast path against `netflow_parser` on the shared softflowd captures:
//! the same records and outcomes, datagram by datagram, and the fast path really used.

mod common;

use std::net::{IpAddr, SocketAddr};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides};
use pcap_file::pcap::PcapReader;

fn datagrams(file: &str) -> Vec<(SocketAddr, Vec<u8>)> {
    let f = std::fs::File::open(common::vectors().join(file)).unwrap();
    let mut r = PcapReader::new(f).unwrap();
    let mut out = Vec::new();
    while let Some(p) = r.next_packet() {
        let p = p.unwrap();
        let Ok(s) = SlicedPacket::from_ethernet(&p.data) else {
            continue;
        };
        let src: IpAddr = match &s.net {
            Some(NetSlice::Ipv4(v4)) => IpAddr::V4(v4.header().source_addr()),
            Some(NetSlice::Ipv6(v6)) => IpAddr::V6(v6.header().source_addr()),
            _ => continue,
        };
        if let Some(TransportSlice::Udp(u)) = &s.transport {
            out.push((SocketAddr::new(src, u.source_port()), u.payload().to_vec()));
        }
    }
    out
}

#[test]
fn fast_path_matches_the_crate_on_softflowd_captures() {
    for file in ["v-softflowd-nf9.pcap", "v-softflowd-nf10.pcap"] {
        let dg = datagrams(file);
        assert!(dg.len() > 10, "{file}");
        let mut slow = NetflowDecoder::new(SamplingOverrides::default());
        slow.set_fast_path(false);
        let mut quick = NetflowDecoder::new(SamplingOverrides::default());
        let (mut a, mut b): (Vec<FlowRecord>, Vec<FlowRecord>) = (Vec::new(), Vec::new());
        for (from, p) in &dg {
            let oa = slow.decode(*from, p, &mut a);
            let ob = quick.decode(*from, p, &mut b);
            assert_eq!(oa, ob, "{file}");
        }
        assert!(!a.is_empty(), "{file}");
        assert_eq!(a, b, "{file}");
        assert!(
            quick.fast_templates() > 0,
            "{file}: the fast path compiled a template"
        );
    }
}

/// The v5 fast path against the crate: the softflowd capture, then datagrams at and past
/// every edge the crate checks (record count 0, 1, 30, 31; one byte short or extra;
/// sampling mode bits; a header only), which must give the same records and outcomes.
#[test]
fn v5_fast_path_matches_the_crate() {
    let mut dg = datagrams("v-softflowd-nf5.pcap");
    assert!(dg.len() > 10);
    let from: SocketAddr = "192.0.2.7:2055".parse().unwrap();
    let v5 = |count: u16, records: usize, interval: u16| {
        let mut d = vec![0u8, 5];
        d.extend_from_slice(&count.to_be_bytes());
        d.extend_from_slice(&123_456u32.to_be_bytes()); // sys_up_time
        d.extend_from_slice(&[0; 14]); // unix secs, nsecs, sequence, engine type and id
        d.extend_from_slice(&interval.to_be_bytes());
        for i in 0..records {
            let mut r = [0u8; 48];
            r[0..4].copy_from_slice(&[198, 51, 100, i as u8]);
            r[4..8].copy_from_slice(&[100, 64, 1, i as u8]);
            r[16..20].copy_from_slice(&(10 + i as u32).to_be_bytes());
            r[20..24].copy_from_slice(&(1500 * (10 + i as u32)).to_be_bytes());
            r[24..28].copy_from_slice(&(120_000u32 - i as u32).to_be_bytes());
            r[28..32].copy_from_slice(&(123_000u32).to_be_bytes());
            // Every third record has zero ports (a fragment), the rest real ones.
            if i % 3 != 0 {
                r[32..34].copy_from_slice(&(40_000 + i as u16).to_be_bytes());
                r[34..36].copy_from_slice(&443u16.to_be_bytes());
            }
            r[37] = 0x02;
            r[38] = [6, 17, 1][i % 3];
            d.extend_from_slice(&r);
        }
        d
    };
    for (count, records, interval) in [
        (1, 1, 0),
        (30, 30, 0),
        (5, 5, 0x4000 | 100), // mode bits set, interval 100
        (5, 5, 1),
        (0, 0, 0),
        (31, 31, 0),
        (5, 4, 0),
        (5, 6, 0),
    ] {
        dg.push((from, v5(count, records, interval)));
    }
    let mut short = v5(3, 3, 0);
    short.pop();
    dg.push((from, short));
    let mut extra = v5(3, 3, 0);
    extra.push(0);
    dg.push((from, extra));
    dg.push((from, v5(3, 3, 0)[..20].to_vec()));

    let mut slow = NetflowDecoder::new(SamplingOverrides::default());
    slow.set_fast_path(false);
    let mut quick = NetflowDecoder::new(SamplingOverrides::default());
    let (mut a, mut b): (Vec<FlowRecord>, Vec<FlowRecord>) = (Vec::new(), Vec::new());
    for (i, (from, p)) in dg.iter().enumerate() {
        let oa = slow.decode(*from, p, &mut a);
        let ob = quick.decode(*from, p, &mut b);
        assert_eq!(oa, ob, "datagram {i}");
        assert_eq!(a, b, "datagram {i}");
    }
    assert!(a.len() > 100);
    assert!(a.iter().any(|r| r.fragment), "{:?}", &a[a.len() - 20..]);
    assert!(
        a.iter().any(|r| r.packets == 1000),
        "{:?}",
        &a[a.len() - 20..]
    );
    // Both exporters (softflowd's and ours) took the fast path, and are counted once
    // each although ours also sent odd datagrams through the crate.
    assert_eq!(quick.fast_v5_exporters(), 2);
    assert_eq!(slow.fast_v5_exporters(), 0);
    assert_eq!(quick.exporters(), slow.exporters());
}

#[path = "../crates/flowguard-loadgen/src/gen.rs"]
mod gen;

#[test]
fn sflow_fast_path_matches_the_crate() {
    use flowguard::decode::SflowDecoder;
    let mut dg = datagrams("v-pmacctd-sflow.pcap");
    assert!(dg.len() > 10);
    let from: SocketAddr = "127.0.0.1:6343".parse().unwrap();
    let flows: Vec<gen::Flow> = (0..12u32)
        .map(|i| gen::Flow {
            src: std::net::Ipv4Addr::from(0xC612_0000 + i),
            dst: std::net::Ipv4Addr::from(0x6440_0001 + i * 3),
            src_port: 1000 + i as u16,
            dst_port: 80,
            protocol: if i % 2 == 0 { 6 } else { 17 },
            tcp_flags: 0x02,
            packets: 1,
            bytes: 60 + i * 100,
        })
        .collect();
    dg.push((
        from,
        gen::sflow(&flows, std::net::Ipv4Addr::LOCALHOST, 1, 1000, 512),
    ));
    // A truncated datagram: both paths must agree on it too.
    let mut cut = gen::sflow(&flows, std::net::Ipv4Addr::LOCALHOST, 2, 1000, 512);
    cut.truncate(cut.len() - 30);
    dg.push((from, cut));
    let mut slow = SflowDecoder::new(SamplingOverrides::default());
    slow.set_fast_path(false);
    let mut quick = SflowDecoder::new(SamplingOverrides::default());
    let (mut a, mut b): (Vec<FlowRecord>, Vec<FlowRecord>) = (Vec::new(), Vec::new());
    for (from, p) in &dg {
        let oa = slow.decode(*from, p, &mut a);
        let ob = quick.decode(*from, p, &mut b);
        assert_eq!(oa, ob);
    }
    assert!(a.len() > 100);
    assert_eq!(a, b);
}
