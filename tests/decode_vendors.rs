//! One hand-built datagram per defect class seen on real vendor exports, each built
//! from the RFC (3954, 7011, 5477, 5103) or the vendor's documented template, each
//! decoded by both paths (the byte-level fast path and netflow_parser's records) where
//! the crate can read it, which must agree.

use std::net::{IpAddr, SocketAddr};

use flowguard::decode::{
    DecodeErrorKind, DecodeOutcome, FlowRecord, NetflowDecoder, SamplingOverrides, SkipReason,
};

const EXPORTER: &str = "192.0.2.9:2055";

fn from() -> SocketAddr {
    EXPORTER.parse().unwrap()
}

// ---- datagram builders ------------------------------------------------------------

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A template record: id, then (element, length) pairs; an element above 0x7FFF is an
/// IPFIX enterprise element whose PEN follows.
fn template(id: u16, fields: &[(u16, u16, Option<u32>)]) -> Vec<u8> {
    let mut t = id.to_be_bytes().to_vec();
    t.extend_from_slice(&(fields.len() as u16).to_be_bytes());
    for (e, l, pen) in fields {
        let e = if pen.is_some() { e | 0x8000 } else { *e };
        t.extend_from_slice(&e.to_be_bytes());
        t.extend_from_slice(&l.to_be_bytes());
        if let Some(p) = pen {
            t.extend_from_slice(&p.to_be_bytes());
        }
    }
    t
}

fn plain(fields: &[(u16, u16)]) -> Vec<(u16, u16, Option<u32>)> {
    fields.iter().map(|(e, l)| (*e, *l, None)).collect()
}

/// v9 options template (RFC 3954 §6.1): scope System (1) of 4 bytes, then options.
fn v9_options_template(id: u16, options: &[(u16, u16)]) -> Vec<u8> {
    let mut t = id.to_be_bytes().to_vec();
    t.extend_from_slice(&4u16.to_be_bytes()); // scope length
    t.extend_from_slice(&((options.len() * 4) as u16).to_be_bytes());
    t.extend_from_slice(&[0, 1, 0, 4]);
    for (e, l) in options {
        t.extend_from_slice(&e.to_be_bytes());
        t.extend_from_slice(&l.to_be_bytes());
    }
    t
}

/// IPFIX options template (RFC 7011 §3.4.2.2): scope observationDomainId (149), then
/// options.
fn ipfix_options_template(id: u16, options: &[(u16, u16)]) -> Vec<u8> {
    let mut t = id.to_be_bytes().to_vec();
    t.extend_from_slice(&((options.len() + 1) as u16).to_be_bytes());
    t.extend_from_slice(&1u16.to_be_bytes());
    t.extend_from_slice(&[0, 149, 0, 4]);
    for (e, l) in options {
        t.extend_from_slice(&e.to_be_bytes());
        t.extend_from_slice(&l.to_be_bytes());
    }
    t
}

fn v9(sets: &[Vec<u8>]) -> Vec<u8> {
    let body = sets.concat();
    let mut v = vec![0, 9];
    v.extend_from_slice(&(sets.len() as u16).to_be_bytes());
    v.extend_from_slice(&100_000u32.to_be_bytes()); // sysUpTime
    v.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes()); // sequence
    v.extend_from_slice(&7u32.to_be_bytes()); // source id
    v.extend_from_slice(&body);
    v
}

fn ipfix(sets: &[Vec<u8>]) -> Vec<u8> {
    let body = sets.concat();
    let mut v = vec![0, 10];
    v.extend_from_slice(&((16 + body.len()) as u16).to_be_bytes());
    v.extend_from_slice(&1_700_000_000u32.to_be_bytes());
    v.extend_from_slice(&1u32.to_be_bytes());
    v.extend_from_slice(&7u32.to_be_bytes()); // observation domain
    v.extend_from_slice(&body);
    v
}

fn v4(a: [u8; 4]) -> Vec<u8> {
    a.to_vec()
}

fn u32b(n: u32) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

fn u64b(n: u64) -> Vec<u8> {
    n.to_be_bytes().to_vec()
}

// ---- decoding ---------------------------------------------------------------------

struct Run {
    records: Vec<FlowRecord>,
    outcomes: Vec<DecodeOutcome>,
}

fn decode_with(fast: bool, reverse: bool, ov: SamplingOverrides, dgs: &[Vec<u8>]) -> Run {
    let mut d = NetflowDecoder::new(ov);
    d.set_fast_path(fast);
    d.set_biflow_reverse(reverse);
    let mut records = Vec::new();
    let outcomes = dgs
        .iter()
        .map(|g| d.decode(from(), g, &mut records))
        .collect();
    Run { records, outcomes }
}

/// Decodes with the fast path (twice: the second pass sends the data-only datagrams
/// again, which then take the byte-level path end to end) and, where `differential`,
/// checks the crate path gives the same records.
fn decode(dgs: &[Vec<u8>], differential: bool) -> Run {
    decode_opts(dgs, differential, false, SamplingOverrides::default())
}

fn decode_opts(dgs: &[Vec<u8>], differential: bool, reverse: bool, ov: SamplingOverrides) -> Run {
    let quick = decode_with(true, reverse, ov.clone(), dgs);
    if differential {
        let slow = decode_with(false, reverse, ov, dgs);
        assert_eq!(
            quick.records, slow.records,
            "fast path and crate path differ"
        );
        let errs = |r: &Run| r.outcomes.iter().map(|o| o.error).collect::<Vec<_>>();
        assert_eq!(errs(&quick), errs(&slow));
    }
    for o in &quick.outcomes {
        assert_eq!(o.error, None, "{o:?}");
    }
    quick
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dsts(r: &Run) -> Vec<(IpAddr, u64, u64)> {
    r.records
        .iter()
        .map(|r| (r.dst, r.packets, r.bytes))
        .collect()
}

// ---- 1. both address families in one template -------------------------------------

/// An IOS XR MPLS/SRv6-aware layout: IPv6 fields first, IPv4 after, ipVersion last.
fn xr_template() -> Vec<u8> {
    template(
        260,
        &plain(&[
            (27, 16),
            (28, 16),
            (8, 4),
            (12, 4),
            (2, 4),
            (1, 4),
            (4, 1),
            (60, 1),
        ]),
    )
}

fn xr_record(src6: [u8; 16], dst6: [u8; 16], src4: [u8; 4], dst4: [u8; 4], ver: u8) -> Vec<u8> {
    let mut r = src6.to_vec();
    r.extend_from_slice(&dst6);
    r.extend(v4(src4));
    r.extend(v4(dst4));
    r.extend(u32b(10));
    r.extend(u32b(1000));
    r.push(17);
    r.push(ver);
    r
}

#[test]
fn both_families_use_the_one_that_is_set() {
    let zero = [0u8; 16];
    let mut six = [0u8; 16];
    six[0] = 0x20;
    six[1] = 0x01;
    six[2] = 0x0d;
    six[3] = 0xb8;
    six[15] = 1;
    let mut six_src = six;
    six_src[15] = 2;
    let mut data = xr_record(zero, zero, [198, 51, 100, 7], [203, 0, 113, 5], 4);
    data.extend(xr_record(six_src, six, [0; 4], [0; 4], 6));
    // Both set (IPv4 over SRv6): ipVersion says 4 → the IPv4 customer address.
    data.extend(xr_record(
        six_src,
        six,
        [198, 51, 100, 7],
        [203, 0, 113, 6],
        4,
    ));
    // Both set and ipVersion 6 → IPv6.
    data.extend(xr_record(
        six_src,
        six,
        [198, 51, 100, 7],
        [203, 0, 113, 6],
        6,
    ));
    for dg in [
        v9(&[set(0, &xr_template()), set(260, &data)]),
        ipfix(&[set(2, &xr_template()), set(260, &data)]),
    ] {
        let r = decode(&[dg.clone(), dg], true);
        let want = [
            (ip("203.0.113.5"), 10, 1000),
            (ip("2001:db8::1"), 10, 1000),
            (ip("203.0.113.6"), 10, 1000),
            (ip("2001:db8::1"), 10, 1000),
        ];
        assert_eq!(dsts(&r)[..4], want[..]);
        assert_eq!(dsts(&r)[4..], want[..], "the fast path's second datagram");
        assert!(r.records.iter().all(|r| !r.dst.is_unspecified()));
    }
}

#[test]
fn both_set_without_ip_version_is_ipv4_and_next_hops_are_never_hosts() {
    // 15 = ipNextHopIPv4Address, 18 = bgpNextHopIPv4Address, 225/226 = post-NAT.
    let t = template(
        261,
        &plain(&[
            (28, 16),
            (12, 4),
            (8, 4),
            (15, 4),
            (18, 4),
            (225, 4),
            (226, 4),
            (2, 4),
        ]),
    );
    let mut six = [0u8; 16];
    six[0] = 0xfc;
    six[15] = 9;
    let mut d = six.to_vec();
    d.extend(v4([203, 0, 113, 9]));
    d.extend(v4([198, 51, 100, 1]));
    d.extend(v4([10, 0, 0, 1]));
    d.extend(v4([10, 0, 0, 2]));
    d.extend(v4([100, 64, 0, 1]));
    d.extend(v4([100, 64, 0, 2]));
    d.extend(u32b(3));
    let r = decode(&[ipfix(&[set(2, &t), set(261, &d)])], true);
    assert_eq!(r.records.len(), 1);
    assert_eq!(
        (r.records[0].src, r.records[0].dst),
        (ip("198.51.100.1"), ip("203.0.113.9"))
    );
}

// ---- 2. sampling per sampler ------------------------------------------------------

/// Cisco v9 sampler options (FLOW_SAMPLER_ID 48, FLOW_SAMPLER_MODE 49,
/// FLOW_SAMPLER_RANDOM_INTERVAL 50) for two samplers, and records naming each.
#[test]
fn two_samplers_on_one_exporter_keep_their_own_rates() {
    let opt = v9_options_template(300, &[(48, 2), (49, 1), (50, 4)]);
    let mut od = Vec::new();
    for (id, rate) in [(1u16, 100u32), (2, 1000)] {
        od.extend(u32b(0)); // scope: system
        od.extend(id.to_be_bytes());
        od.push(2); // random
        od.extend(u32b(rate));
    }
    let t = template(301, &plain(&[(8, 4), (12, 4), (2, 4), (1, 4), (48, 2)]));
    let rec = |dst: u8, sampler: u16| {
        let mut r = v4([198, 51, 100, 1]);
        r.extend(v4([203, 0, 113, dst]));
        r.extend(u32b(2));
        r.extend(u32b(200));
        r.extend(sampler.to_be_bytes());
        r
    };
    let mut data = rec(1, 1);
    data.extend(rec(2, 2));
    data.extend(rec(3, 3)); // a sampler whose options have not come: no rate of others
    let dg = v9(&[set(1, &opt), set(0, &t), set(300, &od), set(301, &data)]);
    let again = v9(&[set(301, &data)]);
    let r = decode(&[dg, again], true);
    let want = [(1, 200, 20_000), (2, 2000, 200_000), (3, 2, 200)];
    for (i, rec) in r.records.iter().enumerate() {
        let (d, p, b) = want[i % 3];
        assert_eq!(
            (rec.dst, rec.packets, rec.bytes),
            (IpAddr::from([203, 0, 113, d]), p, b),
            "{i}"
        );
    }
    assert_eq!(r.outcomes[0].skips.get(SkipReason::Options), 2);
}

#[test]
fn a_record_without_sampler_id_takes_the_single_announced_rate_only() {
    let opt = v9_options_template(300, &[(48, 1), (50, 4)]);
    let t = template(301, &plain(&[(8, 4), (12, 4), (2, 4), (1, 4)]));
    let mut data = v4([198, 51, 100, 1]);
    data.extend(v4([203, 0, 113, 1]));
    data.extend(u32b(1));
    data.extend(u32b(100));
    let od = |id: u8, rate: u32| {
        let mut v = u32b(0);
        v.push(id);
        v.extend(u32b(rate));
        v
    };
    // One sampler announced: records that name none are counted at its rate.
    let one = v9(&[
        set(1, &opt),
        set(0, &t),
        set(300, &od(1, 512)),
        set(301, &data),
    ]);
    let r = decode(&[one], true);
    assert_eq!(r.records[0].packets, 512);
    // Two samplers with different rates: a record naming neither is not guessed; it
    // takes the configured fallback.
    let mut two = od(1, 512);
    two.extend(od(2, 64));
    let dg = v9(&[set(1, &opt), set(0, &t), set(300, &two), set(301, &data)]);
    let ov = SamplingOverrides {
        fallback: Some(10),
        ..SamplingOverrides::default()
    };
    let r = decode_opts(&[dg], true, false, ov);
    assert_eq!(r.records[0].packets, 10);
}

// ---- 3. every RFC 5477 / Cisco sampling form --------------------------------------

fn sampled(options: &[(u16, u16)], values: &[u8]) -> u64 {
    let opt = ipfix_options_template(400, options);
    let mut od = u32b(7); // observationDomainId
    od.extend_from_slice(values);
    let t = template(401, &plain(&[(8, 4), (12, 4), (2, 4), (1, 4), (302, 4)]));
    let mut d = v4([198, 51, 100, 1]);
    d.extend(v4([203, 0, 113, 1]));
    d.extend(u32b(1));
    d.extend(u32b(64));
    d.extend(u32b(5)); // selectorId 5
    let dg = ipfix(&[set(3, &opt), set(2, &t), set(400, &od), set(401, &d)]);
    let again = ipfix(&[set(401, &d)]);
    let r = decode(&[dg, again], true);
    assert_eq!(r.records[0].packets, r.records[1].packets);
    r.records[0].packets
}

#[test]
fn every_sampling_form_reads_as_one_in_n() {
    // Random n-out-of-N: selectorId 302, samplingSize 309 = 1, samplingPopulation 310 =
    // 256 → 1 in 256.
    let mut v = u32b(5);
    v.extend(u32b(1));
    v.extend(u32b(256));
    assert_eq!(sampled(&[(302, 4), (309, 4), (310, 4)], &v), 256);
    // Systematic count-based: select 1 (305), skip 99 (306) → 1 in 100.
    let mut v = u32b(5);
    v.extend(u32b(1));
    v.extend(u32b(99));
    assert_eq!(sampled(&[(302, 4), (305, 4), (306, 4)], &v), 100);
    // Uniform probabilistic: samplingProbability 311 = 0.001 → 1 in 1000.
    let mut v = u32b(5);
    v.extend(0.001f64.to_be_bytes());
    assert_eq!(sampled(&[(302, 4), (311, 8)], &v), 1000);
    // samplerRandomInterval 50 and samplingInterval 34.
    let mut v = u32b(5);
    v.extend(u32b(2048));
    assert_eq!(sampled(&[(302, 4), (50, 4)], &v), 2048);
    let mut v = u32b(5);
    v.extend(u32b(4096));
    assert_eq!(sampled(&[(302, 4), (34, 4)], &v), 4096);
}

// ---- 4 and 8. variable-length fields, empty ones included -------------------------

#[test]
fn empty_variable_length_fields_are_legal_data() {
    // interfaceName (82) and an SRH segment list (IE 495 srhSegmentIPv6ListSection as a
    // stand-in for a list) as variable-length fields, sent empty.
    let t = template(
        500,
        &plain(&[(8, 4), (82, 0xFFFF), (12, 4), (495, 0xFFFF), (2, 4), (1, 8)]),
    );
    let rec = |name: &[u8], dst: u8| {
        let mut r = v4([198, 51, 100, 1]);
        r.push(name.len() as u8);
        r.extend_from_slice(name);
        r.extend(v4([203, 0, 113, dst]));
        r.push(0); // empty list
        r.extend(u32b(4));
        r.extend(u64b(400));
        r
    };
    let mut d = rec(b"", 1);
    d.extend(rec(b"Gi0/0/0/1", 2));
    d.extend(rec(b"", 3));
    let dg = ipfix(&[set(2, &t), set(500, &d)]);
    let again = ipfix(&[set(500, &d)]);
    // The crate refuses the zero-length value, so no differential here.
    let r = decode(&[dg, again], false);
    let got: Vec<_> = dsts(&r);
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[0], (ip("203.0.113.1"), 4, 400));
    assert_eq!(got[2], (ip("203.0.113.3"), 4, 400));
    assert_eq!(got[3..], got[..3]);
}

#[test]
fn v9_variable_length_fields_decode_as_ipfix_ones() {
    // H3C sends length 65535 in v9 templates with the IPFIX length encoding, including
    // the three-byte form (255, then two bytes).
    let t = template(
        600,
        &plain(&[(8, 4), (12, 4), (83, 0xFFFF), (2, 4), (1, 4)]),
    );
    let mut r = v4([198, 51, 100, 1]);
    r.extend(v4([203, 0, 113, 1]));
    r.push(255);
    r.extend(300u16.to_be_bytes());
    r.extend(vec![b'x'; 300]);
    r.extend(u32b(6));
    r.extend(u32b(600));
    let mut r2 = v4([198, 51, 100, 1]);
    r2.extend(v4([203, 0, 113, 2]));
    r2.push(3);
    r2.extend(b"abc");
    r2.extend(u32b(1));
    r2.extend(u32b(40));
    let mut d = r;
    d.extend(r2);
    let run = decode(
        &[v9(&[set(0, &t), set(600, &d)]), v9(&[set(600, &d)])],
        false,
    );
    let want = [(ip("203.0.113.1"), 6, 600), (ip("203.0.113.2"), 1, 40)];
    assert_eq!(dsts(&run)[..2], want[..]);
    assert_eq!(dsts(&run)[2..], want[..]);
}

#[test]
fn a_variable_length_that_runs_past_the_set_is_an_error_after_the_good_records() {
    let t = template(601, &plain(&[(8, 4), (12, 4), (82, 0xFFFF), (2, 4)]));
    let mut d = v4([198, 51, 100, 1]);
    d.extend(v4([203, 0, 113, 1]));
    d.push(0);
    d.extend(u32b(5));
    d.extend(v4([198, 51, 100, 1]));
    d.extend(v4([203, 0, 113, 2]));
    d.push(200); // claims 200 bytes; the set ends long before
    d.extend(u32b(5));
    let mut dec = NetflowDecoder::new(SamplingOverrides::default());
    let mut out = Vec::new();
    dec.decode(from(), &ipfix(&[set(2, &t)]), &mut out);
    let oc = dec.decode(from(), &ipfix(&[set(601, &d)]), &mut out);
    assert_eq!(oc.error, Some(DecodeErrorKind::Malformed));
    assert_eq!(out.len(), 1, "the record before the bad one stands");
    assert_eq!(out[0].dst, ip("203.0.113.1"));
}

// ---- 5. packet sections -------------------------------------------------------------

fn eth_ipv4_udp(dst: [u8; 4], ip_len: u16) -> Vec<u8> {
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip.extend([198, 51, 100, 1]);
    ip.extend(dst);
    ip.extend(53u16.to_be_bytes());
    ip.extend(4444u16.to_be_bytes());
    ip.extend((ip_len - 20).to_be_bytes());
    ip.extend([0, 0]);
    f.extend(ip);
    f
}

#[test]
fn a_data_link_frame_section_counts_one_packet_times_the_selectors_rate() {
    // Juniper inline monitoring: selectorId 302 + dataLinkFrameSection 315 (variable),
    // the selector's rate from options data (samplingPacketInterval/Space 1 in 1000).
    let opt = ipfix_options_template(700, &[(302, 4), (305, 4), (306, 4)]);
    let mut od = u32b(7);
    od.extend(u32b(9));
    od.extend(u32b(1));
    od.extend(u32b(999));
    let t = template(701, &plain(&[(302, 4), (315, 0xFFFF)]));
    let frame = eth_ipv4_udp([203, 0, 113, 77], 1028);
    let mut d = u32b(9);
    d.push(frame.len() as u8);
    d.extend(&frame);
    let dg = ipfix(&[set(3, &opt), set(2, &t), set(700, &od), set(701, &d)]);
    let again = ipfix(&[set(701, &d)]);
    let r = decode(&[dg, again], true);
    assert_eq!(r.records.len(), 2);
    for rec in &r.records {
        assert_eq!(rec.dst, ip("203.0.113.77"));
        assert_eq!((rec.packets, rec.bytes), (1000, 1_028_000));
        assert_eq!((rec.protocol, rec.src_port, rec.dst_port), (17, 53, 4444));
    }
}

#[test]
fn an_ip_header_packet_section_is_read_from_the_ip_header() {
    let t = template(702, &plain(&[(313, 0xFFFF)]));
    let frame = eth_ipv4_udp([203, 0, 113, 78], 60);
    let hdr = &frame[14..];
    let mut d = vec![hdr.len() as u8];
    d.extend(hdr);
    let r = decode(&[ipfix(&[set(2, &t), set(702, &d)])], true);
    assert_eq!(dsts(&r), vec![(ip("203.0.113.78"), 1, 60)]);
}

// ---- 6. padding -------------------------------------------------------------------

#[test]
fn zero_padding_after_the_last_set_is_ignored() {
    let t = template(256, &plain(&[(8, 4), (12, 4), (2, 4), (1, 4)]));
    let mut d = v4([198, 51, 100, 1]);
    d.extend(v4([203, 0, 113, 1]));
    d.extend(u32b(3));
    d.extend(u32b(300));
    // Palo Alto pads to 1400 bytes; Cisco ACI appends 64 zero bytes.
    let mut pa = v9(&[set(0, &t), set(256, &d)]);
    pa.resize(1400, 0);
    let mut aci = v9(&[set(256, &d)]);
    aci.extend([0u8; 64]);
    let r = decode(&[pa, aci.clone(), aci], true);
    assert_eq!(dsts(&r), vec![(ip("203.0.113.1"), 3, 300); 3]);
    assert!(r.outcomes.iter().all(|o| o.records == 1));
}

#[test]
fn trailing_bytes_that_are_not_zero_are_still_an_error() {
    let t = template(256, &plain(&[(8, 4), (12, 4), (2, 4), (1, 4)]));
    let mut dg = v9(&[set(0, &t)]);
    dg.extend([0, 0, 0, 0, 9]);
    let mut d = NetflowDecoder::new(SamplingOverrides::default());
    let oc = d.decode(from(), &dg, &mut Vec::new());
    assert!(oc.error.is_some(), "{oc:?}");
}

// ---- 7. counters ------------------------------------------------------------------

#[test]
fn delta_counters_win_over_post_and_totals_whatever_the_order() {
    // Barracuda's layout: totals (85/86) before deltas (1/2); plus post counters.
    let t = template(
        800,
        &plain(&[
            (8, 4),
            (12, 4),
            (85, 8),
            (86, 8),
            (24, 4),
            (23, 4),
            (1, 8),
            (2, 8),
        ]),
    );
    let rec = |dst: u8, delta: u64| {
        let mut r = v4([198, 51, 100, 1]);
        r.extend(v4([203, 0, 113, dst]));
        r.extend(u64b(999_999));
        r.extend(u64b(99_999));
        r.extend(u32b(77));
        r.extend(u32b(7_777));
        r.extend(u64b(delta * 100));
        r.extend(u64b(delta));
        r
    };
    let mut d = rec(1, 5);
    d.extend(rec(2, 0)); // a running flow with nothing new: nothing counted
    let r = decode(
        &[ipfix(&[set(2, &t), set(800, &d)]), ipfix(&[set(800, &d)])],
        true,
    );
    assert_eq!(
        dsts(&r)[..2],
        [(ip("203.0.113.1"), 5, 500), (ip("203.0.113.2"), 0, 0)]
    );
    // Post counters win over totals when there are no deltas.
    let t2 = template(801, &plain(&[(8, 4), (12, 4), (86, 8), (24, 4)]));
    let mut d2 = v4([198, 51, 100, 1]);
    d2.extend(v4([203, 0, 113, 3]));
    d2.extend(u64b(1_000));
    d2.extend(u32b(10));
    let r = decode(&[ipfix(&[set(2, &t2), set(801, &d2)])], true);
    assert_eq!(r.records[0].packets, 10);
}

/// RFC 5103: a biflow record's reverse counters (PEN 29305) are the reverse direction's.
#[test]
fn biflow_reverse_counters_count_for_the_reverse_direction_when_asked() {
    const PEN: Option<u32> = Some(29305);
    let t = template(
        900,
        &[
            (8, 4, None),
            (12, 4, None),
            (7, 2, None),
            (11, 2, None),
            (4, 1, None),
            (2, 8, None),
            (1, 8, None),
            (2, 8, PEN),
            (1, 8, PEN),
        ],
    );
    let mut d = v4([198, 51, 100, 1]);
    d.extend(v4([203, 0, 113, 1]));
    d.extend(40000u16.to_be_bytes());
    d.extend(443u16.to_be_bytes());
    d.push(6);
    d.extend(u64b(10));
    d.extend(u64b(1000));
    d.extend(u64b(20));
    d.extend(u64b(30_000));
    let dgs = [ipfix(&[set(2, &t), set(900, &d)]), ipfix(&[set(900, &d)])];
    let on = decode_opts(&dgs, true, true, SamplingOverrides::default());
    assert_eq!(on.records.len(), 4);
    let rev = on.records[1];
    assert_eq!((rev.src, rev.dst), (ip("203.0.113.1"), ip("198.51.100.1")));
    assert_eq!((rev.src_port, rev.dst_port), (443, 40000));
    assert_eq!((rev.packets, rev.bytes, rev.flows), (20, 30_000, 0));
    assert_eq!(on.records[2..], on.records[..2]);
    // Off (the default): per-destination totals are the forward counters.
    let off = decode(&dgs, true);
    assert_eq!(dsts(&off), vec![(ip("203.0.113.1"), 10, 1000); 2]);
}

#[test]
fn nsel_events_count_a_connection_once_and_no_running_totals() {
    // Cisco ASA NSEL: firewallEvent 233, initiator/responder octets 231/232 (running
    // totals re-sent with every update), no delta counters.
    let t = template(
        1000,
        &plain(&[(8, 4), (12, 4), (4, 1), (233, 1), (231, 4), (232, 4)]),
    );
    let rec = |event: u8, ini: u32, resp: u32| {
        let mut r = v4([198, 51, 100, 1]);
        r.extend(v4([203, 0, 113, 1]));
        r.push(6);
        r.push(event);
        r.extend(u32b(ini));
        r.extend(u32b(resp));
        r
    };
    let mut d = rec(1, 0, 0); // created
    d.extend(rec(5, 81, 6207)); // update
    d.extend(rec(2, 81, 6207)); // deleted
    d.extend(rec(3, 0, 0)); // denied
    let r = decode(&[v9(&[set(0, &t), set(1000, &d)])], true);
    let flows: Vec<u32> = r.records.iter().map(|r| r.flows).collect();
    assert_eq!(flows, vec![1, 0, 0, 1]);
    assert!(r.records.iter().all(|r| r.packets == 0 && r.bytes == 0));
}

// ---- 9. dual-stack listeners ------------------------------------------------------

#[test]
fn an_ipv4_mapped_exporter_is_the_ipv4_exporter() {
    let mapped: SocketAddr = "[::ffff:192.0.2.9]:2055".parse().unwrap();
    let t = template(256, &plain(&[(8, 4), (12, 4), (2, 4), (1, 4)]));
    let mut d = v4([198, 51, 100, 1]);
    d.extend(v4([203, 0, 113, 1]));
    d.extend(u32b(1));
    d.extend(u32b(100));
    let ov = SamplingOverrides {
        per_exporter: [(ip("192.0.2.9"), 50)].into_iter().collect(),
        ..SamplingOverrides::default()
    };
    let mut dec = NetflowDecoder::new(ov);
    let mut out = Vec::new();
    // Template from the mapped address, data from the plain one: one template scope.
    dec.decode(mapped, &v9(&[set(0, &t)]), &mut out);
    let oc = dec.decode(from(), &v9(&[set(256, &d)]), &mut out);
    assert_eq!(oc.template_misses, 0, "{oc:?}");
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].packets, 50, "the IPv4 exporter's override applies");
    assert_eq!(dec.sampling_rate_of(ip("192.0.2.9")), 50);
}

// ---- 11. no silent loss -----------------------------------------------------------

#[test]
fn records_not_counted_say_why() {
    // MAC-only record (no address), data before its template, options data.
    let t = template(1100, &plain(&[(56, 6), (80, 6), (2, 4)]));
    let mut d = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
    d.extend(u32b(5));
    let mut dec = NetflowDecoder::new(SamplingOverrides::default());
    let mut out = Vec::new();
    let miss = dec.decode(from(), &ipfix(&[set(1100, &d)]), &mut out);
    assert_eq!(miss.skips.get(SkipReason::NoTemplate), 1, "{miss:?}");
    let oc = dec.decode(from(), &ipfix(&[set(2, &t), set(1100, &d)]), &mut out);
    assert_eq!(oc.skips.get(SkipReason::NoAddress), 1, "{oc:?}");
    assert!(out.is_empty());
}
