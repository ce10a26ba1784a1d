//! A fleet under test: the real `margo-manager`, `margoctl` and `margo-agent`
//! binaries as child processes, each with its own directory in a temp dir.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{bin, free_port, ready_field, Proc};
use margo_testkit::mqtt::TestClient;

/// How long a process may take to print its ready line.
pub const START: Duration = Duration::from_secs(30);

/// A `margo-manager serve` process.
pub struct ManagerProc {
    pub proc: Proc,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    /// The embedded broker's loopback listener (None with an external broker).
    pub mqtt: Option<SocketAddr>,
    /// The embedded device gateway (None with an external broker).
    pub gateway: Option<SocketAddr>,
    /// The HTTPS API (device onboarding); None when disabled.
    pub http: Option<SocketAddr>,
    config: PathBuf,
    log_dir: PathBuf,
    restarts: u32,
    env: Vec<(String, String)>,
}

impl ManagerProc {
    /// Writes `manager.toml` under `dir` (embedded broker on fixed free
    /// loopback ports, so a restart reuses them) plus `extra` TOML, and starts it.
    pub fn start(dir: &Path, extra: &str) -> Result<ManagerProc> {
        Self::start_with_env(dir, extra, &[])
    }

    /// [`ManagerProc::start`] with extra environment variables for the
    /// process (e.g. `RUST_LOG=warn` for a benchmark).
    pub fn start_with_env(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Result<ManagerProc> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let data_dir = dir.join("manager");
        std::fs::create_dir_all(&data_dir)?;
        let config = dir.join("manager.toml");
        let toml = format!(
            "version = 1\n\
             data_dir = {data:?}\n\
             {extra}\n",
            data = data_dir.display().to_string(),
        );
        let toml = if extra.contains("[broker]") {
            toml
        } else {
            format!(
                "{toml}\n[broker]\nmode = \"embedded\"\nmqtt_listen = \"127.0.0.1:{}\"\ngateway_listen = \"127.0.0.1:{}\"\nhostnames = [\"localhost\"]\n",
                free_port(),
                free_port()
            )
        };
        // The HTTPS API on a free loopback port too (its default is 0.0.0.0:8443).
        let toml = if toml.contains("[http]") {
            toml
        } else {
            format!("{toml}\n[http]\nlisten = \"127.0.0.1:0\"\n")
        };
        // The metrics listener too (its default port is fixed: 9464).
        let toml = if toml.contains("[metrics]") {
            toml
        } else {
            format!("{toml}\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
        };
        std::fs::write(&config, toml)?;
        let (proc, line) = spawn_manager(&config, &dir.join("logs"), 0, &env)?;
        let mut m = ManagerProc {
            proc,
            socket: PathBuf::new(),
            data_dir,
            mqtt: None,
            gateway: None,
            http: None,
            config,
            log_dir: dir.join("logs"),
            restarts: 0,
            env,
        };
        m.read_ready(&line)?;
        Ok(m)
    }

    fn read_ready(&mut self, line: &str) -> Result<()> {
        self.socket = PathBuf::from(ready_field(line, "admin").context("admin= in ready line")?);
        self.mqtt = ready_field(line, "mqtt").and_then(|v| v.parse().ok());
        self.gateway = ready_field(line, "gateway").and_then(|v| v.parse().ok());
        self.http = ready_field(line, "http").and_then(|v| v.parse().ok());
        Ok(())
    }

    /// Starts a manager ready for devices that onboard themselves: the
    /// gateway on a fixed free port that `public_broker_url` (written into
    /// every issued bundle) names as `mqtts://localhost:<port>`, a short
    /// `Retry-After` for waiting devices and a rate limit no test reaches.
    /// `extra` may only hold sections (not `[broker]`).
    pub fn start_for_onboarding(dir: &Path, extra: &str) -> Result<ManagerProc> {
        Self::onboarding_manager(dir, extra, "")
    }

    /// Like [`ManagerProc::start_for_onboarding`], and the broker write
    /// access an attacker with the internal password would have.
    pub fn start_for_onboarding_with_internal(
        dir: &Path,
        extra: &str,
    ) -> Result<(ManagerProc, InternalAccess)> {
        let (lines, internal) = InternalAccess::broker_lines(dir)?;
        Ok((Self::onboarding_manager(dir, extra, &lines)?, internal))
    }

    fn onboarding_manager(dir: &Path, extra: &str, broker_lines: &str) -> Result<ManagerProc> {
        let gateway = free_port();
        let onboarding = if extra.contains("[onboarding]") {
            String::new()
        } else {
            "[onboarding]\npoll_interval = \"1s\"\nrate_per_minute = 600\nrate_burst = 200\n"
                .to_string()
        };
        ManagerProc::start(
            dir,
            &format!(
                "public_broker_url = \"mqtts://localhost:{gateway}\"\n\
                 [broker]\nmode = \"embedded\"\nmqtt_listen = \"127.0.0.1:{mqtt}\"\n\
                 gateway_listen = \"127.0.0.1:{gateway}\"\nhostnames = [\"localhost\"]\n\
                 {broker_lines}{onboarding}{extra}\n",
                mqtt = free_port(),
            ),
        )
    }

    /// The HTTPS API as devices address it (`https://localhost:<port>`; the
    /// API presents the gateway certificate, whose names are `broker.hostnames`).
    pub fn https_url(&self) -> Result<String> {
        let http = self.http.context("the manager reported no http= address")?;
        Ok(format!("https://localhost:{}", http.port()))
    }

    /// `margoctl ca fingerprint`: the `sha256:<hex>` devices pin.
    pub fn ca_fingerprint(&self) -> Result<String> {
        let fp = self.ctl(&["ca", "fingerprint"])?.trim().to_string();
        if !fp.starts_with("sha256:") {
            bail!("margoctl ca fingerprint printed {fp:?}");
        }
        Ok(fp)
    }

    /// `margoctl onboarding list --json`, parsed.
    pub fn onboarding_requests(&self) -> Result<Vec<serde_json::Value>> {
        self.ctl_json(&["onboarding", "list", "--json"])
    }

    /// `margoctl clients list --json`, parsed.
    pub fn clients(&self) -> Result<Vec<serde_json::Value>> {
        self.ctl_json(&["clients", "list", "--json"])
    }

    /// `margoctl clients show CLIENT --json`, parsed.
    pub fn client_details(&self, client: &str) -> Result<serde_json::Value> {
        self.ctl_json(&["clients", "show", client, "--json"])
    }

    /// `margoctl tokens create --uses N --expires E`: the token (printed once).
    pub fn create_token(&self, uses: u32, expires: &str) -> Result<String> {
        let token = self
            .ctl(&[
                "tokens",
                "create",
                "--uses",
                &uses.to_string(),
                "--expires",
                expires,
            ])?
            .trim()
            .to_string();
        if token.is_empty() || token.contains(char::is_whitespace) {
            bail!("margoctl tokens create printed {token:?}");
        }
        Ok(token)
    }

    /// Runs margoctl with `args` and parses its stdout as JSON.
    pub fn ctl_json<T: serde::de::DeserializeOwned>(&self, args: &[&str]) -> Result<T> {
        let out = self.ctl(args)?;
        serde_json::from_str(&out).with_context(|| {
            format!(
                "margoctl {} is not the JSON expected: {out}",
                args.join(" ")
            )
        })
    }

    /// Runs margoctl expecting it to fail; returns its stderr.
    pub fn ctl_fails(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(bin("margoctl"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .context("run margoctl")?;
        if out.status.success() {
            bail!(
                "margoctl {} succeeded but should have failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).to_string())
    }

    /// The manager's whole stderr log (of the current process).
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// SIGKILL, as a crash or power loss would.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts the manager again on the same data directory and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.restarts += 1;
        let (proc, line) = spawn_manager(&self.config, &self.log_dir, self.restarts, &self.env)?;
        self.proc = proc;
        self.read_ready(&line)
    }

    /// Runs `margoctl --socket S args...`; returns stdout, or an error with stderr.
    pub fn ctl(&self, args: &[&str]) -> Result<String> {
        margoctl(&self.socket, args)
    }

    /// `margoctl clients add NAME --out DIR [--broker-url URL]`, returning the bundle dir.
    pub fn provision(&self, name: &str, out: &Path, broker_url: Option<&str>) -> Result<PathBuf> {
        let out_s = out.display().to_string();
        let mut args = vec!["clients", "add", name, "--out", out_s.as_str()];
        if let Some(url) = broker_url {
            args.extend(["--broker-url", url]);
        }
        self.ctl(&args)?;
        Ok(out.to_path_buf())
    }

    /// `margoctl status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let out = self.ctl(&["status", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("status --json is not JSON: {out}"))
    }
}

fn spawn_manager(
    config: &Path,
    log_dir: &Path,
    n: u32,
    env: &[(String, String)],
) -> Result<(Proc, String)> {
    let mut cmd = Command::new(bin("margo-manager"));
    cmd.arg("serve").arg("--config").arg(config);
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    Proc::spawn(
        &format!("manager-{n}"),
        cmd,
        log_dir,
        "margo-manager ready",
        START,
    )
}

/// Runs margoctl against `socket`.
pub fn margoctl(socket: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin("margoctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .context("run margoctl")?;
    if !out.status.success() {
        bail!(
            "margoctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

/// A `margo-agent run` process.
pub struct AgentProc {
    pub proc: Proc,
    pub name: String,
    /// Where its identity bundle is (or, while onboarding, will be).
    pub identity_dir: PathBuf,
    pub data_dir: PathBuf,
    config: PathBuf,
    log_dir: PathBuf,
    starts: u32,
    program: PathBuf,
}

/// The `[onboarding]` section of an agent config, with fast polling.
pub fn onboarding_toml(
    manager_url: &str,
    ca_fingerprint: &str,
    name: Option<&str>,
    token: Option<&str>,
) -> String {
    let mut s = format!(
        "[onboarding]\nmanager_url = {manager_url:?}\nca_fingerprint = {ca_fingerprint:?}\n\
         poll_min = \"200ms\"\npoll_max = \"1s\"\n"
    );
    if let Some(name) = name {
        s.push_str(&format!("name = {name:?}\n"));
    }
    if let Some(token) = token {
        s.push_str(&format!("token = {token:?}\n"));
    }
    s
}

impl AgentProc {
    /// Writes `<dir>/<name>.toml` for the bundle in `identity_dir` (simulated
    /// runtime, fast timeouts) plus `extra` TOML, and starts the agent.
    pub fn start(dir: &Path, name: &str, identity_dir: &Path, extra: &str) -> Result<AgentProc> {
        Self::start_program(dir, name, identity_dir, extra, &bin("margo-agent"))
    }

    /// [`AgentProc::start`] with another `margo-agent` executable (e.g. a
    /// size-optimised build whose footprint is measured).
    pub fn start_program(
        dir: &Path,
        name: &str,
        identity_dir: &Path,
        extra: &str,
        program: &Path,
    ) -> Result<AgentProc> {
        let (config, data_dir) = write_agent_config(dir, name, identity_dir, extra)?;
        let log_dir = dir.join("logs");
        let proc = spawn_agent(program, name, &config, &log_dir, 0)?;
        Ok(AgentProc {
            proc,
            name: name.to_string(),
            identity_dir: identity_dir.to_path_buf(),
            data_dir,
            config,
            log_dir,
            starts: 0,
            program: program.to_path_buf(),
        })
    }

    /// `margo-agent run` with `extra` holding an [`onboarding_toml`] section
    /// and no bundle yet in `<dir>/<name>-identity`: the agent onboards
    /// first, so this does not wait for its ready line (see
    /// [`AgentProc::wait_ready`]; it may never come if it is refused).
    pub fn start_onboarding(dir: &Path, name: &str, extra: &str) -> Result<AgentProc> {
        let identity_dir = dir.join(format!("{name}-identity"));
        let (config, data_dir) = write_agent_config(dir, name, &identity_dir, extra)?;
        let log_dir = dir.join("logs");
        let program = bin("margo-agent");
        let mut cmd = Command::new(&program);
        cmd.arg("run").arg("--config").arg(&config);
        let proc = Proc::spawn_unready(&format!("{name}-0"), cmd, &log_dir)?;
        Ok(AgentProc {
            proc,
            name: name.to_string(),
            identity_dir,
            data_dir,
            config,
            log_dir,
            starts: 0,
            program,
        })
    }

    /// Waits for `margo-agent ready client=<id>` and returns the client id.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String> {
        let line = self.proc.wait_line("margo-agent ready", timeout)?;
        ready_field(&line, "client").with_context(|| format!("no client= in {line:?}"))
    }

    /// Rewrites its config file with `edit` (takes effect on the next restart).
    pub fn edit_config(&self, edit: impl FnOnce(String) -> String) -> Result<()> {
        let text = std::fs::read_to_string(&self.config)
            .with_context(|| format!("read {}", self.config.display()))?;
        std::fs::write(&self.config, edit(text))?;
        Ok(())
    }

    /// The whole stderr log of its current process.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Graceful stop (SIGTERM).
    pub fn stop(&mut self) -> bool {
        self.proc.stop(Duration::from_secs(15))
    }

    /// Starts the agent again with the same config and data.
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.starts += 1;
        self.proc = spawn_agent(
            &self.program,
            &self.name,
            &self.config,
            &self.log_dir,
            self.starts,
        )?;
        Ok(())
    }
}

/// Writes `<dir>/<name>.toml` (simulated runtime unless `extra` has a
/// `[runtime]`, fast timeouts, test capabilities unless `extra` has
/// `[capabilities]`); returns it and the data directory.
fn write_agent_config(
    dir: &Path,
    name: &str,
    identity_dir: &Path,
    extra: &str,
) -> Result<(PathBuf, PathBuf)> {
    let data_dir = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data_dir)?;
    let config = dir.join(format!("{name}.toml"));
    let runtime = if extra.contains("[runtime") {
        String::new()
    } else {
        "[runtime]\nadapter = \"simulated\"\n[runtime.simulated]\ndelay = \"50ms\"\n".to_string()
    };
    // Test machines may have no DMI data: say what the device is.
    let capabilities = if extra.contains("[capabilities") {
        String::new()
    } else {
        format!(
            "[capabilities]\nvendor = \"Test Vendor\"\nmodel_number = \"T1\"\nserial_number = \"{name}\"\n"
        )
    };
    std::fs::write(
        &config,
        format!(
            "version = 1\n\
             identity_dir = {id:?}\n\
             data_dir = {data:?}\n\
             ack_timeout = \"3s\"\n\
             content_timeout = \"3s\"\n\
             reconnect_min = \"200ms\"\n\
             reconnect_max = \"2s\"\n\
             retry_failed_after = \"2s\"\n\
             {extra}\n{runtime}{capabilities}",
            id = identity_dir.display().to_string(),
            data = data_dir.display().to_string(),
        ),
    )?;
    Ok((config, data_dir))
}

fn spawn_agent(program: &Path, name: &str, config: &Path, log_dir: &Path, n: u32) -> Result<Proc> {
    let mut cmd = Command::new(program);
    cmd.arg("run").arg("--config").arg(config);
    Ok(Proc::spawn(
        &format!("{name}-{n}"),
        cmd,
        log_dir,
        "margo-agent ready",
        START,
    )?
    .0)
}

/// An ApplicationDeployment document (compose, `components` components) whose
/// content changes with `revision`.
pub fn deployment_yaml(id: &str, name: &str, components: &[&str], revision: u32) -> String {
    let mut comps = String::new();
    for c in components {
        comps.push_str(&format!(
            "      - name: {c}\n        properties:\n          packageLocation: https://packages.example.com/{c}-{revision}.tar.gz\n"
        ));
    }
    format!(
        "apiVersion: application.margo.org/v1alpha1\n\
         kind: ApplicationDeployment\n\
         metadata:\n  annotations:\n    id: {id}\n    applicationId: app-{name}\n  name: {name}\n\
         spec:\n  deploymentProfile:\n    type: compose\n    components:\n{comps}\
         \x20 parameters:\n    revision:\n      value: {revision}\n      targets:\n        - pointer: ENV.REVISION\n          components: [\"{first}\"]\n",
        first = components.first().copied().unwrap_or("main"),
    )
}

/// Writes `yaml` to `dir/<file>` and returns the path as a string.
pub fn write_file(dir: &Path, file: &str, yaml: &str) -> Result<String> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file);
    std::fs::write(&path, yaml)?;
    Ok(path.display().to_string())
}

/// The status entry of `client` (by name or id) in `margoctl status --json`.
pub fn client_status<'a>(
    status: &'a serde_json::Value,
    client: &str,
) -> Option<&'a serde_json::Value> {
    status
        .as_array()?
        .iter()
        .find(|c| c["name"].as_str() == Some(client) || c["clientId"].as_str() == Some(client))
}

/// Whether `client` has adopted at least `version` and every `(deploymentId, state)` holds.
pub fn converged(
    status: &serde_json::Value,
    client: &str,
    version: u64,
    expect: &[(&str, &str)],
) -> bool {
    version_and_states_hold(status, client, "adoptedVersion", version, expect)
}

/// Whether the status field `version_field` of `client` (`adoptedVersion`
/// from state reports, `applyingVersion` from status reports) is at least
/// `version` and every `(deploymentId, state)` holds.
pub fn version_and_states_hold(
    status: &serde_json::Value,
    client: &str,
    version_field: &str,
    version: u64,
    expect: &[(&str, &str)],
) -> bool {
    let Some(c) = client_status(status, client) else {
        return false;
    };
    if c[version_field].as_u64().unwrap_or(0) < version {
        return false;
    }
    let deployments = c["deployments"].as_array().cloned().unwrap_or_default();
    expect.iter().all(|(id, state)| {
        deployments
            .iter()
            .any(|d| d["deploymentId"].as_str() == Some(id) && d["state"].as_str() == Some(state))
    })
}

/// A runtime program for the agent's `exec` adapter that records every
/// action in a log file (`start`/`done` lines) and, for deployments listed in
/// `gated`, waits after `start` until the gate file exists. Lets tests count
/// what a real runtime was asked to do across agent crashes.
pub struct RecordingRuntime {
    pub script: PathBuf,
    pub log: PathBuf,
    pub gate: PathBuf,
    pub pids: PathBuf,
}

impl RecordingRuntime {
    pub fn create(dir: &Path, gated: &[&str]) -> Result<RecordingRuntime> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)?;
        let log = dir.join("runtime.log");
        let gate = dir.join("gate");
        let pids = dir.join("pids");
        let script = dir.join("runtime.sh");
        let gated = gated.join(" ");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 echo \"start $1 $MARGO_DEPLOYMENT_ID $MARGO_COMPONENT\" >> {log:?}\n\
                 echo $$ >> {pids:?}\n\
                 for g in {gated}; do\n\
                 \x20 if [ \"$g\" = \"$MARGO_DEPLOYMENT_ID\" ]; then\n\
                 \x20   n=0; while [ ! -f {gate:?} ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done\n\
                 \x20 fi\n\
                 done\n\
                 echo \"done $1 $MARGO_DEPLOYMENT_ID $MARGO_COMPONENT\" >> {log:?}\n",
                log = log.display().to_string(),
                pids = pids.display().to_string(),
                gate = gate.display().to_string(),
            ),
        )?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        Ok(RecordingRuntime {
            script,
            log,
            gate,
            pids,
        })
    }

    /// The agent config section that selects this program.
    pub fn agent_toml(&self) -> String {
        format!(
            "[runtime]\nadapter = \"exec\"\n[runtime.exec]\nprogram = {:?}\ntimeout = \"90s\"\n",
            self.script.display().to_string()
        )
    }

    /// Every recorded line.
    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// How many lines equal `line`.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| l.as_str() == line).count()
    }

    /// Kills the runtime programs still running (orphans of a killed agent).
    pub fn kill_running(&self) {
        for pid in std::fs::read_to_string(&self.pids)
            .unwrap_or_default()
            .lines()
        {
            let _ = Command::new("kill").arg("-9").arg(pid.trim()).status();
        }
    }

    pub fn open_gate(&self) -> Result<()> {
        std::fs::write(&self.gate, b"open")?;
        Ok(())
    }
}

/// The uplink seqs the manager stored for `client`, sorted.
pub async fn uplink_seqs(manager: &ManagerProc, client: &str) -> Result<Vec<u64>> {
    let admin = margo_manager::admin::AdminClient::new(&manager.socket);
    let mut seqs: Vec<u64> = admin
        .uplink(client)
        .await
        .map_err(|e| anyhow::anyhow!("uplink of {client}: {e}"))?
        .into_iter()
        .map(|u| u.seq)
        .collect();
    seqs.sort_unstable();
    Ok(seqs)
}

/// Waits until the manager has acknowledged everything `name` sent (its
/// acked seq is the highest stored one), then asserts the stored uplink is
/// exactly seq 1..=n, each once, and returns n.
pub async fn wait_all_acked(manager: &ManagerProc, name: &str, timeout: Duration) -> Result<u64> {
    crate::eventually(
        timeout,
        &format!("every uplink of {name} acked"),
        || async {
            let status = manager.status()?;
            let acked = client_status(&status, name)
                .and_then(|c| c["ackedSeq"].as_u64())
                .unwrap_or(0);
            let seqs = uplink_seqs(manager, name).await?;
            Ok((acked > 0 && seqs.last() == Some(&acked)).then_some(()))
        },
    )
    .await?;
    let seqs = uplink_seqs(manager, name).await?;
    Ok(assert_contiguous(&seqs, name))
}

/// Asserts that `seqs` is exactly 1..=n with no gap and no duplicate, and returns n.
pub fn assert_contiguous(seqs: &[u64], what: &str) -> u64 {
    let n = seqs.len() as u64;
    let expected: Vec<u64> = (1..=n).collect();
    assert_eq!(
        seqs,
        expected.as_slice(),
        "{what}: uplink seqs are not exactly 1..={n}"
    );
    n
}

/// Write access to a manager's embedded broker, as only the manager itself
/// (and a compromised broker, or an insider who read the internal password)
/// has it: tests of the layers behind the broker (signatures, revocation at
/// ingest) play that attacker. The read-only loopback listener refuses every
/// write (issue 12, finding 2).
pub struct InternalAccess {
    /// rumqttd's internal listener.
    pub port: u16,
    /// Its password (user `margo-internal`).
    pub password: String,
}

impl InternalAccess {
    /// A `[broker]` section for an embedded manager (free ports) whose
    /// internal listener is on a known port with a known password.
    pub fn embedded_section(dir: &Path) -> Result<(String, InternalAccess)> {
        let (lines, internal) = Self::broker_lines(dir)?;
        let section = format!(
            "[broker]\nmode = \"embedded\"\nmqtt_listen = \"127.0.0.1:{}\"\n\
             gateway_listen = \"127.0.0.1:{}\"\nhostnames = [\"localhost\"]\n{lines}",
            free_port(),
            free_port(),
        );
        Ok((section, internal))
    }

    /// The `[broker]` lines that fix the internal listener's port and
    /// password (written to a file in `dir`).
    fn broker_lines(dir: &Path) -> Result<(String, InternalAccess)> {
        let port = free_port();
        let password = format!("test-{}", fastrand::u64(..));
        let file = dir.join("internal.password");
        std::fs::write(&file, format!("{password}\n"))?;
        let lines = format!(
            "internal_listen = \"127.0.0.1:{port}\"\npassword_file = {file:?}\n",
            file = file.display().to_string(),
        );
        Ok((lines, InternalAccess { port, password }))
    }

    /// A client with write access, after its CONNACK.
    pub async fn connect(&self, client_id: &str) -> Result<TestClient> {
        let mut opts = rumqttc::MqttOptions::new(client_id, "127.0.0.1", self.port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_credentials("margo-internal", &self.password);
        let mut client = TestClient::spawn(opts, 100);
        client.connected().await?;
        Ok(client)
    }
}

/// A `margo-broker` process (embedded rumqttd + device gateway) using the
/// manager's PKI, on fixed ports so a restart reuses them. A manager in
/// `external` mode reaches it on `internal_port` with the password in
/// [`BrokerProc::password_file`] ([`BrokerProc::manager_section`]).
pub struct BrokerProc {
    pub proc: Proc,
    /// The operator's read-only listener.
    pub mqtt_port: u16,
    /// rumqttd's own listener (login required).
    pub internal_port: u16,
    pub gateway_port: u16,
    config: PathBuf,
    log_dir: PathBuf,
    starts: u32,
}

impl BrokerProc {
    pub fn start(dir: &Path, pki_dir: &Path) -> Result<BrokerProc> {
        Self::start_on(dir, pki_dir, free_port())
    }

    /// The internal listener's password file of a broker in `dir` (created
    /// by the broker when missing, or by [`BrokerProc::manager_section`]).
    pub fn password_file(dir: &Path) -> PathBuf {
        dir.join("broker.password")
    }

    /// The `[broker]` section of a manager in `external` mode that talks to
    /// the broker in `dir` on `internal_port`. Writes the password file now,
    /// so the manager can start before the broker (it creates the PKI).
    pub fn manager_section(dir: &Path, internal_port: u16) -> Result<String> {
        let file = Self::password_file(dir);
        if !file.exists() {
            std::fs::write(&file, format!("test-{}\n", fastrand::u64(..)))?;
        }
        Ok(format!(
            "[broker]\nmode = \"external\"\nurl = \"mqtt://127.0.0.1:{internal_port}\"\n\
             password_file = {file:?}\n",
            file = file.display().to_string(),
        ))
    }

    /// Like [`BrokerProc::start`] with the internal listener (the one a
    /// manager connects to) on `internal_port`.
    pub fn start_on(dir: &Path, pki_dir: &Path, internal_port: u16) -> Result<BrokerProc> {
        let mqtt_port = free_port();
        let gateway_port = free_port();
        let config = dir.join("broker.toml");
        std::fs::write(
            &config,
            format!(
                "version = 1\n[mqtt]\nlisten = \"127.0.0.1:{mqtt_port}\"\n\
                 [internal]\nlisten = \"127.0.0.1:{internal_port}\"\npassword_file = {password:?}\n\
                 [gateway]\nlisten = \"127.0.0.1:{gateway_port}\"\n\
                 ca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\nhandshake_timeout = \"5s\"\n",
                password = Self::password_file(dir).display().to_string(),
                ca = pki_dir.join("ca.crt").display().to_string(),
                cert = pki_dir.join("gateway.crt").display().to_string(),
                key = pki_dir.join("gateway.key").display().to_string(),
            ),
        )?;
        let log_dir = dir.join("logs");
        let proc = spawn_broker(&config, &log_dir, 0)?;
        Ok(BrokerProc {
            proc,
            mqtt_port,
            internal_port,
            gateway_port,
            config,
            log_dir,
            starts: 0,
        })
    }

    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Starts it again: sessions, queues and retained messages are gone (rumqttd keeps them in memory only).
    pub fn restart(&mut self) -> Result<()> {
        self.proc.kill();
        self.starts += 1;
        self.proc = spawn_broker(&self.config, &self.log_dir, self.starts)?;
        Ok(())
    }
}

fn spawn_broker(config: &Path, log_dir: &Path, n: u32) -> Result<Proc> {
    let mut cmd = Command::new(bin("margo-broker"));
    cmd.arg("--config").arg(config);
    Ok(Proc::spawn(
        &format!("broker-{n}"),
        cmd,
        log_dir,
        "margo-broker ready",
        START,
    )?
    .0)
}

/// Waits until every client in `names` has adopted `version` and every
/// `(deploymentId, state)` in `expect` holds for it, per the manager's status.
/// On timeout the error carries the last status seen.
pub async fn wait_converged(
    manager: &ManagerProc,
    names: &[&str],
    version: u64,
    expect: &[(&str, &str)],
    timeout: Duration,
) -> Result<()> {
    let what = format!("{names:?} at v{version} with {expect:?}");
    crate::eventually(timeout, &what, || async {
        let status = manager.status()?;
        Ok(names
            .iter()
            .all(|n| converged(&status, n, version, expect))
            .then_some(()))
    })
    .await
    .map_err(|e| {
        let last = manager.status().map(|s| s.to_string()).unwrap_or_default();
        e.context(format!("last status: {last}"))
    })
}

/// Deployment ids the shared scenarios use.
pub const SCENARIO_D1: &str = "11111111-1111-4111-8111-111111111111";
pub const SCENARIO_D2: &str = "22222222-2222-4222-8222-222222222222";

/// The desired-state loop on every client in `names`: deploy two deployments
/// (v2; v1 is the zero-deployment manifest), update one (v3), undeploy the
/// other (v4), waiting after each step
/// until the manager's status shows every device converged. Document files
/// go to `files`. Shared by the embedded-broker and Mosquitto tests so both
/// brokers are held to the same scenario.
pub async fn deploy_update_undeploy(
    manager: &ManagerProc,
    names: &[&str],
    files: &Path,
    timeout: Duration,
) -> Result<()> {
    let (d1, d2) = (SCENARIO_D1, SCENARIO_D2);
    let a1 = write_file(
        files,
        "a1.yaml",
        &deployment_yaml(d1, "alpha", &["web", "db"], 1),
    )?;
    let b1 = write_file(
        files,
        "b1.yaml",
        &deployment_yaml(d2, "beta", &["sensor"], 1),
    )?;
    for n in names {
        manager.ctl(&["deploy", n, &a1, &b1])?;
    }
    let both = [(d1, "installed"), (d2, "installed")];
    wait_converged(manager, names, 2, &both, timeout).await?;

    let a2 = write_file(
        files,
        "a2.yaml",
        &deployment_yaml(d1, "alpha", &["web", "db"], 2),
    )?;
    for n in names {
        manager.ctl(&["deploy", n, &a2])?;
    }
    wait_converged(manager, names, 3, &both, timeout).await?;

    for n in names {
        manager.ctl(&["undeploy", n, d2])?;
    }
    wait_converged(
        manager,
        names,
        4,
        &[(d1, "installed"), (d2, "removed")],
        timeout,
    )
    .await
}
