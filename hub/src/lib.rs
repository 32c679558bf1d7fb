//! The Hearth hub daemon: the I/O shell around `protocol` — the CoAP/UDP link driver, the
//! durable store, the owner's control socket, the update manager and its feed client, MQTT,
//! the upstream bridge and the owner's web UI.
#![forbid(unsafe_code)]

/// A kill point of the crash campaign (`fault::kill_point`; nothing without the
/// `fault-injection` feature).
macro_rules! kill_point {
    ($point:literal) => {
        #[cfg(feature = "fault-injection")]
        crate::fault::kill_point($point);
    };
}

pub mod api;
pub mod config;
pub mod connections;
pub mod control;
pub mod daemon;
pub mod device_id;
pub mod devices;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod feed;
pub mod identity;
pub mod isolation;
pub mod link;
pub mod logs;
pub mod mqtt;
pub mod private_fs;
pub mod render;
pub mod rng;
pub mod seclog;
pub mod store;
pub mod updates;
pub mod upstream;
pub mod web;
