//! The data directory is private to the hub's user (EN 303 645 5.4-1, 6: it holds keys and
//! personal data): files are created 0600 and folders 0700, and a start-up check tightens
//! anything found more open.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` (and parents) with mode 0700.
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates `path` empty with mode 0600 if it does not exist (so that a library that opens it
/// later never creates it with the process umask).
pub(crate) fn touch(path: &Path) -> std::io::Result<()> {
    OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(path)?;
    Ok(())
}

/// Opens `path` for reading and writing, created empty (or truncated) with mode 0600.
pub(crate) fn create(path: &Path) -> std::io::Result<fs::File> {
    OpenOptions::new().read(true).write(true).create(true).truncate(true).mode(0o600).open(path)
}

/// Makes the entries of `dir` (files created, renamed or deleted in it) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` atomically (temporary file, then rename), mode 0600.
pub(crate) fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// Tightens every file below `dir` to 0600 and every folder to 0700, except `keep` (a secret that
/// was readable by others cannot be made secret again by `chmod`: its owner refuses it); returns
/// what it changed.
pub(crate) fn restrict(dir: &Path, keep: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            let path = entry.path();
            let (want, is_dir) = if meta.is_dir() { (0o700, true) } else { (0o600, false) };
            if meta.file_type().is_symlink() || keep.contains(&path) {
                continue;
            }
            if meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(want))?;
                changed.push(path.clone());
            }
            if is_dir {
                stack.push(path);
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_private_and_tightens_what_is_open() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("data");
        create_dir(&dir.join("updates")).expect("dir");
        write(&dir.join("updates/a"), b"x").expect("write");
        touch(&dir.join("db")).expect("touch");
        for p in ["updates/a", "db"] {
            let mode = fs::metadata(dir.join(p)).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{p}");
        }
        fs::write(dir.join("open"), b"y").expect("write");
        fs::set_permissions(dir.join("open"), fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::write(dir.join("secret"), b"z").expect("write");
        fs::set_permissions(dir.join("secret"), fs::Permissions::from_mode(0o644)).expect("chmod");
        let changed = restrict(&dir, &[dir.join("secret")]).expect("restrict");
        assert_eq!(changed, vec![dir.join("open")]);
        let mode = fs::metadata(dir.join("open")).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
