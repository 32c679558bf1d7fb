//! The client id the embedded broker sees for each connection, chosen so that the broker's
//! records of past clients (rumqttd keeps one per client id it has ever seen, for the life of
//! the process) stay bounded however many ids clients make up.
//!
//! - A clean session (and an empty id, which asks for one) gets `<user>~<slot>`: slots are
//!   reused once free, so there are never more of them than connections open at once. Two
//!   connections of one user with the same client id share a slot, so the newer one still
//!   takes over from the older (MQTT 3.1.1 §3.1.4).
//! - A persistent session keeps `<user>:<id>` (the broker resumes it by that id), and each
//!   user may have at most [`MAX_PERSISTENT`] such ids between restarts; a clean session with
//!   one of them goes to that id too, so that it discards the session and takes over. (The
//!   one case MQTT's takeover is missed: a persistent session whose id is open at that moment
//!   as a clean session, and was never persistent before.)
//!
//! User names have neither `:` nor `~` (A-Z a-z 0-9 . _ -), so two users' ids never meet, and
//! a slot's id (no `:`) is never a persistent session's.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Persistent-session client ids per user between restarts.
pub(crate) const MAX_PERSISTENT: usize = 16;

/// The broker id of one connection; frees its slot when dropped.
#[derive(Debug)]
pub(crate) struct BrokerId {
    pub(crate) id: String,
    release: Option<Release>,
}

/// A slot to free: the pool, the (user, id) sharing it (none for an empty id), the slot.
type Release = (Arc<Mutex<Inner>>, Option<(String, String)>, u32);

impl Drop for BrokerId {
    fn drop(&mut self) {
        let Some((inner, key, slot)) = self.release.take() else { return };
        let mut inner = lock(&inner);
        match key {
            Some(key) => {
                let Some(e) = inner.clean.get_mut(&key) else { return };
                e.1 -= 1;
                if e.1 == 0 {
                    inner.clean.remove(&key);
                    inner.free.push(slot);
                }
            }
            None => inner.free.push(slot),
        }
    }
}

/// Too many persistent-session client ids for one user.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooManyPersistent;

#[derive(Debug, Default)]
struct Inner {
    /// Clean sessions with an id: (user, id) → (slot, connections using it).
    clean: HashMap<(String, String), (u32, u32)>,
    /// Slots no connection uses.
    free: Vec<u32>,
    /// Slots handed out so far.
    slots: u32,
    /// Persistent-session ids per user.
    persistent: HashMap<String, HashSet<String>>,
}

/// The ids handed out (shared by the front's connections).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientIds {
    inner: Arc<Mutex<Inner>>,
}

impl ClientIds {
    /// The broker id for client id `id` of `user`.
    pub(crate) fn assign(
        &self,
        user: &str,
        id: &str,
        clean_session: bool,
    ) -> Result<BrokerId, TooManyPersistent> {
        let mut inner = lock(&self.inner);
        let known = inner.persistent.get(user).is_some_and(|ids| ids.contains(id));
        if !id.is_empty() && (known || !clean_session) {
            if !known {
                let ids = inner.persistent.entry(user.to_owned()).or_default();
                if ids.len() >= MAX_PERSISTENT {
                    return Err(TooManyPersistent);
                }
                ids.insert(id.to_owned());
            }
            return Ok(BrokerId { id: format!("{user}:{id}"), release: None });
        }
        let key = (!id.is_empty()).then(|| (user.to_owned(), id.to_owned()));
        let shared = key.as_ref().and_then(|k| inner.clean.get_mut(k)).map(|e| {
            e.1 += 1;
            e.0
        });
        let slot = match shared {
            Some(slot) => slot,
            None => {
                let slot = inner.free.pop().unwrap_or_else(|| {
                    inner.slots += 1;
                    inner.slots - 1
                });
                if let Some(k) = &key {
                    inner.clean.insert(k.clone(), (slot, 1));
                }
                slot
            }
        };
        drop(inner);
        Ok(BrokerId {
            id: format!("{user}~{slot}"),
            release: Some((self.inner.clone(), key, slot)),
        })
    }

    /// Slots handed out so far (at most the most connections ever open at once).
    #[cfg(test)]
    fn slots(&self) -> u32 {
        lock(&self.inner).slots
    }
}

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_sessions_reuse_slots_and_a_shared_id_shares_one() {
        let ids = ClientIds::default();
        // A thousand clients, one after the other, each with an id of its own or none.
        for i in 0..1000 {
            let own = format!("mosq-{i}");
            let a = ids.assign("ha", if i % 2 == 0 { &own } else { "" }, true).expect("id");
            assert_eq!(a.id, "ha~0");
        }
        assert_eq!(ids.slots(), 1, "the broker saw one id");
        // Open at once: distinct slots, except the same id of the same user (takeover).
        let a = ids.assign("ha", "x", true).expect("id");
        let b = ids.assign("ha", "x", true).expect("id");
        let c = ids.assign("ha", "", true).expect("id");
        let d = ids.assign("ha", "", true).expect("id");
        let e = ids.assign("nodered", "x", true).expect("id");
        assert_eq!(a.id, b.id);
        let distinct: HashSet<&str> = [&a, &c, &d, &e].iter().map(|x| x.id.as_str()).collect();
        assert_eq!(distinct.len(), 4);
        assert!(e.id.starts_with("nodered~"));
        // The shared slot is free only once both connections have ended.
        drop(a);
        let f = ids.assign("ha", "y", true).expect("id");
        assert_ne!(f.id, b.id);
        drop(b);
        let g = ids.assign("ha", "z", true).expect("id");
        assert_eq!(ids.slots(), 5, "a/b, c, d, e, f; g reuses a/b's");
        drop((c, d, e, f, g));
    }

    #[test]
    fn persistent_sessions_keep_their_id_and_are_bounded_per_user() {
        let ids = ClientIds::default();
        for i in 0..MAX_PERSISTENT {
            let id = ids.assign("ha", &format!("p{i}"), false).expect("id");
            assert_eq!(id.id, format!("ha:p{i}"));
        }
        assert_eq!(ids.assign("ha", "one-more", false).unwrap_err(), TooManyPersistent);
        // Known ids still connect, persistent or clean (which discards the session there).
        assert_eq!(ids.assign("ha", "p3", false).expect("id").id, "ha:p3");
        assert_eq!(ids.assign("ha", "p3", true).expect("id").id, "ha:p3");
        // Clean sessions and other users are not limited by it.
        assert!(ids.assign("ha", "fresh", true).expect("id").id.starts_with("ha~"));
        // Another user cannot name ha's ids: the prefix up to `:` or `~` is the user's.
        assert_eq!(ids.assign("mal", "lory:x", false).expect("id").id, "mal:lory:x");
        assert_ne!(ids.assign("mallory", "x", false).expect("id").id, "mal:lory:x");
        assert_eq!(ids.assign("mallory", "~0", false).expect("id").id, "mallory:~0");
        assert_eq!(ids.assign("nodered", "p0", false).expect("id").id, "nodered:p0");
    }
}
