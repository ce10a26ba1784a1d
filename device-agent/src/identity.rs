//! The device identity: loaded from the bundle layout of
//! [`margo_schemas::identity`], or built from PEM in memory (fleet simulator).

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
    pub client_id: ClientId,
    pub name: String,
    pub broker_url: String,
    /// Signs every uplink message.
    pub signing_key: Arc<SigningKey>,
    /// Verifies every downlink message.
    pub manager_key: VerifyingKey,
    /// PEM kept for the TLS configuration.
    pub pem: IdentityPem,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("client_id", &self.client_id)
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
        let index: IdentityIndex = toml::from_str(&text).map_err(|e| IdentityError::Index {
            path: index_path.clone(),
            reason: e.to_string(),
        })?;
        if index.version != IDENTITY_VERSION {
            return Err(IdentityError::Index {
                path: index_path,
                reason: format!(
                    "version {} is not supported (expected {IDENTITY_VERSION})",
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
            name: pem.name.clone(),
            broker_url: pem.broker_url.clone(),
            signing_key: Arc::new(signing_key),
            manager_key,
            pem,
        })
    }
}
