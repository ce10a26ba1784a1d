//! The state manifest of one client, built from one [`DesiredState`] read.
//!
//! The MQTT publisher and the HTTP API both call [`build`], so a device sees
//! the same `manifestVersion`, deployment ids, digests and sizes on either
//! transport; only the retrieval hints differ (`url` and `bundle` exist in
//! the HTTP form only, MQTT implies them by topic).

use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::{BundleRef, DeploymentRef, StateManifest};

use crate::store::DesiredState;

/// Media type of a deployment bundle.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";

/// Path of a client's manifest.
pub fn manifest_path(client: &ClientId) -> String {
    format!("/api/v1/clients/{client}/deployments")
}

/// Path of one deployment document (content-addressed).
pub fn deployment_path(client: &ClientId, deployment: &DeploymentId, digest: &Digest) -> String {
    format!("/api/v1/clients/{client}/deployments/{deployment}/{digest}")
}

/// Path of a bundle (content-addressed).
pub fn bundle_path(client: &ClientId, digest: &Digest) -> String {
    format!("/api/v1/clients/{client}/bundles/{digest}")
}

/// Path of one deployment document on the rc.3 routes (the caller is
/// identified by its TLS client certificate, not by the path).
pub fn rc3_deployment_path(deployment: &DeploymentId, digest: &Digest) -> String {
    format!("/api/v1/deployments/{deployment}/{digest}")
}

/// Path of a bundle on the rc.3 routes.
pub fn rc3_bundle_path(digest: &Digest) -> String {
    format!("/api/v1/bundles/{digest}")
}

/// The bundle of an HTTP manifest: its digest and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleInfo {
    /// Digest of the exact archive bytes.
    pub digest: Digest,
    /// Archive length.
    pub size_bytes: u64,
}

/// Which transport the manifest is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// No `url`s, `bundle: null` (the topics imply where content is).
    Mqtt,
    /// `url`s of the HTTP API's `{clientId}` routes (1.0.0, rc.2); `bundle`
    /// when there are deployments.
    Http(Option<BundleInfo>),
    /// `url`s of the rc.3 routes (no `{clientId}`: `/api/v1/deployments/...`,
    /// `/api/v1/bundles/...`); `bundle` when there are deployments.
    HttpRc3(Option<BundleInfo>),
}

/// The manifest of `state` in `form`. Deployments keep the store's order
/// (sorted by id), so equal states give equal manifests.
pub fn build(state: &DesiredState, form: Form) -> StateManifest {
    let deployments = state
        .deployments
        .iter()
        .map(|d| DeploymentRef {
            deployment_id: d.id.clone(),
            digest: d.digest,
            size_bytes: Some(d.yaml.len() as u64),
            url: match form {
                Form::Mqtt => None,
                Form::Http(_) => Some(deployment_path(&state.client, &d.id, &d.digest)),
                Form::HttpRc3(_) => Some(rc3_deployment_path(&d.id, &d.digest)),
            },
        })
        .collect::<Vec<_>>();
    let bundle_url = |info: &BundleInfo| match form {
        Form::HttpRc3(_) => rc3_bundle_path(&info.digest),
        _ => bundle_path(&state.client, &info.digest),
    };
    let bundle = match form {
        Form::Http(Some(info)) | Form::HttpRc3(Some(info)) if !deployments.is_empty() => {
            Some(BundleRef {
                media_type: Some(BUNDLE_MEDIA_TYPE.to_string()),
                digest: info.digest,
                size_bytes: Some(info.size_bytes),
                url: Some(bundle_url(&info)),
            })
        }
        _ => None,
    };
    StateManifest {
        manifest_version: state.manifest_version,
        bundle,
        deployments,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::DesiredDeployment;
    use margo_schemas::messages::Ack;

    fn state(n: usize) -> DesiredState {
        let client = ClientId::new("c1").unwrap();
        DesiredState {
            client,
            manifest_version: 3,
            deployments: (0..n)
                .map(|i| {
                    let yaml = format!("doc {i}").into_bytes();
                    DesiredDeployment {
                        id: DeploymentId::new(format!("d{i}")).unwrap(),
                        digest: Digest::of(&yaml),
                        yaml,
                    }
                })
                .collect(),
            ack: Ack {
                acked_seq: 0,
                manifest_version: 3,
                instance: None,
            },
        }
    }

    #[test]
    fn both_forms_agree_on_version_ids_digests_sizes() {
        let s = state(2);
        let info = BundleInfo {
            digest: Digest::of(b"bundle"),
            size_bytes: 6,
        };
        let mqtt = build(&s, Form::Mqtt);
        let http = build(&s, Form::Http(Some(info)));
        assert_eq!(mqtt.manifest_version, http.manifest_version);
        assert_eq!(mqtt.deployments.len(), http.deployments.len());
        for (m, h) in mqtt.deployments.iter().zip(&http.deployments) {
            assert_eq!(
                (&m.deployment_id, m.digest, m.size_bytes),
                (&h.deployment_id, h.digest, h.size_bytes)
            );
            assert!(m.url.is_none());
            assert_eq!(
                h.url.as_deref(),
                Some(
                    format!(
                        "/api/v1/clients/c1/deployments/{}/{}",
                        h.deployment_id, h.digest
                    )
                    .as_str()
                )
            );
        }
        assert!(mqtt.bundle.is_none());
        let bundle = http.bundle.unwrap();
        assert_eq!(bundle.media_type.as_deref(), Some(BUNDLE_MEDIA_TYPE));
        assert_eq!(
            bundle.url,
            Some(format!("/api/v1/clients/c1/bundles/{}", info.digest))
        );
    }

    #[test]
    fn rc3_form_has_paths_without_client_id() {
        let s = state(1);
        let info = BundleInfo {
            digest: Digest::of(b"bundle"),
            size_bytes: 6,
        };
        let rc3 = build(&s, Form::HttpRc3(Some(info)));
        let http = build(&s, Form::Http(Some(info)));
        let d = &rc3.deployments[0];
        assert_eq!(
            d.url.as_deref(),
            Some(format!("/api/v1/deployments/{}/{}", d.deployment_id, d.digest).as_str())
        );
        assert_eq!(
            rc3.bundle.as_ref().and_then(|b| b.url.clone()),
            Some(format!("/api/v1/bundles/{}", info.digest))
        );
        assert_eq!(rc3.manifest_version, http.manifest_version);
        assert_eq!(rc3.deployments[0].digest, http.deployments[0].digest);
        let empty = serde_json::to_value(build(&state(0), Form::HttpRc3(Some(info)))).unwrap();
        assert!(empty["bundle"].is_null());
    }

    #[test]
    fn no_deployments_no_bundle() {
        let info = BundleInfo {
            digest: Digest::of(b""),
            size_bytes: 0,
        };
        let json = serde_json::to_value(build(&state(0), Form::Http(Some(info)))).unwrap();
        assert!(json["bundle"].is_null());
        assert!(json.as_object().unwrap().contains_key("bundle"));
    }
}
