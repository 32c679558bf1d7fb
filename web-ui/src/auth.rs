//! The owner account: one-time setup code (EN 303 645 5.1-1/5.1-2), argon2id password hashes
//! kept in the hub's sealed vault (5.4-1) and computed under the hub's one hashing budget
//! ([`admission::hashing`]), the password policy shared with MQTT ([`admission::password`]) and
//! password change (5.1-4), device cookies (a browser that logged in before is not locked out by a
//! back-off someone else caused: OWASP "device cookies", with [`admission::throttle`] keeping
//! their failure budgets), and sessions with per-session CSRF tokens.

use std::collections::HashMap;

use admission::Hasher;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Setup-code alphabet: no 0/O or 1/I (32 symbols, so a byte's low five bits pick one evenly).
const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Symbols in a setup code (12 × 5 bits = 60 bits).
pub const CODE_LEN: usize = 12;

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

/// Checks a new password against the hub's one policy; the setup `code` must not be reused as
/// one either.
pub fn password_problem(password: &str, user: &str, code: Option<&str>) -> Option<&'static str> {
    if let Some(why) = admission::password::problem(password, user) {
        return Some(why);
    }
    if code.is_some_and(|c| normalize_code(password) == normalize_code(c)) {
        return Some("the password must differ from the setup code");
    }
    None
}

/// Whether `user` is an acceptable account name.
pub fn valid_user(user: &str) -> bool {
    (1..=32).contains(&user.len())
        && user.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
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

/// Hex digits of a device cookie's id (16 random bytes).
pub const DEVICE_ID_HEX: usize = 32;
const DEVICE_MAC_HEX: usize = 64;

impl Vault {
    /// A first-run vault that accepts only `code` (the hub prints and writes the code itself).
    pub fn first_run(code: &str, hasher: &mut Hasher<'_>) -> Result<Vec<u8>, AuthError> {
        let setup = hasher.hash(normalize_code(code).as_bytes()).map_err(|_| AuthError::Hash)?;
        Ok(Vault { setup: Some(setup), ..Vault::default() }.to_bytes())
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

    /// The owner's user name, if set up.
    pub fn owner_name(&self) -> Option<&str> {
        self.owner.as_ref().map(|a| a.user.as_str())
    }

    /// Creates the owner account with the one-time `code`, which is consumed.
    pub fn create_owner(
        &mut self,
        code: &str,
        user: &str,
        password: &str,
        hasher: &mut Hasher<'_>,
    ) -> Result<(), AuthError> {
        if self.owner.is_some() {
            return Err(AuthError::AccountExists);
        }
        let Some(code_hash) = &self.setup else { return Err(AuthError::BadCode) };
        if !hasher.verify(normalize_code(code).as_bytes(), code_hash) {
            return Err(AuthError::BadCode);
        }
        if !valid_user(user) {
            return Err(AuthError::BadUser);
        }
        if let Some(why) = password_problem(password, user, Some(code)) {
            return Err(AuthError::WeakPassword(why));
        }
        let hash = hasher.hash(password.as_bytes()).map_err(|_| AuthError::Hash)?;
        self.owner = Some(Account { user: user.to_owned(), hash });
        self.setup = None;
        Ok(())
    }

    /// Checks a login.
    pub fn login(&self, user: &str, password: &str, hasher: &mut Hasher<'_>) -> bool {
        match &self.owner {
            Some(a) => {
                let name_ok: bool = a.user.as_bytes().ct_eq(user.as_bytes()).into();
                // Verify even for a wrong name so both cost the same.
                hasher.verify(password.as_bytes(), &a.hash) & name_ok
            }
            None => false,
        }
    }

    /// Changes the owner's password (`new` must have passed [`password_problem`]).
    pub fn change_password(
        &mut self,
        old: &str,
        new: &str,
        hasher: &mut Hasher<'_>,
    ) -> Result<(), AuthError> {
        let Some(a) = &mut self.owner else { return Err(AuthError::WrongPassword) };
        if !hasher.verify(old.as_bytes(), &a.hash) {
            return Err(AuthError::WrongPassword);
        }
        if let Some(why) = password_problem(new, &a.user, None) {
            return Err(AuthError::WeakPassword(why));
        }
        if new == old {
            return Err(AuthError::WeakPassword("the new password must differ from the old one"));
        }
        a.hash = hasher.hash(new.as_bytes()).map_err(|_| AuthError::Hash)?;
        Ok(())
    }

    /// The key device cookies are MAC'd with: derived from the owner's password hash, whose
    /// salt is random and sealed with the vault, so a password change or an erase revokes every
    /// device cookie at once.
    fn device_key(&self) -> Option<[u8; 32]> {
        let a = self.owner.as_ref()?;
        let mut d = Sha256::new();
        d.update(b"hearth web device cookie v1\0");
        d.update(a.user.as_bytes());
        d.update([0]);
        d.update(a.hash.as_bytes());
        Some(d.finalize().into())
    }

    fn device_mac(&self, id: &str, user: &str) -> Option<Hmac<Sha256>> {
        let key = self.device_key()?;
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).ok()?;
        mac.update(id.as_bytes());
        mac.update(&[0]);
        mac.update(user.as_bytes());
        Some(mac)
    }

    /// The device cookie value for the owner's browser `id` ([`DEVICE_ID_HEX`] hex digits):
    /// the id, its MAC and the user name (hex), all hex digits.
    pub fn device_cookie(&self, id: &str) -> Option<String> {
        let user = &self.owner.as_ref()?.user;
        if id.len() != DEVICE_ID_HEX || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let tag = self.device_mac(id, user)?.finalize().into_bytes();
        let hex = |b: &[u8]| data_encoding::HEXLOWER.encode(b);
        Some(format!("{id}{}{}", hex(&tag), hex(user.as_bytes())))
    }

    /// The (user, id) a device cookie value names, if its MAC is the owner's (constant time).
    pub fn device_id(&self, value: &str) -> Option<(String, String)> {
        if value.len() <= DEVICE_ID_HEX + DEVICE_MAC_HEX || value.len() > 256 {
            return None;
        }
        let (id, rest) = value.split_at_checked(DEVICE_ID_HEX)?;
        let (tag, user) = rest.split_at_checked(DEVICE_MAC_HEX)?;
        let user = String::from_utf8(unhex(user)?).ok()?;
        let tag = unhex(tag)?;
        if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        self.device_mac(id, &user)?.verify_slice(&tag).ok()?;
        Some((user, id.to_ascii_lowercase()))
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    data_encoding::HEXLOWER_PERMISSIVE.decode(s.as_bytes()).ok()
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
    use admission::{Cost, HashBudget, Limits};

    fn budget() -> HashBudget {
        HashBudget::new(Limits::default(), Cost { m_kib: 64, t: 1 }).expect("budget")
    }

    #[test]
    fn setup_code_is_formatted_and_used_once() {
        let b = budget();
        b.run_now(|h| {
            let code = setup_code(&[7, 200, 31, 0, 255, 9, 100, 50, 3, 4, 5, 6]);
            assert_eq!(code.len(), 14);
            assert!(code.chars().all(|c| c == '-' || CODE_ALPHABET.contains(&(c as u8))));
            let mut v = Vault::parse(&Vault::first_run(&code, h).expect("vault")).expect("parse");
            assert_eq!(
                v.create_owner("AAAA-AAAA-AAAA", "me", "correct horse", h),
                Err(AuthError::BadCode)
            );
            let weak = v.create_owner(&code, "me", &code.to_lowercase(), h);
            assert!(matches!(weak, Err(AuthError::WeakPassword(_))), "{weak:?}");
            v.create_owner(&code.to_lowercase(), "me", "correct horse", h).expect("created");
            assert!(v.setup.is_none());
            assert_eq!(
                v.create_owner(&code, "me", "correct horse", h),
                Err(AuthError::AccountExists)
            );
            assert!(v.login("me", "correct horse", h));
            assert!(!v.login("me", "correct hors", h));
            assert!(!v.login("you", "correct horse", h));
        })
        .expect("slot");
    }

    #[test]
    fn password_rules() {
        assert!(password_problem("short", "me", None).is_some());
        assert!(password_problem("Password1234", "me", None).is_some());
        assert!(password_problem("aaaaabbbbbbb", "me", None).is_some());
        assert!(password_problem("owner-name-1", "OWNER-NAME-1", None).is_some());
        assert!(password_problem(&"x".repeat(129), "me", None).is_some());
        assert!(password_problem("ABCD-EFGH-JKLM", "me", Some("abcdefghjklm")).is_some());
        assert_eq!(password_problem("blue tomato 7", "me", None), None);
    }

    #[test]
    fn device_cookies_name_the_owner_and_die_with_the_password() {
        let b = budget();
        b.run_now(|h| {
            let mut v = Vault::parse(&Vault::first_run("ABCD", h).expect("vault")).expect("parse");
            assert_eq!(v.device_cookie(&"a".repeat(32)), None, "no owner yet");
            v.create_owner("ABCD", "owner", "blue tomato 7", h).expect("owner");
            let id = "0123456789abcdef0123456789abcdef";
            let cookie = v.device_cookie(id).expect("cookie");
            assert!(cookie.bytes().all(|b| b.is_ascii_hexdigit()), "{cookie}");
            assert_eq!(v.device_id(&cookie), Some(("owner".into(), id.into())));
            // Any change to the id, the MAC or the name is refused.
            for at in [0, 40, cookie.len() - 1] {
                let mut bad = cookie.clone().into_bytes();
                bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
                let bad = String::from_utf8(bad).expect("utf-8");
                assert_eq!(v.device_id(&bad), None, "flipped at {at}");
            }
            assert_eq!(v.device_id(&cookie[..96]), None);
            assert_eq!(v.device_id("zz"), None);
            assert_eq!(v.device_cookie("not hex"), None);
            // A password change revokes every device cookie.
            v.change_password("blue tomato 7", "red kettle 42", h).expect("changed");
            assert_eq!(v.device_id(&cookie), None);
        })
        .expect("slot");
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
