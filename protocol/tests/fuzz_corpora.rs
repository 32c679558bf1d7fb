//! Replays every fuzz target's corpus (`fuzz/corpus/<target>/`) on stable Rust, so CI exercises
//! the targets' invariants without nightly. The corpora are the hand-written seeds plus the
//! inputs of a `cargo fuzz cmin` after fuzzing runs (files under 2 KiB).

use std::fs;
use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut n = 0;
    for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("entry").path();
        let data = fs::read(&path).expect("read seed");
        f(&data);
        // Truncations and single-byte flips of each seed too: cheap extra coverage.
        for cut in 0..data.len().min(64) {
            f(&data[..cut]);
        }
        for i in 0..data.len().min(256) {
            let mut m = data.clone();
            m[i] ^= 0x5a;
            f(&m);
        }
        n += 1;
    }
    assert!(n > 0, "empty corpus for {target}");
}

#[test]
fn oscore_unprotect() {
    replay("oscore_unprotect", protocol::fuzzing::oscore_unprotect);
}

#[test]
fn coap_options() {
    replay("coap_options", protocol::fuzzing::coap_options);
}

#[test]
fn pairing_messages() {
    replay("pairing_messages", protocol::fuzzing::pairing_messages);
}

#[test]
fn manifest() {
    replay("manifest", protocol::fuzzing::manifest);
}

#[test]
fn senml() {
    replay("senml", protocol::fuzzing::senml);
}

#[test]
fn replay_window() {
    replay("replay_window", protocol::fuzzing::replay_window);
}

#[test]
fn hub_datagram() {
    replay("hub_datagram", protocol::fuzzing::hub_datagram);
}

#[test]
fn link_command() {
    replay("link_command", protocol::fuzzing::link_command);
}
