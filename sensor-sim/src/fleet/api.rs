//! The fleet's interface: its configuration and faults, the events it reports, its status, and
//! the handle that sends it commands.

use std::net::SocketAddr;
use std::path::PathBuf;

use protocol::netsim::Faults;
use protocol::oscore::Kid;
use protocol::time::Millis;
use tokio::sync::{mpsc, oneshot};

use super::update::CutPoint;
use crate::buffer::BufferConfig;
use crate::clock;
use crate::flash::FlashError;
use crate::model::Model;

/// Faults the fleet injects on its side of the network.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimFaults {
    /// Loss, duplication, delay and reordering, both directions.
    pub net: Faults,
    /// Probability that a copy of an outgoing datagram with one byte flipped is sent too.
    pub tamper: f64,
    /// Probability that an outgoing datagram is sent again later (a replay).
    pub replay: f64,
}

impl SimFaults {
    /// No faults.
    pub fn none() -> Self {
        Self { net: Faults::none(0), tamper: 0.0, replay: 0.0 }
    }

    pub(super) fn active(&self) -> bool {
        self.net != Faults::none(0) || self.tamper > 0.0 || self.replay > 0.0
    }
}

/// How to build a fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// The hub's CoAP address.
    pub hub: SocketAddr,
    /// Number of sensors (models cycle through `models`, or the standard ones if it is empty: [`Model::standard`]).
    pub sensors: u32,
    /// UDP sockets shared by the sensors.
    pub sockets: usize,
    /// The local address the fleet's sockets bind to (`None`: the hub's address family, and on
    /// loopback the hub's own address, with ports chosen by the system). With a port, the first
    /// socket takes it and the others take ports the system chooses on that address.
    pub bind: Option<SocketAddr>,
    /// Seed for everything random in the fleet.
    pub seed: u64,
    /// Each paired sensor measures and reports this often (0: only when offered load).
    pub report_interval_ms: u64,
    /// Injected faults.
    pub faults: SimFaults,
    /// Flash file; `None` keeps state in memory only.
    pub flash: Option<PathBuf>,
    /// Sequence lease block (RFC 8613 B.1.1).
    pub lease_block: u64,
    /// Record every (key, nonce) on the wire and count reuses (tests; costs memory).
    pub audit_nonces: bool,
    /// The manufacturer keys built into sensors that verify update signatures themselves.
    pub trust: Option<protocol::update::TrustAnchors>,
    /// Models the sensors cycle through (sensor i is `models[i % len]`).
    pub models: Vec<Model>,
    /// Outage buffering and draining (TR 103 621 6.53).
    pub buffer: BufferConfig,
    /// Measurements each sensor keeps in its local log in flash (0: none), for the physical
    /// interface.
    pub local_log: u64,
    /// Longest interval between retransmissions, i.e. how often a sensor whose hub is
    /// unreachable probes for it (RFC 7252 back-off capped here; at least 2 s).
    pub probe_max_ms: u64,
    /// A refused or failed pairing is retried with a fresh key and PIN, the interval doubling
    /// from 2 s up to this (0: no automatic retry).
    pub pair_retry_max_ms: u64,
    /// Serial number of sensor 0 (sensor `i` is `<prefix>-<first_serial + i>`).
    pub first_serial: u32,
}

impl FleetConfig {
    /// A fleet of `sensors` reporting to `hub`, no faults, in memory.
    pub fn new(hub: SocketAddr, sensors: u32) -> Self {
        Self {
            hub,
            sensors,
            sockets: 4,
            bind: None,
            seed: 1,
            report_interval_ms: 0,
            faults: SimFaults::none(),
            flash: None,
            lease_block: protocol::oscore::DEFAULT_LEASE_BLOCK,
            audit_nonces: false,
            trust: None,
            models: Model::standard().collect(),
            buffer: BufferConfig::default(),
            local_log: 0,
            probe_max_ms: protocol::link::coap::MAX_BACKOFF_MS,
            pair_retry_max_ms: 16_000,
            first_serial: 0,
        }
    }
}

/// What the fleet reports.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// A sensor's display shows a pairing PIN.
    PinShown {
        /// Sensor index.
        index: u32,
        /// Serial.
        serial: String,
        /// The digits on the display.
        pin: String,
    },
    /// A sensor paired.
    Paired {
        /// Sensor index.
        index: u32,
        /// Serial.
        serial: String,
        /// Its OSCORE kid (the hub's device id).
        kid: Kid,
    },
    /// A pairing attempt failed or was refused.
    PairingFailed {
        /// Sensor index.
        index: u32,
        /// Why, in words (the hub's refusal, or what failed here).
        reason: String,
    },
    /// The sensor will try pairing again, with a fresh key and PIN.
    PairingRetry {
        /// Sensor index.
        index: u32,
        /// In how long.
        in_ms: u64,
    },
    /// The hub sent a command (inside an authenticated acknowledgement).
    Command {
        /// Sensor index.
        index: u32,
        /// What it sets.
        setting: protocol::vocabulary::Command,
        /// The value asked for.
        value: f64,
        /// The value now in effect, if the model has that quantity (clamped to its range).
        applied: Option<f64>,
    },
    /// A reading was acknowledged by the hub.
    Delivered {
        /// Sensor index.
        index: u32,
        /// The sensor's kid (device id at the hub).
        kid: Option<Kid>,
        /// Reading id.
        id: u64,
        /// The SenML time of the reading, Unix ms (with its names, its identity in the store).
        time_ms: i64,
        /// Time from measurement to acknowledgement.
        latency_us: u64,
        /// It was measured while the hub was unreachable (delivered by the drain).
        backlog: bool,
    },
    /// The hub stopped answering: the sensor buffers what it measures (in flash).
    Offline {
        /// Sensor index.
        index: u32,
        /// Measurements buffered so far.
        backlog: usize,
    },
    /// The hub answered again and the randomized wait is over: the backlog drains now.
    DrainStarted {
        /// Sensor index.
        index: u32,
        /// Measurements to drain.
        backlog: usize,
        /// The randomized wait drawn after the hub's first answer (TR 103 621 6.53 ex. 1).
        waited_ms: u64,
        /// How much later than that the drain started (scheduling delay of a busy machine).
        late_ms: u64,
    },
    /// The backlog is empty again.
    Drained {
        /// Sensor index.
        index: u32,
        /// Measurements the sensor dropped from its full buffer, in total.
        dropped: u64,
    },
    /// A sensor's link was renewed (RFC 8613 B.2: its hub was restored from a backup), or went
    /// back to its paired context to renew again (`renewed: false`).
    Renewed {
        /// Sensor index.
        index: u32,
        /// Whether the new context has an ID Context (a renewal) or not (back to the paired one).
        renewed: bool,
    },
    /// The hub refused a reading.
    Refused {
        /// Sensor index.
        index: u32,
    },
    /// Blocks of an update written so far.
    UpdateProgress {
        /// Sensor index.
        index: u32,
        /// Version being written.
        version: u32,
        /// Blocks written.
        done: u32,
        /// Blocks in the image.
        total: u32,
    },
    /// An update attempt ended (reported to the hub).
    Updated {
        /// Sensor index.
        index: u32,
        /// Version attempted.
        version: u32,
        /// Version running now.
        running: u32,
        /// Outcome.
        outcome: protocol::link::fw::Outcome,
        /// Why, for rollbacks and failures.
        reason: String,
        /// Image blocks this sensor received for this version, re-fetches included.
        blocks: u32,
    },
}

/// A summary of the fleet.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct FleetStatus {
    /// Sensors in the fleet.
    pub sensors: u32,
    /// Paired sensors.
    pub paired: u32,
    /// Readings measured.
    pub offered: u64,
    /// Offers not measured because their sensor was still sending ([`WhenBusy::Drop`]).
    pub offers_dropped: u64,
    /// Readings acknowledged.
    pub acknowledged: u64,
    /// Readings refused by the hub.
    pub refused: u64,
    /// Readings waiting in sensor buffers.
    pub queued: u64,
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams received.
    pub received: u64,
    /// Protected datagrams whose nonce was audited.
    pub nonces_audited: u64,
    /// Key/nonce pairs seen with two different ciphertexts (must stay 0).
    pub nonce_reuses: u64,
    /// Sensors that consider their hub unreachable.
    pub offline: u32,
    /// Sensors waiting to drain or draining.
    pub draining: u32,
    /// Backlog measurements held, in total.
    pub backlog: u64,
    /// The smallest backlog among paired sensors.
    pub backlog_min: u64,
    /// Measurements dropped from full buffers, in total.
    pub buffer_dropped: u64,
}

/// What an offered reading does at a sensor that has not had its last one acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBusy {
    /// It is measured and buffered, as a real sensor's would be (outages, backlogs).
    Buffer,
    /// It is not measured: the offer is dropped, as the plain-CoAP generator drops it, so at
    /// saturation both measure a server's capacity, not the generator's buffering.
    Drop,
}

pub(super) enum Command {
    Pair { index: u32 },
    Display { index: u32, reply: oneshot::Sender<Option<String>> },
    Measure { index: u32 },
    Offer { rate: f64, until: Millis, when_busy: WhenBusy },
    Status { reply: oneshot::Sender<FleetStatus> },
    Latencies { reply: oneshot::Sender<Vec<u64>> },
    Unpaired { reply: oneshot::Sender<Vec<u32>> },
    PowerCut { index: u32 },
    CutPowerAt { index: u32, at: CutPoint },
    Running { reply: oneshot::Sender<Vec<u32>> },
    Shutdown { reply: oneshot::Sender<()> },
}

/// Controls a running fleet.
#[derive(Debug, Clone)]
pub struct FleetHandle {
    pub(super) tx: mpsc::UnboundedSender<Command>,
}

/// Why the fleet could not start.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Flash failed.
    #[error(transparent)]
    Flash(#[from] FlashError),
    /// Sockets failed.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    /// The fleet task ended.
    #[error("the fleet has stopped")]
    Stopped,
}

impl FleetHandle {
    /// Starts pairing on sensor `index` if it is not paired (its display then shows a PIN).
    pub fn pair(&self, index: u32) {
        let _ = self.tx.send(Command::Pair { index });
    }

    /// What sensor `index`'s display shows (the PIN while pairing).
    pub async fn display(&self, index: u32) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Display { index, reply }).ok()?;
        rx.await.ok().flatten()
    }

    /// Makes sensor `index` measure and report now.
    pub fn measure(&self, index: u32) {
        let _ = self.tx.send(Command::Measure { index });
    }

    /// Offers `rate` readings/s in total, round-robin over paired sensors, for `seconds`; what
    /// a sensor that is still sending does with its turn is `when_busy`.
    pub fn offer(&self, rate: f64, seconds: f64, when_busy: WhenBusy) {
        let until = clock::now().plus((seconds * 1000.0) as u64);
        let _ = self.tx.send(Command::Offer { rate, until, when_busy });
    }

    /// Cuts sensor `index`'s power: RAM is lost, flash is kept, it reboots at once.
    pub fn power_cut(&self, index: u32) {
        let _ = self.tx.send(Command::PowerCut { index });
    }

    /// Arms a power cut of sensor `index` at a step of its next update.
    pub fn cut_power_at(&self, index: u32, at: CutPoint) {
        let _ = self.tx.send(Command::CutPowerAt { index, at });
    }

    /// The firmware version each sensor runs.
    pub async fn running(&self) -> Result<Vec<u32>, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Running { reply }).map_err(|_| FleetError::Stopped)?;
        rx.await.map_err(|_| FleetError::Stopped)
    }

    /// Stops the fleet after writing every unacknowledged measurement to flash as backlog, so a
    /// restarted fleet drains it (a SIGKILL keeps only what was written by then).
    pub async fn shutdown(&self) -> Result<(), FleetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Shutdown { reply }).map_err(|_| FleetError::Stopped)?;
        rx.await.map_err(|_| FleetError::Stopped)
    }

    /// The fleet's counters.
    pub async fn status(&self) -> Result<FleetStatus, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Status { reply }).map_err(|_| FleetError::Stopped)?;
        rx.await.map_err(|_| FleetError::Stopped)
    }

    /// Indices of the sensors that are not paired.
    pub async fn unpaired(&self) -> Result<Vec<u32>, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Unpaired { reply }).map_err(|_| FleetError::Stopped)?;
        rx.await.map_err(|_| FleetError::Stopped)
    }

    /// Every acknowledgement latency so far, in microseconds (and clears them).
    pub async fn take_latencies(&self) -> Result<Vec<u64>, FleetError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Latencies { reply }).map_err(|_| FleetError::Stopped)?;
        rx.await.map_err(|_| FleetError::Stopped)
    }
}
