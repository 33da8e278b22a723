//! `flowguard demo` end to end: the newcomer's command shows three attacks, the MITIGATOR
//! calls for them, and ends with every switch off (as the simulator reports it).

#[test]
fn demo_shows_attacks_and_mitigator_calls_and_ends_clean() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowguard"))
        .args(["demo", "--speed", "4", "--log-level", "warn"])
        .output()
        .expect("run flowguard demo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "ATTACK  127.0.0.21 incoming icmp_flood (icmp)",
        "ATTACK  127.0.0.22 incoming udp_flood (udp)",
        "ATTACK  127.0.0.23 incoming ip_fragmentation (udp)",
        "MITIGATOR PUT toggle/switch?policy=1 {\"switch\":1}",
        "MITIGATOR PUT acl/switch?policy=1 {\"switch\":1}",
        "MITIGATOR PUT sorb/switch?policy=1 {\"switch\":0}",
        "MITIGATOR PUT toggle/switch?policy=1 {\"switch\":0}",
        "ENDED   127.0.0.23 ip_fragmentation",
        "3 attacks",
        "every switch is off again",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        !text.contains("\"password\""),
        "the login body is never printed:\n{text}"
    );
}
