//! Every file in `config/` parses with the loader that will read it in production.

use std::path::{Path, PathBuf};

use margo_schemas::deployment::ApplicationDeployment;

fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config")
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn example_deployments_are_valid_application_deployments() {
    let dir = config_dir().join("examples");
    let mut seen = 0;
    for path in files_in(&dir) {
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read example");
        ApplicationDeployment::parse(bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(
        seen >= 2,
        "expected the helm and compose examples, found {seen}"
    );
}

#[test]
fn every_config_file_is_parsed_by_a_test() {
    // A new file in config/ must be added to one of the loaders below.
    for path in files_in(&config_dir()) {
        let rel = path
            .strip_prefix(config_dir())
            .expect("under config/")
            .to_string_lossy()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("read config file");
        match rel.as_str() {
            "margo-broker.toml" => {
                margo_broker::BrokerFileConfig::from_toml(&text, &path)
                    .and_then(|c| c.validate().map(|_| c))
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
            // Both validators check values only; neither touches the paths
            // (/var/lib/..., /etc/margo-agent/identity, the exec program), so
            // the production paths in the examples validate on any machine.
            "margo-manager.toml" => {
                margo_manager::config::ManagerConfig::from_file(&path)
                    .and_then(|c| c.validate().map(|_| c))
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
            "margo-agent.toml" => {
                margo_agent::AgentConfig::load(&path)
                    .and_then(|c| c.validate().map(|_| c))
                    .unwrap_or_else(|e| panic!("{rel}: {e}"));
            }
            "mosquitto/mosquitto.conf" => check_mosquitto_conf(&text),
            "mosquitto/margo.acl" => check_acl(&text),
            r if r.starts_with("examples/") && r.ends_with(".yaml") => {}
            // Schedules: the table embedded in the agent's config and sent
            // by `margoctl clients schedule --file`.
            r if r.starts_with("schedules/") && r.ends_with(".toml") => {
                check_schedule(&rel, &text);
            }
            other => panic!("config/{other} is not checked by any test: add it here"),
        }
    }
}

/// The examples say "every value is the built-in default unless it says
/// otherwise": hold them to it, so a changed default shows up here.
#[test]
fn example_configs_state_the_real_defaults() {
    use margo_manager::config::ManagerConfig;

    let path = config_dir().join("margo-manager.toml");
    let file = ManagerConfig::from_file(&path).expect("margo-manager.toml parses");
    let mut expected = ManagerConfig::with_data_dir("/var/lib/margo-manager");
    expected.public_broker_url = "mqtts://fleet.example.com:8883".into();
    expected.broker.hostnames = vec!["fleet.example.com".into(), "10.0.0.5".into()];
    // ManagerConfig has no PartialEq; its Debug form shows every field.
    assert_eq!(
        format!("{file:#?}"),
        format!("{expected:#?}"),
        "margo-manager.toml differs from the defaults in more than data_dir, public_broker_url and broker.hostnames"
    );

    let path = config_dir().join("margo-agent.toml");
    let file = margo_agent::AgentConfig::load(&path).expect("margo-agent.toml parses");
    let mut expected = margo_agent::AgentConfig::default();
    expected.capabilities.vendor = Some("Acme Industrial".into());
    expected.capabilities.model_number = Some("EdgeBox 3".into());
    expected.capabilities.serial_number = Some("EB3-000123".into());
    assert_eq!(
        file, expected,
        "margo-agent.toml differs from the defaults in more than the capabilities vendor, model and serial"
    );
}

#[test]
fn the_three_example_schedules_are_there() {
    for name in [
        "office-hours.toml",
        "night-only.toml",
        "maintenance-weekend.toml",
    ] {
        let path = config_dir().join("schedules").join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        check_schedule(name, &text);
    }
}

/// Parses a schedule file as `margo_schemas::schedule::Schedule` and validates it.
fn check_schedule(rel: &str, text: &str) {
    use margo_schemas::schedule::{Schedule, ValidSchedule};
    let schedule: Schedule = toml::from_str(text).unwrap_or_else(|e| panic!("{rel}: {e}"));
    ValidSchedule::try_from(schedule).unwrap_or_else(|e| panic!("{rel}: {e}"));
}

/// The settings that keep devices isolated and sessions persistent.
fn check_mosquitto_conf(text: &str) {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for required in [
        "persistence true",
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "tls_version tlsv1.3",
    ] {
        assert!(
            lines.contains(&required),
            "mosquitto.conf lacks `{required}`"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("acl_file ")));
    assert!(
        lines.iter().any(|l| l.starts_with("crlfile ")),
        "mosquitto.conf must load the manager's revocation list (docs/external-broker.md)"
    );
    for line in lines {
        let key = line.split_whitespace().next().unwrap_or_default();
        assert!(
            key.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "odd mosquitto.conf line {line:?}"
        );
    }
}

/// The ACL gives each device exactly the topics `margo_schemas::topics` allows.
fn check_acl(text: &str) {
    use margo_schemas::ids::{ClientId, DeploymentId};
    use margo_schemas::topics;
    let client = ClientId::new("dev1").expect("client id");
    let dep = DeploymentId::new("d1").expect("deployment id");
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["pattern", "read", t] => reads.push(t.replace("%u", client.as_str())),
            ["pattern", "write", t] => writes.push(t.replace("%u", client.as_str())),
            _ => {}
        }
    }
    for filter in &reads {
        assert!(
            topics::device_may_subscribe(&client, filter),
            "ACL lets a device read {filter}, which the gateway forbids"
        );
    }
    for topic in &writes {
        let concrete = topic.replace('+', dep.as_str());
        assert!(
            topics::device_may_publish(&client, &concrete),
            "ACL lets a device write {topic}, which the gateway forbids"
        );
    }
    for needed in [topics::desired_filter(&client), topics::ack(&client)] {
        assert!(
            reads.contains(&needed),
            "ACL does not let devices read {needed}"
        );
    }
    for needed in [
        topics::status(&client, &dep).replace(dep.as_str(), "+"),
        topics::presence(&client),
        topics::sync(&client),
    ] {
        assert!(
            writes.contains(&needed),
            "ACL does not let devices write {needed}"
        );
    }
    assert!(
        text.lines().any(|l| l.trim() == "user margo-manager"),
        "ACL has no rules for the manager"
    );
}

/// Runs `binary args` with one extra environment variable; it must refuse to
/// start (non-zero exit) and name the variable on stderr.
fn refuses_unknown_variable(binary: &str, args: &[&std::ffi::OsStr], var: &str) {
    let out = std::process::Command::new(margo_tests::bin(binary))
        .args(args)
        .env(var, "1")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {binary}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "{binary} started with {var} set; stderr:\n{stderr}"
    );
    assert!(
        stderr.contains(&format!("{var}: unknown variable")),
        "{binary}: stderr does not name {var}:\n{stderr}"
    );
}

/// Every binary refuses an unknown variable with its prefix (a typo must not
/// run with the default silently): docs/configuration.md.
#[test]
fn every_binary_refuses_an_unknown_prefixed_variable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("manager-data");
    refuses_unknown_variable(
        "margo-manager",
        &["init".as_ref(), "--data-dir".as_ref(), data.as_os_str()],
        "MARGO_MANAGER_DATADIR",
    );
    assert!(!data.exists(), "margo-manager init ran despite the error");

    let broker = dir.path().join("broker.toml");
    std::fs::write(&broker, "version = 1\n[mqtt]\nlisten = \"127.0.0.1:0\"\n").expect("write");
    refuses_unknown_variable(
        "margo-broker",
        &["--config".as_ref(), broker.as_os_str()],
        "MARGO_BROKER_LISTEN",
    );

    let agent = config_dir().join("margo-agent.toml");
    refuses_unknown_variable(
        "margo-agent",
        &["run".as_ref(), "--config".as_ref(), agent.as_os_str()],
        "MARGO_AGENT_KEEPALIVE",
    );
}
