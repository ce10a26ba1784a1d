//! The spec WFM's verifier of Margo's older request signature,
//! `X-Payload-Signature: base64(<public key>);base64(<signature>)` over the
//! body (`api-requirements-and-security.md` as of 0b075def; the 1.0.0 and
//! rc.2 OpenAPI `PayloadSignature`): ECDSA P-256 over SHA-256 of the body,
//! the signature DER or raw `r || s`, the key the onboarded certificate's.

use data_encoding::BASE64;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};

/// The P-256 public key point of a certificate or SubjectPublicKeyInfo.
pub fn cert_point(der: &[u8]) -> Option<Vec<u8>> {
    // The SubjectPublicKeyInfo of P-256 ends with the 65-byte uncompressed point.
    let marker = [0x03u8, 0x42, 0x00, 0x04];
    let at = der.windows(4).position(|w| w == marker)?;
    der.get(at + 3..at + 3 + 65).map(<[u8]>::to_vec)
}

/// Verifies `X-Payload-Signature: base64(<public key>);base64(<signature>)`
/// over `body` against the onboarded certificate's key.
pub fn verify(header: &str, body: &[u8], cert_der: &[u8]) -> bool {
    let Some((key_b64, sig_b64)) = header.trim().split_once(';') else {
        return false;
    };
    let (Ok(key), Ok(sig)) = (
        BASE64.decode(key_b64.trim().as_bytes()),
        BASE64.decode(sig_b64.trim().as_bytes()),
    ) else {
        return false;
    };
    let Some(expected) = cert_point(cert_der) else {
        return false;
    };
    // The key as an SPKI or as the bare point; it must be the onboarded one.
    let point = if key.len() == 65 {
        key
    } else {
        match cert_point(&key) {
            Some(p) => p,
            None => return false,
        }
    };
    if point != expected {
        return false;
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(body, &sig)
        .is_ok()
        || UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(body, &sig)
            .is_ok()
}
