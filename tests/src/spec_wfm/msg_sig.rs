//! The spec WFM's verifier of HTTP Message Signatures (RFC 9421) with
//! `Content-Digest` (RFC 9530), written from the RFCs' text and the Margo
//! page that requires them (`api-requirements-and-security.md` as of
//! 8e402245, "Payload Security Method"), sharing no code or reading with
//! `margo_schemas::http_msg_sig`: a mistake there must not be repeated here.
//!
//! What is checked, in this order, for each signature label in
//! `Signature-Input` until one passes:
//! - the label's value is an Inner List of component identifiers (Strings
//!   without parameters: `;sf`, `;key`, `;bs`, `;req`, `;tr`, `;name` are
//!   not supported and refused), none repeated (§2.5), field names
//!   lowercase (§2.1); `Signature` has a Byte Sequence under the same label;
//! - the signature base (§2.5): one line `"<name>": <value>` per component,
//!   then `"@signature-params": <the Inner List re-serialised (§2.3,
//!   RFC 8941 §4.1.1.1)>`; derived components `@method`, `@target-uri`,
//!   `@authority`, `@scheme`, `@request-target`, `@path`, `@query`
//!   (§2.2); fields by name, every line's value trimmed and joined with
//!   `", "` (§2.1); a missing component or non-ASCII base fails;
//! - the algorithm from the key and the optional `alg` (§3.2 step 6, §3.3):
//!   `ecdsa-p256-sha256` (64-byte `r || s`, §3.3.4), `ecdsa-p384-sha384`
//!   (96 bytes, §3.3.5), `ed25519` (§3.3.6), `rsa-v1_5-sha256` (§3.3.2),
//!   `rsa-pss-sha512` (§3.3.1), and `rsa-pss-sha256`, which Margo's page
//!   lists although RFC 9421 registers no such name (PSS with SHA-256,
//!   MGF1-SHA-256, 32-byte salt); an RSA key without `alg` is taken as
//!   `rsa-v1_5-sha256`;
//! - time (§3.2.1; Margo: "older than a configurable validity window (e.g.,
//!   5 minutes) or in the future (allowing for clock skew) MUST be
//!   rejected"): `created` at most [`MAX_AGE_SECS`] old and at most
//!   [`MAX_SKEW_SECS`] ahead; `expires`, when present, not passed;
//! - the Margo profile ([`Policy::margo`]): `created` and `keyid` present,
//!   `keyid` equal to the key name the WFM expects (the page says the WFM
//!   "looks up the client certificate from the Client-ID in the API
//!   Request URL" and leaves the key name open; our reading: the clientId),
//!   `@method` covered, `@target-uri` (or `@path`/`@request-target`, which
//!   bind the path too) covered, and when the request has a body
//!   `content-digest` covered;
//! - `Content-Digest` (RFC 9530 §2) whenever it is covered or a body is
//!   present: a Dictionary of Byte Sequences; every `sha-256`/`sha-512`
//!   member must match the body and at least one must be there (other
//!   algorithms are ignored, as §2 lets a recipient do).

use ring::signature::{self as sig, UnparsedPublicKey, VerificationAlgorithm};

use super::structured_fields::{
    parse_dictionary, serialize_inner_list, BareItem, Item, Member, Params, SfError,
};

/// How old `created` may be (Margo's "e.g., 5 minutes").
pub const MAX_AGE_SECS: i64 = 300;
/// How far ahead of our clock `created` may be (clock skew).
pub const MAX_SKEW_SECS: i64 = 30;

/// A request as received, in the parts the derived components need.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub method: &'a str,
    /// `https` for the WFM's listener.
    pub scheme: &'a str,
    /// The `Host` field (or the absolute-form request target's authority).
    pub authority: &'a str,
    /// The path as sent, percent-encoding untouched.
    pub path: &'a str,
    /// The query without `?`, if the request target has one.
    pub query: Option<&'a str>,
    /// Every field line in order: (lowercase name, value).
    pub fields: &'a [(String, String)],
    pub body: &'a [u8],
}

/// A client's public key, from its certificate's SubjectPublicKeyInfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientKey {
    /// Uncompressed P-256 point.
    P256(Vec<u8>),
    /// Uncompressed P-384 point.
    P384(Vec<u8>),
    /// The RSAPublicKey DER (RFC 8017 A.1.1).
    Rsa(Vec<u8>),
    Ed25519(Vec<u8>),
}

/// What to require beyond RFC 9421 itself.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unix seconds.
    pub now: i64,
    /// The `keyid` that names this client's key; `None`: not checked.
    pub keyid: Option<String>,
    /// Margo's requirements (see the module text).
    pub margo: bool,
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub label: String,
    pub covered: Vec<String>,
    pub keyid: Option<String>,
    pub alg: &'static str,
    pub created: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgSigError {
    #[error("no {0} field")]
    MissingField(&'static str),
    #[error("{0} is not a valid structured field: {1}")]
    Syntax(&'static str, SfError),
    #[error("Signature-Input has no signature")]
    NoSignature,
    #[error("signature {0}: Signature-Input member is not an inner list")]
    NotInnerList(String),
    #[error("signature {0}: no byte sequence under this label in Signature")]
    NoSignatureValue(String),
    #[error("component identifier {0:?} is not a string")]
    ComponentNotString(String),
    #[error("component {0:?}: parameters are not supported")]
    ComponentParams(String),
    #[error("component {0:?} is not lowercase (RFC 9421 §2.1)")]
    ComponentCase(String),
    #[error("component {0:?} is listed twice")]
    DuplicateComponent(String),
    #[error("component {0:?} is not supported on a request")]
    UnsupportedComponent(String),
    #[error("covered field {0:?} is not in the request")]
    AbsentComponent(String),
    #[error("the signature base is not ASCII")]
    NotAscii,
    #[error("signature parameter {0} has the wrong type")]
    ParamType(&'static str),
    #[error("created {created} is more than {MAX_AGE_SECS} s before now ({now})")]
    TooOld { created: i64, now: i64 },
    #[error("created {created} is after now ({now}) by more than {MAX_SKEW_SECS} s")]
    InFuture { created: i64, now: i64 },
    #[error("expired at {expires} (now {now})")]
    Expired { expires: i64, now: i64 },
    #[error("signature parameter {0} is required")]
    MissingParam(&'static str),
    #[error("keyid {got:?} does not name this client ({want:?})")]
    KeyId { got: Option<String>, want: String },
    #[error("alg {0:?} does not fit the client's key")]
    Alg(String),
    #[error("required component not covered: {0}")]
    NotCovered(&'static str),
    #[error("Content-Digest: {0}")]
    Digest(&'static str),
    #[error("the signature does not verify with the client's key")]
    BadSignature,
    #[error("client key: {0}")]
    Key(&'static str),
}

/// Every line of `name`, trimmed, joined with `", "` (RFC 9421 §2.1).
fn field_value(msg: &Message<'_>, name: &str) -> Option<String> {
    let lines: Vec<&str> = msg
        .fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim_matches([' ', '\t']))
        .collect();
    (!lines.is_empty()).then(|| lines.join(", "))
}

/// `host[:port]` lowercased, the scheme's default port dropped (§2.2.3).
fn normalized_authority(scheme: &str, authority: &str) -> String {
    let lower = authority.to_ascii_lowercase();
    let default = match scheme {
        "https" => ":443",
        "http" => ":80",
        _ => return lower,
    };
    match lower.strip_suffix(default) {
        Some(host) => host.to_string(),
        None => lower,
    }
}

/// The value of one component, or why there is none.
fn component_value(msg: &Message<'_>, name: &str) -> Result<String, MsgSigError> {
    let path = if msg.path.is_empty() { "/" } else { msg.path };
    let query = msg.query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(match name {
        "@method" => msg.method.to_string(),
        "@target-uri" => format!("{}://{}{path}{query}", msg.scheme, msg.authority),
        "@authority" => normalized_authority(msg.scheme, msg.authority),
        "@scheme" => msg.scheme.to_ascii_lowercase(),
        "@request-target" => format!("{path}{query}"),
        "@path" => path.to_string(),
        "@query" => format!("?{}", msg.query.unwrap_or("")),
        _ if name.starts_with('@') => {
            return Err(MsgSigError::UnsupportedComponent(name.to_string()))
        }
        _ if name != name.to_ascii_lowercase() => {
            return Err(MsgSigError::ComponentCase(name.to_string()))
        }
        _ => {
            field_value(msg, name).ok_or_else(|| MsgSigError::AbsentComponent(name.to_string()))?
        }
    })
}

/// The covered component names of one Signature-Input member, checked.
fn component_names(items: &[Item]) -> Result<Vec<String>, MsgSigError> {
    let mut names: Vec<String> = Vec::new();
    for item in items {
        let BareItem::String(name) = &item.bare else {
            return Err(MsgSigError::ComponentNotString(format!("{:?}", item.bare)));
        };
        if !item.params.is_empty() {
            return Err(MsgSigError::ComponentParams(name.clone()));
        }
        if !name.starts_with('@') && *name != name.to_ascii_lowercase() {
            return Err(MsgSigError::ComponentCase(name.clone()));
        }
        if names.contains(name) {
            return Err(MsgSigError::DuplicateComponent(name.clone()));
        }
        names.push(name.clone());
    }
    Ok(names)
}

/// The signature base of RFC 9421 §2.5 for `items` with `params`.
pub fn signature_base(
    msg: &Message<'_>,
    items: &[Item],
    params: &Params,
) -> Result<String, MsgSigError> {
    let mut base = String::new();
    for name in component_names(items)? {
        let value = component_value(msg, &name)?;
        base.push('"');
        base.push_str(&name);
        base.push_str("\": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&serialize_inner_list(items, params));
    if !base.is_ascii() {
        return Err(MsgSigError::NotAscii);
    }
    Ok(base)
}

fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

impl ClientKey {
    /// From a DER SubjectPublicKeyInfo (RFC 5280 §4.1.2.7).
    pub fn from_spki(der: &[u8]) -> Result<ClientKey, MsgSigError> {
        let bad = MsgSigError::Key("not a SubjectPublicKeyInfo");
        let (0x30, spki, _) = der_tlv(der).ok_or(bad.clone())? else {
            return Err(bad);
        };
        let (0x30, alg, rest) = der_tlv(spki).ok_or(bad.clone())? else {
            return Err(bad);
        };
        let (0x03, bits, _) = der_tlv(rest).ok_or(bad.clone())? else {
            return Err(bad);
        };
        let (0x06, oid, params) = der_tlv(alg).ok_or(bad.clone())? else {
            return Err(bad);
        };
        let key = match bits.split_first() {
            Some((0, key)) => key.to_vec(),
            _ => return Err(bad),
        };
        match oid {
            OID_EC_PUBLIC_KEY => match der_tlv(params) {
                Some((0x06, OID_P256, _)) => Ok(ClientKey::P256(key)),
                Some((0x06, OID_P384, _)) => Ok(ClientKey::P384(key)),
                _ => Err(MsgSigError::Key("an EC curve other than P-256 or P-384")),
            },
            OID_RSA => Ok(ClientKey::Rsa(key)),
            OID_ED25519 => Ok(ClientKey::Ed25519(key)),
            _ => Err(MsgSigError::Key("an unsupported key algorithm")),
        }
    }

    /// From a DER X.509 certificate: `tbsCertificate`'s seventh field
    /// (after the optional version, serial, signature, issuer, validity,
    /// subject) is the SubjectPublicKeyInfo.
    pub fn from_certificate(der: &[u8]) -> Result<ClientKey, MsgSigError> {
        let bad = MsgSigError::Key("not an X.509 certificate");
        let (0x30, cert, _) = der_tlv(der).ok_or(bad.clone())? else {
            return Err(bad);
        };
        let (0x30, mut tbs, _) = der_tlv(cert).ok_or(bad.clone())? else {
            return Err(bad);
        };
        if tbs.first() == Some(&0xa0) {
            tbs = der_tlv(tbs).ok_or(bad.clone())?.2;
        }
        for _ in 0..5 {
            tbs = der_tlv(tbs).ok_or(bad.clone())?.2;
        }
        let (_, _, after) = der_tlv(tbs).ok_or(bad.clone())?;
        Self::from_spki(&tbs[..tbs.len() - after.len()])
    }

    /// The algorithm for this key and the signature's `alg`, if any.
    fn algorithm(
        &self,
        alg: Option<&str>,
    ) -> Result<(&'static str, &'static dyn VerificationAlgorithm), MsgSigError> {
        Ok(match (self, alg) {
            (ClientKey::P256(_), None | Some("ecdsa-p256-sha256")) => {
                ("ecdsa-p256-sha256", &sig::ECDSA_P256_SHA256_FIXED)
            }
            (ClientKey::P384(_), None | Some("ecdsa-p384-sha384")) => {
                ("ecdsa-p384-sha384", &sig::ECDSA_P384_SHA384_FIXED)
            }
            (ClientKey::Ed25519(_), None | Some("ed25519")) => ("ed25519", &sig::ED25519),
            (ClientKey::Rsa(_), None | Some("rsa-v1_5-sha256")) => {
                ("rsa-v1_5-sha256", &sig::RSA_PKCS1_2048_8192_SHA256)
            }
            (ClientKey::Rsa(_), Some("rsa-pss-sha512")) => {
                ("rsa-pss-sha512", &sig::RSA_PSS_2048_8192_SHA512)
            }
            (ClientKey::Rsa(_), Some("rsa-pss-sha256")) => {
                ("rsa-pss-sha256", &sig::RSA_PSS_2048_8192_SHA256)
            }
            (_, Some(other)) => return Err(MsgSigError::Alg(other.to_string())),
        })
    }

    fn bytes(&self) -> &[u8] {
        match self {
            ClientKey::P256(k) | ClientKey::P384(k) | ClientKey::Rsa(k) | ClientKey::Ed25519(k) => {
                k
            }
        }
    }
}

/// RFC 9530 §2: checks `Content-Digest` against the body.
pub fn content_digest_ok(msg: &Message<'_>) -> Result<(), MsgSigError> {
    let value =
        field_value(msg, "content-digest").ok_or(MsgSigError::MissingField("Content-Digest"))?;
    let dict = parse_dictionary(&value).map_err(|e| MsgSigError::Syntax("Content-Digest", e))?;
    let mut matched = false;
    for (alg, member) in &dict {
        let algorithm = match alg.as_str() {
            "sha-256" => &ring::digest::SHA256,
            "sha-512" => &ring::digest::SHA512,
            _ => continue,
        };
        let Member::Item(Item {
            bare: BareItem::Bytes(expected),
            ..
        }) = member
        else {
            return Err(MsgSigError::Digest("a digest is not a byte sequence"));
        };
        if ring::digest::digest(algorithm, msg.body).as_ref() != expected.as_slice() {
            return Err(MsgSigError::Digest("does not match the body"));
        }
        matched = true;
    }
    if matched {
        Ok(())
    } else {
        Err(MsgSigError::Digest("no sha-256 or sha-512 member"))
    }
}

fn int_param(params: &Params, key: &'static str) -> Result<Option<i64>, MsgSigError> {
    match params.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, BareItem::Integer(i))) => Ok(Some(*i)),
        Some(_) => Err(MsgSigError::ParamType(key)),
    }
}

fn string_param(params: &Params, key: &'static str) -> Result<Option<String>, MsgSigError> {
    match params.iter().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, BareItem::String(s))) => Ok(Some(s.clone())),
        Some(_) => Err(MsgSigError::ParamType(key)),
    }
}

/// Checks one labelled signature.
fn verify_one(
    msg: &Message<'_>,
    key: &ClientKey,
    policy: &Policy,
    label: &str,
    member: &Member,
    signatures: &[(String, Member)],
) -> Result<Verified, MsgSigError> {
    let Member::InnerList(items, params) = member else {
        return Err(MsgSigError::NotInnerList(label.to_string()));
    };
    let Some(Member::Item(Item {
        bare: BareItem::Bytes(signature),
        ..
    })) = signatures.iter().find(|(l, _)| l == label).map(|(_, m)| m)
    else {
        return Err(MsgSigError::NoSignatureValue(label.to_string()));
    };
    let covered = component_names(items)?;
    let created = int_param(params, "created")?;
    let expires = int_param(params, "expires")?;
    let keyid = string_param(params, "keyid")?;
    let alg = string_param(params, "alg")?;
    if let Some(created) = created {
        if created < policy.now - MAX_AGE_SECS {
            return Err(MsgSigError::TooOld {
                created,
                now: policy.now,
            });
        }
        if created > policy.now + MAX_SKEW_SECS {
            return Err(MsgSigError::InFuture {
                created,
                now: policy.now,
            });
        }
    }
    if let Some(expires) = expires {
        if policy.now > expires {
            return Err(MsgSigError::Expired {
                expires,
                now: policy.now,
            });
        }
    }
    if let Some(want) = &policy.keyid {
        if keyid.as_ref() != Some(want) {
            return Err(MsgSigError::KeyId {
                got: keyid,
                want: want.clone(),
            });
        }
    }
    let has = |name: &str| covered.iter().any(|c| c == name);
    if policy.margo {
        if created.is_none() {
            return Err(MsgSigError::MissingParam("created"));
        }
        if keyid.is_none() {
            return Err(MsgSigError::MissingParam("keyid"));
        }
        if !has("@method") {
            return Err(MsgSigError::NotCovered("@method"));
        }
        if !(has("@target-uri") || has("@path") || has("@request-target")) {
            return Err(MsgSigError::NotCovered("@target-uri (or @path)"));
        }
        if !msg.body.is_empty() && !has("content-digest") {
            return Err(MsgSigError::NotCovered(
                "content-digest (the request has a body)",
            ));
        }
    }
    if has("content-digest") || (policy.margo && !msg.body.is_empty()) {
        content_digest_ok(msg)?;
    }
    let (alg_name, algorithm) = key.algorithm(alg.as_deref())?;
    let base = signature_base(msg, items, params)?;
    UnparsedPublicKey::new(algorithm, key.bytes())
        .verify(base.as_bytes(), signature)
        .map_err(|_| MsgSigError::BadSignature)?;
    Ok(Verified {
        label: label.to_string(),
        covered,
        keyid,
        alg: alg_name,
        created,
    })
}

/// Verifies the request's RFC 9421 signature(s) with `key` under `policy`:
/// the first label that passes every check wins; otherwise the first
/// label's error is returned.
pub fn verify(
    msg: &Message<'_>,
    key: &ClientKey,
    policy: &Policy,
) -> Result<Verified, MsgSigError> {
    let input =
        field_value(msg, "signature-input").ok_or(MsgSigError::MissingField("Signature-Input"))?;
    let signature = field_value(msg, "signature").ok_or(MsgSigError::MissingField("Signature"))?;
    let inputs = parse_dictionary(&input).map_err(|e| MsgSigError::Syntax("Signature-Input", e))?;
    let signatures =
        parse_dictionary(&signature).map_err(|e| MsgSigError::Syntax("Signature", e))?;
    let mut first_error = None;
    for (label, member) in &inputs {
        match verify_one(msg, key, policy, label, member, &signatures) {
            Ok(verified) => return Ok(verified),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or(MsgSigError::NoSignature))
}

/// The `Signature-Input` member value for `names` and `params` (used by
/// the tests to sign; public so test clients can too).
pub fn signature_input_value(names: &[&str], params: &Params) -> (Vec<Item>, String) {
    let items: Vec<Item> = names
        .iter()
        .map(|n| Item {
            bare: BareItem::String((*n).to_string()),
            params: Vec::new(),
        })
        .collect();
    let text = serialize_inner_list(&items, params);
    (items, text)
}

#[cfg(test)]
mod tests;
