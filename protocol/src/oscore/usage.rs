//! Key-usage limits for AES-CCM-16-64-128 (draft-ietf-core-oscore-key-limits; DESIGN.md): a key
//! must be replaced before 2^20 encryptions or 2^14 failed decryptions (8-byte tag). Counters
//! are per key; [`KeyUsage::needs_rekey`] warns at 7/8 of a limit, and the limit itself is hard.

/// Encryptions allowed under one sender key.
pub const ENCRYPTION_LIMIT: u64 = 1 << 20;
/// Failed decryptions tolerated under one recipient key.
pub const FAILED_DECRYPTION_LIMIT: u64 = 1 << 14;

/// Counters for one security context's two keys. Persist them with the context and restore them
/// after a restart (a conservative restore may round them up, never down).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyUsage {
    /// Encryptions made with the sender key.
    pub encryptions: u64,
    /// Messages whose tag failed to verify under the recipient key.
    pub failed_decryptions: u64,
}

/// Why a context should be re-keyed (re-pairing or a key update) soon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NeedsRekey {
    /// The sender key is near its encryption limit.
    Encryptions,
    /// The recipient key has seen many forgeries.
    FailedDecryptions,
}

impl KeyUsage {
    /// A re-key signal, given before either hard limit is reached.
    pub fn needs_rekey(&self) -> Option<NeedsRekey> {
        if self.encryptions >= ENCRYPTION_LIMIT - ENCRYPTION_LIMIT / 8 {
            Some(NeedsRekey::Encryptions)
        } else if self.failed_decryptions >= FAILED_DECRYPTION_LIMIT - FAILED_DECRYPTION_LIMIT / 8 {
            Some(NeedsRekey::FailedDecryptions)
        } else {
            None
        }
    }

    pub(crate) fn may_encrypt(&self) -> bool {
        self.encryptions < ENCRYPTION_LIMIT
    }

    pub(crate) fn may_decrypt(&self) -> bool {
        self.failed_decryptions < FAILED_DECRYPTION_LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_comes_before_the_limit() {
        let warn = ENCRYPTION_LIMIT - ENCRYPTION_LIMIT / 8;
        let u = KeyUsage { encryptions: warn - 1, failed_decryptions: 0 };
        assert_eq!(u.needs_rekey(), None);
        let u = KeyUsage { encryptions: warn, failed_decryptions: 0 };
        assert_eq!(u.needs_rekey(), Some(NeedsRekey::Encryptions));
        assert!(u.may_encrypt());
        let u = KeyUsage { encryptions: ENCRYPTION_LIMIT, failed_decryptions: 0 };
        assert!(!u.may_encrypt());
        let f = FAILED_DECRYPTION_LIMIT - FAILED_DECRYPTION_LIMIT / 8;
        let u = KeyUsage { encryptions: 0, failed_decryptions: f };
        assert_eq!(u.needs_rekey(), Some(NeedsRekey::FailedDecryptions));
        let u = KeyUsage { encryptions: 0, failed_decryptions: FAILED_DECRYPTION_LIMIT };
        assert!(!u.may_decrypt());
    }
}
