//! Margo `ApplicationDeployment`: parsed from YAML, validated, and kept as
//! its exact bytes so the digest is the same everywhere.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::ids::DeploymentId;

mod fields;

pub use fields::is_extension_key;

/// The pages' `apiVersion` (desired-state.md and its examples).
pub const API_VERSION: &str = "application.margo.org/v1alpha1";
/// Every `apiVersion` a published text gives an ApplicationDeployment: the
/// pages' [`API_VERSION`], `margo.org/v1alpha1` (the OpenAPI's default group
/// with the version), and `margo.org` (the 1.0.0/rc.2 OpenAPI default as
/// written). The document keeps its own value.
pub const ACCEPTED_API_VERSIONS: &[&str] = &[API_VERSION, "margo.org/v1alpha1", "margo.org"];
pub const KIND: &str = "ApplicationDeployment";
/// Largest ApplicationDeployment document we accept.
pub const MAX_YAML_BYTES: usize = 512 * 1024;
/// Most components one deployment may have.
pub const MAX_COMPONENTS: usize = 64;
/// Most parameters one deployment may have.
pub const MAX_PARAMETERS: usize = 512;

/// Why a document is not a valid ApplicationDeployment. `field` is a path into the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentError {
    #[error("document is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not valid YAML for an ApplicationDeployment: {0}")]
    Yaml(String),
    #[error("{field}: missing")]
    Missing { field: String },
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// A key the Margo schema does not allow where it is closed, or a near
    /// miss of a key it defines ([`ApplicationDeployment::parse_strict`]).
    #[error("{field}: unknown field; {hint}")]
    UnknownField { field: String, hint: String },
}

fn missing(field: &str) -> DeploymentError {
    DeploymentError::Missing {
        field: field.to_string(),
    }
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> DeploymentError {
    DeploymentError::Invalid {
        field: field.into(),
        problem: problem.into(),
    }
}

/// How a deployment is packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProfileType {
    #[serde(rename = "helm.v3")]
    HelmV3,
    #[serde(rename = "compose")]
    Compose,
}

impl ProfileType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HelmV3 => "helm.v3",
            Self::Compose => "compose",
        }
    }
}

/// One component of a deployment profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    pub name: String,
    /// Free-form properties (repository, revision, packageLocation, wait, timeout, ...).
    #[serde(default)]
    pub properties: BTreeMap<String, serde_json::Value>,
}

/// Where a parameter value is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParameterTarget {
    pub pointer: String,
    pub components: Vec<String>,
}

/// A named parameter and its targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameter {
    pub value: serde_json::Value,
    pub targets: Vec<ParameterTarget>,
}

// ---- tolerant wire form -------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireDoc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<WireMetadata>,
    spec: Option<WireSpec>,
}

#[derive(Deserialize)]
struct WireMetadata {
    name: Option<String>,
    namespace: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireSpec {
    deployment_profile: Option<WireProfile>,
    #[serde(default)]
    parameters: Option<BTreeMap<String, WireParameter>>,
}

#[derive(Deserialize)]
struct WireProfile {
    #[serde(rename = "type")]
    kind: Option<String>,
    components: Option<Vec<WireComponent>>,
}

#[derive(Deserialize)]
struct WireComponent {
    name: Option<String>,
    #[serde(default)]
    properties: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Deserialize)]
struct WireParameter {
    value: Option<serde_json::Value>,
    targets: Option<Vec<WireTarget>>,
}

#[derive(Deserialize)]
struct WireTarget {
    pointer: Option<String>,
    components: Option<Vec<String>>,
}

// ---- validated domain form ----------------------------------------------------

/// A validated ApplicationDeployment together with its exact bytes and digest.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplicationDeployment {
    bytes: Vec<u8>,
    digest: Digest,
    /// The document's own `apiVersion` (one of [`ACCEPTED_API_VERSIONS`]).
    pub api_version: String,
    pub id: DeploymentId,
    pub name: String,
    pub namespace: Option<String>,
    pub application_id: Option<String>,
    pub profile: ProfileType,
    pub components: Vec<Component>,
    pub parameters: BTreeMap<String, Parameter>,
}

impl ApplicationDeployment {
    /// Parses and validates a YAML document, keeping `bytes` untouched.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, DeploymentError> {
        if bytes.len() > MAX_YAML_BYTES {
            return Err(DeploymentError::TooLarge {
                len: bytes.len(),
                max: MAX_YAML_BYTES,
            });
        }
        let doc: WireDoc =
            serde_norway::from_slice(&bytes).map_err(|e| DeploymentError::Yaml(e.to_string()))?;
        let api_version = doc.api_version.ok_or_else(|| missing("apiVersion"))?;
        if !ACCEPTED_API_VERSIONS.contains(&api_version.as_str()) {
            return Err(invalid(
                "apiVersion",
                format!(
                    "expected one of {}, got {api_version:?}",
                    ACCEPTED_API_VERSIONS.join(", ")
                ),
            ));
        }
        let kind = doc.kind.ok_or_else(|| missing("kind"))?;
        if kind != KIND {
            return Err(invalid("kind", format!("expected {KIND}, got {kind:?}")));
        }
        let metadata = doc.metadata.ok_or_else(|| missing("metadata"))?;
        let name = metadata.name.ok_or_else(|| missing("metadata.name"))?;
        if name.trim().is_empty() {
            return Err(invalid("metadata.name", "must not be empty"));
        }
        let id = match metadata.annotations.get("id") {
            Some(serde_json::Value::String(s)) => DeploymentId::new(s.as_str())
                .map_err(|e| invalid("metadata.annotations.id", e.to_string()))?,
            Some(_) => return Err(invalid("metadata.annotations.id", "must be a string")),
            None => return Err(missing("metadata.annotations.id")),
        };
        let application_id = match metadata.annotations.get("applicationId") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(invalid(
                    "metadata.annotations.applicationId",
                    "must be a string",
                ))
            }
            None => None,
        };
        let spec = doc.spec.ok_or_else(|| missing("spec"))?;
        let profile = spec
            .deployment_profile
            .ok_or_else(|| missing("spec.deploymentProfile"))?;
        let profile_type = match profile.kind.as_deref() {
            Some("helm.v3") => ProfileType::HelmV3,
            Some("compose") => ProfileType::Compose,
            Some(other) => {
                return Err(invalid(
                    "spec.deploymentProfile.type",
                    format!("unknown type {other:?} (expected helm.v3 or compose)"),
                ))
            }
            None => return Err(missing("spec.deploymentProfile.type")),
        };
        let wire_components = profile
            .components
            .ok_or_else(|| missing("spec.deploymentProfile.components"))?;
        if wire_components.is_empty() {
            return Err(invalid(
                "spec.deploymentProfile.components",
                "must list at least one component",
            ));
        }
        if wire_components.len() > MAX_COMPONENTS {
            return Err(invalid(
                "spec.deploymentProfile.components",
                format!(
                    "{} components, the limit is {MAX_COMPONENTS}",
                    wire_components.len()
                ),
            ));
        }
        let mut components = Vec::with_capacity(wire_components.len());
        for (i, c) in wire_components.into_iter().enumerate() {
            let field = format!("spec.deploymentProfile.components[{i}].name");
            let name = c.name.ok_or_else(|| missing(&field))?;
            if name.is_empty() || !name.chars().all(crate::ids::is_unreserved) {
                return Err(invalid(
                    field,
                    format!("{name:?} must be non-empty RFC 3986 unreserved characters"),
                ));
            }
            if components
                .iter()
                .any(|other: &Component| other.name == name)
            {
                return Err(invalid(field, format!("duplicate component {name:?}")));
            }
            components.push(Component {
                name,
                properties: c.properties.unwrap_or_default(),
            });
        }
        let wire_params = spec.parameters.unwrap_or_default();
        if wire_params.len() > MAX_PARAMETERS {
            return Err(invalid(
                "spec.parameters",
                format!(
                    "{} parameters, the limit is {MAX_PARAMETERS}",
                    wire_params.len()
                ),
            ));
        }
        let mut parameters = BTreeMap::new();
        for (pname, p) in wire_params {
            let base = format!("spec.parameters.{pname}");
            let value = p.value.ok_or_else(|| missing(&format!("{base}.value")))?;
            let wire_targets = p
                .targets
                .ok_or_else(|| missing(&format!("{base}.targets")))?;
            let mut targets = Vec::with_capacity(wire_targets.len());
            for (t, target) in wire_targets.into_iter().enumerate() {
                let tbase = format!("{base}.targets[{t}]");
                let pointer = target
                    .pointer
                    .ok_or_else(|| missing(&format!("{tbase}.pointer")))?;
                if pointer.is_empty() {
                    return Err(invalid(format!("{tbase}.pointer"), "must not be empty"));
                }
                let names = target
                    .components
                    .ok_or_else(|| missing(&format!("{tbase}.components")))?;
                for n in &names {
                    if !components.iter().any(|c| &c.name == n) {
                        return Err(invalid(
                            format!("{tbase}.components"),
                            format!("names unknown component {n:?}"),
                        ));
                    }
                }
                targets.push(ParameterTarget {
                    pointer,
                    components: names,
                });
            }
            parameters.insert(pname, Parameter { value, targets });
        }
        let digest = Digest::of(&bytes);
        Ok(Self {
            bytes,
            digest,
            api_version,
            id,
            name,
            namespace: metadata.namespace,
            application_id,
            profile: profile_type,
            components,
            parameters,
        })
    }

    /// [`Self::parse`], then refuses unknown fields where the Margo schema
    /// is closed and near misses of the keys it defines elsewhere (see
    /// `deployment/fields.rs`): for documents an operator submits, where a
    /// typo would otherwise deploy silently without what it meant. What a
    /// device receives is parsed with [`Self::parse`], which ignores them.
    pub fn parse_strict(bytes: Vec<u8>) -> Result<Self, DeploymentError> {
        let parsed = Self::parse(bytes)?;
        fields::check(&parsed.bytes)?;
        Ok(parsed)
    }

    /// Parses and checks that the bytes hash to `expected`.
    pub fn parse_verified(bytes: Vec<u8>, expected: &Digest) -> Result<Self, VerifiedParseError> {
        expected.verify(&bytes)?;
        Ok(Self::parse(bytes)?)
    }

    /// The exact document bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// `sha256:` digest of the exact bytes.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The parameters that target `component`, as `(name, pointer, value)`.
    pub fn parameters_for<'a>(
        &'a self,
        component: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str, &'a serde_json::Value)> + 'a {
        self.parameters.iter().flat_map(move |(name, p)| {
            p.targets
                .iter()
                .filter(move |t| t.components.iter().any(|c| c == component))
                .map(move |t| (name.as_str(), t.pointer.as_str(), &p.value))
        })
    }
}

/// The document's `metadata.name`, if it has one: to name a document in an
/// error when its parse failed.
pub fn document_name(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Doc {
        metadata: Option<Meta>,
    }
    #[derive(Deserialize)]
    struct Meta {
        name: Option<String>,
    }
    serde_norway::from_slice::<Doc>(bytes)
        .ok()?
        .metadata?
        .name
        .filter(|n| !n.trim().is_empty())
}

/// A digest check or a parse failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifiedParseError {
    #[error(transparent)]
    Digest(#[from] crate::digest::DigestError),
    #[error(transparent)]
    Deployment(#[from] DeploymentError),
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const HELM: &str = r#"apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: a3e2f5dc-912e-494f-8395-52cf3769bc06
    applicationId: com-northstartida-digitron-orchestrator
  name: digitron-orchestrator-deployment
  namespace: margo-poc
spec:
  deploymentProfile:
    type: helm.v3
    components:
      - name: database-services
        properties:
          repository: oci://quay.io/charts/realtime-database-services
          revision: 2.3.7
          timeout: 8m30s
          wait: true
      - name: digitron-orchestrator
        properties:
          repository: oci://northstarida.azurecr.io/charts/northstarida-digitron-orchestrator
          revision: 1.0.9
          wait: true
  parameters:
    adminName:
      value: Some One
      targets:
        - pointer: administrator.name
          components: ["digitron-orchestrator"]
    idpUrl:
      value: https://123.456.789.555:8444
      targets:
        - pointer: idp.providerUrl
          components: ["digitron-orchestrator"]
        - pointer: idp.url
          components: ["database-services"]
"#;

    #[test]
    fn parses_helm_example_and_keeps_bytes() {
        let d = ApplicationDeployment::parse(HELM.as_bytes().to_vec()).unwrap();
        assert_eq!(d.id.as_str(), "a3e2f5dc-912e-494f-8395-52cf3769bc06");
        assert_eq!(d.profile, ProfileType::HelmV3);
        assert_eq!(d.components.len(), 2);
        assert_eq!(d.bytes(), HELM.as_bytes());
        assert_eq!(d.digest(), Digest::of(HELM.as_bytes()));
        let for_db: Vec<_> = d.parameters_for("database-services").collect();
        assert_eq!(for_db.len(), 1);
        assert_eq!(for_db[0].1, "idp.url");
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                HELM.replace("kind: ApplicationDeployment", "kind: Other"),
                "kind",
            ),
            (
                HELM.replace("    id: a3e2f5dc-912e-494f-8395-52cf3769bc06\n", ""),
                "metadata.annotations.id",
            ),
            (
                HELM.replace("type: helm.v3", "type: k8s"),
                "spec.deploymentProfile.type",
            ),
            (
                HELM.replace(
                    "components: [\"database-services\"]",
                    "components: [\"nope\"]",
                ),
                "spec.parameters.idpUrl.targets[1].components",
            ),
            (
                HELM.replace("id: a3e2f5dc-912e-494f-8395-52cf3769bc06", "id: ../etc"),
                "metadata.annotations.id",
            ),
        ];
        for (doc, field) in cases {
            let err = ApplicationDeployment::parse(doc.into_bytes()).unwrap_err();
            assert!(
                err.to_string().starts_with(field),
                "{err} does not name {field}"
            );
        }
        assert!(matches!(
            ApplicationDeployment::parse(b"{ not: [yaml".to_vec()),
            Err(DeploymentError::Yaml(_))
        ));
    }

    #[test]
    fn accepts_every_published_api_version_and_keeps_it() {
        for api_version in ACCEPTED_API_VERSIONS {
            let doc = HELM.replace(API_VERSION, api_version);
            let d = ApplicationDeployment::parse(doc.clone().into_bytes()).unwrap();
            assert_eq!(d.api_version, *api_version);
            assert_eq!(d.bytes(), doc.as_bytes());
        }
        let err = ApplicationDeployment::parse(HELM.replace(API_VERSION, "apps/v1").into_bytes())
            .unwrap_err();
        assert!(err.to_string().starts_with("apiVersion"), "{err}");
    }

    /// Issue 12, finding 8: typos are refused by the strict parse, naming
    /// the field; the lenient parse (the agent's) still takes them.
    #[test]
    fn strict_parse_refuses_typos_and_names_the_field() {
        let cases = [
            (
                HELM.replace("  parameters:", "  paramters:"),
                "spec.paramters",
            ),
            (
                HELM.replace("    type: helm.v3", "    type: helm.v3\n    typ: helm.v3"),
                "spec.deploymentProfile.typ",
            ),
            (
                HELM.replace("          revision: 2.3.7", "          revison: 2.3.7"),
                "spec.deploymentProfile.components[0].properties.revison",
            ),
            (
                HELM.replace(
                    "      - name: digitron-orchestrator\n",
                    "      - name: digitron-orchestrator\n        propreties: {}\n",
                ),
                "spec.deploymentProfile.components[1].propreties",
            ),
            (
                HELM.replace(
                    "        - pointer: idp.url",
                    "        - pointr: idp.url\n          pointer: idp.url",
                ),
                "spec.parameters.idpUrl.targets[1].pointr",
            ),
            (
                HELM.replace("  namespace: margo-poc", "  namespce: margo-poc"),
                "metadata.namespce",
            ),
            (
                HELM.replace("    applicationId:", "    applicationID:"),
                "metadata.annotations.applicationID",
            ),
            (
                HELM.replace("  parameters:", "  x-Acme-extensions: {}\n  parameters:"),
                "spec.x-Acme-extensions",
            ),
            (
                HELM.replace("  parameters:", "  x-acme-extensions: 3\n  parameters:"),
                "spec.x-acme-extensions",
            ),
        ];
        for (doc, field) in cases {
            ApplicationDeployment::parse(doc.clone().into_bytes())
                .unwrap_or_else(|e| panic!("the lenient parse refuses {field}: {e}"));
            let err = ApplicationDeployment::parse_strict(doc.into_bytes()).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("{field}: ")),
                "{err} does not name {field}"
            );
        }
        let err = ApplicationDeployment::parse_strict(
            HELM.replace("  parameters:", "  paramters:").into_bytes(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("did you mean parameters?"),
            "{err}"
        );
    }

    #[test]
    fn strict_parse_takes_what_the_spec_allows() {
        let extended = HELM
            .replace("  parameters:", "  x-acme-extensions:\n    tier: gold\n  applicationId: digitron\n  parameters:")
            .replace("    type: helm.v3", "    type: helm.v3\n    x-acme-extensions: {}\n    deviceConstraints: {}")
            .replace("      - name: database-services\n", "      - name: database-services\n        x-acme-extensions: {a: 1}\n")
            .replace("          wait: true\n      - name: digitron", "          wait: true\n          simulatedDelayMs: 5\n          x-custom: 1\n      - name: digitron")
            .replace("  namespace: margo-poc", "  namespace: margo-poc\n  labels: {a: b}\n  owner: ops")
            .replace("kind: ApplicationDeployment", "kind: ApplicationDeployment\nstatus: {}");
        let d = ApplicationDeployment::parse_strict(extended.clone().into_bytes()).unwrap();
        assert_eq!(d.bytes(), extended.as_bytes());
        ApplicationDeployment::parse_strict(HELM.as_bytes().to_vec()).unwrap();
    }

    #[test]
    fn document_name_is_read_even_from_an_invalid_document() {
        let doc = HELM.replace("  parameters:", "  paramters:");
        assert_eq!(
            document_name(doc.as_bytes()).as_deref(),
            Some("digitron-orchestrator-deployment")
        );
        assert_eq!(document_name(b"{ not: [yaml"), None);
        assert_eq!(document_name(b"kind: X"), None);
    }

    #[test]
    fn verified_parse_rejects_tampered_bytes() {
        let digest = Digest::of(HELM.as_bytes());
        let tampered = HELM.replace("2.3.7", "2.3.8").into_bytes();
        assert!(matches!(
            ApplicationDeployment::parse_verified(tampered, &digest),
            Err(VerifiedParseError::Digest(_))
        ));
    }
}
