//! The dashboard: every device with its availability, newest readings and a chart of its main
//! quantity, from the tick's snapshot ([`crate::live`]); a chart's history is fetched again only
//! when the device's newest readings changed.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use crate::chart::chart_of;
use crate::guard::Owner;
use crate::html::{availability, device_name, page, readings_text};
use crate::live::CHARTED;
use crate::pages::{MsgQuery, api_failure};
use crate::state::Web;

/// The dashboard.
pub(crate) async fn dashboard(
    State(web): State<Arc<Web>>,
    owner: Owner,
    Query(q): Query<MsgQuery>,
) -> Response {
    let snapshot = web.live.get().await;
    let devices = match &snapshot.devices {
        Ok(d) => d,
        Err(e) => return api_failure(&owner, "Dashboard", e),
    };
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    let mut charts = Vec::new();
    for d in devices.iter().take(CHARTED) {
        charts.push(web.live.chart(d).await);
    }
    let body = html! {
        @if let Some(n) = q.notice() { (n) }
        @if devices.is_empty() {
            p { "No devices yet. " a href="/pairing" { "Pair a sensor" } "." }
        }
        table.devices data-ids=(ids.join(",")) {
            thead { tr {
                th { "Device" } th { "Availability" } th { "Last reading" } th { "Recent readings" }
            } }
            tbody {
                @for (i, d) in devices.iter().enumerate() {
                    @let class = availability(&d.availability);
                    tr {
                        td {
                            a href={ "/devices/" (d.id) } { (device_name(d)) }
                            br;
                            span.muted { (d.model) }
                        }
                        td { span.badge.(class) data-availability=(d.id) { (class) } }
                        td.reading data-reading=(d.id) { (readings_text(&d.last)) }
                        td {
                            @match charts.get(i) {
                                Some(history) => (chart_of(history, &d.last, 240, 60)),
                                None => span.muted { "—" },
                            }
                        }
                    }
                }
            }
        }
    };
    Html(page("Dashboard", Some(&owner.csrf), true, body)).into_response()
}
