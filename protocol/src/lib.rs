//! Hearth's sans-IO protocol core: pairing by out-of-band PIN, the OSCORE link, counters, signed
//! manifests and SenML readings. It takes bytes, time and randomness as inputs and returns bytes
//! and events; it never touches sockets, files, clocks or a global RNG (see `clippy.toml`).
#![forbid(unsafe_code)]

mod cbor;
pub mod echo;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod hex;
pub mod link;
#[cfg(feature = "netsim")]
pub mod netsim;
pub mod oscore;
pub mod pairing;
pub mod security;
pub mod senml;
pub mod time;
pub mod update;
pub mod vocabulary;
