//! Hearth's web UI for the owner (EN 303 645 5.1, 5.3, 5.5-1, 5.6-2, 5.10-1, 5.11, 5.12-3,
//! 5.13-1, 6): axum routes over HTTPS, server-rendered pages, one small script for live data; it
//! talks to the hub only through the [`OwnerApi`] trait it defines.
#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
mod chart;
pub mod guard;
mod html;
pub mod live;
mod pages;
mod routes;
pub mod serve;
pub mod state;
#[cfg(test)]
mod tests;
pub mod time;

pub use api::OwnerApi;
pub use auth::{Vault, setup_code};
pub use routes::router;
pub use serve::serve;
pub use state::{Clock, Web, system_clock};
