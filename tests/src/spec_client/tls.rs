//! TLS for the spec client: trust only the WFM's CA; present a client
//! certificate when one is given and the server asks for it.

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::Identity;

/// A client configuration (ring, TLS 1.3 and 1.2, ALPN `http/1.1`: "HTTP1.1"
/// in `api-requirements-and-security.md`).
pub fn client_config(ca_pem: &str, client_cert: Option<&Identity>) -> Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| anyhow!("CA PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| anyhow!("CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        bail!("no certificate in the CA PEM");
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow!("TLS versions: {e}"))?
            .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some(id) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from(id.cert_der.clone())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(id.key_pkcs8.clone())),
            )
            .map_err(|e| anyhow!("client certificate: {e}"))?,
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
