//! The sensor's physical interface, standing in for a display or USB port (TR 103 621 6.23
//! ex. 2: an isolated sensor keeps recording and its data stays reachable locally): what the
//! sensor recorded, read straight from its flash — the local log and the outage backlog. It
//! needs neither the hub nor the sensor's OSCORE context, and works while the fleet is stopped.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::flash::{Flash, FlashError};
use crate::model::Model;

/// Why the dump failed.
#[derive(Debug, thiserror::Error)]
pub enum PhysicalError {
    /// Flash failed (e.g. a running fleet holds the file).
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// No such sensor.
    #[error("no sensor {0} in this flash file")]
    NoSuchSensor(String),
}

/// One recorded measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    /// The sensor's serial.
    pub serial: String,
    /// Measurement id (increasing).
    pub id: u64,
    /// When it was measured, Unix milliseconds.
    pub time_ms: i64,
    /// The same in UTC, RFC 3339.
    pub time: String,
    /// Quantity, value and unit.
    pub readings: Vec<RecordedValue>,
    /// Still waiting in the outage buffer for the hub's acknowledgement.
    pub buffered: bool,
}

/// One value of a measurement.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedValue {
    /// Quantity (`temp`, `open`, …).
    pub name: &'static str,
    /// Number (booleans as `true`/`false`).
    pub value: serde_json::Value,
    /// Unit, if any.
    pub unit: Option<&'static str>,
}

/// What a sensor shows on its physical interface.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dump {
    /// Serial.
    pub serial: String,
    /// Model.
    pub model: Model,
    /// Measurements dropped from its full outage buffer, in total.
    pub buffer_dropped: u64,
    /// Recorded measurements, oldest first.
    pub recorded: Vec<Recorded>,
}

/// Reads sensor `which` (index or serial) from `flash`.
pub fn dump(flash: &Flash, which: &str) -> Result<Dump, PhysicalError> {
    let Some((index, rec)) = flash.find(which)? else {
        return Err(PhysicalError::NoSuchSensor(which.into()));
    };
    let held = flash.measurements(index)?;
    let mut by_id = BTreeMap::new();
    for (id, sample) in held.log {
        by_id.insert(id, (sample, false));
    }
    for (id, sample) in held.backlog {
        by_id.insert(id, (sample, true));
    }
    let recorded = by_id
        .into_iter()
        .map(|(id, (sample, buffered))| Recorded {
            serial: rec.serial.clone(),
            id,
            time_ms: sample.time_ms,
            time: protocol::time::rfc3339_ms(sample.time_ms),
            readings: rec
                .model
                .quantities()
                .iter()
                .zip(sample.values)
                .map(|(q, v)| RecordedValue {
                    name: q.senml(),
                    value: if q.boolean() { (v != 0.0).into() } else { v.into() },
                    unit: q.unit().map(|u| u.senml),
                })
                .collect(),
            buffered,
        })
        .collect();
    Ok(Dump { serial: rec.serial, model: rec.model, buffer_dropped: rec.buffer_dropped, recorded })
}

impl Dump {
    /// One JSON object per measurement, oldest first.
    pub fn json_lines(&self) -> String {
        let mut out = String::new();
        for r in &self.recorded {
            out.push_str(&serde_json::to_string(r).unwrap_or_default());
            out.push('\n');
        }
        out
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let buffered = self.recorded.iter().filter(|r| r.buffered).count();
        let mut out = format!(
            "{} ({}): {} measurements recorded, {buffered} not yet acknowledged by the hub, \
             {} dropped from a full buffer\n",
            self.serial,
            self.model.designation(),
            self.recorded.len(),
            self.buffer_dropped
        );
        let _ = writeln!(out, "{:>8}  {:<24}  values", "id", "time (UTC)");
        for r in &self.recorded {
            let values: Vec<String> = r
                .readings
                .iter()
                .map(|v| match v.unit {
                    Some(u) => format!("{}={} {u}", v.name, v.value),
                    None => format!("{}={}", v.name, v.value),
                })
                .collect();
            let note = if r.buffered { "  (buffered)" } else { "" };
            let _ = writeln!(out, "{:>8}  {:<24}  {}{note}", r.id, r.time, values.join("  "));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flash::{FlashBatch, FlashRecord};
    use crate::model::Sample;

    #[test]
    fn the_dump_shows_log_and_backlog_from_flash_alone() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("flash.redb");
        let flash = Flash::open(&path).expect("flash");
        let rec = FlashRecord {
            serial: "DR-00002".into(),
            model: Model::Door,
            slots: crate::firmware::Slots::factory(1),
            context: None,
            lease: 0,
            exported: false,
            buffer_dropped: 3,
            dropped_reported: 0,
        };
        let s = |id: i64, v: f64| Sample { time_ms: 1_700_000_000_000 + id, values: [v, 97.0] };
        let batch = FlashBatch {
            records: vec![(2, rec)],
            log: vec![(2, 0, s(0, 1.0)), (2, 1, s(1, 0.0)), (2, 2, s(2, 1.0))],
            log_keep: 2,
            backlog_put: vec![(2, 2, s(2, 1.0)), (2, 3, s(3, 0.0))],
            ..FlashBatch::default()
        };
        flash.write_batch(&batch).expect("write");
        drop(flash);
        let flash = Flash::open_existing(&path).expect("reopen");
        let d = dump(&flash, "DR-00002").expect("dump");
        let ids: Vec<(u64, bool)> = d.recorded.iter().map(|r| (r.id, r.buffered)).collect();
        assert_eq!(ids, [(1, false), (2, true), (3, true)], "log of 2 plus the backlog");
        assert_eq!(d.recorded[0].readings[0].value, serde_json::Value::Bool(false));
        assert_eq!(d.buffer_dropped, 3);
        assert_eq!(d.json_lines().lines().count(), 3);
        assert!(d.table().contains("open=true  battery=97.0 %EL  (buffered)"), "{}", d.table());
        assert!(matches!(dump(&flash, "nope"), Err(PhysicalError::NoSuchSensor(_))));
        assert_eq!(dump(&flash, "2").expect("by index").serial, "DR-00002");
    }
}
