//! Attack reports in FastNetMon's text form (same labels as its notify-script stdin),
//! plus what FastNetMon cannot give: the top sources of the attack traffic.
//! PROVISIONAL: to be built on the hooks' FastNetMon report type once merged.

use std::fmt::Write;

use super::Attack;

pub fn text(a: &Attack) -> String {
    let mut s = String::new();
    let r = &a.current;
    let mbps = |bps: u64| bps / 1_000_000;
    let _ = writeln!(s, "IP: {}", a.ip);
    let _ = writeln!(s, "Attack type: {}", a.attack_type);
    let _ = writeln!(
        s,
        "Initial attack power: {} packets per second",
        a.initial.pps
    );
    let _ = writeln!(s, "Peak attack power: {} packets per second", a.peak_pps);
    let _ = writeln!(s, "Attack direction: {}", a.direction);
    let _ = writeln!(s, "Attack protocol: {}", a.protocol);
    let _ = writeln!(s, "Total incoming traffic: {} mbps", mbps(r.bps));
    let _ = writeln!(s, "Total incoming pps: {} packets per second", r.pps);
    for (ip, share) in a.top_sources.iter().map(|t| (t.ip, t.share)) {
        let _ = writeln!(s, "Top source: {ip} {:.1}%", share * 100.0);
    }
    s
}
