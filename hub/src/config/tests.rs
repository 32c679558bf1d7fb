//! The configuration's defaults, its checks (each refusal names its key) and the annotated
//! example configuration kept in step with the types.

use super::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

fn load(text: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("hub.toml");
    std::fs::write(&path, text).expect("write");
    Config::load(Some(&path))
}

fn invalid_key(text: &str) -> String {
    match load(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an invalid key for {text:?}, got {other:?}"),
    }
}

#[test]
fn defaults_are_valid_and_bad_values_name_their_key() {
    assert!(Config::default().validate().is_ok());
    assert!(load("").is_ok());
    assert_eq!(invalid_key("[pairing]\nwindow_seconds = 0"), "pairing.window_seconds");
    assert_eq!(invalid_key("[pairing]\nhello_rate = 0"), "pairing.hello_rate");
    assert_eq!(invalid_key("[pairing]\nhost_hello_burst = 0"), "pairing.host_hello_burst");
    assert_eq!(invalid_key("[pairing]\nsession_max_s = 0"), "pairing.session_max_s");
    assert_eq!(
        invalid_key("[pairing]\nmax_sessions = 2\nsessions_per_source = 3"),
        "pairing.sessions_per_source"
    );
    assert_eq!(invalid_key("[updates]\nfeed_url = \"https://127.0.0.1:1/\""), "updates.feed_cert");
    assert_eq!(
        invalid_key("[updates]\nfeed_url = \"http://x/\"\nfeed_cert = \"c.pem\""),
        "updates.feed_url"
    );
    assert_eq!(
        invalid_key("[updates]\nfeed_url = \"https://a b/\"\nfeed_cert = \"c.pem\""),
        "updates.feed_url"
    );
    assert_eq!(
        invalid_key("[updates]\nfeed_url = \"https://x/\"\nfeed_cert = \"/nonexistent.pem\""),
        "updates.feed_cert"
    );
    // A bad trusted key is refused as the file is read, with the line that holds it (a good
    // one: the P-256 generator, compressed).
    const G: &str = "036b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296";
    match load("[updates]\n\n[[updates.trust]]\nmodel = \"m\"\nkey = \"00\"") {
        Err(ConfigError::Parse(_, e)) => {
            let e = e.to_string();
            assert!(e.contains("line 5") && e.contains("key = \"00\""), "{e}");
            assert!(e.contains("is not a hex SEC1 P-256 public key"), "{e}");
        }
        other => panic!("a bad trusted key was taken: {other:?}"),
    }
    assert_eq!(
        invalid_key(&format!("[[updates.trust]]\nmodel = \"\"\nkey = \"{G}\"")),
        "updates.trust[0].model"
    );
    assert_eq!(invalid_key("[availability]\nmissed_periods = 0"), "availability.missed_periods");
    assert!(matches!(load("[pairing]\nnope = 1"), Err(ConfigError::Parse(..))));
    assert_eq!(invalid_key("[upstream]\nurl = \"mqtt://10.1.1.1\""), "upstream.url");
    assert!(load("[upstream]\nurl = \"mqtt://127.0.0.1:1883\"").is_ok());
    assert_eq!(invalid_key("[mqtt]\nplain_bind = \"0.0.0.0:1883\""), "mqtt.plain_bind");
    assert_eq!(invalid_key("[mqtt]\nbroker_port = 1883"), "mqtt.broker_port");
    assert_eq!(
        invalid_key("[mqtt]\nmax_connections = 8\nconnections_per_address = 9"),
        "mqtt.connections_per_address"
    );
    assert_eq!(invalid_key("[mqtt]\nrepublish_interval_s = 0"), "mqtt.republish_interval_s");
    assert_eq!(invalid_key("[web]\nconnections_per_address = 0"), "web.connections_per_address");
    assert_eq!(invalid_key("[web]\nbody_timeout_ms = 99"), "web.body_timeout_ms");
    assert!(load("[web]\nmax_connections = 4\nconnections_per_address = 4").is_ok());
    assert_eq!(invalid_key("[login]\nhash_slots = 0"), "login.hash_slots");
    assert_eq!(invalid_key("[login]\nbackoff_max_ms = 10"), "login.backoff_max_ms");
    assert_eq!(
        invalid_key("[login]\nbackoff_max_ms = 7200000\nforget_after_s = 9000"),
        "login.backoff_max_ms"
    );
    assert_eq!(invalid_key("[login]\nforget_after_s = 60"), "login.forget_after_s");
    assert!(load("[login]\nhash_slots = 2\nhash_queue = 0\nfree_failures = 5").is_ok());
}

/// The annotated example configuration (the Debian package's /etc/hearth/hearth.toml).
const EXAMPLE: &str = include_str!("../../../hearth.example.toml");

/// The example with its settings switched on: `#key = value` and `#[section]` lines lose
/// their `#` (prose comments are `# text`).
fn switched_on(text: &str) -> String {
    fn on(l: &str) -> &str {
        match l.strip_prefix('#') {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => rest,
            _ => l,
        }
    }
    text.lines().map(on).collect::<Vec<_>>().join("\n")
}

/// Dotted paths of every key in `v` (array elements as `[]`); a `null` value is a key too.
fn key_paths(v: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| key_paths(v, &format!("{prefix}[]"), out)),
        _ => {}
    }
}

/// Every value of `v` that is not an object, by dotted path.
fn leaves(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                leaves(v, &path, out);
            }
        }
        v => {
            out.insert(prefix.to_owned(), v.clone());
        }
    }
}

fn json(c: &impl serde::Serialize) -> Value {
    serde_json::to_value(c).expect("serializes")
}

#[test]
fn the_example_config_loads_and_documents_every_key_with_its_default() {
    // As shipped (every setting commented out) it is the defaults.
    let shipped: Config = toml::from_str(EXAMPLE).expect("the example parses");
    assert!(shipped.validate().is_ok());
    assert_eq!(json(&shipped), json(&Config::default()));

    // With every setting switched on it loads too, optional sections included.
    // The feed certificate is read at start: a real one stands in for the example's path.
    let dir = tempfile::tempdir().expect("tmp");
    let pem = dir.path().join("feed-cert.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["feed.example".into()]).expect("cert");
    std::fs::write(&pem, cert.cert.pem()).expect("pem");
    let text = switched_on(EXAMPLE)
        .replace("/etc/hearth/feed-cert.pem", pem.to_str().expect("utf-8 path"));
    let on: Config = toml::from_str(&text).expect("the switched-on example parses");
    if let Err((key, reason)) = on.validate() {
        panic!("the switched-on example is refused: `{key}` {reason}");
    }
    assert!(on.upstream.is_some() && on.updates.feed_url.is_some());
    assert!(!on.updates.trust.is_empty(), "a [[updates.trust]] example");

    // Every key the configuration accepts is in the file. The accepted keys come from the
    // types: the defaults serialized (a `None` is a key) and the switched-on example (the
    // keys inside optional sections); so a new key without documentation fails here.
    let doc: toml::Table = toml::from_str(&text).expect("TOML");
    let mut documented = BTreeSet::new();
    key_paths(&json(&doc), "", &mut documented);
    let mut accepted = BTreeSet::new();
    key_paths(&json(&Config::default()), "", &mut accepted);
    key_paths(&json(&on), "", &mut accepted);
    let missing: Vec<_> = accepted.difference(&documented).collect();
    assert!(missing.is_empty(), "keys missing from hearth.example.toml: {missing:?}");

    // The values shown are the defaults, wherever there is one (a `None` or an empty list
    // has an example instead).
    let (mut defaults, mut shown) = (BTreeMap::new(), BTreeMap::new());
    leaves(&json(&Config::default()), "", &mut defaults);
    leaves(&json(&on), "", &mut shown);
    let minimal: crate::upstream::UpstreamConfig =
        toml::from_str("url = \"mqtt://127.0.0.1\"").expect("minimal upstream");
    leaves(&json(&minimal), "upstream", &mut defaults);
    for (path, default) in &defaults {
        if default.is_null() || default.as_array().is_some_and(Vec::is_empty) {
            continue;
        }
        if path == "upstream.url" {
            continue;
        }
        assert_eq!(shown.get(path), Some(default), "`{path}` shows its default");
    }

    // Each setting has its description right above it.
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let is_key = line.starts_with(|c: char| c.is_ascii_lowercase()) && line.contains('=');
        if is_key {
            let above = i.checked_sub(1).map_or("", |j| lines[j]);
            assert!(above.starts_with("# "), "no description above `{line}`");
        }
    }
}
