//! Enrollment tokens: created by an operator, spent by devices onboarding
//! (one use per approval), listed and revoked. Only a token's hash is
//! stored; its text exists once, in [`CreatedToken`].

use data_encoding::BASE64URL_NOPAD;
use margo_schemas::digest::Digest;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use super::{OnboardingError, Result};
use crate::store::{Store, TokenRecord, WriteTxn};

/// Random bytes in an enrollment token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Random bytes in a token id (shown by `tokens list`, used by `tokens revoke`).
const TOKEN_ID_BYTES: usize = 6;
/// Most uses of one token.
pub const MAX_TOKEN_USES: u32 = 1_000_000;
/// Longest token lifetime (one year).
pub const MAX_TOKEN_TTL_MS: u64 = 366 * 24 * 3600 * 1000;
/// Longest token note.
pub const MAX_NOTE_LEN: usize = 256;
/// Why an enrollment token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenProblem {
    /// Not a token this manager issued (or it was revoked).
    #[error("unknown or revoked")]
    Unknown,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// Every use is spent.
    #[error("used up")]
    UsedUp,
}

/// A token as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    /// Its id.
    pub id: String,
    /// Uses it was created with.
    pub uses: u32,
    /// Uses left.
    pub uses_left: u32,
    /// Expiry (ms since epoch).
    pub expires_at: u64,
    /// Whether it has expired.
    pub expired: bool,
    /// Operator's note.
    pub note: Option<String>,
    /// When created (ms).
    pub created_at: u64,
}

impl TokenView {
    fn new(id: &str, r: &TokenRecord, now: u64) -> Self {
        Self {
            id: id.to_string(),
            uses: r.uses_total,
            uses_left: r.uses_left,
            expires_at: r.expires_ms,
            expired: now >= r.expires_ms,
            note: r.note.clone(),
            created_at: r.created_ms,
        }
    }
}

/// A freshly created token: the only time the token text exists outside the device.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedToken {
    /// The token (URL-safe base64, 256 bits). Shown once; only its hash is stored.
    pub token: String,
    /// Its listing.
    #[serde(flatten)]
    pub view: TokenView,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"<redacted>")
            .field("view", &self.view)
            .finish()
    }
}

/// The hex SHA-256 of an enrollment token, as stored.
fn token_hash(token: &str) -> String {
    Digest::of(token.as_bytes()).hex()
}

fn random(len: usize) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| OnboardingError::Random)?;
    Ok(bytes)
}

/// Uses one use of `token` inside `txn`, or says why it cannot be used.
pub(super) fn spend_token(txn: &WriteTxn<'_>, token: &str, now: u64) -> Result<String> {
    let unknown = OnboardingError::Token(TokenProblem::Unknown);
    let Some(id) = txn.token_id_by_hash(&token_hash(token))? else {
        return Err(unknown);
    };
    let Some(mut record) = txn.token(&id)? else {
        return Err(unknown);
    };
    if now >= record.expires_ms {
        return Err(OnboardingError::Token(TokenProblem::Expired));
    }
    if record.uses_left == 0 {
        return Err(OnboardingError::Token(TokenProblem::UsedUp));
    }
    record.uses_left -= 1;
    txn.put_token(&id, &record)?;
    Ok(id)
}

impl Store {
    /// Creates an enrollment token good for `uses` approvals within `ttl_ms`.
    pub fn token_create(
        &self,
        uses: u32,
        ttl_ms: u64,
        note: Option<String>,
    ) -> Result<CreatedToken> {
        if uses == 0 || uses > MAX_TOKEN_USES {
            return Err(OnboardingError::InvalidToken(format!(
                "uses must be between 1 and {MAX_TOKEN_USES}"
            )));
        }
        if ttl_ms == 0 || ttl_ms > MAX_TOKEN_TTL_MS {
            return Err(OnboardingError::InvalidToken(
                "expiry must be more than 0 and at most 366 days away".into(),
            ));
        }
        if let Some(n) = &note {
            if n.len() > MAX_NOTE_LEN || n.chars().any(char::is_control) {
                return Err(OnboardingError::InvalidToken(format!(
                    "note must be at most {MAX_NOTE_LEN} printable characters"
                )));
            }
        }
        let token = BASE64URL_NOPAD.encode(&random(TOKEN_BYTES)?);
        let id = data_encoding::HEXLOWER.encode(&random(TOKEN_ID_BYTES)?);
        let now = self.clock().now_ms();
        let record = TokenRecord {
            hash: token_hash(&token),
            uses_total: uses,
            uses_left: uses,
            expires_ms: now.saturating_add(ttl_ms),
            note,
            created_ms: now,
        };
        self.write(|txn| {
            if !txn.insert_token(&id, &record)? {
                // 48 random bits colliding: refuse rather than overwrite.
                return Err(OnboardingError::Random);
            }
            Ok(())
        })?;
        Ok(CreatedToken {
            token,
            view: TokenView::new(&id, &record, now),
        })
    }

    /// Every enrollment token (never the token text), oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenView>> {
        let now = self.clock().now_ms();
        let mut out: Vec<TokenView> = self
            .token_records()?
            .iter()
            .map(|(id, record)| TokenView::new(id, record, now))
            .collect();
        out.sort_by_key(|t| t.created_at);
        Ok(out)
    }

    /// Deletes a token; devices presenting it are refused from now on.
    pub fn token_revoke(&self, id: &str) -> Result<TokenView> {
        let now = self.clock().now_ms();
        let record = self.write(|txn| {
            txn.remove_token(id.trim())?
                .ok_or_else(|| OnboardingError::UnknownToken(id.chars().take(40).collect()))
        })?;
        Ok(TokenView::new(id.trim(), &record, now))
    }
}
