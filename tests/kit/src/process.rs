//! Child processes whose stdout is scanned for a readiness line and whose
//! stderr goes to a log file, printed when the test fails.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A child process whose stdout is scanned for a readiness line and whose
/// stderr goes to a log file (printed when the test fails).
pub struct Proc {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` and waits until a stdout line starts with `ready_prefix`.
    /// Returns the process and that line.
    pub fn spawn(
        name: &str,
        cmd: Command,
        log_dir: &Path,
        ready_prefix: &str,
        timeout: Duration,
    ) -> Result<(Proc, String)> {
        let (mut proc, rx) = Self::start(name, cmd, log_dir, ready_prefix)?;
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok((proc, line)),
            Err(_) => {
                let status = proc
                    .child
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                let tail = proc.log_tail();
                proc.kill();
                bail!(
                    "{name} did not print {ready_prefix:?} within {timeout:?} (exit: {status:?}); log tail:\n{tail}"
                )
            }
        }
    }

    /// Starts `cmd` and waits until it accepts TCP connections on 127.0.0.1:`port`.
    pub fn spawn_and_wait_port(
        name: &str,
        cmd: Command,
        log_dir: &Path,
        port: u16,
        timeout: Duration,
    ) -> Result<(Proc, ())> {
        let (mut proc, _rx) = Self::start(name, cmd, log_dir, "\u{0}never")?;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok((proc, ()));
            }
            let exited = proc
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || std::time::Instant::now() >= deadline {
                let tail = proc.log_tail();
                proc.kill();
                bail!(
                    "{name} is not accepting on port {port} (exit: {exited:?}); log tail:\n{tail}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(
        name: &str,
        mut cmd: Command,
        log_dir: &Path,
        ready_prefix: &str,
    ) -> Result<(Proc, std::sync::mpsc::Receiver<String>)> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .stdin(Stdio::null());
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            let prefix = ready_prefix.to_string();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if line.starts_with(&prefix) {
                        let _ = tx.send(line.clone());
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok((
            Proc {
                name: name.to_string(),
                child: Some(child),
                lines,
                log,
            },
            rx,
        ))
    }

    /// Starts `cmd` without waiting for anything (a process whose ready line
    /// comes late, e.g. an agent that onboards first, or never, e.g. one that
    /// is refused).
    pub fn spawn_unready(name: &str, cmd: Command, log_dir: &Path) -> Result<Proc> {
        Ok(Self::start(name, cmd, log_dir, "\u{0}never")?.0)
    }

    /// Waits until a stdout line starts with `prefix` and returns it; fails
    /// early, with the log tail, when the process exits first.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(line) = self
                .stdout_lines()
                .into_iter()
                .find(|l| l.starts_with(prefix))
            {
                return Ok(line);
            }
            if let Some(status) = self.exit_status() {
                // Lines printed just before exiting may still be in the reader thread.
                std::thread::sleep(Duration::from_millis(200));
                if let Some(line) = self
                    .stdout_lines()
                    .into_iter()
                    .find(|l| l.starts_with(prefix))
                {
                    return Ok(line);
                }
                bail!(
                    "{} exited ({status}) without printing {prefix:?}; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "{} did not print {prefix:?} within {timeout:?}; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status if the process has exited (without reaping it twice).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                bail!(
                    "{} still running after {timeout:?}; log tail:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The stdout lines seen so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The last 60 lines of the process's stderr log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The whole stderr log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL: no chance to clean up (power-loss-like for the process).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for a clean exit; SIGKILL after that.
    /// Returns whether the process exited by itself with status 0.
    pub fn stop(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status.success(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => {
                    eprintln!("{} did not stop within {timeout:?}; killing it", self.name);
                    let _ = child.kill();
                    let _ = child.wait();
                    return false;
                }
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            if std::thread::panicking() {
                eprintln!("---- {} log tail ----\n{}", self.name, self.log_tail());
            }
            self.kill();
        }
    }
}
