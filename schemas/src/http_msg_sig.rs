//! HTTP Message Signatures (RFC 9421) on requests, with `Content-Digest`
//! (RFC 9530), as the Margo security page (rc.2 era,
//! `api-requirements-and-security.md` at 8e402245) asks clients to sign:
//!
//! ```text
//! Content-Digest: sha-256=:<base64(SHA-256(body))>:
//! Signature-Input: sig1=("@method" "@target-uri" "content-digest");created=<unix>;keyid="<clientId>"
//! Signature: sig1=:<base64(signature)>:
//! ```
//!
//! The verifier ([`verify_request`]) parses both fields with the bounded RFC
//! 8941 parser of [`crate::sfv`], tries each signature label present in both
//! (`sig1` first), and accepts the first one that meets the [`Policy`] and
//! verifies: the covered components must include `@method`, one of
//! `@target-uri`/`@path`/`@request-target`, and `content-digest` when the
//! request has a body; `created` is required and must be inside the
//! window; `expires`, when present, must not have passed; the `keyid` must be
//! one the caller accepts; `alg`, when present, must suit the key (when
//! absent the key type decides). Supported components: `@method`,
//! `@target-uri`, `@authority`, `@scheme`, `@request-target`, `@path`,
//! `@query` and header fields without component parameters.
//!
//! Tolerance (documented in `docs/http-api.md`): header field component
//! names are matched case-insensitively and serialized as the signer wrote
//! them (the Margo page's example writes `"Content-Digest"`); the
//! `@signature-params` line is rebuilt canonically and, if that does not
//! verify, also taken verbatim from `Signature-Input`; ECDSA signatures may
//! be DER instead of `r||s` ([`PublicKey::verify`]).
//!
//! The signer ([`RequestSigner`]) is our agent's: ECDSA P-256, `r||s`.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use sha2::{Digest as _, Sha256, Sha512};

use crate::sfv::{self, BareItem, InnerList, Item, MemberValue, SfError};
pub use crate::sig_key::{Algorithm, KeyKind, PublicKey};

/// The field naming what each signature covers.
pub const SIGNATURE_INPUT: &str = "signature-input";
/// The field carrying the signatures.
pub const SIGNATURE: &str = "signature";
/// The body digest field (RFC 9530).
pub const CONTENT_DIGEST: &str = "content-digest";
/// Most signature labels tried on one request.
pub const MAX_LABELS: usize = 4;

/// Why a `Content-Digest` was refused (HTTP 400 in Margo's OpenAPI).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("missing Content-Digest header (the request has a body)")]
    Missing,
    #[error("Content-Digest is not a structured dictionary of digests: {0}")]
    Malformed(String),
    #[error("Content-Digest names no supported algorithm (sha-256 or sha-512)")]
    NoSupportedAlgorithm,
    #[error("Content-Digest {0} does not match the body")]
    Mismatch(&'static str),
}

/// Why a request signature was refused (HTTP 401).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgSigError {
    #[error("missing Signature-Input or Signature header")]
    Missing,
    #[error("{field} is malformed: {error}")]
    Malformed { field: &'static str, error: SfError },
    #[error("no signature label is present in both Signature-Input and Signature")]
    NoLabel,
    #[error("signature {label}: {reason}")]
    Refused { label: String, reason: String },
}

impl MsgSigError {
    fn refused(label: &str, reason: impl Into<String>) -> Self {
        Self::Refused {
            label: label.to_string(),
            reason: reason.into(),
        }
    }
}

/// A request as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The method, as sent (`GET`).
    pub method: &'a str,
    /// `https` or `http`.
    pub scheme: &'a str,
    /// The `Host` (or absolute-form authority) as sent.
    pub authority: &'a str,
    /// Path and query as in the request line (`/a/b?c=d`).
    pub path_and_query: &'a str,
    /// Every header field line, name and value.
    pub headers: &'a [(&'a str, &'a str)],
}

impl Request<'_> {
    /// Every line of the field `name` (case-insensitive).
    pub fn field_lines(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
            .collect()
    }

    fn path(&self) -> &str {
        let path = self
            .path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(p, _)| p);
        if path.is_empty() {
            "/"
        } else {
            path
        }
    }

    fn query(&self) -> String {
        match self.path_and_query.split_once('?') {
            Some((_, q)) => format!("?{q}"),
            None => "?".to_string(),
        }
    }

    fn normalized_authority(&self) -> String {
        let lower = self.authority.to_ascii_lowercase();
        let default = match self.scheme.to_ascii_lowercase().as_str() {
            "https" => ":443",
            "http" => ":80",
            _ => "",
        };
        match lower.strip_suffix(default) {
            Some(host) if !default.is_empty() => host.to_string(),
            _ => lower,
        }
    }

    /// The value of one covered component (RFC 9421 §2.1, §2.2).
    fn component(&self, item: &Item) -> Result<String, String> {
        let BareItem::String(name) = &item.bare else {
            return Err("a covered component is not a string".into());
        };
        if !item.params.is_empty() {
            return Err(format!(
                "component {name:?} has parameters, which this verifier does not support"
            ));
        }
        Ok(match name.as_str() {
            "@method" => self.method.to_string(),
            "@target-uri" => format!(
                "{}://{}{}",
                self.scheme.to_ascii_lowercase(),
                self.authority,
                self.path_and_query
            ),
            "@authority" => self.normalized_authority(),
            "@scheme" => self.scheme.to_ascii_lowercase(),
            "@request-target" => self.path_and_query.to_string(),
            "@path" => self.path().to_string(),
            "@query" => self.query(),
            derived if derived.starts_with('@') => {
                return Err(format!("derived component {derived:?} is not supported"))
            }
            field => {
                let lines = self.field_lines(field);
                if lines.is_empty() {
                    return Err(format!("covered field {field:?} is not in the request"));
                }
                lines
                    .iter()
                    .map(|l| l.trim_matches(|c| c == ' ' || c == '\t'))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        })
    }
}

/// The signature base (RFC 9421 §2.5) of `request` for the covered
/// components and parameters of `params`, with `params_line` as the
/// `@signature-params` value.
pub fn signature_base(
    request: &Request<'_>,
    params: &InnerList,
    params_line: &str,
) -> Result<String, String> {
    let mut base = String::new();
    let mut seen: Vec<String> = Vec::new();
    for item in &params.items {
        let mut id = String::new();
        sfv::serialize_item(item, &mut id);
        if seen.contains(&id.to_ascii_lowercase()) {
            return Err(format!("component {id} is covered twice"));
        }
        seen.push(id.to_ascii_lowercase());
        let value = request.component(item)?;
        if value.contains(['\n', '\r']) {
            return Err(format!("component {id} has a line break"));
        }
        base.push_str(&id);
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_line);
    Ok(base)
}

/// What the verifier demands beyond a valid signature.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Now, seconds since the Unix epoch.
    pub now: i64,
    /// Oldest `created` accepted, in seconds before `now`.
    pub max_age: u64,
    /// Latest `created` accepted, in seconds after `now` (clock skew).
    pub max_future_skew: u64,
    /// Whether the request has a body (then `content-digest` must be covered).
    pub has_body: bool,
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its label (`sig1`).
    pub label: String,
    /// Its `keyid`.
    pub keyid: String,
    /// Its `created`.
    pub created: i64,
    /// The algorithm it verified with.
    pub alg: Algorithm,
    /// The covered component names.
    pub components: Vec<String>,
}

fn int_param(list: &InnerList, key: &str, label: &str) -> Result<Option<i64>, MsgSigError> {
    match sfv::param(&list.params, key) {
        None => Ok(None),
        Some(BareItem::Integer(v)) => Ok(Some(*v)),
        Some(_) => Err(MsgSigError::refused(
            label,
            format!("parameter {key} is not an integer"),
        )),
    }
}

fn str_param<'a>(
    list: &'a InnerList,
    key: &str,
    label: &str,
) -> Result<Option<&'a str>, MsgSigError> {
    match sfv::param(&list.params, key) {
        None => Ok(None),
        Some(BareItem::String(v)) => Ok(Some(v)),
        Some(_) => Err(MsgSigError::refused(
            label,
            format!("parameter {key} is not a string"),
        )),
    }
}

/// One signature of a request: its label, its Signature-Input value (parsed
/// and as written) and its bytes.
struct Candidate<'a> {
    label: &'a str,
    list: &'a InnerList,
    raw: &'a str,
    signature: &'a [u8],
}

/// Checks one signature against the policy, the key and `keyid_ok`.
fn verify_one(
    request: &Request<'_>,
    key: &PublicKey,
    policy: &Policy,
    keyid_ok: &dyn Fn(&str) -> bool,
    candidate: &Candidate<'_>,
) -> Result<Verified, MsgSigError> {
    let Candidate {
        label,
        list,
        raw,
        signature,
    } = *candidate;
    let components: Vec<String> = list
        .items
        .iter()
        .map(|i| match &i.bare {
            BareItem::String(s) => s.to_ascii_lowercase(),
            _ => String::new(),
        })
        .collect();
    let covers = |name: &str| components.iter().any(|c| c == name);
    if !covers("@method") {
        return Err(MsgSigError::refused(
            label,
            "the covered components must include \"@method\"",
        ));
    }
    if !["@target-uri", "@path", "@request-target"]
        .iter()
        .any(|c| covers(c))
    {
        return Err(MsgSigError::refused(
            label,
            "the covered components must include \"@target-uri\", \"@path\" or \"@request-target\"",
        ));
    }
    if policy.has_body && !covers(CONTENT_DIGEST) {
        return Err(MsgSigError::refused(
            label,
            "the request has a body, so the covered components must include \"content-digest\"",
        ));
    }
    let created = int_param(list, "created", label)?
        .ok_or_else(|| MsgSigError::refused(label, "parameter created is required"))?;
    if policy.now.saturating_sub(created) > policy.max_age as i64 {
        return Err(MsgSigError::refused(
            label,
            format!(
                "created {created} is more than {} s in the past (now {})",
                policy.max_age, policy.now
            ),
        ));
    }
    if created.saturating_sub(policy.now) > policy.max_future_skew as i64 {
        return Err(MsgSigError::refused(
            label,
            format!(
                "created {created} is more than {} s in the future (now {})",
                policy.max_future_skew, policy.now
            ),
        ));
    }
    if let Some(expires) = int_param(list, "expires", label)? {
        if policy.now > expires {
            return Err(MsgSigError::refused(
                label,
                format!("expired at {expires} (now {})", policy.now),
            ));
        }
    }
    let keyid = str_param(list, "keyid", label)?
        .ok_or_else(|| MsgSigError::refused(label, "parameter keyid is required"))?;
    if !keyid_ok(keyid) {
        return Err(MsgSigError::refused(
            label,
            format!("keyid {keyid:?} does not identify this client"),
        ));
    }
    let algorithms: Vec<Algorithm> = match str_param(list, "alg", label)? {
        Some(name) => {
            let alg = Algorithm::from_name(name).ok_or_else(|| {
                MsgSigError::refused(label, format!("algorithm {name:?} is not supported"))
            })?;
            if alg.key_kind() != key.kind() {
                return Err(MsgSigError::refused(
                    label,
                    format!(
                        "algorithm {name} does not suit the client's {:?} key",
                        key.kind()
                    ),
                ));
            }
            vec![alg]
        }
        None => key.algorithms().to_vec(),
    };
    let canonical = sfv::serialize_inner_list(list);
    let mut lines = vec![canonical.as_str()];
    if raw != canonical {
        lines.push(raw);
    }
    for line in lines {
        let base =
            signature_base(request, list, line).map_err(|e| MsgSigError::refused(label, e))?;
        for alg in &algorithms {
            if key.verify(*alg, base.as_bytes(), signature) {
                return Ok(Verified {
                    label: label.to_string(),
                    keyid: keyid.to_string(),
                    created,
                    alg: *alg,
                    components,
                });
            }
        }
    }
    Err(MsgSigError::refused(
        label,
        "the signature does not verify with the client's key",
    ))
}

/// Verifies the RFC 9421 signature of `request` with `key` (see the module
/// docs). The `Content-Digest` against the body is checked separately
/// ([`check_content_digest`]).
pub fn verify_request(
    request: &Request<'_>,
    key: &PublicKey,
    policy: &Policy,
    keyid_ok: &dyn Fn(&str) -> bool,
) -> Result<Verified, MsgSigError> {
    let input_lines = request.field_lines(SIGNATURE_INPUT);
    let sig_lines = request.field_lines(SIGNATURE);
    if input_lines.is_empty() || sig_lines.is_empty() {
        return Err(MsgSigError::Missing);
    }
    let inputs = sfv::parse_dictionary(&input_lines).map_err(|error| MsgSigError::Malformed {
        field: "Signature-Input",
        error,
    })?;
    let signatures = sfv::parse_dictionary(&sig_lines).map_err(|error| MsgSigError::Malformed {
        field: "Signature",
        error,
    })?;
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    for input in &inputs {
        let MemberValue::InnerList(list) = &input.value else {
            continue;
        };
        let Some(sig) = signatures.iter().find(|s| s.key == input.key) else {
            continue;
        };
        let MemberValue::Item(Item {
            bare: BareItem::ByteSeq(bytes),
            ..
        }) = &sig.value
        else {
            continue;
        };
        candidates.push(Candidate {
            label: &input.key,
            list,
            raw: &input.raw,
            signature: bytes,
        });
    }
    // sig1 first, then in order.
    candidates.sort_by_key(|c| c.label != "sig1");
    candidates.truncate(MAX_LABELS);
    let mut first_error = None;
    for candidate in &candidates {
        match verify_one(request, key, policy, keyid_ok, candidate) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(MsgSigError::NoLabel))
}

/// The `Content-Digest` value for `body` (sha-256).
pub fn content_digest(body: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        data_encoding::BASE64.encode(&Sha256::digest(body))
    )
}

/// Checks `Content-Digest` field lines against `body` (RFC 9530): a
/// dictionary of algorithm → byte sequence; `sha-256` and `sha-512` are
/// checked (every one present must match, at least one must be present),
/// other algorithms are ignored.
pub fn check_content_digest(lines: &[&str], body: &[u8]) -> Result<(), DigestError> {
    if lines.is_empty() {
        return Err(DigestError::Missing);
    }
    let members =
        sfv::parse_dictionary(lines).map_err(|e| DigestError::Malformed(e.to_string()))?;
    let mut checked = 0;
    for member in &members {
        let MemberValue::Item(Item {
            bare: BareItem::ByteSeq(claimed),
            ..
        }) = &member.value
        else {
            return Err(DigestError::Malformed(format!(
                "{} is not a byte sequence",
                member.key
            )));
        };
        let (name, ok) = match member.key.as_str() {
            "sha-256" => (
                "sha-256",
                claimed.as_slice() == Sha256::digest(body).as_slice(),
            ),
            "sha-512" => (
                "sha-512",
                claimed.as_slice() == Sha512::digest(body).as_slice(),
            ),
            _ => continue,
        };
        if !ok {
            return Err(DigestError::Mismatch(name));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(DigestError::NoSupportedAlgorithm);
    }
    Ok(())
}

/// Why signing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("signing key is not a usable ECDSA P-256 PKCS#8 key")]
    BadKey,
    #[error("keyid {0:?} cannot be written as a structured-field string")]
    BadKeyId(String),
}

/// Signs our agent's requests: ECDSA P-256 SHA-256, `r||s` (RFC 9421
/// §3.3.4), covering `@method`, `@target-uri` and, when there is a body,
/// `content-digest`; `created`, `expires` (created + [`Self::validity`]),
/// `keyid` and `alg` (the form of readings R10).
pub struct RequestSigner {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    keyid: String,
    /// Seconds between `created` and `expires`. Default 300.
    pub validity: i64,
}

impl std::fmt::Debug for RequestSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestSigner")
            .field("keyid", &self.keyid)
            .finish_non_exhaustive()
    }
}

impl RequestSigner {
    /// A signer with a PKCS#8 DER P-256 key, naming itself `keyid`.
    pub fn from_pkcs8(pkcs8: &[u8], keyid: &str) -> Result<Self, SignError> {
        if !keyid.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(SignError::BadKeyId(keyid.to_string()));
        }
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
            .map_err(|_| SignError::BadKey)?;
        Ok(Self {
            pair,
            rng,
            keyid: keyid.to_string(),
            validity: 300,
        })
    }

    /// The header fields that sign a request: `method`, the full
    /// `target_uri` as sent (`https://host:port/path?query`), the body (none
    /// or empty: no `Content-Digest`), `created` in Unix seconds. Returns
    /// `(name, value)` pairs, names lower case.
    pub fn sign(
        &self,
        method: &str,
        target_uri: &str,
        body: Option<&[u8]>,
        created: i64,
    ) -> Result<Vec<(&'static str, String)>, SignError> {
        let body = body.filter(|b| !b.is_empty());
        let mut components = vec!["@method", "@target-uri"];
        let mut headers = Vec::new();
        let digest = body.map(content_digest);
        if let Some(d) = &digest {
            components.push(CONTENT_DIGEST);
            headers.push((CONTENT_DIGEST, d.clone()));
        }
        let list = InnerList {
            items: components
                .iter()
                .map(|c| Item {
                    bare: BareItem::String((*c).to_string()),
                    params: Vec::new(),
                })
                .collect(),
            params: vec![
                ("created".into(), BareItem::Integer(created)),
                (
                    "expires".into(),
                    BareItem::Integer(created.saturating_add(self.validity)),
                ),
                ("keyid".into(), BareItem::String(self.keyid.clone())),
                (
                    "alg".into(),
                    BareItem::String(Algorithm::EcdsaP256Sha256.name().into()),
                ),
            ],
        };
        let params_line = sfv::serialize_inner_list(&list);
        let (scheme, rest) = target_uri
            .split_once("://")
            .unwrap_or(("https", target_uri));
        let (authority, path_and_query) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let header_refs: Vec<(&str, &str)> =
            headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let request = Request {
            method,
            scheme,
            authority,
            path_and_query,
            headers: &header_refs,
        };
        let base = signature_base(&request, &list, &params_line).map_err(|_| SignError::BadKey)?;
        let sig = self
            .pair
            .sign(&self.rng, base.as_bytes())
            .map_err(|_| SignError::BadKey)?;
        headers.push((SIGNATURE_INPUT, format!("sig1={params_line}")));
        headers.push((
            SIGNATURE,
            format!("sig1=:{}:", data_encoding::BASE64.encode(sig.as_ref())),
        ));
        Ok(headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cose::SigningKey;
    use proptest::prelude::*;

    fn pem_body(pem: &str) -> Vec<u8> {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        data_encoding::BASE64.decode(b64.as_bytes()).unwrap()
    }

    // RFC 9421 Appendix B.1.3, test-key-ecc-p256 (public half).
    const ECC_P256_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqIVYZVLCrPZHGHjP17CTW0/+D9Lf
w0EkjqF7xB4FivAxzic30tMM4GF+hR6Dxh71Z50VGGdldkkDXZCnTNnoXQ==
-----END PUBLIC KEY-----";
    // RFC 9421 Appendix B.1.4, test-key-ed25519 (public half).
    const ED25519_PUB: &str = "-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----";
    // RFC 9421 Appendix B.1.2, test-key-rsa-pss (public half).
    const RSA_PSS_PUB: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----";

    /// RFC 9421 Appendix B.2 `test-request` headers (Content-Digest
    /// unwrapped), plus the given signature fields.
    fn test_request_headers(
        input: &'static str,
        sig: &'static str,
    ) -> Vec<(&'static str, &'static str)> {
        vec![
            ("Host", "example.com"),
            ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("Content-Type", "application/json"),
            (
                "Content-Digest",
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
            ),
            ("Content-Length", "18"),
            ("Signature-Input", input),
            ("Signature", sig),
        ]
    }

    fn test_request<'a>(headers: &'a [(&'a str, &'a str)]) -> Request<'a> {
        Request {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path_and_query: "/foo?param=Value&Pet=dog",
            headers,
        }
    }

    /// RFC 9421 test vectors cover fewer components than our policy needs
    /// and are from 2021: check the signature only.
    fn vector_policy() -> Policy {
        Policy {
            now: 1618884473,
            max_age: 300,
            max_future_skew: 60,
            has_body: false,
        }
    }

    fn verify_vector(request: &Request<'_>, key: &PublicKey) -> Result<Algorithm, MsgSigError> {
        // Use the lower-level pieces: the vectors do not all cover @method.
        let inputs = sfv::parse_dictionary(&request.field_lines(SIGNATURE_INPUT)).unwrap();
        let sigs = sfv::parse_dictionary(&request.field_lines(SIGNATURE)).unwrap();
        let MemberValue::InnerList(list) = &inputs[0].value else {
            panic!()
        };
        let MemberValue::Item(Item {
            bare: BareItem::ByteSeq(sig),
            ..
        }) = &sigs[0].value
        else {
            panic!()
        };
        let base = signature_base(request, list, &sfv::serialize_inner_list(list)).unwrap();
        key.algorithms()
            .iter()
            .copied()
            .find(|a| key.verify(*a, base.as_bytes(), sig))
            .ok_or(MsgSigError::NoLabel)
    }

    #[test]
    fn rfc9421_b26_ed25519_request() {
        // Appendix B.2.6 (Signing a Request using ed25519).
        let headers = test_request_headers(
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        );
        let request = test_request(&headers);
        let key = PublicKey::from_spki(&pem_body(ED25519_PUB)).unwrap();
        assert_eq!(verify_vector(&request, &key), Ok(Algorithm::Ed25519));
        // Our policy also accepts it (it covers @method and @path), with a
        // keyid check and the signing time as "now".
        let policy = vector_policy();
        let v = verify_request(&request, &key, &policy, &|k| k == "test-key-ed25519").unwrap();
        assert_eq!(v.label, "sig-b26");
        assert_eq!(v.created, 1618884473);
        // Ten minutes later it is too old; another keyid is refused.
        let late = Policy {
            now: 1618884473 + 600,
            ..policy
        };
        assert!(verify_request(&request, &key, &late, &|_| true).is_err());
        assert!(verify_request(&request, &key, &policy, &|k| k == "other").is_err());
    }

    #[test]
    fn rfc9421_b23_rsa_pss_sha512_full_coverage() {
        // Appendix B.2.3 (Full Coverage using rsa-pss-sha512).
        let headers = test_request_headers(
            r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
            "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:",
        );
        let request = test_request(&headers);
        let key = PublicKey::from_spki(&pem_body(RSA_PSS_PUB)).unwrap();
        assert_eq!(key.kind(), KeyKind::Rsa);
        assert_eq!(verify_vector(&request, &key), Ok(Algorithm::RsaPssSha512));
        let policy = Policy {
            has_body: true,
            ..vector_policy()
        };
        let v = verify_request(&request, &key, &policy, &|_| true).unwrap();
        assert_eq!(v.alg, Algorithm::RsaPssSha512);
        // The body digest of the test request (sha-512 of {"hello": "world"}).
        let lines = request.field_lines(CONTENT_DIGEST);
        assert_eq!(
            check_content_digest(&lines, br#"{"hello": "world"}"#),
            Ok(())
        );
        assert_eq!(
            check_content_digest(&lines, br#"{"hello": "World"}"#),
            Err(DigestError::Mismatch("sha-512"))
        );
    }

    #[test]
    fn rfc9421_b3_ecdsa_p256_request() {
        // Appendix B.3 (TLS-Terminating Proxies): ecdsa-p256-sha256 over a
        // request, r||s.
        let cert = ":MIIBqDCCAU6gAwIBAgIBBzAKBggqhkjOPQQDAjA6MRswGQYDVQQKDBJMZXQncyBBdXRoZW50aWNhdGUxGzAZBgNVBAMMEkxBIEludGVybWVkaWF0ZSBDQTAeFw0yMDAxMTQyMjU1MzNaFw0yMTAxMjMyMjU1MzNaMA0xCzAJBgNVBAMMAkJDMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE8YnXXfaUgmnMtOXU/IncWalRhebrXmckC8vdgJ1p5Be5F/3YC8OthxM4+k1M6aEAEFcGzkJiNy6J84y7uzo9M6NyMHAwCQYDVR0TBAIwADAfBgNVHSMEGDAWgBRm3WjLa38lbEYCuiCPct0ZaSED2DAOBgNVHQ8BAf8EBAMCBsAwEwYDVR0lBAwwCgYIKwYBBQUHAwIwHQYDVR0RAQH/BBMwEYEPYmRjQGV4YW1wbGUuY29tMAoGCCqGSM49BAMCA0gAMEUCIBHda/r1vaL6G3VliL4/Di6YK0Q6bMjeSkC3dFCOOB8TAiEAx/kHSB4urmiZ0NX5r5XarmPk0wmuydBVoU4hBVZ1yhk=:";
        let headers = [
            ("Host", "service.internal.example"),
            ("Date", "Tue, 20 Apr 2021 02:07:55 GMT"),
            ("Content-Type", "application/json"),
            ("Content-Length", "18"),
            ("Client-Cert", cert),
            (
                "Signature-Input",
                r#"ttrp=("@path" "@query" "@method" "@authority" "client-cert");created=1618884473;keyid="test-key-ecc-p256""#,
            ),
            (
                "Signature",
                "ttrp=:xVMHVpawaAC/0SbHrKRs9i8I3eOs5RtTMGCWXm/9nvZzoHsIg6Mce9315T6xoklyy0yzhD9ah4JHRwMLOgmizw==:",
            ),
        ];
        let request = Request {
            authority: "service.internal.example",
            ..test_request(&headers)
        };
        let key = PublicKey::from_spki(&pem_body(ECC_P256_PUB)).unwrap();
        assert_eq!(
            verify_vector(&request, &key),
            Ok(Algorithm::EcdsaP256Sha256)
        );
        let v = verify_request(&request, &key, &vector_policy(), &|k| {
            k == "test-key-ecc-p256"
        })
        .unwrap();
        assert_eq!(v.label, "ttrp");
        // Another method breaks it.
        let other = Request {
            method: "GET",
            ..request
        };
        assert!(verify_request(&other, &key, &vector_policy(), &|_| true).is_err());
    }

    #[test]
    fn rfc9421_b24_ecdsa_p256_base() {
        // Appendix B.2.4 signs a response ("@status"), which requests never
        // have: verify its signature over the base the RFC prints.
        let base = "\"@status\": 200\n\"content-type\": application/json\n\"content-digest\": sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:\n\"content-length\": 23\n\"@signature-params\": (\"@status\" \"content-type\" \"content-digest\" \"content-length\");created=1618884473;keyid=\"test-key-ecc-p256\"";
        let sig = data_encoding::BASE64
            .decode(b"wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==")
            .unwrap();
        assert_eq!(sig.len(), 64);
        let key = PublicKey::from_spki(&pem_body(ECC_P256_PUB)).unwrap();
        assert!(key.verify(Algorithm::EcdsaP256Sha256, base.as_bytes(), &sig));
        assert!(!key.verify(Algorithm::EcdsaP256Sha256, b"other", &sig));
        // The body's sha-512 digest as the RFC gives it.
        assert_eq!(
            check_content_digest(
                &["sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:"],
                br#"{"message": "good dog"}"#
            ),
            Ok(())
        );
    }

    fn agent() -> (RequestSigner, PublicKey) {
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(key.public_key().as_bytes());
        (
            RequestSigner::from_pkcs8(&pkcs8, "client-1").unwrap(),
            PublicKey::from_spki(&spki).unwrap(),
        )
    }

    fn policy(now: i64, has_body: bool) -> Policy {
        Policy {
            now,
            max_age: 300,
            max_future_skew: 60,
            has_body,
        }
    }

    fn as_request<'a>(
        method: &'a str,
        path: &'a str,
        headers: &'a [(&'a str, &'a str)],
    ) -> Request<'a> {
        Request {
            method,
            scheme: "https",
            authority: "wfm.example:8443",
            path_and_query: path,
            headers,
        }
    }

    #[test]
    fn agent_signature_round_trip_and_binding() {
        let (signer, key) = agent();
        let uri = "https://wfm.example:8443/api/v1/clients/client-1/deployments";
        let signed = signer.sign("GET", uri, None, 1_700_000_000).unwrap();
        assert!(signed.iter().all(|(n, _)| *n != CONTENT_DIGEST));
        let input = &signed
            .iter()
            .find(|(n, _)| *n == SIGNATURE_INPUT)
            .unwrap()
            .1;
        assert_eq!(
            input,
            r#"sig1=("@method" "@target-uri");created=1700000000;expires=1700000300;keyid="client-1";alg="ecdsa-p256-sha256""#
        );
        let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let keyid = |k: &str| k == "client-1";
        let get = as_request("GET", "/api/v1/clients/client-1/deployments", &headers);
        let v = verify_request(&get, &key, &policy(1_700_000_010, false), &keyid).unwrap();
        assert_eq!(v.alg, Algorithm::EcdsaP256Sha256);
        // Raw r||s.
        let sig = &signed.iter().find(|(n, _)| *n == SIGNATURE).unwrap().1;
        assert_eq!(
            data_encoding::BASE64
                .decode(
                    sig.trim_start_matches("sig1=:")
                        .trim_end_matches(':')
                        .as_bytes()
                )
                .unwrap()
                .len(),
            64
        );
        // Replayed as DELETE, or on another path: refused.
        let delete = as_request("DELETE", "/api/v1/clients/client-1/deployments", &headers);
        assert!(verify_request(&delete, &key, &policy(1_700_000_010, false), &keyid).is_err());
        let other = as_request("GET", "/api/v1/clients/client-1/capabilities/d", &headers);
        assert!(verify_request(&other, &key, &policy(1_700_000_010, false), &keyid).is_err());
        // Expired (created + 300 passed, even with a longer window).
        let long = Policy {
            max_age: 10_000,
            ..policy(1_700_000_400, false)
        };
        let err = verify_request(&get, &key, &long, &keyid).unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        // Too far in the future.
        let err = verify_request(&get, &key, &policy(1_699_999_000, false), &keyid).unwrap_err();
        assert!(err.to_string().contains("future"), "{err}");
    }

    #[test]
    fn body_needs_covered_digest() {
        let (signer, key) = agent();
        let uri = "https://wfm.example:8443/api/v1/clients/client-1/deployments/d/status";
        let body = br#"{"x":1}"#;
        let signed = signer.sign("POST", uri, Some(body), 1_700_000_000).unwrap();
        let headers: Vec<(&str, &str)> = signed.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let post = as_request(
            "POST",
            "/api/v1/clients/client-1/deployments/d/status",
            &headers,
        );
        verify_request(&post, &key, &policy(1_700_000_000, true), &|_| true).unwrap();
        assert_eq!(
            check_content_digest(&post.field_lines(CONTENT_DIGEST), body),
            Ok(())
        );
        // A GET-style signature (no content-digest) on a request with a body.
        let bare = signer.sign("POST", uri, None, 1_700_000_000).unwrap();
        let headers: Vec<(&str, &str)> = bare.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let post = as_request(
            "POST",
            "/api/v1/clients/client-1/deployments/d/status",
            &headers,
        );
        let err = verify_request(&post, &key, &policy(1_700_000_000, true), &|_| true).unwrap_err();
        assert!(err.to_string().contains("content-digest"), "{err}");
    }

    #[test]
    fn margo_page_spelling_and_der_signatures_are_tolerated() {
        // The Margo page writes "Content-Digest" in the component list;
        // a DER ECDSA signature is accepted too.
        let (key, pkcs8) = SigningKey::generate().unwrap();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &pkcs8,
            &SystemRandom::new(),
        )
        .unwrap();
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(key.public_key().as_bytes());
        let public = PublicKey::from_spki(&spki).unwrap();
        let body = br#"{"a":1}"#;
        let digest = content_digest(body);
        let params =
            r#"("@method" "@target-uri" "Content-Digest");created=1680575171;keyid="my-key""#;
        let base = format!(
            "\"@method\": POST\n\"@target-uri\": https://api.example.com/resource\n\"Content-Digest\": {digest}\n\"@signature-params\": {params}"
        );
        let sig = pair.sign(&SystemRandom::new(), base.as_bytes()).unwrap();
        let input = format!("sig1={params}");
        let sig_field = format!("sig1=:{}:", data_encoding::BASE64.encode(sig.as_ref()));
        let headers = [
            ("Host", "api.example.com"),
            ("Content-Digest", digest.as_str()),
            ("Signature-Input", input.as_str()),
            ("Signature", sig_field.as_str()),
        ];
        let request = Request {
            method: "POST",
            scheme: "https",
            authority: "api.example.com",
            path_and_query: "/resource",
            headers: &headers,
        };
        verify_request(&request, &public, &policy(1680575171, true), &|k| {
            k == "my-key"
        })
        .unwrap();
    }

    #[test]
    fn refusals_name_the_reason() {
        let (signer, key) = agent();
        let uri = "https://wfm.example:8443/p";
        let now = 1_700_000_000;
        let cases: [(&str, &str); 6] = [
            (
                r#"sig1=("@target-uri");created=1700000000;keyid="client-1""#,
                "@method",
            ),
            (
                r#"sig1=("@method");created=1700000000;keyid="client-1""#,
                "@target-uri",
            ),
            (
                r#"sig1=("@method" "@path");keyid="client-1""#,
                "created is required",
            ),
            (
                r#"sig1=("@method" "@path");created=1700000000"#,
                "keyid is required",
            ),
            (
                r#"sig1=("@method" "@path");created=1700000000;keyid="client-1";alg="rsa-pss-sha512""#,
                "does not suit",
            ),
            (
                r#"sig1=("@method" "@path" "@status");created=1700000000;keyid="client-1""#,
                "@status",
            ),
        ];
        let signed = signer.sign("GET", uri, None, now).unwrap();
        let sig = signed
            .iter()
            .find(|(n, _)| *n == SIGNATURE)
            .unwrap()
            .1
            .clone();
        for (input, want) in cases {
            let headers = [("Signature-Input", input), ("Signature", sig.as_str())];
            let r = as_request("GET", "/p", &headers);
            let err = verify_request(&r, &key, &policy(now, false), &|_| true).unwrap_err();
            assert!(err.to_string().contains(want), "{input}: {err}");
        }
        let headers = [("Signature", sig.as_str())];
        assert_eq!(
            verify_request(
                &as_request("GET", "/p", &headers),
                &key,
                &policy(now, false),
                &|_| true
            ),
            Err(MsgSigError::Missing)
        );
        // Several labels: the one that verifies wins.
        let good = signed
            .iter()
            .find(|(n, _)| *n == SIGNATURE_INPUT)
            .unwrap()
            .1
            .clone();
        let inputs = format!(
            "{}, {}",
            good.replacen("sig1", "b", 1),
            r#"sig1=("@method" "@path");created=1;keyid="x""#
        );
        let sigs = format!("{}, sig1=:AAAA:", sig.replacen("sig1", "b", 1));
        let headers = [
            ("Signature-Input", inputs.as_str()),
            ("Signature", sigs.as_str()),
        ];
        let v = verify_request(
            &as_request("GET", "/p", &headers),
            &key,
            &policy(now, false),
            &|k| k == "client-1",
        )
        .unwrap();
        assert_eq!(v.label, "b");
    }

    #[test]
    fn content_digest_forms() {
        let body = b"abc";
        let d256 = content_digest(body);
        assert_eq!(check_content_digest(&[&d256], body), Ok(()));
        let d512 = format!(
            "sha-512=:{}:",
            data_encoding::BASE64.encode(&Sha512::digest(body))
        );
        assert_eq!(check_content_digest(&[&d512], body), Ok(()));
        let both = format!("{d256}, {d512}, md5=:AAAA:");
        assert_eq!(check_content_digest(&[&both], body), Ok(()));
        assert_eq!(check_content_digest(&[], body), Err(DigestError::Missing));
        assert_eq!(
            check_content_digest(&["md5=:AAAA:"], body),
            Err(DigestError::NoSupportedAlgorithm)
        );
        assert!(matches!(
            check_content_digest(&["sha-256=abc"], body),
            Err(DigestError::Malformed(_))
        ));
        assert!(matches!(
            check_content_digest(&["sha-256"], body),
            Err(DigestError::Malformed(_))
        ));
        assert_eq!(
            check_content_digest(&[&d256], b"abd"),
            Err(DigestError::Mismatch("sha-256"))
        );
    }

    proptest! {
        #[test]
        fn verifier_never_panics(input in ".{0,300}", sig in ".{0,300}", digest in ".{0,120}") {
            let (_, key) = agent();
            let headers = [
                ("Signature-Input", input.as_str()),
                ("Signature", sig.as_str()),
                ("Content-Digest", digest.as_str()),
            ];
            let r = as_request("POST", "/x?y", &headers);
            let _ = verify_request(&r, &key, &policy(0, true), &|_| true);
            let _ = check_content_digest(&[&digest], b"body");
        }

        #[test]
        fn verifier_never_panics_on_near_valid(input in r#"sig1=\([ "@a-z\-]{0,60}\)(;[a-z]{1,8}=[0-9"a-z\-]{1,12}){0,5}"#) {
            let (_, key) = agent();
            let headers = [
                ("Signature-Input", input.as_str()),
                ("Signature", "sig1=:AAAA:"),
            ];
            let r = as_request("GET", "/", &headers);
            prop_assert!(verify_request(&r, &key, &policy(0, false), &|_| true).is_err());
        }
    }
}
