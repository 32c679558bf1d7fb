//! web-ui
