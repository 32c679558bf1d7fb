//! The live state of the hub as the owner's pages show it: one snapshot per tick (devices with
//! their newest readings, update progress, the pairing window), built by one task however many
//! tabs are open, and read by the dashboard and every live stream (SSE). The dashboard's chart
//! histories are cached per device and fetched again only when its newest readings changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::{ApiError, Device, OwnerApi, Pairing, Reading, Updates};
use crate::guard::Owner;
use crate::html::{availability, readings_text};
use crate::pages::updates::progress;
use crate::state::Web;

/// How often the snapshot is rebuilt while someone reads it.
pub const TICK: Duration = Duration::from_secs(1);
/// Devices whose chart history the dashboard shows (the others show their newest readings).
pub const CHARTED: usize = 50;
/// Readings per chart.
pub const CHART_READINGS: usize = 40;
/// A reader waits this long for a snapshot under construction at most.
const BUILD_WAIT: Duration = Duration::from_secs(10);

/// The hub's state at one tick.
#[derive(Debug)]
pub struct Snapshot {
    /// Every device, or why the hub could not list them.
    pub devices: Result<Vec<Device>, ApiError>,
    /// The update overview, if the hub answered.
    pub updates: Option<Updates>,
    /// The pairing window.
    pub pairing: Pairing,
    /// What the live streams send (JSON), made once per snapshot.
    pub event: String,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self {
            devices: Err(ApiError::Unavailable("no answer from the hub yet".into())),
            updates: None,
            pairing: Pairing::default(),
            event: String::new(),
        }
    }
}

type Building = watch::Receiver<Option<Arc<Snapshot>>>;

#[derive(Debug, Default)]
struct Inner {
    latest: Option<(Instant, Arc<Snapshot>)>,
    building: Option<Building>,
    builds: u64,
}

/// A device's chart history (oldest first) and the newest readings it was fetched for.
type Chart = (Vec<Reading>, Arc<[Reading]>);

/// The snapshot and the one task that builds it, and the dashboard's chart histories.
pub struct Live {
    api: Arc<dyn OwnerApi>,
    inner: Mutex<Inner>,
    charts: Mutex<HashMap<String, Chart>>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").finish_non_exhaustive()
    }
}

impl Live {
    /// The live state of `api`.
    pub fn new(api: Arc<dyn OwnerApi>) -> Arc<Self> {
        Arc::new(Self { api, inner: Mutex::new(Inner::default()), charts: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot of this tick: the current one if it is younger than [`TICK`], else the one
    /// being built (started here if nobody started it).
    pub async fn get(self: &Arc<Self>) -> Arc<Snapshot> {
        let mut rx = {
            let mut inner = self.lock();
            if let Some((at, s)) = &inner.latest
                && at.elapsed() < TICK
            {
                return s.clone();
            }
            match &inner.building {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    inner.building = Some(rx.clone());
                    inner.builds += 1;
                    let live = self.clone();
                    tokio::spawn(async move {
                        let snapshot = Arc::new(build(live.api.as_ref()).await);
                        {
                            let mut inner = live.lock();
                            inner.latest = Some((Instant::now(), snapshot.clone()));
                            inner.building = None;
                        }
                        let _ = tx.send(Some(snapshot));
                    });
                    rx
                }
            }
        };
        let built = match tokio::time::timeout(BUILD_WAIT, rx.wait_for(Option::is_some)).await {
            Ok(Ok(s)) => s.clone(),
            Ok(Err(_)) => {
                // The builder is gone without a snapshot: the next reader starts another.
                self.lock().building = None;
                None
            }
            Err(_) => None, // still building: the last snapshot meanwhile
        };
        built.or_else(|| self.lock().latest.as_ref().map(|(_, s)| s.clone())).unwrap_or_default()
    }

    /// The owner changed something: the next reader gets a new snapshot.
    pub fn invalidate(&self) {
        self.lock().latest = None;
    }

    /// Snapshots built so far.
    pub fn builds(&self) -> u64 {
        self.lock().builds
    }

    /// The chart history of `d` (its newest [`CHART_READINGS`], oldest first): the cached one
    /// while its newest readings are unchanged.
    pub async fn chart(&self, d: &Device) -> Arc<[Reading]> {
        let cached = {
            let charts = self.charts.lock().unwrap_or_else(|e| e.into_inner());
            charts.get(&d.id).filter(|(last, _)| *last == d.last).map(|(_, h)| h.clone())
        };
        if let Some(h) = cached {
            return h;
        }
        let history: Arc<[Reading]> =
            self.api.readings(&d.id, CHART_READINGS).await.unwrap_or_default().into();
        let mut charts = self.charts.lock().unwrap_or_else(|e| e.into_inner());
        if charts.len() >= 4 * CHARTED && !charts.contains_key(&d.id) {
            charts.clear(); // devices come and go: keep the cache bounded
        }
        charts.insert(d.id.clone(), (d.last.clone(), history.clone()));
        history
    }
}

/// Builds a snapshot.
async fn build(api: &dyn OwnerApi) -> Snapshot {
    let devices = api.devices().await;
    let updates = api.updates().await.ok();
    let pairing = api.pairing().await.unwrap_or_default();
    let mut snapshot = Snapshot { devices, updates, pairing, event: String::new() };
    snapshot.event = event(&snapshot).to_string();
    snapshot
}

/// What the open page updates itself from.
fn event(s: &Snapshot) -> serde_json::Value {
    let devices = s.devices.as_deref().unwrap_or_default();
    let mut live = serde_json::Map::new();
    for d in devices {
        live.insert(
            d.id.clone(),
            serde_json::json!({
                "reading": readings_text(&d.last),
                "availability": availability(&d.availability),
            }),
        );
    }
    let mut bars = serde_json::Map::new();
    if let Some(u) = &s.updates {
        for p in progress(devices, u) {
            bars.insert(p.id, serde_json::json!({"pct": p.pct, "label": p.label}));
        }
    }
    let p = &s.pairing;
    serde_json::json!({
        "ids": devices.iter().map(|d| d.id.as_str()).collect::<Vec<_>>().join(","),
        "devices": live,
        "progress": bars,
        "pairing": {
            "open": p.open,
            "closes_in_s": p.closes_in_s,
            "attempts_left": p.attempts_left,
            "waiting": p.waiting.len(),
        },
    })
}

/// The live stream of the open page: the snapshot of each tick, while the session lasts.
pub(crate) async fn stream(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let stream =
        futures_util::stream::unfold((web, owner.token, true), |(web, token, first)| async move {
            if !first {
                tokio::time::sleep(TICK).await;
            }
            if !web.lock().sessions.valid(&token, web.now_ms()) {
                return None;
            }
            let snapshot = web.live.get().await;
            let event = Event::default().data(snapshot.event.as_str());
            Some((Ok::<_, std::convert::Infallible>(event), (web, token, false)))
        });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
