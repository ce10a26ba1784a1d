//! The public key of a device certificate offered for onboarding: which
//! types are accepted, and whether MQTT can use it. Signatures are checked
//! with `margo_schemas::sig_key::PublicKey` (`http/onboarding.rs`).
//!
//! Margo states no key type for the device certificate; certificates made
//! the common way (`openssl req -x509 -newkey rsa:2048`) carry RSA keys. We
//! accept ECDSA P-256 (the only key MQTT can use: COSE ES256), ECDSA P-384,
//! RSA of at least 2048 bits and Ed25519. A client onboarded with another
//! key than P-256 is an HTTP-only client.

use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// A device certificate's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceKey {
    /// ECDSA P-256: the uncompressed point (MQTT and HTTP).
    P256(Vec<u8>),
    /// ECDSA P-384 (HTTP only).
    P384 {
        /// SubjectPublicKeyInfo DER.
        spki: Vec<u8>,
        /// The uncompressed point.
        point: Vec<u8>,
    },
    /// RSA (HTTP only).
    Rsa {
        /// SubjectPublicKeyInfo DER.
        spki: Vec<u8>,
        /// PKCS#1 `RSAPublicKey` DER.
        pkcs1: Vec<u8>,
        /// Modulus length.
        bits: usize,
    },
    /// Ed25519 (HTTP only).
    Ed25519 {
        /// SubjectPublicKeyInfo DER.
        spki: Vec<u8>,
        /// The 32-byte key.
        key: Vec<u8>,
    },
}

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

impl DeviceKey {
    /// The key of `cert`, or what is wrong with it.
    pub fn of(cert: &X509Certificate<'_>) -> Result<Self, String> {
        let spki = cert.public_key();
        let alg = spki.algorithm.algorithm.to_id_string();
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|oid| oid.to_id_string());
        let data = spki.subject_public_key.data.to_vec();
        match (alg.as_str(), curve.as_deref()) {
            (OID_EC, Some(OID_P256)) => Ok(Self::P256(data)),
            (OID_EC, Some(OID_P384)) => Ok(Self::P384 {
                spki: spki.raw.to_vec(),
                point: data,
            }),
            (OID_RSA, _) => {
                let bits = match spki.parsed() {
                    Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
                    _ => return Err("the RSA public key does not parse".into()),
                };
                if bits < MIN_RSA_BITS {
                    return Err(format!(
                        "the RSA key has {bits} bits, at least {MIN_RSA_BITS} are needed"
                    ));
                }
                Ok(Self::Rsa {
                    spki: spki.raw.to_vec(),
                    pkcs1: data,
                    bits,
                })
            }
            (OID_ED25519, _) => Ok(Self::Ed25519 {
                spki: spki.raw.to_vec(),
                key: data,
            }),
            (OID_EC, curve) => Err(format!(
                "the ECDSA curve {} is not supported (P-256 or P-384)",
                curve.unwrap_or("?")
            )),
            (other, _) => Err(format!(
                "the key algorithm {other} is not supported (ECDSA P-256 or P-384, RSA, Ed25519)"
            )),
        }
    }

    /// The key of a DER certificate.
    pub fn of_der(der: &[u8]) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        Self::of(&cert)
    }

    /// `ECDSA P-256`, `RSA 2048`, ...
    pub fn describe(&self) -> String {
        match self {
            Self::P256(_) => "ECDSA P-256".into(),
            Self::P384 { .. } => "ECDSA P-384".into(),
            Self::Rsa { bits, .. } => format!("RSA {bits}"),
            Self::Ed25519 { .. } => "Ed25519".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};
    use margo_schemas::http_sig::{self, HttpSigError, CONTENT_DIGEST, PAYLOAD_SIGNATURE};
    use margo_schemas::sig_key::PublicKey;
    use rcgen::PublicKeyData;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P384_SHA384_ASN1_SIGNING};

    fn cert_of(key: &rcgen::KeyPair) -> Vec<u8> {
        rcgen::CertificateParams::new(vec!["dev".to_string()])
            .unwrap()
            .self_signed(key)
            .unwrap()
            .der()
            .to_vec()
    }

    fn headers(spki: &[u8], sig: &[u8], body: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_DIGEST,
            HeaderValue::from_str(&http_sig::content_digest(body)).unwrap(),
        );
        let value = format!(
            "{};{}",
            data_encoding::BASE64.encode(spki),
            data_encoding::BASE64.encode(sig)
        );
        h.insert(PAYLOAD_SIGNATURE, HeaderValue::from_str(&value).unwrap());
        h
    }

    /// What the onboarding handler checks for an `X-Payload-Signature`.
    fn verify(cert: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), HttpSigError> {
        let key = PublicKey::from_certificate(cert).unwrap();
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        http_sig::verify_with_key(
            header(CONTENT_DIGEST),
            header(PAYLOAD_SIGNATURE),
            body,
            &key,
            true,
        )
    }

    #[test]
    fn p384_and_ed25519_signatures_verify_with_the_certificate_key() {
        let body = br#"{"kind":"OnboardingRequest"}"#;
        let rng = SystemRandom::new();

        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cert = cert_of(&p384);
        let key = DeviceKey::of_der(&cert).unwrap();
        assert_eq!(key.describe(), "ECDSA P-384");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &p384.serialize_der(), &rng)
                .unwrap();
        let sig = pair.sign(&rng, body).unwrap();
        let spki = p384.subject_public_key_info();
        assert_eq!(
            verify(&cert, &headers(&spki, sig.as_ref(), body), body),
            Ok(())
        );
        assert_eq!(
            verify(&cert, &headers(&spki, sig.as_ref(), b"other"), b"other"),
            Err(HttpSigError::BadSignature)
        );

        let ed = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = cert_of(&ed);
        let key = DeviceKey::of_der(&cert).unwrap();
        assert_eq!(key.describe(), "Ed25519");
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&ed.serialize_der()).unwrap();
        let sig = pair.sign(body);
        let ed_spki = ed.subject_public_key_info();
        assert_eq!(
            verify(&cert, &headers(&ed_spki, sig.as_ref(), body), body),
            Ok(())
        );
        // Another key in the header than the certificate's.
        assert_eq!(
            verify(&cert, &headers(&spki, sig.as_ref(), body), body),
            Err(HttpSigError::WrongKey)
        );
        // No signature header at all.
        let mut only_digest = headers(&ed_spki, sig.as_ref(), body);
        only_digest.remove(PAYLOAD_SIGNATURE);
        assert_eq!(
            verify(&cert, &only_digest, body),
            Err(HttpSigError::MissingSignature)
        );
    }

    #[test]
    fn a_p256_certificate_key_is_described() {
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = DeviceKey::of_der(&cert_of(&p256)).unwrap();
        assert_eq!(key.describe(), "ECDSA P-256");
    }
}
