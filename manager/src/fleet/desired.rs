//! Desired state: deploy and undeploy (one client or many), remote
//! schedules, and the desired state devices read over HTTP.

use std::collections::BTreeSet;

use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::messages::ScheduleInForce;
use margo_schemas::schedule::ValidSchedule;
use tracing::info;

use super::{Fleet, FleetError, FleetResult};
use crate::status_view;
use crate::store::{DesiredState, RemoteConfig};

/// Which clients a bulk deploy reaches: the named ones and every client
/// whose name starts with the prefix (each once, in that order).
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Client ids or names.
    pub clients: Vec<String>,
    /// A name prefix selecting more clients.
    pub name_prefix: Option<String>,
}

/// What a deploy or undeploy committed for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    /// The client.
    pub client_id: ClientId,
    /// Its manifest version after the call.
    pub manifest_version: u64,
    /// The deployments that changed (empty: an identical re-deploy).
    pub changed: Vec<DeploymentId>,
}

/// A client's remote schedule and the one it reports in force.
#[derive(Debug, Clone)]
pub struct ScheduleState {
    /// The client.
    pub client_id: ClientId,
    /// The remote config as stored and published; `None` if none was ever set.
    pub remote: Option<RemoteConfig>,
    /// The schedule in force per the client's newest `state` report.
    pub in_force: Option<ScheduleInForce>,
}

fn require_documents(docs: &[ApplicationDeployment], what: &str) -> FleetResult<()> {
    if docs.is_empty() {
        return Err(FleetError::Incomplete(format!(
            "{what} must list at least one ApplicationDeployment document"
        )));
    }
    Ok(())
}

impl Fleet {
    /// Adds or updates `docs` for the client `reference` names; if anything
    /// changed, the publisher republishes its manifest and deployments.
    pub async fn deploy(
        &self,
        reference: String,
        docs: Vec<ApplicationDeployment>,
    ) -> FleetResult<Deployed> {
        require_documents(&docs, "the body")?;
        let client = self.resolve(reference).await?;
        let id = client.clone();
        let outcome = self.inner.store.run(move |s| s.deploy(&id, &docs)).await?;
        if !outcome.changed.is_empty() {
            self.inner.downlink.desired_changed(&client, []);
        }
        info!(client_id = %client, manifest_version = outcome.manifest_version, changed = outcome.changed.len(), "deployed");
        Ok(Deployed {
            client_id: client,
            manifest_version: outcome.manifest_version,
            changed: outcome.changed,
        })
    }

    /// Deploys `docs` to every client `targets` selects in one transaction
    /// (all or none), then asks the publisher for each client that changed.
    pub async fn deploy_many(
        &self,
        targets: Targets,
        docs: Vec<ApplicationDeployment>,
    ) -> FleetResult<Vec<Deployed>> {
        require_documents(&docs, "documents")?;
        if targets.clients.is_empty() && targets.name_prefix.is_none() {
            return Err(FleetError::Incomplete(
                "name the clients (clients) or select them by name prefix (namePrefix)".into(),
            ));
        }
        let (ids, outcomes) = self
            .inner
            .store
            .run(move |s| {
                let mut ids = Vec::with_capacity(targets.clients.len());
                let mut seen = BTreeSet::new();
                for c in &targets.clients {
                    let id = s.resolve(c)?;
                    if seen.insert(id.clone()) {
                        ids.push(id);
                    }
                }
                if let Some(prefix) = &targets.name_prefix {
                    for id in s.clients_with_name_prefix(prefix)? {
                        if seen.insert(id.clone()) {
                            ids.push(id);
                        }
                    }
                }
                let outcomes = s.deploy_many(&ids, &docs)?;
                Ok((ids, outcomes))
            })
            .await?;
        let mut changed_clients = 0usize;
        let deployed: Vec<Deployed> = ids
            .into_iter()
            .zip(outcomes)
            .map(|(client_id, outcome)| {
                if !outcome.changed.is_empty() {
                    self.inner.downlink.desired_changed(&client_id, []);
                    changed_clients += 1;
                }
                Deployed {
                    client_id,
                    manifest_version: outcome.manifest_version,
                    changed: outcome.changed,
                }
            })
            .collect();
        info!(
            clients = deployed.len(),
            changed_clients, "deployed to many clients"
        );
        Ok(deployed)
    }

    /// Removes `deployment` from the client `reference` names; the
    /// publisher republishes its manifest and clears the deployment.
    pub async fn undeploy(
        &self,
        reference: String,
        deployment: DeploymentId,
    ) -> FleetResult<Deployed> {
        let client = self.resolve(reference).await?;
        let (c, d) = (client.clone(), deployment.clone());
        let manifest_version = self.inner.store.run(move |s| s.undeploy(&c, &d)).await?;
        self.inner
            .downlink
            .desired_changed(&client, [deployment.clone()]);
        info!(client_id = %client, deployment_id = %deployment, manifest_version, "undeployed");
        Ok(Deployed {
            client_id: client,
            manifest_version,
            changed: vec![deployment],
        })
    }

    async fn schedule_of(&self, client: ClientId) -> FleetResult<ScheduleState> {
        Ok(self
            .inner
            .store
            .run(move |s| {
                let remote = s.remote_config(&client)?;
                let in_force =
                    status_view::client_status(s, &client, s.clock().now_ms())?.schedule_in_force;
                Ok(ScheduleState {
                    client_id: client,
                    remote,
                    in_force,
                })
            })
            .await?)
    }

    /// The remote schedule stored for the client `reference` names and the
    /// one it reports in force.
    pub async fn schedule(&self, reference: String) -> FleetResult<ScheduleState> {
        let client = self.resolve(reference).await?;
        self.schedule_of(client).await
    }

    /// Stores `schedule` (`None` clears it) under the client's next config
    /// version, then asks the publisher for its `R/config`. Returns after
    /// the commit, with what this call committed even if another call has
    /// committed since.
    pub async fn set_schedule(
        &self,
        reference: String,
        schedule: Option<ValidSchedule>,
    ) -> FleetResult<ScheduleState> {
        let client = self.resolve(reference).await?;
        let c = client.clone();
        let config = self
            .inner
            .store
            .run(move |s| s.set_schedule(&c, schedule))
            .await?;
        self.inner.downlink.config_changed(&client);
        info!(
            client_id = %client,
            config_version = config.version,
            remote = config.schedule.is_some(),
            "remote schedule stored"
        );
        let mut state = self.schedule_of(client).await?;
        state.remote = Some(config);
        Ok(state)
    }

    /// The desired state of `client` (what the HTTP API serves it).
    pub async fn desired_state(&self, client: &ClientId) -> FleetResult<DesiredState> {
        let id = client.clone();
        Ok(self.inner.store.run(move |s| s.desired_state(&id)).await?)
    }
}
