//! The owner account: one-time setup code (EN 303 645 5.1-1/5.1-2), argon2id password hashes
//! kept in the hub's sealed vault (5.4-1), password rules and change (5.1-4), login throttling with
//! exponential back-off that expires (5.1-5), and sessions with per-session CSRF tokens.

use std::collections::HashMap;

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Setup-code alphabet: no 0/O or 1/I (32 symbols, so a byte's low five bits pick one evenly).
const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Symbols in a setup code (12 × 5 bits = 60 bits).
pub const CODE_LEN: usize = 12;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
/// Longest password accepted (the hash's cost must stay bounded).
pub const MAX_PASSWORD: usize = 128;
/// Passwords refused whatever their length (the most common ones of 10 or more characters).
const COMMON: &[&str] = &[
    "1234567890",
    "12345678910",
    "123456789a",
    "0987654321",
    "1q2w3e4r5t",
    "qwertyuiop",
    "1qaz2wsx3edc",
    "password123",
    "password1234",
    "passw0rd123",
    "iloveyou123",
    "administrator",
    "letmein1234",
    "welcome123",
    "qwerty12345",
    "qwerty123456",
    "abcdefghij",
    "aaaaaaaaaa",
    "changeme123",
    "hearthhearth",
    "smarthome123",
];

/// Makes a one-time setup code from `random` bytes: 12 symbols shown as `XXXX-XXXX-XXXX`.
pub fn setup_code(random: &[u8; CODE_LEN]) -> String {
    let mut out = String::with_capacity(CODE_LEN + 2);
    for (i, b) in random.iter().enumerate() {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(CODE_ALPHABET[usize::from(*b & 31)]));
    }
    out
}

/// A typed code as the hub stores it: upper case, no separators or spaces.
fn normalize_code(code: &str) -> String {
    code.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// Why an account could not be created or changed (shown to the user as is).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The setup code was wrong, or has been used.
    #[error("the setup code is not valid (it works once; after an erase a new one is printed)")]
    BadCode,
    /// An account exists already.
    #[error("the owner account exists already")]
    AccountExists,
    /// The password is refused.
    #[error("password refused: {0}")]
    WeakPassword(&'static str),
    /// The user name is refused.
    #[error("user name must be 1 to 32 letters, digits, '.', '-' or '_'")]
    BadUser,
    /// The current password did not match.
    #[error("the current password is wrong")]
    WrongPassword,
    /// Hashing failed.
    #[error("password hashing failed")]
    Hash,
}

/// Checks a new password; `code` and `user` must not be reused as one.
pub fn password_problem(password: &str, user: &str, code: Option<&str>) -> Option<&'static str> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD {
        return Some("use at least 10 characters");
    }
    if chars > MAX_PASSWORD {
        return Some("use at most 128 characters");
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Some("this is one of the most common passwords");
    }
    if lower == user.to_lowercase() {
        return Some("the password must differ from the user name");
    }
    if code.is_some_and(|c| normalize_code(password) == normalize_code(c)) {
        return Some("the password must differ from the setup code");
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Some("use at least 4 different characters");
    }
    None
}

/// Whether `user` is an acceptable account name.
pub fn valid_user(user: &str) -> bool {
    (1..=32).contains(&user.len())
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Argon2id cost (memory KiB, passes, lanes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
}

impl Default for Cost {
    /// OWASP's argon2id recommendation: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self { m_kib: 19 * 1024, t: 2 }
    }
}

fn hasher(cost: Cost) -> Result<Argon2<'static>, AuthError> {
    let params = Params::new(cost.m_kib, cost.t, 1, None).map_err(|_| AuthError::Hash)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// An argon2id PHC string for `secret`.
pub fn hash(secret: &str, cost: Cost) -> Result<String, AuthError> {
    let h = hasher(cost)?.hash_password(secret.as_bytes()).map_err(|_| AuthError::Hash)?;
    Ok(h.to_string())
}

/// Whether `secret` matches the PHC string `phc` (its own parameters are used).
pub fn verify(secret: &str, phc: &str) -> bool {
    Argon2::default().verify_password(secret.as_bytes(), phc).is_ok()
}

/// The owner's account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// User name.
    pub user: String,
    /// argon2id PHC string.
    pub hash: String,
}

/// What the web UI keeps in the hub's sealed vault.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Vault {
    /// argon2id hash of the unused one-time setup code.
    pub setup: Option<String>,
    /// The owner, once set up.
    pub owner: Option<Account>,
    /// The owner's telemetry choice (6-2/6-3; Hearth sends none either way).
    pub telemetry_consent: bool,
}

impl Vault {
    /// A first-run vault that accepts only `code` (the hub prints and writes the code itself).
    pub fn first_run(code: &str, cost: Cost) -> Result<Vec<u8>, AuthError> {
        let v = Vault { setup: Some(hash(&normalize_code(code), cost)?), ..Vault::default() };
        Ok(v.to_bytes())
    }

    /// Parses a stored vault (an unreadable one counts as empty: setup needs a fresh code).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }

    /// Serializes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether the owner account still has to be created.
    pub fn needs_setup(&self) -> bool {
        self.owner.is_none()
    }

    /// Creates the owner account with the one-time `code`, which is consumed.
    pub fn create_owner(
        &mut self,
        code: &str,
        user: &str,
        password: &str,
        cost: Cost,
    ) -> Result<(), AuthError> {
        if self.owner.is_some() {
            return Err(AuthError::AccountExists);
        }
        let Some(code_hash) = &self.setup else { return Err(AuthError::BadCode) };
        if !verify(&normalize_code(code), code_hash) {
            return Err(AuthError::BadCode);
        }
        if !valid_user(user) {
            return Err(AuthError::BadUser);
        }
        if let Some(why) = password_problem(password, user, Some(code)) {
            return Err(AuthError::WeakPassword(why));
        }
        self.owner = Some(Account { user: user.to_owned(), hash: hash(password, cost)? });
        self.setup = None;
        Ok(())
    }

    /// Checks a login.
    pub fn login(&self, user: &str, password: &str) -> bool {
        match &self.owner {
            Some(a) => {
                let name_ok: bool = a.user.as_bytes().ct_eq(user.as_bytes()).into();
                // Verify even for a wrong name so both cost the same.
                verify(password, &a.hash) & name_ok
            }
            None => false,
        }
    }

    /// Changes the owner's password.
    pub fn change_password(&mut self, old: &str, new: &str, cost: Cost) -> Result<(), AuthError> {
        let Some(a) = &mut self.owner else { return Err(AuthError::WrongPassword) };
        if !verify(old, &a.hash) {
            return Err(AuthError::WrongPassword);
        }
        if let Some(why) = password_problem(new, &a.user, None) {
            return Err(AuthError::WeakPassword(why));
        }
        if new == old {
            return Err(AuthError::WeakPassword("the new password must differ from the old one"));
        }
        a.hash = hash(new, cost)?;
        Ok(())
    }
}

/// Failed logins allowed before back-off starts (typos happen).
pub const FREE_FAILURES: u32 = 3;
/// First back-off, doubling with each further failure.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest back-off: the owner is never locked out for longer (5.1-5).
pub const BACKOFF_MAX_MS: u64 = 5 * 60_000;
/// A key with no failure for this long is forgotten.
pub const FORGET_MS: u64 = 60 * 60_000;

#[derive(Debug, Clone, Copy)]
struct Strikes {
    failures: u32,
    until_ms: u64,
    last_ms: u64,
}

/// Login throttling per key (the account, the client address): after [`FREE_FAILURES`] failures
/// each further one blocks the key for a doubling time up to [`BACKOFF_MAX_MS`].
#[derive(Debug, Default)]
pub struct Throttle {
    keys: HashMap<String, Strikes>,
}

/// Most keys tracked at once (an attacker with many addresses cannot grow memory unbounded; the
/// account key is tracked regardless, so the bound costs no protection).
const MAX_KEYS: usize = 4096;

impl Throttle {
    /// Milliseconds until `key` may try again, if it must wait.
    pub fn wait_ms(&self, key: &str, now_ms: u64) -> Option<u64> {
        self.keys.get(key).filter(|s| s.until_ms > now_ms).map(|s| s.until_ms - now_ms)
    }

    /// Records a failure.
    pub fn fail(&mut self, key: &str, now_ms: u64) {
        self.expire(now_ms);
        if self.keys.len() >= MAX_KEYS
            && !self.keys.contains_key(key)
            && let Some(oldest) =
                self.keys.iter().min_by_key(|(_, s)| s.last_ms).map(|(k, _)| k.clone())
        {
            self.keys.remove(&oldest);
        }
        let s = self.keys.entry(key.to_owned()).or_insert(Strikes {
            failures: 0,
            until_ms: 0,
            last_ms: now_ms,
        });
        s.failures = s.failures.saturating_add(1);
        s.last_ms = now_ms;
        if s.failures >= FREE_FAILURES {
            let shift = (s.failures - FREE_FAILURES).min(20);
            s.until_ms = now_ms + (BACKOFF_BASE_MS << shift).min(BACKOFF_MAX_MS);
        }
    }

    /// A successful login clears the key.
    pub fn succeed(&mut self, key: &str) {
        self.keys.remove(key);
    }

    /// Keys currently backing off.
    pub fn active(&self, now_ms: u64) -> usize {
        self.keys.values().filter(|s| s.until_ms > now_ms).count()
    }

    fn expire(&mut self, now_ms: u64) {
        self.keys.retain(|_, s| now_ms.saturating_sub(s.last_ms) < FORGET_MS);
    }
}

/// A session ends after this long without a request.
pub const SESSION_IDLE_MS: u64 = 60 * 60_000;
/// And after this long in any case.
pub const SESSION_MAX_MS: u64 = 12 * 60 * 60_000;
const MAX_SESSIONS: usize = 16;

/// A logged-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token that must come with every state change.
    pub csrf: String,
    created_ms: u64,
    seen_ms: u64,
}

/// Live sessions by cookie token.
#[derive(Debug, Default)]
pub struct Sessions {
    by_token: HashMap<String, Session>,
}

impl Sessions {
    /// Starts a session; returns nothing (the caller chose the token and CSRF token).
    pub fn insert(&mut self, token: String, csrf: String, now_ms: u64) {
        self.by_token.retain(|_, s| alive(s, now_ms));
        if self.by_token.len() >= MAX_SESSIONS
            && let Some(oldest) =
                self.by_token.iter().min_by_key(|(_, s)| s.seen_ms).map(|(k, _)| k.clone())
        {
            self.by_token.remove(&oldest);
        }
        self.by_token.insert(token, Session { csrf, created_ms: now_ms, seen_ms: now_ms });
    }

    /// The live session for `token`, marked as seen.
    pub fn touch(&mut self, token: &str, now_ms: u64) -> Option<Session> {
        let s = self.by_token.get_mut(token)?;
        if !alive(s, now_ms) {
            self.by_token.remove(token);
            return None;
        }
        s.seen_ms = now_ms;
        Some(s.clone())
    }

    /// Whether `token` is a live session (without marking it seen: a live stream must not keep
    /// an idle session alive).
    pub fn valid(&self, token: &str, now_ms: u64) -> bool {
        self.by_token.get(token).is_some_and(|s| alive(s, now_ms))
    }

    /// Ends one session.
    pub fn remove(&mut self, token: &str) {
        self.by_token.remove(token);
    }

    /// Ends every session but `keep`.
    pub fn retain_only(&mut self, keep: Option<&str>) {
        self.by_token.retain(|t, _| Some(t.as_str()) == keep);
    }
}

fn alive(s: &Session, now_ms: u64) -> bool {
    now_ms.saturating_sub(s.seen_ms) < SESSION_IDLE_MS
        && now_ms.saturating_sub(s.created_ms) < SESSION_MAX_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Cost = Cost { m_kib: 64, t: 1 };

    #[test]
    fn setup_code_is_formatted_and_used_once() {
        let code = setup_code(&[7, 200, 31, 0, 255, 9, 100, 50, 3, 4, 5, 6]);
        assert_eq!(code.len(), 14);
        assert!(code.chars().all(|c| c == '-' || CODE_ALPHABET.contains(&(c as u8))));
        let mut v = Vault::parse(&Vault::first_run(&code, CHEAP).expect("vault")).expect("parse");
        assert_eq!(
            v.create_owner("AAAA-AAAA-AAAA", "me", "correct horse", CHEAP),
            Err(AuthError::BadCode)
        );
        let weak = v.create_owner(&code, "me", &code.to_lowercase(), CHEAP);
        assert!(matches!(weak, Err(AuthError::WeakPassword(_))), "{weak:?}");
        v.create_owner(&code.to_lowercase(), "me", "correct horse", CHEAP).expect("created");
        assert!(v.setup.is_none());
        assert_eq!(
            v.create_owner(&code, "me", "correct horse", CHEAP),
            Err(AuthError::AccountExists)
        );
        assert!(v.login("me", "correct horse"));
        assert!(!v.login("me", "correct hors"));
        assert!(!v.login("you", "correct horse"));
    }

    #[test]
    fn password_rules() {
        assert!(password_problem("short", "me", None).is_some());
        assert!(password_problem("Password123", "me", None).is_some());
        assert!(password_problem("aaaaabbbbb", "me", None).is_some());
        assert!(password_problem("owner-name", "OWNER-NAME", None).is_some());
        assert!(password_problem(&"x".repeat(129), "me", None).is_some());
        assert_eq!(password_problem("blue tomato 7", "me", None), None);
    }

    #[test]
    fn throttle_backs_off_doubling_and_expires() {
        let mut t = Throttle::default();
        for _ in 0..FREE_FAILURES - 1 {
            t.fail("k", 0);
        }
        assert_eq!(t.wait_ms("k", 0), None);
        t.fail("k", 0);
        assert_eq!(t.wait_ms("k", 0), Some(1_000));
        t.fail("k", 1_000);
        assert_eq!(t.wait_ms("k", 1_000), Some(2_000));
        for _ in 0..30 {
            t.fail("k", 3_000);
        }
        assert_eq!(t.wait_ms("k", 3_000), Some(BACKOFF_MAX_MS));
        assert_eq!(t.wait_ms("k", 3_000 + BACKOFF_MAX_MS), None, "never permanent");
        t.fail("other", 3_000 + FORGET_MS);
        assert!(!t.keys.contains_key("k"), "forgotten after an hour");
    }

    #[test]
    fn sessions_expire() {
        let mut s = Sessions::default();
        s.insert("t".into(), "c".into(), 0);
        assert!(s.touch("t", SESSION_IDLE_MS - 1).is_some());
        assert!(s.touch("t", 2 * SESSION_IDLE_MS).is_none());
        s.insert("u".into(), "c".into(), 0);
        let mut now = 0;
        while now < SESSION_MAX_MS {
            assert!(s.touch("u", now).is_some());
            now += SESSION_IDLE_MS / 2;
        }
        assert!(s.touch("u", now).is_none());
    }
}
