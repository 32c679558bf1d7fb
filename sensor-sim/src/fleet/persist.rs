//! The fleet's flash writes: one writer thread, one write (one fsync'd transaction) at a time
//! carrying every change staged meanwhile — records (leases first: RFC 8613 B.1.1), slot
//! blocks, outage backlog and local log — and a final write at shutdown.

use std::sync::Arc;

use protocol::oscore::Lease;
use tokio::sync::mpsc;

use super::{FleetError, FleetEvent, FleetTask};
use crate::clock;
use crate::firmware::Slots;
use crate::flash::{Flash, FlashBatch, FlashRecord};

/// The writer's input, and its reports: the (sensor, lease) pairs of each write once durable.
pub(super) type Writer =
    (Option<std::sync::mpsc::Sender<FlashBatch>>, mpsc::UnboundedReceiver<Vec<(u32, u64)>>);

/// Starts the writer thread (none without a flash file).
pub(super) fn spawn_writer(flash: Option<Arc<Flash>>) -> Result<Writer, FleetError> {
    let (done_tx, done) = mpsc::unbounded_channel();
    let Some(f) = flash else { return Ok((None, done)) };
    let (tx, rx) = std::sync::mpsc::channel::<FlashBatch>();
    std::thread::Builder::new().name("sim-flash".into()).spawn(move || {
        while let Ok(batch) = rx.recv() {
            let written = batch.records.iter().map(|(i, r)| (*i, r.lease)).collect();
            // A failed write is retried until it lands: later batches must not overtake it,
            // and the leases it carries must not be reported durable before it is.
            let mut pause = std::time::Duration::from_millis(50);
            while let Err(e) = f.write_batch(&batch) {
                tracing::error!(error = %e, retry_in_ms = pause.as_millis() as u64, "flash write failed");
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_secs(5));
            }
            if done_tx.send(written).is_err() {
                return;
            }
        }
    })?;
    Ok((Some(tx), done))
}

impl FleetTask {
    /// Sends what is staged to the writer, unless a write is in flight.
    pub(super) fn flush_flash(&mut self) {
        if self.flash_busy || (self.pending_flash.is_empty() && self.staged.is_empty()) {
            return;
        }
        let Some(tx) = &self.flash_tx else {
            // No flash file: RAM is the flash.
            self.pending_flash.clear();
            self.staged = FlashBatch::default();
            return;
        };
        let mut ids = std::mem::take(&mut self.pending_flash);
        ids.sort_unstable();
        ids.dedup();
        let records: Vec<(u32, FlashRecord)> = ids
            .iter()
            .map(|&i| {
                let s = &self.sensors[i as usize];
                let record = FlashRecord {
                    serial: s.serial.clone(),
                    model: s.model,
                    slots: s.fw.slots.clone().unwrap_or_else(|| Slots::factory(1)),
                    context: s.stored.clone(),
                    lease: s.lease,
                    exported: s.exported,
                    buffer_dropped: s.buffer.dropped(),
                    dropped_reported: s.buffer.dropped_reported(),
                };
                (i, record)
            })
            .collect();
        let staged = std::mem::take(&mut self.staged);
        let batch = FlashBatch { records, log_keep: self.config.local_log, ..staged };
        if tx.send(batch).is_ok() {
            self.flash_busy = true;
        }
    }

    /// A flash write finished: the leases it carried (not any newer ones) are now durable.
    pub(super) fn flash_durable(&mut self, written: Vec<(u32, u64)>) {
        self.flash_busy = false;
        let now = clock::now();
        for (index, lease) in written {
            let s = &mut self.sensors[index as usize];
            if std::mem::take(&mut s.announce)
                && let Some(kid) = s.kid
            {
                let serial = s.serial.clone();
                self.emit(FleetEvent::Paired { index, serial, kid });
            }
            let s = &mut self.sensors[index as usize];
            s.link.lease_durable(now, &mut self.rng, Lease(lease));
            self.service(index);
        }
        self.flush_flash();
    }

    /// Before stopping: every measurement not acknowledged becomes backlog in flash, with the
    /// drop counters, after any write in flight (so that no older record lands last).
    pub(super) async fn shutdown(&mut self) {
        for index in 0..self.sensors.len() as u32 {
            let s = &mut self.sensors[index as usize];
            s.buffer.keep_all();
            let put = s.buffer.take_unpersisted();
            self.staged.backlog_put.extend(put.into_iter().map(|(id, sample)| (index, id, sample)));
            if s.buffer.dropped() > 0 {
                self.pending_flash.push(index);
            }
        }
        loop {
            self.flush_flash();
            if !self.flash_busy {
                return;
            }
            match self.flash_done.recv().await {
                Some(written) => self.flash_durable(written),
                None => return,
            }
        }
    }
}
