//! Margo `OnboardingRequest` (HTTP onboarding API).

use serde::{Deserialize, Serialize};

pub const API_VERSION: &str = "onboarding.margo.org/v1alpha1";
pub const KIND: &str = "OnboardingRequest";
/// Largest certificate (base64 of PEM or DER) we accept.
pub const MAX_CERTIFICATE_LEN: usize = 16 * 1024;

/// Name of our extension object in onboarding requests and responses
/// (Margo allows `x-<name>-extensions`; see `docs/onboarding.md`).
pub const EXTENSIONS_KEY: &str = "x-margo-mqtt-extensions";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnboardingRequest {
    pub api_version: String,
    pub kind: String,
    /// Base64 of the client's X.509 certificate (PEM or DER).
    pub certificate: String,
    /// Our extension: enrollment token and what the device claims to be.
    #[serde(
        default,
        rename = "x-margo-mqtt-extensions",
        skip_serializing_if = "Option::is_none"
    )]
    pub extensions: Option<RequestExtensions>,
}

/// Longest claimed text field (name, vendor, model, serial, token).
pub const MAX_CLAIM_LEN: usize = 128;

/// What a device may add to its onboarding request. All optional; all
/// covered by the payload signature.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestExtensions {
    /// An enrollment token (`margoctl tokens create`) for automatic approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
    /// The name the device would like in the fleet (unique; the operator may override).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

impl RequestExtensions {
    /// Checks lengths and characters of every claim.
    pub fn validate(&self) -> Result<(), OnboardingError> {
        for (field, value) in [
            ("enrollmentToken", &self.enrollment_token),
            ("name", &self.name),
            ("vendor", &self.vendor),
            ("modelNumber", &self.model_number),
            ("serialNumber", &self.serial_number),
        ] {
            if let Some(v) = value {
                if v.is_empty() || v.len() > MAX_CLAIM_LEN || v.chars().any(char::is_control) {
                    return Err(OnboardingError::Claim(field));
                }
            }
        }
        Ok(())
    }
}

/// Where an onboarding request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnboardingState {
    Pending,
    Approved,
    Rejected,
}

/// Answer to `POST /api/v1/onboarding` and `GET /api/v1/onboarding/requests/{id}`.
///
/// Margo's `201 {clientId}` is the approved case; `202` with `state:
/// pending` and a `Location` to poll is our extension for approvals that
/// take days, as is everything under `x-margo-mqtt-extensions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnboardingResponse {
    /// Set once approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<crate::ids::ClientId>,
    #[serde(rename = "x-margo-mqtt-extensions")]
    pub extensions: ResponseExtensions,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseExtensions {
    /// The request id: the hex SHA-256 fingerprint of the device certificate.
    pub request_id: String,
    pub state: OnboardingState,
    /// Where to poll (`/api/v1/onboarding/requests/{requestId}`).
    pub location: String,
    /// Seconds to wait before polling again, while pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_secs: Option<u64>,
    /// Once approved: what the device needs to connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IssuedIdentity>,
}

/// The identity the manager issues on approval (PEM texts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedIdentity {
    /// The fleet name given to the device.
    pub name: String,
    /// MQTT client certificate for the device's own key, CN = clientId.
    pub client_certificate: String,
    pub ca_certificate: String,
    /// Verifies every downlink message.
    pub manager_signing_certificate: String,
    /// `mqtts://host:port` of the device gateway.
    pub broker_url: String,
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
    #[error("x-margo-mqtt-extensions.{0}: must be 1 to 128 printable characters")]
    Claim(&'static str),
}

impl OnboardingRequest {
    /// A request carrying `cert_der`, base64-encoded as the spec asks.
    pub fn new(cert_der: &[u8]) -> Self {
        Self {
            api_version: API_VERSION.to_string(),
            kind: KIND.to_string(),
            certificate: data_encoding::BASE64.encode(cert_der),
            extensions: None,
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
        if let Some(ext) = &self.extensions {
            ext.validate()?;
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
