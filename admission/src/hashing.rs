//! One budget for all password hashing in a process, shared by the web UI and MQTT (DESIGN
//! "Failure domains and budgets"; EN 303 645 5.1-5 wants a costly hash, and an unauthenticated
//! client must not turn that cost against the hub): at most `slots` argon2id computations run at
//! once, each in the memory of its slot (19 MiB with the default cost) — handed on to a caller
//! that waits, freed when none does, so at most `slots` exist at once and a burst cannot grow
//! the heap, and an idle hub does not hold them — at most `queue` callers wait, and any other
//! caller is refused at once with [`Refused::Shed`] for it to count.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The argon2id cost of new hashes (one lane).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
}

impl Cost {
    /// OWASP's argon2id recommendation, also argon2's default: 19 MiB, 2 passes, 1 lane.
    pub const OWASP: Cost = Cost { m_kib: 19 * 1024, t: 2 };

    fn params(self) -> Result<Params, HashError> {
        Params::new(self.m_kib, self.t, 1, None).map_err(|_| HashError::Params)
    }
}

impl Default for Cost {
    fn default() -> Self {
        Self::OWASP
    }
}

/// How much hashing may happen at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Hashes computed at once (each holds one block of the cost's memory).
    pub slots: usize,
    /// Callers waiting for a slot at most; further ones are shed at once.
    pub queue: usize,
    /// A waiting caller is shed after this long.
    pub max_wait: Duration,
}

impl Default for Limits {
    /// One slot (19 MiB; about 15 ms per hash on the reference machine, ≈ 65 logins/s, far
    /// above what a home's owner and automations need) and a queue of 8.
    fn default() -> Self {
        Self { slots: 1, queue: 8, max_wait: Duration::from_secs(10) }
    }
}

/// Why hashing work was not done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every slot is busy and the queue is full (or the wait was too long): counted by the
    /// budget, to be counted as a security event by the caller.
    #[error("the hub is busy checking other passwords; try again in a few seconds")]
    Shed,
    /// The work stopped without an answer (the runtime is shutting down).
    #[error("the password check was interrupted")]
    Interrupted,
}

/// Why a hash could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The cost parameters are out of argon2's bounds.
    #[error("password hashing parameters are invalid")]
    Params,
    /// The operating system's random generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// What the budget has done (for tests and diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Slots in use.
    pub running: usize,
    /// Callers waiting for a slot.
    pub waiting: usize,
    /// Callers refused since start.
    pub shed: u64,
    /// Work done since start.
    pub done: u64,
    /// Slot memories allocated now (never more than the slots; none while nobody hashes).
    pub memories: usize,
}

/// The hashing budget; clones share it.
#[derive(Clone)]
pub struct HashBudget {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for HashBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashBudget")
            .field("limits", &self.shared.limits)
            .field("cost", &self.shared.cost)
            .field("stats", &self.stats())
            .finish()
    }
}

struct Shared {
    limits: Limits,
    cost: Cost,
    params: Params,
    /// Argon2 blocks (1 KiB each) in one slot's memory.
    blocks: usize,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Memories not in use.
    pool: Mutex<Vec<Vec<Block>>>,
    memories: AtomicUsize,
    shed: AtomicU64,
    done: AtomicU64,
}

impl HashBudget {
    /// A budget making hashes of `cost` under `limits` (at least one slot).
    pub fn new(limits: Limits, cost: Cost) -> Result<Self, HashError> {
        let params = cost.params()?;
        let limits = Limits { slots: limits.slots.max(1), ..limits };
        Ok(Self {
            shared: Arc::new(Shared {
                blocks: params.block_count(),
                params,
                limits,
                cost,
                permits: Arc::new(Semaphore::new(limits.slots)),
                waiting: AtomicUsize::new(0),
                pool: Mutex::new(Vec::new()),
                memories: AtomicUsize::new(0),
                shed: AtomicU64::new(0),
                done: AtomicU64::new(0),
            }),
        })
    }

    /// The cost of new hashes.
    pub fn cost(&self) -> Cost {
        self.shared.cost
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            running: s.limits.slots - s.permits.available_permits(),
            waiting: s.waiting.load(Ordering::SeqCst),
            shed: s.shed.load(Ordering::SeqCst),
            done: s.done.load(Ordering::SeqCst),
            memories: s.memories.load(Ordering::SeqCst),
        }
    }

    /// Runs `work` with a [`Hasher`] on the blocking pool once a slot is free: at once, after
    /// waiting in the queue, or not at all ([`Refused::Shed`]). The slot stays taken until the
    /// work ends, even if the caller stops waiting for it.
    pub async fn run<T, F>(&self, work: F) -> Result<T, Refused>
    where
        F: FnOnce(&mut Hasher<'_>) -> T + Send + 'static,
        T: Send + 'static,
    {
        let mut slot = self.slot().await?;
        tokio::task::spawn_blocking(move || work(&mut slot.hasher()))
            .await
            .map_err(|_| Refused::Interrupted)
    }

    /// Runs `work` on the calling thread if a slot is free now (for start-up work outside the
    /// async runtime); never waits.
    pub fn run_now<T>(&self, work: impl FnOnce(&mut Hasher<'_>) -> T) -> Result<T, Refused> {
        let permit = match self.shared.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => return Err(self.shed()),
        };
        let mut slot = self.slot_with(permit);
        Ok(work(&mut slot.hasher()))
    }

    /// A PHC string with this budget's parameters that no password matches (a random output):
    /// checking a password against it costs what checking a real one costs, so an unknown user
    /// takes as long as a known one.
    pub fn decoy(&self) -> Result<String, HashError> {
        let salt = argon2::password_hash::try_generate_salt().map_err(|_| HashError::Rng)?;
        let mut out = [0u8; 32];
        for half in out.chunks_mut(16) {
            half.copy_from_slice(
                &argon2::password_hash::try_generate_salt().map_err(|_| HashError::Rng)?,
            );
        }
        phc(&self.shared.params, &salt, &out)
    }

    async fn slot(&self) -> Result<Slot, Refused> {
        let s = &self.shared;
        if let Ok(p) = s.permits.clone().try_acquire_owned() {
            return Ok(self.slot_with(p));
        }
        // Queue if there is room; the guard leaves the queue however this future ends.
        let queued = Queued::enter(&s.waiting, s.limits.queue).ok_or_else(|| self.shed())?;
        let permit =
            tokio::time::timeout(s.limits.max_wait, s.permits.clone().acquire_owned()).await;
        drop(queued);
        match permit {
            Ok(Ok(p)) => Ok(self.slot_with(p)),
            Ok(Err(_)) => Err(Refused::Interrupted),
            Err(_) => Err(self.shed()),
        }
    }

    fn slot_with(&self, permit: OwnedSemaphorePermit) -> Slot {
        let s = &self.shared;
        let memory = lock(&s.pool).pop().unwrap_or_else(|| {
            // At most one memory per slot exists: this runs only while every existing one is
            // held by another slot.
            s.memories.fetch_add(1, Ordering::SeqCst);
            vec![Block::default(); s.blocks]
        });
        Slot { memory, shared: self.shared.clone(), _permit: permit }
    }

    fn shed(&self) -> Refused {
        self.shared.shed.fetch_add(1, Ordering::SeqCst);
        Refused::Shed
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A place in the queue, left when dropped (also when the waiting future is cancelled).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Queued(waiting))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A taken slot: its permit and its memory (given back to the pool when dropped).
struct Slot {
    memory: Vec<Block>,
    shared: Arc<Shared>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    fn hasher(&mut self) -> Hasher<'_> {
        Hasher { memory: &mut self.memory, params: &self.shared.params }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.done.fetch_add(1, Ordering::SeqCst);
        let memory = std::mem::take(&mut self.memory);
        let mut pool = lock(&self.shared.pool);
        if self.shared.waiting.load(Ordering::SeqCst) > 0 {
            pool.push(memory); // for the caller that gets this slot's permit next
            return;
        }
        // Nobody waits: freed (with any a cancelled waiter left), not held while idle.
        let freed = 1 + pool.len();
        pool.clear();
        drop(pool);
        drop(memory);
        self.shared.memories.fetch_sub(freed, Ordering::SeqCst);
    }
}

/// Hashes and checks passwords in a slot's memory.
#[derive(Debug)]
pub struct Hasher<'a> {
    memory: &'a mut [Block],
    params: &'a Params,
}

impl Hasher<'_> {
    /// An argon2id PHC string for `secret` with a fresh salt and the budget's cost.
    pub fn hash(&mut self, secret: &[u8]) -> Result<String, HashError> {
        let salt = argon2::password_hash::try_generate_salt().map_err(|_| HashError::Rng)?;
        let mut out = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
            .hash_password_into_with_memory(secret, &salt, &mut out, &mut *self.memory)
            .map_err(|_| HashError::Params)?;
        phc(self.params, &salt, &out)
    }

    /// Whether `secret` matches the PHC string `phc` (argon2 with its own parameters, which
    /// must fit the slot's memory; a hash that would need more is refused, never allocated).
    pub fn verify(&mut self, secret: &[u8], phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            tracing::warn!("stored password hash unreadable");
            return false;
        };
        let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else { return false };
        let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else { return false };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let Ok(params) = Params::try_from(&parsed) else { return false };
        if params.block_count() > self.memory.len() {
            tracing::warn!(
                m_kib = params.m_cost(),
                "stored password hash needs more memory than a hashing slot has; refused"
            );
            return false;
        }
        let mut out = vec![0u8; expected.len()];
        let ok = Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(secret, salt.as_ref(), &mut out, &mut *self.memory)
            .is_ok();
        ok && bool::from(out.ct_eq(expected.as_bytes()))
    }
}

fn phc(params: &Params, salt: &[u8], out: &[u8]) -> Result<String, HashError> {
    let hash = PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|_| HashError::Params)?,
        salt: Some(Salt::new(salt).map_err(|_| HashError::Params)?),
        hash: Some(Output::new(out).map_err(|_| HashError::Params)?),
    };
    Ok(hash.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::{PasswordHasher, PasswordVerifier};

    const CHEAP: Cost = Cost { m_kib: 64, t: 1 };

    fn budget(slots: usize, queue: usize) -> HashBudget {
        let limits = Limits { slots, queue, max_wait: Duration::from_secs(30) };
        HashBudget::new(limits, CHEAP).expect("budget")
    }

    #[test]
    fn hashes_verify_here_and_with_argon2s_own_api_both_ways() {
        let b = budget(1, 0);
        let phc = b.run_now(|h| h.hash(b"correct horse")).expect("slot").expect("hash");
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(b.run_now(|h| h.verify(b"correct horse", &phc)).expect("slot"));
        assert!(!b.run_now(|h| h.verify(b"correct hors", &phc)).expect("slot"));
        assert!(Argon2::default().verify_password(b"correct horse", phc.as_str()).is_ok());
        // Hashes stored before the budget existed (argon2's own API, other parameters).
        let params = Params::new(32, 2, 1, None).expect("params");
        let old = Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password(b"old secret")
            .expect("hash")
            .to_string();
        assert!(b.run_now(|h| h.verify(b"old secret", &old)).expect("slot"));
        assert!(!b.run_now(|h| h.verify(b"old secreT", &old)).expect("slot"));
    }

    #[test]
    fn hashes_needing_more_memory_than_a_slot_and_garbage_are_refused() {
        let b = budget(1, 0);
        let big = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(128, 1, 1, None).expect("params"),
        )
        .hash_password(b"pw")
        .expect("hash")
        .to_string();
        assert!(!b.run_now(|h| h.verify(b"pw", &big)).expect("slot"), "would need 128 KiB");
        for bad in ["", "$argon2id$", "$scrypt$ln=1,r=8,p=1$c2FsdHNhbHQ$aGFzaA", "not a hash"] {
            assert!(!b.run_now(|h| h.verify(b"pw", bad)).expect("slot"), "{bad:?}");
        }
        assert_eq!(b.stats().memories, 0, "freed once nobody hashes");
    }

    #[test]
    fn a_decoy_costs_a_check_and_matches_nothing() {
        let b = budget(1, 0);
        let d = b.decoy().expect("decoy");
        assert!(d.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{d}");
        assert_ne!(d, b.decoy().expect("decoy"));
        assert!(!b.run_now(|h| h.verify(b"", &d)).expect("slot"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn excess_is_shed_at_once_the_queue_is_bounded_and_memory_is_one_block_per_slot() {
        let b = budget(2, 3);
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(Mutex::new(gate));
        let mut running = Vec::new();
        for _ in 0..5 {
            let (b, gate) = (b.clone(), gate.clone());
            running.push(tokio::spawn(async move {
                b.run(move |h| {
                    let _ = lock(&gate).recv();
                    h.hash(b"x").is_ok()
                })
                .await
            }));
        }
        // Two run, three wait: the queue is full.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while b.stats() != (Stats { running: 2, waiting: 3, shed: 0, done: 0, memories: 2 }) {
            assert!(std::time::Instant::now() < deadline, "{:?}", b.stats());
            tokio::task::yield_now().await;
        }
        // The next one is refused at once, and counted; so is a synchronous caller.
        assert_eq!(b.run(|h| h.hash(b"y")).await.err(), Some(Refused::Shed));
        assert_eq!(b.run_now(|_| ()).err(), Some(Refused::Shed));
        assert_eq!(b.stats().shed, 2);
        for _ in 0..5 {
            release.send(()).expect("release");
        }
        for r in running {
            assert_eq!(r.await.expect("task"), Ok(true));
        }
        let s = b.stats();
        assert_eq!((s.running, s.waiting, s.done, s.memories), (0, 0, 5, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_waiter_leaves_the_queue_and_a_long_wait_is_shed() {
        let limits = Limits { slots: 1, queue: 1, max_wait: Duration::from_millis(200) };
        let b = HashBudget::new(limits, CHEAP).expect("budget");
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let holder = {
            let b = b.clone();
            tokio::spawn(async move { b.run(move |_| gate.recv().is_ok()).await })
        };
        while b.stats().running == 0 {
            tokio::task::yield_now().await;
        }
        // A waiter whose caller goes away (a client that disconnected) frees its place.
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.run(|_| ()).await })
        };
        while b.stats().waiting == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(b.stats().waiting, 0);
        // A waiter that waits longer than `max_wait` is shed.
        assert_eq!(b.run(|_| ()).await.err(), Some(Refused::Shed));
        release.send(()).expect("release");
        assert_eq!(holder.await.expect("task"), Ok(true));
        assert_eq!(b.run(|_| 7).await, Ok(7));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn any_secret_verifies_against_its_own_hash_only(
            secret in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            flip in 0usize..64,
        ) {
            let b = budget(1, 0);
            let phc = b.run_now(|h| h.hash(&secret)).expect("slot").expect("hash");
            proptest::prop_assert!(b.run_now(|h| h.verify(&secret, &phc)).expect("slot"));
            let mut other = secret.clone();
            if other.is_empty() {
                other.push(0);
            } else {
                let i = flip % other.len();
                other[i] ^= 1;
            }
            proptest::prop_assert!(!b.run_now(|h| h.verify(&other, &phc)).expect("slot"));
        }
    }
}
