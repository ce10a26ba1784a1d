//! The campaign's invariants, each judged from a source the system under
//! test cannot bend: the runtime program's own log (what a device was asked
//! to apply, written by a separate process), the redb files opened after
//! every process stopped, and the processes' logs.

use std::fmt;
use std::path::{Path, PathBuf};

/// One invariant's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: &'static str,
    pub pass: bool,
    /// What failed (empty when it held), or what was checked.
    pub detail: String,
}

impl Verdict {
    /// PASS when `failures` is empty; the detail lists at most 10 of them.
    pub fn from_failures(name: &'static str, checked: String, failures: &[String]) -> Verdict {
        let detail = if failures.is_empty() {
            checked
        } else {
            let mut d = format!("{} failure(s): ", failures.len());
            d.push_str(
                &failures
                    .iter()
                    .take(10)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; "),
            );
            if failures.len() > 10 {
                d.push_str("; …");
            }
            d
        };
        Verdict {
            name,
            pass: failures.is_empty(),
            detail,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.pass { "PASS" } else { "FAIL" };
        write!(f, "{verdict}  {:<22} {}", self.name, self.detail)
    }
}

/// One line of the recording runtime:
/// `<phase> <action> <deployment> <unix time> <parameters JSON>`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeLine {
    /// `start` or `done`.
    pub phase: String,
    /// `install`, `update` or `remove`.
    pub action: String,
    pub deployment: String,
    /// `ENV.REVISION` of the parameters (None for a remove, or absent).
    pub revision: Option<u64>,
    /// When the runtime wrote the line (seconds since the Unix epoch).
    pub at: Option<f64>,
}

/// Parses the recording runtime's log (lines that do not parse are skipped).
pub fn parse_runtime_log(text: &str) -> Vec<RuntimeLine> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.splitn(5, ' ');
            let (phase, action, deployment) = (w.next()?, w.next()?, w.next()?);
            let at = w.next().and_then(|t| t.parse::<f64>().ok());
            let revision = w
                .next()
                .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
                .and_then(|v| v.get("ENV.REVISION").and_then(serde_json::Value::as_u64));
            Some(RuntimeLine {
                phase: phase.to_string(),
                action: action.to_string(),
                deployment: deployment.to_string(),
                revision,
                at,
            })
        })
        .collect()
}

/// The revisions of `deployment` that the runtime was asked to apply
/// (`phase` = `start`) or finished applying (`done`), in order.
pub fn applied_revisions(lines: &[RuntimeLine], deployment: &str, phase: &str) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l.deployment == deployment && l.phase == phase && l.action != "remove")
        .filter_map(|l| l.revision)
        .collect()
}

/// The first place where a revision follows a higher one, as a message.
pub fn first_regression(revisions: &[u64]) -> Option<String> {
    revisions.windows(2).position(|w| w[1] < w[0]).map(|i| {
        format!(
            "revision {} applied after {} (sequence {:?})",
            revisions[i + 1],
            revisions[i],
            revisions
        )
    })
}

/// Checks that the manager stored exactly the seqs 1..next (each once)
/// that an agent whose outbox assigns `next_seq` next has generated.
pub fn exactly_once(stored: &[u64], next_seq: u64, pending: &[u64]) -> Result<(), String> {
    let generated = next_seq.saturating_sub(1);
    let mut problems = Vec::new();
    let mut sorted = stored.to_vec();
    sorted.sort_unstable();
    let before = sorted.len();
    sorted.dedup();
    if sorted.len() != before {
        problems.push(format!("{} seq(s) stored twice", before - sorted.len()));
    }
    let missing: Vec<u64> = (1..=generated)
        .filter(|s| sorted.binary_search(s).is_err())
        .collect();
    if !missing.is_empty() {
        problems.push(format!(
            "generated but not stored: {} seq(s), first {:?}{}",
            missing.len(),
            &missing[..missing.len().min(5)],
            if pending.is_empty() {
                String::new()
            } else {
                format!(" (still pending in the outbox: {})", pending.len())
            }
        ));
    }
    let foreign: Vec<u64> = sorted.iter().copied().filter(|s| *s > generated).collect();
    if !foreign.is_empty() {
        problems.push(format!(
            "stored but never generated (agent's next seq {next_seq}): {foreign:?}"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join(", "))
    }
}

/// Every `*.log` file under `dirs` (recursively) with a Rust panic message,
/// as `file: line`.
pub fn panics(dirs: &[PathBuf]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "log") {
                found.extend(panics_in(&path));
            }
        }
    }
    found.sort();
    found
}

fn panics_in(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("panicked at"))
        .map(|l| {
            format!(
                "{}: {}",
                path.display(),
                l.chars().take(200).collect::<String>()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_revision_after_a_higher_one_is_a_regression() {
        assert_eq!(first_regression(&[1, 2, 2, 3]), None);
        assert!(first_regression(&[1, 3, 2]).is_some());
    }

    #[test]
    fn runtime_lines_parse_with_their_revision() {
        let lines = parse_runtime_log(
            "start install d1 1.5 {\"ENV.REVISION\":3}\ndone install d1 2.5 {\"ENV.REVISION\":3}\nstart remove d1 3 {}\n",
        );
        assert_eq!(applied_revisions(&lines, "d1", "done"), vec![3]);
        assert_eq!(applied_revisions(&lines, "d1", "start"), vec![3]);
        assert_eq!(lines[1].at, Some(2.5));
    }

    #[test]
    fn exactly_once_names_missing_duplicate_and_foreign_seqs() {
        assert!(exactly_once(&[1, 2, 3], 4, &[]).is_ok());
        assert!(exactly_once(&[1, 3], 4, &[])
            .unwrap_err()
            .contains("not stored"));
        assert!(exactly_once(&[1, 2, 2, 3], 4, &[])
            .unwrap_err()
            .contains("twice"));
        assert!(exactly_once(&[1, 2, 3, 4], 4, &[])
            .unwrap_err()
            .contains("never generated"));
    }
}
