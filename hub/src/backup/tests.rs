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
    let made = create(&store, &old, None, &[], &file, &pass()).expect("backup");
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
    // Restored contexts wait for renewal: the store is format 3 at once, so the previous
    // release (reading up to 2, knowing no renewal marks) refuses it instead of using them.
    assert_eq!(store_format(&new), Some(3));
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
    drop(store);
    // A renewed context keeps it format 3: the previous release (reading up to 2) refuses it
    // rather than derive the wrong keys from it.
    assert_eq!(store_format(&new), Some(3));
}

/// The store format stamped in a data directory's catalog.
fn store_format(data_dir: &std::path::Path) -> Option<u64> {
    let db = redb::Database::open(data_dir.join("hearth.redb")).expect("db");
    let tx = redb::ReadableDatabase::begin_read(&db).expect("tx");
    let log: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("log");
    tx.open_table(log).expect("log").get("format").expect("get").map(|v| v.value())
}

#[test]
fn refusals_leave_nothing_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = tmp.path().join("old");
    let store = hub_dir(&old);
    let file = tmp.path().join("hub.backup");
    create(&store, &old, None, &[], &file, &pass()).expect("backup");
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
    let short =
        create(&store, &old, None, &[], &tmp.path().join("x"), &Passphrase::new("short")).err();
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

#[test]
fn the_configuration_and_the_upstream_files_it_names_come_back_pointing_at_their_copies() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = tmp.path().join("old");
    let store = hub_dir(&old);
    let etc = tmp.path().join("etc");
    fs::create_dir(&etc).expect("etc");
    fs::write(etc.join("pw"), "broker secret\n").expect("pw");
    fs::write(etc.join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").expect("ca");
    let config = etc.join("hub.toml");
    let text = format!(
        "coap_bind = \"127.0.0.1:5999\"\n[upstream]\nurl = \"mqtts://broker.example:8883\"\n\
         username = \"home\"\npassword_file = \"{}\"\nca_cert = \"{}\"\n",
        etc.join("pw").display(),
        etc.join("ca.pem").display()
    );
    fs::write(&config, &text).expect("config");
    let file = tmp.path().join("b");
    let made = create(&store, &old, Some(&config), &[], &file, &pass()).expect("backup");
    let new = tmp.path().join("new");
    assert_eq!(restore(&file, &new, &pass()).expect("restore"), made);
    let restored = new.join(RESTORED_CONFIG);
    let t: toml::Table =
        fs::read_to_string(restored.join(CONFIG_FILE)).expect("config").parse().expect("toml");
    assert_eq!(t["coap_bind"].as_str(), Some("127.0.0.1:5999"));
    let up = t["upstream"].as_table().expect("upstream");
    assert_eq!(up["url"].as_str(), Some("mqtts://broker.example:8883"));
    let pw = PathBuf::from(up["password_file"].as_str().expect("pw"));
    assert_eq!(
        pw,
        std::path::absolute(&new).expect("abs").join(RESTORED_CONFIG).join(UPSTREAM_PASSWORD)
    );
    assert_eq!(fs::read_to_string(pw).expect("pw"), "broker secret\n");
    let ca = PathBuf::from(up["ca_cert"].as_str().expect("ca"));
    assert_eq!(fs::read(ca).expect("ca"), fs::read(etc.join("ca.pem")).expect("ca"));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(restored.join(UPSTREAM_PASSWORD)).expect("meta").permissions().mode();
    assert_eq!(mode & 0o077, 0, "the password file is private");
}

#[test]
fn an_offline_backup_needs_a_store_and_opens_it_itself() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = tmp.path().join("old");
    drop(hub_dir(&old));
    let file = tmp.path().join("b");
    let s = create_offline(&old, None, &file, &pass()).expect("offline backup");
    assert_eq!(s.devices, 2);
    let e =
        create_offline(&tmp.path().join("nothing"), None, &file, &pass()).expect_err("no store");
    assert!(e.to_string().contains("no hub store"), "{e}");
    // While the store is open elsewhere (a running hub), it is refused, not copied torn.
    let (_open, _) = HubStore::open(&old, limits()).expect("open");
    assert!(create_offline(&old, None, &tmp.path().join("c"), &pass()).is_err());
}

#[test]
fn documents_the_hub_holds_in_memory_go_in_as_they_are_now() {
    let tmp = tempfile::tempdir().expect("tmp");
    let old = tmp.path().join("old");
    let store = hub_dir(&old);
    let file = tmp.path().join("b");
    let current = [("devices", b"{\"names\":2}".to_vec())];
    create(&store, &old, None, &current, &file, &pass()).expect("backup");
    assert_eq!(store.meta("devices").expect("meta").as_deref(), Some(&b"{\"names\":1}"[..]));
    let new = tmp.path().join("new");
    restore(&file, &new, &pass()).expect("restore");
    let (store, _) = HubStore::open(&new, limits()).expect("open");
    assert_eq!(store.meta("devices").expect("meta").as_deref(), Some(&b"{\"names\":2}"[..]));
}
