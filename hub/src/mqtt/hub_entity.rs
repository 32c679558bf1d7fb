//! The hub itself as a Home Assistant device (issue 18): its version, when it started, how many
//! devices are online, offline and isolated, its security events, the anomaly flag the security
//! monitor computes continuously (EN 303 645 5.10-1, [`crate::security`]), and the readings
//! waiting for the upstream broker — one retained state message on `hearth/hub/overview` (not
//! `…/state`, which a `hearth/+/state` subscription takes for a device).

use serde_json::{Value, json};

use super::discovery::{Component, EntityConfig, MANUFACTURER, config_topic};
use super::topics;

/// The hub's node id in discovery topics and entity ids (`hearth_hub`).
const NODE: &str = "hub";

/// The hub device's entity configs (the upstream entity only when a broker is configured).
pub(crate) fn configs(prefix: &str, version: &str, upstream: bool) -> Vec<EntityConfig> {
    let device = json!({
        "identifiers": ["hearth_hub"],
        "name": "Hearth hub",
        "model": "Hearth hub",
        "manufacturer": MANUFACTURER,
        "sw_version": version,
    });
    let mut out = Vec::new();
    let mut entity = |component: Component, object: &str, name: &str, extra: Value| {
        let object_id = format!("hearth_{NODE}_{object}");
        let mut payload = json!({
            "name": name,
            "unique_id": object_id,
            "object_id": object_id,
            "default_entity_id": format!("{}.{object_id}", component.as_str()),
            "availability_topic": topics::HUB_STATUS,
            "payload_available": "online",
            "payload_not_available": "offline",
            "state_topic": topics::HUB_OVERVIEW,
            "device": device,
            "origin": {"name": "Hearth"},
        });
        if let (Some(p), Value::Object(extra)) = (payload.as_object_mut(), extra) {
            p.extend(extra);
        }
        out.push(EntityConfig { topic: config_topic(prefix, component, NODE, object), payload });
    };
    for (object, name) in [
        ("devices_online", "Devices online"),
        ("devices_offline", "Devices offline"),
        ("devices_isolated", "Devices isolated"),
    ] {
        entity(
            Component::Sensor,
            object,
            name,
            json!({
                "value_template": format!("{{{{ value_json.{object} }}}}"),
                "state_class": "measurement",
            }),
        );
    }
    entity(
        Component::Sensor,
        "security_events",
        "Security events",
        json!({
            "value_template": "{{ value_json.security_events }}",
            "state_class": "total_increasing",
            "entity_category": "diagnostic",
        }),
    );
    entity(
        Component::BinarySensor,
        "anomaly",
        "Security anomaly",
        json!({
            "value_template": "{{ 'ON' if value_json.anomalies else 'OFF' }}",
            "device_class": "problem",
            "json_attributes_topic": topics::HUB_OVERVIEW,
            "json_attributes_template": "{{ {'anomalies': value_json.anomalies} | tojson }}",
        }),
    );
    entity(
        Component::Sensor,
        "started",
        "Started",
        json!({
            "value_template": "{{ value_json.started }}",
            "device_class": "timestamp",
            "entity_category": "diagnostic",
        }),
    );
    if upstream {
        entity(
            Component::Sensor,
            "upstream_pending",
            "Readings waiting for the upstream broker",
            json!({
                "value_template": "{{ value_json.upstream_pending }}",
                "state_class": "measurement",
            }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::discovery::schema_problems;

    #[test]
    fn the_hubs_configs_fit_the_schema_and_name_one_device() {
        for upstream in [false, true] {
            let configs = configs("homeassistant", "0.1.0", upstream);
            assert_eq!(configs.len(), 6 + usize::from(upstream));
            for c in &configs {
                assert_eq!(schema_problems(&c.topic, &c.payload), Vec::<String>::new(), "{c:?}");
                assert_eq!(c.payload["device"]["identifiers"], json!(["hearth_hub"]));
                assert_eq!(c.payload["state_topic"], topics::HUB_OVERVIEW);
            }
        }
    }
}
