//! Agent footprint: the real `margo-agent` binary as a process against a
//! real manager. Size of the executable (and of a stripped copy), RSS when
//! idle after onboarding with two deployments, peak RSS during an apply that
//! updates both.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use margo_manager::admin::AdminClient;
use margo_manager::identity_bundle::write_bundle;
use margo_schemas::status::DeploymentState;
use serde::Serialize;

use super::machine::Machine;
use super::procstat::{self, Sampler};
use super::report::{self, mib};
use crate::fleet::{deployment_yaml, AgentProc, ManagerProc};

const D1: &str = "f007f007-0000-4000-8000-000000000001";
const D2: &str = "f007f007-0000-4000-8000-000000000002";

/// What `margo-fleetsim bench footprint` measures.
#[derive(Debug, Clone)]
pub struct FootprintOptions {
    /// The `margo-agent` executable.
    pub agent: PathBuf,
    /// A label for this build (e.g. `release`, `release-small`).
    pub label: String,
    /// Simulated time of one component action during the apply.
    pub delay: Duration,
    /// How long the agent idles before its RSS is read.
    pub settle: Duration,
    pub out_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct FootprintReport {
    pub benchmark: &'static str,
    pub label: String,
    pub agent: String,
    pub git_commit: Option<String>,
    pub machine: Machine,
    /// Size of the executable as built.
    pub file_bytes: u64,
    /// Size after `strip` of a copy (equal when the build is stripped already).
    pub stripped_bytes: Option<u64>,
    /// RSS after onboarding and converging on two deployments, then `settle` idle.
    pub idle_rss_bytes: u64,
    /// Of the idle RSS: anonymous (heap, stacks) and file-backed (code).
    pub idle_rss_anon_bytes: u64,
    pub idle_rss_file_bytes: u64,
    /// Of the idle file-backed RSS: the agent's own executable, and the
    /// shared libraries (libc, libm, the loader; shared with every other
    /// process using them). From `/proc/<pid>/smaps`; None if unreadable.
    pub idle_rss_exe_bytes: Option<u64>,
    pub idle_rss_libs_bytes: Option<u64>,
    /// Peak RSS (`VmHWM`, reset before the apply when the kernel allows) while
    /// both deployments are updated.
    pub apply_peak_rss_bytes: u64,
    pub apply_peak_from_hwm: bool,
    /// Highest RSS sampled every 10 ms during the apply.
    pub apply_peak_sampled_bytes: u64,
    /// RSS after the apply and another `settle` idle.
    pub idle_after_apply_rss_bytes: u64,
    /// `VmHWM` over the agent's whole life (start, TLS, first sync).
    pub lifetime_hwm_bytes: u64,
    pub cpu_seconds: f64,
    pub threads: u64,
}

impl FootprintReport {
    pub fn markdown(&self) -> String {
        format!(
            "### Agent footprint: {}\n\n\
             Machine: {}. Commit {}. Binary `{}`.\n\n\
             | build | file size | stripped | idle RSS (2 deployments) | of which anon / file | file: executable / shared libraries | peak RSS during apply | idle RSS after apply | lifetime VmHWM | threads |\n\
             |---|---|---|---|---|---|---|---|---|---|\n\
             | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} | {} | {} |\n",
            self.label,
            self.machine.markdown(),
            self.git_commit.as_deref().unwrap_or("unknown"),
            self.agent,
            self.label,
            mib(self.file_bytes),
            self.stripped_bytes.map_or("n/a".into(), mib),
            mib(self.idle_rss_bytes),
            mib(self.idle_rss_anon_bytes),
            mib(self.idle_rss_file_bytes),
            self.idle_rss_exe_bytes.map_or("n/a".into(), mib),
            self.idle_rss_libs_bytes.map_or("n/a".into(), mib),
            mib(self.apply_peak_rss_bytes),
            mib(self.idle_after_apply_rss_bytes),
            mib(self.lifetime_hwm_bytes),
            self.threads,
        )
    }
}

/// Size of a stripped copy of `path` (None if `strip` is not available).
fn stripped_size(path: &Path, scratch: &Path) -> Option<u64> {
    let copy = scratch.join("agent-stripped");
    std::fs::copy(path, &copy).ok()?;
    let ok = std::process::Command::new("strip")
        .arg(&copy)
        .status()
        .ok()?
        .success();
    let size = std::fs::metadata(&copy).ok()?.len();
    let _ = std::fs::remove_file(&copy);
    ok.then_some(size)
}

fn threads(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Resident file-backed bytes of one process, split into its executable
/// and everything else mapped from a file (shared libraries).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileRss {
    exe: u64,
    libs: u64,
}

/// Reads `/proc/<pid>/smaps` (None if it cannot: not Linux, no permission).
fn file_rss(pid: u32) -> Option<FileRss> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(parse_file_rss(&smaps, &exe.to_string_lossy()))
}

/// Sums `Rss` minus `Anonymous` (private copies of file pages) of every
/// mapping with a path, as the executable's when the path is `exe`.
fn parse_file_rss(smaps: &str, exe: &str) -> FileRss {
    let mut split = FileRss { exe: 0, libs: 0 };
    // Where the current mapping's pages go: None for anonymous mappings.
    let mut target: Option<bool> = None;
    let mut rss = 0u64;
    let mut flush = |target: Option<bool>, rss: u64, anon: u64| match target {
        Some(true) => split.exe += rss.saturating_sub(anon),
        Some(false) => split.libs += rss.saturating_sub(anon),
        None => {}
    };
    let mut anon = 0u64;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            flush(target, rss, anon);
            (rss, anon) = (0, 0);
            // address perms offset dev inode [path]
            target = words
                .nth(4)
                .filter(|p| p.starts_with('/'))
                .map(|path| path == exe);
        } else if let Some(kib) = words.next().and_then(|v| v.parse::<u64>().ok()) {
            match first {
                "Rss:" => rss = kib * 1024,
                "Anonymous:" => anon = kib * 1024,
                _ => {}
            }
        }
    }
    flush(target, rss, anon);
    split
}

async fn wait_installed(
    admin: &AdminClient,
    name: &str,
    version: u64,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let status = admin.status(Some(name)).await?;
        let done = status.first().is_some_and(|c| {
            c.adopted_version >= Some(version)
                && [D1, D2].iter().all(|id| {
                    c.deployments.iter().any(|d| {
                        d.deployment_id.as_str() == *id
                            && d.state == Some(DeploymentState::Installed)
                    })
                })
        });
        if done {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{name} did not adopt v{version} with both deployments installed within {timeout:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(opts: &FootprintOptions) -> Result<FootprintReport> {
    let machine = Machine::read();
    let file_bytes = std::fs::metadata(&opts.agent)
        .with_context(|| format!("{}", opts.agent.display()))?
        .len();
    let work = tempfile::Builder::new().prefix("footprint-").tempdir()?;
    let stripped_bytes = stripped_size(&opts.agent, work.path());
    let mut manager = ManagerProc::start_with_env(work.path(), "", &[("RUST_LOG", "warn")])?;
    let gateway = manager.gateway.context("no gateway")?;
    let admin = AdminClient::new(&manager.socket);
    let bundle = admin
        .add_client(
            "footprint-1",
            Some(&format!("mqtts://localhost:{}", gateway.port())),
        )
        .await?;
    let identity = work.path().join("footprint-1-identity");
    write_bundle(&identity, &bundle)?;
    // The agent's defaults (log level info unless RUST_LOG says otherwise)
    // but the simulated runtime, with `delay` per component action.
    let extra = format!(
        "[runtime]\nadapter = \"simulated\"\n[runtime.simulated]\ndelay = \"{}ms\"\n",
        opts.delay.as_millis()
    );
    let mut agent =
        AgentProc::start_program(work.path(), "footprint-1", &identity, &extra, &opts.agent)?;
    let pid = agent.proc.pid().context("agent pid")?;

    let docs = |rev| {
        vec![
            deployment_yaml(D1, "alpha", &["web", "db"], rev),
            deployment_yaml(D2, "beta", &["sensor"], rev),
        ]
    };
    let first = admin.deploy("footprint-1", docs(1)).await?.manifest_version;
    wait_installed(&admin, "footprint-1", first, Duration::from_secs(60)).await?;
    tokio::time::sleep(opts.settle).await;
    let idle = procstat::sample(pid)?;
    let idle_files = file_rss(pid);

    let reset = procstat::reset_peak(pid);
    let sampler = Sampler::start(pid, Duration::from_millis(10));
    let update = admin.deploy("footprint-1", docs(2)).await?.manifest_version;
    wait_installed(&admin, "footprint-1", update, Duration::from_secs(60)).await?;
    let after_apply = procstat::sample(pid)?;
    let sampled = sampler.finish().await;
    tokio::time::sleep(opts.settle).await;
    let idle_after = procstat::sample(pid)?;
    let threads = threads(pid);
    agent.stop();
    manager.proc.stop(Duration::from_secs(15));

    let report = FootprintReport {
        benchmark: "footprint",
        label: opts.label.clone(),
        agent: opts.agent.display().to_string(),
        git_commit: super::fanout::git_commit(),
        machine,
        file_bytes,
        stripped_bytes,
        idle_rss_bytes: idle.rss_bytes,
        idle_rss_anon_bytes: idle.rss_anon_bytes,
        idle_rss_file_bytes: idle.rss_file_bytes,
        idle_rss_exe_bytes: idle_files.map(|f| f.exe),
        idle_rss_libs_bytes: idle_files.map(|f| f.libs),
        apply_peak_rss_bytes: if reset {
            after_apply.hwm_bytes
        } else {
            sampled
        },
        apply_peak_from_hwm: reset,
        apply_peak_sampled_bytes: sampled,
        idle_after_apply_rss_bytes: idle_after.rss_bytes,
        lifetime_hwm_bytes: if reset {
            idle.hwm_bytes
        } else {
            idle_after.hwm_bytes
        },
        cpu_seconds: idle_after.cpu_seconds,
        threads,
    };
    let stem = format!("footprint-{}", opts.label);
    let (json, md) = report::write(&opts.out_dir, &stem, &report, &report.markdown())?;
    println!("wrote {} and {}", json.display(), md.display());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_split_into_executable_and_libraries() {
        let smaps = "\
55d0c0000000-55d0c0100000 r-xp 00000000 fd:00 42 /opt/margo-agent
Size:               1024 kB
Rss:                 800 kB
Anonymous:             0 kB
55d0c0200000-55d0c0210000 rw-p 00100000 fd:00 42 /opt/margo-agent
Rss:                  12 kB
Anonymous:             8 kB
7f0000000000-7f0000100000 r-xp 00000000 fd:00 7 /usr/lib/libc.so.6
Rss:                 600 kB
Anonymous:             0 kB
7f0000200000-7f0000300000 rw-p 00000000 00:00 0
Rss:                 500 kB
Anonymous:           500 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]
Rss:                 132 kB
Anonymous:           132 kB
";
        assert_eq!(
            parse_file_rss(smaps, "/opt/margo-agent"),
            FileRss {
                exe: (800 + 4) * 1024,
                libs: 600 * 1024
            }
        );
    }
}
