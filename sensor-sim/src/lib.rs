//! sensor-sim
