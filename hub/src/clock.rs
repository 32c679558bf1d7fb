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

/// A date or time as people write it — a local date (its midnight), a local date and time, an
/// RFC 3339 time with its offset, or Unix seconds — as Unix seconds; `None` if it is none of
/// these.
pub(crate) fn parse_local(text: &str) -> Option<u64> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse().ok();
    }
    let tz = jiff::tz::TimeZone::system();
    let at = if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        ts
    } else if let Ok(dt) = t.parse::<jiff::civil::DateTime>() {
        dt.to_zoned(tz).ok()?.timestamp()
    } else if let Ok(d) = t.parse::<jiff::civil::Date>() {
        d.to_zoned(tz).ok()?.timestamp()
    } else {
        return None;
    };
    u64::try_from(at.as_second()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_times_offsets_and_unix_seconds_are_parsed() {
        assert_eq!(parse_local("1800000000"), Some(1_800_000_000));
        assert_eq!(parse_local("2027-01-15T08:30:00Z"), Some(1_800_001_800));
        assert_eq!(parse_local("2027-01-15T09:30:00+01:00"), Some(1_800_001_800));
        // Local times: a date is its midnight, a time is that minute (here, in whatever zone).
        let date = parse_local("2027-01-15").expect("date");
        let time = parse_local("2027-01-15 18:00").expect("time");
        assert_eq!(time - date, 18 * 3600);
        assert_eq!(parse_local("next tuesday"), None);
        assert_eq!(parse_local("2027-13-01"), None);
    }

    #[test]
    fn local_formats_have_their_shape() {
        // The system zone decides the digits; the shape is always the same.
        assert_eq!(local_time(0).len(), "1970-01-01 00:00:00".len());
        assert_eq!(local_date(1_800_000_000).len(), "2027-01-15".len());
        assert!(unix_now().0 > 1_700_000_000 && unix_now_ms() > 1_700_000_000_000);
    }
}
