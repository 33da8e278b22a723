//! One notion of "now" for the whole pipeline.
//!
//! Cores never read the system clock; they take `now` as an argument. The live service
//! passes [`SystemClock`] readings, `replay` passes capture timestamps, tests pass whatever
//! they like. Times are Unix milliseconds in an `i64` so arithmetic on them is plain.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in milliseconds.
pub type UnixMs = i64;

pub trait Clock: Send + Sync {
    fn now_ms(&self) -> UnixMs;
}

#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        system_now_ms()
    }
}

pub fn system_now_ms() -> UnixMs {
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
