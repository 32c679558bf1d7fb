//! The recipient's replay window, RFC 8613 §7.4 (window of 32) and Appendix B.1.2.
//!
//! Use is check → decrypt → commit: [`ReplayWindow::check`] only looks, and a counter is marked
//! seen by [`ReplayWindow::commit`] after the AEAD tag verified, so a forged message can never
//! burn a counter. After a restart without persisted state the window is `Unknown` and nothing is
//! accepted until an Echo exchange (RFC 9175) sets its floor.

use super::OscoreError;

/// Window size (§7.4 recommends 32 for constrained use).
pub const WINDOW: u64 = 32;

/// Durable form of a known window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// Highest Partial IV accepted.
    pub highest: u64,
    /// Bit i set: `highest - i` was accepted (bit 0 is `highest` itself).
    pub seen: u32,
}

/// Per-context replay state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayWindow {
    /// A new context: nothing received yet, any Partial IV is fresh.
    Empty,
    /// State after a restart that lost it (B.1.2): freshness must be re-established with Echo.
    Unknown,
    /// The normal state.
    Known(WindowState),
}

/// Proof that a Partial IV passed [`ReplayWindow::check`]; spend it with
/// [`ReplayWindow::commit`] once the message authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "commit only after the AEAD tag verified"]
pub struct Fresh(u64);

impl Fresh {
    /// The checked Partial IV.
    pub fn value(self) -> u64 {
        self.0
    }
}

impl ReplayWindow {
    /// Looks without changing anything: is `piv` acceptable?
    pub fn check(&self, piv: u64) -> Result<Fresh, OscoreError> {
        match self {
            Self::Empty => Ok(Fresh(piv)),
            Self::Unknown => Err(OscoreError::ReplayWindowUnknown),
            Self::Known(w) => {
                if piv > w.highest {
                    return Ok(Fresh(piv));
                }
                let age = w.highest - piv;
                if age >= WINDOW {
                    return Err(OscoreError::Replay);
                }
                if w.seen & (1u32 << age) != 0 {
                    return Err(OscoreError::Replay);
                }
                Ok(Fresh(piv))
            }
        }
    }

    /// Marks a checked, authenticated Partial IV as seen.
    pub fn commit(&mut self, fresh: Fresh) {
        let piv = fresh.0;
        *self = Self::Known(match self {
            Self::Empty | Self::Unknown => WindowState { highest: piv, seen: 1 },
            Self::Known(w) if piv > w.highest => {
                let shift = piv - w.highest;
                let seen = if shift >= WINDOW { 0 } else { w.seen << shift };
                WindowState { highest: piv, seen: seen | 1 }
            }
            Self::Known(w) => {
                let age = w.highest - piv;
                let bit = if age < WINDOW { 1u32 << age } else { 0 };
                WindowState { highest: w.highest, seen: w.seen | bit }
            }
        });
    }

    /// Sets the floor after a verified Echo exchange (B.1.2): `piv` is accepted and everything
    /// at or below it is treated as seen.
    pub fn set_floor(&mut self, piv: u64) {
        *self = Self::Known(WindowState { highest: piv, seen: u32::MAX });
    }

    /// The state to persist, if any.
    pub fn state(&self) -> Option<WindowState> {
        match self {
            Self::Known(w) => Some(*w),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// The reference: remember every accepted counter; accept iff unseen and within 32 of the
    /// highest accepted.
    #[derive(Default)]
    struct Model(BTreeSet<u64>);

    impl Model {
        fn accepts(&self, piv: u64) -> bool {
            match self.0.last() {
                None => true,
                Some(&hi) => !self.0.contains(&piv) && piv + WINDOW > hi,
            }
        }
    }

    proptest! {
        #[test]
        fn window_matches_the_set_model(
            steps in proptest::collection::vec((0u64..200, any::<bool>()), 1..400),
        ) {
            let mut w = ReplayWindow::Empty;
            let mut m = Model::default();
            for (piv, authentic) in steps {
                let verdict = w.check(piv);
                prop_assert_eq!(verdict.is_ok(), m.accepts(piv), "piv {}", piv);
                // A message that fails authentication is never committed.
                if let (Ok(fresh), true) = (verdict, authentic) {
                    w.commit(fresh);
                    m.0.insert(piv);
                }
            }
        }

        #[test]
        fn big_jumps_match_the_model(steps in proptest::collection::vec(0u64..(1 << 40), 1..100)) {
            let mut w = ReplayWindow::Empty;
            let mut m = Model::default();
            for piv in steps {
                let verdict = w.check(piv);
                prop_assert_eq!(verdict.is_ok(), m.accepts(piv));
                if let Ok(f) = verdict { w.commit(f); m.0.insert(piv); }
            }
        }
    }

    #[test]
    fn edges_of_the_window() {
        let mut w = ReplayWindow::Empty;
        w.commit(w.check(100).expect("fresh"));
        assert_eq!(w.check(100), Err(OscoreError::Replay));
        assert!(w.check(69).is_ok(), "age 31 is inside");
        assert_eq!(w.check(68), Err(OscoreError::Replay), "age 32 is outside");
        w.commit(w.check(69).expect("fresh"));
        assert_eq!(w.check(69), Err(OscoreError::Replay));
        w.commit(w.check(101).expect("fresh"));
        assert_eq!(w.check(69), Err(OscoreError::Replay), "slid out");
    }

    #[test]
    fn check_alone_changes_nothing() {
        let w = ReplayWindow::Empty;
        let _ = w.check(5);
        assert_eq!(w, ReplayWindow::Empty);
    }

    #[test]
    fn unknown_accepts_nothing_until_a_floor_is_set() {
        let mut w = ReplayWindow::Unknown;
        assert_eq!(w.check(0), Err(OscoreError::ReplayWindowUnknown));
        assert_eq!(w.check(u64::MAX >> 24), Err(OscoreError::ReplayWindowUnknown));
        w.set_floor(500);
        assert_eq!(w.check(500), Err(OscoreError::Replay));
        assert_eq!(w.check(480), Err(OscoreError::Replay));
        assert!(w.check(501).is_ok());
    }
}
