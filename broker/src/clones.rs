//! Cloned identities (issue 12, finding 9): one device bundle in use on two
//! devices. The broker keeps only the newest session of a client id, so two
//! devices with one certificate take the session from each other in turns,
//! each from its own address. One change of address is normal (a device
//! that moved, whose old connection is half-open); repeated changes between
//! sources within a window are a clone.
//!
//! The gateway tells the [`CloneWatch`] of every connection with a verified
//! certificate and where it comes from (its source network: an IPv4
//! address, an IPv6 /64). A *switch* is a connection from another source
//! than the identity's previous connection. [`CloneRule::switches`] switches
//! within [`CloneRule::window`] raise a suspicion: logged at WARN once per
//! identity per window, counted by the gateway, and sent to subscribers
//! (the manager's fleet core) on every further switch while it lasts.
//! Session takeover itself is unchanged: the newest connection wins.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use margo_schemas::config_layers::ConfigError;
use margo_schemas::ids::ClientId;
use serde::Deserialize;
use tokio::sync::broadcast;
use tracing::warn;

/// Alerts kept for a slow subscriber (older ones are skipped).
const ALERT_CAPACITY: usize = 256;
/// Sources named in an alert at most.
const MAX_SOURCES: usize = 8;

/// When repeated changes of source make an identity a suspected clone
/// (`[gateway.clone_detection]` in `margo-broker`'s file,
/// `[broker.clone_detection]` in the manager's, where it also applies to
/// the agent instance ids seen in uplink).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloneRule {
    /// How far back switches count, and how long a suspicion lasts after
    /// the last one. Default 10 minutes.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Switches between sources within `window` that make a suspicion.
    /// Default 3 (A → B → A → B); at least 2, so one move is never one.
    pub switches: u32,
}

impl Default for CloneRule {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            switches: 3,
        }
    }
}

impl CloneRule {
    /// `window` positive, `switches` at least 2; `prefix` names the table.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        if self.window.is_zero() {
            return Err(ConfigError::invalid(
                format!("{prefix}.window"),
                "must be positive",
            ));
        }
        if self.switches < 2 {
            return Err(ConfigError::invalid(
                format!("{prefix}.switches"),
                "must be at least 2 (one change of address is a device that moved)",
            ));
        }
        Ok(())
    }
}

/// A suspected clone: `client` came from each of `sources` in turns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneAlert {
    /// The identity.
    pub client: ClientId,
    /// The source networks it switched between, within the window.
    pub sources: Vec<IpAddr>,
    /// Whether this alert raised the suspicion (it was logged); later ones
    /// refresh it while the switches go on.
    pub first: bool,
}

/// Shared handle; every clone sees the same state.
#[derive(Debug, Clone)]
pub struct CloneWatch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rule: Mutex<CloneRule>,
    tracks: Mutex<Tracks>,
    alerts: broadcast::Sender<CloneAlert>,
}

#[derive(Debug, Default)]
struct Tracks {
    next_id: u64,
    by_client: HashMap<ClientId, Track>,
}

#[derive(Debug)]
struct Track {
    /// Source of the newest connection.
    last: IpAddr,
    /// Live connections by id, with their source.
    live: HashMap<u64, IpAddr>,
    /// Switches within the window: when, and the source switched to.
    switches: VecDeque<(Instant, IpAddr)>,
    /// When the suspicion was last logged.
    logged: Option<Instant>,
}

/// A connection's place in the watch; leaves it on drop.
#[derive(Debug)]
pub(crate) struct Watched {
    inner: Arc<Inner>,
    client: ClientId,
    id: u64,
}

impl Default for CloneWatch {
    fn default() -> Self {
        Self::new(CloneRule::default())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Single inserts and removes: the state stays usable after a panic.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl CloneWatch {
    /// A watch applying `rule`.
    pub fn new(rule: CloneRule) -> Self {
        let (alerts, _) = broadcast::channel(ALERT_CAPACITY);
        Self {
            inner: Arc::new(Inner {
                rule: Mutex::new(rule),
                tracks: Mutex::default(),
                alerts,
            }),
        }
    }

    /// Replaces the rule (the gateway's configuration, at bind).
    pub fn set_rule(&self, rule: CloneRule) {
        *lock(&self.inner.rule) = rule;
    }

    /// The rule in force.
    pub fn rule(&self) -> CloneRule {
        *lock(&self.inner.rule)
    }

    /// Alerts from now on (see [`CloneAlert::first`]).
    pub fn subscribe(&self) -> broadcast::Receiver<CloneAlert> {
        self.inner.alerts.subscribe()
    }

    /// The identities suspected now, with their sources.
    pub fn suspects(&self) -> Vec<(ClientId, Vec<IpAddr>)> {
        let rule = self.rule();
        let now = Instant::now();
        lock(&self.inner.tracks)
            .by_client
            .iter()
            .filter_map(|(client, track)| {
                let recent = track.recent(now, rule.window);
                (recent.len() >= rule.switches as usize)
                    .then(|| (client.clone(), track.sources(&recent)))
            })
            .collect()
    }

    /// Records a connection of `client` from `peer` at `now`; returns its
    /// place (held while it lives) and the alert it raised, if any.
    pub(crate) fn connected_at(
        &self,
        client: &ClientId,
        peer: IpAddr,
        now: Instant,
    ) -> (Watched, Option<CloneAlert>) {
        let source = margo_schemas::source_network::of(peer);
        let rule = self.rule();
        let mut tracks = lock(&self.inner.tracks);
        let id = tracks.next_id;
        tracks.next_id += 1;
        let track = tracks
            .by_client
            .entry(client.clone())
            .or_insert_with(|| Track {
                last: source,
                live: HashMap::new(),
                switches: VecDeque::new(),
                logged: None,
            });
        while track
            .switches
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > rule.window)
        {
            track.switches.pop_front();
        }
        let switched = track.last != source || track.live.values().any(|live| *live != source);
        track.last = source;
        track.live.insert(id, source);
        let mut alert = None;
        if switched {
            track.switches.push_back((now, source));
            if track.switches.len() >= rule.switches as usize {
                let first = track
                    .logged
                    .is_none_or(|at| now.saturating_duration_since(at) > rule.window);
                if first {
                    track.logged = Some(now);
                }
                let recent: Vec<IpAddr> = track.switches.iter().map(|(_, s)| *s).collect();
                alert = Some(CloneAlert {
                    client: client.clone(),
                    sources: track.sources(&recent),
                    first,
                });
            }
        }
        drop(tracks);
        if let Some(alert) = &alert {
            // No subscriber (the standalone broker) is fine.
            let _ = self.inner.alerts.send(alert.clone());
        }
        let watched = Watched {
            inner: Arc::clone(&self.inner),
            client: client.clone(),
            id,
        };
        (watched, alert)
    }
}

impl Track {
    fn recent(&self, now: Instant, window: Duration) -> Vec<IpAddr> {
        self.switches
            .iter()
            .filter(|(at, _)| now.saturating_duration_since(*at) <= window)
            .map(|(_, s)| *s)
            .collect()
    }

    /// The distinct sources of `switched_to`, the live connections and the
    /// newest one.
    fn sources(&self, switched_to: &[IpAddr]) -> Vec<IpAddr> {
        let mut all: BTreeSet<IpAddr> = switched_to.iter().copied().collect();
        all.extend(self.live.values().copied());
        all.insert(self.last);
        all.into_iter().take(MAX_SOURCES).collect()
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let window = lock(&self.inner.rule).window;
        let mut tracks = lock(&self.inner.tracks);
        if let Some(track) = tracks.by_client.get_mut(&self.client) {
            track.live.remove(&self.id);
            let quiet = track
                .switches
                .back()
                .is_none_or(|(at, _)| at.elapsed() > window);
            if track.live.is_empty() && quiet {
                tracks.by_client.remove(&self.client);
            }
        }
    }
}

/// The gateway's call for a connection of `client` whose certificate was
/// verified: records it (`None` when the peer address is unknown) and logs
/// a new suspicion. Returns its place and whether it raised a suspicion.
pub(crate) fn watch_connection(
    watch: &CloneWatch,
    client: &ClientId,
    peer: Option<IpAddr>,
) -> (Option<Watched>, bool) {
    let Some(peer) = peer else {
        return (None, false);
    };
    let (watched, alert) = watch.connected_at(client, peer, Instant::now());
    let Some(alert) = alert else {
        return (Some(watched), false);
    };
    if alert.first {
        let sources: Vec<String> = alert.sources.iter().map(IpAddr::to_string).collect();
        warn!(
            client_id = %client,
            sources = ?sources,
            window = ?watch.rule().window,
            "identity {client} is in use from {} at once: cloned bundle? (revoke it and onboard each device anew)",
            sources.join(" and ")
        );
    }
    (Some(watched), alert.first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).expect("valid id")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn one_move_is_not_a_clone_but_alternation_is() {
        let watch = CloneWatch::default();
        let mut alerts = watch.subscribe();
        let dev = id("dev");
        let t0 = Instant::now();
        let (a, alert) = watch.connected_at(&dev, ip("192.0.2.1"), t0);
        assert!(alert.is_none());
        // The device moves; its old connection is still half-open.
        let (b, alert) = watch.connected_at(&dev, ip("198.51.100.7"), t0 + Duration::from_secs(1));
        assert!(alert.is_none(), "one move is normal");
        drop(a);
        // Reconnects from its new address: no switch.
        drop(b);
        let (b2, alert) = watch.connected_at(&dev, ip("198.51.100.7"), t0 + Duration::from_secs(5));
        assert!(alert.is_none());
        // A second device with the same bundle takes the session twice.
        let (_c, alert) = watch.connected_at(&dev, ip("192.0.2.1"), t0 + Duration::from_secs(6));
        assert!(alert.is_none(), "two switches");
        drop(b2);
        let (_d, alert) = watch.connected_at(&dev, ip("198.51.100.7"), t0 + Duration::from_secs(7));
        let alert = alert.expect("three switches within the window");
        assert!(alert.first);
        assert_eq!(alert.sources, vec![ip("192.0.2.1"), ip("198.51.100.7")]);
        assert_eq!(alerts.try_recv().expect("broadcast"), alert);
        assert_eq!(watch.suspects().len(), 1);

        // Further switches refresh it without logging again.
        let (_e, alert) = watch.connected_at(&dev, ip("192.0.2.1"), t0 + Duration::from_secs(8));
        assert!(!alert.expect("still suspected").first);
    }

    #[test]
    fn switches_older_than_the_window_do_not_count() {
        let rule = CloneRule {
            window: Duration::from_secs(60),
            switches: 2,
        };
        let watch = CloneWatch::new(rule);
        let dev = id("dev");
        let t0 = Instant::now();
        let _a = watch.connected_at(&dev, ip("192.0.2.1"), t0);
        let _b = watch.connected_at(&dev, ip("192.0.2.2"), t0 + Duration::from_secs(1));
        let (_c, alert) = watch.connected_at(&dev, ip("192.0.2.1"), t0 + Duration::from_secs(120));
        assert!(alert.is_none(), "the first switch left the window");
        let (_d, alert) = watch.connected_at(&dev, ip("192.0.2.2"), t0 + Duration::from_secs(121));
        assert!(alert.expect("two within the window").first);
    }

    #[test]
    fn one_ipv6_slash_64_is_one_source_and_identities_are_apart() {
        let rule = CloneRule {
            window: Duration::from_secs(60),
            switches: 2,
        };
        let watch = CloneWatch::new(rule);
        let t0 = Instant::now();
        let mut held = Vec::new();
        for (n, addr) in ["2001:db8::1", "2001:db8::2", "2001:db8::3"]
            .iter()
            .enumerate()
        {
            let (w, alert) =
                watch.connected_at(&id("dev"), ip(addr), t0 + Duration::from_secs(n as u64));
            assert!(alert.is_none(), "privacy addresses in one /64");
            held.push(w);
        }
        let other = watch.connected_at(&id("other"), ip("192.0.2.9"), t0);
        assert!(watch.suspects().is_empty());
        drop(held);
        drop(other);
        assert!(
            lock(&watch.inner.tracks).by_client.is_empty(),
            "quiet identities without connections are forgotten"
        );
    }

    #[test]
    fn rule_validation_names_the_field() {
        assert!(CloneRule::default()
            .validate("gateway.clone_detection")
            .is_ok());
        let one = CloneRule {
            switches: 1,
            ..CloneRule::default()
        };
        let error = one.validate("gateway.clone_detection").unwrap_err();
        assert!(error
            .to_string()
            .contains("gateway.clone_detection.switches"));
    }
}
