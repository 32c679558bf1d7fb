//! The Hearth hub daemon: the I/O shell around `protocol` — the CoAP/UDP link driver, the
//! durable store, the owner's command API (its control socket and `hub ctl`, the web UI, MQTT
//! all call it), the update manager and its feed checker, advisories and isolation, MQTT, the
//! upstream bridge and the owner's web UI. Only what other crates use is public.
#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

/// A kill point of the crash campaign (`fault::kill_point`; nothing without the
/// `fault-injection` feature).
macro_rules! kill_point {
    ($point:literal) => {
        #[cfg(feature = "fault-injection")]
        crate::fault::kill_point($point);
    };
}

pub mod api;
pub mod backup;
mod clock;
pub mod config;
mod connections;
mod control;
pub mod ctl;
pub mod daemon;
mod device_id;
mod devices;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod feed;
mod identity;
mod isolation;
mod link;
pub mod logs;
pub mod memory;
mod mqtt;
pub use mqtt::discovery::schema_problems;
mod private_fs;
mod render;
mod render_status;
mod rng;
mod seclog;
mod security;
pub mod store;
mod updates;
mod upstream;
mod web;
pub use web::SETUP_CODE_FILE;

#[cfg(test)]
mod layout_tests;
