//! Clients: factory provisioning (single and bulk), listing, details and
//! revocation.

use margo_schemas::ids::ClientId;
use tracing::{error, info};

use super::{Fleet, FleetError, FleetResult};
use crate::ca::ProvisionedDevice;
use crate::config::BrokerUrl;
use crate::status_view::{self, ClientStatus};
use crate::store::{self, CapabilitiesEntry, ClientEntry, ClientRecord, RemoteConfig, StoreError};

/// Most clients one bulk provisioning creates.
pub const MAX_BULK_CLIENTS: u32 = 10_000;

/// A client made by [`Fleet::provision`].
#[derive(Debug)]
pub struct Provisioned {
    /// Its id.
    pub client_id: ClientId,
    /// Its name.
    pub name: String,
    /// The broker URL for its bundle.
    pub broker_url: String,
    /// Its key and certificate (the key is not kept by the manager).
    pub device: ProvisionedDevice,
}

/// Clients made by [`Fleet::provision_many`].
#[derive(Debug)]
pub struct ProvisionedMany {
    /// The broker URL for their bundles.
    pub broker_url: String,
    /// Id, name, key and certificate of each, in name order.
    pub clients: Vec<(ClientId, String, ProvisionedDevice)>,
}

/// Everything known about one client.
#[derive(Debug)]
pub struct ClientView {
    /// Its id.
    pub client_id: ClientId,
    /// Its record.
    pub record: ClientRecord,
    /// Presence, versions, deployments.
    pub status: ClientStatus,
    /// Latest capabilities per device id.
    pub capabilities: Vec<CapabilitiesEntry>,
    /// The remote settings stored for it, if any were ever set.
    pub remote_config: Option<RemoteConfig>,
}

/// What [`Fleet::revoke`] did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The client.
    pub client_id: ClientId,
    /// The client's record after the call.
    pub record: ClientRecord,
    /// It was revoked already before this call.
    pub already_revoked: bool,
    /// Live gateway connections cut (`None` without an embedded gateway).
    pub connections_closed: Option<usize>,
    /// Certificates the rewritten revocation list names (`None`: writing
    /// it failed, logged; the revocation itself is committed).
    pub revocation_list_entries: Option<usize>,
}

impl Fleet {
    /// The broker URL a bundle names: `requested`, checked, or the default.
    fn bundle_broker_url(&self, requested: Option<String>) -> FleetResult<String> {
        let url = requested.unwrap_or_else(|| self.inner.public_broker_url.clone());
        BrokerUrl::parse(&url).map_err(|e| FleetError::Invalid(format!("brokerUrl: {e}")))?;
        Ok(url)
    }

    /// Provisions a client named `name`: a fresh id, a key and certificate
    /// made here, the record committed.
    pub async fn provision(
        &self,
        name: String,
        broker_url: Option<String>,
    ) -> FleetResult<Provisioned> {
        store::validate_name(&name)?;
        let broker_url = self.bundle_broker_url(broker_url)?;
        let taken = name.clone();
        if self.inner.store.run(move |s| s.name_taken(&taken)).await? {
            return Err(StoreError::NameTaken(name).into());
        }
        let client_id = ClientId::generate();
        let id = client_id.clone();
        let device = self.with_pki(move |pki| pki.provision_device(&id)).await?;
        let (id, row_name, der) = (client_id.clone(), name.clone(), device.cert.der.clone());
        self.inner
            .store
            .run(move |s| s.add_client(&id, &row_name, &der))
            .await?;
        info!(client_id = %client_id, %name, "provisioned a client");
        Ok(Provisioned {
            client_id,
            name,
            broker_url,
            device,
        })
    }

    /// Provisions `count` clients named `<prefix><first>` onwards, in one
    /// transaction (which re-checks every name, so a concurrent add cannot
    /// slip in between).
    pub async fn provision_many(
        &self,
        prefix: String,
        first: u32,
        count: u32,
        broker_url: Option<String>,
    ) -> FleetResult<ProvisionedMany> {
        if !(1..=MAX_BULK_CLIENTS).contains(&count) {
            return Err(FleetError::Invalid(format!(
                "count: {count} is not in 1..={MAX_BULK_CLIENTS}"
            )));
        }
        let last = first
            .checked_add(count - 1)
            .ok_or_else(|| FleetError::Invalid("first + count overflows".into()))?;
        let names: Vec<String> = (first..=last).map(|i| format!("{prefix}{i}")).collect();
        for name in &names {
            store::validate_name(name)?;
        }
        let broker_url = self.bundle_broker_url(broker_url)?;
        let clients: Vec<(ClientId, String, ProvisionedDevice)> = self
            .with_pki(move |pki| {
                names
                    .into_iter()
                    .map(|name| {
                        let id = ClientId::generate();
                        let device = pki.provision_device(&id)?;
                        Ok((id, name, device))
                    })
                    .collect()
            })
            .await?;
        let rows: Vec<(ClientId, String, Vec<u8>)> = clients
            .iter()
            .map(|(id, name, device)| (id.clone(), name.clone(), device.cert.der.clone()))
            .collect();
        self.inner.store.run(move |s| s.add_clients(&rows)).await?;
        info!(%prefix, count, "provisioned clients in bulk");
        Ok(ProvisionedMany {
            broker_url,
            clients,
        })
    }

    /// Every client, in id order.
    pub async fn clients(&self) -> FleetResult<Vec<ClientEntry>> {
        Ok(self.inner.store.run(|s| s.clients()).await?)
    }

    /// One client's record, if it exists (the HTTPS listener's
    /// authentication).
    pub async fn client_record(&self, client: &ClientId) -> FleetResult<Option<ClientRecord>> {
        let id = client.clone();
        Ok(self.inner.store.run(move |s| s.client(&id)).await?)
    }

    /// The client registered with exactly this certificate, if any (mutual
    /// TLS on the HTTPS listener).
    pub async fn client_by_certificate(
        &self,
        der: std::sync::Arc<[u8]>,
    ) -> FleetResult<Option<ClientEntry>> {
        Ok(self
            .inner
            .store
            .run(move |s| s.client_by_certificate(&der))
            .await?)
    }

    /// Everything known about the client `reference` names, read in one
    /// store call.
    pub async fn client_view(&self, reference: String) -> FleetResult<ClientView> {
        let id = self.resolve(reference).await?;
        let mut view = self
            .inner
            .store
            .run(move |s| {
                let record = s
                    .client(&id)?
                    .ok_or_else(|| StoreError::UnknownClient(id.to_string()))?;
                let status = status_view::client_status(s, &id, s.clock().now_ms())?;
                Ok(ClientView {
                    capabilities: s.capabilities_detail(&id)?,
                    remote_config: s.remote_config(&id)?,
                    client_id: id,
                    record,
                    status,
                })
            })
            .await?;
        view.status.cloned = self
            .clones
            .current(&view.client_id, self.inner.store.clock().now_ms());
        Ok(view)
    }

    /// Revokes the client `reference` names: commits the flag, then forgets
    /// its verifying key (ingest refuses its uplink from now on), cuts its
    /// live connections at the embedded gateway and asks the publisher to
    /// clear its retained messages. Revoking twice does the side effects
    /// again, which is harmless.
    pub async fn revoke(&self, reference: String) -> FleetResult<Revoked> {
        let client = self.resolve(reference).await?;
        let id = client.clone();
        let (already_revoked, record) = self
            .inner
            .store
            .run(move |s| {
                let before = s.client(&id)?.is_some_and(|r| r.revoked);
                Ok((before, s.set_revoked(&id, true)?))
            })
            .await?;
        self.inner.keys.forget(&client);
        // The operator acted on it: a suspected clone is settled.
        self.clones.clear(&client);
        let connections_closed = self.inner.revocations.as_ref().map(|r| r.revoke(&client));
        self.inner.downlink.revoked(&client);
        let revocation_list_entries = match self.write_revocation_list().await {
            Ok(entries) => Some(entries),
            Err(error) => {
                error!(client_id = %client, %error, "could not rewrite the revocation list; an external broker keeps accepting this client's certificate");
                None
            }
        };
        info!(client_id = %client, already_revoked, ?connections_closed, ?revocation_list_entries, "revoked a client");
        Ok(Revoked {
            client_id: client,
            record,
            already_revoked,
            connections_closed,
            revocation_list_entries,
        })
    }
}
