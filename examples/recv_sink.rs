//! Receive-only sink: a collector's socket and receive loop (`recvmmsg` of 64 into the
//! same buffers, the same receive buffer size and coalescing wait) that decodes nothing.
//! Its CPU per datagram is the kernel's and the system calls' share of flowguard's cost
//! on this machine, the floor flowguard's CPU per record is compared with
//! (`benches/distance-to-limit.sh`).
//!
//! ```text
//! cargo build --release --example recv_sink
//! target/release/examples/recv_sink 127.0.0.1:0 12   # address, seconds (at most 300)
//! ```
//!
//! Prints `listening on ADDR` first, then, after the given seconds (or SIGTERM), one JSON
//! line: datagrams, bytes, recvmmsg calls and its own user+system CPU seconds.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flowguard::config::Config;

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let secs: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(12);
    let cfg = Config::from_toml_str(&format!(
        "[[collector]]\nprotocol = \"netflow\"\nlisten = \"{listen}\"\nthreads = 1\n"
    ))?;
    let mut bound = flowguard::collectors::bind_all(&cfg.collectors)?;
    let b = bound.remove(0);
    println!("listening on {}", b.local);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let deadline = Instant::now() + Duration::from_secs(secs.min(300));
    std::thread::spawn(move || {
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        st.store(true, Ordering::Relaxed);
    });
    let c = flowguard::collectors::receive_only(&b.sockets[0], &stop);
    println!(
        "{{\"datagrams\":{},\"bytes\":{},\"calls\":{},\"cpu_seconds\":{:.4}}}",
        c.datagrams,
        c.bytes,
        c.calls,
        cpu_seconds()
    );
    Ok(())
}
