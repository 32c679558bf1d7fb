//! Wall and monotonic time for the simulator's I/O shell (the protocol core takes time as input).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use protocol::time::{Millis, UnixTime};

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Monotonic milliseconds since the process started (never 0, which means "unset").
pub fn now() -> Millis {
    Millis(origin().elapsed().as_millis() as u64 + 1)
}

/// Monotonic microseconds since the process started (for latencies finer than [`now`]).
pub fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

/// The monotonic instant of `m`.
pub fn instant(m: Millis) -> Instant {
    origin() + std::time::Duration::from_millis(m.0.saturating_sub(1))
}

/// Wall-clock seconds since the epoch.
pub fn unix_now() -> UnixTime {
    UnixTime(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0))
}

/// Wall-clock milliseconds since the epoch.
pub fn unix_millis() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
