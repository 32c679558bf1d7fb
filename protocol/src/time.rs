//! Time as an input: the caller passes wall-clock time in; this crate never reads a clock. And
//! the one machine format for times that leave a device or the hub (RFC 3339, UTC).

/// Seconds since the Unix epoch (UTC), as given by the caller (a plain number in JSON).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
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

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-12-04T19:00:00.123Z`): the times
/// MQTT messages and a sensor's physical interface carry.
pub fn rfc3339_ms(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        // jiff's RFC 3339 printer with three fractional digits, always (its strftime would
        // interpret a format string at every call: one per MQTT state).
        Ok(t) => format!("{t:.3}"),
        Err(_) => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_700_000_123_456), "2023-11-14T22:15:23.456Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
