//! The downlink publisher.
//!
//! The MQTT connection (`crate::mqtt_link::Connection`) asks the
//! [`Publisher`], after every ConnAck, to resubscribe and republish all
//! retained desired state and remote configs. [`Publisher`] is
//! the only task that publishes, so a client's config, deployments, manifest
//! and ack always go out in order and from a fresh read of the store;
//! everyone else asks for work through a [`Downlink`] handle, which never
//! blocks (requests coalesce).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::mem;
use std::sync::{Arc, Mutex, PoisonError};

use margo_schemas::cose::SigningKey;
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::{DeploymentBody, DeviceConfig, Envelope, Message, MessageError};
use margo_schemas::topics;
use rumqttc::{AsyncClient, ClientError, QoS};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use crate::mqtt_link::{LinkMetric, LinkStats};
use crate::state_manifest;
use crate::store::{DesiredState, Store, StoreError};

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A message could not be encoded or signed.
    #[error("sealing a message: {0}")]
    Seal(#[from] MessageError),
    /// The MQTT client's event loop is gone.
    #[error("MQTT client: {0}")]
    Client(#[from] ClientError),
}

// ---- the downlink handle ------------------------------------------------------

#[derive(Debug, Default)]
struct ClientWork {
    /// Republish every deployment (not only changed ones).
    full: bool,
    /// Publish changed deployments, clears and the manifest.
    desired: bool,
    /// Publish the ack.
    ack: bool,
    /// Publish the remote config (`R/config`), if one was ever set.
    config: bool,
    /// Deployment topics to clear (if not desired again by then).
    clears: BTreeSet<DeploymentId>,
    /// The client was revoked: clear all of its retained topics.
    revoked: bool,
}

impl ClientWork {
    /// Only the ack is asked for.
    fn is_ack_only(&self) -> bool {
        self.ack
            && !self.full
            && !self.desired
            && !self.config
            && !self.revoked
            && self.clears.is_empty()
    }

    /// Everything retained: deployments, manifest, config and ack.
    fn everything(&mut self) {
        self.full = true;
        self.desired = true;
        self.ack = true;
        self.config = true;
    }
}

#[derive(Debug, Default)]
struct Pending {
    resubscribe: bool,
    sweep: bool,
    all: bool,
    clients: BTreeMap<ClientId, ClientWork>,
}

#[derive(Debug, Default)]
struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
}

/// Asks the [`Publisher`] for work. Never blocks; repeated requests coalesce.
#[derive(Debug, Clone, Default)]
pub struct Downlink {
    shared: Arc<Shared>,
}

impl Downlink {
    /// A handle with no publisher yet (pair it with [`Publisher::new`]).
    pub fn new() -> Self {
        Self::default()
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            f(&mut pending);
        }
        self.shared.notify.notify_one();
    }

    /// After a ConnAck: resubscribe, then republish everything.
    pub fn on_connected(&self) {
        self.update(|p| {
            p.resubscribe = true;
            p.all = true;
        });
    }

    /// Subscribe again to the uplink filters that should hold no retained
    /// message, so the broker delivers any that a device left (the MQTT
    /// connection clears them; issue 12, finding 1).
    pub fn sweep_retained(&self) {
        self.update(|p| p.sweep = true);
    }

    /// Republish every client's retained state.
    pub fn republish_all(&self) {
        self.update(|p| p.all = true);
    }

    /// The desired state of `client` changed: publish changed deployments,
    /// clear `removed`, then the manifest and the ack.
    pub fn desired_changed(
        &self,
        client: &ClientId,
        removed: impl IntoIterator<Item = DeploymentId>,
    ) {
        self.update(|p| {
            let work = p.clients.entry(client.clone()).or_default();
            work.desired = true;
            work.ack = true;
            work.clears.extend(removed);
        });
    }

    /// Republish all of `client`'s retained state, its remote config and its
    /// ack (on `sync`).
    pub fn republish(&self, client: &ClientId) {
        self.update(|p| p.clients.entry(client.clone()).or_default().everything());
    }

    /// The remote config of `client` changed: publish it.
    pub fn config_changed(&self, client: &ClientId) {
        self.update(|p| p.clients.entry(client.clone()).or_default().config = true);
    }

    /// Publish `client`'s current ack.
    pub fn ack(&self, client: &ClientId) {
        self.update(|p| p.clients.entry(client.clone()).or_default().ack = true);
    }

    /// `client` was revoked: clear its retained manifest, deployments, config and ack.
    pub fn revoked(&self, client: &ClientId) {
        self.update(|p| p.clients.entry(client.clone()).or_default().revoked = true);
    }
}

// ---- the publisher ------------------------------------------------------------

/// The task that publishes all downlink traffic.
pub struct Publisher {
    downlink: Downlink,
    client: AsyncClient,
    store: Store,
    key: Arc<SigningKey>,
    stats: Arc<LinkStats>,
    /// What was last published per client (deployment id → digest).
    published: HashMap<ClientId, BTreeMap<DeploymentId, Digest>>,
}

impl Publisher {
    /// A publisher serving `downlink`'s requests through `client`.
    pub fn new(
        downlink: Downlink,
        client: AsyncClient,
        store: Store,
        key: Arc<SigningKey>,
        stats: Arc<LinkStats>,
    ) -> Self {
        Self {
            downlink,
            client,
            store,
            key,
            stats,
            published: HashMap::new(),
        }
    }

    /// Serves requests until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let shared = Arc::clone(&self.downlink.shared);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = shared.notify.notified() => {}
            }
            let pending = mem::take(
                &mut *shared
                    .pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            tokio::select! {
                _ = shutdown.cancelled() => break,
                result = self.serve(pending) => {
                    if let Err(error) = result {
                        self.stats.inc(LinkMetric::PublishErrors);
                        warn!(%error, "publishing failed");
                        if matches!(error, PublishError::Client(_)) {
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn serve(&mut self, mut pending: Pending) -> Result<(), PublishError> {
        if pending.resubscribe {
            let filters = topics::manager_uplink_filters()
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
            self.client.subscribe_many(filters).await?;
        } else if pending.sweep {
            let filters = topics::manager_retained_sweep_filters()
                .into_iter()
                .map(|f| rumqttc::SubscribeFilter::new(f, QoS::AtLeastOnce));
            self.client.subscribe_many(filters).await?;
        }
        if pending.all {
            self.stats.inc(LinkMetric::RepublishAll);
            let clients = self.store.run(|s| s.clients()).await?;
            info!(
                clients = clients.len(),
                "republishing all retained desired state"
            );
            for entry in clients {
                if entry.record.revoked {
                    continue;
                }
                pending.clients.entry(entry.id).or_default().everything();
            }
        }
        // Clients that only need their ack (the common case under uplink
        // load: one per client per ingest batch) are read in one
        // transaction instead of one each.
        let (acks_only, others): (Vec<_>, Vec<_>) = pending
            .clients
            .into_iter()
            .partition(|(_, work)| work.is_ack_only());
        if !acks_only.is_empty() {
            let ids: Vec<ClientId> = acks_only.into_iter().map(|(id, _)| id).collect();
            let read = self
                .store
                .run(move |s| {
                    let acks = s.acks_for(&ids)?;
                    Ok((ids, acks))
                })
                .await;
            let (ids, acks) = match read {
                Ok(read) => read,
                Err(error) => {
                    // Like a failed client below: counted, retried on the next request.
                    self.stats.inc(LinkMetric::PublishErrors);
                    warn!(%error, "reading acks failed");
                    (Vec::new(), Vec::new())
                }
            };
            for (client, ack) in ids.iter().zip(acks) {
                let (seq, manifest_version) = (ack.acked_seq, ack.manifest_version);
                self.send(client, topics::ack(client), Message::Ack(ack))
                    .await?;
                debug!(client_id = %client, seq, manifest_version, "published ack");
            }
        }
        for (client, work) in others {
            if let Err(error) = self.serve_client(&client, work).await {
                if matches!(error, PublishError::Client(_)) {
                    return Err(error);
                }
                self.stats.inc(LinkMetric::PublishErrors);
                warn!(client_id = %client, %error, "publishing to a client failed");
            }
        }
        Ok(())
    }

    #[instrument(skip_all, fields(client_id = %client))]
    async fn serve_client(
        &mut self,
        client: &ClientId,
        work: ClientWork,
    ) -> Result<(), PublishError> {
        if work.revoked {
            return self.clear_client(client).await;
        }
        if work.config {
            self.publish_config(client).await?;
        }
        let id = client.clone();
        if !(work.desired || work.full) {
            if !work.ack {
                return Ok(());
            }
            let ack = self.store.run(move |s| s.ack_for(&id)).await?;
            let (seq, manifest_version) = (ack.acked_seq, ack.manifest_version);
            self.send(client, topics::ack(client), Message::Ack(ack))
                .await?;
            debug!(seq, manifest_version, "published ack");
            return Ok(());
        }
        let state: DesiredState = self.store.run(move |s| s.desired_state(&id)).await?;
        {
            let published = self.published.remove(client).unwrap_or_default();
            let mut now_published = BTreeMap::new();
            for d in &state.deployments {
                if work.full || published.get(&d.id) != Some(&d.digest) {
                    let body = Message::Deployment(DeploymentBody {
                        deployment_id: d.id.clone(),
                        digest: d.digest,
                        yaml: d.yaml.clone(),
                    });
                    self.send(client, topics::desired_deployment(client, &d.id), body)
                        .await?;
                    debug!(deployment_id = %d.id, digest = %d.digest, "published deployment");
                }
                now_published.insert(d.id.clone(), d.digest);
            }
            let stale = work
                .clears
                .iter()
                .chain(published.keys())
                .filter(|id| !now_published.contains_key(*id))
                .cloned()
                .collect::<BTreeSet<_>>();
            for id in stale {
                self.clear(topics::desired_deployment(client, &id)).await?;
                debug!(deployment_id = %id, "cleared deployment");
            }
            self.published.insert(client.clone(), now_published);
            // Always, the zero-deployment manifest (version 1) included:
            // a fresh device learns from it that it is in sync.
            let manifest = state_manifest::build(&state, state_manifest::Form::Mqtt);
            self.send(
                client,
                topics::desired_manifest(client),
                Message::Manifest(manifest),
            )
            .await?;
            debug!(
                manifest_version = state.manifest_version,
                deployments = state.deployments.len(),
                "published manifest"
            );
        }
        // The ack carries the (possibly new) manifest version, so it goes out
        // after every desired-state change too.
        let ack = state.ack.clone();
        self.send(client, topics::ack(client), Message::Ack(ack))
            .await?;
        debug!(
            seq = state.ack.acked_seq,
            manifest_version = state.ack.manifest_version,
            "published ack"
        );
        Ok(())
    }

    async fn clear_client(&mut self, client: &ClientId) -> Result<(), PublishError> {
        let id = client.clone();
        let state = self.store.run(move |s| s.desired_state(&id)).await?;
        let mut ids: BTreeSet<DeploymentId> = state.deployments.into_iter().map(|d| d.id).collect();
        ids.extend(
            self.published
                .remove(client)
                .unwrap_or_default()
                .into_keys(),
        );
        for id in ids {
            self.clear(topics::desired_deployment(client, &id)).await?;
        }
        self.clear(topics::desired_manifest(client)).await?;
        self.clear(topics::config(client)).await?;
        self.clear(topics::ack(client)).await?;
        info!(client_id = %client, "cleared the retained state of a revoked client");
        Ok(())
    }

    /// Publishes `client`'s stored remote config; nothing if none was ever
    /// set (the device follows its local configuration).
    async fn publish_config(&self, client: &ClientId) -> Result<(), PublishError> {
        let id = client.clone();
        let Some(config) = self.store.run(move |s| s.remote_config(&id)).await? else {
            return Ok(());
        };
        let version = config.version;
        let remote = config.schedule.is_some();
        let body = Message::Config(DeviceConfig {
            version: config.version,
            schedule: config.schedule,
        });
        self.send(client, topics::config(client), body).await?;
        debug!(config_version = version, remote, "published config");
        Ok(())
    }

    async fn send(
        &self,
        client: &ClientId,
        topic: String,
        msg: Message,
    ) -> Result<(), PublishError> {
        let envelope = Envelope::new(client.clone(), 0, self.store.clock().now_ms(), msg);
        let payload = envelope.seal(&self.key)?;
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload)
            .await?;
        self.stats.inc(LinkMetric::Published);
        Ok(())
    }

    async fn clear(&self, topic: String) -> Result<(), PublishError> {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, Vec::new())
            .await?;
        self.stats.inc(LinkMetric::Published);
        Ok(())
    }
}

/// What was asked of the publisher for one client (tests of the callers).
#[cfg(test)]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Requested {
    /// Everything retained, republished (after an approval, on `sync`).
    pub everything: bool,
    /// Changed deployments and the manifest.
    pub desired: bool,
    /// The ack.
    pub ack: bool,
    /// The remote config.
    pub config: bool,
    /// Deployment topics to clear.
    pub clears: Vec<DeploymentId>,
    /// All retained topics cleared (revoked).
    pub revoked: bool,
}

#[cfg(test)]
impl Downlink {
    /// Takes what was asked for `client` and not yet published (`None`:
    /// nothing). Tests call it where no publisher drains the requests.
    pub(crate) fn take_requested(&self, client: &ClientId) -> Option<Requested> {
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        pending.clients.remove(client).map(|work| Requested {
            everything: work.full,
            desired: work.desired,
            ack: work.ack,
            config: work.config,
            clears: work.clears.into_iter().collect(),
            revoked: work.revoked,
        })
    }
}
