//! The revocation set, and the registry of live gateway connections it cuts
//! (with the watch for identities in use from several sources at once,
//! [`crate::clones`], which the manager reads through the same handle).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use margo_schemas::ids::ClientId;
use tokio_util::sync::CancellationToken;

use crate::clones::CloneWatch;
use crate::error::BrokerError;

/// Shared handle to the set of revoked client identities.
///
/// Cloning is cheap; every clone sees the same set. A revoked identity is
/// refused by the gateway (CONNACK "not authorized" to its CONNECT), and
/// [`Revocations::revoke`] also closes that client's live connections.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
    next_id: AtomicU64,
    clones: CloneWatch,
}

#[derive(Debug, Default)]
struct State {
    revoked: HashSet<ClientId>,
    live: HashMap<ClientId, HashMap<u64, CancellationToken>>,
}

/// Why [`Revocations::register_live`] refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LiveRefusal {
    /// The identity is revoked.
    Revoked,
    /// The identity already has its cap of live connections.
    TooMany,
}

/// A live connection's entry in the registry; removes itself on drop.
#[derive(Debug)]
pub(crate) struct LiveGuard {
    inner: Arc<Inner>,
    client: ClientId,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut state = lock(&self.inner.state);
        if let Some(conns) = state.live.get_mut(&self.client) {
            conns.remove(&self.id);
            if conns.is_empty() {
                state.live.remove(&self.client);
            }
        }
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent under panics (single inserts/removes), so a
    // poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Revocations {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Revokes `client` and closes its live gateway connections at once.
    /// Returns how many live connections were closed.
    pub fn revoke(&self, client: &ClientId) -> usize {
        let mut state = lock(&self.inner.state);
        state.revoked.insert(client.clone());
        cancel_live(&mut state, client)
    }

    /// Lifts a revocation; the client may connect again.
    pub fn unrevoke(&self, client: &ClientId) {
        lock(&self.inner.state).revoked.remove(client);
    }

    /// Replaces the whole set (e.g. after reloading the manager's list), and
    /// closes the live connections of every identity in the new set.
    pub fn replace_all(&self, clients: impl IntoIterator<Item = ClientId>) -> usize {
        let revoked: HashSet<ClientId> = clients.into_iter().collect();
        let mut state = lock(&self.inner.state);
        let mut closed = 0;
        for client in &revoked {
            closed += cancel_live(&mut state, client);
        }
        state.revoked = revoked;
        closed
    }

    /// The gateway's watch for cloned identities (shared: the manager
    /// subscribes to its alerts).
    pub fn clones(&self) -> CloneWatch {
        self.inner.clones.clone()
    }

    /// Whether `client` is revoked.
    pub fn is_revoked(&self, client: &ClientId) -> bool {
        lock(&self.inner.state).revoked.contains(client)
    }

    /// How many identities are revoked.
    pub fn len(&self) -> usize {
        lock(&self.inner.state).revoked.len()
    }

    /// Whether no identity is revoked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Registers a live connection of `client`, atomically with the revocation
    /// check and the cap of `max_live` connections per identity. The
    /// connection must stop when `token` is cancelled; dropping the guard
    /// unregisters it.
    pub(crate) fn register_live(
        &self,
        client: &ClientId,
        token: CancellationToken,
        max_live: usize,
    ) -> Result<LiveGuard, LiveRefusal> {
        let mut state = lock(&self.inner.state);
        if state.revoked.contains(client) {
            return Err(LiveRefusal::Revoked);
        }
        if state.live.get(client).is_some_and(|c| c.len() >= max_live) {
            return Err(LiveRefusal::TooMany);
        }
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        state
            .live
            .entry(client.clone())
            .or_default()
            .insert(id, token);
        Ok(LiveGuard {
            inner: Arc::clone(&self.inner),
            client: client.clone(),
            id,
        })
    }
}

/// Parses a revocation list: one client id per line; blank lines and lines
/// starting with `#` are ignored, surrounding whitespace is trimmed.
pub fn parse_revocation_list(text: &str) -> Result<Vec<ClientId>, BrokerError> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(line, id)| {
            ClientId::new(id).map_err(|e| BrokerError::RevocationList {
                line,
                reason: e.to_string(),
            })
        })
        .collect()
}

fn cancel_live(state: &mut State, client: &ClientId) -> usize {
    match state.live.remove(client) {
        Some(conns) => {
            for token in conns.values() {
                token.cancel();
            }
            conns.len()
        }
        None => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> ClientId {
        ClientId::new(s).expect("valid id")
    }

    #[test]
    fn revoke_cancels_live_connections_and_blocks_registration() {
        let r = Revocations::new();
        let a = id("aaa");
        let token = CancellationToken::new();
        let guard = r.register_live(&a, token.clone(), 4).expect("not revoked");
        assert_eq!(r.revoke(&a), 1);
        assert!(token.is_cancelled());
        drop(guard);
        assert_eq!(
            r.register_live(&a, CancellationToken::new(), 4).err(),
            Some(LiveRefusal::Revoked)
        );
        r.unrevoke(&a);
        assert!(r.register_live(&a, CancellationToken::new(), 4).is_ok());
    }

    #[test]
    fn an_identity_holds_at_most_max_live_connections() {
        let r = Revocations::new();
        let a = id("aaa");
        let first = r.register_live(&a, CancellationToken::new(), 2).expect("1");
        let _second = r.register_live(&a, CancellationToken::new(), 2).expect("2");
        assert_eq!(
            r.register_live(&a, CancellationToken::new(), 2).err(),
            Some(LiveRefusal::TooMany)
        );
        assert!(r
            .register_live(&id("bbb"), CancellationToken::new(), 2)
            .is_ok());
        drop(first);
        assert!(
            r.register_live(&a, CancellationToken::new(), 2).is_ok(),
            "a slot came back"
        );
    }

    #[test]
    fn replace_all_swaps_the_set() {
        let r = Revocations::new();
        r.revoke(&id("aaa"));
        let token = CancellationToken::new();
        let _guard = r.register_live(&id("bbb"), token.clone(), 4);
        assert_eq!(r.replace_all([id("bbb")]), 1);
        assert!(token.is_cancelled());
        assert!(!r.is_revoked(&id("aaa")));
        assert!(r.is_revoked(&id("bbb")));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn revocation_list_format() {
        let ids = parse_revocation_list("# revoked\n\naaa\n  bbb  \n").expect("parses");
        assert_eq!(ids, vec![id("aaa"), id("bbb")]);
        assert!(matches!(
            parse_revocation_list("aaa\nNot-Valid\n"),
            Err(BrokerError::RevocationList { line: 2, .. })
        ));
    }

    #[test]
    fn dropped_guards_leave_the_registry() {
        let r = Revocations::new();
        let a = id("aaa");
        drop(r.register_live(&a, CancellationToken::new(), 4));
        assert_eq!(r.revoke(&a), 0);
    }
}
