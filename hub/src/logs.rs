//! Log output of the hub's binaries: `tracing` to stderr, filtered by `RUST_LOG` (else a default
//! per command), with ANSI colour only on a terminal and never when `NO_COLOR` is set.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Whether log lines get ANSI colour: only when stderr is a terminal (not a file, a pipe or
/// journald) and `NO_COLOR` is unset or empty (<https://no-color.org>).
pub fn colour() -> bool {
    colour_for(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").as_deref())
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber: stderr, `RUST_LOG` if it is set (a malformed one is reported
/// and `default_filter` used instead), colour as [`colour`] says.
pub fn init(program: &str, default_filter: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.is_empty() => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("{program}: RUST_LOG={spec:?} ignored ({e}); logging {default_filter:?}");
            EnvFilter::new(default_filter)
        }),
        _ => EnvFilter::new(default_filter),
    };
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(colour())
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .with_filter(QuietBroker),
        )
        .init();
}

/// Keeps rumqttd quiet where it costs or misleads:
/// - its spans are never made: its router opens one per PUBLISH at ERROR level and formats the
///   topic into it, 6 % of the hub's CPU at full load with a subscriber (perf), for context
///   nobody reads (its events still log, without the span prefix);
/// - the one ERROR its router writes when a client that closed normally still had an event in
///   flight ("no-connection id N is already gone") is dropped: a race inside the broker, not an
///   error of the hub or the client.
///
/// Every other line passes.
struct QuietBroker;

impl QuietBroker {
    fn wanted(meta: &tracing::Metadata<'_>) -> bool {
        !(meta.is_span() && meta.target().starts_with("rumqttd"))
    }
}

impl<S> tracing_subscriber::layer::Filter<S> for QuietBroker {
    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        Self::wanted(meta)
    }

    fn callsite_enabled(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if Self::wanted(meta) {
            tracing::subscriber::Interest::sometimes()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        if !event.metadata().target().starts_with("rumqttd::router") {
            return true;
        }
        let mut message = Message(false);
        event.record(&mut message);
        !message.0
    }
}

/// Whether an event's message is rumqttd's "already gone".
struct Message(bool);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}").ends_with("is already gone");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn rumqttds_spans_and_already_gone_race_are_dropped_and_other_errors_are_kept() {
        use tracing_subscriber::prelude::*;
        let buf = Buf::default();
        let sink = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || sink.clone())
                .with_filter(QuietBroker),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "rumqttd::router::routing", "no-connection id 1 is already gone");
            let broker = tracing::error_span!(target: "rumqttd::router::routing", "publish", topic = "t/secret-span");
            broker.in_scope(|| {
                tracing::error!(target: "rumqttd::router::routing", "disconnecting: protocol error");
            });
            let hub = tracing::error_span!(target: "hub::mqtt", "front", client = "hub-span");
            hub.in_scope(|| tracing::error!(target: "hub", "no-connection id 1 is already gone"));
        });
        let out = String::from_utf8(buf.0.lock().expect("buf").clone()).expect("utf-8");
        assert_eq!(out.lines().count(), 2, "{out}");
        assert!(out.contains("protocol error") && out.contains("hub: no-connection"), "{out}");
        // rumqttd's span is not made (its field never formatted); the hub's own spans are.
        assert!(!out.contains("secret-span") && out.contains("hub-span"), "{out}");
    }
    use std::ffi::OsStr;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some(OsStr::new(""))));
        assert!(!colour_for(true, Some(OsStr::new("1"))));
        assert!(!colour_for(false, None));
        assert!(!colour_for(false, Some(OsStr::new("1"))));
    }
}
