//! The isolated devices (EN 303 645 5.3-13/14, TR 103 621 6.23): why each one is cut off, its
//! support period, and the way out (a replacement that takes over its name, room and history).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use maud::html;

use crate::api::Availability;
use crate::guard::Owner;
use crate::html::{device_name, page};
use crate::pages::api_failure;
use crate::state::Web;
use crate::time::local_date;

/// What isolation means, as the hub does it (`hub::isolation`, the link's refusal of an
/// isolated sensor's messages).
pub(crate) const EXPLAIN: &str = "The hub isolates a sensor when a manufacturer's signed \
    advisory says its firmware is vulnerable and the hub cannot fix it: the model cannot be \
    updated, its security-update support period has ended, or no fix was announced. From then \
    on the hub refuses the sensor's readings and relays nothing from or to it (no MQTT, no \
    upstream broker, no commands); the sensor keeps its own readings, which its display or \
    physical interface shows. Its keys stay on the hub until you replace or remove it.";

/// Isolated devices with the reason and the way out.
pub(crate) async fn isolated(State(web): State<Arc<Web>>, owner: Owner) -> Response {
    let devices = match web.api.devices().await {
        Ok(d) => d,
        Err(e) => return api_failure(&owner, "Isolated devices", &e),
    };
    let now_ms = web.now_ms();
    let isolated: Vec<_> = devices
        .iter()
        .filter_map(|d| match &d.availability {
            Availability::Isolated { reason, replacement } => Some((d, reason, replacement)),
            _ => None,
        })
        .collect();
    let body = html! {
        p { (EXPLAIN) }
        @if isolated.is_empty() { p.muted { "No device is isolated." } }
        @for (d, reason, replacement) in isolated {
            section.card.isolated data-isolated=(d.id) {
                h3 { a href={ "/devices/" (d.id) } { (device_name(d)) } }
                p { strong { "Why:" } " " span.reason { (reason) } }
                p {
                    strong { "Support period:" } " "
                    @if d.support_end.saturating_mul(1000) > now_ms {
                        "until " (local_date(d.support_end))
                    } @else {
                        "ended " (local_date(d.support_end))
                    }
                }
                p {
                    strong { "What to do:" } " " (replacement) " "
                    a href={ "/pairing?replaces=" (d.id) } { "Pair a replacement" }
                }
            }
        }
    };
    Html(page("Isolated devices", Some(&owner.csrf), false, body)).into_response()
}
