//! Shared harness for the integration tests: the workspace's real binaries
//! as child processes, Mosquitto, temporary directories, and waits that fail
//! with a clear message instead of hanging.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub mod campaign;
pub mod demo;
pub mod faultproxy;
pub mod fleet;
pub mod fleetsim;
pub mod fuzz_entries;
pub mod proxy;
pub mod simagent;
pub mod spec_client;
pub mod spec_wfm;

// The shared test kit (tests/kit), under the paths these tests have used.
pub use margo_testkit::try_eventually as eventually;
pub use margo_testkit::{free_port, Proc};

/// Logs go to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// Path of a workspace binary built by `cargo test --workspace` (or next
/// to a binary of this crate such as `margo-fleetsim`).
///
/// Cargo builds a package's binaries whenever that package has integration
/// tests, so the manager, agent and broker binaries sit next to the test's
/// own `deps/` directory; a binary of this crate sits beside them.
/// `MARGO_BIN_DIR` overrides where to look.
pub fn bin(name: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = match std::env::var_os("MARGO_BIN_DIR") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => {
            let exe = std::env::current_exe().expect("current executable");
            let here = exe.parent().expect("the executable is in a directory");
            let mut dirs = vec![here.to_path_buf()];
            dirs.extend(here.parent().map(Path::to_path_buf));
            dirs
        }
    };
    let found = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!(
            "{name} is missing in {dirs:?}: run the tests with `cargo test --workspace` so cargo builds every binary \
             (for margo-fleetsim: build the manager and agent binaries with the same profile)"
        )
    })
}

/// Parses `key=value` words out of a readiness line.
pub fn ready_field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .map(str::to_string)
}

/// Parses a `host:port` readiness field into a socket address.
pub fn ready_addr(line: &str, key: &str) -> Result<SocketAddr> {
    let v = ready_field(line, key).with_context(|| format!("no {key}= in {line:?}"))?;
    v.parse()
        .with_context(|| format!("{key}={v} is not an address"))
}
