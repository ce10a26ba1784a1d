//! A fault-injecting TCP proxy (test support): put it between a device and
//! its broker (or the manager's HTTPS listener) to shape and break the link
//! at the socket level, where the agent cannot tell it from a real network.
//!
//! Faults, on every connection through the proxy or on one of them:
//! - **latency**: every chunk is held back this long in each direction;
//! - **bandwidth cap**: bytes per second in each direction;
//! - **cut**: both sockets closed with a FIN (the peer reads EOF);
//! - **reset**: both sockets closed with SO_LINGER 0 (the peer gets RST);
//! - **half-open**: nothing is forwarded any more but the sockets stay open
//!   (a peer that vanished without a FIN), until the stall ends with a cut;
//! - a scripted or seeded [`Timeline`] of the above (same seed, same schedule).
//!
//! The fleet simulator's crash campaign (`margo-fleetsim campaign`) puts one
//! proxy in front of every device.

mod link;
mod timeline;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use link::{LinkShape, Mode};
pub use timeline::{FaultKind, LinkFault, Timeline, TimelineSpec};

/// What a fault did, counted per kind since the proxy started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub latency: u64,
    pub bandwidth: u64,
    pub cut: u64,
    pub reset: u64,
    pub half_open: u64,
    /// Connections closed by a cut, a reset or the end of a half-open stall.
    pub connections_broken: u64,
}

#[derive(Default)]
struct Counters {
    latency: AtomicU64,
    bandwidth: AtomicU64,
    cut: AtomicU64,
    reset: AtomicU64,
    half_open: AtomicU64,
    broken: AtomicU64,
    accepted: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
}

/// The control state of one connection, watched by its pumps.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Ctl {
    mode: Mode,
    shape: LinkShape,
}

struct Shared {
    upstream: SocketAddr,
    /// The shape new connections start with (and [`FaultProxy::set_shape`] sets on all).
    shape: Mutex<LinkShape>,
    conns: Mutex<HashMap<u64, watch::Sender<Ctl>>>,
    counters: Counters,
}

impl Shared {
    fn conns(&self) -> std::sync::MutexGuard<'_, HashMap<u64, watch::Sender<Ctl>>> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shape(&self) -> LinkShape {
        *self.shape.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A TCP proxy on a free loopback port that forwards to an upstream address
/// and injects faults on command.
pub struct FaultProxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Result<FaultProxy> {
        Self::start_on("127.0.0.1:0".parse()?, upstream).await
    }

    /// Like [`FaultProxy::start`], listening on `listen` (e.g. a port a
    /// device's bundle already names).
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> Result<FaultProxy> {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind the fault proxy on {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            shape: Mutex::new(LinkShape::default()),
            conns: Mutex::new(HashMap::new()),
            counters: Counters::default(),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, Arc::clone(&shared), stop.clone()));
        Ok(FaultProxy { addr, shared, stop })
    }

    /// Ids of the connections open now.
    pub fn connections(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self.shared.conns().keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Connections accepted since the start.
    pub fn accepted(&self) -> u64 {
        self.shared.counters.accepted.load(Ordering::Relaxed)
    }

    /// (client → upstream, upstream → client) bytes forwarded so far.
    pub fn bytes(&self) -> (u64, u64) {
        let c = &self.shared.counters;
        (c.up.load(Ordering::Relaxed), c.down.load(Ordering::Relaxed))
    }

    /// The faults injected so far, per kind.
    pub fn counts(&self) -> FaultCounts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FaultCounts {
            latency: get(&c.latency),
            bandwidth: get(&c.bandwidth),
            cut: get(&c.cut),
            reset: get(&c.reset),
            half_open: get(&c.half_open),
            connections_broken: get(&c.broken),
        }
    }

    /// Sets the latency and bandwidth of every open and future connection.
    pub fn set_shape(&self, shape: LinkShape) {
        *self
            .shared
            .shape
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = shape;
        for tx in self.shared.conns().values() {
            tx.send_modify(|c| c.shape = shape);
        }
    }

    /// Sets the latency and bandwidth of one open connection.
    pub fn set_connection_shape(&self, id: u64, shape: LinkShape) {
        if let Some(tx) = self.shared.conns().get(&id) {
            tx.send_modify(|c| c.shape = shape);
        }
    }

    /// Closes every open connection with a FIN on both sides; returns how many.
    pub fn cut(&self) -> usize {
        self.shared.counters.cut.fetch_add(1, Ordering::Relaxed);
        self.set_mode_all(Mode::Cut)
    }

    /// Closes every open connection with an RST on both sides; returns how many.
    pub fn reset(&self) -> usize {
        self.shared.counters.reset.fetch_add(1, Ordering::Relaxed);
        self.set_mode_all(Mode::Reset)
    }

    /// Stops forwarding on every open connection and keeps its sockets open
    /// for `stall`, then cuts it (a vanished peer never comes back); returns how many.
    pub fn half_open(&self, stall: Duration) -> usize {
        self.shared
            .counters
            .half_open
            .fetch_add(1, Ordering::Relaxed);
        let ids = self.connections();
        for &id in &ids {
            self.stall_connection(id, stall);
        }
        ids.len()
    }

    /// Applies `mode` to one open connection (a half-open stall with
    /// [`FaultProxy::stall_connection`]).
    pub fn break_connection(&self, id: u64, mode: Mode) {
        if let Some(tx) = self.shared.conns().get(&id) {
            tx.send_modify(|c| c.mode = mode);
        }
    }

    /// Stalls one open connection for `stall`, then cuts it.
    pub fn stall_connection(&self, id: u64, stall: Duration) {
        self.break_connection(id, Mode::Stall);
        let shared = Arc::clone(&self.shared);
        tokio::spawn(async move {
            tokio::time::sleep(stall).await;
            if let Some(tx) = shared.conns().get(&id) {
                tx.send_modify(|c| {
                    if c.mode == Mode::Stall {
                        c.mode = Mode::Cut;
                    }
                });
            }
        });
    }

    /// Applies one fault now; a shaped link goes back to its previous shape
    /// after the fault's duration.
    pub fn inject(&self, fault: LinkFault) {
        match fault {
            LinkFault::Cut => {
                self.cut();
            }
            LinkFault::Reset => {
                self.reset();
            }
            LinkFault::HalfOpen { stall } => {
                self.half_open(stall);
            }
            LinkFault::Latency { latency, lasting } => {
                self.shared.counters.latency.fetch_add(1, Ordering::Relaxed);
                let before = self.shared.shape();
                self.shape_for(LinkShape { latency, ..before }, lasting);
            }
            LinkFault::Bandwidth {
                bytes_per_sec,
                lasting,
            } => {
                self.shared
                    .counters
                    .bandwidth
                    .fetch_add(1, Ordering::Relaxed);
                let before = self.shared.shape();
                self.shape_for(
                    LinkShape {
                        bytes_per_sec: Some(bytes_per_sec),
                        ..before
                    },
                    lasting,
                );
            }
        }
    }

    /// Plays `timeline` from now on, in the background; the returned token
    /// stops it (the proxy's own stop does too).
    pub fn play(&self, timeline: &Timeline) -> CancellationToken {
        let stop = self.stop.child_token();
        let proxy = FaultProxy {
            addr: self.addr,
            shared: Arc::clone(&self.shared),
            // A child token: dropping this handle does not stop the proxy.
            stop: stop.child_token(),
        };
        let events = timeline.events.clone();
        let s = stop.clone();
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            for (at, fault) in events {
                tokio::select! {
                    () = s.cancelled() => return,
                    () = tokio::time::sleep_until(start + at) => proxy.inject(fault),
                }
            }
        });
        stop
    }

    /// Back to a clean link: default shape, no stall (broken connections stay broken).
    pub fn heal(&self) {
        self.set_shape(LinkShape::default());
        for tx in self.shared.conns().values() {
            tx.send_modify(|c| {
                if c.mode == Mode::Stall {
                    c.mode = Mode::Flow;
                }
            });
        }
    }

    fn shape_for(&self, shape: LinkShape, lasting: Duration) {
        let before = self.shared.shape();
        self.set_shape(shape);
        let proxy = FaultProxy {
            addr: self.addr,
            shared: Arc::clone(&self.shared),
            stop: self.stop.child_token(),
        };
        tokio::spawn(async move {
            tokio::time::sleep(lasting).await;
            // Only undo our own change (a later fault or heal may have replaced it).
            if proxy.shared.shape() == shape {
                proxy.set_shape(before);
            }
        });
    }

    fn set_mode_all(&self, mode: Mode) -> usize {
        let conns = self.shared.conns();
        for tx in conns.values() {
            tx.send_modify(|c| c.mode = mode);
        }
        conns.len()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    let mut next_id = 0u64;
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        next_id += 1;
        let id = next_id;
        let (tx, rx) = watch::channel(Ctl {
            mode: Mode::Flow,
            shape: shared.shape(),
        });
        shared.conns().insert(id, tx);
        let (shared, stop) = (Arc::clone(&shared), stop.clone());
        tokio::spawn(async move {
            let broken = tokio::select! {
                () = stop.cancelled() => false,
                b = link::serve(client, shared.upstream, rx, &shared.counters.up, &shared.counters.down) => b,
            };
            if broken {
                shared.counters.broken.fetch_add(1, Ordering::Relaxed);
            }
            shared.conns().remove(&id);
        });
    }
}
