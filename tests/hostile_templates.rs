//! Hostile NetFlow v9 / IPFIX templates against `NetflowDecoder`: huge field counts and
//! lengths, zero-length fields, floods of templates and of exporter scopes, and template
//! ids reused with another layout, from a spoofed exporter while a real one is sending.
//!
//! Every test checks three things: the caches stay within `NetflowLimits` (and the memory
//! the decoder holds stays under the bound the limits imply, measured with a counting
//! allocator), refused input is counted in the `DecodeOutcome`, and the real exporter's
//! records still decode to the right values.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};

use flowguard::decode::netflow::{NetflowLimits, MAX_SOURCES};
use flowguard::decode::{
    DecodeErrorKind, DecodeOutcome, FlowRecord, NetflowDecoder, SamplingOverrides,
};

// ---- memory accounting: bytes allocated minus freed, per thread ----

struct Counting;

thread_local! {
    static NET: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // try_with: allocations during thread teardown must not panic.
    let _ = NET.try_with(|n| n.set(n.get() + delta));
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            note(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        note(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            note(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn net_bytes() -> isize {
    NET.with(|n| n.get())
}

// ---- datagram builders ----

const REAL: &str = "192.0.2.1:2055";
const SPOOF: &str = "198.51.100.66:2055";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// (type, length) of the real exporter's template: src, dst, ports, proto, packets, bytes.
const LAYOUT: [(u16, u16); 7] = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (2, 4), (1, 4)];
const TEMPLATE_ID: u16 = 256;

fn pad4(mut v: Vec<u8>) -> Vec<u8> {
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn set(id: u16, body: &[u8]) -> Vec<u8> {
    let body = pad4(body.to_vec());
    let mut v = Vec::with_capacity(body.len() + 4);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

/// One template record: id, field count as declared, then the fields.
fn template_record(id: u16, declared_count: u16, fields: &[(u16, u16)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&declared_count.to_be_bytes());
    for (t, l) in fields {
        v.extend_from_slice(&t.to_be_bytes());
        v.extend_from_slice(&l.to_be_bytes());
    }
    v
}

fn v9(source_id: u32, seq: u32, sets: &[Vec<u8>]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&9u16.to_be_bytes());
    v.extend_from_slice(&(sets.len() as u16).to_be_bytes());
    v.extend_from_slice(&100_000u32.to_be_bytes()); // sysUpTime
    v.extend_from_slice(&1_800_000_000u32.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&source_id.to_be_bytes());
    for s in sets {
        v.extend_from_slice(s);
    }
    v
}

fn ipfix(domain: u32, seq: u32, sets: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = sets.concat();
    let mut v = Vec::new();
    v.extend_from_slice(&10u16.to_be_bytes());
    v.extend_from_slice(&((16 + body.len()) as u16).to_be_bytes());
    v.extend_from_slice(&1_800_000_000u32.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v.extend_from_slice(&domain.to_be_bytes());
    v.extend_from_slice(&body);
    v
}

/// A record in `LAYOUT`: 203.0.113.<n> → 192.0.2.99:80/udp, `pkts` packets of 100 bytes.
fn record(n: u8, pkts: u32) -> Vec<u8> {
    let mut v = vec![198, 51, 100, n, 192, 0, 2, 99];
    v.extend_from_slice(&1234u16.to_be_bytes());
    v.extend_from_slice(&80u16.to_be_bytes());
    v.push(17);
    v.extend_from_slice(&pkts.to_be_bytes());
    v.extend_from_slice(&(pkts * 100).to_be_bytes());
    v
}

fn real_template_v9() -> Vec<u8> {
    v9(
        1,
        0,
        &[set(
            0,
            &template_record(TEMPLATE_ID, LAYOUT.len() as u16, &LAYOUT),
        )],
    )
}

fn real_data_v9(seq: u32, n: u8) -> Vec<u8> {
    v9(1, seq, &[set(TEMPLATE_ID, &record(n, 7))])
}

fn decode(d: &mut NetflowDecoder, from: &str, dg: &[u8]) -> (DecodeOutcome, Vec<FlowRecord>) {
    let mut out = Vec::new();
    let oc = d.decode(addr(from), dg, &mut out);
    (oc, out)
}

/// The real exporter's data decodes to exactly what it sent.
fn assert_real_decodes(d: &mut NetflowDecoder, seq: u32, n: u8) {
    let (oc, out) = decode(d, REAL, &real_data_v9(seq, n));
    assert_eq!(oc.error, None, "{oc:?}");
    assert_eq!(oc.template_misses, 0, "real exporter lost its template");
    assert_eq!(out.len(), 1, "{oc:?}");
    let r = out[0];
    assert_eq!(r.src, IpAddr::from([198, 51, 100, n]));
    assert_eq!(r.dst, IpAddr::from([192, 0, 2, 99]));
    assert_eq!((r.src_port, r.dst_port, r.protocol), (1234, 80, 17));
    assert_eq!((r.packets, r.bytes), (7, 700));
}

fn with_real(limits: NetflowLimits) -> NetflowDecoder {
    let mut d = NetflowDecoder::with_limits(SamplingOverrides::default(), limits);
    let (oc, _) = decode(&mut d, REAL, &real_template_v9());
    assert_eq!(oc.error, None, "{oc:?}");
    assert_real_decodes(&mut d, 1, 1);
    d
}

// ---- tests ----

#[test]
fn huge_field_counts_are_refused_and_counted() {
    let limits = NetflowLimits::default();
    let mut d = with_real(limits);
    let before = d.templates_known();
    // Just over the limit, honestly encoded.
    let fields: Vec<(u16, u16)> = (0..=limits.max_fields as u16).map(|_| (1, 1)).collect();
    let dg = v9(
        7,
        0,
        &[set(0, &template_record(300, fields.len() as u16, &fields))],
    );
    let (oc, out) = decode(&mut d, SPOOF, &dg);
    assert_eq!(oc.error, Some(DecodeErrorKind::Malformed), "{oc:?}");
    assert!(out.is_empty());
    // A count far beyond what the datagram holds (the parser must not trust it), in v9
    // and IPFIX, from the real exporter's own scope too.
    for from in [SPOOF, REAL] {
        let dg = v9(1, 0, &[set(0, &template_record(301, 65_535, &[(8, 4)]))]);
        let (oc, _) = decode(&mut d, from, &dg);
        assert!(oc.error.is_some(), "{oc:?}");
        let dg = ipfix(1, 0, &[set(2, &template_record(302, 65_535, &[(8, 4)]))]);
        let (oc, _) = decode(&mut d, from, &dg);
        assert!(oc.error.is_some(), "{oc:?}");
    }
    // 16 000 fields: the largest a UDP datagram can carry.
    let fields: Vec<(u16, u16)> = (0..16_000).map(|i| (i % 500, 4)).collect();
    let dg = v9(1, 0, &[set(0, &template_record(303, 16_000, &fields))]);
    let (oc, _) = decode(&mut d, REAL, &dg);
    assert!(oc.error.is_some(), "{oc:?}");
    assert_eq!(d.templates_known(), before, "no refused template was kept");
    assert_real_decodes(&mut d, 2, 2);
}

#[test]
fn huge_and_zero_field_lengths_are_refused() {
    let limits = NetflowLimits::default();
    let mut d = with_real(limits);
    let before = d.templates_known();
    let cases: Vec<(&str, Vec<(u16, u16)>)> = vec![
        (
            "one field over the record limit",
            vec![(1, limits.max_record_bytes as u16 + 1)],
        ),
        ("sum over the record limit", vec![(1, 60_000), (2, 5_000)]),
        ("every field zero length", vec![(8, 0), (12, 0), (1, 0)]),
        ("lengths summing past u16", vec![(1, 40_000), (2, 40_000)]),
    ];
    for (what, fields) in &cases {
        for from in [SPOOF, REAL] {
            let dg = v9(
                1,
                0,
                &[set(0, &template_record(400, fields.len() as u16, fields))],
            );
            let (oc, _) = decode(&mut d, from, &dg);
            assert_eq!(oc.error, Some(DecodeErrorKind::Malformed), "{what}: {oc:?}");
        }
    }
    // 65535 in a v9 template is a variable-length field, as H3C sends it (and as IPFIX
    // has it): accepted, not a record of 64 KiB.
    let dg = v9(
        1,
        0,
        &[set(0, &template_record(401, 2, &[(8, 4), (1, 65_535)]))],
    );
    let (oc, _) = decode(&mut d, REAL, &dg);
    assert_eq!(oc.error, None, "v9 variable-length field: {oc:?}");
    // IPFIX: the same refusals (a variable-length field is legal there).
    for (what, fields) in &cases[..2] {
        let dg = ipfix(
            5,
            0,
            &[set(2, &template_record(400, fields.len() as u16, fields))],
        );
        let (oc, _) = decode(&mut d, SPOOF, &dg);
        assert_eq!(
            oc.error,
            Some(DecodeErrorKind::Malformed),
            "ipfix {what}: {oc:?}"
        );
    }
    assert_eq!(d.templates_known(), before);

    // Some zero-length fields among real ones: legal, and must not disturb the others.
    let mut fields = vec![(99, 0)];
    fields.extend_from_slice(&LAYOUT);
    fields.push((98, 0));
    let dg = v9(
        9,
        0,
        &[
            set(0, &template_record(500, fields.len() as u16, &fields)),
            set(500, &record(5, 3)),
        ],
    );
    let (oc, out) = decode(&mut d, SPOOF, &dg);
    assert_eq!(oc.error, None, "{oc:?}");
    assert_eq!(out.len(), 1, "{oc:?}");
    assert_eq!(
        (out[0].packets, out[0].bytes, out[0].dst_port),
        (3, 300, 80)
    );
    assert_real_decodes(&mut d, 3, 3);
}

#[test]
fn template_flood_from_one_exporter_is_bounded() {
    let limits = NetflowLimits::default();
    let mut d = with_real(limits);
    let mem0 = net_bytes();
    let fields: Vec<(u16, u16)> = (0..limits.max_fields as u16).map(|i| (i + 1, 1)).collect();
    let mut sent = 0u32;
    // 12 000 distinct ids, 10 templates of the largest accepted size per datagram; the
    // real exporter keeps sending in between.
    for (seq, chunk) in (1000u16..13_000).collect::<Vec<_>>().chunks(10).enumerate() {
        let recs: Vec<u8> = chunk
            .iter()
            .flat_map(|id| template_record(*id, fields.len() as u16, &fields))
            .collect();
        let (oc, _) = decode(&mut d, SPOOF, &v9(7, seq as u32, &[set(0, &recs)]));
        assert_eq!(oc.error, None, "{oc:?}");
        sent += chunk.len() as u32;
        if seq % 100 == 0 {
            assert_real_decodes(&mut d, 10 + seq as u32, (seq % 250) as u8);
        }
    }
    assert_eq!(sent, 12_000);
    // v9 has two caches per scope (data and options templates).
    let known = d.templates_known();
    assert!(
        known <= 1 + 2 * limits.templates_per_source,
        "{known} templates kept"
    );
    assert!(
        known >= limits.templates_per_source,
        "the cache was used: {known}"
    );
    // Memory: what the decoder holds now, against what 128 full templates can take.
    let held = net_bytes() - mem0;
    let per_template = limits.max_fields * 24 + 256;
    let bound = (2 * limits.templates_per_source * per_template) as isize + (256 << 10);
    eprintln!("template flood: decoder holds {held} bytes more (bound {bound})");
    assert!(held < bound, "decoder grew by {held} bytes (bound {bound})");
    assert_real_decodes(&mut d, 9999, 9);
}

#[test]
fn exporter_scope_flood_is_bounded_and_a_live_exporter_survives() {
    let limits = NetflowLimits {
        max_sources: 64,
        ..NetflowLimits::default()
    };
    let mut d = with_real(limits);
    let mem0 = net_bytes();
    // 10 000 scopes: every source id of a spoofed address, each with a template.
    for sid in 0..10_000u32 {
        let dg = v9(
            sid,
            0,
            &[set(0, &template_record(256, LAYOUT.len() as u16, &LAYOUT))],
        );
        let (oc, _) = decode(&mut d, SPOOF, &dg);
        assert_eq!(oc.error, None);
        if sid % 16 == 0 {
            // An exporter that keeps sending stays in the LRU.
            assert_real_decodes(&mut d, 100 + sid, (sid % 250) as u8);
        }
        assert!(d.exporters() <= limits.max_sources);
    }
    assert_eq!(d.exporters(), limits.max_sources);
    let held = net_bytes() - mem0;
    eprintln!("scope flood: decoder holds {held} bytes more");
    assert!(
        held < 4 << 20,
        "decoder grew by {held} bytes over 10 000 scopes"
    );
    assert_real_decodes(&mut d, 99_999, 1);
}

#[test]
fn scope_flood_evicts_a_quiet_exporter_which_is_why_the_allow_list_exists() {
    // Documents the limit of what the decoder alone can do: a quiet real exporter's
    // templates are evicted by a flood of spoofed scopes. The collector's allow-list,
    // checked before parsing, is the defence (tests/allow_list.rs).
    let limits = NetflowLimits {
        max_sources: 8,
        ..NetflowLimits::default()
    };
    // With the fast path off, every datagram goes through netflow_parser's scoped,
    // LRU-capped template store: the flood evicts the real scope.
    let mut d = with_real(limits);
    d.set_fast_path(false);
    for sid in 0..limits.max_sources as u32 {
        let dg = v9(sid + 10, 0, &[set(0, &template_record(256, 1, &[(8, 4)]))]);
        decode(&mut d, SPOOF, &dg);
    }
    let (oc, out) = decode(&mut d, REAL, &real_data_v9(5, 5));
    assert!(out.is_empty());
    assert_eq!(oc.template_misses, 1, "counted as a template miss: {oc:?}");
    // The fast path keeps its own compiled layouts (bounded separately, keyed per scope
    // and version), so the real exporter's data still decodes right after the same flood;
    // it never decodes with another scope's layout.
    let mut d = with_real(limits);
    for sid in 0..limits.max_sources as u32 {
        let dg = v9(sid + 10, 0, &[set(0, &template_record(256, 1, &[(8, 4)]))]);
        decode(&mut d, SPOOF, &dg);
    }
    assert_real_decodes(&mut d, 6, 6);
}

#[test]
fn template_id_reused_with_another_layout() {
    let mut d = with_real(NetflowLimits::default());
    // The spoofer announces the real exporter's template id with another layout, from
    // its own address: the real exporter's scope is untouched.
    let evil = [(12, 4), (8, 4), (1, 4), (2, 4)];
    let dg = v9(1, 0, &[set(0, &template_record(TEMPLATE_ID, 4, &evil))]);
    let (oc, _) = decode(&mut d, SPOOF, &dg);
    assert_eq!(oc.error, None);
    assert_real_decodes(&mut d, 2, 2);
    // The same from the real address but another port is another scope (RFC 3954 §5.1
    // scopes by the exporter's transport address): still untouched.
    let (oc, _) = decode(&mut d, "192.0.2.1:40000", &dg);
    assert_eq!(oc.error, None);
    assert_real_decodes(&mut d, 3, 3);
    // IPFIX with the same id, from the real address: separate (IPFIX scope).
    let dg = ipfix(1, 0, &[set(2, &template_record(TEMPLATE_ID, 4, &evil))]);
    let (oc, _) = decode(&mut d, REAL, &dg);
    assert_eq!(oc.error, None);
    assert_real_decodes(&mut d, 4, 4);

    // The exporter itself redefining its template (a legitimate restart with another
    // layout): new data decodes with the new layout, never with a mix of both.
    let swapped = [(12, 4), (8, 4), (11, 2), (7, 2), (4, 1), (2, 4), (1, 4)];
    let dg = v9(1, 5, &[set(0, &template_record(TEMPLATE_ID, 7, &swapped))]);
    let (oc, _) = decode(&mut d, REAL, &dg);
    assert_eq!(oc.error, None);
    let (oc, out) = decode(&mut d, REAL, &real_data_v9(6, 8));
    assert_eq!(oc.error, None, "{oc:?}");
    assert_eq!(out.len(), 1);
    // Bytes that were src are now read as dst, and the ports swap.
    assert_eq!(out[0].dst, IpAddr::from([198, 51, 100, 8]));
    assert_eq!(out[0].src, IpAddr::from([192, 0, 2, 99]));
    assert_eq!((out[0].src_port, out[0].dst_port), (80, 1234));
    // Re-announce: back to normal.
    decode(&mut d, REAL, &real_template_v9());
    assert_real_decodes(&mut d, 7, 7);
}

#[test]
fn short_and_garbage_datagrams_are_counted_not_fatal() {
    let mut d = with_real(NetflowLimits::default());
    let good = real_data_v9(2, 2);
    for cut in [0, 1, 2, 3, 10, 19, 20, 23, good.len() - 1] {
        let (oc, _) = decode(&mut d, SPOOF, &good[..cut]);
        assert!(oc.error.is_some() || oc.records == 0, "cut {cut}: {oc:?}");
    }
    // A set length pointing past the end, and a zero set length (an endless loop in
    // naive parsers).
    for len in [0u16, 3, 0xffff] {
        let mut dg = real_data_v9(3, 3);
        dg[22..24].copy_from_slice(&len.to_be_bytes());
        let (oc, _) = decode(&mut d, SPOOF, &dg);
        assert!(oc.error.is_some() || oc.records == 0, "len {len}: {oc:?}");
    }
    assert_real_decodes(&mut d, 4, 4);
}

#[test]
fn default_limits_are_bounded() {
    let l = NetflowLimits::default();
    assert_eq!(l.max_sources, MAX_SOURCES);
    assert!(l.max_sources <= 10_000 && l.templates_per_source <= 1_000);
    assert!(l.max_fields < 10_000 && l.max_record_bytes < 65_535);
    // Zeros are raised, not passed to the parser (which would refuse them).
    let d = NetflowDecoder::with_limits(
        SamplingOverrides::default(),
        NetflowLimits {
            max_sources: 0,
            templates_per_source: 0,
            max_fields: 0,
            max_record_bytes: 0,
        },
    );
    assert_eq!(d.limits().max_sources, 1);
}
