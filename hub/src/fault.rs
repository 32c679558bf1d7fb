//! Fault injection for tests (feature `fault-injection`, never in a release build): control
//! commands that wedge other subsystems on purpose, so that tests can show the sensor link's
//! failure domain holds (DESIGN.md, "Failure domains and budgets").

use std::sync::OnceLock;

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
        other => serde_json::json!({"error": format!("unknown fault {other:?}")}),
    })
}
