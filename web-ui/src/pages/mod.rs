//! The owner's pages, one module per page, and what they share: the typed forms (each carrying
//! its CSRF token), the notices shown after a redirect, and the answers to a refused command.

pub(crate) mod account;
pub(crate) mod dashboard;
pub(crate) mod device;
pub(crate) mod isolated;
pub(crate) mod pairing;
pub(crate) mod privacy;
pub(crate) mod security;
pub(crate) mod updates;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{Html, IntoResponse, Response};
use maud::Markup;
use serde::Deserialize;

use crate::api::ApiError;
use crate::guard::Owner;
use crate::html::{notice, page};
use crate::state::{Web, WebEvent};

/// Typed forms: every field named, unknown ones refused, the CSRF token checked by
/// [`crate::guard::Post`].
macro_rules! forms {
    ($($name:ident { $($field:ident : $ty:ty),* $(,)? })*) => {$(
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct $name {
            pub(crate) csrf: String,
            $(pub(crate) $field: $ty,)*
        }
        impl crate::guard::CsrfForm for $name {
            fn csrf(&self) -> &str { &self.csrf }
        }
    )*};
}
pub(crate) use forms;

forms! {
    CsrfOnly {}
}

/// `?m=` codes for notices after a redirect (fixed texts: nothing from the URL is shown).
#[derive(Debug, Deserialize)]
pub(crate) struct MsgQuery {
    m: Option<String>,
    /// On the pairing page: the device the new sensor will replace (preselected if it exists).
    pub(crate) replaces: Option<String>,
}

impl MsgQuery {
    /// The notice for the code, if it is one of ours.
    pub(crate) fn notice(&self) -> Option<Markup> {
        let text = match self.m.as_deref()? {
            "paired" => "Paired. The new device is on the dashboard.",
            "removed" => "Device removed; its keys and readings were erased.",
            "policy" => "Update policy saved.",
            "approved" => "Update approved; delivery starts now.",
            "consent" => "Your choice was saved.",
            "password" => "Password changed; other sessions were ended.",
            "opened" => "Pairing window open.",
            "labelled" => "Name and room saved.",
            "closed" => "Pairing window closed.",
            "setpoint" => "Setpoint sent: the device takes it with its next report.",
            _ => return None,
        };
        Some(notice("ok", text))
    }
}

/// The page for a command the hub refused or could not do.
pub(crate) fn api_failure(owner: &Owner, title: &str, e: &ApiError) -> Response {
    let status = match e {
        ApiError::NotFound => StatusCode::NOT_FOUND,
        ApiError::Refused(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    (status, Html(page(title, Some(&owner.csrf), false, notice("error", &e.to_string()))))
        .into_response()
}

/// Whether `id` looks like a device id (hex, at most 32 digits).
pub(crate) fn valid_id(id: &str) -> bool {
    (1..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A malformed device id: refused and counted.
pub(crate) fn bad_id(web: &Web) -> Response {
    web.event(WebEvent::Malformed);
    (StatusCode::BAD_REQUEST, "malformed device id\n").into_response()
}

/// The device id in a `/devices/{id}/…` path, checked (a malformed one is refused and counted).
#[derive(Debug)]
pub(crate) struct DevicePath(pub(crate) String);

impl FromRequestParts<Arc<Web>> for DevicePath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Arc<Web>) -> Result<Self, Response> {
        let Path(id) = Path::<String>::from_request_parts(parts, web)
            .await
            .map_err(IntoResponse::into_response)?;
        if valid_id(&id) { Ok(Self(id)) } else { Err(bad_id(web)) }
    }
}
