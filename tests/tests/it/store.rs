//! The store at start: a corrupt database file is moved aside with a clear error (and kept for
//! inspection) instead of crashing the hub in a loop; a world-readable key file is refused.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use tests::{Hub, bin, free_udp_port};

#[test]
fn a_corrupt_store_is_moved_aside_and_the_hub_starts() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    std::fs::create_dir_all(&data).expect("dir");
    let garbage: Vec<u8> =
        (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(data.join("hearth.redb"), &garbage).expect("write garbage");
    let hub = Hub::start(&data, free_udp_port());
    let aside: Vec<_> = std::fs::read_dir(&data)
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("hearth.redb.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(data.join(&aside[0])).expect("kept"),
        garbage,
        "the bad file is kept as it was"
    );
    let log = std::fs::read_to_string(&hub.log).unwrap_or_default();
    assert!(log.contains("moved aside"), "no clear error in the log:\n{log}");
    assert!(hub.ctl(&["devices"]).as_array().is_some_and(Vec::is_empty));
    drop(hub);

    // The next start opens the fresh store normally (no loop of moving files aside).
    let _hub = Hub::start(&data, free_udp_port());
    let count = std::fs::read_dir(&data)
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("hearth.redb.corrupt-"))
        })
        .count();
    assert_eq!(count, 1);
}

#[test]
fn a_key_file_readable_by_others_is_refused() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("hub");
    drop(Hub::start(&data, free_udp_port()));
    std::fs::set_permissions(data.join("kek"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");
    let out =
        Command::new(bin("hub")).args(["run", "--data-dir"]).arg(&data).output().expect("run hub");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("0600"), "{err}");
}
