//! The backup file's encryption: a key from the owner's passphrase (argon2id, parameters and
//! salt in the header), and the plaintext cut into chunks sealed with AES-256-CCM in the STREAM
//! construction (Hoang, Reyhanitabar, Rogaway, Vizár 2015): chunk `i` uses the nonce
//! `prefix ‖ i ‖ last`, so chunks cannot be reordered, dropped or cut off without the tag
//! failing, and a large backup is never held in memory. The header is every chunk's AAD.

use std::io::{BufRead, BufReader, Read, Write};

use aes::Aes256;
use argon2::{Algorithm, Argon2, Params, Version};
use ccm::Ccm;
use ccm::aead::{AeadInOut, KeyInit};
use ccm::consts::{U12, U16};
use zeroize::Zeroizing;

type Aead = Ccm<Aes256, U16, U12>;

/// The file's first bytes.
pub(super) const MAGIC: &[u8; 8] = b"HEARTHBK";
/// The format this hub writes and reads.
pub(super) const VERSION: u8 = 1;
const SALT: usize = 16;
const PREFIX: usize = 7;
/// magic ‖ version ‖ m_cost ‖ t_cost ‖ p_cost ‖ salt ‖ nonce prefix.
pub(super) const HEADER: usize = 8 + 1 + 12 + SALT + PREFIX;
const TAG: usize = 16;
/// Plaintext bytes per chunk.
pub(super) const CHUNK: usize = 64 * 1024;
/// Shortest passphrase accepted when a backup is made.
pub const MIN_PASSPHRASE: usize = 12;
/// Largest argon2 memory cost a backup file may ask for (KiB): a file cannot make the hub
/// allocate without bound.
const MAX_M_COST: u32 = 1 << 20;
const MAX_T_COST: u32 = 16;

/// Why a backup could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The passphrase is too short.
    #[error("the passphrase is too short: use at least {MIN_PASSPHRASE} characters")]
    ShortPassphrase,
    /// Not a Hearth backup.
    #[error("not a Hearth backup file")]
    NotABackup,
    /// A format this hub does not read.
    #[error("backup format {0} is not supported by this hub (it reads format {VERSION})")]
    Version(u8),
    /// The header's key-derivation parameters are out of bounds.
    #[error("the backup's key-derivation parameters are invalid")]
    BadParams,
    /// The first chunk did not authenticate.
    #[error("wrong passphrase, or the backup file was altered: nothing was restored")]
    WrongPassphrase,
    /// A later chunk did not authenticate.
    #[error("the backup file is damaged or was altered (chunk {0}): nothing was restored")]
    Tampered(u64),
    /// The file ends before its last chunk.
    #[error("the backup file is truncated: nothing was restored")]
    Truncated,
    /// The plaintext is not a valid archive.
    #[error("the backup's contents are invalid: {0}")]
    Archive(&'static str),
    /// Restoring into a directory that holds something.
    #[error("{0} is not empty: restore into a new, empty data directory")]
    NotEmpty(String),
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// Input/output.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The OS random generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// The owner's passphrase (never printed).
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl serde::Serialize for Passphrase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Passphrase {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        Ok(Self::new(&s))
    }
}

impl core::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

impl Passphrase {
    /// A passphrase (surrounding line breaks are not part of it).
    pub fn new(s: &str) -> Self {
        Self(Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_owned()))
    }

    /// Refuses a passphrase too short to protect a backup.
    pub fn check(&self) -> Result<(), BackupError> {
        if self.0.chars().count() < MIN_PASSPHRASE {
            return Err(BackupError::ShortPassphrase);
        }
        Ok(())
    }
}

/// Key-derivation parameters (argon2id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kdf {
    pub(super) m_cost: u32,
    pub(super) t_cost: u32,
    pub(super) p_cost: u32,
}

impl Default for Kdf {
    fn default() -> Self {
        Self { m_cost: Params::DEFAULT_M_COST, t_cost: 3, p_cost: 1 }
    }
}

fn derive_key(pass: &Passphrase, kdf: Kdf, salt: &[u8]) -> Result<Aead, BackupError> {
    if kdf.m_cost > MAX_M_COST || kdf.t_cost > MAX_T_COST || kdf.p_cost != 1 {
        return Err(BackupError::BadParams);
    }
    let params = Params::new(kdf.m_cost, kdf.t_cost, kdf.p_cost, Some(32))
        .map_err(|_| BackupError::BadParams)?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(pass.0.as_bytes(), salt, key.as_mut())
        .map_err(|_| BackupError::BadParams)?;
    Ok(Aead::new(&(*key).into()))
}

fn nonce(prefix: &[u8; PREFIX], counter: u64, last: bool) -> Option<[u8; 12]> {
    let c = u32::try_from(counter).ok()?;
    let mut n = [0u8; 12];
    n[..PREFIX].copy_from_slice(prefix);
    n[PREFIX..PREFIX + 4].copy_from_slice(&c.to_be_bytes());
    n[11] = u8::from(last);
    Some(n)
}

/// Writes an encrypted backup: plaintext in, sealed chunks out. [`SealWriter::finish`] writes
/// the last chunk; without it the file reads as truncated.
pub(super) struct SealWriter<W: Write> {
    out: W,
    aead: Aead,
    header: [u8; HEADER],
    prefix: [u8; PREFIX],
    counter: u64,
    buf: Zeroizing<Vec<u8>>,
}

impl<W: Write> SealWriter<W> {
    /// Derives the key and writes the header.
    pub(super) fn new(mut out: W, pass: &Passphrase, kdf: Kdf) -> Result<Self, BackupError> {
        pass.check()?;
        let mut salt = [0u8; SALT];
        let mut prefix = [0u8; PREFIX];
        crate::rng::fill(&mut salt).map_err(|_| BackupError::Rng)?;
        crate::rng::fill(&mut prefix).map_err(|_| BackupError::Rng)?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[9..13].copy_from_slice(&kdf.m_cost.to_be_bytes());
        header[13..17].copy_from_slice(&kdf.t_cost.to_be_bytes());
        header[17..21].copy_from_slice(&kdf.p_cost.to_be_bytes());
        header[21..21 + SALT].copy_from_slice(&salt);
        header[21 + SALT..].copy_from_slice(&prefix);
        let aead = derive_key(pass, kdf, &salt)?;
        out.write_all(&header).map_err(|e| BackupError::Io("backup file".into(), e))?;
        let buf = Zeroizing::new(Vec::with_capacity(CHUNK + TAG));
        Ok(Self { out, aead, header, prefix, counter: 0, buf })
    }

    fn seal_chunk(&mut self, last: bool) -> std::io::Result<()> {
        let n = nonce(&self.prefix, self.counter, last)
            .ok_or_else(|| std::io::Error::other("backup too large"))?;
        let tag = self
            .aead
            .encrypt_inout_detached(&n.into(), &self.header, self.buf.as_mut_slice().into())
            .map_err(|_| std::io::Error::other("chunk too large"))?;
        self.out.write_all(&self.buf)?;
        self.out.write_all(&tag)?;
        self.buf.clear();
        self.counter += 1;
        Ok(())
    }

    /// Seals what is buffered as the last chunk and returns the output.
    pub(super) fn finish(mut self) -> std::io::Result<W> {
        self.seal_chunk(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() == CHUNK && !data.is_empty() {
            // More follows: the full chunk is not the last one.
            self.seal_chunk(false)?;
        }
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads an encrypted backup: yields plaintext only from chunks that authenticated, and an
/// error (never a short read taken for the end) when the file is truncated or altered.
pub(super) struct OpenReader<R: Read> {
    input: BufReader<R>,
    aead: Aead,
    header: [u8; HEADER],
    prefix: [u8; PREFIX],
    counter: u64,
    plain: Zeroizing<Vec<u8>>,
    at: usize,
    done: bool,
}

impl<R: Read> OpenReader<R> {
    /// Reads and checks the header and derives the key.
    pub(super) fn new(input: R, pass: &Passphrase) -> Result<Self, BackupError> {
        let mut input = BufReader::with_capacity(CHUNK + TAG, input);
        let mut header = [0u8; HEADER];
        read_full(&mut input, &mut header)
            .map_err(|e| BackupError::Io("backup file".into(), e))
            .and_then(|n| if n == HEADER { Ok(()) } else { Err(BackupError::NotABackup) })?;
        if &header[..8] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        if header[8] != VERSION {
            return Err(BackupError::Version(header[8]));
        }
        let word =
            |i: usize| u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let kdf = Kdf { m_cost: word(9), t_cost: word(13), p_cost: word(17) };
        let aead = derive_key(pass, kdf, &header[21..21 + SALT])?;
        let mut prefix = [0u8; PREFIX];
        prefix.copy_from_slice(&header[21 + SALT..]);
        Ok(Self {
            input,
            aead,
            header,
            prefix,
            counter: 0,
            plain: Zeroizing::new(Vec::new()),
            at: 0,
            done: false,
        })
    }

    /// Reads and opens the next chunk; false at the end (after the last chunk authenticated).
    fn next_chunk(&mut self) -> Result<bool, BackupError> {
        if self.done {
            return Ok(false);
        }
        let io = |e| BackupError::Io("backup file".into(), e);
        let mut buf = Zeroizing::new(vec![0u8; CHUNK + TAG]);
        let n = read_full(&mut self.input, &mut buf).map_err(io)?;
        let last = n < CHUNK + TAG || self.input.fill_buf().map_err(io)?.is_empty();
        if n < TAG {
            return Err(BackupError::Truncated);
        }
        let fail = if self.counter == 0 {
            BackupError::WrongPassphrase
        } else {
            BackupError::Tampered(self.counter)
        };
        let nonce = nonce(&self.prefix, self.counter, last)
            .ok_or(BackupError::Archive("too many chunks"))?;
        buf.truncate(n);
        let tag_bytes = buf.split_off(n - TAG);
        let tag = ccm::aead::Tag::<Aead>::try_from(tag_bytes.as_slice())
            .map_err(|_| BackupError::Truncated)?;
        if self
            .aead
            .decrypt_inout_detached(&nonce.into(), &self.header, buf.as_mut_slice().into(), &tag)
            .is_err()
        {
            // A cut-off file ends in a chunk sealed as "not last": it fails only as the last.
            return Err(if last && self.counter > 0 { BackupError::Truncated } else { fail });
        }
        self.counter += 1;
        self.done = last;
        self.plain = buf;
        self.at = 0;
        Ok(true)
    }

    /// Confirms that the whole file was read and authenticated.
    pub(super) fn finish(mut self) -> Result<(), BackupError> {
        while self.at == self.plain.len() {
            if !self.next_chunk()? {
                return Ok(());
            }
        }
        Err(BackupError::Archive("data after the end of the archive"))
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.plain.len() {
            match self.next_chunk() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
            }
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The backup error behind an I/O error from [`OpenReader`], if it is one.
pub(super) fn unwrap_io(context: &str, e: std::io::Error) -> BackupError {
    if e.kind() == std::io::ErrorKind::InvalidData
        && let Some(inner) = e.get_ref().and_then(|i| i.downcast_ref::<BackupError>())
    {
        return match inner {
            BackupError::WrongPassphrase => BackupError::WrongPassphrase,
            BackupError::Tampered(c) => BackupError::Tampered(*c),
            BackupError::Truncated => BackupError::Truncated,
            BackupError::Archive(w) => BackupError::Archive(w),
            _ => BackupError::Archive("unreadable"),
        };
    }
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return BackupError::Truncated;
    }
    BackupError::Io(context.into(), e)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Kdf = Kdf { m_cost: 64, t_cost: 1, p_cost: 1 };

    fn pass() -> Passphrase {
        Passphrase::new("correct horse battery")
    }

    fn seal(data: &[u8]) -> Vec<u8> {
        let mut w = SealWriter::new(Vec::new(), &pass(), FAST).expect("writer");
        for part in data.chunks(10_007) {
            w.write_all(part).expect("write");
        }
        w.finish().expect("finish")
    }

    fn open(file: &[u8], p: &Passphrase) -> Result<Vec<u8>, BackupError> {
        let mut r = OpenReader::new(file, p)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out).map_err(|e| unwrap_io("test", e))?;
        r.finish()?;
        Ok(out)
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn round_trips_at_chunk_edges() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let d = data(len);
            let file = seal(&d);
            assert_eq!(open(&file, &pass()).expect("open"), d, "len {len}");
            assert!(!file.windows(16).any(|w| len >= 16 && w == &d[..16]), "plaintext visible");
        }
    }

    #[test]
    fn wrong_passphrase_and_short_passphrase_refused() {
        let file = seal(&data(100));
        let e = open(&file, &Passphrase::new("correct horse battery!")).expect_err("wrong");
        assert!(matches!(e, BackupError::WrongPassphrase), "{e}");
        let short = SealWriter::new(Vec::new(), &Passphrase::new("short"), FAST).err();
        assert!(matches!(short, Some(BackupError::ShortPassphrase)));
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let file = seal(&data(2 * CHUNK + 5));
        let positions =
            [0, 8, 9, 12, 20, 30, HEADER, HEADER + 100, HEADER + CHUNK + TAG + 3, file.len() - 1];
        for &i in &positions {
            let mut t = file.clone();
            t[i] ^= 0x40;
            assert!(open(&t, &pass()).is_err(), "byte {i} flipped was accepted");
        }
    }

    #[test]
    fn truncation_and_chunk_reordering_refused() {
        let file = seal(&data(3 * CHUNK + 5));
        let full = CHUNK + TAG;
        // Cut at a chunk boundary: the new last chunk was sealed as "not last".
        let cut = &file[..HEADER + 2 * full];
        assert!(matches!(open(cut, &pass()), Err(BackupError::Truncated)));
        assert!(open(&file[..file.len() - 1], &pass()).is_err());
        assert!(matches!(open(&file[..HEADER], &pass()), Err(BackupError::Truncated)));
        let mut swapped = file[..HEADER].to_vec();
        swapped.extend_from_slice(&file[HEADER + full..HEADER + 2 * full]);
        swapped.extend_from_slice(&file[HEADER..HEADER + full]);
        swapped.extend_from_slice(&file[HEADER + 2 * full..]);
        assert!(open(&swapped, &pass()).is_err());
        // Extra bytes after the end are refused too.
        let mut longer = file.clone();
        longer.extend_from_slice(&[0; 3]);
        assert!(open(&longer, &pass()).is_err());
    }

    #[test]
    fn absurd_parameters_refused() {
        let mut file = seal(&data(10));
        file[9..13].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(open(&file, &pass()), Err(BackupError::BadParams)));
        assert!(matches!(
            open(b"NOTABACKUP-----------------------------------------", &pass()),
            Err(BackupError::NotABackup)
        ));
    }
}
