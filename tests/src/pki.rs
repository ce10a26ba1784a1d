//! A throwaway fleet PKI for tests that need certificates without a manager.

use std::path::Path;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};

use crate::mqtt::TlsIdentity;

pub struct TestPki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl TestPki {
    pub fn new() -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "margo test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Ok(Self {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    /// A server certificate for localhost/127.0.0.1: (cert PEM, key PEM).
    pub fn server(&self) -> Result<(String, String)> {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// A client certificate with CN = `cn`.
    pub fn client(&self, cn: &str) -> Result<TlsIdentity> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        Ok(TlsIdentity {
            ca_pem: self.ca.pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        })
    }

    /// Writes `ca.crt`, `server.crt`, `server.key` into `dir` for a broker.
    pub fn write_server_files(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        let (cert, key) = self.server()?;
        std::fs::write(dir.join("ca.crt"), self.ca_pem())?;
        std::fs::write(dir.join("server.crt"), cert)?;
        std::fs::write(dir.join("server.key"), key)?;
        Ok(())
    }
}
