//! `margo-agent run --config FILE [-v]`: loads the configuration (defaults →
//! file → `MARGO_AGENT_*` environment → flags), onboards first when
//! `[onboarding]` is set and there is no identity bundle yet, starts the
//! agent, prints `margo-agent ready client=<id>` once started, and exits
//! cleanly on SIGINT/SIGTERM.
//!
//! `margo-agent onboard --manager URL --ca-fingerprint sha256:HEX [...]`:
//! onboards over HTTPS and writes the identity bundle (see `onboard.rs`).
//! Only with the `onboarding` feature (default); `--help` names the
//! features the binary was built with.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use margo_agent::config::Flags;
#[cfg(feature = "onboarding")]
use margo_agent::onboard::{self, OnboardOutcome, OnboardSettings, Onboarding};
use margo_agent::{Agent, AgentConfig, AgentOptions};
use margo_schemas::config_layers::Layered;
use tokio_util::sync::CancellationToken;

/// The optional Cargo features this binary has, for `--help`.
const BUILD_FEATURES: &str = match (
    cfg!(feature = "onboarding"),
    cfg!(feature = "http-transport"),
) {
    (true, true) => "Built with the features onboarding and http-transport.",
    (true, false) => "Built with onboarding, without http-transport (transport = \"mqtt\" only).",
    (false, true) => {
        "Built with http-transport, without onboarding (provision with an identity bundle)."
    }
    (false, false) => {
        "Minimal build, without onboarding and http-transport: MQTT only, \
         provisioned with an identity bundle (margoctl clients add)."
    }
};

#[derive(Parser)]
#[command(
    name = "margo-agent",
    version,
    about = "margo-mqtt device agent",
    after_help = BUILD_FEATURES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// Onboard with the fleet manager over HTTPS and write the identity bundle.
    #[cfg(feature = "onboarding")]
    Onboard(OnboardArgs),
}

#[cfg(feature = "onboarding")]
#[derive(clap::Args)]
struct OnboardArgs {
    /// Configuration file (optional; its [onboarding] and [capabilities] are used).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The fleet manager's HTTPS API, `https://host:port`.
    #[arg(long)]
    manager: Option<String>,
    /// The fleet CA's fingerprint, `sha256:<hex>` (from `margoctl ca`).
    #[arg(long)]
    ca_fingerprint: Option<String>,
    /// Enrollment token for automatic approval (or MARGO_AGENT_ONBOARDING_TOKEN).
    #[arg(long)]
    token: Option<String>,
    /// The name to ask for in the fleet (default: the host name).
    #[arg(long)]
    name: Option<String>,
    /// Where to write the identity bundle (overrides the file and environment).
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Trust the CA the manager presents without a fingerprint (insecure; warns).
    #[arg(long)]
    insecure_tofu: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (TOML, `version = 1`).
    #[arg(long, short)]
    config: PathBuf,
    /// Identity bundle directory (overrides the file and environment).
    #[arg(long)]
    identity_dir: Option<PathBuf>,
    /// Data directory (overrides the file and environment).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Broker URL, `mqtts://host:port` (overrides the file, environment and bundle).
    #[arg(long)]
    broker_url: Option<String>,
    /// More logging (-v debug, -vv trace); RUST_LOG takes precedence.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// Log levels from `RUST_LOG` as `target=level` directives (`info`,
/// `margo_agent=debug,rumqttc=warn`), else from `-v`. A `Targets` filter
/// rather than `EnvFilter`: no span or field filters, but no regex engine
/// in the agent binary either (docs/benchmarks.md, agent footprint).
fn init_logging(verbose: u8) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let default = match verbose {
        0 => Targets::new().with_default(LevelFilter::INFO),
        1 => Targets::new()
            .with_target("margo_agent", LevelFilter::DEBUG)
            .with_default(LevelFilter::INFO),
        _ => Targets::new().with_default(LevelFilter::TRACE),
    };
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<Targets>().ok())
        .unwrap_or(default);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Colour only for a person at a terminal, not in log files and journals.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

fn load_config(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let flags = Flags {
        identity_dir: args.identity_dir.clone(),
        data_dir: args.data_dir.clone(),
        broker_url: args.broker_url.clone(),
        onboarding: None,
    };
    Ok(AgentConfig::load_layered(
        Some(&args.config),
        std::env::vars(),
        flags,
    )?)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    Ok(())
}

#[cfg(feature = "onboarding")]
fn load_onboard_config(args: &OnboardArgs) -> anyhow::Result<AgentConfig> {
    use margo_agent::config::OnboardingFlags;
    let flags = Flags {
        identity_dir: args.identity_dir.clone(),
        data_dir: None,
        broker_url: None,
        onboarding: Some(OnboardingFlags {
            manager_url: args.manager.clone(),
            ca_fingerprint: args.ca_fingerprint.clone(),
            token: args.token.clone(),
            name: args.name.clone(),
            insecure_tofu: args.insecure_tofu,
        }),
    };
    Ok(AgentConfig::load_layered(
        args.config.as_deref(),
        std::env::vars(),
        flags,
    )?)
}

/// Runs onboarding until done or rejected; `None` after a signal.
#[cfg(feature = "onboarding")]
async fn onboard_until_signal(config: &AgentConfig) -> anyhow::Result<Option<OnboardOutcome>> {
    let settings = OnboardSettings::from_config(config)?;
    let shutdown = CancellationToken::new();
    let task = Onboarding::new(
        settings,
        std::sync::Arc::new(margo_agent::clock::SystemClock),
    )
    .run(shutdown.clone());
    tokio::pin!(task);
    tokio::select! {
        r = &mut task => Ok(Some(r?)),
        r = wait_for_signal() => {
            r?;
            shutdown.cancel();
            match task.await {
                Ok(outcome) => Ok(Some(outcome)),
                Err(onboard::OnboardError::Cancelled) => {
                    tracing::info!("signal received; onboarding stopped (run again to resume)");
                    Ok(None)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}

#[cfg(feature = "onboarding")]
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").context("writing to stdout")?;
    out.flush().context("flushing stdout")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Without `onboarding`, `run` is the only subcommand.
    #[cfg_attr(
        not(feature = "onboarding"),
        allow(clippy::infallible_destructuring_match)
    )]
    let args = match cli.command {
        Command::Run(args) => args,
        #[cfg(feature = "onboarding")]
        Command::Onboard(args) => {
            init_logging(args.verbose);
            let config = load_onboard_config(&args).context("onboarding configuration")?;
            match onboard_until_signal(&config).await.context("onboarding")? {
                None => {}
                Some(OnboardOutcome::AlreadyOnboarded(client_id)) => {
                    say(&format!("already onboarded as {client_id}"))?
                }
                Some(OnboardOutcome::Onboarded { client_id, name }) => say(&format!(
                    "onboarded as {client_id} (name {name}); identity bundle in {}",
                    config.identity_dir.display()
                ))?,
            }
            return Ok(());
        }
    };
    init_logging(args.verbose);
    let config =
        load_config(&args).with_context(|| format!("configuration {}", args.config.display()))?;
    #[cfg(feature = "onboarding")]
    if config.onboarding.is_some() && !onboard::bundle_present(&config.identity_dir) {
        tracing::info!(identity_dir = %config.identity_dir.display(), "no identity bundle yet; onboarding first");
        if onboard_until_signal(&config)
            .await
            .context("onboarding")?
            .is_none()
        {
            return Ok(());
        }
    }
    let agent = Agent::new(config, AgentOptions::default()).context("starting the agent")?;
    let client_id = agent.wire_id().clone();
    let shutdown = CancellationToken::new();
    let mut task = tokio::spawn(agent.run(shutdown.clone()));
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "margo-agent ready client={client_id}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    let joined = tokio::select! {
        r = wait_for_signal() => {
            r?;
            tracing::info!(client_id = %client_id, "signal received; shutting down");
            shutdown.cancel();
            task.await
        }
        r = &mut task => r,
    };
    match joined {
        Ok(result) => result.context("agent")?,
        Err(e) => anyhow::bail!("agent task failed: {e}"),
    }
    Ok(())
}
