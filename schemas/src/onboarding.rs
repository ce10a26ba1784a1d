//! Margo `OnboardingRequest` (HTTP onboarding API).

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "onboarding.margo.org/v1alpha1";
pub const KIND: &str = "OnboardingRequest";
/// Largest certificate (base64 of PEM or DER) we accept.
pub const MAX_CERTIFICATE_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnboardingRequest {
    pub api_version: String,
    pub kind: String,
    /// Base64 of the client's X.509 certificate (PEM or DER).
    pub certificate: String,
}

/// Why an onboarding request is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnboardingError {
    #[error("apiVersion must be {API_VERSION}")]
    ApiVersion,
    #[error("kind must be {KIND}")]
    Kind,
    #[error("certificate is {0} characters, the limit is {MAX_CERTIFICATE_LEN}")]
    TooLarge(usize),
    #[error("certificate is not valid base64")]
    Base64,
    #[error("certificate is neither PEM nor DER X.509")]
    NotACertificate,
}

impl OnboardingRequest {
    /// A request carrying `cert_der`, base64-encoded as the spec asks.
    pub fn new(cert_der: &[u8]) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            certificate: data_encoding::BASE64.encode(cert_der),
        }
    }

    /// Validates the envelope and returns the certificate as DER.
    pub fn certificate_der(&self) -> Result<Vec<u8>, OnboardingError> {
        if self.api_version != API_VERSION {
            return Err(OnboardingError::ApiVersion);
        }
        if self.kind != KIND {
            return Err(OnboardingError::Kind);
        }
        if self.certificate.len() > MAX_CERTIFICATE_LEN {
            return Err(OnboardingError::TooLarge(self.certificate.len()));
        }
        let raw = data_encoding::BASE64
            .decode(self.certificate.trim().as_bytes())
            .map_err(|_| OnboardingError::Base64)?;
        if raw.starts_with(b"-----BEGIN") {
            let certs = crate::pki::certs_from_pem(&raw, "onboarding certificate")
                .map_err(|_| OnboardingError::NotACertificate)?;
            return certs
                .into_iter()
                .next()
                .map(|c| c.as_ref().to_vec())
                .ok_or(OnboardingError::NotACertificate);
        }
        crate::pki::cert_info(&raw).map_err(|_| OnboardingError::NotACertificate)?;
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_and_pem_forms() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["dev".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let req = OnboardingRequest::new(cert.der());
        assert_eq!(req.certificate_der().unwrap(), cert.der().to_vec());
        let pem_req = OnboardingRequest {
            certificate: data_encoding::BASE64.encode(cert.pem().as_bytes()),
            ..req.clone()
        };
        assert_eq!(pem_req.certificate_der().unwrap(), cert.der().to_vec());
        let garbage = OnboardingRequest {
            certificate: data_encoding::BASE64.encode(b"not a cert"),
            ..req.clone()
        };
        assert_eq!(
            garbage.certificate_der(),
            Err(OnboardingError::NotACertificate)
        );
        let bad64 = OnboardingRequest {
            certificate: "***".into(),
            ..req
        };
        assert_eq!(bad64.certificate_der(), Err(OnboardingError::Base64));
    }
}
