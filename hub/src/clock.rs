//! The hub's wall clock and its one date formatter (jiff): Unix time for the protocol core's
//! checks, availability and records, and local dates and times for people.

use protocol::time::UnixTime;

/// Wall-clock time in Unix milliseconds (last seen, availability, login records).
pub(crate) fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Wall-clock time in Unix seconds, for the protocol core's time-dependent checks.
pub(crate) fn unix_now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    )
}

/// Unix milliseconds in the local time zone (`2026-12-04 19:30:05`).
pub(crate) fn local_time(ms: i64) -> String {
    let Ok(ts) = jiff::Timestamp::from_millisecond(ms) else { return ms.to_string() };
    ts.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S").to_string()
}

/// Unix seconds as a local date (`2026-12-04`).
pub(crate) fn local_date(s: u64) -> String {
    let Ok(ts) =
        i64::try_from(s).map_err(drop).and_then(|s| jiff::Timestamp::from_second(s).map_err(drop))
    else {
        return s.to_string();
    };
    ts.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_formats_have_their_shape() {
        // The system zone decides the digits; the shape is always the same.
        assert_eq!(local_time(0).len(), "1970-01-01 00:00:00".len());
        assert_eq!(local_date(1_800_000_000).len(), "2027-01-15".len());
        assert!(unix_now().0 > 1_700_000_000 && unix_now_ms() > 1_700_000_000_000);
    }
}
