//! Percentiles and the JSON + Markdown files every benchmark writes.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// Distribution of a set of durations in milliseconds (nearest-rank percentiles).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(values: &[f64]) -> Percentiles {
        if values.is_empty() {
            return Percentiles::default();
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            let k = ((p / 100.0) * v.len() as f64).ceil() as usize;
            v[k.clamp(1, v.len()) - 1]
        };
        Percentiles {
            count: v.len(),
            min: v[0],
            p50: rank(50.0),
            p95: rank(95.0),
            p99: rank(99.0),
            max: v[v.len() - 1],
            mean: v.iter().sum::<f64>() / v.len() as f64,
        }
    }
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Writes `<dir>/<stem>.json` and `<dir>/<stem>.md`; returns both paths.
pub fn write(
    dir: &Path,
    stem: &str,
    json: &impl Serialize,
    markdown: &str,
) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let j = dir.join(format!("{stem}.json"));
    let m = dir.join(format!("{stem}.md"));
    std::fs::write(&j, serde_json::to_vec_pretty(json)?)
        .with_context(|| format!("write {}", j.display()))?;
    std::fs::write(&m, markdown).with_context(|| format!("write {}", m.display()))?;
    Ok((j, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Percentiles::of(&v);
        assert_eq!(
            (p.min, p.p50, p.p95, p.p99, p.max),
            (1.0, 50.0, 95.0, 99.0, 100.0)
        );
        let one = Percentiles::of(&[7.0]);
        assert_eq!((one.p50, one.p99, one.count), (7.0, 7.0, 1));
        assert_eq!(Percentiles::of(&[]).count, 0);
    }
}
