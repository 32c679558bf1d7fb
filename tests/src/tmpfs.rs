//! A small disk for process tests (root only; issue 20 item 1): a tmpfs of a few MiB mounted on
//! a test's own directory, filled with a filler file to make the hub meet a full disk, and
//! unmounted when its guard drops (also when the test fails).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs, unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `mib` MiB on `dir` (created if missing).
    pub fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount -t tmpfs on {}: {} (the disk tests run as root)",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { dir: dir.to_path_buf() }
    }

    /// Where it is mounted.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes free on it.
    pub fn free(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.dir).output();
        let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        text.lines().nth(1).and_then(|l| l.trim().parse().ok()).expect("df answer")
    }

    /// Writes `path` (on this disk) until the disk is full, or `limit` bytes if it comes
    /// first: 64 KiB chunks, then 4 KiB ones to take the last pages. Returns the bytes written.
    pub fn fill(&self, path: &Path, limit: u64) -> u64 {
        let mut f =
            std::fs::OpenOptions::new().create(true).append(true).open(path).expect("filler");
        let mut written = 0;
        for chunk in [64 << 10, 4 << 10] {
            let buf = vec![0x5au8; chunk];
            while written + chunk as u64 <= limit {
                match f.write_all(&buf).and_then(|()| f.sync_data()) {
                    Ok(()) => written += chunk as u64,
                    Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                    Err(e) => panic!("filling {}: {e}", path.display()),
                }
            }
        }
        written
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: whatever still has a file open on it (a hub being killed) lets go later.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}
