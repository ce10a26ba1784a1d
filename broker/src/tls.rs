//! TLS for the gateway: a TLS 1.3-only rustls server config (ring provider)
//! with mandatory client certificates, and the device identity taken from them.

use std::sync::Arc;
use std::time::Duration;

use margo_schemas::ids::ClientId;
use rustls::crypto::ring;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::GatewayTls;
use crate::error::BrokerError;

/// Session tickets sent after each handshake (full or resumed). One is
/// enough: a device reconnects with it, and the resumed handshake hands it
/// the next one (docs/benchmarks.md, bytes on the wire).
const TLS13_TICKETS: usize = 1;

/// Sessions the gateway remembers for resumption (one per device that
/// connected recently; the oldest go first). An entry holds the session
/// secret and the client's certificate chain, under 1 KiB, so a full cache
/// is under 64 MiB.
pub const TLS_SESSION_CACHE: usize = 65_536;

/// Builds the gateway's server config: TLS 1.3 only, client certificate
/// required and verified against the fleet CA, resumption by a stateful
/// session cache, one ticket per handshake.
///
/// Stateful, not stateless tickets: a stateless ticket is the whole session
/// encrypted, the client's certificate included (about 0.6 KB), and it
/// crosses the wire twice per reconnect (down in NewSessionTicket, up in
/// the next ClientHello); a stateful ticket is a 32-byte key into the
/// cache, and each is usable once. Neither survives a gateway restart (the
/// stateless ticket key was per process too), so a restart costs one full
/// handshake per device either way (decision 0009).
pub fn server_config(tls: &GatewayTls) -> Result<Arc<ServerConfig>, BrokerError> {
    let provider = Arc::new(ring::default_provider());

    let mut roots = RootCertStore::empty();
    let ca_certs = parse_certs(&tls.ca_pem, "CA")?;
    for cert in ca_certs {
        roots
            .add(cert)
            .map_err(|e| BrokerError::Tls(format!("CA certificate rejected: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| BrokerError::Tls(format!("client verifier: {e}")))?;

    let chain = parse_certs(&tls.cert_pem, "server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)
        .map_err(|e| BrokerError::Tls(format!("private key: {e}")))?;

    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| BrokerError::Tls(format!("protocol versions: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| BrokerError::Tls(format!("certificate/key: {e}")))?;
    config.session_storage = ServerSessionMemoryCache::new(TLS_SESSION_CACHE);
    config.send_tls13_tickets = TLS13_TICKETS;
    Ok(Arc::new(config))
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BrokerError::Tls(format!("{what} PEM: {e}")))?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!("{what} PEM holds no certificate")));
    }
    Ok(certs)
}

/// Why a verified client certificate does not name a device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The connection has no peer certificate (cannot happen with the verifier above).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate is not parseable X.509.
    #[error("unparseable certificate: {0}")]
    Unparseable(String),
    /// The subject has no CN, or more than one.
    #[error("subject must have exactly one common name, found {0}")]
    CommonNameCount(usize),
    /// The CN is not a string or not a valid client id.
    #[error("common name is not a valid client id: {0}")]
    InvalidClientId(String),
}

/// The device identity: the subject CN of the (already verified) leaf
/// certificate, which must be a valid [`ClientId`].
pub fn identity(peer_certs: Option<&[CertificateDer<'_>]>) -> Result<ClientId, IdentityError> {
    let leaf = peer_certs
        .and_then(|certs| certs.first())
        .ok_or(IdentityError::NoCertificate)?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| IdentityError::Unparseable(e.to_string()))?;
    let names: Vec<_> = cert.subject().iter_common_name().collect();
    let [cn] = names.as_slice() else {
        return Err(IdentityError::CommonNameCount(names.len()));
    };
    let cn = cn
        .as_str()
        .map_err(|e| IdentityError::InvalidClientId(e.to_string()))?;
    ClientId::new(cn).map_err(|e| IdentityError::InvalidClientId(e.to_string()))
}

/// How a server-side TLS handshake ended.
#[derive(Debug)]
pub enum Handshake {
    /// Done: the encrypted stream.
    Done(Box<TlsStream<TcpStream>>),
    /// The peer or rustls broke it off.
    Failed(std::io::Error),
    /// Not finished within the deadline.
    TimedOut,
    /// Shutdown came first.
    Cancelled,
}

/// Runs one server handshake on its own socket with a deadline, giving up on
/// shutdown. Each connection gets its own task and its own deadline, so a
/// peer that stalls mid-handshake delays nobody else (rumqttd's listener
/// handshakes serially with no deadline). Shared by the device gateway and
/// the manager's HTTPS listener.
pub async fn accept_with_deadline(
    acceptor: &TlsAcceptor,
    socket: TcpStream,
    deadline: Duration,
    shutdown: &CancellationToken,
) -> Handshake {
    let _ = socket.set_nodelay(true);
    let handshake = tokio::time::timeout(deadline, acceptor.accept(socket));
    tokio::select! {
        () = shutdown.cancelled() => Handshake::Cancelled,
        result = handshake => match result {
            Ok(Ok(tls)) => Handshake::Done(Box::new(tls)),
            Ok(Err(error)) => Handshake::Failed(error),
            Err(_) => Handshake::TimedOut,
        },
    }
}
