//! The verifier against RFC 9421's own example (B.2.6, Ed25519, whose
//! signatures are deterministic), RFC 9530's digests, and requests signed
//! here with ring in the shape Margo's page gives.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair};

use rcgen::PublicKeyData;

use super::*;

fn b64(bytes: &[u8]) -> String {
    data_encoding::BASE64.encode(bytes)
}

fn fields(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
        .collect()
}

/// The test request of RFC 9421 Appendix B.2.
const B2_BODY: &[u8] = br#"{"hello": "world"}"#;

fn b2_fields(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut f = fields(&[
        ("host", "example.com"),
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        (
            "content-digest",
            "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
        ),
        ("content-length", "18"),
    ]);
    f.extend(fields(extra));
    f
}

fn b2_message(fields: &[(String, String)]) -> Message<'_> {
    Message {
        method: "POST",
        scheme: "https",
        authority: "example.com",
        path: "/foo",
        query: Some("param=Value&Pet=dog"),
        fields,
        body: B2_BODY,
    }
}

/// RFC 9421 B.1.4, `test-key-ed25519` (the public `x`, base64url).
fn rfc_ed25519_key() -> ClientKey {
    let x = data_encoding::BASE64URL_NOPAD
        .decode(b"JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs")
        .expect("RFC key");
    ClientKey::Ed25519(x)
}

#[test]
fn the_rfc_9421_b_2_6_example_verifies_and_its_base_is_the_printed_one() {
    let f = b2_fields(&[
        (
            "signature-input",
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
        ),
        (
            "signature",
            "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:",
        ),
    ]);
    let msg = b2_message(&f);
    let policy = Policy {
        now: 1618884473,
        keyid: Some("test-key-ed25519".into()),
        margo: false,
    };
    let verified = verify(&msg, &rfc_ed25519_key(), &policy).expect("the RFC's example");
    assert_eq!(verified.alg, "ed25519");
    assert_eq!(verified.label, "sig-b26");

    let (items, _) = signature_input_value(
        &[
            "date",
            "@method",
            "@path",
            "@authority",
            "content-type",
            "content-length",
        ],
        &vec![],
    );
    let params = vec![
        ("created".to_string(), BareItem::Integer(1618884473)),
        (
            "keyid".to_string(),
            BareItem::String("test-key-ed25519".into()),
        ),
    ];
    assert_eq!(
        signature_base(&msg, &items, &params).expect("base"),
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\
         \"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\
         \"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \
         \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );

    // Margo asks more: the body's digest must be covered.
    let margo = Policy {
        margo: true,
        ..policy
    };
    assert!(matches!(
        verify(&msg, &rfc_ed25519_key(), &margo),
        Err(MsgSigError::NotCovered(_))
    ));
}

#[test]
fn the_rfc_9530_digests_of_the_example_body_match() {
    let f = fields(&[(
        "content-digest",
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
    )]);
    let msg = Message {
        fields: &f,
        ..b2_message(&[])
    };
    content_digest_ok(&msg).expect("RFC 9530 sha-256");
    let f = b2_fields(&[]);
    content_digest_ok(&b2_message(&f)).expect("RFC 9421 B.2 sha-512");
    let f = fields(&[("content-digest", "sha-256=:AAAA:, md5=:AAAA:")]);
    let msg = Message {
        fields: &f,
        ..b2_message(&[])
    };
    assert_eq!(
        content_digest_ok(&msg),
        Err(MsgSigError::Digest("does not match the body"))
    );
    let f = fields(&[("content-digest", "md5=:AAAA:")]);
    let msg = Message {
        fields: &f,
        ..b2_message(&[])
    };
    assert!(content_digest_ok(&msg).is_err(), "no algorithm we check");
}

const NOW: i64 = 1_700_000_000;
const CLIENT: &str = "0b6e5e43-4d67-4f1e-a2b5-0c2f3f4a1f11";
const AUTHORITY: &str = "wfm.example:8443";

fn status_path() -> String {
    format!("/v1alpha2/margo/api/v1/clients/{CLIENT}/deployments/d1/status")
}

/// A P-256 device key; `(signing key, the WFM's view of it)`.
fn p256() -> (EcdsaKeyPair, ClientKey) {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
    let pair =
        EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key");
    let public = ClientKey::P256(pair.public_key().as_ref().to_vec());
    (pair, public)
}

fn margo_params(created: i64, expires: Option<i64>, keyid: &str) -> Params {
    let mut p = vec![("created".to_string(), BareItem::Integer(created))];
    if let Some(e) = expires {
        p.push(("expires".to_string(), BareItem::Integer(e)));
    }
    p.push(("keyid".to_string(), BareItem::String(keyid.into())));
    p.push((
        "alg".to_string(),
        BareItem::String("ecdsa-p256-sha256".into()),
    ));
    p
}

/// Signs `method path` with `body` as RFC 9421 describes: the digest field
/// first, then the base over `names`, then the two signature fields.
fn signed_fields(
    pair: &EcdsaKeyPair,
    method: &str,
    path: &str,
    body: &[u8],
    names: &[&str],
    params: &Params,
) -> Vec<(String, String)> {
    let mut f = fields(&[("host", AUTHORITY), ("content-type", "application/json")]);
    if !body.is_empty() {
        let d = ring::digest::digest(&ring::digest::SHA256, body);
        f.push((
            "content-digest".into(),
            format!("sha-256=:{}:", b64(d.as_ref())),
        ));
    }
    let msg = Message {
        method,
        scheme: "https",
        authority: AUTHORITY,
        path,
        query: None,
        fields: &f,
        body,
    };
    let (items, input) = signature_input_value(names, params);
    let base = signature_base(&msg, &items, params).expect("base");
    let signature = pair
        .sign(&SystemRandom::new(), base.as_bytes())
        .expect("sign");
    f.push(("signature-input".into(), format!("sig1={input}")));
    f.push((
        "signature".into(),
        format!("sig1=:{}:", b64(signature.as_ref())),
    ));
    f
}

fn message<'a>(
    method: &'a str,
    path: &'a str,
    f: &'a [(String, String)],
    body: &'a [u8],
) -> Message<'a> {
    Message {
        method,
        scheme: "https",
        authority: AUTHORITY,
        path,
        query: None,
        fields: f,
        body,
    }
}

fn policy() -> Policy {
    Policy {
        now: NOW,
        keyid: Some(CLIENT.into()),
        margo: true,
    }
}

const MARGO: &[&str] = &["@method", "@target-uri", "content-digest"];
const BODY: &[u8] = br#"{"deploymentId":"d1","status":{"state":"installed"}}"#;

#[test]
fn a_margo_status_report_verifies_and_its_base_is_as_the_rfc_builds_it() {
    let (pair, key) = p256();
    let path = status_path();
    let params = margo_params(NOW, Some(NOW + 300), CLIENT);
    let f = signed_fields(&pair, "POST", &path, BODY, MARGO, &params);
    let msg = message("POST", &path, &f, BODY);
    let verified = verify(&msg, &key, &policy()).expect("verifies");
    assert_eq!(verified.keyid.as_deref(), Some(CLIENT));
    assert_eq!(verified.alg, "ecdsa-p256-sha256");
    let (items, _) = signature_input_value(MARGO, &params);
    let digest = b64(ring::digest::digest(&ring::digest::SHA256, BODY).as_ref());
    assert_eq!(
        signature_base(&msg, &items, &params).expect("base"),
        format!(
            "\"@method\": POST\n\"@target-uri\": https://{AUTHORITY}{path}\n\
             \"content-digest\": sha-256=:{digest}:\n\"@signature-params\": \
             (\"@method\" \"@target-uri\" \"content-digest\");created={NOW};expires={};\
             keyid=\"{CLIENT}\";alg=\"ecdsa-p256-sha256\"",
            NOW + 300
        )
    );
}

#[test]
fn a_get_without_body_needs_no_digest() {
    let (pair, key) = p256();
    let path = format!("/v1alpha2/margo/api/v1/clients/{CLIENT}/deployments");
    let names = ["@method", "@target-uri"];
    let f = signed_fields(
        &pair,
        "GET",
        &path,
        b"",
        &names,
        &margo_params(NOW, None, CLIENT),
    );
    verify(&message("GET", &path, &f, b""), &key, &policy()).expect("verifies");
    // Nor does @path without @target-uri miss the path binding.
    let names = ["@method", "@authority", "@path"];
    let f = signed_fields(
        &pair,
        "GET",
        &path,
        b"",
        &names,
        &margo_params(NOW, None, CLIENT),
    );
    verify(&message("GET", &path, &f, b""), &key, &policy()).expect("verifies");
}

#[test]
fn a_tampered_body_is_refused_by_its_digest() {
    let (pair, key) = p256();
    let path = status_path();
    let f = signed_fields(
        &pair,
        "POST",
        &path,
        BODY,
        MARGO,
        &margo_params(NOW, None, CLIENT),
    );
    let other = br#"{"deploymentId":"d1","status":{"state":"failed"}}"#;
    assert_eq!(
        verify(&message("POST", &path, &f, other), &key, &policy()),
        Err(MsgSigError::Digest("does not match the body"))
    );
}

#[test]
fn a_signature_made_for_one_path_is_refused_on_another() {
    let (pair, key) = p256();
    let path = status_path();
    let f = signed_fields(
        &pair,
        "POST",
        &path,
        BODY,
        MARGO,
        &margo_params(NOW, None, CLIENT),
    );
    let other = path.replace("/d1/", "/d2/");
    assert_eq!(
        verify(&message("POST", &other, &f, BODY), &key, &policy()),
        Err(MsgSigError::BadSignature)
    );
}

#[test]
fn a_signature_made_for_one_method_is_refused_on_another() {
    let (pair, key) = p256();
    let path = format!("/v1alpha2/margo/api/v1/clients/{CLIENT}/capabilities/dev1");
    let names = ["@method", "@target-uri"];
    let f = signed_fields(
        &pair,
        "GET",
        &path,
        b"",
        &names,
        &margo_params(NOW, None, CLIENT),
    );
    assert_eq!(
        verify(&message("DELETE", &path, &f, b""), &key, &policy()),
        Err(MsgSigError::BadSignature)
    );
}

#[test]
fn expired_stale_and_future_signatures_are_refused() {
    let (pair, key) = p256();
    let path = status_path();
    let sign = |params: Params| signed_fields(&pair, "POST", &path, BODY, MARGO, &params);
    let f = sign(margo_params(NOW - 60, Some(NOW - 1), CLIENT));
    assert_eq!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::Expired {
            expires: NOW - 1,
            now: NOW
        })
    );
    let f = sign(margo_params(NOW - MAX_AGE_SECS - 1, None, CLIENT));
    assert!(matches!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::TooOld { .. })
    ));
    let f = sign(margo_params(NOW + MAX_SKEW_SECS + 1, None, CLIENT));
    assert!(matches!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::InFuture { .. })
    ));
    // Within the window both ways.
    let f = sign(margo_params(NOW - MAX_AGE_SECS, Some(NOW), CLIENT));
    verify(&message("POST", &path, &f, BODY), &key, &policy()).expect("in the window");
    // Margo requires created.
    let params = vec![("keyid".to_string(), BareItem::String(CLIENT.into()))];
    let f = sign(params);
    assert_eq!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::MissingParam("created"))
    );
}

#[test]
fn a_keyid_that_names_another_client_is_refused() {
    let (pair, key) = p256();
    let path = status_path();
    let f = signed_fields(
        &pair,
        "POST",
        &path,
        BODY,
        MARGO,
        &margo_params(NOW, None, "someone-else"),
    );
    assert!(matches!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::KeyId { .. })
    ));
    let (_, other_key) = p256();
    let f = signed_fields(
        &pair,
        "POST",
        &path,
        BODY,
        MARGO,
        &margo_params(NOW, None, CLIENT),
    );
    assert_eq!(
        verify(&message("POST", &path, &f, BODY), &other_key, &policy()),
        Err(MsgSigError::BadSignature),
        "another device's key"
    );
}

#[test]
fn a_body_needs_a_covered_digest_and_components_are_lowercase() {
    let (pair, key) = p256();
    let path = status_path();
    let params = margo_params(NOW, None, CLIENT);
    let f = signed_fields(
        &pair,
        "POST",
        &path,
        BODY,
        &["@method", "@target-uri"],
        &params,
    );
    assert_eq!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::NotCovered(
            "content-digest (the request has a body)"
        ))
    );
    // The Margo page's example writes "Content-Digest"; RFC 9421 §2.1
    // makes field component names lowercase.
    let mut f = signed_fields(&pair, "POST", &path, BODY, MARGO, &params);
    let input = f
        .iter_mut()
        .find(|(n, _)| n == "signature-input")
        .expect("input");
    input.1 = input.1.replace("\"content-digest\"", "\"Content-Digest\"");
    assert_eq!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::ComponentCase("Content-Digest".into()))
    );
    // The method must be covered.
    let f = signed_fields(
        &pair,
        "POST",
        &path,
        BODY,
        &["@target-uri", "content-digest"],
        &params,
    );
    assert_eq!(
        verify(&message("POST", &path, &f, BODY), &key, &policy()),
        Err(MsgSigError::NotCovered("@method"))
    );
}

#[test]
fn keys_come_out_of_certificates_of_each_kind() {
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
    ] {
        let pair = rcgen::KeyPair::generate_for(alg).expect("key");
        let params = rcgen::CertificateParams::new(vec!["device".to_string()]).expect("params");
        let cert = params.self_signed(&pair).expect("cert");
        let key = ClientKey::from_certificate(cert.der()).expect("key from the certificate");
        assert_eq!(key.bytes(), pair.public_key_raw(), "{alg:?}");
        assert_eq!(
            ClientKey::from_spki(&pair.subject_public_key_info()).expect("spki"),
            key
        );
    }
    assert!(ClientKey::from_certificate(b"\x30\x03\x02\x01\x01").is_err());
}

#[test]
fn p384_and_ed25519_device_keys_verify_too() {
    let rng = SystemRandom::new();
    let path = status_path();
    let digest = format!(
        "sha-256=:{}:",
        b64(ring::digest::digest(&ring::digest::SHA256, BODY).as_ref())
    );
    for (alg, key_pair) in [
        (
            "ecdsa-p384-sha384",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        ),
        (
            "ed25519",
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519),
        ),
    ] {
        let key_pair = key_pair.expect("key");
        let key = ClientKey::from_spki(&key_pair.subject_public_key_info()).expect("spki");
        let mut f = fields(&[("host", AUTHORITY), ("content-digest", &digest)]);
        let params = vec![
            ("created".to_string(), BareItem::Integer(NOW)),
            ("keyid".to_string(), BareItem::String(CLIENT.into())),
            ("alg".to_string(), BareItem::String(alg.into())),
        ];
        let (items, input) = signature_input_value(MARGO, &params);
        let base =
            signature_base(&message("POST", &path, &f, BODY), &items, &params).expect("base");
        let signature = if alg == "ed25519" {
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key_pair.serialize_der())
                .expect("ed25519")
                .sign(base.as_bytes())
                .as_ref()
                .to_vec()
        } else {
            EcdsaKeyPair::from_pkcs8(
                &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
                &key_pair.serialize_der(),
                &rng,
            )
            .expect("p384")
            .sign(&rng, base.as_bytes())
            .expect("sign")
            .as_ref()
            .to_vec()
        };
        f.push(("signature-input".into(), format!("sig1={input}")));
        f.push(("signature".into(), format!("sig1=:{}:", b64(&signature))));
        let verified = verify(&message("POST", &path, &f, BODY), &key, &policy()).expect(alg);
        assert_eq!(verified.alg, alg);
        // The alg parameter must fit the key.
        let (_, p256_key) = p256();
        assert_eq!(
            verify(&message("POST", &path, &f, BODY), &p256_key, &policy()),
            Err(MsgSigError::Alg(alg.into()))
        );
    }
}

/// A 2048-bit RSA test key (PKCS#1 RSAPrivateKey DER) and its
/// SubjectPublicKeyInfo, made with `openssl genpkey -algorithm RSA` for
/// this test only (ring cannot generate RSA keys).
const RSA_PRIVATE_KEY: &str = "
    MIIEpQIBAAKCAQEA0SxgLbJ3VXFBr8H6Jf/6E68Xes33LMq8JFz5veQl2+Y6hxqRO4Ru+D+ngUBT
    MJuT2jNMgPEQtNBbe5z8aIJlMlnE6JBJLz6CqqC0Bxn5Nrl5OuVCSbzqYEM1YCwgom0sMDr9zS8u
    IBPCnGHK7ehwji2e+w3y0jKB+F1AzFtBCmklRmUjuxMC7V2z6lvAfjzcM4CWpMTQZLsXsRJnnsd3
    f05zSF38J96e62/Lo909Jx57kOzFEC5IPNohsNGrKRT0ryHo0/YAnjjP7fYZE0uZyoQx+chBdvg0
    bakykICg9cb9pOG3KDoJ3A9HOkum4roL9AuO+O1RhQT+LshZyKg16QIDAQABAoIBAAoPf46E4wiv
    H7nICMHqd1rTPBFQWZ1urtRXkyBeNrDUlPWfOyqP//iVzy+q1OrQJFvMcIHg66zk5XwxVYr/DTgW
    aXTi+Qd6ITWlt/hIzaL4vPlnbMeNmHC0nJsnq0t9ikzhx7KYKuM29zPSGL0dReZkSVY7b6BK9rdZ
    tcIJIucmMljoTPz7+E/v75tzhzyDxNorQbgxrY7wfLPr5b7ic74M5XzcOOTgc5nL31Dt8DQUCefs
    ODdW9j7mIfcMjdg22eDquFMkJdxTTbDMPkC/Urm9sWteQEe2S/nLpYR1fATuEOVagT4By947/5WP
    iQfd+C2azo6mRJwzvZnm8bj01PUCgYEA7J+g4JHwJrO6s8seCKO6yA9a07H1Lv5MYoybwYHptnrU
    Nn2yaLcmzxt3Mtbr6+G8z6rWrrQCuOhvvLhRjfHzuQ9gxkifK8Qzt9DgF5VEnmvBJwH/YDYg7Z3w
    oWd1dYU04pBS+m13e0C7I2Vx0hgtHcPPvhzQaI3B9tzLJXm9pmcCgYEA4k1ODFptpQPlpvPAtTle
    Bnvny1Aq35/I7k2OCfQGoGjH4X09yJw9TNY/2YlL7x3Ia1XtgSPUCxhkzTWfXRZoG75HZoYaXvXq
    58qO9WIIim4vlnbE6S3l4Cga4Bx20D8MqjqfwxqePKF+bD09NXohEpuFOv+VCJoIva2JqADQby8C
    gYEAkd2Vftp4AGOrJEqCKTFFYy6T/wwk6OM6k0W6fn9nY2Y0i6LQ6Fx/QAzeXii/JpnxmtLlpKyz
    QOmId/3nyGjupZYlQhZiiMhaWWYZvm/17PLgDvvcQaMciV5jiBwO/HMxNrlhbZ8tmH0+34MZtznQ
    FhkvZzK8BrfcaiGR2XhCwOECgYEA3kd4RgH8eH0fcaEyw86ZYF0MDFOuCQD1Z7ydq4EZkS3aRs2x
    hf6Q54v6Iz4Ma84hMeyw4IvElzFasYXeBp0fnUCE+Vr3RBbgqNP5H2UvZmlcLLp0J2WByW8bFs5e
    laWYVwxGKGlYy80EVGTCXmibW5+OeajZRh2mQEjYUUCbetkCgYEAmCAe/vFwFpPL0dus52r5OA6w
    8wLXQnMs1p9gHJ95wZys21bBhZQwtWB/Tle9VMDIorx5pToVzUosVZhS9YbJDrx20lrssV3nUpda
    qhzFVzdrSgLqS/+kSXGJijZV5e9QEX2CxNTSSEKO9sUjKfEOZhBo7gf6fjgbmLlQJ9HBxC8=
";
const RSA_SPKI: &str = "
    MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA0SxgLbJ3VXFBr8H6Jf/6E68Xes33LMq8
    JFz5veQl2+Y6hxqRO4Ru+D+ngUBTMJuT2jNMgPEQtNBbe5z8aIJlMlnE6JBJLz6CqqC0Bxn5Nrl5
    OuVCSbzqYEM1YCwgom0sMDr9zS8uIBPCnGHK7ehwji2e+w3y0jKB+F1AzFtBCmklRmUjuxMC7V2z
    6lvAfjzcM4CWpMTQZLsXsRJnnsd3f05zSF38J96e62/Lo909Jx57kOzFEC5IPNohsNGrKRT0ryHo
    0/YAnjjP7fYZE0uZyoQx+chBdvg0bakykICg9cb9pOG3KDoJ3A9HOkum4roL9AuO+O1RhQT+LshZ
    yKg16QIDAQAB
";

fn unwrap_b64(text: &str) -> Vec<u8> {
    let joined: String = text.split_whitespace().collect();
    data_encoding::BASE64
        .decode(joined.as_bytes())
        .expect("test key")
}

#[test]
fn rsa_device_keys_verify_with_each_rsa_algorithm() {
    let rng = SystemRandom::new();
    let pair = sig::RsaKeyPair::from_der(&unwrap_b64(RSA_PRIVATE_KEY)).expect("RSA key");
    let key = ClientKey::from_spki(&unwrap_b64(RSA_SPKI)).expect("RSA SPKI");
    assert_eq!(key, ClientKey::Rsa(pair.public_key().as_ref().to_vec()));
    let path = status_path();
    let digest = format!(
        "sha-256=:{}:",
        b64(ring::digest::digest(&ring::digest::SHA256, BODY).as_ref())
    );
    let encodings: [(Option<&str>, &'static dyn sig::RsaEncoding, &str); 4] = [
        (None, &sig::RSA_PKCS1_SHA256, "rsa-v1_5-sha256"),
        (
            Some("rsa-v1_5-sha256"),
            &sig::RSA_PKCS1_SHA256,
            "rsa-v1_5-sha256",
        ),
        (
            Some("rsa-pss-sha512"),
            &sig::RSA_PSS_SHA512,
            "rsa-pss-sha512",
        ),
        (
            Some("rsa-pss-sha256"),
            &sig::RSA_PSS_SHA256,
            "rsa-pss-sha256",
        ),
    ];
    for (alg, encoding, name) in encodings {
        let mut f = fields(&[("host", AUTHORITY), ("content-digest", &digest)]);
        let mut params = vec![
            ("created".to_string(), BareItem::Integer(NOW)),
            ("keyid".to_string(), BareItem::String(CLIENT.into())),
        ];
        if let Some(alg) = alg {
            params.push(("alg".to_string(), BareItem::String(alg.into())));
        }
        let (items, input) = signature_input_value(MARGO, &params);
        let base =
            signature_base(&message("POST", &path, &f, BODY), &items, &params).expect("base");
        let mut signature = vec![0u8; pair.public().modulus_len()];
        pair.sign(encoding, &rng, base.as_bytes(), &mut signature)
            .expect("sign");
        f.push(("signature-input".into(), format!("sig1={input}")));
        f.push(("signature".into(), format!("sig1=:{}:", b64(&signature))));
        let verified = verify(&message("POST", &path, &f, BODY), &key, &policy()).expect(name);
        assert_eq!(verified.alg, name);
    }
}
