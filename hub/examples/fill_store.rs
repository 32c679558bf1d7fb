//! Grows a stopped hub's store for benchmarks: appends synthetic readings for its paired
//! devices (two per measurement, as a thermostat sends them, times in the past) through the
//! normal group-commit path until the store holds the requested number.
//!
//! `cargo run --release -p hub --example fill_store -- <data dir> <readings> [segment KiB]`
//! (a small segment size makes many sealed segments from few readings: the bench's stand-in
//! for a full log, whose memory grows with segments × devices, not with bytes).

use std::path::PathBuf;
use std::time::Instant;

use hub::store::{HubStore, StoreLimits, Write};
use protocol::oscore::Kid;
use protocol::senml::{Reading, UnixTimeMillis, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(total)) = (args.next(), args.next()) else {
        return Err("usage: fill_store <data dir> <readings> [segment KiB]".into());
    };
    let dir = PathBuf::from(dir);
    let total: u64 = total.parse()?;
    let mut limits = StoreLimits::default();
    if let Some(kib) = args.next() {
        limits.segment_bytes = kib.parse::<u64>()? << 10;
    }
    let (store, _) = HubStore::open(&dir, limits)?;
    let devices: Vec<(Kid, String)> =
        store.devices()?.into_iter().map(|d| (d.id.kid(), d.about.serial)).collect();
    if devices.is_empty() {
        return Err("no paired devices in that store".into());
    }
    let have: u64 = devices.iter().map(|(k, _)| store.reading_count(k).unwrap_or(0)).sum();
    let started = Instant::now();
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    // One measurement per device per round; rounds 1 s apart, ending an hour ago.
    let rounds = total.saturating_sub(have).div_ceil(2 * devices.len() as u64);
    let first_ms = now_ms as i64 - 3_600_000 - rounds as i64 * 1000;
    let mut written = 0u64;
    let mut batch = Vec::new();
    for round in 0..rounds {
        let t = UnixTimeMillis(first_ms + round as i64 * 1000);
        for (kid, serial) in &devices {
            let v = 20.0 + (round % 100) as f64 / 10.0;
            let r = |q: &str, unit: &str, v: f64| Reading {
                name: format!("urn:dev:{serial}:{q}"),
                unit: Some(unit.into()),
                value: Value::Number(v),
                time: t,
            };
            batch.push(Write::Readings {
                kid: *kid,
                readings: vec![r("temp", "Cel", v), r("setpoint", "Cel", 21.0)],
            });
            written += 2;
            // About the size of a group commit under full load.
            if batch.len() == 1000 {
                store.commit(&batch)?;
                batch.clear();
            }
        }
    }
    store.commit(&batch)?;
    let secs = started.elapsed().as_secs_f64();
    let segments = std::fs::read_dir(dir.join("readings"))?
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "seg")))
        .count();
    println!(
        "{{\"fill_readings\":{written},\"stored_before\":{have},\"seconds\":{secs:.1},\"readings_per_s\":{:.0},\"segments\":{segments}}}",
        written as f64 / secs
    );
    Ok(())
}
