//! Times as the owner reads them, with jiff: local time (the hub's time zone) to the second,
//! dates, and relative times (`3 min ago`, `in 2 h`). Public so `hub ctl` can share them.

use jiff::Timestamp;
use jiff::tz::TimeZone;

fn zoned(ts: Timestamp, format: &str) -> String {
    ts.to_zoned(TimeZone::system()).strftime(format).to_string()
}

/// Unix milliseconds as local time with seconds and the zone: `2026-12-04 19:30:05 CET`.
pub fn local_time_ms(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => zoned(ts, "%Y-%m-%d %H:%M:%S %Z"),
        Err(_) => ms.to_string(),
    }
}

/// Unix seconds as local time with seconds and the zone.
pub fn local_time(unix_s: u64) -> String {
    local_time_ms(i64::try_from(unix_s.saturating_mul(1000)).unwrap_or(i64::MAX))
}

/// Unix milliseconds as the local time of day: `19:30:05`.
pub fn clock_ms(ms: i64) -> String {
    match Timestamp::from_millisecond(ms) {
        Ok(ts) => zoned(ts, "%H:%M:%S"),
        Err(_) => ms.to_string(),
    }
}

/// Unix seconds as a local date: `2026-12-04`.
pub fn local_date(unix_s: u64) -> String {
    match Timestamp::from_second(i64::try_from(unix_s).unwrap_or(i64::MAX)) {
        Ok(ts) => zoned(ts, "%Y-%m-%d"),
        Err(_) => unix_s.to_string(),
    }
}

/// How far `then_ms` is from `now_ms`, in words: `5 s ago`, `3 min ago`, `in 2 h`, `in 4 d`.
pub fn relative(then_ms: i64, now_ms: i64) -> String {
    let (s, past) = if then_ms <= now_ms {
        ((now_ms - then_ms) / 1000, true)
    } else {
        ((then_ms - now_ms).saturating_add(999) / 1000, false)
    };
    let span = match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    };
    if past { format!("{span} ago") } else { format!("in {span}") }
}

/// Local time with seconds, then how long ago (or ahead) it is: `2026-12-04 19:30:05 CET (3 min
/// ago)`.
pub fn when(unix_s: u64, now_ms: u64) -> String {
    let then = i64::try_from(unix_s.saturating_mul(1000)).unwrap_or(i64::MAX);
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    format!("{} ({})", local_time(unix_s), relative(then, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_times_have_seconds_and_relative_times_read_as_words() {
        // The zone is the machine's: compare with jiff's own conversion, and check the shape.
        let t = local_time(1_709_164_805);
        let expected = Timestamp::from_second(1_709_164_805)
            .expect("ts")
            .to_zoned(TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S")
            .to_string();
        assert!(t.starts_with(&expected), "{t} vs {expected}");
        assert_eq!(expected.len(), 19, "{expected}");
        assert!(expected.ends_with(":05"), "seconds shown: {expected}");
        assert_eq!(local_date(1_709_164_805).len(), 10);
        assert_eq!(clock_ms(1_709_164_805_000).len(), 8);
        assert_eq!(relative(0, 5_000), "5 s ago");
        assert_eq!(relative(0, 180_000), "3 min ago");
        assert_eq!(relative(7_200_000, 0), "in 2 h");
        assert_eq!(relative(0, 4 * 86_400_000), "4 d ago");
        assert!(when(10, 70_000).ends_with("(1 min ago)"));
    }
}
