//! [`Store`] on redb. Readings are keyed by `len(kid) ‖ kid ‖ time (order-preserving) ‖ name`,
//! so a device's readings are one contiguous, time-ordered range, and the same reading stored
//! twice (a sensor resending after a lost acknowledgement) is one record.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::oscore::{ContextParams, KeyUsage, Kid, WindowState};
use protocol::senml::Value;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{DeviceInfo, Kek, PeerRecord, Store, StoreError, StoredReading, Write};

const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices");
const SECRETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("secrets");
const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("link_state");
const READINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("readings");
const COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("reading_counts");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// redb page cache size.
const CACHE_BYTES: usize = 32 << 20;

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The redb-backed store.
#[derive(Clone)]
pub struct RedbStore {
    db: Arc<Database>,
    kek: Arc<Kek>,
    max_readings: u64,
}

impl core::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RedbStore")
            .field("max_readings", &self.max_readings)
            .finish_non_exhaustive()
    }
}

/// How opening went.
#[derive(Debug)]
pub enum OpenOutcome {
    /// The database opened (or was created).
    Opened,
    /// The file was corrupt: it was moved aside to this path and a fresh store created.
    MovedAside(PathBuf),
}

impl RedbStore {
    /// Opens `dir/hearth.redb` with the key-encryption key `dir/kek`. A corrupt database file
    /// is moved aside (never deleted) and a fresh one created, so a bad file cannot make the hub
    /// crash in a loop; the caller reports the outcome.
    pub fn open(dir: &Path, max_readings: u64) -> Result<(Self, OpenOutcome), StoreError> {
        let kek = Kek::load_or_create(&dir.join("kek"))?;
        let path = dir.join("hearth.redb");
        // Created 0600 before redb opens it (it holds personal data and sealed keys).
        crate::private_fs::touch(&path)
            .map_err(|e| StoreError::Io(path.display().to_string(), e))?;
        let (database, outcome) = match open_db(&path) {
            Ok(d) => (d, OpenOutcome::Opened),
            Err(OpenFailure::Fatal(e)) => return Err(e),
            Err(OpenFailure::Corrupt(why)) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let aside = dir.join(format!("hearth.redb.corrupt-{stamp}"));
                std::fs::rename(&path, &aside)
                    .map_err(|e| StoreError::Io(path.display().to_string(), e))?;
                tracing::error!(file = %aside.display(), reason = %why, "store was corrupt; moved aside, starting with an empty store (sensors must pair again)");
                crate::private_fs::touch(&path)
                    .map_err(|e| StoreError::Io(path.display().to_string(), e))?;
                let d = open_db(&path).map_err(|_| StoreError::Corrupt("fresh database"))?;
                (d, OpenOutcome::MovedAside(aside))
            }
        };
        let tx = database.begin_write().map_err(db)?;
        for t in [DEVICES, SECRETS, STATE, READINGS] {
            tx.open_table(t).map_err(db)?;
        }
        tx.open_table(COUNTS).map_err(db)?;
        tx.open_table(META).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok((
            Self { db: Arc::new(database), kek: Arc::new(kek), max_readings: max_readings.max(1) },
            outcome,
        ))
    }
}

enum OpenFailure {
    Corrupt(String),
    Fatal(StoreError),
}

fn open_db(path: &Path) -> Result<Database, OpenFailure> {
    // redb's debug builds panic on some corruption checks; treat a panic as corruption too.
    let p = path.to_path_buf();
    // A bounded page cache keeps the hub within its memory budget (redb defaults to 1 GiB).
    let result = std::panic::catch_unwind(move || {
        Database::builder().set_cache_size(CACHE_BYTES).create(&p)
    });
    match result {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(
            redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch,
        )) => Err(OpenFailure::Fatal(StoreError::Db(
            "the store is in use by another hub process".into(),
        ))),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
            if e.kind() != std::io::ErrorKind::InvalidData
                && e.kind() != std::io::ErrorKind::UnexpectedEof =>
        {
            Err(OpenFailure::Fatal(StoreError::Io(path.display().to_string(), e)))
        }
        Ok(Err(e)) => Err(OpenFailure::Corrupt(e.to_string())),
        Err(_) => Err(OpenFailure::Corrupt("database check failed".into())),
    }
}

/// Readings key: `len(kid) ‖ kid ‖ time ‖ name`, time with its sign bit flipped so byte order
/// is time order.
fn reading_key(kid: &Kid, time_ms: i64, name: &str) -> Vec<u8> {
    let mut k = device_prefix(kid);
    k.extend_from_slice(&((time_ms as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(name.as_bytes());
    k
}

fn device_prefix(kid: &Kid) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.push(kid.as_bytes().len() as u8);
    k.extend_from_slice(kid.as_bytes());
    k
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    end.extend_from_slice(&[0xff; 9]);
    end
}

fn encode_params(p: &ContextParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    for part in
        [&p.master_secret[..], &p.master_salt, p.sender_id.as_bytes(), p.recipient_id.as_bytes()]
    {
        out.push(part.len() as u8);
        out.extend_from_slice(part);
    }
    out
}

fn decode_params(bytes: &[u8]) -> Option<ContextParams> {
    let mut rest = bytes;
    let mut take = || {
        let (&n, r) = rest.split_first()?;
        let (part, r) = r.split_at_checked(usize::from(n))?;
        rest = r;
        Some(part.to_vec())
    };
    let (secret, salt, sender, recipient) = (take()?, take()?, take()?, take()?);
    Some(ContextParams {
        master_secret: secret,
        master_salt: salt,
        sender_id: Kid::new(&sender).ok()?,
        recipient_id: Kid::new(&recipient).ok()?,
        id_context: None,
    })
}

/// Link state record: lease, window (flag, highest, seen), usage ceilings (encryptions,
/// failures), then optionally the endpoint (family, 16-byte address, port).
#[derive(Default)]
struct LinkState {
    lease: u64,
    window: Option<WindowState>,
    usage: KeyUsage,
    endpoint: Option<SocketAddr>,
}

const STATE_LEN: usize = 37;
const ENDPOINT_LEN: usize = 19;

impl LinkState {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; STATE_LEN];
        b[..8].copy_from_slice(&self.lease.to_be_bytes());
        if let Some(w) = self.window {
            b[8] = 1;
            b[9..17].copy_from_slice(&w.highest.to_be_bytes());
            b[17..21].copy_from_slice(&w.seen.to_be_bytes());
        }
        b[21..29].copy_from_slice(&self.usage.encryptions.to_be_bytes());
        b[29..37].copy_from_slice(&self.usage.failed_decryptions.to_be_bytes());
        if let Some(e) = self.endpoint {
            let (family, ip) = match e.ip() {
                IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped().octets()),
                IpAddr::V6(v6) => (6u8, v6.octets()),
            };
            b.push(family);
            b.extend_from_slice(&ip);
            b.extend_from_slice(&e.port().to_be_bytes());
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let (fixed, rest) = b.split_at_checked(STATE_LEN)?;
        let u64_at = |i: usize| fixed[i..i + 8].try_into().ok().map(u64::from_be_bytes);
        let window = match fixed[8] {
            0 => None,
            1 => Some(WindowState {
                highest: u64_at(9)?,
                seen: u32::from_be_bytes(fixed[17..21].try_into().ok()?),
            }),
            _ => return None,
        };
        let endpoint = match rest.len() {
            0 => None,
            ENDPOINT_LEN => {
                let ip: [u8; 16] = rest[1..17].try_into().ok()?;
                let port = u16::from_be_bytes(rest[17..19].try_into().ok()?);
                let ip = match rest[0] {
                    4 => IpAddr::V4(Ipv6Addr::from(ip).to_ipv4_mapped()?),
                    6 => IpAddr::V6(Ipv6Addr::from(ip)),
                    _ => return None,
                };
                Some(SocketAddr::new(ip, port))
            }
            _ => return None,
        };
        Some(Self {
            lease: u64_at(0)?,
            window,
            usage: KeyUsage { encryptions: u64_at(21)?, failed_decryptions: u64_at(29)? },
            endpoint,
        })
    }
}

fn encode_value(unit: Option<&str>, value: &Value) -> Vec<u8> {
    let v = match value {
        Value::Number(n) => serde_json::json!(n),
        Value::Bool(b) => serde_json::json!(b),
    };
    serde_json::to_vec(&serde_json::json!({"u": unit, "v": v})).unwrap_or_default()
}

impl Store for RedbStore {
    fn load_peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let secrets = tx.open_table(SECRETS).map_err(db)?;
        let state = tx.open_table(STATE).map_err(db)?;
        let mut out = Vec::new();
        for row in secrets.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let plain = self.kek.open(k.value(), v.value())?;
            let params = decode_params(&plain).ok_or(StoreError::Corrupt("sealed context"))?;
            let s = match state.get(k.value()).map_err(db)? {
                Some(s) => LinkState::decode(s.value()).ok_or(StoreError::Corrupt("link state"))?,
                None => LinkState::default(),
            };
            out.push(PeerRecord {
                params,
                lease: s.lease,
                window: s.window,
                usage: s.usage,
                endpoint: s.endpoint,
            });
        }
        Ok(out)
    }

    fn commit(&self, writes: &[Write]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut devices = tx.open_table(DEVICES).map_err(db)?;
            let mut secrets = tx.open_table(SECRETS).map_err(db)?;
            let mut state = tx.open_table(STATE).map_err(db)?;
            let mut readings = tx.open_table(READINGS).map_err(db)?;
            let mut counts = tx.open_table(COUNTS).map_err(db)?;
            let mut meta = tx.open_table(META).map_err(db)?;
            for w in writes {
                match w {
                    Write::Meta { key, value } => {
                        meta.insert(key.as_str(), value.as_slice()).map_err(db)?;
                    }
                    Write::Device { info, params } => {
                        let kid = params.recipient_id;
                        let json = serde_json::to_vec(info).map_err(db)?;
                        devices.insert(kid.as_bytes(), json.as_slice()).map_err(db)?;
                        let sealed = self.kek.seal(kid.as_bytes(), &encode_params(params))?;
                        secrets.insert(kid.as_bytes(), sealed.as_slice()).map_err(db)?;
                        state
                            .insert(kid.as_bytes(), LinkState::default().encode().as_slice())
                            .map_err(db)?;
                    }
                    Write::Lease { kid, lease } => {
                        let mut s = match state.get(kid.as_bytes()).map_err(db)? {
                            Some(v) => LinkState::decode(v.value()).unwrap_or_default(),
                            None => continue, // removed meanwhile
                        };
                        s.lease = s.lease.max(*lease);
                        state.insert(kid.as_bytes(), s.encode().as_slice()).map_err(db)?;
                    }
                    Write::State { kid, state: checkpoint } => {
                        let mut s = match state.get(kid.as_bytes()).map_err(db)? {
                            Some(v) => LinkState::decode(v.value()).unwrap_or_default(),
                            None => continue, // removed meanwhile
                        };
                        s.window = checkpoint.window;
                        // Ceilings only grow (a restart resumes at them: never lower).
                        s.usage.encryptions = s.usage.encryptions.max(checkpoint.usage.encryptions);
                        s.usage.failed_decryptions =
                            s.usage.failed_decryptions.max(checkpoint.usage.failed_decryptions);
                        s.endpoint = checkpoint.endpoint.or(s.endpoint);
                        state.insert(kid.as_bytes(), s.encode().as_slice()).map_err(db)?;
                    }
                    Write::Readings { kid, readings: rs } => {
                        if devices.get(kid.as_bytes()).map_err(db)?.is_none() {
                            continue; // removed meanwhile
                        }
                        let mut added = 0;
                        for r in rs {
                            let key = reading_key(kid, r.time.0, &r.name);
                            let value = encode_value(r.unit.as_deref(), &r.value);
                            if readings
                                .insert(key.as_slice(), value.as_slice())
                                .map_err(db)?
                                .is_none()
                            {
                                added += 1;
                            }
                        }
                        let count =
                            counts.get(kid.as_bytes()).map_err(db)?.map_or(0, |v| v.value())
                                + added;
                        let excess = count.saturating_sub(self.max_readings);
                        if excess > 0 {
                            let prefix = device_prefix(kid);
                            let end = prefix_end(&prefix);
                            let old: Vec<Vec<u8>> = readings
                                .range(prefix.as_slice()..end.as_slice())
                                .map_err(db)?
                                .take(excess as usize)
                                .filter_map(|r| r.ok().map(|(k, _)| k.value().to_vec()))
                                .collect();
                            for k in &old {
                                readings.remove(k.as_slice()).map_err(db)?;
                            }
                        }
                        counts.insert(kid.as_bytes(), count.min(self.max_readings)).map_err(db)?;
                    }
                    Write::Remove { kid } => {
                        devices.remove(kid.as_bytes()).map_err(db)?;
                        secrets.remove(kid.as_bytes()).map_err(db)?;
                        state.remove(kid.as_bytes()).map_err(db)?;
                        counts.remove(kid.as_bytes()).map_err(db)?;
                        let prefix = device_prefix(kid);
                        let end = prefix_end(&prefix);
                        readings
                            .retain_in(prefix.as_slice()..end.as_slice(), |_, _| false)
                            .map_err(db)?;
                    }
                }
            }
        }
        tx.commit().map_err(db)
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let devices = tx.open_table(DEVICES).map_err(db)?;
        let mut out = Vec::new();
        for row in devices.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(|_| StoreError::Corrupt("device"))?);
        }
        Ok(out)
    }

    fn readings(&self, kid: &Kid, limit: usize) -> Result<Vec<StoredReading>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(READINGS).map_err(db)?;
        let prefix = device_prefix(kid);
        let end = prefix_end(&prefix);
        let mut out = Vec::new();
        for row in table.range(prefix.as_slice()..end.as_slice()).map_err(db)?.rev().take(limit) {
            let (k, v) = row.map_err(db)?;
            let key = k.value();
            let at = prefix.len();
            let time = key.get(at..at + 8).and_then(|t| t.try_into().ok()).map(u64::from_be_bytes);
            let Some(time) = time else { return Err(StoreError::Corrupt("reading key")) };
            let name = String::from_utf8_lossy(&key[at + 8..]).into_owned();
            let value: serde_json::Value =
                serde_json::from_slice(v.value()).map_err(|_| StoreError::Corrupt("reading"))?;
            out.push(StoredReading {
                time_ms: (time ^ (1 << 63)) as i64,
                name,
                unit: value.get("u").and_then(|u| u.as_str()).map(str::to_owned),
                value: value.get("v").cloned().unwrap_or_default(),
            });
        }
        out.reverse();
        Ok(out)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let table = tx.open_table(META).map_err(db)?;
        Ok(table.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    fn reading_count(&self, kid: &Kid) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let counts = tx.open_table(COUNTS).map_err(db)?;
        Ok(counts.get(kid.as_bytes()).map_err(db)?.map_or(0, |v| v.value()))
    }
}
