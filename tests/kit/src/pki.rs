//! A throwaway CA (rcgen, ring) that issues server, client and signing
//! certificates, and the rustls client configuration that goes with it.

use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, PublicKeyData,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A self-signed CA.
pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate the CA issued and its freshly generated key.
pub struct Issued {
    pub cert: Certificate,
    pub key: KeyPair,
}

/// TLS material for an MQTT client: PEM bytes.
#[derive(Clone)]
pub struct TlsIdentity {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl TestPki {
    /// A CA with subject CN = `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("ca key");
        Self {
            ca: CertifiedIssuer::self_signed(params, key).expect("ca cert"),
        }
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for `localhost` and `127.0.0.1` (server auth).
    pub fn server(&self) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with subject CN = `cn` (client auth), as the
    /// manager issues them to devices.
    pub fn client(&self, cn: &str) -> Issued {
        let mut params = subject(cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A certificate with subject CN = `cn` and no key usage restriction,
    /// e.g. the manager's signing certificate.
    pub fn leaf(&self, cn: &str) -> Issued {
        self.sign(subject(cn))
    }

    /// A certificate with subject CN = `cn` for a key the test does not
    /// hold (a device's own key in onboarding); its PEM.
    pub fn certify(&self, cn: &str, public: &impl PublicKeyData) -> String {
        subject(cn)
            .signed_by(public, &self.ca)
            .expect("certificate for a given key")
            .pem()
    }

    /// [`TestPki::client`] as PEM material next to this CA.
    pub fn tls_identity(&self, cn: &str) -> TlsIdentity {
        let issued = self.client(cn);
        TlsIdentity {
            ca_pem: self.ca_pem().into_bytes(),
            cert_pem: issued.cert_pem().into_bytes(),
            key_pem: issued.key_pem().into_bytes(),
        }
    }

    /// Writes `ca.crt`, `server.crt` and `server.key` into `dir` for a broker.
    pub fn write_server_files(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let server = self.server();
        std::fs::write(dir.join("ca.crt"), self.ca_pem())?;
        std::fs::write(dir.join("server.crt"), server.cert_pem())?;
        std::fs::write(dir.join("server.key"), server.key_pem())?;
        Ok(())
    }

    fn sign(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Issued { cert, key }
    }
}

impl Issued {
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The chain a client presents: this certificate alone.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// A rustls client configuration (ring provider) trusting `server_ca`,
/// presenting `cert` when given.
pub fn client_tls(server_ca: &TestPki, cert: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_ca.ca_der()).expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(c.chain(), c.key_der())
            .expect("client auth"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

fn subject(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params
}
