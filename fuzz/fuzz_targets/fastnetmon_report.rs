//! FastNetMon's notify-script report: `parse_report`, the report → text → report round
//! trip, classification, the whole `from_notify` path a hook runs, and the JSON event the
//! HTTP endpoint accepts.
#![no_main]

use flowguard::hooks::fastnetmon::{parse_report, report_section};
use flowguard::model::Direction;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let r = parse_report(&text);
    let _ = report_section(&text);
    for d in [Direction::Incoming, Direction::Outgoing] {
        let _ = r.classify(d);
        let _ = r.derive_from_rates(d);
    }
    // What we print, we read back the same (the averages are printed with one decimal,
    // so they are left out of the comparison).
    let mut back = parse_report(&r.to_text());
    let mut orig = r.clone();
    for x in [&mut back, &mut orig] {
        x.average_incoming_packet_size = None;
        x.average_outgoing_packet_size = None;
    }
    assert_eq!(orig, back, "round trip changed the report");
    for action in ["ban", "unban", "attack_details"] {
        let _ = flowguard::hooks::event::from_notify("192.0.2.1", "incoming", "1000", action, &text);
    }
    let _ = serde_json::from_slice::<flowguard::hooks::ExternalEvent>(data);
});
