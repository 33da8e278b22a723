//! One notion of "now" for the whole pipeline.
//!
//! Cores take `now` as an argument; the one clock a core reads is the NetFlow decoder's
//! idle-exporter bookkeeping (`Instant`, its own and `netflow_parser`'s, never the time a
//! record counts at). The shells (the service's
//! ticker, the collectors, the API, mitigation, the hook consumer, the cluster node) read it
//! from the one [`Clock`] the service is started with: [`Clock::system`] in production,
//! [`Clock::tokio`] in tests, where it follows the runtime's (possibly paused) time so a
//! test that advances tokio's clock advances every shell's "now" with it. `replay` passes
//! capture timestamps. Times are Unix milliseconds in an `i64` so arithmetic on them is
//! plain.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub type UnixMs = i64;

/// Where the shells read "now". Cheap to clone and to read.
#[derive(Debug, Clone)]
pub struct Clock {
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    System,
    /// `base_ms` plus the runtime's time elapsed since `base`. The handle lets threads that
    /// are not the runtime's (the collectors) read the same, possibly paused, time.
    Tokio {
        base_ms: UnixMs,
        base: tokio::time::Instant,
        rt: tokio::runtime::Handle,
    },
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl Clock {
    /// The wall clock (`SystemTime`), as operators read it.
    pub fn system() -> Clock {
        Clock { kind: Kind::System }
    }

    /// Starts at `base_ms` and runs with the current runtime's time: under
    /// `#[tokio::test(start_paused = true)]` it stands still until the test (or tokio's
    /// auto-advance) moves time on. Must be called inside a runtime.
    pub fn tokio(base_ms: UnixMs) -> Clock {
        Clock {
            kind: Kind::Tokio {
                base_ms,
                base: tokio::time::Instant::now(),
                rt: tokio::runtime::Handle::current(),
            },
        }
    }

    pub fn now_ms(&self) -> UnixMs {
        match &self.kind {
            Kind::System => system_now_ms(),
            Kind::Tokio { base_ms, base, rt } => {
                let _in = rt.enter();
                base_ms
                    + tokio::time::Instant::now()
                        .duration_since(*base)
                        .as_millis() as i64
            }
        }
    }
}

fn system_now_ms() -> UnixMs {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 text of a Unix-millisecond time (UTC, millisecond precision).
pub fn rfc3339(ms: UnixMs) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_follows_paused_time_on_any_thread() {
        let c = Clock::tokio(1_000_000);
        assert_eq!(c.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(c.now_ms(), 1_001_500);
        // A thread outside the runtime (as the collectors are) reads the same time.
        let c2 = c.clone();
        let seen = std::thread::spawn(move || c2.now_ms()).join().unwrap();
        assert_eq!(seen, 1_001_500);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(c.now_ms(), 1_004_500);
    }

    #[test]
    fn the_system_clock_is_the_wall_clock() {
        let before = system_now_ms();
        let c = Clock::system().now_ms();
        assert!(c >= before && c - before < 60_000, "{before} {c}");
    }
}
