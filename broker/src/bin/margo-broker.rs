//! `margo-broker --config FILE [--revocations FILE] [-v]`: runs the embedded
//! rumqttd and the device gateway until SIGINT/SIGTERM. `MARGO_BROKER_*`
//! variables override the file; an unknown one is refused
//! (docs/configuration.md).
//!
//! Prints `margo-broker ready mqtt=ADDR internal=ADDR gateway=ADDR` on
//! stdout once every listener accepts (`gateway=none` without a gateway):
//! `mqtt` is the operator's read-only listener, `internal` rumqttd's own
//! (login `margo-internal` with the password in `[internal] password_file`,
//! for a manager in `external` mode). Logs go to stderr.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use margo_broker::{parse_revocation_list, BrokerFileConfig, EmbeddedBroker, Revocations};
use margo_schemas::config_layers::Layered;
use tracing::{error, info, warn};

/// Embedded MQTT broker on loopback plus the margo device gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file (see config/margo-broker.toml).
    #[arg(long, short = 'c')]
    config: PathBuf,
    /// Revoked client ids, one per line (`#` comments); reloaded on SIGHUP.
    #[arg(long)]
    revocations: Option<PathBuf>,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    // rumqttd logs every accepted connection at info, and routine events at
    // error: quieter by default (margo_broker::rumqttd_log).
    margo_broker::rumqttd_log::init_stderr(cli.verbose);
    // One process-wide rustls provider (ring) for every rustls user in the tree.
    let _ = rustls::crypto::ring::default_provider().install_default();

    // Defaults → file → MARGO_BROKER_* environment (docs/configuration.md).
    let file = BrokerFileConfig::load_layered(Some(&cli.config), std::env::vars(), ())
        .with_context(|| format!("configuration {}", cli.config.display()))?;
    if file.internal.password_file.is_none() {
        warn!(
            "no [internal] password_file: the broker's internal listener takes a random \
             password, so only the gateway and the read-only listener reach it and no \
             manager can connect"
        );
    }
    let config = file
        .into_config()
        .with_context(|| format!("configuration {}", cli.config.display()))?;

    let broker = EmbeddedBroker::start(config)
        .await
        .context("starting the broker")?;
    let revocations = broker.revocations();
    if let Some(path) = &cli.revocations {
        let n = load_revocations(path, &revocations)?;
        info!(path = %path.display(), revoked = n, "revocation list loaded");
    }

    // Handlers first: a supervisor may signal as soon as it reads the ready
    // line, and an unhandled SIGTERM would kill the process uncleanly.
    let signals = ExitSignals::install()?;
    let gateway = broker
        .gateway_addr()
        .map_or_else(|| "none".to_string(), |addr| addr.to_string());
    let mut stdout = std::io::stdout().lock();
    writeln!(
        stdout,
        "margo-broker ready mqtt={} internal={} gateway={gateway}",
        broker.mqtt_addr(),
        broker.upstream().addr,
    )
    .and_then(|()| stdout.flush())
    .context("writing the ready line")?;
    drop(stdout);

    signals
        .wait(cli.revocations.as_deref(), &revocations)
        .await?;
    info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

fn load_revocations(path: &Path, revocations: &Revocations) -> Result<usize> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading revocation list {}", path.display()))?;
    let ids = parse_revocation_list(&text)
        .with_context(|| format!("revocation list {}", path.display()))?;
    let n = ids.len();
    let closed = revocations.replace_all(ids);
    if closed > 0 {
        info!(closed, "live connections of revoked clients closed");
    }
    Ok(n)
}

/// The signals that end (or, SIGHUP, reload) the broker, registered before
/// the ready line is written.
#[cfg(unix)]
struct ExitSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl ExitSignals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
        })
    }

    /// Returns on SIGINT or SIGTERM; reloads the revocation list on SIGHUP.
    async fn wait(
        mut self,
        revocation_file: Option<&Path>,
        revocations: &Revocations,
    ) -> Result<()> {
        loop {
            tokio::select! {
                _ = self.int.recv() => return Ok(()),
                _ = self.term.recv() => return Ok(()),
                _ = self.hup.recv() => match revocation_file {
                    Some(path) => match load_revocations(path, revocations) {
                        Ok(n) => info!(revoked = n, "revocation list reloaded"),
                        Err(e) => error!(error = format!("{e:#}"), "revocation list not reloaded; keeping the previous one"),
                    },
                    None => info!("SIGHUP ignored: no --revocations file"),
                },
            }
        }
    }
}

#[cfg(not(unix))]
struct ExitSignals;

#[cfg(not(unix))]
impl ExitSignals {
    fn install() -> Result<Self> {
        Ok(Self)
    }

    async fn wait(self, _: Option<&Path>, _: &Revocations) -> Result<()> {
        tokio::signal::ctrl_c().await.context("Ctrl-C handler")
    }
}
