//! rumqttd's log lines, sorted: the ones healthy operation produces at ERROR
//! are kept out of the default logs.
//!
//! rumqttd logs at ERROR what is routine for us: the manager's own
//! readiness probe and every client that closes its socket before CONNECT
//! ("Error while handling MQTT connect packet"), every clean DISCONNECT and
//! every session taken over or closed by the router ("router-drop"), every disconnect the router has
//! already handled ("no-connection id N is already gone"), and a peer
//! closing its socket ("disconnected"). tracing fixes an event's level at
//! its callsite, so these cannot be re-levelled to DEBUG: [`QuietRumqttd`]
//! drops them (at ERROR/WARN) instead, except at `-vv`, which shows them
//! as they are. Every other rumqttd error still shows. [`init_stderr`] is
//! the binaries' log setup with it.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer};

/// I/O errors that mean the peer closed its socket: routine, not a fault.
const PEER_CLOSED: [&str; 4] = [
    "UnexpectedEof",
    "ConnectionReset",
    "ConnectionAborted",
    "BrokenPipe",
];

/// Whether a rumqttd event (`target`, `level`, its `message` and `error`
/// fields) is routine operation logged too loudly.
pub fn is_benign(target: &str, level: Level, message: &str, error: &str) -> bool {
    if !target.starts_with("rumqttd") || level > Level::WARN {
        return false;
    }
    let peer_closed = || PEER_CLOSED.iter().any(|kind| error.contains(kind));
    match message {
        "router-drop" => true,
        "Error while handling MQTT connect packet" | "disconnected" => peer_closed(),
        _ => message.starts_with("no-connection id ") && message.ends_with(" is already gone"),
    }
}

/// A layer that drops the events [`is_benign`] names, for every layer of
/// the subscriber, unless they are wanted (`show`).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietRumqttd {
    show: bool,
}

impl QuietRumqttd {
    /// Drops the routine lines unless `show`.
    pub fn new(show: bool) -> Self {
        Self { show }
    }
}

#[derive(Default)]
struct Fields {
    message: String,
    error: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "error" => self.error.push_str(value),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let _ = match field.name() {
            "message" => write!(self.message, "{value:?}"),
            "error" => write!(self.error, "{value:?}"),
            _ => Ok(()),
        };
    }
}

impl<S: Subscriber> Layer<S> for QuietRumqttd {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if self.show || !meta.target().starts_with("rumqttd") || *meta.level() > Level::WARN {
            return true;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        !is_benign(meta.target(), *meta.level(), &fields.message, &fields.error)
    }
}

/// The binaries' logs: to stderr, `RUST_LOG` or else the directives of
/// `verbose` (0: INFO with rumqttd at WARN, 1: DEBUG with rumqttd at INFO,
/// 2+: TRACE), colour only at a terminal, routine rumqttd errors dropped
/// below `-vv` ([`QuietRumqttd`]).
pub fn init_stderr(verbose: u8) {
    let default = match verbose {
        0 => "info,rumqttd=warn",
        1 => "debug,rumqttd=info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::registry()
        .with(QuietRumqttd::new(verbose >= 2))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person at a terminal, not in log files and journals.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(filter),
        )
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routine_rumqttd_errors_are_benign() {
        let t = "rumqttd::server::broker";
        let eof = "Network(Io(Kind(UnexpectedEof)))";
        assert!(is_benign(t, Level::ERROR, "router-drop", "Send(..)"));
        assert!(is_benign(
            "rumqttd::router::routing",
            Level::ERROR,
            "no-connection id 3 is already gone",
            ""
        ));
        assert!(is_benign(
            t,
            Level::ERROR,
            "Error while handling MQTT connect packet",
            eof
        ));
        assert!(is_benign(
            t,
            Level::ERROR,
            "disconnected",
            "Io(Custom { kind: ConnectionReset })"
        ));
    }

    #[test]
    fn real_errors_still_show() {
        let t = "rumqttd::server::broker";
        let bad = "Network(Protocol(MalformedPacket))";
        assert!(!is_benign(
            t,
            Level::ERROR,
            "Error while handling MQTT connect packet",
            bad
        ));
        assert!(!is_benign(
            t,
            Level::ERROR,
            "disconnected",
            "KeepAlive(Elapsed(()))"
        ));
        assert!(!is_benign(
            t,
            Level::ERROR,
            "Tls accept error",
            "UnexpectedEof"
        ));
        assert!(!is_benign(
            "rumqttd::router::routing",
            Level::ERROR,
            "no space for new connection",
            ""
        ));
        assert!(!is_benign("margo_broker", Level::ERROR, "router-drop", ""));
        assert!(
            !is_benign(t, Level::INFO, "router-drop", ""),
            "not ours to drop below WARN"
        );
    }
}
