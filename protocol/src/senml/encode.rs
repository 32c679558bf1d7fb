//! SenML encoding: canonical CBOR (RFC 8949 §4.2.1) with shortest exact floats.

use crate::cbor::Writer;

use super::{N, Reading, T, U, V, VB, Value};

/// Encodes readings as a SenML pack: one map per reading with `n`, optional `u`, `v` or `vb`,
/// and `t` (integer seconds when whole, else the shortest exact float), keys in canonical order,
/// no base fields. Non-finite numbers are written as-is; [`super::decode()`] refuses them.
pub fn encode(readings: &[Reading]) -> Vec<u8> {
    Writer::build(|w| {
        w.array(readings.len() as u64);
        for r in readings {
            w.map(3 + u64::from(r.unit.is_some()));
            w.int(N).text(&r.name);
            if let Some(unit) = &r.unit {
                w.int(U).text(unit);
            }
            match r.value {
                Value::Number(x) => w.int(V).float(x),
                Value::Bool(b) => w.int(VB).bool(b),
            };
            w.int(T);
            let ms = r.time.0;
            if ms % 1000 == 0 {
                w.int(ms / 1000);
            } else {
                w.float(ms as f64 / 1000.0);
            }
        }
    })
}
