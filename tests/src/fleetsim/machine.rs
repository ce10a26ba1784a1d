//! What the numbers were measured on.

use serde::Serialize;

/// The machine and its load when a benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub mem_total_bytes: u64,
    /// `/proc/loadavg` (1, 5, 15 min) when the benchmark started: anything
    /// well above 0 means other work shared the CPUs.
    pub loadavg_at_start: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|v| v.split_once(':'))
            .map(|(_, m)| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let loadavg_at_start = loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            mem_total_bytes,
            loadavg_at_start,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    /// One Markdown line.
    pub fn markdown(&self) -> String {
        format!(
            "{} CPUs ({}), {:.1} GiB RAM, Linux {}, load average at start {}",
            self.cpus,
            self.cpu_model,
            self.mem_total_bytes as f64 / (1u64 << 30) as f64,
            self.kernel,
            self.loadavg_at_start
        )
    }
}
