//! Payload signing for the Margo HTTP API.
//!
//! Margo signs request bodies with the client certificate's key. Its text
//! (`api-requirements-and-security.md`, OpenAPI `PayloadSignature`) asks for
//! a SHA-256 digest of the body and an `X-Payload-Signature` header of the
//! form `<public key>;<digital signature>`, base64-encoded, and answers 400
//! for a missing or invalid content-digest header. Our reading, recorded in
//! `docs/decisions/0004-http-payload-signatures.md`:
//!
//! - `Content-Digest: sha-256=:<base64 of SHA-256(body)>:` (RFC 9530);
//! - `X-Payload-Signature: <base64 SubjectPublicKeyInfo DER>;<base64 ASN.1 DER
//!   ECDSA P-256 SHA-256 signature over the body>`.
//!
//! The verifier checks the digest, then that the public key in the header is
//! the key of the certificate it already trusts for that client, then the
//! signature.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use sha2::{Digest as _, Sha256};

use crate::sig_key::PublicKey;

/// Header carrying the body digest (RFC 9530).
pub const CONTENT_DIGEST: &str = "content-digest";
/// Header carrying the public key and signature (Margo).
pub const PAYLOAD_SIGNATURE: &str = "x-payload-signature";
/// Longest header value we parse.
pub const MAX_HEADER_LEN: usize = 1024;

/// DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a signed request was refused. [`HttpSigError::status`] maps it to the
/// HTTP status the Margo API specifies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpSigError {
    #[error("missing Content-Digest header (expected sha-256=:<base64>:)")]
    MissingDigest,
    #[error("Content-Digest header is not of the form sha-256=:<base64>:")]
    MalformedDigest,
    #[error("Content-Digest does not match the body")]
    DigestMismatch,
    #[error("missing X-Payload-Signature header")]
    MissingSignature,
    #[error("X-Payload-Signature is not <base64 public key>;<base64 signature>")]
    MalformedSignature,
    #[error("the public key in X-Payload-Signature is not the client certificate's key")]
    WrongKey,
    #[error("signature does not verify")]
    BadSignature,
    #[error("signing key is not a usable ECDSA P-256 PKCS#8 key")]
    BadKey,
}

impl HttpSigError {
    /// 400 for digest problems, 401 for signature problems (Margo OpenAPI).
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingDigest | Self::MalformedDigest | Self::DigestMismatch => 400,
            _ => 401,
        }
    }
}

/// The `Content-Digest` value for `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        data_encoding::BASE64.encode(&Sha256::digest(body))
    )
}

/// Checks a `Content-Digest` header value against `body` (RFC 9530
/// dictionary; `sha-256` and `sha-512` are checked, see
/// [`crate::http_msg_sig::check_content_digest`]).
pub fn verify_content_digest(header: Option<&str>, body: &[u8]) -> Result<(), HttpSigError> {
    use crate::http_msg_sig::{check_content_digest, DigestError};
    let value = header.ok_or(HttpSigError::MissingDigest)?;
    if value.len() > MAX_HEADER_LEN {
        return Err(HttpSigError::MalformedDigest);
    }
    check_content_digest(&[value], body).map_err(|e| match e {
        DigestError::Missing => HttpSigError::MissingDigest,
        DigestError::Mismatch(_) => HttpSigError::DigestMismatch,
        DigestError::Malformed(_) | DigestError::NoSupportedAlgorithm => {
            HttpSigError::MalformedDigest
        }
    })
}

/// Signs request bodies with a device key (ECDSA P-256, ASN.1 signatures).
pub struct PayloadSigner {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for PayloadSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PayloadSigner").finish_non_exhaustive()
    }
}

impl PayloadSigner {
    /// Loads a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, HttpSigError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8, &rng)
            .map_err(|_| HttpSigError::BadKey)?;
        Ok(Self { pair, rng })
    }

    /// The `X-Payload-Signature` value for `body`.
    pub fn sign(&self, body: &[u8]) -> Result<String, HttpSigError> {
        let sig = self
            .pair
            .sign(&self.rng, body)
            .map_err(|_| HttpSigError::BadKey)?;
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(self.pair.public_key().as_ref());
        Ok(format!(
            "{};{}",
            data_encoding::BASE64.encode(&spki),
            data_encoding::BASE64.encode(sig.as_ref())
        ))
    }

    /// Both headers for `body`: `(Content-Digest, X-Payload-Signature)`.
    pub fn headers(&self, body: &[u8]) -> Result<(String, String), HttpSigError> {
        Ok((content_digest(body), self.sign(body)?))
    }
}

/// Verifies both headers for `body` against the client's trusted public key
/// (`expected_point`: the uncompressed SEC1 point from its certificate, as
/// `pki::CertInfo::p256_public_key` gives it). The digest is required.
pub fn verify_request(
    digest_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    expected_point: &[u8],
) -> Result<(), HttpSigError> {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(expected_point);
    let key = PublicKey::from_spki(&spki).map_err(|_| HttpSigError::WrongKey)?;
    verify_with_key(digest_header, signature_header, body, &key, true)
}

/// Verifies `X-Payload-Signature` (and `Content-Digest`, when present or
/// `digest_required`) for `body` with the client's certificate key of any
/// supported type: the `<public key>` half must be that key's
/// SubjectPublicKeyInfo (as a tolerant reader, its bare BIT STRING content
/// — SEC1 point, PKCS#1 key — is accepted too); the signature is checked as
/// [`PublicKey::verify_payload`] says.
pub fn verify_with_key(
    digest_header: Option<&str>,
    signature_header: Option<&str>,
    body: &[u8],
    key: &PublicKey,
    digest_required: bool,
) -> Result<(), HttpSigError> {
    if digest_required || digest_header.is_some() {
        verify_content_digest(digest_header, body)?;
    }
    let value = signature_header.ok_or(HttpSigError::MissingSignature)?;
    // An RSA-4096 key and signature take about 1.4 KB of base64.
    if value.len() > 8 * MAX_HEADER_LEN {
        return Err(HttpSigError::MalformedSignature);
    }
    let (key_b64, sig_b64) = value
        .trim()
        .split_once(';')
        .ok_or(HttpSigError::MalformedSignature)?;
    let presented = data_encoding::BASE64
        .decode(key_b64.trim().as_bytes())
        .map_err(|_| HttpSigError::MalformedSignature)?;
    let sig = data_encoding::BASE64
        .decode(sig_b64.trim().as_bytes())
        .map_err(|_| HttpSigError::MalformedSignature)?;
    if presented != key.spki_der() && presented != key.raw() {
        return Err(HttpSigError::WrongKey);
    }
    if key.verify_payload(body, &sig) {
        Ok(())
    } else {
        Err(HttpSigError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cose::SigningKey;
    use proptest::prelude::*;

    fn signer() -> (PayloadSigner, Vec<u8>) {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let point = key.public_key().as_bytes().to_vec();
        (PayloadSigner::from_pkcs8(&pkcs8).unwrap(), point)
    }

    #[test]
    fn sign_and_verify() {
        let (s, point) = signer();
        let body = br#"{"apiVersion":"x"}"#;
        let (d, sig) = s.headers(body).unwrap();
        assert_eq!(verify_request(Some(&d), Some(&sig), body, &point), Ok(()));
    }

    #[test]
    fn each_failure_has_its_status() {
        let (s, point) = signer();
        let (_, other_point) = signer();
        let body = b"payload";
        let (d, sig) = s.headers(body).unwrap();
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            &'a [u8],
            &'a [u8],
            HttpSigError,
        );
        let cases: [Case; 6] = [
            (None, Some(&sig), body, &point, HttpSigError::MissingDigest),
            (
                Some("md5=:x:"),
                Some(&sig),
                body,
                &point,
                HttpSigError::MalformedDigest,
            ),
            (
                Some(&d),
                Some(&sig),
                b"other",
                &point,
                HttpSigError::DigestMismatch,
            ),
            (Some(&d), None, body, &point, HttpSigError::MissingSignature),
            (
                Some(&d),
                Some("nonsense"),
                body,
                &point,
                HttpSigError::MalformedSignature,
            ),
            (
                Some(&d),
                Some(&sig),
                body,
                &other_point,
                HttpSigError::WrongKey,
            ),
        ];
        for (dh, sh, b, p, want) in cases {
            let got = verify_request(dh, sh, b, p).unwrap_err();
            assert_eq!(got, want);
        }
        assert_eq!(HttpSigError::DigestMismatch.status(), 400);
        assert_eq!(HttpSigError::WrongKey.status(), 401);
        // Right key, signature over other bytes.
        let (_, sig_other) = s.headers(b"something else").unwrap();
        assert_eq!(
            verify_request(Some(&d), Some(&sig_other), body, &point),
            Err(HttpSigError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn garbage_headers_never_panic(d in ".{0,200}", s in ".{0,300}", body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = verify_request(Some(&d), Some(&s), &body, &[4u8; 65]);
        }
    }
}
