//! Measuring and reporting through each sensor's outage buffer (TR 103 621 6.51–6.53): every
//! measurement goes to the local log and the buffer; the buffer's packs go to the link one at a
//! time (SenML, several measurements per pack when draining, plus the drop counter as a record
//! named `urn:dev:<serial>:buffer_dropped`, unit `count`); acknowledgements leave the buffer;
//! backlog is written to flash.

use protocol::link::coap::MAX_DATAGRAM;
use protocol::senml::{self, Reading, UnixTimeMillis, Value};
use protocol::time::Millis;
use protocol::vocabulary::Quantity;

use super::{FleetEvent, FleetTask};
use crate::buffer::{BufferEvent, Pack};
use crate::clock;
use crate::model::{self, Model, Sample};

/// SenML bytes a pack may take: a datagram less CoAP, OSCORE and inner-option overhead (an
/// Echo option included).
const PACK_BUDGET: usize = MAX_DATAGRAM - 180;
/// Records per pack the hub accepts.
const MAX_RECORDS: usize = 64;

/// Measurements of `model` that fit in one pack with the drop counter, at worst-case encoding
/// sizes (64-bit floats for every value and time).
pub(super) fn per_pack(model: Model, serial: &str) -> usize {
    let worst = Sample { time_ms: 1_700_000_000_001, values: [0.1, 0.1] };
    let one = senml::encode(&model::readings(model, serial, &worst)).len();
    let drop = senml::encode(&[drop_record(serial, u64::MAX, worst.time_ms)]).len();
    let records = model.quantities().len().max(1);
    // Array headers take up to 3 bytes.
    let by_size = PACK_BUDGET.saturating_sub(drop + 3) / one.max(1);
    by_size.min((MAX_RECORDS - 1) / records).max(1)
}

/// The drop counter as a reading: total measurements dropped so far.
fn drop_record(serial: &str, dropped: u64, time_ms: i64) -> Reading {
    Reading {
        name: Quantity::BufferDropped.record_name(serial),
        unit: Quantity::BufferDropped.unit().map(|u| u.senml.to_owned()),
        value: Value::Number(dropped as f64),
        time: UnixTimeMillis(time_ms),
    }
}

/// A pack as SenML: its measurements in order, then the drop counter (at the last one's time).
fn encode(model: Model, serial: &str, pack: &Pack) -> Vec<u8> {
    let mut readings: Vec<Reading> =
        pack.entries.iter().flat_map(|e| model::readings(model, serial, &e.sample)).collect();
    if let (Some(d), Some(last)) = (pack.dropped, pack.entries.last()) {
        readings.push(drop_record(serial, d, last.sample.time_ms));
    }
    senml::encode(&readings)
}

impl FleetTask {
    /// One measurement: into the local log and the buffer (the oldest may be dropped).
    pub(super) fn measure(&mut self, index: u32) {
        let Some(s) = self.sensors.get_mut(index as usize) else { return };
        if !s.link.is_paired() {
            return;
        }
        let sample = s.env.sample(&mut self.rng, clock::unix_millis());
        let id = s.next_id;
        s.next_id += 1;
        if let Some(gone) = s.buffer.push(id, sample, clock::now_us()) {
            if gone.persisted {
                self.staged.backlog_del.push((index, gone.id));
            }
            self.pending_flash.push(index); // the drop counter
        }
        if self.config.local_log > 0 {
            self.staged.log.push((index, id, sample));
        }
        self.status.offered += 1;
        self.service(index);
    }

    /// Notices an outage or the end of the randomized wait; writes new backlog to flash.
    pub(super) fn check_buffer(&mut self, index: u32, now: Millis) {
        let s = &mut self.sensors[index as usize];
        if let Some(e) = s.buffer.check(now, s.link.last_answer()) {
            self.buffer_event(index, e);
        }
        let s = &mut self.sensors[index as usize];
        let put = s.buffer.take_unpersisted();
        if self.flash.is_some() {
            self.staged.backlog_put.extend(put.into_iter().map(|(id, sample)| (index, id, sample)));
        }
    }

    /// Hands the buffer's next pack to the link when the link has none.
    pub(super) fn feed(&mut self, index: u32, now: Millis) {
        let s = &mut self.sensors[index as usize];
        if !s.link.is_paired() || s.link.queued() > 0 {
            return;
        }
        let Some(pack) = s.buffer.poll_pack(now, s.per_pack) else { return };
        let payload = encode(s.model, &s.serial, &pack);
        s.link.queue_reading(now, &mut self.rng, pack.id, payload);
    }

    /// The hub answered a pack: acknowledged (`accepted`) or, authenticated, refused.
    pub(super) fn on_answer(&mut self, index: u32, pack: u64, accepted: bool, now: Millis) {
        let s = &mut self.sensors[index as usize];
        let reported = s.buffer.dropped_reported();
        let answered = s.buffer.on_answer(now, &mut self.rng, pack);
        if s.buffer.dropped_reported() != reported {
            self.pending_flash.push(index);
        }
        let (kid, now_us, unix_ms) = (s.kid, clock::now_us(), clock::unix_millis());
        for e in answered.entries {
            if e.persisted {
                self.staged.backlog_del.push((index, e.id));
            }
            if !accepted {
                self.status.refused += 1;
                self.emit(FleetEvent::Refused { index });
                continue;
            }
            self.status.acknowledged += 1;
            let latency_us = match e.measured_us {
                Some(at) => now_us.saturating_sub(at),
                None => unix_ms.saturating_sub(e.sample.time_ms).max(0) as u64 * 1000,
            };
            self.latencies.push(latency_us);
            let (id, time_ms, backlog) = (e.id, e.sample.time_ms, e.backlog);
            self.emit(FleetEvent::Delivered { index, kid, id, time_ms, latency_us, backlog });
        }
        if let Some(e) = answered.event {
            self.buffer_event(index, e);
        }
    }

    fn buffer_event(&mut self, index: u32, e: BufferEvent) {
        self.emit(match e {
            BufferEvent::Offline { backlog } => FleetEvent::Offline { index, backlog },
            BufferEvent::DrainStarts { backlog, waited_ms, late_ms } => {
                FleetEvent::DrainStarted { index, backlog, waited_ms, late_ms }
            }
            BufferEvent::Drained { dropped } => FleetEvent::Drained { index, dropped },
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_pack_fits_one_datagram_and_the_hubs_record_limit() {
        for model in Model::ALL {
            let serial = format!("{}-99999", model::prefix(model));
            let n = per_pack(model, &serial);
            assert!(n >= 8, "{model:?}: only {n} per pack");
            let entries = (0..n as u64)
                .map(|id| crate::buffer::Entry {
                    id,
                    sample: Sample { time_ms: 1_700_000_000_001 + id as i64, values: [0.1, 0.1] },
                    backlog: true,
                    persisted: false,
                    measured_us: None,
                })
                .collect();
            let pack = Pack { id: 0, entries, dropped: Some(u64::MAX) };
            let bytes = encode(model, &serial, &pack);
            assert!(bytes.len() <= PACK_BUDGET, "{model:?}: {} bytes", bytes.len());
            let limits = senml::Limits::with_now(protocol::time::UnixTime(1_700_000_100));
            let decoded = senml::decode(&bytes, &limits, protocol::time::UnixTime(1_700_000_100))
                .expect("the hub's decoder accepts it");
            assert_eq!(decoded.len(), n * model.quantities().len() + 1);
            assert!(decoded.len() <= MAX_RECORDS);
            let last = decoded.last().expect("drop record");
            assert_eq!(last.name, format!("urn:dev:{serial}:buffer_dropped"));
            assert_eq!(last.unit.as_deref(), Some("count"));
        }
    }
}
