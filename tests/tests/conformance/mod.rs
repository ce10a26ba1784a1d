//! The conformance suite's harness: a case recorder that runs every case
//! and reports all failures at the end, problem-body checks, fixtures and
//! the manager under test.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use margo_manager::{Manager, ManagerConfig, ManagerHandle};
use margo_tests::spec_client::Reply;

/// Longest wait for anything outside a request (manager start, admin calls).
pub const WAIT: Duration = Duration::from_secs(30);

/// Namespace of the Margo problem types (R4 of the readings; the
/// `system-design/specification/problem-types.md` registry that
/// `-1.0.0-rc.3.yaml`'s `ProblemDetail` example uses).
pub const PROBLEM_BASE: &str = "https://docs.margo.org/specification/problem-types#";

/// The `[onboarding]` setting that turns on automatic approval (issue 10,
/// item 5: "an explicit auto-approval mode for labs and conformance runs",
/// allowed on a loopback listener without confirmation).
pub const AUTO_APPROVAL_TOML: &str = "[onboarding]\napproval = \"auto\"\n";

/// The area of the implementation a case checks (printed with the case, to
/// point a failure at the code that answers it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// Capabilities and status shapes, 201 on clientId capabilities
    /// (`margo_schemas::{capabilities, status}`, `http/uplink.rs`).
    Shapes,
    /// RFC 9421, `X-Payload-Signature` on every request, order of checks
    /// (`http/access.rs`).
    Sig,
    /// Zero-deployment manifest, digest 404s, unknown-deployment status 404
    /// (`store`, `http/deployments.rs`).
    Desired,
    /// rc.3 routes over mTLS, onboarding modes, problem+json types
    /// (`http/tls_peer.rs`, `http/onboarding.rs`, `http/problem.rs`).
    Mtls,
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Area::Shapes => "shapes",
            Area::Sig => "sig",
            Area::Desired => "desired",
            Area::Mtls => "mtls",
        })
    }
}

struct Row {
    case: String,
    waits: Vec<Area>,
    error: Option<String>,
}

/// Runs every case, keeps going after a failure, reports them all.
pub struct Suite {
    name: &'static str,
    rows: Vec<Row>,
}

impl Suite {
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            rows: Vec::new(),
        }
    }

    /// Records the outcome of one case; its value if it passed.
    pub fn record<T>(
        &mut self,
        case: impl Into<String>,
        waits: &[Area],
        r: Result<T>,
    ) -> Option<T> {
        let (value, error) = match r {
            Ok(v) => (Some(v), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        self.rows.push(Row {
            case: case.into(),
            waits: waits.to_vec(),
            error,
        });
        value
    }

    /// Prints every case; fails if any case failed.
    pub fn finish(self) -> Result<()> {
        let mut failed = Vec::new();
        let mut passed = 0;
        eprintln!("== {}: {} cases", self.name, self.rows.len());
        for row in &self.rows {
            let waits: Vec<String> = row.waits.iter().map(Area::to_string).collect();
            let waits = if waits.is_empty() {
                String::new()
            } else {
                format!(" [area: {}]", waits.join(", "))
            };
            match &row.error {
                None => {
                    passed += 1;
                    eprintln!("pass     {}{waits}", row.case);
                }
                Some(e) => {
                    eprintln!("FAIL     {}{waits}\n         {e}", row.case);
                    failed.push(format!("{}: {e}", row.case));
                }
            }
        }
        eprintln!("== {}: {passed} passed, {} failed", self.name, failed.len());
        if !failed.is_empty() {
            bail!("{} case(s) failed:\n{}", failed.len(), failed.join("\n"));
        }
        Ok(())
    }
}

/// Runs an async block returning `anyhow::Result<T>` as one case.
#[macro_export]
macro_rules! case {
    ($suite:expr, $name:expr, $waits:expr, $body:block) => {{
        let outcome: anyhow::Result<_> = async { $body }.await;
        $suite.record($name, $waits, outcome)
    }};
}

/// `a` and `b` together.
pub fn both(a: &[Area], b: &[Area]) -> Vec<Area> {
    let mut v = a.to_vec();
    v.extend(b.iter().filter(|w| !a.contains(w)));
    v
}

/// Checks an RFC 9457 problem answer: `status`, `application/problem+json`,
/// `type`, `title` and `status` members (`ProblemDetail.required` in
/// `-1.0.0-rc.3.yaml`), and the `type` URI: `PROBLEM_BASE + name`, or
/// `about:blank` when `name` is `None` ("When no Margo-specific problem type
/// applies, implementations MUST use `about:blank`", `problem-types.md`).
pub fn expect_problem(reply: &Reply, status: u16, name: Option<&str>) -> Result<serde_json::Value> {
    reply.expect_status(status)?;
    ensure!(
        reply.media_type().as_deref() == Some("application/problem+json"),
        "a problem body must be application/problem+json: {}",
        reply.describe()
    );
    let body = reply.json()?;
    ensure!(
        body["status"] == status && body["title"].is_string(),
        "problem members type, title, status are required: {body}"
    );
    let expected = match name {
        Some(n) => format!("{PROBLEM_BASE}{n}"),
        None => "about:blank".to_string(),
    };
    ensure!(
        body["type"] == expected.as_str(),
        "problem type {} is not {expected}",
        body["type"]
    );
    Ok(body)
}

/// Fails unless the reply is 2xx with exactly `status`.
pub fn expect(reply: &Reply, status: u16) -> Result<()> {
    reply.expect_status(status).map(|_| ())
}

/// A fixture under `tests/fixtures/margo-spec/` (see its `SOURCES.md`).
pub fn fixture(rel: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/margo-spec")
        .join(rel);
    std::fs::read_to_string(&path).with_context(|| format!("read fixture {}", path.display()))
}

/// Starts a manager on `dir` with the shipped defaults except: data dir,
/// every listener on a free loopback port, and `extra` TOML sections.
pub async fn start_manager(dir: &Path, extra: &str) -> Result<ManagerHandle> {
    let path = dir.join("manager.toml");
    let text = format!(
        "version = 1\ndata_dir = {data:?}\n\
         [broker]\nmqtt_listen = \"127.0.0.1:0\"\ngateway_listen = \"127.0.0.1:0\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}",
        data = dir.join("manager").display().to_string(),
    );
    std::fs::write(&path, &text)?;
    let config = ManagerConfig::from_toml(&text, &path)
        .with_context(|| format!("the manager refuses its configuration:\n{text}"))?;
    tokio::time::timeout(WAIT, Manager::start(config))
        .await
        .context("manager start timed out")?
        .context("manager start")
}

/// Awaits an admin call within [`WAIT`].
pub async fn admin<T, E: std::error::Error + Send + Sync + 'static>(
    what: &str,
    fut: impl std::future::Future<Output = std::result::Result<T, E>>,
) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .with_context(|| format!("{what}: timed out"))?
        .with_context(|| what.to_string())
}
