//! Backups of a real store: everything comes back, devices are marked for renewal, and a
//! wrong passphrase, a flipped byte or a cut-off file leave nothing behind.

use protocol::oscore::{ContextParams, Kid};
use protocol::senml::{Reading, UnixTimeMillis, Value};

use super::*;
use crate::store::{DeviceInfo, Write};

fn kid(n: u8) -> Kid {
    Kid::new(&[n, 0x42]).expect("kid")
}

fn device(k: Kid) -> Write {
    let info = DeviceInfo {
        id: k.into(),
        about: protocol::pairing::Descriptor {
            model: "hearth-temp-1".into(),
            serial: format!("s{k}"),
            firmware_version: 1,
            updatable: true,
            verifies_signatures: false,
            capabilities: vec!["temperature".into()],
            support_end: protocol::time::UnixTime(2_000_000_000),
        },
        paired_at: 1_700_000_000,
    };
    let params = ContextParams {
        master_secret: vec![k.as_bytes()[0]; 16],
        master_salt: vec![1, 2],
        sender_id: Kid::new(&[0]).expect("kid"),
        recipient_id: k,
        id_context: None,
    };
    Write::Device { info, params }
}

fn readings(k: Kid, from: i64, n: i64) -> Write {
    let readings = (from..from + n)
        .map(|t| Reading {
            name: "temp".into(),
            unit: Some("Cel".into()),
            value: Value::Number(t as f64),
            time: UnixTimeMillis(t),
        })
        .collect();
    Write::Readings { kid: k, readings }
}

fn limits() -> StoreLimits {
    StoreLimits { segment_bytes: 4096, min_free_bytes: 0, ..StoreLimits::default() }
}

fn pass() -> Passphrase {
    Passphrase::new("a long enough passphrase")
}

/// A hub data directory with two devices, readings over several segments and documents.
fn hub_dir(dir: &Path) -> HubStore {
    crate::private_fs::create_dir(dir).expect("mkdir");
    let (store, _) = HubStore::open(dir, limits()).expect("open");
    store.commit(&[device(kid(1)), device(kid(2))]).expect("pair");
    for i in 0..40 {
        store
            .commit(&[readings(kid(1), i * 10, 10), readings(kid(2), i * 10, 3)])
            .expect("readings");
    }
    store
        .commit(&[
            Write::Meta { key: "devices".into(), value: b"{\"names\":1}".to_vec() },
            Write::LogMeta { key: "security_counters".into(), value: b"[7]".to_vec() },
        ])
        .expect("meta");
    fs::write(dir.join("upstream.cursor"), b"42").expect("cursor");
    crate::private_fs::create_dir(&dir.join("updates/m-2")).expect("updates");
    fs::write(dir.join("updates/m-2/image"), b"firmware").expect("image");
    fs::write(dir.join("hub-cert.pem"), b"machine specific").expect("cert");
    store
}

#[test]
fn restore_brings_back_everything_and_marks_every_device_for_renewal() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = tmp.path().join("old");
    let store = hub_dir(&old);
    let file = tmp.path().join("hub.backup");
    let made = create(&store, &old, &file, &pass()).expect("backup");
    assert_eq!(made.devices, 2);
    assert!(made.segments > 1, "several segments: {made:?}");
    // After the backup the old hub runs on: that is not in the backup.
    store.commit(&[readings(kid(1), 10_000, 5)]).expect("later");
    let before: Vec<i64> =
        store.readings(&kid(1), 1000).expect("r").iter().map(|r| r.time_ms).collect();
    drop(store);

    let new = tmp.path().join("new");
    let restored = restore(&file, &new, &pass()).expect("restore");
    assert_eq!(restored, made);
    assert!(!new.join("hub-cert.pem").exists(), "machine-specific file copied");
    assert_eq!(fs::read(new.join("upstream.cursor")).expect("cursor"), b"42");
    assert_eq!(fs::read(new.join("updates/m-2/image")).expect("image"), b"firmware");
    let (store, _) = HubStore::open(&new, limits()).expect("open restored");
    let mut renew = store.renewals().expect("renewals");
    renew.sort();
    assert_eq!(renew, vec![kid(1), kid(2)]);
    assert_eq!(store.devices().expect("devices").len(), 2);
    let got: Vec<i64> =
        store.readings(&kid(1), 1000).expect("r").iter().map(|r| r.time_ms).collect();
    assert_eq!(got, before[..before.len() - 5], "readings up to the backup, exactly once");
    assert_eq!(store.reading_count(&kid(2)).expect("count"), 120);
    assert_eq!(store.meta("devices").expect("meta").as_deref(), Some(&b"{\"names\":1}"[..]));
    assert_eq!(store.meta("security_counters").expect("meta").as_deref(), Some(&b"[7]"[..]));
    let peers = store.load_peers().expect("secrets open under the restored key");
    assert_eq!(peers.len(), 2);
    // A renewal is durable and clears the mark.
    let mut params = peers[0].params.clone();
    params.id_context = Some(vec![9; 16]);
    let k = params.recipient_id;
    store.commit(&[Write::Renew { kid: k, params }]).expect("renew");
    assert_eq!(store.renewals().expect("renewals").len(), 1);
    drop(store);
    let (store, _) = HubStore::open(&new, limits()).expect("reopen");
    let again = store.load_peers().expect("peers");
    let p = again.iter().find(|p| p.params.recipient_id == k).expect("peer");
    assert_eq!(p.params.id_context.as_deref(), Some(&[9u8; 16][..]));
    assert!(!store.renewals().expect("renewals").contains(&k));
}

#[test]
fn refusals_leave_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = tmp.path().join("old");
    let store = hub_dir(&old);
    let file = tmp.path().join("hub.backup");
    create(&store, &old, &file, &pass()).expect("backup");
    let bytes = fs::read(&file).expect("read");
    let new = tmp.path().join("new");
    let listing = || {
        let mut v: Vec<_> = fs::read_dir(tmp.path())
            .expect("ls")
            .map(|e| e.expect("e").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let clean = listing();

    let e = restore(&file, &new, &Passphrase::new("not the passphrase")).expect_err("wrong");
    assert!(matches!(e, BackupError::WrongPassphrase), "{e}");
    assert!(e.to_string().contains("wrong passphrase"), "{e}");
    assert_eq!(listing(), clean);

    let flipped = tmp.path().join("flipped.backup");
    let mut t = bytes.clone();
    let at = t.len() / 2;
    t[at] ^= 1;
    fs::write(&flipped, &t).expect("write");
    let e = restore(&flipped, &new, &pass()).expect_err("flipped");
    // (a small backup is one chunk: a flipped byte there reads like a wrong passphrase)
    assert!(matches!(e, BackupError::Tampered(_) | BackupError::WrongPassphrase), "{e}");
    fs::write(&flipped, &bytes[..bytes.len() - 100]).expect("write");
    let e = restore(&flipped, &new, &pass()).expect_err("cut");
    assert!(
        matches!(
            e,
            BackupError::Truncated | BackupError::Tampered(_) | BackupError::WrongPassphrase
        ),
        "{e}"
    );
    fs::remove_file(&flipped).expect("rm");
    assert_eq!(listing(), clean);

    // A directory that holds anything is refused; an empty one is used.
    let e = restore(&file, &old, &pass()).expect_err("not empty");
    assert!(matches!(e, BackupError::NotEmpty(_)), "{e}");
    fs::create_dir(&new).expect("mkdir");
    restore(&file, &new, &pass()).expect("into an empty directory");
    assert!(new.join("hearth.redb").exists());
    // A short passphrase is refused before anything is written.
    let short = create(&store, &old, &tmp.path().join("x"), &Passphrase::new("short")).err();
    assert!(matches!(short, Some(BackupError::ShortPassphrase)));
    assert!(!tmp.path().join("x").exists());
}

#[test]
fn archive_names_outside_the_data_directory_are_refused() {
    assert_eq!(
        target("readings/00000000000000000001.seg"),
        Some(PathBuf::from("readings/00000000000000000001.seg"))
    );
    assert_eq!(target("files/kek"), Some(PathBuf::from("kek")));
    assert_eq!(target("files/updates/a/b"), Some(PathBuf::from("updates/a/b")));
    for bad in [
        "files/../x",
        "/etc/passwd",
        "files/hub-cert.pem",
        "readings/1.seg",
        "other",
        "files/control.sock",
    ] {
        assert_eq!(target(bad), None, "{bad}");
    }
}
