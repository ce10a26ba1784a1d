//! Reconcile: bring the applied state in line with the accepted manifest
//! through the runtime adapter, reporting every state change.
//!
//! - Plan ([`plan`]): remove what is no longer listed, install what is new,
//!   update what has a different digest, leave the rest alone.
//! - Each action first writes an *intent* into the applied record (committed),
//!   then reports `installing`/`removing`, then calls the adapter per
//!   component, then records the outcome and reports `installed`, `removed`
//!   or `failed`. A failed action keeps what was running.
//! - Only when every action succeeded is the manifest version recorded as
//!   adopted. Failed passes are retried with doubling backoff; a newer
//!   manifest supersedes a pass (between actions) or a pending retry at once.
//! - After a restart, anything with an intent is planned again, so an
//!   interrupted action is redone while completed, recorded ones are not.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use margo_schemas::deployment::{ApplicationDeployment, Component};
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::StateManifest;
use margo_schemas::messages::{Message, ScheduleInForce, StateReport, StatusReport};
use margo_schemas::status::{ComponentStatus, DeploymentState, DeploymentStatus, StatusError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, instrument, warn};

use crate::clock::Clock;
use crate::outbox::{OutboxError, Uplink};
use crate::runtime::{ApplyKind, Runtime};
use crate::schedule_plan::ScheduleRx;
use crate::snapshot::{AgentSnapshot, ConnectionStatus, DeploymentView, Snapshots};
use crate::stats::AgentStats;
use crate::store::{
    AcceptedManifest, Action, AppliedRecord, Intent, RetryState, Store, StoreError,
};

/// Status error code: a referenced document is not in the cache.
pub const CODE_CONTENT_MISSING: &str = "CONTENT_MISSING";
/// Status error code: the document has the listed digest but the agent
/// cannot use it (unknown `apiVersion`, unparseable YAML, ...); the error's
/// `source` is the digest.
pub const CODE_DEPLOYMENT_REFUSED: &str = "DEPLOYMENT_REFUSED";
/// How long unreferenced cached documents are kept (they may belong to a manifest still on its way).
const CACHE_GRACE: Duration = Duration::from_secs(3600);

/// Why a reconcile pass could not run to a verdict.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl ReconcileError {
    /// Whether the store refused a write (full, read-only): the pass is
    /// retried, and the store logged it once.
    pub fn is_storage_failure(&self) -> bool {
        match self {
            Self::Store(e) | Self::Outbox(OutboxError::Store(e)) => e.is_unavailable(),
            Self::Outbox(_) => false,
        }
    }
}

/// One planned action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub id: DeploymentId,
    pub action: Action,
    /// The digest to install (install/update).
    pub target: Option<Digest>,
    /// The digest running now (update/remove), or the one an interrupted install was installing.
    pub previous: Option<Digest>,
}

/// The actions that take `applied` to `manifest`: removals first, then
/// installs and updates in manifest order.
pub fn plan(
    manifest: &StateManifest,
    applied: &BTreeMap<DeploymentId, AppliedRecord>,
) -> Vec<Step> {
    let listed: BTreeSet<&DeploymentId> = manifest
        .deployments
        .iter()
        .map(|d| &d.deployment_id)
        .collect();
    let mut steps = Vec::new();
    for (id, record) in applied {
        if listed.contains(id) {
            continue;
        }
        let previous = record
            .running
            .or_else(|| record.intent.as_ref().and_then(|i| i.target));
        steps.push(Step {
            id: id.clone(),
            action: Action::Remove,
            target: None,
            previous,
        });
    }
    for r in &manifest.deployments {
        let step = match applied.get(&r.deployment_id) {
            None => Some(Action::Install),
            Some(rec) => {
                let settled = rec.running == Some(r.digest)
                    && rec.intent.is_none()
                    && rec.state == DeploymentState::Installed;
                if settled {
                    None
                } else if rec.running.is_some() {
                    Some(Action::Update)
                } else {
                    Some(Action::Install)
                }
            }
        };
        if let Some(action) = step {
            steps.push(Step {
                id: r.deployment_id.clone(),
                action,
                target: Some(r.digest),
                previous: applied.get(&r.deployment_id).and_then(|rec| rec.running),
            });
        }
    }
    steps
}

/// The agent's `state` report from the store, naming the schedule in force.
pub fn state_report(
    store: &Store,
    schedule: Option<ScheduleInForce>,
) -> Result<StateReport, StoreError> {
    let applied = store.applied()?;
    Ok(StateReport {
        adopted_manifest_version: store.adopted_version()?,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        deployments: applied
            .iter()
            .filter(|(_, r)| r.running.is_some())
            .map(|(id, _)| id.clone())
            .collect(),
        schedule,
    })
}

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassOutcome {
    /// Every action succeeded; the version is recorded as adopted.
    Adopted(u64),
    /// Some actions failed; the version stays unadopted.
    Failed { version: u64, failures: usize },
    /// A newer manifest arrived; the pass stopped between actions.
    Superseded,
}

/// Everything a pass needs.
#[derive(Debug, Clone)]
pub struct ReconcileContext {
    pub client: ClientId,
    pub store: Store,
    pub runtime: Arc<dyn Runtime>,
    pub uplink: Uplink,
    pub clock: Arc<dyn Clock>,
    pub stats: Arc<AgentStats>,
    pub snapshots: Snapshots,
    /// The schedule in force, for state reports.
    pub schedule: ScheduleRx,
}

/// The result of running one component action list.
struct ActionResult {
    components: Vec<ComponentStatus>,
    error: Option<StatusError>,
}

fn components_in(
    doc: Option<&ApplicationDeployment>,
    state: DeploymentState,
) -> Vec<ComponentStatus> {
    doc.map(|d| {
        d.components
            .iter()
            .map(|c| ComponentStatus {
                name: c.name.clone(),
                state,
                error: None,
            })
            .collect()
    })
    .unwrap_or_default()
}

impl ReconcileContext {
    /// Runs one pass over `target`. `superseded` is checked between actions.
    #[instrument(skip_all, fields(client_id = %self.client, manifest_version = target.version()))]
    pub async fn pass(
        &self,
        target: &AcceptedManifest,
        superseded: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<PassOutcome, ReconcileError> {
        let version = target.version();
        let applied = self.store.applied()?;
        let steps = plan(&target.manifest, &applied);
        if !steps.is_empty() {
            info!(steps = steps.len(), "reconciling");
        }
        let mut failures = 0;
        for step in steps {
            if superseded() {
                info!("superseded by a newer manifest");
                return Ok(PassOutcome::Superseded);
            }
            let ok = match step.action {
                Action::Remove => self.remove(&step, version).await?,
                Action::Install | Action::Update => self.install(&step, version).await?,
            };
            if !ok {
                failures += 1;
            }
        }
        if failures > 0 {
            warn!(failures, "manifest not adopted: some actions failed");
            self.report_state()?;
            return Ok(PassOutcome::Failed { version, failures });
        }
        let first_time = self.store.adopted_version()? < version;
        self.store.set_adopted(version)?;
        self.snapshots
            .update(|s| s.adopted_manifest_version = version);
        if first_time {
            info!("manifest adopted");
        }
        self.collect_garbage(target)?;
        self.report_state()?;
        Ok(PassOutcome::Adopted(version))
    }

    /// Enqueues a `state` report.
    pub fn report_state(&self) -> Result<Option<u64>, ReconcileError> {
        let report = state_report(&self.store, crate::schedule_plan::reported(&self.schedule))?;
        Ok(self.uplink.post(Message::State(report))?)
    }

    fn collect_garbage(&self, target: &AcceptedManifest) -> Result<(), ReconcileError> {
        let mut keep: BTreeSet<Digest> = target
            .manifest
            .deployments
            .iter()
            .map(|d| d.digest)
            .collect();
        for record in self.store.applied()?.values() {
            keep.extend(record.running);
        }
        let cutoff = self
            .clock
            .unix_ms()
            .saturating_sub(u64::try_from(CACHE_GRACE.as_millis()).unwrap_or(u64::MAX));
        let removed = self.store.cache_gc(&keep, cutoff)?;
        if removed > 0 {
            debug!(removed, "dropped unreferenced cached documents");
        }
        Ok(())
    }

    fn record(&self, id: &DeploymentId, record: &AppliedRecord) -> Result<(), ReconcileError> {
        self.store.put_applied(id, record)?;
        let view = DeploymentView {
            state: record.state,
            running: record.running,
            error: record.error.as_ref().map(|e| e.message.clone()),
        };
        self.snapshots.update(|s| {
            s.deployments.insert(id.to_string(), view);
        });
        Ok(())
    }

    fn status(
        &self,
        id: &DeploymentId,
        version: u64,
        components: Vec<ComponentStatus>,
        error: Option<StatusError>,
    ) -> Result<(), ReconcileError> {
        let mut status = DeploymentStatus::new(id.clone(), components, error);
        if status.components.is_empty() && status.status.error.is_some() {
            // Nothing to derive the state from (e.g. a document that could not
            // be used): an error with no components is a failure, not "pending".
            status.status.state = DeploymentState::Failed;
        }
        let state = status.status.state;
        let seq = self.uplink.post(Message::Status(StatusReport {
            adopted_manifest_version: version,
            status,
        }))?;
        debug!(deployment_id = %id, ?seq, %state, "status enqueued");
        Ok(())
    }

    fn doc(&self, digest: Option<Digest>) -> Result<Option<ApplicationDeployment>, ReconcileError> {
        match digest {
            Some(d) => Ok(self.store.cache_get(&d)?),
            None => Ok(None),
        }
    }

    /// Installs or updates one deployment. Returns whether it succeeded.
    #[instrument(skip_all, fields(deployment_id = %step.id, action = step.action.as_str()))]
    async fn install(&self, step: &Step, version: u64) -> Result<bool, ReconcileError> {
        let previous_doc = self.doc(step.previous)?;
        let Some(doc) = self.doc(step.target)? else {
            if let Some(target) = step.target {
                if let Some(refused) = self.store.refused_get(&target)? {
                    // Fails alone, reported once per digest: a retry pass
                    // (for other deployments) does not report it again.
                    let reported = self.store.applied_get(&step.id)?.is_some_and(|r| {
                        r.state == DeploymentState::Failed
                            && r.error.as_ref().is_some_and(|e| {
                                e.code == CODE_DEPLOYMENT_REFUSED && e.source == target.to_string()
                            })
                    });
                    if reported {
                        return Ok(false);
                    }
                    let error = StatusError::new(
                        CODE_DEPLOYMENT_REFUSED,
                        target.to_string(),
                        format!(
                            "the deployment document {target} cannot be used: {}",
                            refused.reason
                        ),
                    );
                    return self.fail(step, version, &previous_doc, None, Vec::new(), error);
                }
            }
            let error = StatusError::new(
                CODE_CONTENT_MISSING,
                step.id.as_str(),
                format!("document {:?} is not in the cache", step.target),
            );
            return self.fail(step, version, &previous_doc, None, Vec::new(), error);
        };
        if let Err(e) = self.runtime.check_profile(doc.profile) {
            // Unsupported profile or missing tool: every component fails with the reason.
            let error = StatusError::new(e.code(), doc.name.as_str(), e.to_string());
            let comps = doc
                .components
                .iter()
                .map(|c| ComponentStatus {
                    name: c.name.clone(),
                    state: DeploymentState::Failed,
                    error: Some(StatusError::new(e.code(), c.name.as_str(), e.to_string())),
                })
                .collect();
            return self.fail(step, version, &previous_doc, Some(&doc), comps, error);
        }
        self.record(
            &step.id,
            &AppliedRecord {
                running: step.previous,
                state: DeploymentState::Installing,
                intent: Some(Intent {
                    action: step.action,
                    target: step.target,
                    manifest_version: version,
                }),
                error: None,
            },
        )?;
        self.status(
            &step.id,
            version,
            components_in(Some(&doc), DeploymentState::Installing),
            None,
        )?;

        let result = self.apply_components(&doc, previous_doc.as_ref()).await;
        match result.error {
            None => {
                self.record(
                    &step.id,
                    &AppliedRecord {
                        running: Some(doc.digest()),
                        state: DeploymentState::Installed,
                        intent: None,
                        error: None,
                    },
                )?;
                self.status(&step.id, version, result.components, None)?;
                info!("installed");
                Ok(true)
            }
            Some(error) => self.fail(
                step,
                version,
                &previous_doc,
                Some(&doc),
                result.components,
                error,
            ),
        }
    }

    async fn apply_components(
        &self,
        doc: &ApplicationDeployment,
        previous: Option<&ApplicationDeployment>,
    ) -> ActionResult {
        let mut components = Vec::with_capacity(doc.components.len());
        // Components dropped by an update go first.
        if let Some(prev) = previous {
            for gone in prev
                .components
                .iter()
                .filter(|c| !doc.components.iter().any(|n| n.name == c.name))
            {
                if let Err(e) = self.runtime.remove(prev, gone).await {
                    return self.component_failure(
                        doc,
                        components,
                        gone,
                        DeploymentState::Pending,
                        &e,
                    );
                }
            }
        }
        for component in &doc.components {
            let kind = match previous {
                Some(prev) if prev.components.iter().any(|c| c.name == component.name) => {
                    ApplyKind::Update
                }
                _ => ApplyKind::Install,
            };
            match self.runtime.apply(doc, component, kind).await {
                Ok(()) => components.push(ComponentStatus {
                    name: component.name.clone(),
                    state: DeploymentState::Installed,
                    error: None,
                }),
                Err(e) => {
                    return self.component_failure(
                        doc,
                        components,
                        component,
                        DeploymentState::Pending,
                        &e,
                    )
                }
            }
        }
        ActionResult {
            components,
            error: None,
        }
    }

    /// The component list after `failed` failed: finished ones as given,
    /// the failing one `failed`, the untried rest in `rest_state`.
    fn component_failure(
        &self,
        doc: &ApplicationDeployment,
        done: Vec<ComponentStatus>,
        failed: &Component,
        rest_state: DeploymentState,
        e: &crate::runtime::RuntimeError,
    ) -> ActionResult {
        AgentStats::bump(&self.stats.apply_failures);
        warn!(component = %failed.name, error = %e, "component action failed");
        let comp_error = StatusError::new(e.code(), failed.name.as_str(), e.to_string());
        let overall = StatusError::new(
            e.code(),
            doc.name.as_str(),
            format!("component {} failed: {e}", failed.name),
        );
        let mut components: Vec<ComponentStatus> = doc
            .components
            .iter()
            .map(|c| {
                if let Some(d) = done.iter().find(|d| d.name == c.name) {
                    d.clone()
                } else if c.name == failed.name {
                    ComponentStatus {
                        name: c.name.clone(),
                        state: DeploymentState::Failed,
                        error: Some(comp_error.clone()),
                    }
                } else {
                    ComponentStatus {
                        name: c.name.clone(),
                        state: rest_state,
                        error: None,
                    }
                }
            })
            .collect();
        // A component dropped by an update failed to go: blame the first untried one.
        if !components
            .iter()
            .any(|c| c.state == DeploymentState::Failed)
        {
            if let Some(first) = components.iter_mut().find(|c| c.state == rest_state) {
                first.state = DeploymentState::Failed;
                first.error = Some(comp_error);
            }
        }
        ActionResult {
            components,
            error: Some(overall),
        }
    }

    /// Records and reports a failed action; what was running stays recorded.
    fn fail(
        &self,
        step: &Step,
        version: u64,
        previous_doc: &Option<ApplicationDeployment>,
        doc: Option<&ApplicationDeployment>,
        mut components: Vec<ComponentStatus>,
        error: StatusError,
    ) -> Result<bool, ReconcileError> {
        if components.is_empty() {
            components = components_in(doc.or(previous_doc.as_ref()), DeploymentState::Failed);
            for c in &mut components {
                c.error = Some(error.clone());
            }
        }
        let running = if step.action == Action::Remove {
            step.previous
        } else {
            previous_doc.as_ref().map(|d| d.digest())
        };
        self.record(
            &step.id,
            &AppliedRecord {
                running,
                state: DeploymentState::Failed,
                intent: None,
                error: Some(error.clone()),
            },
        )?;
        warn!(code = %error.code, message = %error.message, "action failed");
        self.status(&step.id, version, components, Some(error))?;
        Ok(false)
    }

    /// Removes one deployment. Returns whether it succeeded.
    #[instrument(skip_all, fields(deployment_id = %step.id, action = "remove"))]
    async fn remove(&self, step: &Step, version: u64) -> Result<bool, ReconcileError> {
        let Some(doc) = self.doc(step.previous)? else {
            // Nothing known to be running (e.g. an install that never started): forget it.
            self.store.remove_applied(&step.id)?;
            self.snapshots.update(|s| {
                s.deployments.remove(step.id.as_str());
            });
            return Ok(true);
        };
        self.record(
            &step.id,
            &AppliedRecord {
                running: step.previous,
                state: DeploymentState::Removing,
                intent: Some(Intent {
                    action: Action::Remove,
                    target: None,
                    manifest_version: version,
                }),
                error: None,
            },
        )?;
        self.status(
            &step.id,
            version,
            components_in(Some(&doc), DeploymentState::Removing),
            None,
        )?;
        let mut removed = Vec::new();
        for component in &doc.components {
            if let Err(e) = self.runtime.remove(&doc, component).await {
                let mut result = self.component_failure(
                    &doc,
                    removed,
                    component,
                    DeploymentState::Installed,
                    &e,
                );
                let error = result.error.take().unwrap_or_else(|| {
                    StatusError::new(e.code(), doc.name.as_str(), e.to_string())
                });
                let previous = Some(doc.clone());
                return self.fail(
                    step,
                    version,
                    &previous,
                    Some(&doc),
                    result.components,
                    error,
                );
            }
            removed.push(ComponentStatus {
                name: component.name.clone(),
                state: DeploymentState::Removed,
                error: None,
            });
        }
        self.store.remove_applied(&step.id)?;
        self.snapshots.update(|s| {
            s.deployments.remove(step.id.as_str());
        });
        self.status(
            &step.id,
            version,
            components_in(Some(&doc), DeploymentState::Removed),
            None,
        )?;
        info!("removed");
        Ok(true)
    }
}

/// Retry delays for failed passes: `first`, doubling, capped at `max`.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    /// The delay after the `attempts`-th consecutive failure (1-based).
    pub fn delay(&self, attempts: u32) -> Duration {
        let shift = attempts.saturating_sub(1).min(31);
        self.first.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// The reconcile task: runs passes over the newest accepted manifest,
/// retries failures, and reports.
pub struct Reconciler {
    ctx: ReconcileContext,
    targets: watch::Receiver<Option<Arc<AcceptedManifest>>>,
    retry: RetryPolicy,
}

impl Reconciler {
    /// `targets` carries the newest accepted manifest (the initial value is
    /// the one found in the store at start).
    pub fn new(
        ctx: ReconcileContext,
        targets: watch::Receiver<Option<Arc<AcceptedManifest>>>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            ctx,
            targets,
            retry,
        }
    }

    /// Runs until `shutdown`. A shutdown during an adapter call abandons
    /// it; its intent stays recorded and is redone on the next start.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), ReconcileError> {
        let ctx = self.ctx.clone();
        let mut target = self.targets.borrow_and_update().clone();
        let mut next_pass: Option<Instant> = self.initial_pass(target.as_deref())?;
        let mut snapshots = ctx.snapshots.subscribe();
        loop {
            if let (Some(when), Some(t)) = (next_pass, target.clone()) {
                if when <= ctx.clock.now() {
                    if is_revoked(&snapshots.borrow_and_update()) {
                        // A revoked device applies nothing until the gateway accepts it again.
                        info!(client_id = %ctx.client, manifest_version = t.version(), "apply held: this device's certificate is revoked");
                        tokio::select! {
                            () = shutdown.cancelled() => return Ok(()),
                            () = wait_until_not_revoked(&mut snapshots) => {}
                        }
                        continue;
                    }
                    let targets = self.targets.clone();
                    let superseded = move || targets.has_changed().unwrap_or(false);
                    let outcome = tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        outcome = ctx.pass(&t, &superseded) => outcome,
                    };
                    next_pass = self.after_pass(t.version(), outcome)?;
                    continue;
                }
            }
            let wake = next_pass;
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = self.targets.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    target = self.targets.borrow_and_update().clone();
                    next_pass = Some(ctx.clock.now());
                }
                () = sleep_opt(&ctx.clock, wake) => {
                    AgentStats::bump(&ctx.stats.retries);
                    info!(client_id = %ctx.client, "retrying the failed manifest");
                }
            }
        }
    }

    fn initial_pass(
        &self,
        target: Option<&AcceptedManifest>,
    ) -> Result<Option<Instant>, ReconcileError> {
        let ctx = &self.ctx;
        let Some(target) = target else {
            return Ok(None);
        };
        let applied = ctx.store.applied()?;
        let interrupted: Vec<_> = applied.iter().filter(|(_, r)| r.intent.is_some()).collect();
        for (id, record) in &interrupted {
            if let Some(intent) = &record.intent {
                warn!(
                    client_id = %ctx.client,
                    deployment_id = %id,
                    action = intent.action.as_str(),
                    manifest_version = intent.manifest_version,
                    "action was interrupted (restart mid-apply); redoing it"
                );
            }
        }
        let adopted = ctx.store.adopted_version()?;
        if !interrupted.is_empty() || target.version() > adopted {
            if interrupted.is_empty() {
                if let Some(retry) = ctx.store.retry_state()? {
                    if retry.manifest_version == target.version() {
                        let due = retry.failed_at_ms + millis(self.retry.delay(retry.attempts));
                        let wait = due.saturating_sub(ctx.clock.unix_ms());
                        return Ok(Some(ctx.clock.now() + Duration::from_millis(wait)));
                    }
                }
            }
            return Ok(Some(ctx.clock.now()));
        }
        Ok(None)
    }

    fn after_pass(
        &self,
        version: u64,
        outcome: Result<PassOutcome, ReconcileError>,
    ) -> Result<Option<Instant>, ReconcileError> {
        let ctx = &self.ctx;
        match outcome {
            Ok(PassOutcome::Adopted(_) | PassOutcome::Superseded) => return Ok(None),
            Ok(PassOutcome::Failed { .. }) => {}
            Err(e) if e.is_storage_failure() => {
                // Logged once by the store; the pass is retried like a failed one.
                debug!(client_id = %ctx.client, manifest_version = version, error = %e, "reconcile pass failed");
            }
            Err(e) => {
                error!(client_id = %ctx.client, manifest_version = version, error = %e, "reconcile pass failed");
            }
        }
        let attempts = match ctx.store.retry_state()? {
            Some(r) if r.manifest_version == version => r.attempts.saturating_add(1),
            _ => 1,
        };
        let retry = RetryState {
            manifest_version: version,
            attempts,
            failed_at_ms: ctx.clock.unix_ms(),
        };
        match ctx.store.set_retry_state(Some(&retry)) {
            // A store that refuses writes does not stop the agent: the retry
            // is scheduled from memory (a restart meanwhile retries at once).
            Err(e) if e.is_unavailable() => {
                debug!(client_id = %ctx.client, error = %e, "retry bookkeeping not stored");
            }
            other => other?,
        }
        let delay = self.retry.delay(attempts);
        info!(client_id = %ctx.client, manifest_version = version, attempts, ?delay, "will retry");
        Ok(Some(ctx.clock.now() + delay))
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_opt(clock: &Arc<dyn Clock>, when: Option<Instant>) {
    match when {
        Some(when) => clock.sleep_until(when).await,
        None => std::future::pending().await,
    }
}

fn is_revoked(snapshot: &AgentSnapshot) -> bool {
    snapshot.connection == ConnectionStatus::Revoked
}

/// Completes once the snapshot no longer says revoked.
async fn wait_until_not_revoked(snapshots: &mut watch::Receiver<AgentSnapshot>) {
    loop {
        if snapshots.changed().await.is_err() {
            // The agent is going away; shutdown ends the wait.
            std::future::pending::<()>().await;
        }
        if !is_revoked(&snapshots.borrow_and_update()) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use margo_schemas::manifest::DeploymentRef;

    fn id(s: &str) -> DeploymentId {
        DeploymentId::new(s).unwrap()
    }

    fn manifest(entries: &[(&str, &[u8])]) -> StateManifest {
        StateManifest {
            manifest_version: 2,
            bundle: None,
            deployments: entries
                .iter()
                .map(|(i, content)| DeploymentRef {
                    deployment_id: id(i),
                    digest: Digest::of(content),
                    size_bytes: None,
                    url: None,
                })
                .collect(),
        }
    }

    fn rec(content: Option<&[u8]>, state: DeploymentState) -> AppliedRecord {
        AppliedRecord {
            running: content.map(Digest::of),
            state,
            intent: None,
            error: None,
        }
    }

    #[test]
    fn plan_diffs_install_update_remove_and_leaves_unchanged() {
        let m = manifest(&[("new", b"n"), ("same", b"s"), ("changed", b"c2")]);
        let applied = BTreeMap::from([
            (id("same"), rec(Some(b"s"), DeploymentState::Installed)),
            (id("changed"), rec(Some(b"c1"), DeploymentState::Installed)),
            (id("gone"), rec(Some(b"g"), DeploymentState::Installed)),
        ]);
        let steps = plan(&m, &applied);
        let summary: Vec<_> = steps.iter().map(|s| (s.id.as_str(), s.action)).collect();
        assert_eq!(
            summary,
            vec![
                ("gone", Action::Remove),
                ("new", Action::Install),
                ("changed", Action::Update)
            ]
        );
        assert_eq!(steps[2].previous, Some(Digest::of(b"c1")));
        assert_eq!(steps[2].target, Some(Digest::of(b"c2")));
    }

    #[test]
    fn plan_redoes_interrupted_and_failed() {
        let m = manifest(&[("a", b"a"), ("b", b"b2"), ("c", b"c")]);
        let mut interrupted = rec(Some(b"a"), DeploymentState::Installed);
        interrupted.intent = Some(Intent {
            action: Action::Update,
            target: Some(Digest::of(b"x")),
            manifest_version: 1,
        });
        let applied = BTreeMap::from([
            (id("a"), interrupted),
            // A failed update kept the old version running.
            (id("b"), rec(Some(b"b1"), DeploymentState::Failed)),
            // A failed install has nothing running.
            (id("c"), rec(None, DeploymentState::Failed)),
        ]);
        let summary: Vec<_> = plan(&m, &applied)
            .iter()
            .map(|s| (s.id.to_string(), s.action))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a".to_string(), Action::Update),
                ("b".to_string(), Action::Update),
                ("c".to_string(), Action::Install)
            ]
        );
    }

    #[test]
    fn retry_delay_doubles_and_caps() {
        let p = RetryPolicy {
            first: Duration::from_secs(300),
            max: Duration::from_secs(3600),
        };
        let secs: Vec<_> = (1..=6).map(|a| p.delay(a).as_secs()).collect();
        assert_eq!(secs, [300, 600, 1200, 2400, 3600, 3600]);
    }
}
