//! Simulated Hearth sensors: models with displays, persisted "flash", outage buffers, fleets of
//! thousands of sensors on a few sockets with one deadline heap, fault injection, the physical
//! interface, the load generator, the outage and MQTT latency benchmarks, and the aiocoap
//! context export.
#![forbid(unsafe_code)]

pub mod buffer;
pub mod clock;
pub mod ctl;
pub mod export;
pub mod firmware;
pub mod flash;
pub mod fleet;
pub mod load;
pub mod maker;
pub mod model;
pub mod mqtt_bench;
pub mod net;
pub mod outage;
pub mod physical;
