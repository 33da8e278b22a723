//! NetFlow v5/v9/IPFIX through `NetflowDecoder`, statefully: one decoder lives across
//! inputs, so templates learned from one input are used (or clobbered) by later ones.
//!
//! Input: a sequence of datagrams, each `[exporter: u8][len: u16 BE][payload]`; the last
//! one takes whatever is left. The exporter byte picks one of a few source addresses
//! (two sharing an IP with different ports, one IPv6), so template and sampling state
//! cross exporters too. A single input can carry a template and the data using it, which
//! keeps crashes reproducible from the artifact alone most of the time.
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;

use flowguard::decode::netflow::NetflowLimits;
use flowguard::decode::{FlowRecord, NetflowDecoder, SamplingOverrides};
use libfuzzer_sys::fuzz_target;

static DECODER: Mutex<Option<NetflowDecoder>> = Mutex::new(None);

fn exporter(b: u8) -> SocketAddr {
    let addrs = [
        "192.0.2.1:2055",
        "192.0.2.1:2056",
        "192.0.2.2:2055",
        "198.51.100.9:9995",
        "[2001:db8::1]:2055",
    ];
    addrs[usize::from(b) % addrs.len()].parse().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let mut guard = DECODER.lock().unwrap_or_else(|e| e.into_inner());
    // Small caches: eviction paths run often, and the decoder's memory stays well inside
    // libFuzzer's RSS limit under ASan (the default limits allow ~800 MiB by design).
    let limits = NetflowLimits {
        max_sources: 32,
        templates_per_source: 16,
        ..NetflowLimits::default()
    };
    let dec = guard
        .get_or_insert_with(|| NetflowDecoder::with_limits(SamplingOverrides::default(), limits));
    let mut out: Vec<FlowRecord> = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let from = exporter(rest[0]);
        let payload = if rest.len() >= 3 {
            let len = usize::from(u16::from_be_bytes([rest[1], rest[2]]));
            let body = &rest[3..];
            let take = len.min(body.len());
            let (p, r) = body.split_at(take);
            rest = r;
            p
        } else {
            let p = &rest[1..];
            rest = &[];
            p
        };
        out.clear();
        let oc = dec.decode(from, payload, &mut out);
        // The outcome must describe what was appended.
        assert_eq!(oc.records, out.len());
        for r in &out {
            assert!(r.flows <= 1);
        }
        let _ = dec.sampling_rate_of(from.ip());
    }
    // Caches are bounded however many inputs arrive: the crate's scopes and the v5 fast
    // path's exporters each to max_sources.
    assert!(dec.exporters() <= 2 * limits.max_sources);
    // v9 keeps 2 template caches per scope, IPFIX 4.
    assert!(dec.templates_known() <= limits.max_sources * 4 * limits.templates_per_source);
});
