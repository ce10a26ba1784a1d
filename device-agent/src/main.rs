//! `margo-agent run --config FILE [-v]`: loads the configuration (defaults →
//! file → `MARGO_AGENT_*` environment → flags), starts the agent, prints
//! `margo-agent ready client=<id>` once started, and exits cleanly on
//! SIGINT/SIGTERM.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use margo_agent::{Agent, AgentConfig, AgentOptions};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "margo-agent", version, about = "margo-mqtt device agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent.
    Run(RunArgs),
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

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "margo_agent=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not in log files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn load_config(args: &RunArgs) -> anyhow::Result<AgentConfig> {
    let mut config = AgentConfig::load(&args.config)?;
    config.apply_env()?;
    if let Some(dir) = &args.identity_dir {
        config.identity_dir = dir.clone();
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(url) = &args.broker_url {
        config.broker_url = Some(url.clone());
    }
    config.validate()?;
    Ok(config)
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Command::Run(args) = cli.command;
    init_logging(args.verbose);
    let config =
        load_config(&args).with_context(|| format!("configuration {}", args.config.display()))?;
    let agent = Agent::new(config, AgentOptions::default()).context("starting the agent")?;
    let client_id = agent.client_id().clone();
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
