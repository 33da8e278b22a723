//! sFlow v5 datagrams through `SflowDecoder`, including the sampled packet headers it
//! decodes with etherparse. One decoder lives across inputs (it keeps per-exporter
//! sampling rates). The first byte picks the exporter; the rest is the datagram.
#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;

use flowguard::decode::{FlowRecord, SamplingOverrides, SflowDecoder};
use libfuzzer_sys::fuzz_target;

static DECODER: Mutex<Option<SflowDecoder>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    let from: SocketAddr = if sel & 1 == 0 {
        "192.0.2.1:6343".parse().unwrap()
    } else {
        "[2001:db8::1]:6343".parse().unwrap()
    };
    let mut guard = DECODER.lock().unwrap_or_else(|e| e.into_inner());
    let dec = guard.get_or_insert_with(|| SflowDecoder::new(SamplingOverrides::default()));
    let mut out: Vec<FlowRecord> = Vec::new();
    let oc = dec.decode(from, payload, &mut out);
    assert_eq!(oc.records, out.len());
    for r in &out {
        assert_eq!(r.flows, 0);
        assert!(r.packets >= 1);
    }
    let _ = dec.sampling_rate_of(from.ip());
    // The raw header decoder on its own, from each start it supports.
    use flowguard::decode::packet::{decode_header, HeaderStart};
    for s in [HeaderStart::Ethernet, HeaderStart::Ipv4, HeaderStart::Ipv6] {
        let _ = decode_header(s, payload);
    }
});
