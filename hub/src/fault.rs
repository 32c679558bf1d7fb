//! Fault injection for tests (feature `fault-injection`, never in a release build): control
//! commands that wedge other subsystems on purpose, so that tests can show the sensor link's
//! failure domain holds (DESIGN.md, "Failure domains and budgets"), and kill points where the
//! crash campaign has the hub SIGKILL itself (mid-commit, mid-seal, mid-retention,
//! mid-firmware-delivery, mid-pairing).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Places in the hub where a crash is most likely to lose or reuse something.
pub const POINTS: [&str; 6] = [
    // A group commit's frame is written, not yet fdatasync'd (nothing of it acknowledged).
    "commit",
    // A full segment was rolled over and indexed; the link states' snapshot is not saved yet.
    "seal",
    // Retention removed an old segment's file, not yet its index, nor synced the directory.
    "retention",
    // A firmware block request was accepted; its answer waits for the group commit.
    "firmware",
    // A pairing's key exchange completed; the new device is not durable yet.
    "pairing",
    // The new device is durable; its confirmation has not gone out.
    "paired",
];

/// The armed point (its index in [`POINTS`] plus one; 0: none).
static ARMED: AtomicUsize = AtomicUsize::new(0);
/// Passes left before the armed point kills.
static LEFT: AtomicU64 = AtomicU64::new(0);

/// A kill point: when `point` is armed and this is the chosen pass, the hub logs it and kills
/// itself with SIGKILL right here (the calling thread never goes on).
pub fn kill_point(point: &str) {
    let armed = ARMED.load(Ordering::Relaxed);
    if armed == 0 || POINTS.get(armed - 1) != Some(&point) {
        return;
    }
    if LEFT.fetch_sub(1, Ordering::Relaxed) != 1 {
        return;
    }
    eprintln!("fault injection: SIGKILL at kill point {point}");
    let pid = std::process::id().to_string();
    // SIGKILL, like the campaign's kills from outside (no destructor or flush runs); this
    // thread waits for it and never returns.
    let _ = std::process::Command::new("kill").args(["-KILL", &pid]).status();
    loop {
        std::thread::park();
    }
}

/// Arms `point` to kill at its `pass`-th pass from now (1: the next).
fn arm(point: &str, pass: u64) -> serde_json::Value {
    let Some(i) = POINTS.iter().position(|p| *p == point) else {
        return serde_json::json!({"error": format!("unknown kill point {point:?}")});
    };
    ARMED.store(0, Ordering::Relaxed);
    LEFT.store(pass.max(1), Ordering::Relaxed);
    ARMED.store(i + 1, Ordering::Relaxed);
    tracing::warn!(point, pass, "fault injection: kill point armed");
    serde_json::json!({"armed": point, "pass": pass.max(1)})
}

/// The main runtime (web UI, MQTT, feed, upstream), recorded at start.
static MAIN: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Blocking tasks sent to the main runtime: more than it has workers, so every worker takes one.
const WEDGES: usize = 64;

/// Records the main runtime's handle.
pub fn main_runtime(handle: tokio::runtime::Handle) {
    let _ = MAIN.set(handle);
}

/// Answers a fault request (`{"cmd":"fault","fault":"wedge_main_runtime"}`), or `None` when
/// `line` is not one.
pub fn handle(line: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if v.get("cmd")?.as_str()? != "fault" {
        return None;
    }
    Some(match v.get("fault").and_then(serde_json::Value::as_str) {
        Some("wedge_main_runtime") => match MAIN.get() {
            Some(main) => {
                // Each task blocks its worker thread for good (a deadlock or a busy loop in a
                // handler looks like this from outside): the web UI, MQTT, the feed checker and
                // the upstream bridge stop.
                for _ in 0..WEDGES {
                    main.spawn(async {
                        loop {
                            std::thread::park();
                        }
                    });
                }
                tracing::warn!(
                    tasks = WEDGES,
                    "fault injection: every worker of the main runtime wedged"
                );
                serde_json::json!({"wedged": WEDGES})
            }
            None => serde_json::json!({"error": "no main runtime recorded"}),
        },
        // {"cmd":"fault","fault":"kill_at","point":"commit","pass":3}
        Some("kill_at") => arm(
            v.get("point").and_then(serde_json::Value::as_str).unwrap_or_default(),
            v.get("pass").and_then(serde_json::Value::as_u64).unwrap_or(1),
        ),
        other => serde_json::json!({"error": format!("unknown fault {other:?}")}),
    })
}
