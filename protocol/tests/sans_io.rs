//! `protocol` stays sans-IO: no async runtime or socket crate in its dependency tree. (getrandom
//! is present transitively — crypto-bigint enables it by default — but `clippy.toml` forbids
//! calling it or any other global RNG from this crate: randomness is an input.)

use std::process::Command;

#[test]
fn protocol_depends_on_no_runtime_or_sockets() {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "-p", "protocol", "-e", "normal", "--prefix", "none", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("ccm v"), "cargo tree output looks wrong:\n{tree}");
    for banned in ["tokio", "mio", "async-std", "smol", "socket2"] {
        let hit = tree.lines().any(|l| l.split_whitespace().next() == Some(banned));
        assert!(!hit, "protocol must not depend on {banned}:\n{tree}");
    }
}
