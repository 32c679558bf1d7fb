//! The hub–sensor link as sans-IO endpoints (quinn-proto style): datagrams, time and randomness
//! in; datagrams and events out. The hub daemon, the simulator and the test harness all drive
//! these same state machines, so what the harness proves is what runs.
//!
//! Resources (CoAP, RFC 7252): unprotected `POST /p/hello`, `/p/proof`, `/p/done` for pairing;
//! OSCORE-protected `POST /r` for SenML readings. Readings are acknowledged only after the
//! caller reports them durable (DESIGN.md, durability contract). Commands to actuators ride in
//! those acknowledgements (`command`).

pub mod coap;
pub mod command;
pub mod fw;
mod hub;
mod sensor;

pub use hub::{
    AckTicket, BucketState, CHALLENGE_SPACING_MS, ECHO_BURST, ECHO_INTERVAL_MS, ECHO_OPTION,
    ECHO_REFILL_MS, Endpoint, FAIL_BURST, FAIL_REFILL_MS, FirmwareOffer, GuardState, HubConfig,
    HubEvent, HubLink, Payload, PeerState, PinError, ROUTABILITY_LEN, ROUTABILITY_SLOT_MS,
    ROUTABLE_BURST, ROUTABLE_HOSTS, ROUTABLE_REFILL_MS, SecurityCounters, SecurityEvent, Transmit,
};
pub use sensor::{SensorEvent, SensorLink};
