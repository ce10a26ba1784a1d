//! The fleet view (status, uplink, capabilities, security events) and the
//! reports devices deliver over HTTP (MQTT reports arrive as uplink
//! batches through [`crate::ingest`]).

use std::collections::BTreeMap;

use margo_schemas::capabilities::DeviceCapabilitiesManifest;
use margo_schemas::ids::{ClientId, DeviceId};
use margo_schemas::status::DeploymentStatus;
use tracing::info;

use super::{Fleet, FleetResult};
use crate::status_view::{self, ClientStatus};
use crate::store::{AuditEvent, ReportError, ReportOutcome, UplinkSummary};

impl Fleet {
    /// The status of the client `reference` names, or of every client.
    pub async fn status(&self, reference: Option<String>) -> FleetResult<Vec<ClientStatus>> {
        match reference {
            Some(reference) => {
                let id = self.resolve(reference).await?;
                let one = self
                    .inner
                    .store
                    .run(move |s| status_view::client_status(s, &id, s.clock().now_ms()))
                    .await?;
                Ok(self.with_clones(vec![one]))
            }
            None => Ok(self.with_clones(
                self.inner
                    .store
                    .run(|s| status_view::fleet_status(s, s.clock().now_ms()))
                    .await?,
            )),
        }
    }

    /// The stored uplink of the client `reference` names, per kind.
    pub async fn uplink(&self, reference: String) -> FleetResult<Vec<UplinkSummary>> {
        let id = self.resolve(reference).await?;
        Ok(self.inner.store.run(move |s| s.uplink(&id)).await?)
    }

    /// The latest capabilities of the client `reference` names, per device id.
    pub async fn capabilities(
        &self,
        reference: String,
    ) -> FleetResult<BTreeMap<String, serde_json::Value>> {
        let id = self.resolve(reference).await?;
        Ok(self.inner.store.run(move |s| s.capabilities(&id)).await?)
    }

    /// The newest `limit` security events and the count per kind.
    pub async fn audit(
        &self,
        limit: usize,
    ) -> FleetResult<(Vec<AuditEvent>, BTreeMap<String, u64>)> {
        Ok(self.inner.store.run(move |s| s.audit(limit)).await?)
    }

    /// Stores a deployment status `client` delivered over HTTP (validated
    /// by the caller; a stale or replayed one is refused).
    pub async fn record_status_report(
        &self,
        client: &ClientId,
        status: DeploymentStatus,
        adopted_manifest_version: Option<u64>,
    ) -> Result<ReportOutcome, ReportError> {
        let id = client.clone();
        let outcome = self
            .inner
            .store
            .run(move |s| Ok(s.record_http_status(&id, &status, adopted_manifest_version)))
            .await
            .map_err(ReportError::Store)??;
        info!(client_id = %client, ?outcome, "deployment status stored (HTTP)");
        Ok(outcome)
    }

    /// Stores a capabilities report `client` delivered over HTTP (checked
    /// like one over MQTT, [`crate::capabilities`]).
    pub async fn record_capabilities_report(
        &self,
        client: &ClientId,
        manifest: DeviceCapabilitiesManifest,
    ) -> Result<ReportOutcome, ReportError> {
        let device_id = manifest.device_id().unwrap_or_default().to_string();
        let id = client.clone();
        let outcome = self
            .inner
            .store
            .run(move |s| Ok(s.record_http_capabilities(&id, &manifest)))
            .await
            .map_err(ReportError::Store)??;
        info!(client_id = %client, %device_id, ?outcome, "capabilities stored (HTTP)");
        Ok(outcome)
    }

    /// Deletes the capabilities `client` reported for `device`.
    pub async fn delete_capabilities(
        &self,
        client: &ClientId,
        device: &DeviceId,
    ) -> Result<(), ReportError> {
        let (id, target) = (client.clone(), device.clone());
        self.inner
            .store
            .run(move |s| Ok(s.delete_capabilities(&id, &target)))
            .await
            .map_err(ReportError::Store)??;
        info!(client_id = %client, device_id = %device, "capabilities deleted (HTTP)");
        Ok(())
    }
}
