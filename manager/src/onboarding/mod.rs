//! Device onboarding state: requests, decisions and enrollment tokens, in
//! the manager's redb store.
//!
//! A request is keyed by its id, the hex SHA-256 fingerprint of the device's
//! self-signed certificate, so re-posting is idempotent. Approval (by an
//! operator, an enrollment token or the allow-list) happens in one write
//! transaction: assign a [`ClientId`], issue the client certificate for the
//! device's own key, add the client exactly as provisioning does, use up the
//! token, and mark the request approved. The HTTP side is `crate::http`;
//! the tables are the store's (`store::onboarding`).

use margo_schemas::ids::ClientId;
use margo_schemas::onboarding::OnboardingState;
use serde::{Deserialize, Serialize};

use crate::ca::{CaError, IssuedCert};
use crate::store::{
    key_id_of_cert, validate_name, ClientEntry, ClientRecord, Store, StoreError, WriteTxn,
    MAX_NAME_LEN,
};
pub use crate::store::{Claims, RequestRecord};

mod housekeeping;
mod tokens;

use tokens::spend_token;
pub use tokens::{
    CreatedToken, TokenProblem, TokenView, MAX_NOTE_LEN, MAX_TOKEN_TTL_MS, MAX_TOKEN_USES,
};

pub use housekeeping::{
    expires_ms, is_expired, source_group, RejectFilter, SourceFilter, DEFAULT_PENDING_TTL,
};

/// Shortest request-id prefix an operator may type.
pub const MIN_ID_PREFIX: usize = 8;
/// Most tries at a unique `name-N` before giving up.
const NAME_SUFFIX_TRIES: u32 = 1000;

/// Why an onboarding operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OnboardingError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Issuing the client certificate failed.
    #[error("issuing the client certificate: {0}")]
    Ca(#[from] CaError),
    /// An operator rejected the request.
    #[error("onboarding request {0} was rejected by an operator")]
    Rejected(String),
    /// The device's key belongs to a revoked client.
    #[error("the device's key belongs to client {0}, which is revoked")]
    Revoked(ClientId),
    /// The enrollment token cannot be used.
    #[error("enrollment token: {0}")]
    Token(TokenProblem),
    /// Too many requests wait for an operator.
    #[error("{max} onboarding requests are already waiting for an operator; try again later")]
    PendingFull {
        /// The configured cap.
        max: usize,
    },
    /// Too many requests from one source network wait for an operator.
    #[error("{max} onboarding requests from {group} are already waiting for an operator; try again later")]
    SourcePendingFull {
        /// The configured cap per source.
        max: usize,
        /// The source network ([`source_group`]).
        group: String,
    },
    /// A bulk reject named no filter and did not say `all`.
    #[error("name the requests to reject: --all, --older-than or --from")]
    NoFilter,
    /// No request with this id (or prefix).
    #[error("no onboarding request {0:?}")]
    UnknownRequest(String),
    /// A prefix matches more than one request.
    #[error("{0:?} matches more than one onboarding request; give more of the id")]
    AmbiguousRequest(String),
    /// The request is already decided the other way.
    #[error("onboarding request {id} is {state}: {hint}")]
    Decided {
        /// The request.
        id: String,
        /// Its state.
        state: &'static str,
        /// What to do instead.
        hint: String,
    },
    /// No token with this id.
    #[error("no enrollment token {0:?}")]
    UnknownToken(String),
    /// Token parameters out of range.
    #[error("{0}")]
    InvalidToken(String),
    /// No suitable unique name could be found.
    #[error("no free name based on {0:?}")]
    NoFreeName(String),
    /// The system random source failed.
    #[error("the system random number generator failed")]
    Random,
}

/// One request as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    /// The request id (hex SHA-256 of the device certificate).
    pub request_id: String,
    /// The same as `sha256:<hex>`.
    pub fingerprint: String,
    /// Its state.
    pub state: OnboardingState,
    /// Claims.
    #[serde(flatten)]
    pub claims: Claims,
    /// Source address of the latest request.
    pub source: String,
    /// First request (ms).
    pub first_seen: u64,
    /// Latest request (ms).
    pub last_seen: u64,
    /// The client, once approved.
    pub client_id: Option<ClientId>,
    /// Who decided.
    pub decided_by: Option<String>,
    /// When decided (ms).
    pub decided_at: Option<u64>,
    /// When a pending request stops waiting unless the device asks again (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl RequestView {
    fn new(id: &str, r: RequestRecord) -> Self {
        let expires_at = (r.state == OnboardingState::Pending).then(|| expires_ms(&r));
        Self {
            expires_at,
            request_id: id.to_string(),
            fingerprint: format!("sha256:{id}"),
            state: r.state,
            claims: r.claims,
            source: r.source,
            first_seen: r.first_seen_ms,
            last_seen: r.last_seen_ms,
            client_id: r.client_id,
            decided_by: r.decided_by,
            decided_at: r.decided_ms,
        }
    }
}

/// A verified onboarding request, ready for a decision.
#[derive(Debug, Clone)]
pub struct Submission {
    /// Hex SHA-256 of `cert_der`.
    pub request_id: String,
    /// The device's self-signed certificate (checked: P-256, not a CA, valid).
    pub cert_der: Vec<u8>,
    /// [`crate::store::key_id`] of its public key.
    pub key_id: String,
    /// What it claims.
    pub claims: Claims,
    /// Enrollment token, if any.
    pub token: Option<String>,
    /// Source address.
    pub source: String,
    /// Whether the fingerprint is in `[onboarding] allow_fingerprints`.
    pub allowlisted: bool,
    /// `[onboarding] approval = "auto"`: approve what nothing else decides.
    pub auto_approve: bool,
    /// `[onboarding] max_pending`.
    pub max_pending: usize,
    /// `[onboarding] max_pending_per_source`: per IPv4 address or IPv6 /64.
    pub max_pending_per_source: usize,
    /// `[onboarding] pending_ttl`: how long a request waits for an
    /// operator after the device's latest request.
    pub pending_ttl_ms: u64,
}

/// An approved request and its client.
#[derive(Debug, Clone)]
pub struct Approved {
    /// The request id.
    pub request_id: String,
    /// The client.
    pub client_id: ClientId,
    /// The client's record (name, issued certificate).
    pub client: ClientRecord,
    /// Who approved.
    pub decided_by: String,
    /// Whether this call approved it (false: approved earlier).
    pub now: bool,
    /// How this answer came about (what the onboarding metrics count).
    pub by: ApprovedBy,
}

/// How an [`Approved`] answer came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovedBy {
    /// Approved before this call; the issued identity is handed out again.
    Earlier,
    /// The device's key belongs to a client already.
    KnownKey,
    /// An enrollment token was spent.
    Token,
    /// The device is on the allow-list.
    Allowlist,
    /// `[onboarding] approval = "auto"`.
    Auto,
    /// An operator approved it.
    Operator,
}

/// The answer to a submission.
#[derive(Debug, Clone)]
pub enum Submitted {
    /// Approved (now or earlier).
    Approved(Approved),
    /// Waiting for an operator.
    Pending {
        /// The request id.
        request_id: String,
        /// Whether this call created it.
        created: bool,
    },
}

/// Where a polled request stands.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// Waiting.
    Pending(RequestRecord),
    /// Approved, with its client.
    Approved(Approved),
    /// Rejected.
    Rejected,
    /// Approved, but the client is revoked since.
    Revoked(ClientId),
}

type Result<T, E = OnboardingError> = std::result::Result<T, E>;

/// The client an approved request names (it must exist).
fn client_record(txn: &WriteTxn<'_>, id: &ClientId) -> Result<ClientRecord> {
    match txn.client(id)? {
        Some(record) => Ok(record),
        None => Err(StoreError::Corrupt {
            table: "onboarding_requests",
            detail: format!("approved request names client {id}, which does not exist"),
        }
        .into()),
    }
}

/// The name an approved device gets: the operator's (must be free), else
/// the claimed one, else `device-<first 8 of clientId>`; the last two get a
/// `-2`, `-3`, ... suffix when taken.
fn choose_name(
    txn: &WriteTxn<'_>,
    operator: Option<&str>,
    claimed: Option<&str>,
    client: &ClientId,
) -> Result<String> {
    let taken = |n: &str| -> Result<bool> { Ok(txn.name_taken(n)?) };
    if let Some(name) = operator {
        validate_name(name)?;
        if taken(name)? {
            return Err(StoreError::NameTaken(name.to_string()).into());
        }
        return Ok(name.to_string());
    }
    let base = claimed
        .map(str::trim)
        .filter(|n| validate_name(n).is_ok())
        .map(str::to_string)
        .unwrap_or_else(|| {
            format!(
                "device-{}",
                &client.as_str()[..8.min(client.as_str().len())]
            )
        });
    if !taken(&base)? {
        return Ok(base);
    }
    for n in 2..NAME_SUFFIX_TRIES {
        let suffix = format!("-{n}");
        let mut stem = base.clone();
        while stem.len() + suffix.len() > MAX_NAME_LEN {
            stem.pop();
        }
        let candidate = format!("{}{suffix}", stem.trim_end());
        if validate_name(&candidate).is_ok() && !taken(&candidate)? {
            return Ok(candidate);
        }
    }
    Err(OnboardingError::NoFreeName(base))
}

/// Approves `record` (id `request_id`) at `now` inside `txn`: new client
/// id, client certificate for the device's key, client record, request
/// marked approved.
fn approve_in(
    txn: &WriteTxn<'_>,
    request_id: &str,
    record: &mut RequestRecord,
    operator_name: Option<&str>,
    (by, decided_by): (ApprovedBy, String),
    now: u64,
    issue: impl FnOnce(&ClientId, &[u8]) -> Result<IssuedCert, CaError>,
) -> Result<Approved> {
    let client_id = ClientId::generate();
    let name = choose_name(
        txn,
        operator_name,
        record.claims.name.as_deref(),
        &client_id,
    )?;
    let issued = issue(&client_id, &record.cert_der)?;
    let client = txn.insert_client(&client_id, &name, &issued.der, now)?;
    mark_approved(txn, request_id, record, &client_id, &decided_by, now)?;
    Ok(Approved {
        request_id: request_id.to_string(),
        client_id,
        client,
        decided_by,
        now: true,
        by,
    })
}

fn mark_approved(
    txn: &WriteTxn<'_>,
    request_id: &str,
    record: &mut RequestRecord,
    client_id: &ClientId,
    decided_by: &str,
    now: u64,
) -> Result<()> {
    txn.bind_certificate(&record.cert_der, client_id)?;
    record.state = OnboardingState::Approved;
    record.client_id = Some(client_id.clone());
    record.decided_by = Some(decided_by.to_string());
    record.decided_ms = Some(now);
    Ok(txn.put_onboarding_request(request_id, record)?)
}

/// Resolves an operator-typed request id: the full id, `sha256:<id>`,
/// or a unique prefix of at least [`MIN_ID_PREFIX`] characters.
fn resolve_request(txn: &WriteTxn<'_>, typed: &str) -> Result<String> {
    let wanted = typed.trim();
    let wanted = wanted
        .strip_prefix("sha256:")
        .unwrap_or(wanted)
        .to_ascii_lowercase();
    let unknown = || OnboardingError::UnknownRequest(typed.chars().take(80).collect());
    if wanted.len() < MIN_ID_PREFIX || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(unknown());
    }
    let mut matches = txn.onboarding_request_ids(&wanted, 2)?;
    if matches.len() > 1 {
        return Err(OnboardingError::AmbiguousRequest(wanted));
    }
    matches.pop().ok_or_else(unknown)
}

impl Store {
    /// Decides a verified onboarding request (`POST /api/v1/onboarding`) in
    /// one write transaction; `issue` issues the client certificate for the
    /// device certificate's key when the request is approved now.
    ///
    /// Order: decided earlier (approved → that identity, rejected → refused),
    /// a key already bound to a client (revoked → refused, live → that
    /// identity), an enrollment token (bad → refused, nothing stored), the
    /// allow-list, else pending (refused when `max_pending` wait already).
    pub fn onboarding_submit(
        &self,
        sub: Submission,
        issue: impl FnOnce(&ClientId, &[u8]) -> Result<IssuedCert, CaError>,
    ) -> Result<Submitted> {
        let now = self.clock().now_ms();
        self.write(|txn| {
            // An expired request is gone: this one starts over.
            let existing = txn
                .onboarding_request(&sub.request_id)?
                .filter(|r| !is_expired(r, now));
            let created = existing.is_none();
            let mut record = match existing {
                Some(r) if r.state == OnboardingState::Rejected => {
                    return Err(OnboardingError::Rejected(sub.request_id));
                }
                Some(mut record) if record.state == OnboardingState::Approved => {
                    let client_id = record.client_id.clone().ok_or(StoreError::Corrupt {
                        table: "onboarding_requests",
                        detail: format!("approved request {} has no client", sub.request_id),
                    })?;
                    let client = client_record(txn, &client_id)?;
                    if client.revoked {
                        return Err(OnboardingError::Revoked(client_id));
                    }
                    record.last_seen_ms = now;
                    record.source = sub.source;
                    txn.put_onboarding_request(&sub.request_id, &record)?;
                    return Ok(Submitted::Approved(Approved {
                        request_id: sub.request_id,
                        client_id,
                        client,
                        decided_by: record.decided_by.unwrap_or_default(),
                        now: false,
                        by: ApprovedBy::Earlier,
                    }));
                }
                Some(pending) => pending,
                None => RequestRecord {
                    state: OnboardingState::Pending,
                    cert_der: sub.cert_der,
                    claims: Claims::default(),
                    source: String::new(),
                    first_seen_ms: now,
                    last_seen_ms: now,
                    client_id: None,
                    decided_by: None,
                    decided_ms: None,
                    expires_ms: None,
                },
            };
            record.claims = sub.claims;
            record.source = sub.source;
            record.last_seen_ms = now;
            record.expires_ms = Some(now.saturating_add(sub.pending_ttl_ms));

            if let Some(ClientEntry { id, record: client }) = txn.client_by_key(&sub.key_id)? {
                if client.revoked {
                    return Err(OnboardingError::Revoked(id));
                }
                // The same device key with a new self-signed certificate: it is
                // already a client, and proved possession of the key.
                mark_approved(txn, &sub.request_id, &mut record, &id, "known key", now)?;
                return Ok(Submitted::Approved(Approved {
                    request_id: sub.request_id,
                    client_id: id,
                    client,
                    decided_by: "known key".into(),
                    now: true,
                    by: ApprovedBy::KnownKey,
                }));
            }
            let decided_by = match &sub.token {
                Some(token) => Some((
                    ApprovedBy::Token,
                    format!("token {}", spend_token(txn, token, now)?),
                )),
                None if sub.allowlisted => Some((ApprovedBy::Allowlist, "allowlist".to_string())),
                None if sub.auto_approve => Some((ApprovedBy::Auto, "auto".to_string())),
                None => None,
            };
            if let Some(decided_by) = decided_by {
                let approved = approve_in(
                    txn,
                    &sub.request_id,
                    &mut record,
                    None,
                    decided_by,
                    now,
                    issue,
                )?;
                return Ok(Submitted::Approved(approved));
            }
            if created {
                let pending = housekeeping::live_pending(txn, now)?;
                if pending.len() >= sub.max_pending {
                    return Err(OnboardingError::PendingFull {
                        max: sub.max_pending,
                    });
                }
                let group = source_group(&record.source);
                let from_group = pending
                    .iter()
                    .filter(|(_, r)| source_group(&r.source) == group)
                    .count();
                if from_group >= sub.max_pending_per_source {
                    return Err(OnboardingError::SourcePendingFull {
                        max: sub.max_pending_per_source,
                        group,
                    });
                }
            }
            txn.put_onboarding_request(&sub.request_id, &record)?;
            Ok(Submitted::Pending {
                request_id: sub.request_id,
                created,
            })
        })
    }

    /// Where request `id` (exact id) stands, for polling devices.
    pub fn onboarding_lookup(&self, id: &str) -> Result<Option<Lookup>> {
        let now = self.clock().now_ms();
        self.read(|txn| {
            let Some(record) = txn.onboarding_request(id)?.filter(|r| !is_expired(r, now)) else {
                return Ok(None);
            };
            Ok(Some(match record.state {
                OnboardingState::Pending => Lookup::Pending(record),
                OnboardingState::Rejected => Lookup::Rejected,
                OnboardingState::Approved => {
                    let client_id = record.client_id.clone().ok_or(StoreError::Corrupt {
                        table: "onboarding_requests",
                        detail: format!("approved request {id} has no client"),
                    })?;
                    let client = match txn.client(&client_id)? {
                        Some(client) => client,
                        None => {
                            return Err(StoreError::UnknownClient(client_id.to_string()).into());
                        }
                    };
                    if client.revoked {
                        Lookup::Revoked(client_id)
                    } else {
                        Lookup::Approved(Approved {
                            request_id: id.to_string(),
                            client_id,
                            client,
                            decided_by: record.decided_by.unwrap_or_default(),
                            now: false,
                            by: ApprovedBy::Earlier,
                        })
                    }
                }
            }))
        })
    }

    /// Every onboarding request, most recently seen first (pending ones
    /// that expired are left out).
    pub fn onboarding_requests(&self) -> Result<Vec<RequestView>> {
        let now = self.clock().now_ms();
        let mut out: Vec<RequestView> = self
            .onboarding_request_records()?
            .into_iter()
            .filter(|(_, record)| !is_expired(record, now))
            .map(|(id, record)| RequestView::new(&id, record))
            .collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.last_seen));
        Ok(out)
    }

    /// An operator approves a request (pending or rejected); `name` overrides
    /// the claimed name. A key that belongs to a client already is not
    /// issued a second identity.
    pub fn onboarding_approve(
        &self,
        typed_id: &str,
        name: Option<&str>,
        issue: impl FnOnce(&ClientId, &[u8]) -> Result<IssuedCert, CaError>,
    ) -> Result<(RequestView, Approved)> {
        let now = self.clock().now_ms();
        self.write(|txn| {
            let id = resolve_request(txn, typed_id)?;
            let mut record = txn
                .onboarding_request(&id)?
                .ok_or_else(|| OnboardingError::UnknownRequest(id.clone()))?;
            if record.state == OnboardingState::Approved {
                return Err(OnboardingError::Decided {
                    id,
                    state: "approved",
                    hint: format!(
                        "it is client {}",
                        record
                            .client_id
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ),
                });
            }
            let known = match key_id_of_cert(&record.cert_der) {
                Some(key) => txn.client_by_key(&key)?,
                None => None,
            };
            let approved = match known {
                Some(ClientEntry {
                    id: client_id,
                    record: client,
                }) => {
                    if client.revoked {
                        return Err(OnboardingError::Revoked(client_id));
                    }
                    mark_approved(txn, &id, &mut record, &client_id, "known key", now)?;
                    Approved {
                        request_id: id.clone(),
                        client_id,
                        client,
                        decided_by: "known key".into(),
                        now: true,
                        by: ApprovedBy::KnownKey,
                    }
                }
                None => approve_in(
                    txn,
                    &id,
                    &mut record,
                    name,
                    (ApprovedBy::Operator, "operator".into()),
                    now,
                    issue,
                )?,
            };
            Ok((RequestView::new(&id, record), approved))
        })
    }

    /// An operator rejects a request (pending; rejecting again is a no-op).
    pub fn onboarding_reject(&self, typed_id: &str) -> Result<RequestView> {
        self.write(|txn| {
            let id = resolve_request(txn, typed_id)?;
            let mut record = txn
                .onboarding_request(&id)?
                .ok_or_else(|| OnboardingError::UnknownRequest(id.clone()))?;
            match record.state {
                OnboardingState::Approved => {
                    return Err(OnboardingError::Decided {
                        id,
                        state: "approved",
                        hint: format!(
                            "revoke client {} instead (margoctl clients revoke)",
                            record
                                .client_id
                                .as_ref()
                                .map(ToString::to_string)
                                .unwrap_or_default()
                        ),
                    });
                }
                OnboardingState::Rejected => {}
                OnboardingState::Pending => {
                    record.state = OnboardingState::Rejected;
                    record.decided_by = Some("operator".into());
                    record.decided_ms = Some(self.clock().now_ms());
                    txn.put_onboarding_request(&id, &record)?;
                }
            }
            Ok(RequestView::new(&id, record))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use margo_schemas::digest::Digest;

    use super::*;
    use crate::clock::ManualClock;

    const T0: u64 = 1_800_000_000_000;
    const TTL: Duration = Duration::from_secs(60);

    fn store(clock: &ManualClock) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open_with_clock(&dir.path().join("m.redb"), clock.clock()).expect("open");
        (dir, store)
    }

    fn submit(store: &Store, device: &str, token: &str) -> Result<Submitted> {
        let sub = Submission {
            request_id: Digest::of(device.as_bytes()).hex(),
            cert_der: device.as_bytes().to_vec(),
            key_id: format!("key-{device}"),
            claims: Claims::default(),
            token: Some(token.to_string()),
            source: "127.0.0.1".into(),
            allowlisted: false,
            auto_approve: false,
            max_pending: 10,
            max_pending_per_source: 10,
            pending_ttl_ms: 3_600_000,
        };
        store.onboarding_submit(sub, |_, der| {
            Ok(IssuedCert {
                pem: String::new(),
                der: der.to_vec(),
            })
        })
    }

    fn expired(store: &Store) -> bool {
        store.tokens().expect("tokens")[0].expired
    }

    #[test]
    fn a_token_is_good_until_its_ttl_and_refused_from_then_on() {
        let clock = ManualClock::starting_at(T0);
        let (_dir, store) = store(&clock);
        let created = store.token_create(5, 60_000, None).expect("token");
        assert_eq!(created.view.created_at, T0);
        assert_eq!(created.view.expires_at, T0 + 60_000);
        assert!(!created.view.expired);

        clock.advance(TTL - Duration::from_millis(1));
        assert!(!expired(&store), "not expired 1 ms before its TTL");
        let Submitted::Approved(approved) = submit(&store, "a", &created.token).expect("a") else {
            panic!("a token approves at once");
        };
        assert_eq!(approved.decided_by, format!("token {}", created.view.id));
        assert_eq!(
            approved.client.created_ms,
            T0 + 59_999,
            "stamped by the clock"
        );

        clock.advance(Duration::from_millis(1));
        assert!(expired(&store), "expired exactly at its TTL");
        assert!(matches!(
            submit(&store, "b", &created.token),
            Err(OnboardingError::Token(TokenProblem::Expired))
        ));
        assert_eq!(store.tokens().expect("tokens")[0].uses_left, 4, "not spent");
        assert_eq!(
            store.onboarding_requests().expect("list").len(),
            1,
            "a refused token leaves no request"
        );

        // A clock set back makes it good again: expiry is a comparison with now.
        clock.set_unix_ms(T0);
        assert!(!expired(&store));
    }

    #[test]
    fn onboarding_requests_are_stamped_by_the_store_clock() {
        let clock = ManualClock::starting_at(T0);
        let (_dir, store) = store(&clock);
        let sub = |device: &str| Submission {
            request_id: Digest::of(device.as_bytes()).hex(),
            cert_der: device.as_bytes().to_vec(),
            key_id: format!("key-{device}"),
            claims: Claims::default(),
            token: None,
            source: "127.0.0.1".into(),
            allowlisted: false,
            auto_approve: false,
            max_pending: 10,
            max_pending_per_source: 10,
            pending_ttl_ms: 3_600_000,
        };
        let no_cert = |_: &ClientId, _: &[u8]| -> Result<IssuedCert, CaError> {
            unreachable!("pending requests issue nothing")
        };
        store.onboarding_submit(sub("p"), no_cert).expect("pending");
        clock.advance(Duration::from_secs(30));
        store.onboarding_submit(sub("p"), no_cert).expect("again");
        let listed = store.onboarding_requests().expect("list");
        assert_eq!(
            (listed[0].first_seen, listed[0].last_seen),
            (T0, T0 + 30_000)
        );
        clock.advance(Duration::from_secs(30));
        let rejected = store
            .onboarding_reject(&listed[0].request_id)
            .expect("reject");
        assert_eq!(rejected.decided_at, Some(T0 + 60_000));
    }
}
