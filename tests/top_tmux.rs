//! `flowguard top` in a real terminal (tmux, on a private server socket this test names and
//! removes): it shows the attacked address with its attack type while the shared
//! softflowd NetFlow v9 flood is being detected, and `q` quits it with status 0.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Output};

use common::{free_tcp_port, free_udp_port, start_flowguard, wait_for};

/// A tmux server and session of our own, removed on drop.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .env("TERM", "xterm-256color")
            .output()
            .expect("run tmux")
    }

    fn pane(&self) -> String {
        let o = self.cmd(&["capture-pane", "-p", "-t", &self.session]);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Only our own server (its own socket): never anyone else's sessions.
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn top_in_tmux_shows_the_attacked_address_and_q_quits() {
    if !common::require_tool("tmux") {
        eprintln!("SKIPPED top_tmux: tmux not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let api: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse().unwrap();
    let nf = free_udp_port();
    let cfg = format!(
        r#"
[api]
listen = "{api}"
[[collector]]
protocol = "netflow"
listen = "127.0.0.1:{nf}"
[networks]
protected = ["127.0.0.16/28", "127.0.0.32/27"]
[[hostgroup]]
name = "default"
threshold_pps = 3000
threshold_mbps = 100000
ban_time_seconds = 5
[state]
dir = "{}"
"#,
        dir.path().join("state").display()
    );
    let _fg = start_flowguard(&cfg, dir.path(), api);

    let name = format!("fgtop-{}", std::process::id());
    let t = Tmux {
        socket: name.clone(),
        session: name.clone(),
    };
    // `timeout` bounds the client even if this test dies before its cleanup.
    // The pane's shell writes top's exit status to a file: tmux 3.3a does not always reap
    // a pane's process (or report `pane_dead_status`) promptly, the file is exact.
    // `--foreground`: run from a shell's command list, timeout would otherwise put top in
    // a background process group of the pane's terminal, where it cannot draw or read.
    let status_file = dir.path().join("top.status");
    let top = format!(
        "timeout --foreground 120 {} top --api http://{api}; echo $? > {}",
        env!("CARGO_BIN_EXE_flowguard"),
        status_file.display()
    );
    let o = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        &name,
        "-x",
        "220",
        "-y",
        "60",
        &top,
    ]);
    assert!(o.status.success(), "tmux new-session: {o:?}");
    // Keep the pane after the program exits, to read its exit status.
    t.cmd(&["set-option", "-t", &name, "remain-on-exit", "on"]);
    let up = wait_for(15, || {
        let p = t.pane();
        (p.contains("flowguard top") && p.contains(" live ")).then_some(p)
    });
    assert!(up.is_some(), "top never showed live data: {}", t.pane());
    assert!(
        !t.pane().contains("127.0.0.20"),
        "no traffic yet, so the address cannot be on screen"
    );

    let sent = common::send_capture(
        &common::vectors().join("v-softflowd-nf9.pcap"),
        format!("127.0.0.1:{nf}").parse().unwrap(),
    );
    assert!(sent > 0);
    let shown = wait_for(15, || {
        let p = t.pane();
        let active = p.split("RECENT ATTACKS").next().unwrap_or("").to_string();
        active
            .lines()
            .any(|l| l.contains("127.0.0.20") && l.contains("syn_flood"))
            .then_some(p)
    });
    let pane = shown.unwrap_or_else(|| panic!("attack not on screen:\n{}", t.pane()));
    eprintln!("{pane}");
    assert!(pane.contains("TOP HOSTS INCOMING"), "{pane}");
    assert!(pane.contains("EXPORTERS"), "{pane}");
    // Per switch (no MITIGATOR configured: a dry run) and one row per exporter address.
    let syn = pane
        .lines()
        .find(|l| l.contains("127.0.0.20") && l.contains("syn_flood"))
        .unwrap();
    assert!(
        syn.contains("policy 1 on->dry run") && syn.contains("tcp on->dry run"),
        "{syn}"
    );
    // Exporter rows come from the service's once-a-second sample: may trail the attack.
    let exporter = wait_for(10, || {
        let p = t.pane();
        let rows = p.split("EXPORTERS").nth(1).unwrap_or("").to_string();
        rows.lines()
            .any(|l| l.trim_start().starts_with("127.0.0.1 ") && l.contains("1:1"))
            .then_some(())
    });
    assert!(
        exporter.is_some(),
        "an exporter row for 127.0.0.1 with its sampling:\n{}",
        t.pane()
    );

    t.cmd(&["send-keys", "-t", &name, "q"]);
    let exit = wait_for(10, || {
        let s = std::fs::read_to_string(&status_file).ok()?;
        s.ends_with('\n').then(|| s.trim().to_string())
    });
    assert_eq!(
        exit.as_deref(),
        Some("0"),
        "q did not quit top cleanly (exit status of top, 124 = still running at the timeout)"
    );
}
