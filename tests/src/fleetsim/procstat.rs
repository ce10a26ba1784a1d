//! CPU time and memory of another process from `/proc/<pid>/{stat,status}`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
    /// Resident set size now.
    pub rss_bytes: u64,
    /// Peak resident set size since start (or since the last reset).
    pub hwm_bytes: u64,
    /// Of `rss_bytes`: anonymous memory (heap, stacks).
    pub rss_anon_bytes: u64,
    /// Of `rss_bytes`: file-backed pages (mostly the executable's code).
    pub rss_file_bytes: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("/proc/<pid>/stat without a command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("/proc/{pid}/stat field {}", i + 3))
    };
    // utime is field 14, stime field 15 (1-based), i.e. 11 and 12 here.
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    let cpu_seconds = (ticks(11)? + ticks(12)?) as f64 / hz;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Ok(ProcSample {
        cpu_seconds,
        rss_bytes: kib("VmRSS:"),
        hwm_bytes: kib("VmHWM:"),
        rss_anon_bytes: kib("RssAnon:"),
        rss_file_bytes: kib("RssFile:"),
    })
}

/// CPU seconds per thread name of `pid` (threads of the same name summed),
/// highest first: tells the embedded broker's threads from the manager's
/// tokio workers and blocking pool.
pub fn threads_cpu(pid: u32) -> Vec<(String, f64)> {
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    let mut by_name: std::collections::BTreeMap<String, f64> = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let name = stat[open + 1..close].to_string();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<u64>().ok()))
            .sum();
        *by_name.entry(name).or_default() += ticks as f64 / hz;
    }
    let mut out: Vec<(String, f64)> = by_name.into_iter().collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Per-name CPU seconds spent between two [`threads_cpu`] readings.
pub fn threads_delta(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = after
        .iter()
        .map(|(name, t)| {
            let was = before
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, t)| *t);
            (name.clone(), t - was)
        })
        .filter(|(_, t)| *t >= 0.005)
        .collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1));
    out
}

/// Resets the peak RSS (`VmHWM`) of `pid` to its current RSS (Linux
/// `clear_refs` value 5). Returns whether the kernel accepted it.
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok()
}

/// Samples a process every `every` until stopped and keeps the highest RSS
/// seen (a lower bound of the true peak between samples; combine with
/// `VmHWM` after [`reset_peak`]).
pub struct Sampler {
    peak_rss: Arc<Mutex<u64>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub fn start(pid: u32, every: Duration) -> Sampler {
        let peak_rss = Arc::new(Mutex::new(0u64));
        let stop = CancellationToken::new();
        let (peak, token) = (Arc::clone(&peak_rss), stop.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Ok(s) = sample(pid) {
                    let mut p = peak
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    *p = (*p).max(s.rss_bytes);
                }
            }
        });
        Sampler {
            peak_rss,
            stop,
            task,
        }
    }

    /// Stops sampling; returns the highest RSS seen.
    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        let _ = self.task.await;
        *self
            .peak_rss
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
