//! Decoder golden tests on hand-built datagrams for the cases the real captures do not
//! cover: data before its template, one template id reused by two exporters with
//! different layouts, options-template sampling (v9 and IPFIX), IPv6 records, and sFlow
//! headers starting at Ethernet (plain and VLAN-tagged) and at IPv4.

use std::net::{IpAddr, SocketAddr};

use etherparse::PacketBuilder;
use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides, SflowDecoder};

fn be16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}
fn be32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// A v9 datagram: header + the given flowsets (each `(id, body)`, padded to 4 bytes).
fn v9(source_id: u32, sys_up: u32, unix: u32, flowsets: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut v = Vec::new();
    be16(&mut v, 9);
    be16(&mut v, flowsets.len() as u16);
    be32(&mut v, sys_up);
    be32(&mut v, unix);
    be32(&mut v, 1);
    be32(&mut v, source_id);
    for (id, body) in flowsets {
        let mut b = body.clone();
        while (b.len() + 4) % 4 != 0 {
            b.push(0);
        }
        be16(&mut v, *id);
        be16(&mut v, (b.len() + 4) as u16);
        v.extend_from_slice(&b);
    }
    v
}

/// Template body: id and (type, length) fields.
fn template(id: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut b = Vec::new();
    be16(&mut b, id);
    be16(&mut b, fields.len() as u16);
    for (t, l) in fields {
        be16(&mut b, *t);
        be16(&mut b, *l);
    }
    b
}

/// IPv4 record layout: src(8) dst(12) proto(4) pkts(2) bytes(1) first(22) last(21).
const V4_FIELDS: &[(u16, u16)] = &[(8, 4), (12, 4), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4)];

fn v4_record(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    pkts: u32,
    bytes: u32,
    first: u32,
    last: u32,
) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&src);
    b.extend_from_slice(&dst);
    b.push(proto);
    be32(&mut b, pkts);
    be32(&mut b, bytes);
    be32(&mut b, first);
    be32(&mut b, last);
    b
}

fn decode_nf(
    d: &mut NetflowDecoder,
    from: &str,
    dg: &[u8],
) -> (Vec<FlowRecord>, flowguard::decode::DecodeOutcome) {
    let mut out = Vec::new();
    let oc = d.decode(from.parse::<SocketAddr>().unwrap(), dg, &mut out);
    (out, oc)
}

#[test]
fn data_before_its_template_is_a_counted_miss_then_decodes() {
    let mut d = NetflowDecoder::new(SamplingOverrides::default());
    let data = v4_record(
        [198, 51, 100, 1],
        [192, 0, 2, 1],
        17,
        10,
        1000,
        9_000,
        9_500,
    );
    let (recs, oc) = decode_nf(
        &mut d,
        "192.0.2.250:2055",
        &v9(1, 10_000, 1_800_000_000, &[(256, data.clone())]),
    );
    assert!(recs.is_empty());
    assert_eq!(oc.template_misses, 1);
    let (recs, oc) = decode_nf(
        &mut d,
        "192.0.2.250:2055",
        &v9(
            1,
            10_000,
            1_800_000_000,
            &[(0, template(256, V4_FIELDS)), (256, data)],
        ),
    );
    assert_eq!(oc.template_misses, 0);
    assert_eq!(recs.len(), 1);
    let r = recs[0];
    assert_eq!(
        (r.dst, r.protocol, r.packets, r.bytes, r.flows),
        ("192.0.2.1".parse().unwrap(), 17, 10, 1000, 1)
    );
    // Ended 500 ms before export (sysUpTime 10 000 - last 9 500), lasted 500 ms.
    assert_eq!((r.end_age_ms, r.duration_ms), (500, 500));
}

#[test]
fn one_template_id_reused_by_two_exporters_keeps_each_layout() {
    let mut d = NetflowDecoder::new(SamplingOverrides::default());
    // Exporter A: template 300 = the IPv4 layout. Exporter B: template 300 = dst first,
    // then src, and 8-byte counters.
    let b_fields: &[(u16, u16)] = &[(12, 4), (8, 4), (4, 1), (2, 8), (1, 8)];
    let a = v9(7, 5000, 1_800_000_000, &[(0, template(300, V4_FIELDS))]);
    let b = v9(7, 5000, 1_800_000_000, &[(0, template(300, b_fields))]);
    decode_nf(&mut d, "198.51.100.1:9000", &a);
    decode_nf(&mut d, "198.51.100.2:9000", &b);
    let rec_a = v4_record([203, 0, 113, 5], [192, 0, 2, 10], 6, 3, 300, 4000, 4900);
    let mut rec_b = Vec::new();
    rec_b.extend_from_slice(&[192, 0, 2, 20]);
    rec_b.extend_from_slice(&[203, 0, 113, 6]);
    rec_b.push(17);
    rec_b.extend_from_slice(&7u64.to_be_bytes());
    rec_b.extend_from_slice(&700u64.to_be_bytes());
    let (ra, _) = decode_nf(
        &mut d,
        "198.51.100.1:9000",
        &v9(7, 5000, 1_800_000_000, &[(300, rec_a)]),
    );
    let (rb, _) = decode_nf(
        &mut d,
        "198.51.100.2:9000",
        &v9(7, 5000, 1_800_000_000, &[(300, rec_b)]),
    );
    assert_eq!(
        (ra[0].dst, ra[0].packets, ra[0].protocol),
        ("192.0.2.10".parse().unwrap(), 3, 6)
    );
    assert_eq!(
        (
            rb[0].dst,
            rb[0].src,
            rb[0].packets,
            rb[0].bytes,
            rb[0].protocol
        ),
        (
            "192.0.2.20".parse().unwrap(),
            "203.0.113.6".parse().unwrap(),
            7,
            700,
            17
        )
    );
}

#[test]
fn v9_options_sampling_is_learned_per_exporter_and_applied() {
    let mut d = NetflowDecoder::new(SamplingOverrides::default());
    // Options template 257: scope System(1) 4 bytes; options SAMPLING_INTERVAL(34) 4,
    // SAMPLING_ALGORITHM(35) 1.
    let mut ot = Vec::new();
    be16(&mut ot, 257);
    be16(&mut ot, 4); // scope length in bytes
    be16(&mut ot, 8); // options length in bytes
    be16(&mut ot, 1);
    be16(&mut ot, 4);
    be16(&mut ot, 34);
    be16(&mut ot, 4);
    be16(&mut ot, 35);
    be16(&mut ot, 1);
    let mut od = Vec::new();
    be32(&mut od, 0);
    be32(&mut od, 1000);
    od.push(2);
    let from = "192.0.2.251:2055";
    decode_nf(
        &mut d,
        from,
        &v9(
            3,
            1000,
            1_800_000_000,
            &[(1, ot), (0, template(256, V4_FIELDS))],
        ),
    );
    decode_nf(&mut d, from, &v9(3, 1000, 1_800_000_000, &[(257, od)]));
    let data = v4_record([198, 51, 100, 1], [192, 0, 2, 1], 6, 2, 120, 900, 1000);
    let (recs, oc) = decode_nf(
        &mut d,
        from,
        &v9(3, 1000, 1_800_000_000, &[(256, data.clone())]),
    );
    assert_eq!(oc.sampling_rate, Some(1000));
    assert_eq!((recs[0].packets, recs[0].bytes), (2000, 120_000));
    assert_eq!(d.sampling_rate_of("192.0.2.251".parse().unwrap()), 1000);
    // Another exporter sending the same data unsampled is not affected.
    let other = "192.0.2.252:2055";
    decode_nf(
        &mut d,
        other,
        &v9(3, 1000, 1_800_000_000, &[(0, template(256, V4_FIELDS))]),
    );
    let (recs, _) = decode_nf(&mut d, other, &v9(3, 1000, 1_800_000_000, &[(256, data)]));
    assert_eq!(recs[0].packets, 2);
    // A config override wins over what the exporter says.
    let mut ov = SamplingOverrides::default();
    ov.per_exporter.insert("192.0.2.251".parse().unwrap(), 10);
    let mut d2 = NetflowDecoder::new(ov);
    let data = v4_record([198, 51, 100, 1], [192, 0, 2, 1], 6, 2, 120, 900, 1000);
    decode_nf(
        &mut d2,
        from,
        &v9(3, 1000, 1_800_000_000, &[(0, template(256, V4_FIELDS))]),
    );
    let (recs, _) = decode_nf(&mut d2, from, &v9(3, 1000, 1_800_000_000, &[(256, data)]));
    assert_eq!(recs[0].packets, 20);
}

/// An IPFIX message: header + sets `(id, body)`.
fn ipfix(domain: u32, export: u32, sets: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (id, b) in sets {
        be16(&mut body, *id);
        be16(&mut body, (b.len() + 4) as u16);
        body.extend_from_slice(b);
    }
    let mut v = Vec::new();
    be16(&mut v, 10);
    be16(&mut v, (body.len() + 16) as u16);
    be32(&mut v, export);
    be32(&mut v, 1);
    be32(&mut v, domain);
    v.extend_from_slice(&body);
    v
}

#[test]
fn ipfix_ipv6_records_with_absolute_times_and_packet_interval_sampling() {
    let mut d = NetflowDecoder::new(SamplingOverrides::default());
    let from = "[2001:db8::fe]:4739";
    // Template 400: src6(27) dst6(28) proto(4) pkts(2, 8) bytes(1, 8)
    // flowStartMilliseconds(152, 8) flowEndMilliseconds(153, 8).
    let fields: &[(u16, u16)] = &[
        (27, 16),
        (28, 16),
        (4, 1),
        (2, 8),
        (1, 8),
        (152, 8),
        (153, 8),
    ];
    // Options template 401 (scope: observationDomainId(149)): samplingPacketInterval(305)=1,
    // samplingPacketSpace(306)=99 → 1 in 100.
    let mut ot = Vec::new();
    be16(&mut ot, 401);
    be16(&mut ot, 3);
    be16(&mut ot, 1);
    for (t, l) in [(149u16, 4u16), (305, 4), (306, 4)] {
        be16(&mut ot, t);
        be16(&mut ot, l);
    }
    let mut od = Vec::new();
    be32(&mut od, 5);
    be32(&mut od, 1);
    be32(&mut od, 99);
    let export = 1_800_000_010u32;
    let mut rec = Vec::new();
    rec.extend_from_slice(
        &"2001:db8:1::9"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    rec.extend_from_slice(
        &"2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    rec.push(58);
    rec.extend_from_slice(&4u64.to_be_bytes());
    rec.extend_from_slice(&400u64.to_be_bytes());
    rec.extend_from_slice(&(1_800_000_004_000u64).to_be_bytes());
    rec.extend_from_slice(&(1_800_000_008_000u64).to_be_bytes());
    let (recs, oc) = decode_nf(
        &mut d,
        from,
        &ipfix(
            5,
            export,
            &[(2, template(400, fields)), (3, ot), (401, od), (400, rec)],
        ),
    );
    assert_eq!(oc.error, None);
    assert_eq!(recs.len(), 1);
    let r = recs[0];
    assert_eq!(r.dst, "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!((r.protocol, r.packets, r.bytes), (58, 400, 40_000));
    assert_eq!((r.end_age_ms, r.duration_ms), (2000, 4000));
}

/// An sFlow v5 datagram with one flow sample holding one sampled_header record.
fn sflow(header_protocol: u32, header: &[u8], rate: u32, frame_length: u32) -> Vec<u8> {
    let mut rec = Vec::new();
    be32(&mut rec, header_protocol);
    be32(&mut rec, frame_length);
    be32(&mut rec, 0);
    be32(&mut rec, header.len() as u32);
    rec.extend_from_slice(header);
    while rec.len() % 4 != 0 {
        rec.push(0);
    }
    let mut sample = Vec::new();
    be32(&mut sample, 1); // sequence
    be32(&mut sample, 3); // source id
    be32(&mut sample, rate);
    be32(&mut sample, rate * 10); // pool
    be32(&mut sample, 0); // drops
    be32(&mut sample, 1); // input
    be32(&mut sample, 2); // output
    be32(&mut sample, 1); // records
    be32(&mut sample, 1); // format: sampled header
    be32(&mut sample, rec.len() as u32);
    sample.extend_from_slice(&rec);
    let mut v = Vec::new();
    be32(&mut v, 5);
    be32(&mut v, 1); // agent address type IPv4
    v.extend_from_slice(&[192, 0, 2, 254]);
    be32(&mut v, 0); // sub agent
    be32(&mut v, 1); // sequence
    be32(&mut v, 1000); // uptime
    be32(&mut v, 1); // samples
    be32(&mut v, 1); // sample type: flow sample
    be32(&mut v, sample.len() as u32);
    v.extend_from_slice(&sample);
    v
}

#[test]
fn sflow_headers_from_ethernet_vlan_and_ipv4() {
    let mut eth = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4([203, 0, 113, 9], [192, 0, 2, 1], 64)
        .tcp(40000, 443, 1, 1024)
        .syn()
        .write(&mut eth, &[])
        .unwrap();
    let mut vlan = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .single_vlan(42u16.try_into().unwrap())
        .ipv4([203, 0, 113, 9], [192, 0, 2, 2], 64)
        .udp(5000, 53)
        .write(&mut vlan, &[0u8; 60])
        .unwrap();
    let mut ip = Vec::new();
    PacketBuilder::ipv4([203, 0, 113, 9], [192, 0, 2, 3], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut ip, &[0u8; 20])
        .unwrap();
    let mut d = SflowDecoder::new(SamplingOverrides::default());
    let from: SocketAddr = "192.0.2.254:6343".parse().unwrap();
    let cases = [
        (1u32, &eth, "192.0.2.1", 6u8, 40u64),
        (1, &vlan, "192.0.2.2", 17, 88),
        (11, &ip, "192.0.2.3", 1, 48),
    ];
    for (proto, bytes, dst, ip_proto, ip_len) in cases {
        let mut out = Vec::new();
        let oc = d.decode(
            from,
            &sflow(proto, bytes, 512, bytes.len() as u32 + 4),
            &mut out,
        );
        assert_eq!(oc.error, None, "{dst}");
        assert_eq!(out.len(), 1, "{dst}");
        let r = out[0];
        assert_eq!(
            (r.dst, r.protocol),
            (dst.parse::<IpAddr>().unwrap(), ip_proto),
            "{dst}"
        );
        assert_eq!(
            (r.packets, r.bytes, r.flows),
            (512, ip_len * 512, 0),
            "{dst}: scaled by the sample's rate"
        );
        if ip_proto == 6 {
            assert!(r.is_syn());
            assert_eq!(r.dst_port, 443);
        }
    }
    assert_eq!(d.sampling_rate_of("192.0.2.254".parse().unwrap()), 512);
}

#[test]
fn truncated_and_garbage_datagrams_are_errors_not_panics() {
    let mut nf = NetflowDecoder::new(SamplingOverrides::default());
    let mut sf = SflowDecoder::new(SamplingOverrides::default());
    let from: SocketAddr = "192.0.2.9:1".parse().unwrap();
    let good = v9(1, 1, 1, &[(0, template(256, V4_FIELDS))]);
    for cut in 0..good.len() {
        let mut out = Vec::new();
        let _ = nf.decode(from, &good[..cut], &mut out);
    }
    let s = sflow(11, &[0x45; 40], 10, 40);
    for cut in 0..s.len() {
        let mut out = Vec::new();
        let oc = sf.decode(from, &s[..cut], &mut out);
        assert!(cut == s.len() || oc.error.is_some() || out.is_empty());
    }
    let mut out = Vec::new();
    assert!(nf
        .decode(from, b"\x00\x07garbage", &mut out)
        .error
        .is_some());
}
