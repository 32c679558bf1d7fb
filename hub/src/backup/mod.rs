//! Backup and restore to a new gateway (issue 20): `hub backup` writes everything the owner set
//! up — the store (catalog and readings log, at one consistent point) and the data directory's
//! files that are not bound to this machine — into one file encrypted under the owner's
//! passphrase (`crypt`); `hub restore` makes a new data directory from it, with every device's
//! OSCORE context marked "renew before use" (RFC 8613 B.2, `protocol::oscore::renew`): a
//! restored context may be behind what the old hub did with it after the backup, so it is
//! never used as it is (no nonce reused, no replay accepted).
//!
//! Not copied (made fresh by the new hub): the control socket, the TLS certificate and its key
//! (bound to this gateway: the new hub shows its own fingerprint), a pending factory reset,
//! anything moved aside as corrupt, and derived files (log indexes, rebuilt at start).
//!
//! The configuration file the hub runs with (upstream broker, MQTT, trust keys given there)
//! lives outside the data directory: the backup carries it with the upstream password and CA
//! files it names, and a restore writes them to `D/restored-config/` (`hub.toml` naming the
//! restored files), for the new hub's `--config`.

pub mod cli;
mod crypt;

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

pub use crypt::{BackupError, MIN_PASSPHRASE, Passphrase};
use crypt::{Kdf, OpenReader, SealWriter, unwrap_io};

use crate::store::{BackupPoint, HubStore, StoreLimits};

/// The archive inside the encryption.
const ARCHIVE_MAGIC: &[u8; 8] = b"HRTHARC1";
const TAG_END: u8 = 0;
const TAG_FILE: u8 = 1;
/// The catalog's rows (see `store::catalog::dump`).
const CATALOG: &str = "catalog";
/// Log segments go under this name.
const READINGS: &str = "readings";
/// Data-directory files that belong to this machine or are made at start.
const NOT_COPIED: [&str; 6] =
    ["control.sock", "factory-reset", "hub-cert.pem", "hub-key.sealed", "hearth.redb", READINGS];
/// Where a restore puts the configuration file and the files it names.
pub const RESTORED_CONFIG: &str = "restored-config";
/// The configuration's files in the archive (`config/<name>`).
const CONFIG_FILE: &str = "hub.toml";
const UPSTREAM_PASSWORD: &str = "upstream-password";
const UPSTREAM_CA: &str = "upstream-ca.pem";
/// Longest name in the archive.
const MAX_NAME: usize = 1024;

/// What a backup holds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Devices.
    pub devices: usize,
    /// Log segments.
    pub segments: usize,
    /// Other files of the data directory.
    pub files: usize,
    /// Plaintext bytes.
    pub bytes: u64,
}

/// Writes a backup of the running hub's store and data directory to `out` (atomically: a
/// temporary file beside it, renamed when complete). `current` are named documents the hub
/// keeps in memory and writes to the store only now and then (the device directory: names
/// and rooms), as they are now: they replace the stored ones in the backup.
pub fn create(
    store: &HubStore,
    data_dir: &Path,
    config: Option<&Path>,
    current: &[(&str, Vec<u8>)],
    out: &Path,
    pass: &Passphrase,
) -> Result<Summary, BackupError> {
    pass.check()?;
    let mut point = store.backup_point()?;
    for (key, value) in current {
        crate::store::dump_meta(&mut point.catalog, key, value);
    }
    let devices = store.devices()?.len();
    write_file(out, pass, Kdf::default(), |w| {
        let mut s = write_archive(w, &point, data_dir, devices)?;
        if let Some(c) = config {
            write_config(w, c, &mut s)?;
        }
        w.write_all(&[TAG_END])?;
        Ok(s)
    })
}

/// The configuration file and the upstream password and CA files it names.
fn write_config(w: &mut dyn Write, config: &Path, s: &mut Summary) -> std::io::Result<()> {
    let text = fs::read(config)?;
    put_entry(w, &format!("config/{CONFIG_FILE}"), text.len() as u64, &mut text.as_slice())?;
    s.files += 1;
    s.bytes += text.len() as u64;
    let table: toml::Table = std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| std::io::Error::other("the configuration file does not parse"))?;
    let upstream = table.get("upstream").and_then(toml::Value::as_table);
    for (key, name) in [("password_file", UPSTREAM_PASSWORD), ("ca_cert", UPSTREAM_CA)] {
        let Some(path) = upstream.and_then(|u| u.get(key)).and_then(toml::Value::as_str) else {
            continue;
        };
        let mut f =
            File::open(path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
        let len = f.metadata()?.len();
        put_entry(w, &format!("config/{name}"), len, &mut f)?;
        s.files += 1;
        s.bytes += len;
    }
    Ok(())
}

/// Writes a backup of a hub that is not running (its store is opened here).
pub fn create_offline(
    data_dir: &Path,
    config: Option<&Path>,
    out: &Path,
    pass: &Passphrase,
) -> Result<Summary, BackupError> {
    pass.check()?;
    if !data_dir.join("hearth.redb").exists() {
        return Err(BackupError::Io(
            data_dir.display().to_string(),
            std::io::Error::new(std::io::ErrorKind::NotFound, "no hub store here"),
        ));
    }
    let (store, _) = HubStore::open(data_dir, StoreLimits::default())?;
    create(&store, data_dir, config, &[], out, pass)
}

fn write_file(
    out: &Path,
    pass: &Passphrase,
    kdf: Kdf,
    body: impl FnOnce(&mut dyn Write) -> std::io::Result<Summary>,
) -> Result<Summary, BackupError> {
    let io = |e| BackupError::Io(out.display().to_string(), e);
    let tmp = out.with_extension("partial");
    let file = crate::private_fs::create(&tmp).map_err(io)?;
    let result = (|| {
        let mut w = SealWriter::new(BufWriter::new(file), pass, kdf)?;
        let summary = body(&mut w).map_err(io)?;
        let file = w.finish().map_err(io)?.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        fs::rename(&tmp, out).map_err(io)?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn put_entry(w: &mut dyn Write, name: &str, len: u64, data: &mut dyn Read) -> std::io::Result<()> {
    w.write_all(&[TAG_FILE])?;
    w.write_all(&(name.len() as u16).to_be_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&len.to_be_bytes())?;
    let copied = std::io::copy(&mut data.take(len), w)?;
    if copied != len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{name} shrank"),
        ));
    }
    Ok(())
}

/// Reads a file handle from 0 to a fixed length (positioned reads: the handle is shared).
struct At<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for At<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn write_archive(
    w: &mut dyn Write,
    point: &BackupPoint,
    data_dir: &Path,
    devices: usize,
) -> std::io::Result<Summary> {
    let mut s = Summary { devices, ..Summary::default() };
    w.write_all(ARCHIVE_MAGIC)?;
    put_entry(w, CATALOG, point.catalog.len() as u64, &mut point.catalog.as_slice())?;
    s.bytes += point.catalog.len() as u64;
    for (first, file, len) in &point.segments {
        let name = format!("{READINGS}/{first:020}.seg");
        put_entry(w, &name, *len, &mut At { file, pos: 0 })?;
        s.segments += 1;
        s.bytes += len;
    }
    // The data directory's other files (the key-encryption key that the catalog's secrets are
    // sealed under, web account, upstream cursor, releases, ...).
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(data_dir.join(&rel))?.collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else { continue };
            let top = rel.as_os_str().is_empty();
            if top && NOT_COPIED.iter().any(|n| name == *n || name.starts_with(&format!("{n}."))) {
                continue;
            }
            if name.starts_with('.') || name.ends_with(".tmp") {
                continue;
            }
            let ty = e.file_type()?;
            let path = rel.join(&name);
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                let mut f = File::open(e.path())?;
                let len = f.metadata()?.len();
                put_entry(w, &format!("files/{}", path.display()), len, &mut f)?;
                s.files += 1;
                s.bytes += len;
            }
        }
    }
    Ok(s)
}

/// Where an archive name goes in the new data directory, if it is one this hub writes.
fn target(name: &str) -> Option<PathBuf> {
    let rel = Path::new(name);
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    if let Some(seg) = name.strip_prefix("readings/") {
        let digits = seg.strip_suffix(".seg")?;
        return (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
            .then(|| rel.to_path_buf());
    }
    if let Some(name) = name.strip_prefix("config/") {
        return [CONFIG_FILE, UPSTREAM_PASSWORD, UPSTREAM_CA]
            .contains(&name)
            .then(|| Path::new(RESTORED_CONFIG).join(name));
    }
    let file = rel.strip_prefix("files").ok()?;
    let top = file.components().next()?.as_os_str().to_str()?;
    (!NOT_COPIED.contains(&top)).then(|| file.to_path_buf())
}

/// Restores the backup `file` into the new data directory `data_dir` (missing or empty). The
/// whole file is read and authenticated into a staging directory beside it first: a wrong
/// passphrase, a damaged or truncated file leaves nothing behind.
pub fn restore(file: &Path, data_dir: &Path, pass: &Passphrase) -> Result<Summary, BackupError> {
    let dir_io = |e| BackupError::Io(data_dir.display().to_string(), e);
    let exists = match fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(data_dir.display().to_string()));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(dir_io(e)),
    };
    let input = File::open(file).map_err(|e| BackupError::Io(file.display().to_string(), e))?;
    let name =
        data_dir.file_name().map_or_else(|| "data".into(), |n| n.to_string_lossy().into_owned());
    let staging = data_dir.with_file_name(format!(".{name}.restoring-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    crate::private_fs::create_dir(&staging).map_err(dir_io)?;
    let final_dir = std::path::absolute(data_dir).map_err(dir_io)?;
    let result = unpack(input, &staging, pass).and_then(|summary| {
        point_config_at(&staging, &final_dir)?;
        if exists {
            fs::remove_dir(data_dir).map_err(dir_io)?;
        }
        fs::rename(&staging, data_dir).map_err(dir_io)?;
        if let Some(parent) = data_dir.parent() {
            let _ = crate::private_fs::sync_dir(parent);
        }
        Ok(summary)
    });
    if result.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    result
}

/// Makes the restored configuration name the restored upstream files (where they will be).
fn point_config_at(staging: &Path, final_dir: &Path) -> Result<(), BackupError> {
    let path = staging.join(RESTORED_CONFIG).join(CONFIG_FILE);
    let io = |e| BackupError::Io(path.display().to_string(), e);
    let Ok(text) = fs::read_to_string(&path) else { return Ok(()) };
    let mut table: toml::Table =
        text.parse().map_err(|_| BackupError::Archive("configuration file does not parse"))?;
    if let Some(up) = table.get_mut("upstream").and_then(toml::Value::as_table_mut) {
        for (key, name) in [("password_file", UPSTREAM_PASSWORD), ("ca_cert", UPSTREAM_CA)] {
            if up.contains_key(key) {
                let to = final_dir.join(RESTORED_CONFIG).join(name);
                up.insert(key.into(), toml::Value::String(to.display().to_string()));
            }
        }
    }
    let text = toml::to_string(&table).map_err(|_| BackupError::Archive("configuration"))?;
    crate::private_fs::write(&path, text.as_bytes()).map_err(io)
}

fn unpack(input: File, staging: &Path, pass: &Passphrase) -> Result<Summary, BackupError> {
    let mut r = OpenReader::new(input, pass)?;
    let rd = |e| unwrap_io("backup file", e);
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(rd)?;
    if &magic != ARCHIVE_MAGIC {
        return Err(BackupError::Archive("not a Hearth archive"));
    }
    let mut s = Summary::default();
    let mut catalog = None;
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag).map_err(rd)?;
        match tag[0] {
            TAG_END => break,
            TAG_FILE => {}
            _ => return Err(BackupError::Archive("unknown entry")),
        }
        let mut len2 = [0u8; 2];
        r.read_exact(&mut len2).map_err(rd)?;
        let n = usize::from(u16::from_be_bytes(len2));
        if n > MAX_NAME {
            return Err(BackupError::Archive("name too long"));
        }
        let mut name = vec![0u8; n];
        r.read_exact(&mut name).map_err(rd)?;
        let name = String::from_utf8(name).map_err(|_| BackupError::Archive("name not UTF-8"))?;
        let mut len8 = [0u8; 8];
        r.read_exact(&mut len8).map_err(rd)?;
        let len = u64::from_be_bytes(len8);
        if name == CATALOG {
            if len > 1 << 30 {
                return Err(BackupError::Archive("catalog too large"));
            }
            let mut buf = Vec::new();
            (&mut r).take(len).read_to_end(&mut buf).map_err(rd)?;
            if buf.len() as u64 != len {
                return Err(BackupError::Truncated);
            }
            catalog = Some(buf);
            continue;
        }
        let rel = target(&name).ok_or(BackupError::Archive("unexpected file name"))?;
        let path = staging.join(&rel);
        if let Some(parent) = path.parent() {
            crate::private_fs::create_dir(parent)
                .map_err(|e| BackupError::Io(parent.display().to_string(), e))?;
        }
        let io = |e| BackupError::Io(path.display().to_string(), e);
        let mut f = crate::private_fs::create(&path).map_err(io)?;
        let copied = std::io::copy(&mut (&mut r).take(len), &mut f).map_err(rd)?;
        if copied != len {
            return Err(BackupError::Truncated);
        }
        f.sync_all().map_err(io)?;
        if name.starts_with("readings/") {
            s.segments += 1;
        } else {
            s.files += 1;
        }
        s.bytes += len;
    }
    r.finish()?;
    let catalog = catalog.ok_or(BackupError::Archive("no catalog"))?;
    s.bytes += catalog.len() as u64;
    s.devices = crate::store::restore_dump(&staging.join("hearth.redb"), &catalog)?;
    for d in [staging.to_path_buf(), staging.join(READINGS)] {
        if d.exists() {
            crate::private_fs::sync_dir(&d)
                .map_err(|e| BackupError::Io(d.display().to_string(), e))?;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests;
