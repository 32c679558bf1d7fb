//! The integration tests, one binary (it links the workspace once): each module starts the real
//! executables (hub, sensor-sim, demo, aiocoap) in temporary directories.

mod adversary;
mod aiocoap_interop;
mod bad_input;
mod bad_network;
mod browser;
mod crash;
mod ctl;
mod demo;
mod disk;
mod domains;
mod factory_reset;
mod feed;
mod fleet;
mod fronts;
mod home_assistant;
mod isolation;
mod link_budgets;
mod logins;
mod mqtt;
mod mqtt_rules;
mod ops;
mod outage;
mod package;
mod pairing_flood;
mod pairing_limits;
mod pairing_owner;
mod pairing_retry;
mod readme;
mod setup_freeze;
mod store;
mod updates;
mod upgrade;
mod upstream;
mod vocabulary;
mod web;
