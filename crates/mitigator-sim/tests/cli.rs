//! The simulator's command line as a process: `--help` documents the test endpoints, and
//! on port 0 it announces the port it bound (flowguard's tests rely on that line). The
//! API itself is checked from flowguard's side in the top-level `tests/mitigator_sim.rs`.
//! Being this package's integration test also makes `cargo test` build the binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

const EXE: &str = env!("CARGO_BIN_EXE_mitigator-sim");

#[test]
fn help_documents_the_test_endpoints() {
    let out = Command::new(EXE).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for w in [
        "--listen",
        "--tls",
        "--policies",
        "/sim/log",
        "/sim/faults",
        "/sim/state",
        "421",
    ] {
        assert!(text.contains(w), "--help lacks {w}:\n{text}");
    }
}

/// Killed on drop, so a failed assertion leaves no simulator behind.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn announces_the_port_it_bound_and_answers_there() {
    let mut child = Running(
        Command::new(EXE)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--username",
                "u",
                "--password",
                "p",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let out = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Some(a) = line.strip_prefix("listening on ") {
                let _ = tx.send(a.trim().to_string());
            }
        }
    });
    let addr: SocketAddr = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("no \"listening on\" line within 10 s")
        .parse()
        .unwrap();
    assert_ne!(addr.port(), 0, "the announced port is the bound one");
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(s, "GET /sim/state HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1."), "{text}");
    assert!(text.contains(" 200 "), "{text}");
    assert!(text.contains("\"switches\""), "{text}");
}
