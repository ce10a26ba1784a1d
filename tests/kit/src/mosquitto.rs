//! Mosquitto 2.x as a second broker, configured like `config/mosquitto/`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{free_port, Proc};

/// Where Debian puts the broker.
const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// Whether Mosquitto is installed. When it is not, tests that need it skip
/// loudly, unless `MARGO_REQUIRE_MOSQUITTO=1` (set by `.ci/run`) makes them fail.
pub fn available() -> bool {
    if Path::new(MOSQUITTO).exists() {
        return true;
    }
    if std::env::var("MARGO_REQUIRE_MOSQUITTO").as_deref() == Ok("1") {
        panic!(
            "MARGO_REQUIRE_MOSQUITTO=1 but {MOSQUITTO} is missing: apt-get install -y mosquitto"
        );
    }
    eprintln!(
        "\n*** SKIPPED: {MOSQUITTO} not found; install Debian's mosquitto to run this test ***\n"
    );
    false
}

/// A running Mosquitto with the shipped ACL, TLS with client certificates.
pub struct Mosquitto {
    pub port: u16,
    proc: Proc,
    /// Its directory (configuration, persistence, logs): a restart reuses it.
    dir: PathBuf,
    /// How many times it was started again (each start logs to its own file).
    restarts: u32,
}

impl Mosquitto {
    /// Starts Mosquitto on a free port with `ca`, `cert`, `key` (PEM files),
    /// using the repository's `config/mosquitto/margo.acl`, persistence in `dir`.
    pub fn start(dir: &Path, ca: &Path, cert: &Path, key: &Path) -> Result<Mosquitto> {
        Self::start_on(free_port(), dir, ca, cert, key)
    }

    /// Like [`Mosquitto::start`], listening on `port`.
    pub fn start_on(
        port: u16,
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Mosquitto> {
        Self::start_configured(port, dir, ca, cert, key, None, "")
    }

    /// Like [`Mosquitto::start_on`], checking client certificates against
    /// the revocation list `crl` (PEM) when given, as the shipped
    /// `mosquitto.conf` does with the manager's `pki/revoked.crl`.
    pub fn start_with_crl(
        port: u16,
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        crl: Option<&Path>,
    ) -> Result<Mosquitto> {
        Self::start_configured(port, dir, ca, cert, key, crl, "")
    }

    /// Like [`Mosquitto::start_on`], with `extra_acl` appended to the
    /// shipped ACL (e.g. a read-only observer a test checks through:
    /// `user observer\ntopic read margo/v1/#`).
    pub fn start_with_acl(
        port: u16,
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        extra_acl: &str,
    ) -> Result<Mosquitto> {
        Self::start_configured(port, dir, ca, cert, key, None, extra_acl)
    }

    fn start_configured(
        port: u16,
        dir: &Path,
        ca: &Path,
        cert: &Path,
        key: &Path,
        crl: Option<&Path>,
        extra_acl: &str,
    ) -> Result<Mosquitto> {
        std::fs::create_dir_all(dir)?;
        let shipped =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/mosquitto/margo.acl");
        if !shipped.exists() {
            bail!("missing {}", shipped.display());
        }
        let acl = if extra_acl.is_empty() {
            shipped
        } else {
            let combined = dir.join("margo.acl");
            let text = std::fs::read_to_string(&shipped)?;
            std::fs::write(&combined, format!("{text}\n{extra_acl}\n"))?;
            combined
        };
        let persistence = dir.join("persist");
        std::fs::create_dir_all(&persistence)?;
        // Same settings as config/mosquitto/mosquitto.conf, with test paths
        // and without dropping privileges (the test's files belong to it).
        let conf = format!(
            "user {user}\n\
             persistence true\n\
             persistence_location {persist}/\n\
             max_queued_messages 1000000\n\
             message_size_limit 1048576\n\
             per_listener_settings false\n\
             allow_anonymous false\n\
             log_dest stderr\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n\
             listener {port} 127.0.0.1\n\
             protocol mqtt\n\
             cafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
             tls_version tlsv1.3\n\
             require_certificate true\n\
             use_identity_as_username true\n\
             use_username_as_clientid true\n\
             acl_file {acl}\n\
             {crl}",
            crl = crl
                .map(|p| format!("crlfile {}\n", p.display()))
                .unwrap_or_default(),
            user = whoami(),
            persist = persistence.display(),
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
            acl = acl.display(),
        );
        let conf_path = dir.join("mosquitto.conf");
        std::fs::write(&conf_path, conf)?;
        let proc = spawn(dir, port, "mosquitto")?;
        Ok(Mosquitto {
            port,
            proc,
            dir: dir.to_path_buf(),
            restarts: 0,
        })
    }

    /// The broker's pid (for `/proc`).
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// SIGTERM, then up to `timeout` for a clean exit (Mosquitto sends the
    /// clients' wills and writes its persistence file on the way out);
    /// SIGKILL after that. Returns whether it exited cleanly.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        self.proc.stop(timeout)
    }

    /// Starts it again with the same configuration, port and persistence
    /// directory (stop it first; a running one is killed).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.restarts += 1;
        self.proc = spawn(
            &self.dir,
            self.port,
            &format!("mosquitto-{}", self.restarts),
        )?;
        Ok(())
    }

    /// SIGHUP: Mosquitto reloads its configuration, TLS files and
    /// revocation list included.
    pub fn reload(&self) -> Result<()> {
        let pid = self.pid().context("mosquitto is not running")?;
        let status = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .context("kill -HUP")?;
        anyhow::ensure!(status.success(), "kill -HUP {pid}: {status}");
        Ok(())
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

/// Runs `mosquitto -c <dir>/mosquitto.conf` and waits for `port`.
fn spawn(dir: &Path, port: u16, name: &str) -> Result<Proc> {
    let mut cmd = Command::new(MOSQUITTO);
    cmd.arg("-c").arg(dir.join("mosquitto.conf"));
    // Mosquitto logs to stderr; readiness is its port accepting connections.
    // Loading a persistence file with many sessions takes a while.
    let (proc, _) = Proc::spawn_and_wait_port(name, cmd, dir, port, Duration::from_secs(60))
        .context("start mosquitto")?;
    Ok(proc)
}

fn whoami() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            Command::new("id")
                .arg("-un")
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_else(|| "root".to_string())
}
