//! How the agent signs its HTTP requests (`[http] signature`), in one place:
//! given the method, the full target URI as sent and the body, the header
//! fields that authenticate the request. [`crate::http::HttpsClient`] calls
//! it for every request once the final URI is known, GETs included.
//!
//! - `rfc9421` (default): HTTP Message Signatures as readings R10 give them,
//!   `Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=…;expires=…;keyid="<clientId>";alg="ecdsa-p256-sha256"`
//!   and `Signature: sig1=:<r||s>:`, with `Content-Digest` (sha-256) and the
//!   `content-digest` component only when there is a body.
//! - `x-payload-signature`: Margo's older scheme, `Content-Digest` and
//!   `X-Payload-Signature` over the body (the empty body for GETs).
//!
//! Onboarding uses [`RequestAuth::both`]: the device does not know yet
//! which revision the manager follows, so the onboarding request carries
//! both (their `Content-Digest` is the same sha-256).

use std::time::{SystemTime, UNIX_EPOCH};

use margo_schemas::http_msg_sig::{RequestSigner, CONTENT_DIGEST};
use margo_schemas::http_sig::{PayloadSigner, PAYLOAD_SIGNATURE};
use tracing::warn;

use crate::config::SignatureScheme;

/// Why a signer could not be built.
#[derive(Debug, thiserror::Error)]
#[error("request signing key: {0}")]
pub struct AuthError(String);

/// Signs requests with the device key.
pub struct RequestAuth {
    rfc9421: Option<RequestSigner>,
    payload: Option<PayloadSigner>,
}

impl std::fmt::Debug for RequestAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestAuth")
            .field("rfc9421", &self.rfc9421.is_some())
            .field("x_payload_signature", &self.payload.is_some())
            .finish()
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl RequestAuth {
    /// A signer for `scheme` with the PKCS#8 P-256 key; `keyid` names the
    /// key in RFC 9421 signatures (the client id).
    pub fn new(scheme: SignatureScheme, pkcs8: &[u8], keyid: &str) -> Result<Self, AuthError> {
        Ok(match scheme {
            SignatureScheme::Rfc9421 => Self {
                rfc9421: Some(
                    RequestSigner::from_pkcs8(pkcs8, keyid)
                        .map_err(|e| AuthError(e.to_string()))?,
                ),
                payload: None,
            },
            SignatureScheme::XPayloadSignature => Self {
                rfc9421: None,
                payload: Some(
                    PayloadSigner::from_pkcs8(pkcs8).map_err(|e| AuthError(e.to_string()))?,
                ),
            },
        })
    }

    /// Both schemes at once (onboarding).
    pub fn both(pkcs8: &[u8], keyid: &str) -> Result<Self, AuthError> {
        Ok(Self {
            rfc9421: Some(
                RequestSigner::from_pkcs8(pkcs8, keyid).map_err(|e| AuthError(e.to_string()))?,
            ),
            payload: Some(PayloadSigner::from_pkcs8(pkcs8).map_err(|e| AuthError(e.to_string()))?),
        })
    }

    /// The header fields that sign `method` on `target_uri` (as sent:
    /// `https://host:port/path?query`) with `body` (empty: none).
    pub fn headers(
        &self,
        method: &str,
        target_uri: &str,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        let mut headers: Vec<(&'static str, String)> = Vec::new();
        if let Some(signer) = &self.rfc9421 {
            match signer.sign(method, target_uri, Some(body), unix_now()) {
                Ok(h) => headers.extend(h),
                // The key was checked when the signer was built.
                Err(e) => warn!(error = %e, "could not sign a request (RFC 9421)"),
            }
        }
        if let Some(signer) = &self.payload {
            match signer.headers(body) {
                Ok((digest, signature)) => {
                    if !headers.iter().any(|(n, _)| *n == CONTENT_DIGEST) {
                        headers.push((CONTENT_DIGEST, digest));
                    }
                    headers.push((PAYLOAD_SIGNATURE, signature));
                }
                Err(e) => warn!(error = %e, "could not sign a request (X-Payload-Signature)"),
            }
        }
        headers
    }
}
