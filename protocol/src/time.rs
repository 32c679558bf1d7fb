//! Time as an input: the caller passes wall-clock time in; this crate never reads a clock.

/// Seconds since the Unix epoch (UTC), as given by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);

/// Monotonic milliseconds since an arbitrary origin, as given by the caller (a virtual clock in
/// tests, `tokio::time::Instant` in the hub).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + ms`, saturating.
    pub fn plus(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}
