//! Budgets for everything an unauthenticated client can make the hub do (EN 303 645 5.1-5,
//! 5.6-1; DESIGN "Failure domains and budgets"), shared by the web UI and the MQTT fronts so
//! that both follow one policy: password hashing ([`hashing`]), login throttling
//! ([`throttle`]), the password policy ([`password`]) and connection slots ([`slots`]).
#![forbid(unsafe_code)]

pub mod hashing;
pub mod password;
pub mod slots;
pub mod throttle;

pub use hashing::{Cost, HashBudget, Hasher, Limits, Refused};
pub use throttle::{Attempt, Backoff, Claim, Durable, Policy, Throttle};
