//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// `../shared/vectors` beside the repository (CI lays a copy of shared/ there), or
/// `$FLOWGUARD_VECTORS`.
pub fn vectors() -> PathBuf {
    if let Ok(p) = std::env::var("FLOWGUARD_VECTORS") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors")
}

pub fn reference() -> PathBuf {
    if let Ok(p) = std::env::var("FLOWGUARD_REFERENCE") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference")
}

/// The config the contract checks use: protected 127.0.0.16/28 + 127.0.0.32/27 + ::1,
/// one default hostgroup at `pps` packets/s with a 5 s ban time.
pub fn check_config(pps: u64) -> String {
    format!(
        r#"
[api]
listen = "127.0.0.1:0"

[[collector]]
protocol = "netflow"
listen = "127.0.0.1:0"

[[collector]]
protocol = "sflow"
listen = "127.0.0.1:0"

[networks]
protected = ["127.0.0.16/28", "127.0.0.32/27", "::1/128"]

[[hostgroup]]
name = "default"
threshold_pps = {pps}
threshold_mbps = 100000
ban_time_seconds = 5
"#
    )
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral UDP port")
}

pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral TCP port")
}

/// Whether a program is on PATH. Tests that need a real tool fail loudly without it
/// unless FLOWGUARD_SKIP_REAL_TOOLS=1 (the README's test command installs them).
pub fn require_tool(name: &str) -> bool {
    let found = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found && std::env::var("FLOWGUARD_SKIP_REAL_TOOLS").as_deref() != Ok("1") {
        panic!("{name} is not installed; run the README's test command (it installs it) or set FLOWGUARD_SKIP_REAL_TOOLS=1");
    }
    found
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}
