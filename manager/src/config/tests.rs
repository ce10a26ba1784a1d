use super::*;

fn field_of(e: ConfigError) -> String {
    match e {
        ConfigError::Invalid { field, .. } => field,
        other => panic!("not a validation error: {other}"),
    }
}

#[test]
fn defaults_validate() {
    let c = ManagerConfig::default();
    c.validate().expect("defaults are valid");
    assert_eq!(c.ingest.batch_max, 512);
    assert_eq!(c.ingest.batch_interval, Duration::from_millis(20));
    assert_eq!(c.max_payload_bytes, 1024 * 1024);
    assert_eq!(c.admin_socket_path(), c.data_dir.join("admin.sock"));
}

#[test]
fn file_env_flags_layer_in_order() {
    let text = r#"
version = 1
data_dir = "data"
public_broker_url = "mqtts://edge.example.com:8883"
[broker]
mqtt_listen = "127.0.0.1:0"
gateway_listen = "127.0.0.1:0"
hostnames = ["edge.example.com", "10.0.0.5"]
[ingest]
batch_max = 64
batch_interval = "5ms"
"#;
    let mut c =
        ManagerConfig::from_toml(text, Path::new("/etc/margo/manager.toml")).expect("parses");
    assert_eq!(c.data_dir, PathBuf::from("/etc/margo/data"));
    assert_eq!(c.ingest.batch_interval, Duration::from_millis(5));
    c.validate().expect("valid");
    c.apply_env([
        (
            "MARGO_MANAGER_DATA_DIR".to_string(),
            "/var/lib/m".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ])
    .expect("known variables");
    assert_eq!(c.data_dir, PathBuf::from("/var/lib/m"));
    c.apply_overrides(Overrides {
        data_dir: Some(PathBuf::from("/tmp/flag")),
        broker_url: Some("mqtt://127.0.0.1:1884".into()),
        ..Overrides::default()
    });
    assert_eq!(c.data_dir, PathBuf::from("/tmp/flag"));
    assert_eq!(c.broker.mode, BrokerMode::External);
    c.validate().expect("valid external");
    assert_eq!(
        c.external_broker().expect("valid").expect("external"),
        BrokerUrl {
            tls: false,
            host: "127.0.0.1".into(),
            port: 1884
        }
    );
}

#[test]
fn http_and_onboarding_sections() {
    let hex = "AB".repeat(32);
    let text = format!(
        "version = 1\n[http]\nlisten = \"127.0.0.1:0\"\nenabled = false\n\
         [onboarding]\nallow_fingerprints = [\"sha256:{hex}\"]\nrate_burst = 3\n\
         poll_interval = \"5s\"\n"
    );
    let c = ManagerConfig::from_toml(&text, Path::new("x")).expect("parses");
    c.validate().expect("valid");
    assert!(!c.http.enabled);
    assert_eq!(c.http.listen.port(), 0);
    assert_eq!(c.onboarding.rate_burst, 3);
    assert_eq!(c.onboarding.poll_interval, Duration::from_secs(5));
    assert_eq!(c.onboarding.allowed_request_ids(), vec!["ab".repeat(32)]);
    let strict = ManagerConfig::from_toml(
        "version = 1\n[http]\nsignature_schemes = [\"rfc9421\"]\n\
         signature_max_age = \"2m\"\nsignature_clock_skew = \"5s\"\n",
        Path::new("x"),
    )
    .expect("parses");
    strict.validate().expect("valid");
    assert_eq!(
        strict.http.signature_schemes,
        vec![SignatureScheme::Rfc9421]
    );
    assert_eq!(strict.http.signature_max_age, Duration::from_secs(120));
    assert!(ManagerConfig::from_toml(
        "version = 1\n[http]\nsignature_schemes = [\"hmac\"]\n",
        Path::new("x")
    )
    .is_err());
    let d = ManagerConfig::default();
    assert_eq!(d.http.signature_schemes.len(), 2);
    assert_eq!(d.http.signature_max_age, Duration::from_secs(300));
    assert!(d.http.enabled);
    assert_eq!(d.http.listen.port(), 8443);
    assert_eq!(d.onboarding.max_pending, 1000);
}

#[test]
fn metrics_section() {
    // On by default, loopback only.
    let d = ManagerConfig::default();
    assert!(d.metrics.enabled);
    assert_eq!(d.metrics.listen, "127.0.0.1:9464".parse().expect("addr"));
    let c = ManagerConfig::from_toml(
        "version = 1\n[metrics]\nenabled = false\nlisten = \"127.0.0.1:0\"\n",
        Path::new("x"),
    )
    .expect("parses");
    c.validate().expect("valid");
    assert!(!c.metrics.enabled);
    assert_eq!(c.metrics.listen.port(), 0);
    // The environment overrides the file; a bad value names the variable.
    let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let mut c = ManagerConfig::default();
    c.apply_env(env(&[
        ("MARGO_MANAGER_METRICS_ENABLED", "false"),
        ("MARGO_MANAGER_METRICS_LISTEN", "127.0.0.1:9999"),
    ]))
    .expect("applies");
    assert!(!c.metrics.enabled);
    assert_eq!(c.metrics.listen.port(), 9999);
    for (var, value) in [
        ("MARGO_MANAGER_METRICS_ENABLED", "maybe"),
        ("MARGO_MANAGER_METRICS_LISTEN", "localhost"),
    ] {
        let err = ManagerConfig::default()
            .apply_env(env(&[(var, value)]))
            .unwrap_err();
        assert_eq!(field_of(err), var);
    }
    assert!(
        ManagerConfig::from_toml("version = 1\n[metrics]\nport = 1\n", Path::new("x")).is_err()
    );
    let mut same = ManagerConfig::default();
    same.metrics.enabled = true;
    same.metrics.listen = same.http.listen;
    assert_eq!(field_of(same.validate().unwrap_err()), "metrics.listen");
}

#[test]
fn unknown_keys_and_versions_are_rejected() {
    assert!(ManagerConfig::from_toml("version = 1\nbogus = 1", Path::new("x")).is_err());
    assert!(
        ManagerConfig::from_toml("version = 1\n[broker]\nmdoe = \"x\"", Path::new("x")).is_err()
    );
    let c = ManagerConfig::from_toml("version = 2", Path::new("x")).expect("parses");
    assert_eq!(field_of(c.validate().unwrap_err()), "version");
}

#[test]
fn validation_names_the_field() {
    let mut c = ManagerConfig::default();
    c.broker.mode = BrokerMode::External;
    assert_eq!(field_of(c.validate().unwrap_err()), "broker.url");
    c.broker.url = Some("http://x:1".into());
    assert_eq!(field_of(c.validate().unwrap_err()), "broker.url");

    let c = ManagerConfig {
        public_broker_url: "localhost".into(),
        ..ManagerConfig::default()
    };
    assert_eq!(field_of(c.validate().unwrap_err()), "public_broker_url");

    let mut c = ManagerConfig::default();
    c.broker.hostnames = vec!["bad name".into()];
    assert_eq!(field_of(c.validate().unwrap_err()), "broker.hostnames");

    let mut c = ManagerConfig::default();
    c.broker.mqtt_listen = "0.0.0.0:1883".parse().expect("addr");
    assert_eq!(field_of(c.validate().unwrap_err()), "broker.mqtt_listen");

    let mut c = ManagerConfig::default();
    c.ingest.batch_max = 0;
    assert_eq!(field_of(c.validate().unwrap_err()), "ingest.batch_max");

    let mut c = ManagerConfig::default();
    c.pki.ca_cert_file = Some("ca.crt".into());
    assert_eq!(field_of(c.validate().unwrap_err()), "pki.ca_key_file");

    let mut c = ManagerConfig::default();
    c.onboarding.allow_fingerprints = vec!["sha256:abc".into()];
    assert_eq!(
        field_of(c.validate().unwrap_err()),
        "onboarding.allow_fingerprints"
    );

    let mut c = ManagerConfig::default();
    c.onboarding.rate_per_minute = 0;
    assert_eq!(
        field_of(c.validate().unwrap_err()),
        "onboarding.rate_per_minute"
    );

    let mut c = ManagerConfig::default();
    c.http.handshake_timeout = Duration::ZERO;
    assert_eq!(
        field_of(c.validate().unwrap_err()),
        "http.handshake_timeout"
    );

    let mut c = ManagerConfig::default();
    c.broker.limits.max_segment_bytes = 10;
    assert_eq!(
        field_of(c.validate().unwrap_err()),
        "broker.limits.max_segment_bytes"
    );
}

#[test]
fn unknown_manager_variables_are_refused_by_name() {
    let env = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    let err = ManagerConfig::load(
        None,
        env("MARGO_MANAGER_DATADIR", "/x"),
        Overrides::default(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(field_of(err), "MARGO_MANAGER_DATADIR");
    assert!(
        text.contains("unknown variable; known: MARGO_MANAGER_DATA_DIR"),
        "{text}"
    );
    // Other prefixes are not the manager's business.
    ManagerConfig::load(None, env("MARGO_AGENT_NOPE", "1"), Overrides::default())
        .expect("other prefixes ignored");
    // BROKER_URL switches to an external broker, as --broker does; the flag wins.
    let c = ManagerConfig::load(
        None,
        env("MARGO_MANAGER_BROKER_URL", "mqtt://127.0.0.1:1884"),
        Overrides::default(),
    )
    .expect("external");
    assert_eq!(c.broker.mode, BrokerMode::External);
    let c = ManagerConfig::load(
        None,
        env("MARGO_MANAGER_BROKER_URL", "mqtt://127.0.0.1:1884"),
        Overrides {
            broker_url: Some("mqtt://127.0.0.1:1885".into()),
            ..Overrides::default()
        },
    )
    .expect("external");
    assert_eq!(c.broker.url.as_deref(), Some("mqtt://127.0.0.1:1885"));
}

#[test]
fn every_variable_is_read_and_documented() {
    let docs = include_str!("../../../docs/configuration.md");
    for name in ManagerConfig::ENV_VARS {
        let var = format!("{ENV_PREFIX}{name}");
        let mut c = ManagerConfig::default();
        // A value every variable accepts as its type.
        let value = match *name {
            "METRICS_ENABLED" => "true",
            "METRICS_LISTEN" => "127.0.0.1:1",
            _ => "mqtt://127.0.0.1:1",
        };
        let known = c.apply_env_var(name, &var, value.into());
        assert!(matches!(known, Ok(EnvVar::Applied)), "{var} is not read");
        assert!(
            docs.contains(&format!("`{var}`")),
            "{var} is not in docs/configuration.md"
        );
    }
}
