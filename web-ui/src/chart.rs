//! Server-rendered SVG charts of a device's main quantity (never its battery) with a time axis:
//! a line for measurements, steps for states (open/closed) labelled in words.

use std::fmt::Write as _;

use maud::{Markup, html};

use crate::api::{Reading, ReadingKind};
use crate::html::main_quantity;
use crate::time::clock_ms;

/// The chart of the device's main quantity (the first of `last` that is not its battery),
/// drawn from `readings` (oldest first).
pub(crate) fn chart_of(readings: &[Reading], last: &[Reading], width: u32, height: u32) -> Markup {
    let Some(main) = main_quantity(last) else { return not_enough() };
    let same: Vec<&Reading> = readings.iter().filter(|r| r.name == main.name).collect();
    chart(&same, width, height)
}

fn not_enough() -> Markup {
    html! { span.muted { "not enough readings for a chart" } }
}

/// An SVG chart of the numeric readings (oldest first), or a note when there are fewer than two.
pub(crate) fn chart(readings: &[&Reading], width: u32, height: u32) -> Markup {
    let points: Vec<(i64, f64)> = readings
        .iter()
        .filter_map(|r| r.value.filter(|v| v.is_finite()).map(|v| (r.time_ms, v)))
        .collect();
    let (Some(first), Some(newest)) = (points.first(), points.last()) else { return not_enough() };
    if points.len() < 2 {
        return not_enough();
    }
    let state = readings.last().is_some_and(|r| r.kind == ReadingKind::State);
    let (t0, t1) = (first.0, newest.0);
    let (lo, hi) = if state {
        (0.0, 1.0)
    } else {
        points
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)))
    };
    let span_t = (t1 - t0).max(1) as f64;
    let span_v = if hi > lo { hi - lo } else { 1.0 };
    // Room at the bottom for the time axis, at the left for the value labels.
    let (w, h, left, pad, axis) = (f64::from(width), f64::from(height), 34.0, 4.0, 12.0);
    let x = |t: i64| left + (t - t0) as f64 / span_t * (w - left - pad);
    let y = |v: f64| h - axis - pad - (v - lo) / span_v * (h - axis - 2.0 * pad);
    let mut path = String::new();
    let mut previous: Option<f64> = None;
    for (t, v) in &points {
        if let (true, Some(p)) = (state, previous) {
            // A state holds until it changes: a step, not a slope.
            let _ = write!(path, " {:.1},{:.1}", x(*t), y(p));
        }
        let sep = if path.is_empty() { "" } else { " " };
        let _ = write!(path, "{sep}{:.1},{:.1}", x(*t), y(*v));
        previous = Some(*v);
    }
    let newest_reading = readings.last();
    let unit = newest_reading.and_then(|r| r.unit.clone()).unwrap_or_default();
    let word = |v: f64| {
        readings.iter().find(|r| r.value == Some(v)).map(|r| r.text.clone()).unwrap_or_default()
    };
    let (top, bottom) =
        if state { (word(1.0), word(0.0)) } else { (format!("{hi:.1}"), format!("{lo:.1}")) };
    let name = newest_reading.map(|r| crate::html::reading_label(r).to_owned()).unwrap_or_default();
    let (from, to) = (clock_ms(t0), clock_ms(t1));
    let label = if state {
        format!("{name}: {} readings from {from} to {to}", points.len())
    } else {
        format!("{name}: {} readings from {from} to {to}, {lo:.1} to {hi:.1} {unit}", points.len())
    };
    let axis_y = height.saturating_sub(2);
    html! {
        svg.chart viewBox={ "0 0 " (width) " " (height) } width=(width) height=(height)
            role="img" aria-label=(label) data-chart=(name) {
            title { (label) }
            polyline fill="none" stroke="#c2410c" stroke-width="1.5" points=(path) {}
            text x="2" y="10" font-size="9" fill="#555" { (top) }
            text x="2" y=(height.saturating_sub(axis as u32 + 2)) font-size="9" fill="#555" { (bottom) }
            text x=(left as u32) y=(axis_y) font-size="9" fill="#555" data-axis="from" { (from) }
            text x=(width.saturating_sub(2)) y=(axis_y) font-size="9" fill="#555"
                text-anchor="end" data-axis="to" { (to) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(t: i64, v: f64, kind: ReadingKind, text: &str, name: &str) -> Reading {
        Reading {
            time_ms: t,
            name: name.into(),
            label: name.into(),
            unit: Some("°C".into()),
            value: Some(v),
            text: text.into(),
            kind,
        }
    }

    #[test]
    fn a_line_scales_its_points_and_has_a_time_axis() {
        let (a, b) = (
            r(0, 10.0, ReadingKind::Measure, "10", "t"),
            r(1000, 20.0, ReadingKind::Measure, "20", "t"),
        );
        let svg = chart(&[&a, &b], 134, 62).into_string();
        assert!(svg.contains("points=\"34.0,46.0 130.0,4.0\""), "{svg}");
        assert!(svg.contains(&format!("data-axis=\"from\">{}<", clock_ms(0))), "{svg}");
        assert!(svg.contains(&format!("data-axis=\"to\">{}<", clock_ms(1000))), "{svg}");
        assert!(chart(&[&a], 100, 50).into_string().contains("not enough"));
    }

    #[test]
    fn states_are_steps_labelled_in_words_and_the_battery_is_not_charted() {
        let door = [
            r(0, 0.0, ReadingKind::State, "closed", "open"),
            r(1000, 1.0, ReadingKind::State, "open", "open"),
        ];
        let battery = r(500, 90.0, ReadingKind::Battery, "90", "battery");
        let mut all = vec![door[0].clone(), battery.clone(), door[1].clone()];
        let svg = chart_of(&all, &[battery.clone(), door[1].clone()], 134, 62).into_string();
        // Two points and the step between them: three coordinates.
        let points = svg.split("points=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("");
        assert_eq!(points.split(' ').count(), 3, "{svg}");
        assert!(svg.contains(">open<") && svg.contains(">closed<"), "{svg}");
        assert!(!svg.contains("90"), "no battery value on the door's chart: {svg}");
        all.retain(|r| r.kind == ReadingKind::Battery);
        assert!(chart_of(&all, &[battery], 134, 62).into_string().contains("not enough"));
    }
}
