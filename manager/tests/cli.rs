//! The binaries as child processes: `margo-manager init`, `margo-manager
//! serve` (ready line, SIGTERM), and `margoctl` against it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);
const MANAGER: &str = env!("CARGO_BIN_EXE_margo-manager");
const MARGOCTL: &str = env!("CARGO_BIN_EXE_margoctl");

const DOC: &str = "apiVersion: application.margo.org/v1alpha1
kind: ApplicationDeployment
metadata:
  annotations:
    id: 0f6a4a38-1f7e-4d36-9a52-3c1d1b0d9f11
  name: cli-app
spec:
  deploymentProfile:
    type: compose
    components:
      - name: web
        properties:
          packageLocation: https://example.com/web.tar.gz
";

/// The deployment of the `margo.org/v1alpha1` document.
const OLDER_ID: &str = "5c2d8e4a-7b1f-4c3e-9d6a-2f8b1e0c4a77";

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn margoctl(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(MARGOCTL)
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("margoctl runs")
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn init_then_serve_then_margoctl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let init = Command::new(MANAGER)
        .args(["init", "--data-dir"])
        .arg(&data)
        .args(["--hostname", "edge.example.com"])
        .output()
        .expect("init runs");
    assert!(init.status.success(), "{}", text(&init));
    let stdout = String::from_utf8_lossy(&init.stdout);
    assert!(stdout.contains("gateway_cert="), "{stdout}");
    assert!(data.join("pki/ca.crt").exists());
    assert!(data.join("pki/gateway.key").exists());
    assert!(data.join("manager.redb").exists());

    let config = dir.path().join("manager.toml");
    std::fs::write(
        &config,
        format!(
            "version = 1\ndata_dir = {:?}\n[broker]\nmqtt_listen = \"127.0.0.1:0\"\ngateway_listen = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n[onboarding]\napproval = \"auto\"\n",
            data.display().to_string()
        ),
    )
    .expect("write config");
    let mut child = Command::new(MANAGER)
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stdout = child.stdout.take().expect("stdout");
    let child = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let ready = rx
        .recv_timeout(WAIT)
        .expect("timed out waiting for the ready line of margo-manager serve");
    assert!(ready.starts_with("margo-manager ready admin="), "{ready}");
    assert!(ready.contains(" mqtt=127.0.0.1:"), "{ready}");
    assert!(ready.contains(" gateway=127.0.0.1:"), "{ready}");
    assert!(ready.contains(" http=127.0.0.1:"), "{ready}");

    let bundle = dir.path().join("bundle");
    let out = margoctl(
        &data,
        &[
            "clients",
            "add",
            "line-3",
            "--out",
            bundle.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for file in [
        "identity.toml",
        "client.key",
        "client.crt",
        "ca.crt",
        "manager-signing.crt",
    ] {
        assert!(bundle.join(file).exists(), "{file} missing");
    }
    let index: margo_schemas::identity::IdentityIndex =
        toml::from_str(&std::fs::read_to_string(bundle.join("identity.toml")).expect("index"))
            .expect("identity.toml parses");
    assert_eq!(index.name, "line-3");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bundle.join("client.key"))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = margoctl(
        &data,
        &[
            "clients",
            "add",
            "line-4",
            "--out",
            bundle.to_str().expect("utf8"),
        ],
    );
    assert!(
        !again.status.success(),
        "overwrote a bundle: {}",
        text(&again)
    );

    let good = dir.path().join("app.yaml");
    std::fs::write(&good, DOC).expect("write");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, DOC.replace("type: compose", "type: k8s")).expect("write");
    let out = margoctl(&data, &["deploy", "line-3", bad.to_str().expect("utf8")]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("spec.deploymentProfile.type"),
        "{}",
        text(&out)
    );
    let out = margoctl(&data, &["deploy", "line-3", good.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("manifest version 2"),
        "{}",
        text(&out)
    );

    // Remote schedules: a bad file fails naming the file and the field.
    let bad_schedule = dir.path().join("bad-schedule.toml");
    std::fs::write(
        &bad_schedule,
        "time_zone = \"UTC\"\n[polling]\nrate = \"0s\"\n",
    )
    .expect("write");
    let out = margoctl(
        &data,
        &[
            "clients",
            "schedule",
            "line-3",
            "--file",
            bad_schedule.to_str().expect("utf8"),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad-schedule.toml") && err.contains("polling.rate"),
        "{}",
        text(&out)
    );
    let unknown_key = dir.path().join("typo.toml");
    std::fs::write(
        &unknown_key,
        "time_zone = \"UTC\"\nconection = \"per-check\"\n",
    )
    .expect("write");
    let out = margoctl(
        &data,
        &[
            "clients",
            "schedule",
            "line-3",
            "--file",
            unknown_key.to_str().expect("utf8"),
        ],
    );
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("typo.toml") && err.contains("conection"),
        "{}",
        text(&out)
    );
    let out = margoctl(&data, &["clients", "schedule", "line-3"]);
    assert!(
        !out.status.success(),
        "neither --file nor --clear: {}",
        text(&out)
    );
    let office =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/schedules/office-hours.toml");
    let out = margoctl(
        &data,
        &[
            "clients",
            "schedule",
            "line-3",
            "--file",
            office.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("remote schedule v1") && stdout.contains("Europe/Berlin"),
        "{}",
        text(&out)
    );
    let out = margoctl(&data, &["clients", "schedule", "line-3", "--clear"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("remote schedule v2"),
        "{}",
        text(&out)
    );
    let out = margoctl(&data, &["clients", "show", "line-3"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("remote sched v2") && stdout.contains("cleared"),
        "{}",
        text(&out)
    );
    assert!(stdout.contains("availability offline"), "{}", text(&out));

    let out = margoctl(&data, &["status", "line-3", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status[0]["name"], "line-3");
    assert_eq!(status[0]["desiredVersion"], 2);
    assert_eq!(status[0]["availability"], "offline");
    assert_eq!(
        status[0]["deployments"][0]["deploymentId"],
        "0f6a4a38-1f7e-4d36-9a52-3c1d1b0d9f11"
    );
    assert_eq!(
        status[0]["deployments"][0]["apiVersion"],
        "application.margo.org/v1alpha1"
    );
    let out = margoctl(&data, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("line-3"));
    // Auto approval (on, in this config) is the header line.
    assert!(
        shown.starts_with("WARNING: onboarding approval is \"auto\""),
        "{shown}"
    );

    // Bulk reject (issue 12, finding 5): a filter or --all is required.
    let out = margoctl(&data, &["onboarding", "reject"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--all, --older-than or --from"),
        "{}",
        text(&out)
    );
    let out = margoctl(&data, &["onboarding", "reject", "--from", "10.0.0.0/40"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("prefix length"), "{}", text(&out));
    let out = margoctl(
        &data,
        &["onboarding", "reject", "--all", "--older-than", "1h"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("0 request(s) rejected"),
        "{}",
        text(&out)
    );

    let out = margoctl(
        &data,
        &["undeploy", "line-3", "0f6a4a38-1f7e-4d36-9a52-3c1d1b0d9f11"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = margoctl(&data, &["clients", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("line-3"));

    // The older published apiVersion (`margo.org/v1alpha1`) deploys too, and
    // the listings show each deployment's apiVersion.
    let older = dir.path().join("older.yaml");
    std::fs::write(
        &older,
        DOC.replace(
            "apiVersion: application.margo.org/v1alpha1",
            "apiVersion: margo.org/v1alpha1",
        )
        .replace("0f6a4a38-1f7e-4d36-9a52-3c1d1b0d9f11", OLDER_ID)
        .replace("cli-app", "cli-older"),
    )
    .expect("write");
    let out = margoctl(&data, &["deploy", "line-3", older.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = margoctl(&data, &["status", "line-3", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let listed = status[0]["deployments"]
        .as_array()
        .expect("deployments")
        .iter()
        .find(|d| d["deploymentId"] == OLDER_ID)
        .cloned()
        .unwrap_or_else(|| panic!("{OLDER_ID} not listed: {status:#}"));
    assert_eq!(listed["apiVersion"], "margo.org/v1alpha1", "{status:#}");
    assert_eq!(listed["name"], "cli-older", "{status:#}");
    let out = margoctl(&data, &["status", "line-3"]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        shown
            .lines()
            .any(|l| l.contains(OLDER_ID) && l.contains(" margo.org/v1alpha1")),
        "{shown}"
    );

    // Bulk: three bundles in one call, then one deploy for all of them.
    let fleet = dir.path().join("fleet");
    let out = margoctl(
        &data,
        &[
            "clients",
            "add-bulk",
            "--count",
            "3",
            "--prefix",
            "cell-",
            "--out",
            fleet.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    for name in ["cell-1", "cell-2", "cell-3"] {
        let index: margo_schemas::identity::IdentityIndex = toml::from_str(
            &std::fs::read_to_string(fleet.join(name).join("identity.toml")).expect("index"),
        )
        .expect("identity.toml parses");
        assert_eq!(index.name, name);
        assert!(fleet.join(name).join("client.key").exists());
    }
    let out = margoctl(
        &data,
        &[
            "clients", "add-bulk", "--count", "1", "--prefix", "cell-", "--first", "2", "--out",
        ]
        .into_iter()
        .chain([dir.path().join("again").to_str().expect("utf8")])
        .collect::<Vec<_>>(),
    );
    assert!(!out.status.success(), "a taken name: {}", text(&out));
    let out = margoctl(
        &data,
        &[
            "deploy-many",
            "--prefix",
            "cell-",
            good.to_str().expect("utf8"),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 clients selected, 3 changed"),
        "{}",
        text(&out)
    );
    let out = margoctl(&data, &["status", "cell-2", "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(status[0]["desiredVersion"], 2);

    // SIGTERM → clean exit 0.
    let mut child = child;
    let child = &mut child.0;
    let pid = child.id().to_string();
    let kill = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "margo-manager did not exit within {WAIT:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(!data.join("admin.sock").exists(), "socket left behind");
}
