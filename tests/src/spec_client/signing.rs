//! The two request-signing schemes of the Margo texts, written from them.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Result};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use sha2::{Digest as _, Sha256};

/// `Content-Digest: sha-256=:<base64(SHA256(body))>:` (RFC 9530 §2, as the
/// 8e402245 page writes it).
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        data_encoding::BASE64.encode(&Sha256::digest(body))
    )
}

/// Seconds since the Unix epoch (the RFC 9421 `created` parameter).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// RFC 9421 HTTP Message Signatures as `api-requirements-and-security.md`
/// (version 8e402245, "Device Management Client") prescribes:
///
/// > The device management client MUST create a Signature Base String
/// > including @method, @target-uri, and Content-Digest. ...
/// > `@signature-params: ("@method" "@target-uri" "Content-Digest");created=1680575171;keyid="my-rsa-key"`
/// > Signature-Input ... `sig1=("@method" "@target-uri" "Content-Digest");created=<...>;keyid="<...>"`
/// > Signature: `sig1=:<base64(signature)>:`
///
/// The signature base follows RFC 9421 §2.5 (one `"<component>": <value>`
/// line per covered component, then `"@signature-params": <params>`), and
/// ecdsa-p256-sha256 signatures are the 64-byte `r || s` of §3.3.4. The
/// page names no `alg` and no `expires`; neither is sent. The key id is
/// the client id: "It looks up the client certificate from the Client-ID
/// in the API Request URL". `content-digest` is covered only when the
/// request has content ("Content-Digest (if body is present)").
pub struct Rfc9421Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    keyid: String,
    digest_component: String,
}

impl Rfc9421Signer {
    /// A signer with a P-256 PKCS#8 key and `keyid`.
    pub fn new(key_pkcs8: &[u8], keyid: &str) -> Result<Self> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key_pkcs8, &rng)
            .map_err(|e| anyhow!("P-256 PKCS#8 key: {e}"))?;
        Ok(Self {
            key,
            rng,
            keyid: keyid.to_string(),
            digest_component: "content-digest".to_string(),
        })
    }

    /// Names the digest component as given (RFC 9421 §2.1 wants the
    /// lowercase field name; the page writes `"Content-Digest"`).
    pub fn with_digest_component(mut self, name: &str) -> Self {
        self.digest_component = name.to_string();
        self
    }

    /// The signature base (RFC 9421 §2.5) and the `Signature-Input` member
    /// value for a request.
    pub fn signature_base(
        &self,
        method: &str,
        target_uri: &str,
        digest: Option<&str>,
        created: u64,
    ) -> (String, String) {
        let mut components = vec!["\"@method\"".to_string(), "\"@target-uri\"".to_string()];
        let mut base = format!("\"@method\": {method}\n\"@target-uri\": {target_uri}\n");
        if let Some(digest) = digest {
            components.push(format!("\"{}\"", self.digest_component));
            base.push_str(&format!("\"{}\": {digest}\n", self.digest_component));
        }
        let params = format!(
            "({});created={created};keyid=\"{}\"",
            components.join(" "),
            self.keyid
        );
        base.push_str(&format!("\"@signature-params\": {params}"));
        (base, params)
    }

    /// Raw `r || s` signature of `base`.
    pub fn sign(&self, base: &[u8]) -> Result<Vec<u8>> {
        Ok(self
            .key
            .sign(&self.rng, base)
            .map_err(|e| anyhow!("sign: {e}"))?
            .as_ref()
            .to_vec())
    }

    /// `Content-Digest` (with content), `Signature-Input` and `Signature`.
    pub fn headers(
        &self,
        method: &str,
        target_uri: &str,
        body: Option<&[u8]>,
        created: u64,
    ) -> Result<Vec<(String, String)>> {
        let digest = body.map(content_digest);
        let (base, params) = self.signature_base(method, target_uri, digest.as_deref(), created);
        let signature = self.sign(base.as_bytes())?;
        let mut headers = Vec::new();
        if let Some(d) = digest {
            headers.push(("content-digest".to_string(), d));
        }
        headers.push(("signature-input".to_string(), format!("sig1={params}")));
        headers.push((
            "signature".to_string(),
            format!("sig1=:{}:", data_encoding::BASE64.encode(&signature)),
        ));
        Ok(headers)
    }
}

/// DER of a P-256 SubjectPublicKeyInfo up to the key (RFC 5480 §2):
/// SEQUENCE(89) { SEQUENCE(19) { OID 1.2.840.10045.2.1 (id-ecPublicKey),
/// OID 1.2.840.10045.3.1.7 (secp256r1) }, BIT STRING(66) 0 unused bits },
/// followed by the 65-byte uncompressed point.
const P256_SPKI_HEAD: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// `X-Payload-Signature` of the older `api-requirements-and-security.md`
/// ("Signing Payloads"):
///
/// > 1. Generate a SHA-256 hash value for the request's body
/// > 2. Create a digital signature by using the message source
/// >    certificates's private key to encrypt the the hash value
/// > 3. Base-64 encode the certificate's public key and the digital
/// >    signature in the format of `<public key>;<digital signature>`
/// > 3. Include the base-64 encoded string in the request's
/// >    `X-Payload-Signature` header
///
/// The encodings are not specified; this follows the project's recorded
/// reading (decision 0004): each half base64 on its own, the key as
/// SubjectPublicKeyInfo DER, the signature ECDSA P-256 SHA-256 in ASN.1 DER
/// over the body (the empty body for a request without content). The
/// OpenAPI's 400 "Missing or invalid content-digest header" implies a
/// `Content-Digest` with content; none is sent without.
pub struct XPayloadSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl XPayloadSigner {
    /// A signer with a P-256 PKCS#8 key.
    pub fn new(key_pkcs8: &[u8]) -> Result<Self> {
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, key_pkcs8, &rng)
            .map_err(|e| anyhow!("P-256 PKCS#8 key: {e}"))?;
        Ok(Self { key, rng })
    }

    /// The header value for `body`.
    pub fn value(&self, body: &[u8]) -> Result<String> {
        let signature = self
            .key
            .sign(&self.rng, body)
            .map_err(|e| anyhow!("sign: {e}"))?;
        let mut spki = P256_SPKI_HEAD.to_vec();
        spki.extend_from_slice(self.key.public_key().as_ref());
        Ok(format!(
            "{};{}",
            data_encoding::BASE64.encode(&spki),
            data_encoding::BASE64.encode(signature.as_ref())
        ))
    }

    /// `Content-Digest` (with content) and `X-Payload-Signature`.
    pub fn headers(&self, body: Option<&[u8]>) -> Result<Vec<(String, String)>> {
        let mut headers = Vec::new();
        if let Some(b) = body {
            headers.push(("content-digest".to_string(), content_digest(b)));
        }
        headers.push((
            "x-payload-signature".to_string(),
            self.value(body.unwrap_or_default())?,
        ));
        Ok(headers)
    }
}
