//! Issue 12 regressions on the operator's side, with the real binaries:
//! deployment typos refused (finding 8), private files whatever the umask
//! (finding 11), and no admin call that waits forever (finding 12).

#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use margo_testkit::Proc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const MANAGER: &str = env!("CARGO_BIN_EXE_margo-manager");
const MARGOCTL: &str = env!("CARGO_BIN_EXE_margoctl");

/// `program args..` under `umask 000`, so nothing but our own modes
/// narrows what we create.
fn under_umask_000(program: &str) -> Command {
    let mut c = Command::new("sh");
    c.args(["-c", "umask 000; exec \"$0\" \"$@\"", program]);
    c
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn margoctl(data_dir: &Path, args: &[&str]) -> Output {
    under_umask_000(MARGOCTL)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("margoctl runs")
}

/// `margo-manager serve` on free ports under umask 000, once it is ready.
fn serve(dir: &Path) -> (Proc, PathBuf) {
    let data = dir.join("data");
    let config = dir.join("manager.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndata_dir = {:?}\n[broker]\nmqtt_listen = \"127.0.0.1:0\"\ngateway_listen = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            data.display().to_string()
        ),
    )
    .expect("write config");
    let mut cmd = under_umask_000(MANAGER);
    cmd.args(["serve", "--config"]).arg(&config);
    let (manager, ready) = Proc::spawn("margo-manager", cmd, dir, "margo-manager ready", WAIT)
        .expect("margo-manager serve prints its ready line");
    assert!(ready.starts_with("margo-manager ready"), "{ready}");
    (manager, data)
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

// ---- finding 8: deployment typos -------------------------------------------

const DOC: &str = "apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: 7d1c3e52-58a4-4b8e-9f0a-6c2b9d4e1f30
  name: typo-app
spec:
  deploymentProfile:
    type: compose
    components:
      - name: web
        properties:
          packageLocation: https://example.com/web.tar.gz
  parameters:
    greeting:
      value: hello
      targets:
        - pointer: GREETING
          components: [web]
";

#[test]
fn deploy_refuses_typos_naming_file_document_and_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_manager, data) = serve(dir.path());
    let out = margoctl(
        &data,
        &["clients", "add", "typo-1", "--out"]
            .into_iter()
            .chain([dir.path().join("bundle").to_str().expect("utf8")])
            .collect::<Vec<_>>(),
    );
    assert!(out.status.success(), "{}", text(&out));

    let cases = [
        (
            "paramters.yaml",
            DOC.replace("  parameters:", "  paramters:"),
            "spec.paramters",
        ),
        (
            "location.yaml",
            DOC.replace("packageLocation:", "packageLocaton:"),
            "spec.deploymentProfile.components[0].properties.packageLocaton",
        ),
        (
            "profile.yaml",
            DOC.replace("    type: compose", "    type: compose\n    component: []"),
            "spec.deploymentProfile.component",
        ),
    ];
    for (file, doc, field) in &cases {
        let path = dir.path().join(file);
        std::fs::write(&path, doc).expect("write");
        let out = margoctl(&data, &["deploy", "typo-1", path.to_str().expect("utf8")]);
        assert!(!out.status.success(), "{file} was accepted: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(file) && err.contains(field) && err.contains("typo-app"),
            "{file}: the error names neither the file, the field {field} nor the document: {}",
            text(&out)
        );
    }
    // Nothing was deployed: still the approval's version 1.
    let out = margoctl(&data, &["status", "typo-1", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status[0]["desiredVersion"], 1, "{status:#}");

    // The admin API refuses on its own (no file: the document's index and name).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let admin = margo_manager::admin::AdminClient::new(data.join("admin.sock"));
    let err = rt
        .block_on(admin.deploy(
            "typo-1",
            vec![DOC.to_string(), cases[0].1.replace("7d1c3e52", "8d1c3e52")],
        ))
        .expect_err("a typo accepted by the admin API");
    assert_eq!(err.status(), Some(422), "{err}");
    let detail = err.to_string();
    assert!(
        detail.contains("document 1") && detail.contains("spec.paramters"),
        "{detail}"
    );

    // What the spec allows still deploys: its examples, and vendor
    // extensions where the schema is closed.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/margo-spec");
    let extended = dir.path().join("extended.yaml");
    std::fs::write(
        &extended,
        DOC.replace(
            "  parameters:",
            "  x-acme-extensions:\n    tier: gold\n  parameters:",
        )
        .replace(
            "      - name: web",
            "      - name: web\n        x-acme-extensions: {}",
        )
        .replace(
            "    type: compose",
            "    type: compose\n    x-acme-extensions: {a: 1}",
        ),
    )
    .expect("write");
    for path in [
        fixtures.join("desired-state/cluster-enabled-application-deployment.yaml"),
        fixtures.join("desired-state/standalone-device-application-deployment.yaml"),
        extended,
    ] {
        let out = margoctl(&data, &["deploy", "typo-1", path.to_str().expect("utf8")]);
        assert!(out.status.success(), "{}: {}", path.display(), text(&out));
    }
}

// ---- finding 11: modes whatever the umask ----------------------------------

#[test]
fn keys_state_and_bundles_are_private_whatever_the_umask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_manager, data) = serve(dir.path());
    let mut expected = vec![
        (data.clone(), 0o700),
        (data.join("pki"), 0o700),
        (data.join("manager.redb"), 0o600),
        (data.join("admin.sock"), 0o600),
    ];
    for entry in std::fs::read_dir(data.join("pki")).expect("pki") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "key") {
            expected.push((path, 0o600));
        }
    }
    assert!(expected.len() > 4, "no key files in pki/");

    let bundle = dir.path().join("bundles/line-1");
    let out = margoctl(
        &data,
        &[
            "clients",
            "add",
            "line-1",
            "--out",
            bundle.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    expected.push((dir.path().join("bundles"), 0o700));
    expected.push((bundle.clone(), 0o700));
    expected.push((bundle.join("client.key"), 0o600));

    let fleet = dir.path().join("fleet");
    let out = margoctl(
        &data,
        &[
            "clients",
            "add-bulk",
            "--count",
            "2",
            "--prefix",
            "cell-",
            "--out",
            fleet.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    expected.push((fleet.clone(), 0o700));
    for name in ["cell-1", "cell-2"] {
        expected.push((fleet.join(name), 0o700));
        expected.push((fleet.join(name).join("client.key"), 0o600));
    }

    let wrong: Vec<String> = expected
        .iter()
        .filter(|(path, want)| mode(path) != *want)
        .map(|(path, want)| format!("{} is {:o}, not {want:o}", path.display(), mode(path)))
        .collect();
    assert!(wrong.is_empty(), "under umask 000: {wrong:#?}");
    // Certificates and the index are public, but nobody else may write them.
    for file in [
        "client.crt",
        "ca.crt",
        "manager-signing.crt",
        "identity.toml",
    ] {
        assert_eq!(mode(&bundle.join(file)) & 0o022, 0, "{file}");
    }
}

// ---- finding 12: a frozen manager ------------------------------------------

/// An admin socket that accepts connections and never answers (a manager
/// stopped with SIGSTOP looks the same to a client).
fn frozen_socket(dir: &Path) -> PathBuf {
    let path = dir.join("admin.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            match stream {
                Ok(s) => held.push(s),
                Err(_) => return,
            }
        }
    });
    path
}

#[test]
fn margoctl_gives_up_on_a_frozen_manager_and_says_on_what() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = frozen_socket(dir.path());
    let started = Instant::now();
    let mut child = Command::new(MARGOCTL)
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .env("MARGO_ADMIN_TIMEOUT", "1s")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("margoctl runs");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("margoctl status still waiting after 10 s on a manager that never answers");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().expect("output");
    assert!(!status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GET /v1/status") && err.contains(&socket.display().to_string()),
        "the error does not say what it waited for: {}",
        text(&out)
    );
}
