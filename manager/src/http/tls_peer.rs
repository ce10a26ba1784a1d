//! The TLS client certificate of an HTTPS request, and which client it is
//! (reading R2 of `docs/http-api.md`; decision 0011).
//!
//! The listener asks every client for a certificate but does not require
//! one (onboarding devices and signing clients have none to offer), and
//! accepts any certificate whose handshake signature verifies, self-signed
//! ones included: [`AnyCertificate`] checks possession of the key, not the
//! issuer. Who the certificate belongs to is decided here, against the
//! store: the client whose registered certificate is exactly that DER (the
//! fleet-CA certificate issued at provisioning or onboarding, or the
//! device's own certificate it onboarded with), see
//! [`crate::store::Store::client_by_certificate`].
//!
//! The leaf is put into each request's extensions as [`PeerCertificate`].

use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::Extensions;
use margo_schemas::digest::Digest;
use margo_schemas::ids::ClientId;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tracing::error;

use super::problem::Refusal;
use super::ApiState;
use crate::store::ClientEntry;

/// The leaf certificate the client presented in the TLS handshake, and its
/// SHA-256 fingerprint.
#[derive(Debug, Clone)]
pub struct PeerCertificate {
    /// DER bytes.
    pub der: Arc<[u8]>,
    /// SHA-256 of `der`.
    pub fingerprint: Digest,
}

impl PeerCertificate {
    /// The peer certificate of a finished server handshake, if one was presented.
    pub fn of(connection: &rustls::ServerConnection) -> Option<Self> {
        let leaf = connection.peer_certificates()?.first()?;
        Some(Self::new(leaf.as_ref()))
    }

    /// Wraps `der`.
    pub fn new(der: &[u8]) -> Self {
        Self {
            fingerprint: Digest::of(der),
            der: Arc::from(der),
        }
    }

    /// The certificate in `extensions`, if the request came with one.
    pub fn from_extensions(extensions: &Extensions) -> Option<&Self> {
        extensions.get::<Self>()
    }
}

/// A client certificate verifier that asks for a certificate, does not
/// require one, and accepts any certificate (chain ignored, issuer not
/// checked) whose TLS 1.3 handshake signature verifies with its key:
/// ECDSA P-256/P-384, RSA (PKCS#1 v1.5 and PSS) and Ed25519 through the
/// ring provider's algorithms.
#[derive(Debug)]
pub struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl AnyCertificate {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: &rustls::crypto::CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for AnyCertificate {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Must at least be a certificate; who it is (and whether we know
        // it) is the application's question, per request.
        margo_schemas::pki::cert_info(end_entity.as_ref()).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Who the request's certificate belongs to.
#[derive(Debug, Clone)]
pub enum Peer {
    /// No certificate was presented.
    Anonymous,
    /// A certificate no client is registered with.
    Unknown(Digest),
    /// The client registered with it.
    Client(ClientEntry),
}

/// Looks the request's certificate up in the store.
pub async fn identify(state: &ApiState, extensions: &Extensions) -> Result<Peer, Refusal> {
    let Some(cert) = PeerCertificate::from_extensions(extensions) else {
        return Ok(Peer::Anonymous);
    };
    let fingerprint = cert.fingerprint;
    let der = Arc::clone(&cert.der);
    let found = state.fleet.client_by_certificate(der).await.map_err(|e| {
        error!(%fingerprint, error = %e, "looking up a client certificate failed");
        Refusal::internal()
    })?;
    Ok(match found {
        Some(entry) => Peer::Client(entry),
        None => Peer::Unknown(fingerprint),
    })
}

/// The caller of an rc.3 route (no `{clientId}` in the path): the live
/// client whose certificate was presented. No certificate or an unknown one
/// is `401` (rc.3 lists none: there the handshake fails, which this shared
/// listener cannot do); a revoked client is `403` `not-authorized`.
pub async fn caller(state: &ApiState, parts: &Parts) -> Result<ClientId, Refusal> {
    match identify(state, &parts.extensions).await? {
        Peer::Anonymous => Err(Refusal::unauthorized(
            "this endpoint identifies the client by its TLS client certificate, and none was presented",
        )),
        Peer::Unknown(fingerprint) => Err(Refusal::unauthorized(format!(
            "the TLS client certificate ({fingerprint}) belongs to no client of this manager"
        ))),
        Peer::Client(entry) if entry.record.revoked => Err(Refusal::forbidden(format!(
            "client {} is revoked",
            entry.id
        ))),
        Peer::Client(entry) => Ok(entry.id),
    }
}

/// Whether the request's certificate is registered to `client` (a valid
/// credential on the `{clientId}` routes instead of a signature). A
/// certificate of another client (or of none) on a request that carries no
/// signature header either (`X-Payload-Signature`, RFC 9421 `Signature`) is
/// `401`: the request presented a credential, and it is not this client's.
pub async fn certifies(
    state: &ApiState,
    parts: &Parts,
    client: &ClientId,
) -> Result<bool, Refusal> {
    let other = match identify(state, &parts.extensions).await? {
        Peer::Anonymous => return Ok(false),
        Peer::Client(entry) if &entry.id == client => return Ok(true),
        Peer::Client(entry) => format!("belongs to client {}", entry.id),
        Peer::Unknown(fingerprint) => format!("({fingerprint}) belongs to no client"),
    };
    let signed = ["x-payload-signature", "signature"]
        .iter()
        .any(|name| parts.headers.contains_key(*name));
    if signed {
        return Ok(false);
    }
    Err(Refusal::unauthorized(format!(
        "the TLS client certificate {other}, not to {client}, and the request carries no signature"
    )))
}
