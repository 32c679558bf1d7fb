//! Budgets for everything an unauthenticated client can make the hub do (EN 303 645 5.1-5,
//! 5.6-1; DESIGN "Failure domains and budgets"), shared by the web UI and the MQTT fronts so
//! that both follow one policy: password hashing, login throttling and connection slots.
#![forbid(unsafe_code)]

pub mod slots;
