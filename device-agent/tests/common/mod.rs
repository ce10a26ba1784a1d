//! Test helpers: a throwaway fleet PKI (rcgen), identities, documents, and
//! the manager's side of the protocol (signed manifests, deployments, acks).

#![allow(dead_code)]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use margo_agent::identity::{Identity, IdentityPem};
use margo_broker::GatewayTls;
use margo_schemas::cose::SigningKey;
use margo_schemas::deployment::ApplicationDeployment;
use margo_schemas::digest::Digest;
use margo_schemas::ids::{ClientId, DeploymentId};
use margo_schemas::manifest::{DeploymentRef, StateManifest};
use margo_schemas::messages::{Ack, DeploymentBody, Envelope, Message};
use margo_schemas::topics;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// Default wait for anything in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// Awaits `fut` or panics with `what` after `limit`.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for: {what}"),
    }
}

/// Polls `cond` every 20 ms until it holds, or panics with `what`.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    within(WAIT, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// A fleet CA with the manager's signing key.
pub struct Fleet {
    ca: CertifiedIssuer<'static, KeyPair>,
    signing_cert_pem: String,
    /// The manager's fleet signing key.
    pub signer: SigningKey,
}

impl Fleet {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, "test fleet ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key")).expect("ca");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("signing params");
        params
            .distinguished_name
            .push(DnType::CommonName, "margo-manager-signing");
        let key = KeyPair::generate().expect("signing key");
        let cert = params.signed_by(&key, &ca).expect("signing cert");
        let signer = SigningKey::from_pkcs8(&key.serialize_der()).expect("signer");
        Self {
            ca,
            signing_cert_pem: cert.pem(),
            signer,
        }
    }

    /// The gateway's server certificate for localhost / 127.0.0.1.
    pub fn gateway_tls(&self) -> GatewayTls {
        let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &self.ca).expect("server cert");
        GatewayTls {
            ca_pem: self.ca.pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        }
    }

    /// A device identity (CN = client id) pointing at `broker_url`.
    pub fn device(&self, client: &str, broker_url: &str) -> IdentityPem {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, client);
        let key = KeyPair::generate().expect("client key");
        let cert = params.signed_by(&key, &self.ca).expect("client cert");
        IdentityPem {
            client_id: ClientId::new(client).expect("client id"),
            name: format!("test device {client}"),
            broker_url: broker_url.to_string(),
            key_pem: key.serialize_pem().into_bytes(),
            cert_pem: cert.pem().into_bytes(),
            ca_pem: self.ca.pem().into_bytes(),
            manager_signing_cert_pem: self.signing_cert_pem.clone().into_bytes(),
        }
    }

    pub fn identity(&self, client: &str, broker_url: &str) -> Identity {
        Identity::from_pem(self.device(client, broker_url)).expect("identity")
    }

    /// Writes an identity bundle into `dir` (the margoctl layout).
    pub fn write_bundle(&self, pem: &IdentityPem, dir: &Path) {
        std::fs::create_dir_all(dir).expect("bundle dir");
        let index = format!(
            "version = 1\nclient_id = \"{}\"\nname = \"{}\"\nbroker_url = \"{}\"\n",
            pem.client_id, pem.name, pem.broker_url
        );
        std::fs::write(dir.join("identity.toml"), index).expect("identity.toml");
        std::fs::write(dir.join("client.key"), &pem.key_pem).expect("key");
        std::fs::write(dir.join("client.crt"), &pem.cert_pem).expect("cert");
        std::fs::write(dir.join("ca.crt"), &pem.ca_pem).expect("ca");
        std::fs::write(
            dir.join("manager-signing.crt"),
            &pem.manager_signing_cert_pem,
        )
        .expect("signing cert");
    }
}

/// An ApplicationDeployment YAML with `components` (name, extra property lines).
pub fn yaml(id: &str, name: &str, components: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!(
        "apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: {id}
    applicationId: test-app
  name: {name}
spec:
  deploymentProfile:
    type: compose
    components:
"
    );
    for (component, props) in components {
        out.push_str(&format!("      - name: {component}\n        properties:\n          packageLocation: https://example.invalid/{component}.tgz\n"));
        for line in props.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("          {}\n", line.trim()));
        }
    }
    out.push_str(
        "  parameters:
    greeting:
      value: hello
      targets:
        - pointer: app.greeting
          components: [",
    );
    out.push_str(components[0].0);
    out.push_str("]\n");
    out.into_bytes()
}

pub fn dep(id: &str) -> DeploymentId {
    DeploymentId::new(id).expect("deployment id")
}

/// A manifest listing `docs`.
pub fn manifest(version: u64, docs: &[&[u8]]) -> StateManifest {
    StateManifest {
        manifest_version: version,
        bundle: None,
        deployments: docs
            .iter()
            .map(|d| {
                let parsed = ApplicationDeployment::parse(d.to_vec()).expect("valid yaml");
                DeploymentRef {
                    deployment_id: parsed.id.clone(),
                    digest: parsed.digest(),
                    size_bytes: Some(d.len() as u64),
                    url: None,
                }
            })
            .collect(),
    }
}

/// Seals a downlink message for `client` with `key`.
pub fn seal(key: &SigningKey, client: &ClientId, msg: Message) -> Vec<u8> {
    Envelope::new(client.clone(), 0, 1, msg)
        .seal(key)
        .expect("seal")
}

/// (topic, payload) of a signed manifest.
pub fn manifest_msg(key: &SigningKey, client: &ClientId, m: &StateManifest) -> (String, Vec<u8>) {
    (
        topics::desired_manifest(client),
        seal(key, client, Message::Manifest(m.clone())),
    )
}

/// (topic, payload) of a signed deployment document.
pub fn deployment_msg(key: &SigningKey, client: &ClientId, yaml: &[u8]) -> (String, Vec<u8>) {
    let parsed = ApplicationDeployment::parse(yaml.to_vec()).expect("valid yaml");
    let body = DeploymentBody {
        deployment_id: parsed.id.clone(),
        digest: Digest::of(yaml),
        yaml: yaml.to_vec(),
    };
    (
        topics::desired_deployment(client, &parsed.id),
        seal(key, client, Message::Deployment(body)),
    )
}

/// (topic, payload) of a signed ack.
pub fn ack_msg(
    key: &SigningKey,
    client: &ClientId,
    acked_seq: u64,
    manifest_version: u64,
) -> (String, Vec<u8>) {
    (
        topics::ack(client),
        seal(
            key,
            client,
            Message::Ack(Ack {
                acked_seq,
                manifest_version,
            }),
        ),
    )
}

/// Shared runtime handle type for tests.
pub type Sim = Arc<margo_agent::runtime::SimulatedRuntime>;

/// Every pending outbox message, opened with the agent's own key.
pub fn pending_messages(
    uplink: &margo_agent::outbox::Uplink,
    identity: &Identity,
) -> Vec<(u64, Message)> {
    let key = identity.signing_key.public_key();
    let mut outbox = uplink.lock();
    let mut out = Vec::new();
    for seq in outbox.pending() {
        let Some((topic, payload)) = outbox.payload_for_send(seq).expect("read outbox") else {
            continue;
        };
        let (_, leaf) = topics::parse_device_topic(&topic).expect("device topic");
        let env = Envelope::open(&payload, 1 << 20, &key, &identity.client_id, &leaf)
            .expect("own envelope opens");
        assert_eq!(env.seq, seq);
        out.push((seq, env.msg));
    }
    out
}

/// An agent on `store` with `runtime`, pointed at a broker that is not there
/// (tests that drive the parts directly never connect).
pub fn agent(
    identity: Identity,
    store: margo_agent::Store,
    runtime: Sim,
    tweak: impl FnOnce(&mut margo_agent::AgentConfig),
) -> margo_agent::Agent {
    let mut config = margo_agent::AgentConfig {
        broker_url: Some("mqtt://127.0.0.1:9".into()),
        allow_plain_mqtt: true,
        capabilities: test_capabilities(),
        ..margo_agent::AgentConfig::default()
    };
    tweak(&mut config);
    margo_agent::Agent::new(
        config,
        margo_agent::AgentOptions {
            store: Some(store),
            identity: Some(identity),
            runtime: Some(runtime),
            clock: None,
            host: None,
        },
    )
    .expect("agent")
}

/// A simulated runtime with no delay and no failures.
pub fn sim() -> Sim {
    Arc::new(margo_agent::runtime::SimulatedRuntime::new(
        &margo_agent::config::SimulatedConfig::default(),
        Arc::new(margo_agent::clock::SystemClock),
    ))
}

/// Capabilities identity for test agents (CI machines may have no readable DMI).
pub fn test_capabilities() -> margo_agent::config::CapabilitiesConfig {
    margo_agent::config::CapabilitiesConfig {
        vendor: Some("Test Vendor".into()),
        model_number: Some("T1".into()),
        serial_number: Some("0001".into()),
        ..margo_agent::config::CapabilitiesConfig::default()
    }
}
