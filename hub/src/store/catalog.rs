//! The catalog, on redb: what is small and rarely written — devices, their sealed contexts
//! (EN 303 645 5.4-1), the snapshot of every device's link state with the log sequence it covers,
//! erase floors, and named documents. Each change is one redb transaction (one fsync).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use protocol::oscore::{ContextParams, Kid};
use protocol::senml::{Reading, UnixTimeMillis, Value};
use redb::{
    Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
};

use super::link_state::LinkState;
use super::{DeviceInfo, Kek, StoreError, Write};

const DEVICES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("devices");
const SECRETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("secrets");
/// Link-state snapshot, as of `LOG["snapshot_seq"]`.
const STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("link_state");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Erased devices: log frames before this sequence hold nothing of theirs that counts.
const ERASED: TableDefinition<&[u8], u64> = TableDefinition::new("erased");
const LOG: TableDefinition<&str, u64> = TableDefinition::new("log");
/// Devices whose restored context must be renewed (RFC 8613 B.2) before it is used.
const RENEW: TableDefinition<&[u8], ()> = TableDefinition::new("renew");
const SNAPSHOT_SEQ: &str = "snapshot_seq";
/// The store format, in the `log` table (none: written before formats were stamped, i.e. 2, or
/// 1 while the first format's reading tables are there).
const FORMAT: &str = "format";
/// The store format this hub writes and the newest it reads: 2 = this catalog and the readings
/// log (1 kept readings in redb; they move to the log once). A store of a newer format is
/// refused and left unchanged.
pub(super) const STORE_FORMAT: u64 = 2;
/// The newest format this hub reads: 3 = format 2 restored from a backup — contexts marked for
/// renewal, or renewed (RFC 8613 B.2: with an ID Context, which a hub reading up to 2 would
/// drop and so derive the wrong keys). A catalog becomes 3 when restored or at its first
/// renewal, never otherwise: a store that was not restored stays readable by the previous
/// release.
pub(super) const READS_UP_TO: u64 = 3;
/// The format a restore or a renewed context makes a catalog.
const RENEWED_FORMAT: u64 = 3;
/// The first format kept readings in redb; they move to the log once.
const LEGACY_READINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("readings");
const LEGACY_COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("reading_counts");

/// redb page cache size (read cache and write buffer together): the catalog is read whole
/// once at start and written in snapshots; a cache it rarely hits again was 4 MiB of every
/// hub's resident memory once full (readings live in the log).
const CACHE_BYTES: usize = 1 << 20;

fn db<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// The catalog.
pub(super) struct Catalog {
    /// The database (none while it is reopened after a failed write and could not be yet).
    db: Mutex<Option<Arc<Database>>>,
    path: PathBuf,
    kek: Kek,
    /// A write failed: redb refuses everything after a failed write (even reads) until the
    /// database is opened again, which [`Catalog::recover`] does.
    failed: AtomicBool,
}

impl core::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
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

impl Catalog {
    /// Opens `dir/hearth.redb` with the key-encryption key `dir/kek`. A corrupt database file
    /// is moved aside (never deleted) and a fresh one created, so a bad file cannot make the hub
    /// crash in a loop; the caller reports the outcome.
    pub(super) fn open(dir: &Path) -> Result<(Self, OpenOutcome), StoreError> {
        let path = dir.join("hearth.redb");
        // A store of a newer hub is refused before anything is written to it.
        if path.metadata().is_ok_and(|m| m.len() > 0)
            && let Ok(database) = ReadOnlyDatabase::open(&path)
        {
            too_new(&path, &database)?;
        }
        let kek = Kek::load_or_create(&dir.join("kek"))?;
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
        // (Checked again: a store not closed cleanly cannot be read without redb's repair.)
        too_new(&path, &database)?;
        let tx = database.begin_write().map_err(db)?;
        for t in [DEVICES, SECRETS, STATE] {
            tx.open_table(t).map_err(db)?;
        }
        tx.open_table(META).map_err(db)?;
        tx.open_table(ERASED).map_err(db)?;
        tx.open_table(RENEW).map_err(db)?;
        {
            let mut log = tx.open_table(LOG).map_err(db)?;
            if log.get(FORMAT).map_err(db)?.is_none() {
                log.insert(FORMAT, STORE_FORMAT).map_err(db)?;
            }
        }
        tx.commit().map_err(db)?;
        let catalog = Self {
            db: Mutex::new(Some(Arc::new(database))),
            path,
            kek,
            failed: AtomicBool::new(false),
        };
        Ok((catalog, outcome))
    }

    /// The open database (opened again first if a write failed, so that reads keep working).
    fn handle(&self) -> Result<Arc<Database>, StoreError> {
        if self.failed() {
            let _ = self.recover();
        }
        let slot = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        slot.clone().ok_or_else(|| {
            StoreError::Db("the catalog is closed after a storage failure; reopening".into())
        })
    }

    /// Runs a write, noting its failure (redb fails everything after it until reopened).
    fn writing<T>(&self, write: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
        let result = write();
        if result.is_err() {
            self.failed.store(true, Ordering::Release);
        }
        result
    }

    /// Whether a write failed and the database is not open again yet.
    pub(super) fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// After a failed write: closes the database and opens it again (redb checks and repairs
    /// it), so that reads and writes work again once the disk does. `Ok` once it is open.
    pub(super) fn recover(&self) -> Result<(), StoreError> {
        if !self.failed() {
            return Ok(());
        }
        let mut slot = self.db.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = slot.take() {
            match Arc::try_unwrap(open) {
                Ok(database) => drop(database),
                Err(open) => {
                    // A reader holds it for a moment: next time.
                    *slot = Some(open);
                    return Err(StoreError::Db("the catalog is in use; reopening later".into()));
                }
            }
        }
        match open_db(&self.path) {
            Ok(database) => {
                *slot = Some(Arc::new(database));
                self.failed.store(false, Ordering::Release);
                tracing::info!("catalog reopened after a storage failure");
                Ok(())
            }
            Err(OpenFailure::Fatal(e)) => Err(e),
            Err(OpenFailure::Corrupt(why)) => Err(StoreError::Db(why)),
        }
    }
}

/// Refuses a catalog stamped with a newer store format than [`READS_UP_TO`].
fn too_new(path: &Path, database: &impl ReadableDatabase) -> Result<(), StoreError> {
    let tx = database.begin_read().map_err(db)?;
    let format = match tx.open_table(LOG) {
        Ok(t) => t.get(FORMAT).map_err(db)?.map(|v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(db(e)),
    };
    match format {
        Some(found) if found > READS_UP_TO => Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found: format!("store format {found}"),
            supported: format!("store format {READS_UP_TO}"),
        }),
        _ => Ok(()),
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
        // A file of a newer redb is not corrupt: never move it aside (a downgrade would start
        // with an empty store).
        Ok(Err(redb::DatabaseError::UpgradeRequired(v))) => {
            Err(OpenFailure::Fatal(StoreError::TooNew {
                path: path.to_path_buf(),
                found: format!("database file format {v}"),
                supported: "the one of the redb it was built with".into(),
            }))
        }
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

fn encode_params(p: &ContextParams) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    for part in
        [&p.master_secret[..], &p.master_salt, p.sender_id.as_bytes(), p.recipient_id.as_bytes()]
    {
        out.push(part.len() as u8);
        out.extend_from_slice(part);
    }
    // The ID Context of a renewed context (RFC 8613 B.2) follows; none: nothing more.
    if let Some(c) = &p.id_context {
        out.push(c.len() as u8);
        out.extend_from_slice(c);
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
    let id_context = match take() {
        Some(c) => Some(c),
        None if rest.is_empty() => None,
        None => return None,
    };
    Some(ContextParams {
        master_secret: secret,
        master_salt: salt,
        sender_id: Kid::new(&sender).ok()?,
        recipient_id: Kid::new(&recipient).ok()?,
        id_context,
    })
}

impl Catalog {
    /// Every device's sealed context, opened.
    pub(super) fn contexts(&self) -> Result<Vec<ContextParams>, StoreError> {
        let tx = self.handle()?.begin_read().map_err(db)?;
        let secrets = tx.open_table(SECRETS).map_err(db)?;
        let mut out = Vec::new();
        for row in secrets.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let plain = self.kek.open(k.value(), v.value())?;
            out.push(decode_params(&plain).ok_or(StoreError::Corrupt("sealed context"))?);
        }
        Ok(out)
    }

    /// Every device's link state as of the snapshot, the sequence the snapshot covers, and
    /// the erase floors.
    pub(super) fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let tx = self.handle()?.begin_read().map_err(db)?;
        let secrets = tx.open_table(SECRETS).map_err(db)?;
        let state = tx.open_table(STATE).map_err(db)?;
        let mut states = HashMap::new();
        for row in secrets.iter().map_err(db)? {
            let (k, _) = row.map_err(db)?;
            let kid = Kid::new(k.value()).map_err(|_| StoreError::Corrupt("device id"))?;
            let s = match state.get(k.value()).map_err(db)? {
                Some(s) => LinkState::decode(s.value()).ok_or(StoreError::Corrupt("link state"))?,
                None => LinkState::default(),
            };
            states.insert(kid, s);
        }
        let mut floors = HashMap::new();
        for row in tx.open_table(ERASED).map_err(db)?.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            let kid = Kid::new(k.value()).map_err(|_| StoreError::Corrupt("device id"))?;
            floors.insert(kid, v.value());
        }
        let seq =
            tx.open_table(LOG).map_err(db)?.get(SNAPSHOT_SEQ).map_err(db)?.map_or(0, |v| v.value());
        Ok(Snapshot { states, seq, floors })
    }

    /// Applies devices added and removed and named documents, in one transaction. A removed
    /// device's readings in log frames before `floor` no longer count.
    pub(super) fn apply(&self, writes: &[&Write], floor: u64) -> Result<(), StoreError> {
        self.writing(|| {
            let tx = self.handle()?.begin_write().map_err(db)?;
            {
                let mut devices = tx.open_table(DEVICES).map_err(db)?;
                let mut secrets = tx.open_table(SECRETS).map_err(db)?;
                let mut state = tx.open_table(STATE).map_err(db)?;
                let mut meta = tx.open_table(META).map_err(db)?;
                let mut erased = tx.open_table(ERASED).map_err(db)?;
                let mut renew = tx.open_table(RENEW).map_err(db)?;
                let mut log = tx.open_table(LOG).map_err(db)?;
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
                            renew.remove(kid.as_bytes()).map_err(db)?;
                        }
                        Write::Renew { kid, params } => {
                            let sealed = self.kek.seal(kid.as_bytes(), &encode_params(params))?;
                            if secrets.get(kid.as_bytes()).map_err(db)?.is_some() {
                                secrets.insert(kid.as_bytes(), sealed.as_slice()).map_err(db)?;
                                log.insert(FORMAT, RENEWED_FORMAT).map_err(db)?;
                            }
                            renew.remove(kid.as_bytes()).map_err(db)?;
                        }
                        Write::Remove { kid } => {
                            devices.remove(kid.as_bytes()).map_err(db)?;
                            secrets.remove(kid.as_bytes()).map_err(db)?;
                            state.remove(kid.as_bytes()).map_err(db)?;
                            renew.remove(kid.as_bytes()).map_err(db)?;
                            erased.insert(kid.as_bytes(), floor).map_err(db)?;
                        }
                        Write::Retire { kid } => {
                            devices.remove(kid.as_bytes()).map_err(db)?;
                            secrets.remove(kid.as_bytes()).map_err(db)?;
                            state.remove(kid.as_bytes()).map_err(db)?;
                            renew.remove(kid.as_bytes()).map_err(db)?;
                        }
                        Write::Readings { .. }
                        | Write::State { .. }
                        | Write::Lease { .. }
                        | Write::LogMeta { .. } => {}
                    }
                }
            }
            tx.commit().map_err(db)
        })
    }

    /// Stores `states` (the link states changed since the last snapshot) and `metas` (the
    /// documents logged so far) as of log sequence `seq`, and forgets erase floors at or below
    /// `first_seq` (no frame before them is left).
    pub(super) fn save_snapshot(
        &self,
        states: &[(Kid, LinkState)],
        metas: &[(String, Vec<u8>)],
        seq: u64,
        first_seq: u64,
    ) -> Result<(), StoreError> {
        self.writing(|| {
            let tx = self.handle()?.begin_write().map_err(db)?;
            {
                let mut table = tx.open_table(STATE).map_err(db)?;
                for (kid, s) in states {
                    table.insert(kid.as_bytes(), s.encode().as_slice()).map_err(db)?;
                }
                let mut meta = tx.open_table(META).map_err(db)?;
                for (key, value) in metas {
                    meta.insert(key.as_str(), value.as_slice()).map_err(db)?;
                }
                tx.open_table(LOG).map_err(db)?.insert(SNAPSHOT_SEQ, seq).map_err(db)?;
                tx.open_table(ERASED)
                    .map_err(db)?
                    .retain(|_, floor| floor > first_seq)
                    .map_err(db)?;
            }
            tx.commit().map_err(db)
        })
    }

    pub(super) fn devices(&self) -> Result<Vec<DeviceInfo>, StoreError> {
        let tx = self.handle()?.begin_read().map_err(db)?;
        let devices = tx.open_table(DEVICES).map_err(db)?;
        let mut out = Vec::new();
        for row in devices.iter().map_err(db)? {
            let (_, v) = row.map_err(db)?;
            out.push(serde_json::from_slice(v.value()).map_err(|_| StoreError::Corrupt("device"))?);
        }
        Ok(out)
    }

    pub(super) fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.handle()?.begin_read().map_err(db)?;
        let table = tx.open_table(META).map_err(db)?;
        Ok(table.get(key).map_err(db)?.map(|v| v.value().to_vec()))
    }

    /// Whether the first store format's reading tables are still there.
    pub(super) fn has_legacy(&self) -> Result<bool, StoreError> {
        let tx = self.handle()?.begin_read().map_err(db)?;
        Ok(tx.list_tables().map_err(db)?.any(|t| t.name() == LEGACY_READINGS.name()))
    }

    /// Up to `max` readings kept by the first store format (in redb), after key `after`, by
    /// device; with the key to continue after, if any are left.
    pub(super) fn legacy_readings(
        &self,
        after: Option<&[u8]>,
        max: usize,
    ) -> Result<LegacyChunk, StoreError> {
        use std::ops::Bound;
        let tx = self.handle()?.begin_read().map_err(db)?;
        let table = tx.open_table(LEGACY_READINGS).map_err(db)?;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut out: Vec<(Kid, Vec<Reading>)> = Vec::new();
        let mut last = None;
        for row in table.range::<&[u8]>((from, Bound::Unbounded)).map_err(db)?.take(max) {
            let (k, v) = row.map_err(db)?;
            last = Some(k.value().to_vec());
            let Some((kid, reading)) = decode_legacy(k.value(), v.value()) else {
                continue;
            };
            match out.last_mut() {
                Some((prev, rs)) if *prev == kid => rs.push(reading),
                _ => out.push((kid, vec![reading])),
            }
        }
        Ok((out, last))
    }

    /// Deletes the first format's reading tables (after their readings moved to the log).
    pub(super) fn drop_legacy(&self) -> Result<(), StoreError> {
        let tx = self.handle()?.begin_write().map_err(db)?;
        tx.delete_table(LEGACY_READINGS).map_err(db)?;
        tx.delete_table(LEGACY_COUNTS).map_err(db)?;
        tx.commit().map_err(db)
    }
}

/// Backups (`crate::backup`): the catalog as one read transaction saw it, and a catalog made
/// from such a dump.
impl Catalog {
    /// A read transaction: a consistent view for [`dump`], taken where the caller needs it.
    pub(super) fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        self.handle()?.begin_read().map_err(db)
    }

    /// Devices whose context must be renewed before use (set by a restore).
    pub(super) fn renewals(&self) -> Result<Vec<Kid>, StoreError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(RENEW).map_err(db)?;
        let mut out = Vec::new();
        for row in table.iter().map_err(db)? {
            let (k, _) = row.map_err(db)?;
            out.push(Kid::new(k.value()).map_err(|_| StoreError::Corrupt("device id"))?);
        }
        Ok(out)
    }
}

/// Appends a named document to a [`dump`]: restored after (so in place of) the dump's own.
pub(crate) fn dump_meta(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    out.push(3);
    out.extend_from_slice(&(key.len() as u32).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

/// Every row of the catalog's tables in `tx`: `(table, key, value)` records, each
/// `tag u8 ‖ len u32 ‖ key ‖ len u32 ‖ value` (integers big-endian). Sealed secrets stay sealed.
pub(super) fn dump(tx: &redb::ReadTransaction) -> Result<Vec<u8>, StoreError> {
    fn put(out: &mut Vec<u8>, tag: u8, k: &[u8], v: &[u8]) {
        out.push(tag);
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v);
    }
    let mut out = Vec::new();
    for (tag, t) in [(0u8, DEVICES), (1, SECRETS), (2, STATE)] {
        for row in tx.open_table(t).map_err(db)?.iter().map_err(db)? {
            let (k, v) = row.map_err(db)?;
            put(&mut out, tag, k.value(), v.value());
        }
    }
    for row in tx.open_table(META).map_err(db)?.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        put(&mut out, 3, k.value().as_bytes(), v.value());
    }
    for row in tx.open_table(ERASED).map_err(db)?.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        put(&mut out, 4, k.value(), &v.value().to_be_bytes());
    }
    for row in tx.open_table(LOG).map_err(db)?.iter().map_err(db)? {
        let (k, v) = row.map_err(db)?;
        put(&mut out, 5, k.value().as_bytes(), &v.value().to_be_bytes());
    }
    Ok(out)
}

/// Creates the catalog `path` from a [`dump`], with every device marked for renewal before
/// its context is used (a restored context may be behind what the old hub did with it).
/// Returns the number of devices.
pub(crate) fn restore_dump(path: &Path, dump: &[u8]) -> Result<usize, StoreError> {
    let corrupt = || StoreError::Corrupt("catalog in the backup");
    crate::private_fs::touch(path).map_err(|e| StoreError::Io(path.display().to_string(), e))?;
    let database = Database::create(path).map_err(db)?;
    let tx = database.begin_write().map_err(db)?;
    let mut devices = 0;
    {
        let mut tables = [DEVICES, SECRETS, STATE].map(|t| tx.open_table(t));
        let mut meta = tx.open_table(META).map_err(db)?;
        let mut erased = tx.open_table(ERASED).map_err(db)?;
        let mut log = tx.open_table(LOG).map_err(db)?;
        let mut renew = tx.open_table(RENEW).map_err(db)?;
        let mut rest = dump;
        let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
            let (len, tail) = rest.split_at_checked(4)?;
            let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
            let (v, tail) = tail.split_at_checked(len)?;
            *rest = tail;
            Some(v.to_vec())
        };
        while let Some((&tag, tail)) = rest.split_first() {
            rest = tail;
            let k = take(&mut rest).ok_or_else(corrupt)?;
            let v = take(&mut rest).ok_or_else(corrupt)?;
            let word = || v.as_slice().try_into().map(u64::from_be_bytes).map_err(|_| corrupt());
            let text = || std::str::from_utf8(&k).map_err(|_| corrupt());
            match tag {
                0..=2 => {
                    let table = tables[usize::from(tag)].as_mut().map_err(db)?;
                    table.insert(k.as_slice(), v.as_slice()).map_err(db)?;
                    if tag == 1 {
                        renew.insert(k.as_slice(), ()).map_err(db)?;
                        devices += 1;
                    }
                }
                3 => {
                    meta.insert(text()?, v.as_slice()).map_err(db)?;
                }
                4 => {
                    erased.insert(k.as_slice(), word()?).map_err(db)?;
                }
                5 => {
                    let (key, value) = (text()?, word()?);
                    if key == FORMAT && value > READS_UP_TO {
                        return Err(StoreError::TooNew {
                            path: path.to_path_buf(),
                            found: format!("store format {value}"),
                            supported: format!("store format {READS_UP_TO}"),
                        });
                    }
                    log.insert(key, value).map_err(db)?;
                }
                _ => return Err(corrupt()),
            }
        }
        // Contexts marked for renewal make the store format 3 at once: the previous release
        // does not know the marks and would use the restored contexts as they are — the very
        // nonce reuse and replays the renewal prevents.
        if devices > 0 {
            log.insert(FORMAT, RENEWED_FORMAT).map_err(db)?;
        }
    }
    tx.commit().map_err(db)?;
    Ok(devices)
}

/// First-format readings by device, and the key to continue after.
pub(super) type LegacyChunk = (Vec<(Kid, Vec<Reading>)>, Option<Vec<u8>>);

/// What the catalog holds about the log.
#[derive(Debug, Default)]
pub(super) struct Snapshot {
    /// Every device's link state as of `seq`.
    pub(super) states: HashMap<Kid, LinkState>,
    /// The last log sequence the snapshot includes.
    pub(super) seq: u64,
    /// Erase floors.
    pub(super) floors: HashMap<Kid, u64>,
}

/// A first-format reading: key `len(kid) ‖ kid ‖ time (sign bit flipped) ‖ name`, value JSON
/// `{"u": unit, "v": value}`.
fn decode_legacy(key: &[u8], value: &[u8]) -> Option<(Kid, Reading)> {
    let (&n, rest) = key.split_first()?;
    let (kid, rest) = rest.split_at_checked(usize::from(n))?;
    let (time, name) = rest.split_at_checked(8)?;
    let time = (u64::from_be_bytes(time.try_into().ok()?) ^ (1 << 63)) as i64;
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let value = match &v["v"] {
        serde_json::Value::Bool(b) => Value::Bool(*b),
        n => Value::Number(n.as_f64()?),
    };
    Some((
        Kid::new(kid).ok()?,
        Reading {
            name: String::from_utf8(name.to_vec()).ok()?,
            unit: v["u"].as_str().map(str::to_owned),
            value,
            time: UnixTimeMillis(time),
        },
    ))
}
