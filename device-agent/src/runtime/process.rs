//! Running the tools adapters depend on (an exec program, `docker`, `helm`,
//! `tar`, a fetch command): one child per call, stdin closed, a deadline
//! after which the child is killed, and the last [`STDERR_TAIL`] bytes of
//! stdout and stderr kept for logs and status errors.
//!
//! Also finds programs (a path, or a bare name looked up in `PATH`) and runs
//! the one-off availability probes adapters make at start.

use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant as StdInstant};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::RuntimeError;
use crate::clock::Clock;

/// How much of stderr (and stdout) is kept.
pub const STDERR_TAIL: usize = 2048;
/// How long to wait for output pipes after the program exited.
const PIPE_GRACE: Duration = Duration::from_secs(1);
/// How often a synchronous probe checks whether its child exited.
const PROBE_POLL: Duration = Duration::from_millis(10);

/// A process that ran to its end (successfully or not).
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    /// The last [`STDERR_TAIL`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// The last [`STDERR_TAIL`] bytes of stderr.
    pub stderr: Vec<u8>,
}

impl Finished {
    /// The stderr tail as trimmed text.
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).trim().to_string()
    }

    /// `Ok(self)` on exit status 0; otherwise an `Exit` error naming
    /// `command`, with the exit status and the stderr tail.
    pub fn check(self, command: &str) -> Result<Self, RuntimeError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(RuntimeError::Exit {
                command: command.to_string(),
                code: self.status.to_string(),
                stderr: self.stderr_text(),
            })
        }
    }
}

/// Runs `cmd` to its end, or kills it once `timeout` has passed on `clock`.
///
/// `command` names it in errors (`docker compose up`, `helm uninstall`, ...).
/// Only the child itself is killed; tools that fork must not leave children
/// holding the pipes (reading stops [`PIPE_GRACE`] after the child exits).
pub async fn run(
    mut cmd: Command,
    command: &str,
    timeout: Duration,
    clock: &dyn Clock,
) -> Result<Finished, RuntimeError> {
    let program = cmd.as_std().get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| RuntimeError::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let stdout = child
        .stdout
        .take()
        .map(|s| tokio::spawn(tail(s, STDERR_TAIL)));
    let stderr = child
        .stderr
        .take()
        .map(|s| tokio::spawn(tail(s, STDERR_TAIL)));
    let deadline = clock.now() + timeout;
    let status = tokio::select! {
        status = child.wait() => status,
        () = clock.sleep_until(deadline) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            for handle in [stdout, stderr].into_iter().flatten() {
                handle.abort();
            }
            return Err(RuntimeError::Timeout {
                command: command.to_string(),
                after: timeout,
            });
        }
    };
    let status = status.map_err(|e| RuntimeError::Spawn {
        program,
        reason: e.to_string(),
    })?;
    Ok(Finished {
        status,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    })
}

async fn collect(handle: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    let Some(mut handle) = handle else {
        return Vec::new();
    };
    match tokio::time::timeout(PIPE_GRACE, &mut handle).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => Vec::new(),
        Err(_) => {
            // A descendant still holds the pipe open; stop reading.
            handle.abort();
            Vec::new()
        }
    }
}

/// Reads `reader` to the end, keeping the last `keep` bytes.
async fn tail(mut reader: impl AsyncRead + Unpin, keep: usize) -> Vec<u8> {
    let mut kept = Vec::with_capacity(keep);
    let mut buf = [0u8; 4096];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > keep {
                    let cut = kept.len() - keep;
                    kept.drain(..cut);
                }
            }
        }
    }
    kept
}

/// Why a tool an adapter needs cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolError {
    #[error("{program:?} was not found in PATH")]
    NotInPath { program: String },
    #[error("{path} is not an executable file: {reason}")]
    NotExecutable { path: String, reason: String },
    #[error("`{command}` failed: {reason}")]
    Probe { command: String, reason: String },
}

/// Resolves `program`: a path with a directory part is checked as it is; a
/// bare name is looked up in `search_path` (a `PATH`-style list). Returns
/// an absolute path to an executable file.
pub fn find_program(program: &Path, search_path: Option<&OsStr>) -> Result<PathBuf, ToolError> {
    let absolute = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    if program.components().count() > 1 {
        return check_executable(program).map(|()| absolute(program.to_path_buf()));
    }
    if let Some(paths) = search_path {
        for dir in std::env::split_paths(paths) {
            let candidate = dir.join(program);
            if check_executable(&candidate).is_ok() {
                return Ok(absolute(candidate));
            }
        }
    }
    Err(ToolError::NotInPath {
        program: program.display().to_string(),
    })
}

fn check_executable(path: &Path) -> Result<(), ToolError> {
    let err = |reason: String| ToolError::NotExecutable {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(err("no execute permission".into()));
        }
    }
    Ok(())
}

/// Runs `program args...` once, synchronously (adapters probe at start, not
/// per action), and fails unless it exits 0 within `timeout`.
pub fn probe(program: &Path, args: &[&str], timeout: Duration) -> Result<(), ToolError> {
    let command = std::iter::once(program.display().to_string())
        .chain(args.iter().map(|a| (*a).to_string()))
        .collect::<Vec<_>>()
        .join(" ");
    let fail = |reason: String| ToolError::Probe {
        command: command.clone(),
        reason,
    };
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    let started = StdInstant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("no answer within {timeout:?}")));
            }
            Ok(None) => std::thread::sleep(PROBE_POLL),
            Err(e) => return Err(fail(e.to_string())),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut stderr = Vec::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_end(&mut stderr);
    }
    let text = String::from_utf8_lossy(&stderr);
    let text = text.trim();
    let cut = text.char_indices().rev().nth(255).map_or(0, |(i, _)| i);
    Err(fail(format!("{status}: {}", &text[cut..])))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::clock::SystemClock;
    use std::os::unix::fs::PermissionsExt;

    /// `Command` running `script` through `/bin/sh`: executing a file just
    /// written races with other test threads' forks, which may still hold
    /// its write descriptor ("Text file busy").
    fn sh(script: &Path) -> Command {
        let mut command = Command::new("/bin/sh");
        command.arg(script);
        command
    }

    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn finds_programs_by_path_and_in_path() {
        let dir = tempfile::tempdir().unwrap();
        let tool = script(dir.path(), "tool", "exit 0");
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        assert_eq!(find_program(&tool, None).unwrap(), tool);
        let search = std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            find_program(Path::new("tool"), Some(&search)).unwrap(),
            tool
        );
        assert!(matches!(
            find_program(Path::new("plain"), Some(&search)),
            Err(ToolError::NotInPath { .. })
        ));
        assert!(matches!(
            find_program(&dir.path().join("plain"), None),
            Err(ToolError::NotExecutable { .. })
        ));
        assert!(matches!(
            find_program(Path::new("tool"), None),
            Err(ToolError::NotInPath { .. })
        ));
    }

    #[test]
    fn probe_reports_exit_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let ok = script(dir.path(), "ok", "exit 0");
        let bad = script(dir.path(), "bad", "echo 'unknown command' >&2; exit 1");
        let slow = script(dir.path(), "slow", "exec sleep 30");
        probe(&ok, &["version"], Duration::from_secs(5)).unwrap();
        let err = probe(&bad, &["compose", "version"], Duration::from_secs(5)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("compose version"), "{text}");
        assert!(text.contains("unknown command"), "{text}");
        let err = probe(&slow, &[], Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("no answer"), "{err}");
    }

    #[tokio::test]
    async fn run_keeps_tails_and_kills_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let noisy = script(
            dir.path(),
            "noisy",
            "i=0; while [ $i -lt 500 ]; do echo \"line $i\" >&2; i=$((i+1)); done; echo last >&2; exit 4",
        );
        let done = run(sh(&noisy), "noisy", Duration::from_secs(10), &SystemClock)
            .await
            .unwrap();
        assert!(!done.status.success());
        assert!(done.stderr.len() <= STDERR_TAIL);
        match done.check("noisy run") {
            Err(RuntimeError::Exit {
                command,
                code,
                stderr,
            }) => {
                assert_eq!(command, "noisy run");
                assert!(code.contains('4'), "{code}");
                assert!(stderr.ends_with("last"), "{stderr}");
            }
            other => panic!("expected an exit error, got {other:?}"),
        }
        let hang = script(dir.path(), "hang", "exec sleep 30");
        let err = run(sh(&hang), "hang", Duration::from_millis(200), &SystemClock)
            .await
            .unwrap_err();
        assert!(
            matches!(err, RuntimeError::Timeout { ref command, .. } if command == "hang"),
            "{err:?}"
        );
    }
}
