//! Router tests (later).
