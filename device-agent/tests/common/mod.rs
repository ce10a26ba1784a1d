//! The agent's own test helpers: a fleet (the kit's test PKI plus the
//! manager's signing key) issuing agent identities, documents, and the
//! manager's side of the protocol (signed manifests, deployments, acks).
//! Waits and the PKI itself come from margo-testkit.

#![allow(dead_code)]

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
use margo_testkit::pki::TestPki;

pub mod manual_clock;

/// Default wait for anything in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// A fleet CA with the manager's signing key.
pub struct Fleet {
    pki: TestPki,
    signing_cert_pem: String,
    /// The manager's fleet signing key.
    pub signer: SigningKey,
}

impl Fleet {
    pub fn new() -> Self {
        let pki = TestPki::new("test fleet ca");
        let signing = pki.leaf("margo-manager-signing");
        let signer = SigningKey::from_pkcs8(&signing.key.serialize_der()).expect("signer");
        Self {
            signing_cert_pem: signing.cert_pem(),
            pki,
            signer,
        }
    }

    /// The gateway's server certificate for localhost / 127.0.0.1.
    pub fn gateway_tls(&self) -> GatewayTls {
        let server = self.pki.server();
        GatewayTls {
            ca_pem: self.pki.ca_pem().into_bytes(),
            cert_pem: server.cert_pem().into_bytes(),
            key_pem: server.key_pem().into_bytes(),
        }
    }

    /// A device identity (CN = client id) pointing at `broker_url`.
    pub fn device(&self, client: &str, broker_url: &str) -> IdentityPem {
        let cert = self.pki.client(client);
        IdentityPem {
            client_id: ClientId::new(client).expect("client id"),
            name: format!("test device {client}"),
            broker_url: broker_url.to_string(),
            key_pem: cert.key_pem().into_bytes(),
            cert_pem: cert.cert_pem().into_bytes(),
            ca_pem: self.pki.ca_pem().into_bytes(),
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
                instance: None,
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
    agent_with_clock(identity, store, runtime, None, tweak)
}

/// [`agent`] reading time from `clock` (the system clock when `None`).
pub fn agent_with_clock(
    identity: Identity,
    store: margo_agent::Store,
    runtime: Sim,
    clock: Option<Arc<dyn margo_agent::clock::Clock>>,
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
            clock,
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
