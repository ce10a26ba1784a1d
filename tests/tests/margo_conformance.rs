//! Margo conformance: the manager's HTTP API against a client written from
//! the Margo specification only (`margo_tests::spec_client`), for each
//! published revision we claim (readings R1-R10 in `docs/http-api.md`):
//!
//! - `workload-management-api-1.0.0.yaml` and `-1.0.0-rc.2.yaml`: the
//!   "clientId routes" `/api/v1/clients/{clientId}/...`, signed with RFC
//!   9421 (page `api-requirements-and-security.md` at 8e402245) or with
//!   `X-Payload-Signature` (the older page);
//! - `-1.0.0-rc.3.yaml`: the routes without `{clientId}`, the caller
//!   identified by its TLS client certificate.
//!
//! Every endpoint, every status code the texts list for it, triggered by a
//! real request to a real manager (shipped defaults; only the data dir and
//! ports set, and automatic onboarding approval where a case needs it), and
//! every example payload of the specification pages (fixtures in
//! `tests/fixtures/margo-spec/`, sources in its `SOURCES.md`). Each case
//! quotes the line it checks. All cases run; the failures are reported
//! together at the end, and any failure fails the test.

mod conformance;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use anyhow::{anyhow, ensure, Context, Result};
use conformance::{
    admin, both, expect, expect_problem, fixture, start_manager, Area, Suite, AUTO_APPROVAL_TOML,
};
use hyper::Method;
use margo_manager::admin::ProvisionedBundle;
use margo_tests::spec_client::artifacts::{
    digest, unpack_bundle, BUNDLE_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
};
use margo_tests::spec_client::{
    content_digest, Identity, Reply, Rfc9421Signer, Signing, SpecClient, XPayloadSigner,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use serde_json::{json, Value};

/// `metadata.annotations.id` of the desired-state.md examples.
const CLUSTER_ID: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";
const STANDALONE_ID: &str = "ad9b614e-8912-45f4-a523-372358765def";
/// A well-formed deployment id never assigned to any client.
const NEVER_ASSIGNED: &str = "0b0e3c1a-5d8e-4c5f-9a6b-7c8d9e0f1a2b";
/// `properties.id` of the device-capabilities.md example.
const EXAMPLE_DEVICE: &str = "northstarida.xtapro.k8s.edge";

const CLUSTER_YAML: &str = "desired-state/cluster-enabled-application-deployment.yaml";
const STANDALONE_YAML: &str = "desired-state/standalone-device-application-deployment.yaml";
const STATUS_EXAMPLE: &str = "deployment-status/status-example.json";

/// A fresh P-256 key (PKCS#8) and a self-signed certificate made the way
/// `openssl req -x509` makes one (`basicConstraints CA:TRUE`, issue 10
/// item 5): what a device that onboards itself presents.
fn self_signed_device(cn: &str) -> Result<Identity> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key)?;
    Ok(Identity {
        cert_der: cert.der().to_vec(),
        key_pkcs8: key.serialize_der(),
    })
}

/// How a family authenticates.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Rfc9421,
    XPayload,
    MutualTls,
}

/// One path family with one way of authenticating, as one client.
struct Family {
    label: &'static str,
    scheme: Scheme,
    client: SpecClient,
    /// Same routes, a key or certificate the manager does not know.
    stranger: SpecClient,
    /// Same routes, no credentials at all.
    anonymous: SpecClient,
    /// `/api/v1/clients/{clientId}` or `/api/v1`.
    prefix: String,
    /// Owners of the behaviour every case of this family needs.
    waits: Vec<Area>,
    /// And of requests without content (GET, DELETE).
    read_waits: Vec<Area>,
}

impl Family {
    fn new(
        label: &'static str,
        scheme: Scheme,
        addr: SocketAddr,
        ca: &str,
        client_id: &str,
        id: &Identity,
    ) -> Result<Self> {
        let other = self_signed_device("stranger")?;
        let signing = |key: &Identity| -> Result<Signing> {
            Ok(match scheme {
                Scheme::Rfc9421 => Signing::Rfc9421(Rfc9421Signer::new(&key.key_pkcs8, client_id)?),
                Scheme::XPayload => Signing::XPayload(XPayloadSigner::new(&key.key_pkcs8)?),
                Scheme::MutualTls => Signing::None,
            })
        };
        let cert = |key: &Identity| (scheme == Scheme::MutualTls).then_some(key.clone());
        let client = SpecClient::new(addr, "localhost", ca, cert(id).as_ref(), signing(id)?)?;
        let stranger = SpecClient::new(
            addr,
            "localhost",
            ca,
            cert(&other).as_ref(),
            signing(&other)?,
        )?;
        let anonymous = SpecClient::new(addr, "localhost", ca, None, Signing::None)?;
        let (prefix, waits, read_waits) = match scheme {
            Scheme::Rfc9421 => (
                format!("/api/v1/clients/{client_id}"),
                vec![Area::Sig],
                vec![Area::Sig],
            ),
            // Bodies signed this way pass today; reads without a
            // Content-Digest (R2: "a GET needs no Content-Digest") wait.
            Scheme::XPayload => (
                format!("/api/v1/clients/{client_id}"),
                vec![],
                vec![Area::Sig],
            ),
            Scheme::MutualTls => ("/api/v1".to_string(), vec![Area::Mtls], vec![Area::Mtls]),
        };
        Ok(Self {
            label,
            scheme,
            client,
            stranger,
            anonymous,
            prefix,
            waits,
            read_waits,
        })
    }

    fn rc3(&self) -> bool {
        self.scheme == Scheme::MutualTls
    }

    fn name(&self, case: &str) -> String {
        format!("[{}] {case}", self.label)
    }

    fn path(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// Area of a case: the family's, the reads' if `read`, and `extra`.
    fn w(&self, read: bool, extra: &[Area]) -> Vec<Area> {
        let base = if read {
            both(&self.waits, &self.read_waits)
        } else {
            self.waits.clone()
        };
        both(&base, extra)
    }

    /// The route a capabilities report uses for `device`: rc.2
    /// `POST .../capabilities/{deviceId}` or rc.3 `PUT`.
    async fn report_capabilities(&self, device: &str, body: &str) -> Result<Reply> {
        let method = if self.rc3() {
            Method::PUT
        } else {
            Method::POST
        };
        self.client
            .send_json(
                method,
                &self.path(&format!("/capabilities/{device}")),
                body.as_bytes(),
            )
            .await
    }
}

/// The first certificate of a PEM text, DER.
fn pem_certificate(pem: &[u8]) -> Result<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    let cert =
        rustls_pki_types::CertificateDer::from_pem_slice(pem).map_err(|e| anyhow!("PEM: {e}"))?;
    Ok(cert.as_ref().to_vec())
}

fn need<T>(v: &Option<T>) -> Result<&T> {
    v.as_ref()
        .ok_or_else(|| anyhow!("not run: a case this one builds on failed"))
}

/// `200` with the manifest media type and a strong ETag over the exact
/// body; returns the manifest and the ETag.
fn manifest_200(reply: &Reply) -> Result<(Value, String)> {
    // desired-state.md "Endpoints - State Manifest": "200 OK | The response
    // body contains the manifest. The server MUST include a valid `ETag` and
    // `Content-Type: application/vnd.margo.manifest.v1+json`."
    expect(reply, 200)?;
    ensure!(
        reply.media_type().as_deref() == Some(MANIFEST_MEDIA_TYPE),
        "manifest media type: {}",
        reply.describe()
    );
    // "The `ETag` MUST be a strong validator computed as a digest of the
    // exact serialized JSON response body" ("Protocol - ETag and Caching").
    let etag = reply.header("etag").context("no ETag")?.to_string();
    ensure!(
        etag == format!("\"{}\"", digest(&reply.body)),
        "ETag {etag} is not the quoted digest of the body"
    );
    Ok((reply.json()?, etag))
}

// ---- the manifest before any deployment -------------------------------------

async fn zero_manifest(s: &mut Suite, f: &Family) {
    // desired-state.md: "`manifestVersion` ... The first manifest for a given
    // client MUST use the value 1." and "`bundle` ... If there are zero
    // deployments ... this field MUST be present with the value `null`."
    // The GET lists only 200/304/406 (R8: nothing assigned ≡ version 1, empty).
    case!(
        s,
        f.name("GET /deployments 200: zero-deployment manifest before any deployment (version 1, bundle null, deployments [])"),
        &f.w(true, &[Area::Desired]),
        {
            let r = f.client.get(&f.path("/deployments"), &[]).await?;
            let (m, _) = manifest_200(&r)?;
            ensure!(m["manifestVersion"] == 1, "manifestVersion: {m}");
            ensure!(
                m.as_object().is_some_and(|o| o.contains_key("bundle")) && m["bundle"].is_null(),
                "bundle must be present and null: {m}"
            );
            ensure!(m["deployments"] == json!([]), "deployments: {m}");
            Ok(())
        }
    );
}

// ---- desired state: manifest, documents, bundle --------------------------------

async fn desired_state(s: &mut Suite, f: &Family, docs: &BTreeMap<&str, String>) {
    let r = f.w(true, &[]);
    let manifest = case!(s, f.name("GET /deployments 200: the manifest lists every deployment, URLs of this revision's form"), &r, {
        let reply = f
            .client
            .get(&f.path("/deployments"), &[("accept", MANIFEST_MEDIA_TYPE)])
            .await?;
        let (m, etag) = manifest_200(&reply)?;
        let deps = m["deployments"].as_array().context("deployments array")?;
        let ids: BTreeSet<&str> = deps.iter().filter_map(|d| d["deploymentId"].as_str()).collect();
        ensure!(ids == docs.keys().copied().collect(), "deployment ids {ids:?}");
        for d in deps {
            let (id, dg) = (
                d["deploymentId"].as_str().context("deploymentId")?,
                d["digest"].as_str().context("digest")?,
            );
            // "`deployments[].url` ... of the form
            // /api/v1/clients/{clientId}/deployments/{deploymentId}/{digest}"
            // (1.0.0, rc.2); "/api/v1/deployments/{deploymentId}/{digest}" (rc.3).
            ensure!(
                d["url"] == f.path(&format!("/deployments/{id}/{dg}")).as_str(),
                "deployment url {} for {id}",
                d["url"]
            );
        }
        let b = &m["bundle"];
        // "`bundle.mediaType` | MUST be `application/vnd.margo.bundle.v1+tar+gzip`";
        // "`bundle.url` ... of the form /api/v1/clients/{clientId}/bundles/{digest}"
        // (rc.3: "/api/v1/bundles/{digest}").
        ensure!(b["mediaType"] == BUNDLE_MEDIA_TYPE, "bundle.mediaType: {b}");
        let bd = b["digest"].as_str().context("bundle.digest")?.to_string();
        ensure!(
            b["url"] == f.path(&format!("/bundles/{bd}")).as_str(),
            "bundle.url: {b}"
        );
        Ok((m, etag))
    });
    case!(
        s,
        f.name("GET /deployments 200: the first deployment makes manifestVersion 2 (R8)"),
        &f.w(true, &[Area::Desired]),
        {
            let (m, _) = need(&manifest)?;
            ensure!(
                m["manifestVersion"] == 2,
                "manifestVersion {}",
                m["manifestVersion"]
            );
            Ok(())
        }
    );
    case!(
        s,
        f.name("GET /deployments 304: If-None-Match with the current ETag"),
        &r,
        {
            // "304 Not Modified | The response body is empty. Returned if the
            // `If-None-Match` `ETag` matches".
            let (_, etag) = need(&manifest)?;
            let reply = f
                .client
                .get(&f.path("/deployments"), &[("if-none-match", etag)])
                .await?;
            expect(&reply, 304)?;
            ensure!(reply.body.is_empty(), "a 304 has no body");
            Ok(())
        }
    );
    case!(
        s,
        f.name("GET /deployments 406: Accept: text/plain"),
        &f.w(true, &[Area::Mtls]),
        {
            // "If the `Accept` header lists only unsupported types, the server MUST
            // return `406 Not Acceptable`"; problem type server-cannot-generate-response.
            let reply = f
                .client
                .get(&f.path("/deployments"), &[("accept", "text/plain")])
                .await?;
            expect_problem(&reply, 406, Some("server-cannot-generate-response"))?;
            Ok(())
        }
    );

    // Individual deployment YAML.
    let listed: Vec<(String, String)> = manifest
        .as_ref()
        .and_then(|(m, _)| m["deployments"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            Some((
                d["deploymentId"].as_str()?.into(),
                d["digest"].as_str()?.into(),
            ))
        })
        .collect();
    case!(
        s,
        f.name("GET /deployments/{deploymentId}/{digest} 200: exact bytes of each listed document"),
        &r,
        {
            need(&manifest)?;
            for (id, dg) in &listed {
                let reply = f
                    .client
                    .get(&f.path(&format!("/deployments/{id}/{dg}")), &[])
                    .await?;
                // "200 OK | The response body contains the raw `ApplicationDeployment`
                // YAML (`Content-Type: application/yaml`). Server MUST set `ETag` to
                // the quoted digest"; the digest is "computed over the exact sequence
                // of bytes".
                expect(&reply, 200)?;
                ensure!(
                    reply.media_type().as_deref() == Some("application/yaml"),
                    "{}",
                    reply.describe()
                );
                ensure!(
                    reply.header("etag") == Some(format!("\"{dg}\"").as_str()),
                    "ETag {:?}",
                    reply.header("etag")
                );
                ensure!(
                    digest(&reply.body) == *dg,
                    "digest of the served bytes differs from {dg}"
                );
                let sent = docs
                    .get(id.as_str())
                    .context("a listed id we did not deploy")?;
                ensure!(
                    reply.body == sent.as_bytes(),
                    "served YAML differs from the deployed bytes of {id}"
                );
            }
            Ok(())
        }
    );
    let some_id = listed
        .first()
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| CLUSTER_ID.into());
    case!(
        s,
        f.name("GET /deployments/{deploymentId}/{digest} 404: a digest the server does not have"),
        &f.w(true, &[Area::Mtls]),
        {
            // "404 Not Found | The referenced digest does not exist on the server."
            let reply = f
                .client
                .get(
                    &f.path(&format!("/deployments/{some_id}/{}", digest(b"nothing"))),
                    &[],
                )
                .await?;
            expect_problem(&reply, 404, Some("deployment-not-found"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name("GET /deployments/{deploymentId}/{digest} 404: a malformed digest (R9)"),
        &f.w(true, &[Area::Desired, Area::Mtls]),
        {
            // "the server MUST return 404 if it does not have the exact digest referenced".
            for bad in ["sha256:XYZ", "md5:abc", "nothing"] {
                let reply = f
                    .client
                    .get(&f.path(&format!("/deployments/{some_id}/{bad}")), &[])
                    .await?;
                expect_problem(&reply, 404, Some("deployment-not-found"))
                    .with_context(|| bad.to_string())?;
            }
            Ok(())
        }
    );

    // The bundle.
    let bundle_digest = manifest
        .as_ref()
        .and_then(|(m, _)| m["bundle"]["digest"].as_str().map(str::to_string));
    case!(s, f.name("GET /bundles/{digest} 200: tar.gz with exactly the listed YAMLs, digest of the exact bytes"), &r, {
        let bd = need(&bundle_digest)?;
        let reply = f.client.get(&f.path(&format!("/bundles/{bd}")), &[]).await?;
        // "The server MUST set `Content-Type` to the manifest-declared
        // `bundle.mediaType`, `ETag` to the quoted digest"; "`bundle.digest` |
        // MUST equal the digest computed over the exact sequence of bytes";
        // "The archive MUST contain exactly the set of YAML files referenced
        // by `deployments`" at its root.
        expect(&reply, 200)?;
        ensure!(reply.media_type().as_deref() == Some(BUNDLE_MEDIA_TYPE), "{}", reply.describe());
        ensure!(reply.header("etag") == Some(format!("\"{bd}\"").as_str()), "ETag {:?}", reply.header("etag"));
        ensure!(digest(&reply.body) == *bd, "bundle bytes do not have the manifest's digest");
        let files = unpack_bundle(&reply.body)?;
        ensure!(files.keys().all(|n| !n.trim_start_matches("./").contains('/')), "files outside the root: {:?}", files.keys());
        let in_bundle: BTreeSet<String> = files.values().map(|b| digest(b)).collect();
        let in_manifest: BTreeSet<String> = listed.iter().map(|(_, d)| d.clone()).collect();
        ensure!(files.len() == listed.len() && in_bundle == in_manifest, "bundle files {:?} vs manifest digests {in_manifest:?}", files.keys());
        Ok(())
    });
    case!(
        s,
        f.name("GET /bundles/{digest} 304: If-None-Match with the bundle's ETag"),
        &r,
        {
            // "304 | Representation not modified" (1.0.0, rc.3); "Clients MAY send
            // `If-None-Match` when revalidating cached resources".
            let bd = need(&bundle_digest)?;
            let reply = f
                .client
                .get(
                    &f.path(&format!("/bundles/{bd}")),
                    &[("if-none-match", &format!("\"{bd}\""))],
                )
                .await?;
            expect(&reply, 304)?;
            Ok(())
        }
    );
    case!(
        s,
        f.name("GET /bundles/{digest} 404: a digest the server does not have"),
        &f.w(true, &[Area::Mtls]),
        {
            // "404 | Bundle not found for the given digest"; problem type invalid-bundle.
            let reply = f
                .client
                .get(&f.path(&format!("/bundles/{}", digest(b"nothing"))), &[])
                .await?;
            expect_problem(&reply, 404, Some("invalid-bundle"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name("GET /bundles/{digest} 404: a malformed digest (R9)"),
        &f.w(true, &[Area::Desired, Area::Mtls]),
        {
            // "If the server cannot produce content whose digest matches this value
            // it MUST return 404 Not Found."
            let reply = f.client.get(&f.path("/bundles/md5:abc"), &[]).await?;
            expect_problem(&reply, 404, Some("invalid-bundle"))?;
            Ok(())
        }
    );
    if !f.rc3() {
        case!(
            s,
            f.name("GET /bundles/{digest} 400: a clientId that is not a URL-safe identifier"),
            &f.w(true, &[Area::Mtls]),
            {
                // 1.0.0/rc.2 list "'400': Invalid request." for this GET; the
                // client id is "URL safe" ("Unique Identifiers", 8e402245 page),
                // and route syntax is checked first (R2).
                let bd = digest(b"nothing");
                let reply = f
                    .client
                    .get(&format!("/api/v1/clients/a%2Fb/bundles/{bd}"), &[])
                    .await?;
                expect_problem(&reply, 400, Some("invalid-request"))?;
                Ok(())
            }
        );
    }
}

// ---- deployment status ----------------------------------------------------------

fn openapi_1_0_0_status(state: &str) -> Value {
    // workload-management-api-1.0.0.yaml `DeploymentStatusManifest` (lines
    // 501-530): required apiVersion, kind [DeploymentStatusManifest],
    // deploymentId, status{state}, components[{name, state}]; `error` with
    // `code` and `message` only.
    json!({
        "apiVersion": "deployment.margo.org/v1alpha1",
        "kind": "DeploymentStatusManifest",
        "deploymentId": CLUSTER_ID,
        "status": {"state": state, "error": {"code": "", "message": ""}},
        "components": [
            {"name": "database-services", "state": state},
            {"name": "digitron-orchestrator", "state": state}
        ]
    })
}

async fn deployment_status(s: &mut Suite, f: &Family) {
    let path = f.path(&format!("/deployments/{CLUSTER_ID}/status"));
    let example = fixture(STATUS_EXAMPLE);
    if f.rc3() {
        // deployment-status.md (rc.3 route, docs copy at 0450fb92): "200 OK |
        // The deployment status was updated successfully." / "201 Created |
        // The deployment status was created successfully." (R3).
        case!(
            s,
            f.name("POST /deployments/{id}/status 201: deployment-status.md example, first report"),
            &f.w(false, &[Area::Shapes]),
            {
                let reply = f
                    .client
                    .send_json(
                        Method::POST,
                        &path,
                        example.as_ref().map_err(|e| anyhow!("{e:#}"))?.as_bytes(),
                    )
                    .await?;
                expect(&reply, 201)
            }
        );
        case!(
            s,
            f.name("POST /deployments/{id}/status 200: the same example again (updated)"),
            &f.w(false, &[Area::Shapes]),
            {
                let reply = f
                    .client
                    .send_json(
                        Method::POST,
                        &path,
                        example.as_ref().map_err(|e| anyhow!("{e:#}"))?.as_bytes(),
                    )
                    .await?;
                expect(&reply, 200)
            }
        );
        case!(
            s,
            f.name("POST /deployments/{id}/status 200: rc.3 shape with adoptedManifestVersion"),
            &f.w(false, &[Area::Shapes, Area::Desired]),
            {
                // -1.0.0-rc.3.yaml DeploymentStatusManifest: required [deploymentId,
                // adoptedManifestVersion, status, components], no apiVersion/kind.
                let body = json!({
                    "deploymentId": CLUSTER_ID,
                    "adoptedManifestVersion": 2,
                    "status": {"state": "installed"},
                    "components": [
                        {"name": "database-services", "state": "installed"},
                        {"name": "digitron-orchestrator", "state": "installed"}
                    ]
                });
                let reply = f
                    .client
                    .send_json(Method::POST, &path, body.to_string().as_bytes())
                    .await?;
                expect(&reply, 200)
            }
        );
    } else {
        // 1.0.0/rc.2 OpenAPI: "'200': The deployment status was added, or
        // updated, successfully." (R3: 200 on clientId routes).
        case!(
            s,
            f.name("POST /deployments/{id}/status 200: deployment-status.md example"),
            &f.w(false, &[Area::Shapes]),
            {
                let reply = f
                    .client
                    .send_json(
                        Method::POST,
                        &path,
                        example.as_ref().map_err(|e| anyhow!("{e:#}"))?.as_bytes(),
                    )
                    .await?;
                expect(&reply, 200)
            }
        );
        case!(s, f.name("POST /deployments/{id}/status 200: 1.0.0 OpenAPI shape (kind DeploymentStatusManifest, error{code,message})"), &f.w(false, &[Area::Shapes]), {
            let body = openapi_1_0_0_status("installed").to_string();
            let reply = f.client.send_json(Method::POST, &path, body.as_bytes()).await?;
            expect(&reply, 200)
        });
    }
    case!(
        s,
        f.name("POST /deployments/{id}/status 400: malformed JSON"),
        &f.w(false, &[Area::Mtls]),
        {
            // rc.3: "'400': Malformed request body."; problem type invalid-request.
            let reply = f
                .client
                .send_json(Method::POST, &path, b"{\"deploymentId\": ")
                .await?;
            expect_problem(&reply, 400, Some("invalid-request"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name("POST /deployments/{id}/status 422: a state outside the enumeration"),
        &f.w(false, &[Area::Mtls]),
        {
            // "'422': Request body includes a semantic error."; states "MUST be one
            // the following options: pending, installing, installed, removing,
            // removed, failed".
            let body = json!({"deploymentId": CLUSTER_ID, "status": {"state": "exploded"}, "components": []});
            let reply = f
                .client
                .send_json(Method::POST, &path, body.to_string().as_bytes())
                .await?;
            expect_problem(&reply, 422, Some("semantic-error"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name(
            "POST /deployments/{id}/status 404: a deployment never assigned to this client (R6)"
        ),
        &f.w(false, &[Area::Desired, Area::Mtls]),
        {
            // problem-types.md: "deployment-not-found | 404"; R6: never stored.
            let mut body: Value =
                serde_json::from_str(example.as_ref().map_err(|e| anyhow!("{e:#}"))?)?;
            body["deploymentId"] = NEVER_ASSIGNED.into();
            let reply = f
                .client
                .send_json(
                    Method::POST,
                    &f.path(&format!("/deployments/{NEVER_ASSIGNED}/status")),
                    body.to_string().as_bytes(),
                )
                .await?;
            expect_problem(&reply, 404, Some("deployment-not-found"))?;
            Ok(())
        }
    );
    if !f.rc3() {
        signed_refusals(s, f, &path, openapi_1_0_0_status("installing").to_string()).await;
    }
}

/// 400 for a Content-Digest that does not match the body, 401 for a
/// signature by another key and for a tampered signature.
async fn signed_refusals(s: &mut Suite, f: &Family, path: &str, body: String) {
    let what = path.rsplit('/').next().unwrap_or("");
    case!(
        s,
        f.name(&format!(
            "POST …/{what} 400: Content-Digest does not match the body"
        )),
        &f.w(false, &[Area::Sig, Area::Mtls]),
        {
            // "'400': Missing or invalid content-digest header. Ensure the SHA256
            // hash of the payload is included."
            let mut headers = f.client.auth_headers(&Method::POST, path, Some(b"{}"))?;
            headers.push(("content-type".into(), "application/json".into()));
            let reply = f
                .client
                .raw(Method::POST, path, &headers, body.clone().into_bytes())
                .await?;
            expect_problem(&reply, 400, Some("invalid-request"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name(&format!(
            "POST …/{what} 401: signed with a key that is not the client's"
        )),
        &f.w(false, &[Area::Mtls]),
        {
            // "'401': Signature verification failed. Ensure you are signing with
            // the correct X.509 private key."
            let reply = f
                .stranger
                .send_json(Method::POST, path, body.as_bytes())
                .await?;
            expect_problem(&reply, 401, None)?;
            Ok(())
        }
    );
    case!(
        s,
        f.name(&format!("POST …/{what} 401: a tampered signature")),
        &f.w(false, &[Area::Mtls]),
        {
            let mut headers = f
                .client
                .auth_headers(&Method::POST, path, Some(body.as_bytes()))?;
            for (k, v) in headers.iter_mut() {
                if k == "signature" || k == "x-payload-signature" {
                    // Flip one base64 character inside the signature.
                    let i = v.len() - 4;
                    let c = if &v[i..i + 1] == "A" { "B" } else { "A" };
                    v.replace_range(i..i + 1, c);
                }
            }
            headers.push(("content-type".into(), "application/json".into()));
            let reply = f
                .client
                .raw(Method::POST, path, &headers, body.clone().into_bytes())
                .await?;
            expect_problem(&reply, 401, None)?;
            Ok(())
        }
    );
}

// ---- capabilities ------------------------------------------------------------------

/// A see-thru gateway level with only the identity fields (the
/// "without hosting capabilities" example's shape), for `gateway1/path1`,
/// which the deeper-hierarchy example sits under.
fn intermediate_gateway(id: &str, with_kind: bool) -> String {
    let mut v = json!({"properties": {
        "id": id, "vendor": "Gateway Vendor", "modelNumber": "GW-1000", "serialNumber": "GW12345679"
    }});
    if with_kind {
        v["apiVersion"] = "device.margo.org/v1alpha1".into();
        v["kind"] = "DeviceCapabilitiesManifest".into();
    }
    v.to_string()
}

async fn capabilities(s: &mut Suite, f: &Family) {
    let page = if f.rc3() {
        "versions-aae95624-device-capabilities"
    } else {
        "device-capabilities"
    };
    let caps = |name: &str| fixture(&format!("{page}/{name}.json"));
    let shapes = f.w(false, &[Area::Shapes]);
    // rc.2: "201 OK | The device capabilities document was added, or updated,
    // successfully" (R3: 201 either way); rc.3 page: "200 OK | ... updated",
    // "201 Created | ... created".
    let (created, updated) = if f.rc3() { (201, 200) } else { (201, 201) };

    if !f.rc3() {
        // 1.0.0: POST|PUT /api/v1/clients/{clientId}/capabilities, device id
        // in the body, `properties.roles` and `properties.resources`.
        let path = f.path("/capabilities");
        for method in [Method::POST, Method::PUT] {
            case!(s, f.name(&format!("{method} /capabilities 201 (1.0.0 path): 1.0.0 OpenAPI shape with roles and resources")), &shapes, {
                let body = fixture("workload-management-api-1.0.0/capabilities-roles-resources.json")?;
                let reply = f.client.send_json(method.clone(), &path, body.as_bytes()).await?;
                expect(&reply, 201)
            });
        }
    }
    case!(s, f.name(&format!("capabilities/{{deviceId}} {created}: {page}.md example payload (\"memory\": \"59 Gi\")")), &shapes, {
        let reply = f.report_capabilities(EXAMPLE_DEVICE, &caps("capabilities-example")?).await?;
        // Under 1.0.0 the 1.0.0-path report above already created it.
        expect(&reply, if f.rc3() { created } else { 201 })
    });
    case!(
        s,
        f.name(&format!(
            "capabilities/{{deviceId}} {updated}: the same example again"
        )),
        &shapes,
        {
            // rc.2 and rc.3 both have PUT for a replacement.
            let method = Method::PUT;
            let body = caps("capabilities-example")?;
            let reply = f
                .client
                .send_json(
                    method,
                    &f.path(&format!("/capabilities/{EXAMPLE_DEVICE}")),
                    body.as_bytes(),
                )
                .await?;
            expect(&reply, updated)
        }
    );
    // "Gateways considerations" examples, in the page's order: the gateway
    // first, then its children ("A see-thru gateway MUST report its own
    // capabilities to the WFM before reporting the capabilities of any
    // child devices").
    let steps: [(&str, &str, u16); 5] = [
        ("gateway1", "gateway1", created),
        ("gateway1", "gateway1-hosting", updated),
        ("gateway1/deviceA", "gateway1-deviceA", created),
        ("gateway1/path1", "", created),
        ("gateway1/path1/deviceA", "gateway1-path1-deviceA", created),
    ];
    for (device, file, status) in steps {
        let label = if file.is_empty() {
            "intermediate level (identity fields only)".to_string()
        } else {
            format!("{page}.md example {file}")
        };
        case!(
            s,
            f.name(&format!("capabilities/{device} {status}: {label}")),
            &shapes,
            {
                let body = if file.is_empty() {
                    intermediate_gateway(device, !f.rc3())
                } else {
                    caps(file)?
                };
                let reply = f.report_capabilities(device, &body).await?;
                expect(&reply, status)
            }
        );
    }
    case!(
        s,
        f.name("capabilities/{deviceId} 404: a child before its gateway"),
        &f.w(false, &[Area::Mtls, Area::Shapes]),
        {
            // "If a WFM receives a `DeviceCapabilitiesManifest` for a child-device
            // before it has received the `DeviceCapabilitiesManifest` of the parent
            // ... the WFM MUST reject the request with a 404 Not Found"; problem type
            // gateway-not-found.
            let mut body: Value = serde_json::from_str(&caps("gateway1-deviceA")?)?;
            body["properties"]["id"] = "gateway2/deviceA".into();
            let reply = f
                .report_capabilities("gateway2/deviceA", &body.to_string())
                .await?;
            expect_problem(&reply, 404, Some("gateway-not-found"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name("capabilities/{deviceId} 400: malformed JSON"),
        &f.w(false, &[Area::Mtls]),
        {
            // rc.3 page: "400 Bad Request | PUT: Malformed request body."
            let reply = f
                .report_capabilities("gateway1", "{\"properties\": {")
                .await?;
            expect_problem(&reply, 400, Some("invalid-request"))?;
            Ok(())
        }
    );
    case!(
        s,
        f.name("capabilities/{deviceId} 422: a required property (vendor) missing"),
        &f.w(false, &[Area::Mtls]),
        {
            // "422 Unprocessable Content | Request body includes a semantic error.";
            // `properties.required: [id, vendor, modelNumber, serialNumber]`.
            let mut body: Value = serde_json::from_str(&caps("gateway1")?)?;
            body["properties"]
                .as_object_mut()
                .context("properties")?
                .remove("vendor");
            let reply = f.report_capabilities("gateway1", &body.to_string()).await?;
            expect_problem(&reply, 422, Some("semantic-error"))?;
            Ok(())
        }
    );
    if !f.rc3() {
        let path = f.path("/capabilities/gateway1");
        let body = caps("gateway1").unwrap_or_default();
        signed_refusals(s, f, &path, body).await;
        case!(
            s,
            f.name("DELETE capabilities/{deviceId} 400: a deviceId outside the DeviceId pattern"),
            &f.w(true, &[Area::Mtls]),
            {
                // rc.2 lists 400 for DELETE; `DeviceId.pattern:
                // '^[A-Za-z0-9._~-]+(\/[A-Za-z0-9._~-]+)*$'`.
                let reply = f.client.delete(&f.path("/capabilities/bad%20id")).await?;
                expect_problem(&reply, 400, Some("invalid-request"))?;
                Ok(())
            }
        );
    }
    if f.scheme == Scheme::Rfc9421 {
        case!(
            s,
            f.name("DELETE capabilities/{deviceId} 401: a signed GET replayed as DELETE"),
            &f.w(true, &[Area::Mtls]),
            {
                // The signature covers "@method" and "@target-uri" (8e402245 page).
                let path = f.path("/capabilities/gateway1/deviceA");
                let headers = f.client.auth_headers(&Method::GET, &path, None)?;
                let reply = f
                    .client
                    .raw(Method::DELETE, &path, &headers, Vec::new())
                    .await?;
                expect_problem(&reply, 401, None)?;
                Ok(())
            }
        );
    }
    // X-Payload-Signature covers only the body, so it cannot bind a
    // bodiless DELETE to its method and path (issue 10 item 2); whether a
    // DELETE signed that way is served is left to the sig branch's reading,
    // and DELETE is checked with RFC 9421 and mTLS only.
    if f.scheme != Scheme::XPayload {
        case!(
            s,
            f.name("DELETE capabilities/gateway1/deviceA 204: the page's example"),
            &f.w(true, &[Area::Shapes]),
            {
                // "See-thru gateway informing the WFM that a child device is no longer
                // available: DELETE .../capabilities/gateway1/deviceA"; "204 No Content".
                let reply = f
                    .client
                    .delete(&f.path("/capabilities/gateway1/deviceA"))
                    .await?;
                expect(&reply, 204)
            }
        );
        case!(
            s,
            f.name("DELETE capabilities/{deviceId} 404: no such device"),
            &f.w(true, &[Area::Mtls]),
            {
                // "DELETE: No device with the given `deviceId` was found for the
                // client."; problem type device-not-found.
                let reply = f
                    .client
                    .delete(&f.path("/capabilities/gateway1/deviceA"))
                    .await?;
                expect_problem(&reply, 404, Some("device-not-found"))?;
                Ok(())
            }
        );
    }
}

// ---- authentication and revocation ------------------------------------------------

async fn unauthenticated(s: &mut Suite, f: &Family) {
    case!(
        s,
        f.name("GET /deployments 401: no credentials at all"),
        &f.w(true, &[Area::Sig, Area::Mtls]),
        {
            // R2: "Missing credentials → 401" (rc.3: "No/unknown certificate → 401
            // problem+json"). The 8e402245 page's 401 body is `{"error", "message"}`
            // (R4: both, as problem+json).
            let reply = f.anonymous.get(&f.path("/deployments"), &[]).await?;
            let body = expect_problem(&reply, 401, None)?;
            ensure!(
                body["error"].is_string() && body["message"].is_string(),
                "401 body lacks error/message: {body}"
            );
            Ok(())
        }
    );
    case!(
        s,
        f.name("GET /deployments 401: credentials the server does not know"),
        &f.w(true, &[Area::Sig, Area::Mtls]),
        {
            let reply = f.stranger.get(&f.path("/deployments"), &[]).await?;
            expect_problem(&reply, 401, None)?;
            Ok(())
        }
    );
    case!(s, f.name("POST /deployments/{id}/status 401 with Accept: application/json: the 8e402245 page's application/json body"), &f.w(false, &[Area::Sig, Area::Mtls]), {
        // "HTTP/1.1 401 Unauthorized / Content-Type: application/json /
        // {"error": "Invalid signature", "message": ...}" (R4). A POST: the
        // manifest GET would answer 406 first for this Accept (R2 order).
        let body = openapi_1_0_0_status("installing").to_string();
        let reply = f
            .stranger
            .signed(
                Method::POST,
                &f.path(&format!("/deployments/{CLUSTER_ID}/status")),
                &[("content-type", "application/json"), ("accept", "application/json")],
                Some(body.as_bytes()),
            )
            .await?;
        expect(&reply, 401)?;
        ensure!(reply.media_type().as_deref() == Some("application/json"), "{}", reply.describe());
        let body = reply.json()?;
        ensure!(body["error"].is_string() && body["message"].is_string(), "{body}");
        Ok(())
    });
}

async fn forbidden(s: &mut Suite, f: &Family, bundle: Option<&str>) {
    // 1.0.0/rc.2: "'403': Client certificate is not trusted or has been
    // revoked."; rc.3: "The request is not authorized by the WFM's local
    // policy"; problem type not-authorized (R2: revoked → 403 everywhere).
    let forbidden_type =
        |reply: &Reply| expect_problem(reply, 403, Some("not-authorized")).map(|_| ());
    case!(
        s,
        f.name("GET /deployments 403: revoked client"),
        &f.w(true, &[Area::Mtls]),
        { forbidden_type(&f.client.get(&f.path("/deployments"), &[]).await?) }
    );
    case!(
        s,
        f.name("GET /bundles/{digest} 403: revoked client"),
        &f.w(true, &[Area::Mtls]),
        {
            let bd = bundle
                .map(str::to_string)
                .unwrap_or_else(|| digest(b"nothing"));
            forbidden_type(
                &f.client
                    .get(&f.path(&format!("/bundles/{bd}")), &[])
                    .await?,
            )
        }
    );
    case!(
        s,
        f.name("GET /deployments/{id}/{digest} 403: revoked client"),
        &f.w(true, &[Area::Mtls]),
        {
            let path = f.path(&format!("/deployments/{CLUSTER_ID}/{}", digest(b"nothing")));
            forbidden_type(&f.client.get(&path, &[]).await?)
        }
    );
    case!(
        s,
        f.name("POST /deployments/{id}/status 403: revoked client"),
        &f.w(false, &[Area::Mtls]),
        {
            let body = openapi_1_0_0_status("installed").to_string();
            let path = f.path(&format!("/deployments/{CLUSTER_ID}/status"));
            forbidden_type(
                &f.client
                    .send_json(Method::POST, &path, body.as_bytes())
                    .await?,
            )
        }
    );
    case!(
        s,
        f.name("capabilities/{deviceId} 403: revoked client"),
        &f.w(false, &[Area::Mtls]),
        {
            let body = intermediate_gateway("gateway1", !f.rc3());
            forbidden_type(&f.report_capabilities("gateway1", &body).await?)
        }
    );
    if f.scheme != Scheme::XPayload {
        case!(
            s,
            f.name("DELETE capabilities/{deviceId} 403: revoked client"),
            &f.w(true, &[Area::Mtls]),
            { forbidden_type(&f.client.delete(&f.path("/capabilities/gateway1")).await?) }
        );
    }
}

/// The onboarding endpoints whose answers do not depend on the approval
/// mode: the CA download and a refused certificate.
async fn onboarding_any_mode(s: &mut Suite, addr: SocketAddr, ca: &str) -> Result<()> {
    let device = self_signed_device("not-onboarded")?;
    let xps = SpecClient::new(
        addr,
        "localhost",
        ca,
        None,
        Signing::XPayload(XPayloadSigner::new(&device.key_pkcs8)?),
    )?;
    let mtls = [Area::Mtls];
    case!(
        s,
        "GET /api/v1/onboarding/certificate 200: {certificate} is the root CA",
        &[],
        {
            // certificate-api.md: "200 OK | Root CA provided in response",
            // `{"certificate":"<base-64 encoded certificate text>"}`.
            let plain = SpecClient::new(addr, "localhost", ca, None, Signing::None)?;
            let reply = plain.get("/api/v1/onboarding/certificate", &[]).await?;
            expect(&reply, 200)?;
            ensure!(
                reply.media_type().as_deref() == Some("application/json"),
                "{}",
                reply.describe()
            );
            let text = reply.json()?["certificate"]
                .as_str()
                .context("certificate member")?
                .to_string();
            let raw = data_encoding::BASE64.decode(text.trim().as_bytes())?;
            let ca_der = pem_certificate(ca.as_bytes())?;
            // "Base64-encoded certificate text": base64 of PEM or of DER.
            let served_der = if raw.starts_with(b"-----BEGIN") {
                pem_certificate(&raw)?
            } else {
                raw
            };
            ensure!(
                served_der == ca_der,
                "the served certificate is not the CA the TLS server chains to"
            );
            Ok(())
        }
    );

    case!(
        s,
        "POST /api/v1/onboarding 400: not a certificate (problem+json with `error`)",
        &mtls,
        {
            // "400 Invalid Certificate | Invalid certificate format or structure."
            let reply = onboard(&xps, "bm90IGEgY2VydGlmaWNhdGU=", None).await?;
            onboarding_error(&reply, 400, "invalid-request", false)
        }
    );
    case!(s, "POST /api/v1/onboarding 400 with Accept: application/json: `{\"error\": ...}` as application/json", &mtls, {
        let reply = onboard(&xps, "bm90IGEgY2VydGlmaWNhdGU=", Some("application/json")).await?;
        onboarding_error(&reply, 400, "invalid-request", true)
    });
    Ok(())
}

/// Every endpoint of every family against one manager with the shipped
/// defaults, identities provisioned as `margoctl clients add` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn margo_http_api_with_shipped_defaults() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let manager = start_manager(dir.path(), "").await?;
    let addr = manager
        .http_addr()
        .context("the HTTPS listener is on by default")?;
    let ctl = manager.admin();
    let mut s = Suite::new("Margo HTTP API, shipped defaults");

    let mut families = Vec::new();
    let mut bundles: Vec<ProvisionedBundle> = Vec::new();
    for (label, scheme, name) in [
        (
            "1.0.0/rc.2 clientId routes, RFC 9421",
            Scheme::Rfc9421,
            "conf-rfc9421",
        ),
        (
            "1.0.0/rc.2 clientId routes, X-Payload-Signature",
            Scheme::XPayload,
            "conf-xpayload",
        ),
        ("rc.3 routes, mutual TLS", Scheme::MutualTls, "conf-mtls"),
    ] {
        let b = admin("provision a client", ctl.add_client(name, None)).await?;
        let id = Identity::from_pem(&b.cert_pem, &b.key_pem)?;
        families.push(Family::new(
            label,
            scheme,
            addr,
            &b.ca_pem,
            b.client_id.as_str(),
            &id,
        )?);
        bundles.push(b);
    }

    onboarding_any_mode(&mut s, addr, manager.pki().ca_pem()).await?;
    for f in &families {
        zero_manifest(&mut s, f).await;
        unauthenticated(&mut s, f).await;
    }

    // Deploy the two ApplicationDeployment examples of desired-state.md.
    let mut docs = BTreeMap::new();
    docs.insert(CLUSTER_ID, fixture(CLUSTER_YAML)?);
    docs.insert(STANDALONE_ID, fixture(STANDALONE_YAML)?);
    for b in &bundles {
        let texts: Vec<String> = docs.values().cloned().collect();
        case!(
            s,
            format!("setup: deploy the desired-state.md examples to {}", b.name),
            &[],
            {
                admin("deploy", ctl.deploy(b.client_id.as_str(), texts)).await?;
                Ok(())
            }
        );
    }

    let mut bundle_digests = Vec::new();
    for f in &families {
        desired_state(&mut s, f, &docs).await;
        let reply = f.client.get(&f.path("/deployments"), &[]).await.ok();
        bundle_digests.push(
            reply
                .and_then(|r| r.json().ok())
                .and_then(|m| m["bundle"]["digest"].as_str().map(str::to_string)),
        );
        deployment_status(&mut s, f).await;
        capabilities(&mut s, f).await;
    }

    for ((f, b), bd) in families.iter().zip(&bundles).zip(&bundle_digests) {
        admin("revoke", ctl.revoke(b.client_id.as_str())).await?;
        forbidden(&mut s, f, bd.as_deref()).await;
    }

    tokio::time::timeout(conformance::WAIT, manager.shutdown())
        .await
        .context("manager shutdown")?;
    s.finish()
}

// ---- onboarding (1.0.0, rc.2) --------------------------------------------------------

/// `POST /api/v1/onboarding` signed with `X-Payload-Signature` (1.0.0 and
/// rc.2 list `security: - PayloadSignature: []` for it; the key is the key
/// of the certificate in the body) with the page's request body.
async fn onboard(client: &SpecClient, certificate: &str, accept: Option<&str>) -> Result<Reply> {
    // device-client-onboarding.md "Example Request Body".
    let body = json!({
        "apiVersion": "onboarding.margo.org/v1alpha1",
        "kind": "OnboardingRequest",
        "certificate": certificate
    })
    .to_string();
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = accept {
        headers.push(("accept", a));
    }
    client
        .signed(
            Method::POST,
            "/api/v1/onboarding",
            &headers,
            Some(body.as_bytes()),
        )
        .await
}

/// An onboarding error (R4): problem members and the older revisions'
/// `error` member; `application/problem+json` unless the request's Accept
/// names only `application/json`.
fn onboarding_error(reply: &Reply, status: u16, name: &str, accept_json: bool) -> Result<()> {
    if accept_json {
        expect(reply, status)?;
        ensure!(
            reply.media_type().as_deref() == Some("application/json"),
            "{}",
            reply.describe()
        );
    } else {
        expect_problem(reply, status, Some(name))?;
    }
    let body = reply.json()?;
    // 1.0.0/rc.2: `{"error": "Invalid certificate"}` / `{"error": "Client rejected"}`.
    ensure!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "no `error` member: {body}"
    );
    Ok(())
}

/// A client that only knows the texts: downloads the CA, onboards with a
/// self-signed certificate (201 in auto-approval mode), uses the assigned
/// client id with both signing schemes and its certificate over mTLS, and
/// meets 400 and 403 as the onboarding page lists them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_margo_onboarding_with_auto_approval() -> Result<()> {
    margo_tests::init_tracing();
    let dir = tempfile::tempdir()?;
    let mut s = Suite::new("Margo onboarding, auto-approval on loopback");
    let mtls = [Area::Mtls];
    let Some(manager) = case!(
        s,
        "setup: a manager with [onboarding] automatic approval on its loopback listener",
        &mtls,
        { start_manager(dir.path(), AUTO_APPROVAL_TOML).await }
    ) else {
        return s.finish();
    };
    let addr = manager.http_addr().context("HTTPS listener")?;
    let ca = manager.pki().ca_pem().to_string();

    let device = self_signed_device("plain-margo-device")?;
    let xps = SpecClient::new(
        addr,
        "localhost",
        &ca,
        None,
        Signing::XPayload(XPayloadSigner::new(&device.key_pkcs8)?),
    )?;
    let client_id = case!(
        s,
        "POST /api/v1/onboarding 201: {clientId} for a self-signed certificate with CA:TRUE",
        &mtls,
        {
            // device-client-onboarding.md: "201 Created | New client onboarded
            // successfully." Body `{"clientId": "<... URL safe string identifier>"}`;
            // extra members only as specification extensions
            // (`x-<unique-name>-extensions`, specification-extensions.md).
            let reply = onboard(&xps, &device.certificate_base64(), None).await?;
            expect(&reply, 201)?;
            ensure!(
                reply.media_type().as_deref() == Some("application/json"),
                "{}",
                reply.describe()
            );
            let body = reply.json()?;
            let obj = body.as_object().context("a JSON object")?;
            for key in obj.keys() {
                ensure!(
                    key == "clientId" || (key.starts_with("x-") && key.ends_with("-extensions")),
                    "member {key:?} is neither clientId nor a specification extension: {body}"
                );
            }
            let id = body["clientId"].as_str().context("clientId")?.to_string();
            ensure!(
                !id.is_empty()
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)),
                "clientId {id:?} is not URL safe"
            );
            Ok(id)
        }
    );

    case!(
        s,
        "POST /api/v1/onboarding 201 signed with HTTP Message Signatures (RFC 9421)",
        &mtls,
        {
            // device-client-onboarding.md: "Requests to this endpoint MUST be
            // authenticated using the HTTP Message Signature method"; the
            // client has no id yet, so its keyid names its certificate (the
            // page leaves the value open: "Key-Name").
            let other = self_signed_device("plain-margo-device-rfc9421")?;
            let signer = Rfc9421Signer::new(&other.key_pkcs8, "onboarding-certificate")?;
            let rfc = SpecClient::new(addr, "localhost", &ca, None, Signing::Rfc9421(signer))?;
            let reply = onboard(&rfc, &other.certificate_base64(), None).await?;
            expect(&reply, 201)?;
            let body = reply.json()?;
            ensure!(
                body["clientId"].as_str().is_some_and(|id| !id.is_empty()),
                "{body}"
            );
            Ok(())
        }
    );

    if let Some(id) = &client_id {
        let rfc = SpecClient::new(
            addr,
            "localhost",
            &ca,
            None,
            Signing::Rfc9421(Rfc9421Signer::new(&device.key_pkcs8, id)?),
        )?;
        let by_cert = SpecClient::new(addr, "localhost", &ca, Some(&device), Signing::None)?;
        let manifest = format!("/api/v1/clients/{id}/deployments");
        case!(
            s,
            "onboarded, RFC 9421: GET …/deployments 200 zero-deployment manifest",
            &[Area::Sig, Area::Desired],
            {
                let (m, _) = manifest_200(&rfc.get(&manifest, &[]).await?)?;
                ensure!(m["manifestVersion"] == 1 && m["bundle"].is_null(), "{m}");
                Ok(())
            }
        );
        case!(
            s,
            "onboarded, X-Payload-Signature: GET …/deployments 200",
            &[Area::Sig, Area::Desired],
            { manifest_200(&xps.get(&manifest, &[]).await?).map(|_| ()) }
        );
        case!(s, "onboarded, RFC 9421: POST …/capabilities/{deviceId} 201 device-capabilities.md example", &[Area::Sig, Area::Shapes], {
            let body = fixture("device-capabilities/capabilities-example.json")?;
            let reply = rfc
                .send_json(Method::POST, &format!("/api/v1/clients/{id}/capabilities/{EXAMPLE_DEVICE}"), body.as_bytes())
                .await?;
            expect(&reply, 201)
        });
        case!(s, "onboarded, RFC 9421 as the page writes it (\"Content-Digest\" capitalised): PUT …/capabilities/{deviceId} 201", &[Area::Sig, Area::Shapes], {
            // 8e402245 page: `sig1=("@method" "@target-uri" "Content-Digest")`.
            let page_form = SpecClient::new(
                addr,
                "localhost",
                &ca,
                None,
                Signing::Rfc9421(Rfc9421Signer::new(&device.key_pkcs8, id)?.with_digest_component("Content-Digest")),
            )?;
            let body = fixture("device-capabilities/capabilities-example.json")?;
            let reply = page_form
                .send_json(Method::PUT, &format!("/api/v1/clients/{id}/capabilities/{EXAMPLE_DEVICE}"), body.as_bytes())
                .await?;
            expect(&reply, 201)
        });
        case!(s, "onboarded, rc.3 over mTLS with the onboarding certificate: GET /api/v1/deployments 200", &[Area::Mtls, Area::Desired], {
            manifest_200(&by_cert.get("/api/v1/deployments", &[]).await?).map(|_| ())
        });
    }

    if let Some(id) = &client_id {
        case!(
            s,
            "POST /api/v1/onboarding 403: the certificate of a revoked client",
            &mtls,
            {
                // "403 Forbidden | Client certificate is not trusted or client rejected."
                admin("revoke", manager.admin().revoke(id)).await?;
                let reply = onboard(&xps, &device.certificate_base64(), None).await?;
                onboarding_error(&reply, 403, "not-authorized", false)?;
                let reply =
                    onboard(&xps, &device.certificate_base64(), Some("application/json")).await?;
                onboarding_error(&reply, 403, "not-authorized", true)
            }
        );
    }

    tokio::time::timeout(conformance::WAIT, manager.shutdown())
        .await
        .context("manager shutdown")?;
    s.finish()
}

#[test]
fn content_digest_is_rfc_9530_sha256() {
    // RFC 9530 Appendix B: `{"hello": "world"}` → sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:
    assert_eq!(
        content_digest(b"{\"hello\": \"world\"}"),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    );
}

#[test]
fn rfc9421_signature_base_and_raw_ecdsa_signature() -> Result<()> {
    // The base as RFC 9421 §2.5 builds it for the components the 8e402245
    // page names, and a 64-byte r||s signature (§3.3.4) that verifies.
    let key = KeyPair::generate()?;
    let signer = Rfc9421Signer::new(&key.serialize_der(), "client-1")?;
    let (base, params) = signer.signature_base(
        "POST",
        "https://wfm.example:8443/api/v1/clients/client-1/deployments/d1/status",
        Some("sha-256=:abc=:"),
        1680575171,
    );
    assert_eq!(
        base,
        "\"@method\": POST\n\
         \"@target-uri\": https://wfm.example:8443/api/v1/clients/client-1/deployments/d1/status\n\
         \"content-digest\": sha-256=:abc=:\n\
         \"@signature-params\": (\"@method\" \"@target-uri\" \"content-digest\");created=1680575171;keyid=\"client-1\""
    );
    assert_eq!(
        params,
        "(\"@method\" \"@target-uri\" \"content-digest\");created=1680575171;keyid=\"client-1\""
    );
    let signature = signer.sign(base.as_bytes())?;
    assert_eq!(signature.len(), 64);
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_FIXED,
        key.public_key_raw(),
    )
    .verify(base.as_bytes(), &signature)
    .map_err(|_| anyhow!("the r||s signature does not verify"))?;
    // Without content: no content-digest component.
    let (base, _) = signer.signature_base("GET", "https://h/x", None, 1);
    assert_eq!(
        base,
        "\"@method\": GET\n\"@target-uri\": https://h/x\n\"@signature-params\": (\"@method\" \"@target-uri\");created=1;keyid=\"client-1\""
    );
    Ok(())
}
