//! Time as an input: the caller passes wall-clock time in; this crate never reads a clock.

/// Seconds since the Unix epoch (UTC), as given by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnixTime(pub u64);
