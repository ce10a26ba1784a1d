//! Public keys that verify request signatures, whatever their type: the key
//! of a client's certificate (ECDSA P-256 or P-384, RSA of 2048 to 8192
//! bits, Ed25519), and the signature algorithms each one admits.

use ring::signature::{self as rs, UnparsedPublicKey, VerificationAlgorithm};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::SubjectPublicKeyInfo;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_ED25519: &str = "1.3.101.112";

/// Why a key could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("certificate does not parse: {0}")]
    BadCertificate(String),
    #[error("SubjectPublicKeyInfo does not parse: {0}")]
    BadSpki(String),
    #[error("unsupported public key type {0} (supported: ECDSA P-256/P-384, RSA, Ed25519)")]
    Unsupported(String),
}

/// The type of a public key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    P256,
    P384,
    Rsa,
    Ed25519,
}

/// A signature algorithm, named as in the RFC 9421 registry (§6.2.2), plus
/// `rsa-pss-sha256`, which the Margo security page lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    EcdsaP256Sha256,
    EcdsaP384Sha384,
    RsaV15Sha256,
    RsaPssSha256,
    RsaPssSha512,
    Ed25519,
}

impl Algorithm {
    /// Every algorithm, by name.
    pub const ALL: [Algorithm; 6] = [
        Self::EcdsaP256Sha256,
        Self::EcdsaP384Sha384,
        Self::RsaV15Sha256,
        Self::RsaPssSha256,
        Self::RsaPssSha512,
        Self::Ed25519,
    ];

    /// The `alg` parameter value.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Self::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Self::RsaV15Sha256 => "rsa-v1_5-sha256",
            Self::RsaPssSha256 => "rsa-pss-sha256",
            Self::RsaPssSha512 => "rsa-pss-sha512",
            Self::Ed25519 => "ed25519",
        }
    }

    /// The algorithm an `alg` value names (exact, lower case).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The key type the algorithm needs.
    pub fn key_kind(self) -> KeyKind {
        match self {
            Self::EcdsaP256Sha256 => KeyKind::P256,
            Self::EcdsaP384Sha384 => KeyKind::P384,
            Self::RsaV15Sha256 | Self::RsaPssSha256 | Self::RsaPssSha512 => KeyKind::Rsa,
            Self::Ed25519 => KeyKind::Ed25519,
        }
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A public key and what it verifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kind: KeyKind,
    /// The SubjectPublicKeyInfo DER.
    spki: Vec<u8>,
    /// The key as ring takes it: the SEC1 point, the PKCS#1 RSAPublicKey,
    /// or the 32 Ed25519 bytes (the SPKI's BIT STRING content).
    key: Vec<u8>,
}

impl PublicKey {
    /// The key of a DER certificate.
    pub fn from_certificate(cert_der: &[u8]) -> Result<Self, KeyError> {
        let (_, cert) = X509Certificate::from_der(cert_der)
            .map_err(|e| KeyError::BadCertificate(e.to_string()))?;
        Self::from_parsed(cert.public_key())
    }

    /// A key from its SubjectPublicKeyInfo DER.
    pub fn from_spki(spki_der: &[u8]) -> Result<Self, KeyError> {
        let (rest, spki) = SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| KeyError::BadSpki(e.to_string()))?;
        if !rest.is_empty() {
            return Err(KeyError::BadSpki("trailing bytes".into()));
        }
        Self::from_parsed(&spki)
    }

    fn from_parsed(spki: &SubjectPublicKeyInfo<'_>) -> Result<Self, KeyError> {
        let alg = spki.algorithm.algorithm.to_id_string();
        let kind = match alg.as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.to_id_string())
                    .unwrap_or_default();
                match curve.as_str() {
                    OID_P256 => KeyKind::P256,
                    OID_P384 => KeyKind::P384,
                    other => return Err(KeyError::Unsupported(format!("EC curve {other}"))),
                }
            }
            OID_RSA | OID_RSA_PSS => KeyKind::Rsa,
            OID_ED25519 => KeyKind::Ed25519,
            other => return Err(KeyError::Unsupported(other.to_string())),
        };
        Ok(Self {
            kind,
            spki: spki.raw.to_vec(),
            key: spki.subject_public_key.data.to_vec(),
        })
    }

    /// The key type.
    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// The SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// The raw key bytes (SEC1 point, PKCS#1 RSAPublicKey, Ed25519 bytes).
    pub fn raw(&self) -> &[u8] {
        &self.key
    }

    /// The algorithms this key can verify, most likely first (used when a
    /// signature names none: RFC 9421 §3.3.7 lets the key decide).
    pub fn algorithms(&self) -> &'static [Algorithm] {
        match self.kind {
            KeyKind::P256 => &[Algorithm::EcdsaP256Sha256],
            KeyKind::P384 => &[Algorithm::EcdsaP384Sha384],
            KeyKind::Rsa => &[
                Algorithm::RsaV15Sha256,
                Algorithm::RsaPssSha512,
                Algorithm::RsaPssSha256,
            ],
            KeyKind::Ed25519 => &[Algorithm::Ed25519],
        }
    }

    /// Verifies `signature` over `message` with `alg`. ECDSA signatures are
    /// the fixed-size `r||s` RFC 9421 §3.3.4/§3.3.5 require; as a tolerant
    /// reader an ASN.1 DER `Ecdsa-Sig-Value` (what `openssl dgst -sign`
    /// writes) is accepted too. RSA keys must have 2048 to 8192 bits.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if alg.key_kind() != self.kind {
            return false;
        }
        let check = |a: &'static dyn VerificationAlgorithm| {
            UnparsedPublicKey::new(a, &self.key)
                .verify(message, signature)
                .is_ok()
        };
        match alg {
            Algorithm::EcdsaP256Sha256 => {
                check(&rs::ECDSA_P256_SHA256_FIXED) || check(&rs::ECDSA_P256_SHA256_ASN1)
            }
            Algorithm::EcdsaP384Sha384 => {
                check(&rs::ECDSA_P384_SHA384_FIXED) || check(&rs::ECDSA_P384_SHA384_ASN1)
            }
            Algorithm::RsaV15Sha256 => check(&rs::RSA_PKCS1_2048_8192_SHA256),
            Algorithm::RsaPssSha256 => check(&rs::RSA_PSS_2048_8192_SHA256),
            Algorithm::RsaPssSha512 => check(&rs::RSA_PSS_2048_8192_SHA512),
            Algorithm::Ed25519 => check(&rs::ED25519),
        }
    }

    /// Verifies an `X-Payload-Signature` signature over `body` (the old
    /// Margo scheme: "SHA-256 of the body, signed"): ECDSA with SHA-256 for
    /// P-256 (DER or `r||s`), SHA-384 or SHA-256 for P-384, RSA PKCS#1 v1.5
    /// or PSS with SHA-256, Ed25519.
    pub fn verify_payload(&self, body: &[u8], signature: &[u8]) -> bool {
        let check = |a: &'static dyn VerificationAlgorithm| {
            UnparsedPublicKey::new(a, &self.key)
                .verify(body, signature)
                .is_ok()
        };
        match self.kind {
            KeyKind::P256 => {
                check(&rs::ECDSA_P256_SHA256_ASN1) || check(&rs::ECDSA_P256_SHA256_FIXED)
            }
            KeyKind::P384 => {
                check(&rs::ECDSA_P384_SHA384_ASN1)
                    || check(&rs::ECDSA_P384_SHA384_FIXED)
                    || check(&rs::ECDSA_P384_SHA256_ASN1)
            }
            KeyKind::Rsa => {
                check(&rs::RSA_PKCS1_2048_8192_SHA256) || check(&rs::RSA_PSS_2048_8192_SHA256)
            }
            KeyKind::Ed25519 => check(&rs::ED25519),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
        }
        assert_eq!(Algorithm::from_name("hmac-sha256"), None);
    }

    #[test]
    fn keys_of_every_supported_type() {
        for alg in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ECDSA_P384_SHA384,
            &rcgen::PKCS_ED25519,
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["x".into()])
                .unwrap()
                .self_signed(&pair)
                .unwrap();
            let key = PublicKey::from_certificate(cert.der()).unwrap();
            assert_eq!(
                PublicKey::from_spki(&rcgen::PublicKeyData::subject_public_key_info(&pair))
                    .unwrap(),
                key
            );
        }
    }
}
