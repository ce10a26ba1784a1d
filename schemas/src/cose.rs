//! COSE_Sign1 (RFC 9052) with ES256 over CBOR payloads.
//!
//! Devices sign with the key of their certificate; the manager signs with its
//! fleet signing key. Verification is against a public key taken from a
//! certificate the verifier already trusts.

use coset::{iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};

use crate::pki::{cert_info, PkiError};

/// Why signing or verification failed.
#[derive(Debug, thiserror::Error)]
pub enum CoseError {
    #[error("malformed COSE_Sign1: {0}")]
    Malformed(String),
    #[error("COSE_Sign1 algorithm is not ES256")]
    WrongAlgorithm,
    #[error("COSE_Sign1 has no payload")]
    NoPayload,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing key is not a usable ECDSA P-256 PKCS#8 key")]
    BadKey,
    #[error("signing failed")]
    SignFailed,
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// An ECDSA P-256 private key that signs COSE_Sign1 messages.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, CoseError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| CoseError::BadKey)?;
        Ok(Self { pair, rng })
    }

    /// Generates a new key; returns it with its PKCS#8 DER encoding for storage.
    pub fn generate() -> Result<(Self, Vec<u8>), CoseError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| CoseError::BadKey)?;
        let pkcs8 = doc.as_ref().to_vec();
        Ok((Self::from_pkcs8(&pkcs8)?, pkcs8))
    }

    /// The uncompressed SEC1 public point.
    pub fn public_key(&self) -> VerifyingKey {
        VerifyingKey {
            point: self.pair.public_key().as_ref().to_vec(),
        }
    }

    /// Wraps `payload` in a COSE_Sign1 signed with this key.
    pub fn sign(&self, payload: Vec<u8>) -> Result<Vec<u8>, CoseError> {
        let protected = HeaderBuilder::new()
            .algorithm(iana::Algorithm::ES256)
            .build();
        let mut failed = false;
        let sign1 = CoseSign1Builder::new()
            .protected(protected)
            .payload(payload)
            .create_signature(b"", |data| match self.pair.sign(&self.rng, data) {
                Ok(sig) => sig.as_ref().to_vec(),
                Err(_) => {
                    failed = true;
                    Vec::new()
                }
            })
            .build();
        if failed {
            return Err(CoseError::SignFailed);
        }
        sign1
            .to_vec()
            .map_err(|e| CoseError::Malformed(e.to_string()))
    }
}

/// An ECDSA P-256 public key that verifies COSE_Sign1 messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    point: Vec<u8>,
}

impl VerifyingKey {
    /// The public key of a DER certificate, which must be ECDSA P-256.
    pub fn from_certificate(cert_der: &[u8]) -> Result<Self, CoseError> {
        let info = cert_info(cert_der)?;
        let point = info.p256_public_key.ok_or(PkiError::NotP256)?;
        Ok(Self { point })
    }

    /// The uncompressed SEC1 point.
    pub fn as_bytes(&self) -> &[u8] {
        &self.point
    }

    /// Verifies a COSE_Sign1 and returns its payload.
    ///
    /// The caller bounds `bytes` before calling (see `codec::decode`).
    pub fn verify(&self, bytes: &[u8]) -> Result<Vec<u8>, CoseError> {
        let sign1 =
            CoseSign1::from_slice(bytes).map_err(|e| CoseError::Malformed(e.to_string()))?;
        let alg_ok = matches!(
            sign1.protected.header.alg,
            Some(coset::Algorithm::Assigned(iana::Algorithm::ES256))
        );
        if !alg_ok {
            return Err(CoseError::WrongAlgorithm);
        }
        let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.point);
        sign1
            .verify_signature(b"", |sig, data| key.verify(data, sig))
            .map_err(|_| CoseError::BadSignature)?;
        sign1.payload.ok_or(CoseError::NoPayload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_roundtrip_and_tamper() {
        let (key, _) = SigningKey::generate().unwrap();
        let signed = key.sign(b"hello".to_vec()).unwrap();
        assert_eq!(key.public_key().verify(&signed).unwrap(), b"hello");

        let (other, _) = SigningKey::generate().unwrap();
        assert!(matches!(
            other.public_key().verify(&signed),
            Err(CoseError::BadSignature)
        ));

        // Flip one byte of the payload region.
        let mut tampered = signed.clone();
        let pos = tampered.windows(5).position(|w| w == b"hello").unwrap();
        tampered[pos] ^= 1;
        assert!(key.public_key().verify(&tampered).is_err());
        assert!(key.public_key().verify(b"\x00\x01garbage").is_err());
    }

    #[test]
    fn key_from_rcgen_certificate() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let key = SigningKey::from_pkcs8(&kp.serialize_der()).unwrap();
        let verifying = VerifyingKey::from_certificate(cert.der()).unwrap();
        assert_eq!(verifying, key.public_key());
        let signed = key.sign(vec![1, 2, 3]).unwrap();
        assert_eq!(verifying.verify(&signed).unwrap(), vec![1, 2, 3]);
    }
}
