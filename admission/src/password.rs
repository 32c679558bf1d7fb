//! One password policy for every password the hub accepts for a new account or a change — the
//! web owner's and MQTT users' (EN 303 645 5.1-1: no weak or universal passwords; NIST SP
//! 800-63B §3.1.1.2: a minimum length, a blocklist of common passwords, no composition rules).
//! Existing passwords are never re-checked: a login only compares hashes.

/// Shortest password accepted, in characters.
pub const MIN_CHARS: usize = 12;
/// Longest password accepted, in characters (the hash's input stays small).
pub const MAX_CHARS: usize = 128;
/// Longest password a login may present, in bytes (a password made under an older, longer rule
/// still logs in; anything longer is refused unchecked).
pub const MAX_LOGIN_BYTES: usize = 1024;

/// Passwords refused whatever their length (the most common ones of 12 or more characters,
/// compared without case).
const COMMON: &[&str] = &[
    "123456789012",
    "1234567890123",
    "1q2w3e4r5t6y",
    "1qaz2wsx3edc",
    "qwertyuiopas",
    "qwerty123456",
    "qwerty1234567",
    "password1234",
    "password12345",
    "password123!",
    "passw0rd1234",
    "iloveyou1234",
    "administrator",
    "letmein12345",
    "welcome12345",
    "changeme1234",
    "abcdefghijkl",
    "aaaaaaaaaaaa",
    "hearthhearth",
    "smarthome123",
    "homeassistant",
    "mosquitto123",
];

/// Why `password` may not be chosen by `user`, if it may not (shown to the user as is).
pub fn problem(password: &str, user: &str) -> Option<&'static str> {
    let chars = password.chars().count();
    if chars < MIN_CHARS {
        return Some("use at least 12 characters");
    }
    if chars > MAX_CHARS {
        return Some("use at most 128 characters");
    }
    if password.chars().any(char::is_control) {
        return Some("control characters are not allowed");
    }
    let lower = password.to_lowercase();
    if COMMON.contains(&lower.as_str()) {
        return Some("this is one of the most common passwords");
    }
    if lower == user.to_lowercase() {
        return Some("the password must differ from the user name");
    }
    let mut distinct: Vec<char> = password.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 4 {
        return Some("use at least 4 different characters");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_blocklist_user_name_variety_and_control_characters() {
        assert_eq!(problem("blue tomato 7", "me"), None);
        assert_eq!(problem(&"ab1 ".repeat(32), "me"), None, "128 characters");
        assert_eq!(problem("fünf kleine ö", "me"), None, "characters, not bytes");
        assert!(problem("short one 1", "me").is_some(), "11 characters");
        assert!(problem(&"ab1 ".repeat(32).replacen('a', "aa", 1), "me").is_some(), "129");
        assert!(problem("Password1234", "me").is_some());
        assert!(problem("HomeAssistant", "me").is_some());
        assert!(problem("aaaaabbbbbbb", "me").is_some());
        assert!(problem("owner-name-12", "OWNER-NAME-12").is_some());
        assert!(problem("tab\there is bad", "me").is_some());
        // Every blocked password is long enough to reach the list (else it is dead weight).
        for p in COMMON {
            assert!(p.chars().count() >= MIN_CHARS, "{p}");
            assert_eq!(problem(p, "me"), Some("this is one of the most common passwords"), "{p}");
        }
    }
}
