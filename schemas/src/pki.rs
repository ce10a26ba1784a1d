//! Keys and certificates: PEM parsing, certificate facts, and TLS client
//! configuration. Parsing only; callers read the files.

use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::digest::Digest;

/// Why key or certificate material was rejected.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("no PEM certificate found in {what}")]
    NoCertificate { what: String },
    #[error("no PEM private key found in {what}")]
    NoKey { what: String },
    #[error("bad PEM in {what}: {detail}")]
    BadPem { what: String, detail: String },
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("certificate has no subject common name")]
    NoCommonName,
    #[error("certificate key is not an ECDSA P-256 key")]
    NotP256,
    #[error("certificate was not issued by the given CA: {0}")]
    NotIssuedBy(String),
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// All certificates in a PEM document, in order.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::BadPem {
            what: what.to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::NoCertificate {
            what: what.to_string(),
        });
    }
    Ok(certs)
}

/// The first private key in a PEM document (PKCS#8, SEC1 or PKCS#1).
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => PkiError::NoKey {
            what: what.to_string(),
        },
        other => PkiError::BadPem {
            what: what.to_string(),
            detail: other.to_string(),
        },
    })
}

/// The PKCS#8 DER of the first PKCS#8 private key in a PEM document.
pub fn pkcs8_from_pem(pem: &[u8], what: &str) -> Result<Vec<u8>, PkiError> {
    PrivatePkcs8KeyDer::from_pem_slice(pem)
        .map(|k| k.secret_pkcs8_der().to_vec())
        .map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => PkiError::NoKey {
                what: what.to_string(),
            },
            other => PkiError::BadPem {
                what: what.to_string(),
                detail: other.to_string(),
            },
        })
}

/// The SHA-256 fingerprint of a certificate's DER bytes (`sha256:<hex>`).
pub fn fingerprint(cert_der: &[u8]) -> Digest {
    Digest::of(cert_der)
}

/// Facts we need from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// Subject common name, if any.
    pub common_name: Option<String>,
    /// Uncompressed SEC1 point of an ECDSA P-256 public key, if the key is one.
    pub p256_public_key: Option<Vec<u8>>,
    /// Validity end, seconds since the Unix epoch.
    pub not_after: i64,
    /// Whether the certificate is a CA.
    pub is_ca: bool,
}

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// Parses a DER certificate into the facts we use.
pub fn cert_info(cert_der: &[u8]) -> Result<CertInfo, PkiError> {
    let (rest, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCertificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let spki = cert.public_key();
    let is_p256 = spki.algorithm.algorithm.to_id_string() == OID_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid.to_id_string() == OID_P256);
    let p256_public_key = is_p256.then(|| spki.subject_public_key.data.to_vec());
    Ok(CertInfo {
        common_name,
        p256_public_key,
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
    })
}

/// Checks that `cert_der` is signed by `ca_der`'s key and names it as issuer.
///
/// Used for certificates that arrive beside the CA (the manager's signing
/// certificate in an identity bundle), so a bundle cannot carry a signing key
/// the fleet CA never vouched for.
pub fn verify_issued_by(cert_der: &[u8], ca_der: &[u8]) -> Result<(), PkiError> {
    let (_, cert) =
        X509Certificate::from_der(cert_der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let (_, ca) =
        X509Certificate::from_der(ca_der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    if cert.issuer() != ca.subject() {
        return Err(PkiError::NotIssuedBy(format!(
            "issuer is {}, the CA is {}",
            cert.issuer(),
            ca.subject()
        )));
    }
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|e| PkiError::NotIssuedBy(e.to_string()))
}

/// The crypto provider every TLS configuration in the project uses (ring).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process-wide rustls provider. Safe to call repeatedly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A TLS 1.3 client configuration that trusts only `ca_pem` and, when given,
/// presents `cert_pem` + `key_pem` as its client certificate. Resumption is on
/// (rustls keeps an in-memory session cache per config: reuse the config).
pub fn client_tls_config(
    ca_pem: &[u8],
    client: Option<(&[u8], &[u8])>,
) -> Result<rustls::ClientConfig, PkiError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs_from_pem(ca_pem, "CA certificate")? {
        roots
            .add(cert)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| PkiError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match client {
        Some((cert_pem, key_pem)) => builder
            .with_client_auth_cert(
                certs_from_pem(cert_pem, "client certificate")?,
                key_from_pem(key_pem, "client key")?,
            )
            .map_err(|e| PkiError::Tls(e.to_string())),
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

    fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
    }

    #[test]
    fn issued_by_checks_the_signature_not_just_the_name() {
        let fleet = ca("fleet");
        let impostor = ca("fleet"); // same name, different key
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "margo-manager-signing");
        let leaf = params
            .signed_by(&KeyPair::generate().unwrap(), &fleet)
            .unwrap();
        assert!(verify_issued_by(leaf.der(), fleet.der()).is_ok());
        assert!(matches!(
            verify_issued_by(leaf.der(), impostor.der()),
            Err(PkiError::NotIssuedBy(_))
        ));
        assert!(verify_issued_by(leaf.der(), ca("other").der()).is_err());
        let info = cert_info(leaf.der()).unwrap();
        assert_eq!(info.common_name.as_deref(), Some("margo-manager-signing"));
        assert!(info.p256_public_key.is_some());
        assert!(!info.is_ca);
    }
}
