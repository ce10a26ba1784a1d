//! The fleet PKI (rcgen + ring, ECDSA P-256): the fleet CA, the gateway's
//! server certificate, the manager's own MQTT client certificate and the fleet
//! signing key, created on first start in `<data_dir>/pki/` and loaded later.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use margo_schemas::cose::SigningKey;
use margo_schemas::ids::ClientId;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber, SubjectPublicKeyInfo,
};
use tracing::info;

/// CN of the manager's own MQTT client certificate.
pub const MANAGER_CLIENT_CN: &str = "margo-manager";

/// Why PKI material could not be created, loaded or issued.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// rcgen refused to build or parse something.
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done.
        what: String,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// A key or certificate file is unusable.
    #[error("{path}: {reason}")]
    BadMaterial {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A device's certificate cannot be used to issue it an identity.
    #[error("{0}")]
    Device(String),
    /// Some files of the PKI exist and others do not.
    #[error("{dir} is incomplete: {missing} is missing (remove the directory to start over, or restore the file)")]
    Incomplete {
        /// The PKI directory.
        dir: PathBuf,
        /// The missing file.
        missing: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Certificate { what, source }
}

/// File names inside the PKI directory.
#[derive(Debug, Clone)]
pub struct PkiPaths {
    /// The directory.
    pub dir: PathBuf,
    /// Fleet CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// Fleet CA key (PKCS#8 PEM, 0600).
    pub ca_key: PathBuf,
    /// Gateway / broker server certificate.
    pub gateway_cert: PathBuf,
    /// Its key.
    pub gateway_key: PathBuf,
    /// The manager's MQTT client certificate (CN `margo-manager`).
    pub manager_client_cert: PathBuf,
    /// Its key.
    pub manager_client_key: PathBuf,
    /// Fleet signing certificate (verifies every downlink message).
    pub signing_cert: PathBuf,
    /// Fleet signing key.
    pub signing_key: PathBuf,
}

impl PkiPaths {
    /// The standard layout under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            gateway_cert: dir.join("gateway.crt"),
            gateway_key: dir.join("gateway.key"),
            manager_client_cert: dir.join("manager-client.crt"),
            manager_client_key: dir.join("manager-client.key"),
            signing_cert: dir.join("signing.crt"),
            signing_key: dir.join("signing.key"),
        }
    }

    fn all(&self) -> [&PathBuf; 8] {
        [
            &self.ca_cert,
            &self.ca_key,
            &self.gateway_cert,
            &self.gateway_key,
            &self.manager_client_cert,
            &self.manager_client_key,
            &self.signing_cert,
            &self.signing_key,
        ]
    }
}

/// PEM text of one DER certificate.
pub fn cert_pem(der: &[u8]) -> String {
    let b64 = data_encoding::BASE64.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// A certificate issued by the fleet CA.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// PEM form.
    pub pem: String,
    /// DER form.
    pub der: Vec<u8>,
}

/// A device identity made by factory provisioning: key generated here, handed over once.
pub struct ProvisionedDevice {
    /// The device's private key, PKCS#8 PEM. Not stored by the manager.
    pub key_pem: String,
    /// Its client certificate (CN = client id).
    pub cert: IssuedCert,
}

impl std::fmt::Debug for ProvisionedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisionedDevice")
            .field("key_pem", &"<redacted>")
            .field("cert", &self.cert)
            .finish()
    }
}

/// The loaded fleet PKI.
pub struct FleetPki {
    paths: PkiPaths,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
    signing_key: Arc<SigningKey>,
    signing_cert_pem: String,
}

impl std::fmt::Debug for FleetPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetPki")
            .field("dir", &self.paths.dir)
            .finish_non_exhaustive()
    }
}

/// Sets a validity window from about a year ago to `years` from now.
fn set_validity(params: &mut CertificateParams, years: i32) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // Whole years since 1970 (365.2425 days): good enough for a validity window.
    let year = 1970 + i32::try_from(secs / 31_556_952).unwrap_or(0);
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + years, 1, 1);
}

/// How far a revocation list's `nextUpdate` lies after its `thisUpdate`.
pub const CRL_VALIDITY: std::time::Duration = std::time::Duration::from_secs(10 * 366 * 24 * 3600);

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn leaf_params(cn: &str, sans: Vec<String>, years: i32) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::new(sans).map_err(cert_err("certificate names"))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "margo-mqtt fleet");
    set_validity(&mut params, years);
    params.serial_number = Some(random_serial());
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Writes `data` to `path`, creating it with `mode`.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    file.write_all(data).map_err(io_err(path))?;
    file.sync_all().map_err(io_err(path))?;
    // The umask may have narrowed the mode; never widen it beyond `mode`.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_err(path))
}

fn read_text(path: &Path) -> Result<String, CaError> {
    fs::read_to_string(path).map_err(io_err(path))
}

fn load_key(path: &Path) -> Result<KeyPair, CaError> {
    let pem = read_text(path)?;
    KeyPair::from_pem(&pem).map_err(|e| CaError::BadMaterial {
        path: path.to_path_buf(),
        reason: format!("not a usable private key: {e}"),
    })
}

impl FleetPki {
    /// Loads the PKI in `dir`, creating whatever is missing on first start.
    ///
    /// `hostnames` go into the gateway certificate (plus `localhost` and
    /// `127.0.0.1`). `provided_ca` = `(cert, key)` PEM files of a CA to use
    /// instead of generating one (copied into `dir` on first start).
    pub fn load_or_create(
        dir: &Path,
        hostnames: &[String],
        provided_ca: Option<(&Path, &Path)>,
    ) -> Result<Self, CaError> {
        let paths = PkiPaths::new(dir);
        let present: Vec<bool> = paths.all().iter().map(|p| p.exists()).collect();
        if present.iter().all(|p| !p) {
            Self::create(&paths, hostnames, provided_ca)?;
        } else if let Some(i) = present.iter().position(|p| !p) {
            return Err(CaError::Incomplete {
                dir: dir.to_path_buf(),
                missing: paths.all()[i]
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            });
        }
        Self::load(paths)
    }

    fn create(
        paths: &PkiPaths,
        hostnames: &[String],
        provided_ca: Option<(&Path, &Path)>,
    ) -> Result<(), CaError> {
        fs::create_dir_all(&paths.dir).map_err(io_err(&paths.dir))?;
        fs::set_permissions(&paths.dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err(&paths.dir))?;

        let (ca_pem, ca_key_pem, issuer) = match provided_ca {
            Some((cert_path, key_path)) => {
                let ca_pem = read_text(cert_path)?;
                let key = load_key(key_path)?;
                let key_pem = key.serialize_pem();
                let issuer = Issuer::from_ca_cert_pem(&ca_pem, key)
                    .map_err(cert_err(format!("CA certificate {}", cert_path.display())))?;
                (ca_pem, key_pem, issuer)
            }
            None => {
                let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(cert_err("generating the CA key"))?;
                let mut params = CertificateParams::new(Vec::<String>::new())
                    .map_err(cert_err("CA parameters"))?;
                params.distinguished_name = rcgen::DistinguishedName::new();
                params
                    .distinguished_name
                    .push(DnType::CommonName, "margo-mqtt fleet CA");
                params
                    .distinguished_name
                    .push(DnType::OrganizationName, "margo-mqtt fleet");
                params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                set_validity(&mut params, 20);
                params.serial_number = Some(random_serial());
                let cert = params
                    .self_signed(&key)
                    .map_err(cert_err("self-signing the CA"))?;
                let key_pem = key.serialize_pem();
                (cert.pem(), key_pem, Issuer::new(params, key))
            }
        };

        // Gateway server certificate.
        let mut sans: Vec<String> = hostnames.to_vec();
        for extra in ["localhost", "127.0.0.1"] {
            if !sans.iter().any(|s| s == extra) {
                sans.push(extra.to_string());
            }
        }
        let gateway_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating the gateway key"))?;
        let mut params = leaf_params(
            sans.first().map(String::as_str).unwrap_or("localhost"),
            sans.clone(),
            5,
        )?;
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let gateway = params
            .signed_by(&gateway_key, &issuer)
            .map_err(cert_err("issuing the gateway certificate"))?;

        // Manager MQTT client certificate.
        let client_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating the manager client key"))?;
        let mut params = leaf_params(MANAGER_CLIENT_CN, Vec::new(), 5)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = params
            .signed_by(&client_key, &issuer)
            .map_err(cert_err("issuing the manager client certificate"))?;

        // Fleet signing key + certificate.
        let signing_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating the signing key"))?;
        let params = leaf_params("margo-manager signing", Vec::new(), 10)?;
        let signing = params
            .signed_by(&signing_key, &issuer)
            .map_err(cert_err("issuing the signing certificate"))?;

        // Write keys last-to-first so a crash leaves an "incomplete" PKI, not a wrong one.
        write_file(&paths.ca_cert, ca_pem.as_bytes(), 0o644)?;
        write_file(&paths.ca_key, ca_key_pem.as_bytes(), 0o600)?;
        write_file(&paths.gateway_cert, gateway.pem().as_bytes(), 0o644)?;
        write_file(
            &paths.gateway_key,
            gateway_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&paths.manager_client_cert, client.pem().as_bytes(), 0o644)?;
        write_file(
            &paths.manager_client_key,
            client_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&paths.signing_cert, signing.pem().as_bytes(), 0o644)?;
        write_file(
            &paths.signing_key,
            signing_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        info!(dir = %paths.dir.display(), hostnames = ?sans, "created the fleet PKI");
        Ok(())
    }

    fn load(paths: PkiPaths) -> Result<Self, CaError> {
        let ca_pem = read_text(&paths.ca_cert)?;
        let ca_key = load_key(&paths.ca_key)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(cert_err(format!(
            "CA certificate {}",
            paths.ca_cert.display()
        )))?;
        let signing_pem = read_text(&paths.signing_key)?;
        let pkcs8 = margo_schemas::pki::pkcs8_from_pem(signing_pem.as_bytes(), "signing key")
            .map_err(|e| CaError::BadMaterial {
                path: paths.signing_key.clone(),
                reason: e.to_string(),
            })?;
        let signing_key = SigningKey::from_pkcs8(&pkcs8).map_err(|e| CaError::BadMaterial {
            path: paths.signing_key.clone(),
            reason: e.to_string(),
        })?;
        let signing_cert_pem = read_text(&paths.signing_cert)?;
        // The signing certificate must carry the signing key's public key.
        let der =
            margo_schemas::pki::certs_from_pem(signing_cert_pem.as_bytes(), "signing certificate")
                .map_err(|e| CaError::BadMaterial {
                    path: paths.signing_cert.clone(),
                    reason: e.to_string(),
                })?;
        let cert_key = der
            .first()
            .map(|c| margo_schemas::cose::VerifyingKey::from_certificate(c.as_ref()))
            .transpose()
            .map_err(|e| CaError::BadMaterial {
                path: paths.signing_cert.clone(),
                reason: e.to_string(),
            })?;
        if cert_key.as_ref() != Some(&signing_key.public_key()) {
            return Err(CaError::BadMaterial {
                path: paths.signing_cert.clone(),
                reason: "does not match signing.key".to_string(),
            });
        }
        Ok(Self {
            paths,
            ca_pem,
            issuer,
            signing_key: Arc::new(signing_key),
            signing_cert_pem,
        })
    }

    /// The file layout.
    pub fn paths(&self) -> &PkiPaths {
        &self.paths
    }

    /// The fleet CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The fleet signing certificate, PEM.
    pub fn signing_cert_pem(&self) -> &str {
        &self.signing_cert_pem
    }

    /// The fleet signing key (COSE ES256).
    pub fn signing_key(&self) -> Arc<SigningKey> {
        Arc::clone(&self.signing_key)
    }

    /// Issues a device client certificate (CN = `client_id`, clientAuth) for `public_key`.
    pub fn issue_client_cert(
        &self,
        client_id: &ClientId,
        public_key: &impl PublicKeyData,
    ) -> Result<IssuedCert, CaError> {
        let mut params = leaf_params(client_id.as_str(), Vec::new(), 10)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(cert_err(format!("issuing the certificate of {client_id}")))?;
        Ok(IssuedCert {
            pem: cert.pem(),
            der: cert.der().to_vec(),
        })
    }

    /// Onboarding: issues a client certificate (CN = `client_id`) for the
    /// public key of `device_cert_der`, the device's self-signed certificate.
    /// The device's key never leaves the device.
    pub fn issue_for_device_cert(
        &self,
        client_id: &ClientId,
        device_cert_der: &[u8],
    ) -> Result<IssuedCert, CaError> {
        let (_, cert) = x509_parser::parse_x509_certificate(device_cert_der)
            .map_err(|e| CaError::Device(format!("the device certificate does not parse: {e}")))?;
        let spki = SubjectPublicKeyInfo::from_der(cert.public_key().raw)
            .map_err(cert_err("the device certificate's public key"))?;
        self.issue_client_cert(client_id, &spki)
    }

    /// A certificate revocation list (PEM) of the fleet CA naming the
    /// certificates with these serial numbers, each revoked at its time
    /// (ms since epoch), issued at `now_ms` with CRL number `number`. Its
    /// `nextUpdate` is [`CRL_VALIDITY`] away: brokers that check it (OpenSSL
    /// refuses every client once a loaded CRL has expired) keep working
    /// even if nobody reloads them for years; every revocation and every
    /// manager start writes a fresh one anyway.
    pub fn revocation_list_pem(
        &self,
        revoked: &[(Vec<u8>, u64)],
        now_ms: u64,
        number: u64,
    ) -> Result<String, CaError> {
        let at = |ms: u64| rcgen::date_time_ymd(1970, 1, 1) + std::time::Duration::from_millis(ms);
        let params = rcgen::CertificateRevocationListParams {
            this_update: at(now_ms),
            next_update: at(now_ms) + CRL_VALIDITY,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, ms)| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: at(*ms),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(cert_err("signing the revocation list"))?;
        crl.pem().map_err(cert_err("encoding the revocation list"))
    }

    /// SHA-256 fingerprint of the fleet CA's DER (`sha256:<hex>`): what devices pin.
    pub fn ca_fingerprint(&self) -> Result<margo_schemas::digest::Digest, CaError> {
        let der = margo_schemas::pki::certs_from_pem(self.ca_pem.as_bytes(), "CA certificate")
            .map_err(|e| CaError::BadMaterial {
                path: self.paths.ca_cert.clone(),
                reason: e.to_string(),
            })?;
        der.first()
            .map(|c| margo_schemas::pki::fingerprint(c.as_ref()))
            .ok_or_else(|| CaError::BadMaterial {
                path: self.paths.ca_cert.clone(),
                reason: "holds no certificate".to_string(),
            })
    }

    /// TLS material of the server certificate (the gateway's: it carries the
    /// configured hostnames), for the HTTPS listener.
    pub fn server_pem(&self) -> Result<(Vec<u8>, Vec<u8>), CaError> {
        Ok((
            fs::read(&self.paths.gateway_cert).map_err(io_err(&self.paths.gateway_cert))?,
            fs::read(&self.paths.gateway_key).map_err(io_err(&self.paths.gateway_key))?,
        ))
    }

    /// Factory provisioning: generates the device key here and issues its certificate.
    pub fn provision_device(&self, client_id: &ClientId) -> Result<ProvisionedDevice, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating a device key"))?;
        let cert = self.issue_client_cert(client_id, &key)?;
        Ok(ProvisionedDevice {
            key_pem: key.serialize_pem(),
            cert,
        })
    }

    /// TLS material for the embedded device gateway.
    pub fn gateway_tls(&self) -> Result<margo_broker::GatewayTls, CaError> {
        Ok(margo_broker::GatewayTls {
            ca_pem: self.ca_pem.clone().into_bytes(),
            cert_pem: fs::read(&self.paths.gateway_cert)
                .map_err(io_err(&self.paths.gateway_cert))?,
            key_pem: fs::read(&self.paths.gateway_key).map_err(io_err(&self.paths.gateway_key))?,
        })
    }

    /// The manager's MQTT client certificate and key, PEM (for external `mqtts` brokers).
    pub fn manager_client_pem(&self) -> Result<(Vec<u8>, Vec<u8>), CaError> {
        Ok((
            fs::read(&self.paths.manager_client_cert)
                .map_err(io_err(&self.paths.manager_client_cert))?,
            fs::read(&self.paths.manager_client_key)
                .map_err(io_err(&self.paths.manager_client_key))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use margo_schemas::cose::VerifyingKey;
    use margo_schemas::pki::{cert_info, certs_from_pem};

    fn der_of(pem: &str) -> Vec<u8> {
        certs_from_pem(pem.as_bytes(), "test")
            .expect("pem")
            .remove(0)
            .to_vec()
    }

    #[test]
    fn create_then_load_gives_the_same_ca_and_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki_dir = dir.path().join("pki");
        let first =
            FleetPki::load_or_create(&pki_dir, &["edge.example.com".into()], None).expect("create");
        let second = FleetPki::load_or_create(&pki_dir, &[], None).expect("load");
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(
            first.signing_key().public_key(),
            second.signing_key().public_key()
        );
        let mode = fs::metadata(&first.paths().ca_key)
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let ca = cert_info(&der_of(first.ca_pem())).expect("ca");
        assert!(ca.is_ca);
        let client = fs::read_to_string(&first.paths().manager_client_cert).expect("client");
        assert_eq!(
            cert_info(&der_of(&client))
                .expect("client")
                .common_name
                .as_deref(),
            Some(MANAGER_CLIENT_CN)
        );
        // A certificate issued after reloading chains to the same CA: the
        // gateway built from the first load accepts it (checked end to end in
        // tests/); here check issuer/subject agreement.
        let id = ClientId::generate();
        let device = second.provision_device(&id).expect("provision");
        let (_, parsed) = x509_parser::parse_x509_certificate(&device.cert.der).expect("x509");
        let ca_der = der_of(first.ca_pem());
        let (_, ca_parsed) = x509_parser::parse_x509_certificate(&ca_der).expect("x509");
        assert_eq!(parsed.issuer(), ca_parsed.subject());
    }

    #[test]
    fn incomplete_pki_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = FleetPki::load_or_create(dir.path(), &[], None).expect("create");
        fs::remove_file(&pki.paths().gateway_key).expect("rm");
        assert!(matches!(
            FleetPki::load_or_create(dir.path(), &[], None),
            Err(CaError::Incomplete { .. })
        ));
    }

    #[test]
    fn provisioned_cert_names_the_client_and_verifies_its_signatures() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = FleetPki::load_or_create(dir.path(), &[], None).expect("create");
        let id = ClientId::generate();
        let device = pki.provision_device(&id).expect("provision");
        let info = cert_info(&device.cert.der).expect("cert");
        assert_eq!(info.common_name.as_deref(), Some(id.as_str()));
        assert!(!info.is_ca);
        let pkcs8 =
            margo_schemas::pki::pkcs8_from_pem(device.key_pem.as_bytes(), "key").expect("pkcs8");
        let key = SigningKey::from_pkcs8(&pkcs8).expect("key");
        let signed = key.sign(b"status".to_vec()).expect("sign");
        let verifying = VerifyingKey::from_certificate(&device.cert.der).expect("verifying");
        assert_eq!(verifying.verify(&signed).expect("verifies"), b"status");
    }

    #[test]
    fn onboarding_issues_for_the_device_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = FleetPki::load_or_create(dir.path(), &[], None).expect("create");
        let device_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let self_signed = CertificateParams::new(vec!["press-7".into()])
            .expect("params")
            .self_signed(&device_key)
            .expect("self-signed");
        let id = ClientId::generate();
        let issued = pki
            .issue_for_device_cert(&id, self_signed.der())
            .expect("issued");
        let info = cert_info(&issued.der).expect("cert");
        assert_eq!(info.common_name.as_deref(), Some(id.as_str()));
        assert_eq!(
            info.p256_public_key,
            cert_info(self_signed.der())
                .expect("device")
                .p256_public_key
        );
        assert_eq!(cert_pem(&issued.der), issued.pem.replace("\r\n", "\n"));
        assert!(pki.issue_for_device_cert(&id, b"junk").is_err());
        let fp = pki.ca_fingerprint().expect("fingerprint");
        assert_eq!(fp, margo_schemas::pki::fingerprint(&der_of(pki.ca_pem())));
    }

    #[test]
    fn provided_ca_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = FleetPki::load_or_create(&dir.path().join("a"), &[], None).expect("create");
        let other = FleetPki::load_or_create(
            &dir.path().join("b"),
            &[],
            Some((&source.paths().ca_cert, &source.paths().ca_key)),
        )
        .expect("create with provided CA");
        assert_eq!(source.ca_pem(), other.ca_pem());
    }
}
