//! The bridge API over MQTT, in the spirit of Zigbee2MQTT's `bridge/request/*`: an admin MQTT
//! user publishes `hearth/bridge/request/<request>` with a JSON body and gets the answer on
//! `hearth/bridge/response/<request>`. Each request is one of the owner's commands
//! (`api::request`: the same rules and refusals as `hub ctl`); only admins may publish requests
//! (the fronts' topic rules) and the hub takes them within a budget.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::api::HubApi;
use crate::api::request::{
    Command, Devices, PairClose, PairOpen, PairPin, Pairing, Remove, Rename, Room,
};

/// Where admins publish requests.
pub(super) const REQUEST_PREFIX: &str = "hearth/bridge/request/";
/// Where the answers go.
pub(super) const RESPONSE_PREFIX: &str = "hearth/bridge/response/";
/// The requests, as named after [`REQUEST_PREFIX`].
pub(super) const REQUESTS: [&str; 8] = [
    "pairing",
    "pairing/open",
    "pairing/close",
    "pairing/pin",
    "devices",
    "device/rename",
    "device/room",
    "device/remove",
];
/// Requests taken at once before the budget applies.
pub(super) const BURST: u32 = 20;
/// Then one request per this interval.
pub(super) const REFILL: Duration = Duration::from_secs(1);

/// The request a topic names (what follows [`REQUEST_PREFIX`]), if it is a request topic.
pub(super) fn request(topic: &str) -> Option<&str> {
    topic.strip_prefix(REQUEST_PREFIX).filter(|r| !r.is_empty() && !r.contains(['+', '#']))
}

/// The response topic of `request`.
pub(super) fn response(request: &str) -> String {
    format!("{RESPONSE_PREFIX}{request}")
}

/// The requests' budget: [`BURST`] at once, then one per [`REFILL`].
#[derive(Debug)]
pub(super) struct Budget {
    tokens: u32,
    since: Instant,
}

impl Budget {
    pub(super) fn new(now: Instant) -> Self {
        Self { tokens: BURST, since: now }
    }

    /// Takes one request at `now`; `Err(wait)` if the budget is spent.
    pub(super) fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let refills = now.saturating_duration_since(self.since).as_millis() / REFILL.as_millis();
        if refills > 0 {
            let refills = u32::try_from(refills).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(refills).min(BURST);
            self.since = if self.tokens == BURST { now } else { self.since + REFILL * refills };
        }
        if self.tokens == 0 {
            return Err((self.since + REFILL).saturating_duration_since(now));
        }
        self.tokens -= 1;
        Ok(())
    }
}

/// The answer to a request over the budget.
pub(super) fn over_budget(payload: &[u8], wait: Duration) -> Value {
    let (_, transaction) = body(payload).unwrap_or_default();
    let secs = wait.as_secs_f64().ceil().max(1.0);
    error(format!("too many bridge requests: try again in {secs:.0} s"), transaction)
}

/// Answers one request: `{"status": "ok", "data": …}` or `{"status": "error", "error":
/// "<reason>"}`, with the request's `transaction` (if any) echoed.
pub(super) async fn answer(api: &HubApi, request: &str, payload: &[u8]) -> Value {
    let (body, transaction) = match body(payload) {
        Ok(b) => b,
        Err(why) => return error(why, None),
    };
    let result = match request {
        "pairing" => run::<Pairing>(api, body).await,
        "pairing/open" => run::<PairOpen>(api, body).await,
        "pairing/close" => run::<PairClose>(api, body).await,
        "pairing/pin" => match body.get("pin") {
            // Never echo what was typed in place of a PIN.
            Some(Value::String(_)) => run::<PairPin>(api, body).await,
            _ => Err("\"pin\" must be the digits the sensor shows, as a string".into()),
        },
        "devices" => run::<Devices>(api, body).await,
        "device/rename" => run::<Rename>(api, body).await,
        "device/room" => run::<Room>(api, body).await,
        "device/remove" => run::<Remove>(api, body).await,
        _ => Err(format!("unknown request; the requests are: {}", REQUESTS.join(", "))),
    };
    match result {
        Ok(data) => {
            let mut v = json!({"status": "ok", "data": data});
            if let Some(t) = transaction {
                v["transaction"] = t;
            }
            v
        }
        Err(why) => error(why, transaction),
    }
}

fn error(why: String, transaction: Option<Value>) -> Value {
    let mut v = json!({"status": "error", "error": why});
    if let Some(t) = transaction {
        v["transaction"] = t;
    }
    v
}

/// The request's body without its `transaction`, and the transaction: an empty payload is `{}`.
fn body(payload: &[u8]) -> Result<(Map<String, Value>, Option<Value>), String> {
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok((Map::new(), None));
    }
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut body)) => {
            let transaction = body.remove("transaction");
            Ok((body, transaction))
        }
        Ok(_) => Err("the body must be a JSON object, e.g. {\"transaction\": 1}".into()),
        Err(e) => Err(format!("the body is not JSON: {e}")),
    }
}

/// Runs owner command `C` with the arguments in `body`; its answer as JSON.
async fn run<C: Command + DeserializeOwned>(
    api: &HubApi,
    body: Map<String, Value>,
) -> Result<Value, String> {
    let command: C =
        serde_json::from_value(Value::Object(body)).map_err(|e| format!("bad body: {e}"))?;
    let answer = command.run(api).await.map_err(|e| e.to_string())?;
    serde_json::to_value(answer).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_topics_and_bodies() {
        assert_eq!(request("hearth/bridge/request/device/rename"), Some("device/rename"));
        assert_eq!(request("hearth/bridge/request/"), None);
        assert_eq!(request("hearth/bridge/request/#"), None);
        assert_eq!(request("hearth/bridge/response/devices"), None);
        assert_eq!(response("devices"), "hearth/bridge/response/devices");
        assert_eq!(body(b"").expect("empty"), (Map::new(), None));
        let (b, t) = body(br#"{"id": "x", "transaction": 7}"#).expect("object");
        assert_eq!((Value::Object(b), t), (json!({"id": "x"}), Some(json!(7))));
        assert!(body(b"[1]").expect_err("array").contains("JSON object"));
        assert!(body(b"{").expect_err("truncated").contains("not JSON"));
        let v = over_budget(br#"{"transaction": "a"}"#, Duration::from_millis(300));
        assert_eq!(v["status"], "error");
        assert_eq!(v["transaction"], "a");
        assert!(v["error"].as_str().is_some_and(|e| e.contains("try again in 1 s")), "{v}");
    }

    #[test]
    fn the_budget_takes_a_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = Budget::new(t0);
        for _ in 0..BURST {
            assert!(b.take(t0).is_ok());
        }
        assert_eq!(b.take(t0), Err(REFILL));
        let half = t0 + REFILL / 2;
        assert_eq!(b.take(half), Err(REFILL / 2));
        assert!(b.take(t0 + REFILL).is_ok());
        assert!(b.take(t0 + REFILL).is_err());
        // Three intervals later: three more, not a new burst.
        let later = t0 + REFILL * 4;
        for _ in 0..3 {
            assert!(b.take(later).is_ok());
        }
        assert!(b.take(later).is_err());
        // A long pause refills the burst, no more.
        let much_later = later + REFILL * 1000;
        for _ in 0..BURST {
            assert!(b.take(much_later).is_ok());
        }
        assert!(b.take(much_later).is_err());
    }
}
