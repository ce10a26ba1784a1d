//! The device identity: loaded from the bundle layout of
//! [`margo_schemas::identity`], or built from PEM in memory (fleet simulator).
//!
//! Two kinds ([`IdentityKind`]):
//! - **bundle** (`identity.toml` version 1): what our manager issues (with
//!   the `x-margo-mqtt-extensions` of onboarding, or `margoctl clients add`):
//!   a CA-issued client certificate with CN = clientId, the manager's
//!   signing certificate and a broker URL. Usable by both transports.
//! - **plain** (`identity.toml` version 2): what a plain Margo WFM gives:
//!   the client id it assigned in `201 {"clientId": ...}` (any URL-safe
//!   string, see [`WireClientId`]), the device's own key and the
//!   self-signed certificate it onboarded with, and the WFM's CA. Only the
//!   HTTP transport can use it: there is no broker URL and no manager
//!   signing key, and the id need not be topic-safe. Inside the agent (its
//!   outbox, logs of the MQTT-era code) such an identity runs under a
//!   local [`ClientId`] derived from the assigned id ([`local_client_id`]);
//!   on the wire only the assigned id is used.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use margo_schemas::cose::{CoseError, SigningKey, VerifyingKey};
use margo_schemas::identity::{
    IdentityIndex, CA_FILE, CERT_FILE, IDENTITY_VERSION, INDEX_FILE, KEY_FILE,
    MANAGER_SIGNING_CERT_FILE,
};
use margo_schemas::ids::ClientId;
use margo_schemas::pki::{self, PkiError};

/// Why the identity could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Index { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Pki {
        what: &'static str,
        source: PkiError,
    },
    #[error("{what}: {source}")]
    Key {
        what: &'static str,
        source: CoseError,
    },
    #[error("client certificate CN {found:?} does not match client id {expected}")]
    CommonName { expected: ClientId, found: String },
    #[error("client.key does not belong to client.crt")]
    KeyMismatch,
    #[error("{0}")]
    ClientId(#[from] WireIdError),
}

/// Longest client id accepted from a WFM.
pub const MAX_WIRE_CLIENT_ID: usize = 128;
/// Version of `identity.toml` for a plain Margo identity.
pub const PLAIN_IDENTITY_VERSION: u32 = 2;

/// Why a client id assigned by a WFM is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireIdError {
    #[error("the client id is empty")]
    Empty,
    #[error("the client id is longer than {MAX_WIRE_CLIENT_ID} characters")]
    TooLong,
    #[error(
        "the client id {value:?} has {ch:?}: a Margo client id is a \"URL safe string identifier\" \
         (RFC 3986 unreserved characters A-Z a-z 0-9 - . _ ~, and = as base64 padding)"
    )]
    BadChar { value: String, ch: char },
}

/// The client id as the WFM assigned it and as it goes on the wire (HTTP
/// paths, signature key ids): the onboarding page allows a "base-64 encoded
/// UUID or other URL safe string identifier". Accepted: 1 to 128 RFC 3986
/// unreserved characters or `=`; percent-encoded whenever put in a path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WireClientId(String);

impl WireClientId {
    pub fn new(value: impl Into<String>) -> Result<Self, WireIdError> {
        let value = value.into();
        if value.is_empty() {
            return Err(WireIdError::Empty);
        }
        if value.len() > MAX_WIRE_CLIENT_ID {
            return Err(WireIdError::TooLong);
        }
        if let Some(ch) = value
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~=".contains(*c)))
        {
            return Err(WireIdError::BadChar {
                value: value.chars().take(80).collect(),
                ch,
            });
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as one percent-encoded path segment.
    pub fn path_segment(&self) -> String {
        crate::manager_url::encode_segment(&self.0)
    }
}

impl fmt::Display for WireClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&ClientId> for WireClientId {
    fn from(id: &ClientId) -> Self {
        Self(id.as_str().to_string())
    }
}

/// The local id a plain identity runs under: the assigned id itself when it
/// is already a valid MQTT-era [`ClientId`], else `m` + the first 31 hex
/// digits of its SHA-256 (stable, topic-safe, never sent over HTTP).
pub fn local_client_id(wire: &WireClientId) -> ClientId {
    if let Ok(id) = ClientId::new(wire.as_str()) {
        return id;
    }
    let hex = margo_schemas::digest::Digest::of(wire.as_str().as_bytes()).hex();
    let derived = format!("m{}", &hex[..31]);
    // Lowercase hex with a letter in front is always a valid client id.
    ClientId::new(derived).unwrap_or_else(|_| ClientId::generate())
}

/// Which kind of identity this is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// Issued by margo-mqtt (both transports).
    Bundle,
    /// Assigned by a plain Margo WFM (HTTP transport only).
    Plain,
}

/// `identity.toml` of a plain identity (version 2).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlainIndex {
    /// [`PLAIN_IDENTITY_VERSION`].
    pub version: u32,
    /// The id the WFM assigned, as it assigned it.
    pub client_id: String,
    /// The name the device onboarded with (its certificate CN).
    pub name: String,
    /// The WFM it onboarded with (`https://host:port[/base]`).
    pub manager_url: String,
}

/// Only the version of `identity.toml`, to choose the format.
#[derive(serde::Deserialize)]
struct IndexVersion {
    version: u32,
}

/// PEM material and names of one device.
#[derive(Clone)]
pub struct IdentityPem {
    pub client_id: ClientId,
    /// Bundle name (for logs).
    pub name: String,
    /// Broker URL from the bundle (`mqtts://host:port`).
    pub broker_url: String,
    pub key_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
    pub manager_signing_cert_pem: Vec<u8>,
}

impl fmt::Debug for IdentityPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityPem")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("broker_url", &self.broker_url)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A loaded, checked identity: the signing key matches the certificate, the
/// certificate names the client, and the manager's verifying key is known.
#[derive(Clone)]
pub struct Identity {
    /// The id inside the agent (MQTT topics, outbox, logs); for a plain
    /// identity derived from `wire_id` ([`local_client_id`]).
    pub client_id: ClientId,
    /// The id the manager assigned, as used on the wire (HTTP paths, key ids).
    pub wire_id: WireClientId,
    pub kind: IdentityKind,
    pub name: String,
    /// Broker URL (empty for a plain identity).
    pub broker_url: String,
    /// Signs every uplink message.
    pub signing_key: Arc<SigningKey>,
    /// Verifies every downlink message (none for a plain identity: a
    /// plain Margo WFM signs nothing, and its identity cannot use MQTT).
    pub manager_key: Option<VerifyingKey>,
    /// PEM kept for the TLS configuration.
    pub pem: IdentityPem,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("client_id", &self.client_id)
            .field("wire_id", &self.wire_id)
            .field("kind", &self.kind)
            .field("name", &self.name)
            .field("broker_url", &self.broker_url)
            .finish_non_exhaustive()
    }
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, IdentityError> {
    let path = dir.join(file);
    std::fs::read(&path).map_err(|source| IdentityError::Read { path, source })
}

impl Identity {
    /// Loads the bundle in `dir`.
    pub fn load(dir: &Path) -> Result<Self, IdentityError> {
        let index_path = dir.join(INDEX_FILE);
        let text = String::from_utf8(read(dir, INDEX_FILE)?).map_err(|_| IdentityError::Index {
            path: index_path.clone(),
            reason: "not UTF-8".into(),
        })?;
        let version: IndexVersion = toml::from_str(&text).map_err(|e| IdentityError::Index {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
        if version.version == PLAIN_IDENTITY_VERSION {
            let index: PlainIndex = toml::from_str(&text).map_err(|e| IdentityError::Index {
                path: index_path.clone(),
                reason: e.to_string(),
            })?;
            return Self::from_plain(
                WireClientId::new(index.client_id)?,
                index.name,
                read(dir, KEY_FILE)?,
                read(dir, CERT_FILE)?,
                read(dir, CA_FILE)?,
            );
        }
        let index: IdentityIndex = toml::from_str(&text).map_err(|e| IdentityError::Index {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
        if index.version != IDENTITY_VERSION {
            return Err(IdentityError::Index {
                path: index_path,
                reason: format!(
                    "version {} is not supported (expected {IDENTITY_VERSION} or {PLAIN_IDENTITY_VERSION})",
                    index.version
                ),
            });
        }
        Self::from_pem(IdentityPem {
            client_id: index.client_id,
            name: index.name,
            broker_url: index.broker_url,
            key_pem: read(dir, KEY_FILE)?,
            cert_pem: read(dir, CERT_FILE)?,
            ca_pem: read(dir, CA_FILE)?,
            manager_signing_cert_pem: read(dir, MANAGER_SIGNING_CERT_FILE)?,
        })
    }

    /// Checks and wraps in-memory PEM material.
    pub fn from_pem(pem: IdentityPem) -> Result<Self, IdentityError> {
        let pki_err = |what| move |source| IdentityError::Pki { what, source };
        let pkcs8 = pki::pkcs8_from_pem(&pem.key_pem, KEY_FILE).map_err(pki_err("client.key"))?;
        let signing_key = SigningKey::from_pkcs8(&pkcs8).map_err(|source| IdentityError::Key {
            what: "client.key",
            source,
        })?;
        let cert = pki::certs_from_pem(&pem.cert_pem, CERT_FILE)
            .map_err(pki_err("client.crt"))?
            .into_iter()
            .next()
            .ok_or(IdentityError::Pki {
                what: "client.crt",
                source: PkiError::NoCertificate {
                    what: CERT_FILE.into(),
                },
            })?;
        let info = pki::cert_info(&cert).map_err(pki_err("client.crt"))?;
        let cn = info.common_name.unwrap_or_default();
        if cn != pem.client_id.as_str() {
            return Err(IdentityError::CommonName {
                expected: pem.client_id.clone(),
                found: cn,
            });
        }
        let cert_key =
            VerifyingKey::from_certificate(&cert).map_err(|source| IdentityError::Key {
                what: "client.crt",
                source,
            })?;
        if cert_key != signing_key.public_key() {
            return Err(IdentityError::KeyMismatch);
        }
        let ca = pki::certs_from_pem(&pem.ca_pem, CA_FILE)
            .map_err(pki_err("ca.crt"))?
            .into_iter()
            .next()
            .ok_or(IdentityError::Pki {
                what: "ca.crt",
                source: PkiError::NoCertificate {
                    what: CA_FILE.into(),
                },
            })?;
        let manager_cert =
            pki::certs_from_pem(&pem.manager_signing_cert_pem, MANAGER_SIGNING_CERT_FILE)
                .map_err(pki_err("manager-signing.crt"))?
                .into_iter()
                .next()
                .ok_or(IdentityError::Pki {
                    what: "manager-signing.crt",
                    source: PkiError::NoCertificate {
                        what: MANAGER_SIGNING_CERT_FILE.into(),
                    },
                })?;
        // Downlink is trusted only if the fleet CA vouches for the signing key.
        pki::verify_issued_by(&manager_cert, &ca).map_err(pki_err("manager-signing.crt"))?;
        let manager_key =
            VerifyingKey::from_certificate(&manager_cert).map_err(|source| IdentityError::Key {
                what: "manager-signing.crt",
                source,
            })?;
        Ok(Self {
            client_id: pem.client_id.clone(),
            wire_id: WireClientId::from(&pem.client_id),
            kind: IdentityKind::Bundle,
            name: pem.name.clone(),
            broker_url: pem.broker_url.clone(),
            signing_key: Arc::new(signing_key),
            manager_key: Some(manager_key),
            pem,
        })
    }

    /// A plain Margo identity: the assigned id, the device key, the
    /// certificate it onboarded with (same key), the WFM's CA.
    pub fn from_plain(
        wire_id: WireClientId,
        name: String,
        key_pem: Vec<u8>,
        cert_pem: Vec<u8>,
        ca_pem: Vec<u8>,
    ) -> Result<Self, IdentityError> {
        let pki_err = |what| move |source| IdentityError::Pki { what, source };
        let pkcs8 = pki::pkcs8_from_pem(&key_pem, KEY_FILE).map_err(pki_err("client.key"))?;
        let signing_key = SigningKey::from_pkcs8(&pkcs8).map_err(|source| IdentityError::Key {
            what: "client.key",
            source,
        })?;
        let cert = pki::certs_from_pem(&cert_pem, CERT_FILE)
            .map_err(pki_err("client.crt"))?
            .into_iter()
            .next()
            .ok_or(IdentityError::Pki {
                what: "client.crt",
                source: PkiError::NoCertificate {
                    what: CERT_FILE.into(),
                },
            })?;
        let cert_key =
            VerifyingKey::from_certificate(&cert).map_err(|source| IdentityError::Key {
                what: "client.crt",
                source,
            })?;
        if cert_key != signing_key.public_key() {
            return Err(IdentityError::KeyMismatch);
        }
        pki::certs_from_pem(&ca_pem, CA_FILE).map_err(pki_err("ca.crt"))?;
        let client_id = local_client_id(&wire_id);
        Ok(Self {
            client_id: client_id.clone(),
            wire_id,
            kind: IdentityKind::Plain,
            name: name.clone(),
            broker_url: String::new(),
            signing_key: Arc::new(signing_key),
            manager_key: None,
            pem: IdentityPem {
                client_id,
                name,
                broker_url: String::new(),
                key_pem,
                cert_pem,
                ca_pem,
                manager_signing_cert_pem: Vec::new(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_ids_allow_what_the_onboarding_page_allows() {
        for ok in [
            "a3e2f5dc-912e-494f-8395-52cf3769bc06",
            "o-J1xJEuSU-DlVJs92nAfQ==",
            "abc_~.",
        ] {
            let id = WireClientId::new(ok).unwrap();
            assert_eq!(id.path_segment(), ok.replace('=', "%3D"));
        }
        for bad in ["", "a/b", "a b", "a?b", "é"] {
            assert!(WireClientId::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(WireClientId::new("x".repeat(129)).is_err());
    }

    #[test]
    fn local_ids_are_topic_safe_and_stable() {
        let uuid = WireClientId::new("a3e2f5dc-912e-494f-8395-52cf3769bc06").unwrap();
        let local = local_client_id(&uuid);
        assert_eq!(local, local_client_id(&uuid));
        assert!(ClientId::new(local.as_str()).is_ok());
        assert_eq!(local.as_str().len(), 32);
        let plain = WireClientId::new("abc123").unwrap();
        assert_eq!(local_client_id(&plain).as_str(), "abc123");
    }
}
