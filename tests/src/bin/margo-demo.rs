//! `margo-demo`: a manager and N simulated agents in one process, the
//! examples deployed, the fleet converging (what `margo-manager demo` did;
//! it lives here so the manager does not depend on the agent, see
//! docs/decisions/0012-demo-outside-the-manager.md).
//!
//!     margo-demo [--devices N] [--data-dir D [--keep]] [--delay 300ms] [--timeout 120s] [--exit-when-converged] [-v]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use margo_tests::demo::{run_demo, DemoOptions};
use tokio_util::sync::CancellationToken;

/// Run a manager and N simulated devices in this process, deploy the
/// examples, and show the fleet converging (loopback only).
#[derive(Parser)]
#[command(name = "margo-demo", version)]
struct Cli {
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Number of simulated devices.
    #[arg(long, default_value_t = 5)]
    devices: usize,
    /// Demo directory (manager data, device bundles and stores); kept on exit.
    /// Default: a fresh temporary directory, removed on exit.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep the temporary demo directory on exit.
    #[arg(long)]
    keep: bool,
    /// Simulated time of one component action (e.g. 300ms, 2s).
    #[arg(long, default_value = "300ms", value_parser = humantime::parse_duration)]
    delay: Duration,
    /// Fail if the fleet has not converged within this.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Exit 0 as soon as every device converged instead of serving until Ctrl-C.
    #[arg(long)]
    exit_when_converged: bool,
}

fn init_tracing(verbose: u8) {
    // The demo prints its own progress on stdout; its logs stay at warn unless
    // asked, without rumqttd's errors about connections closing (the broker's
    // probe at start, every client at exit).
    let default = match verbose {
        0 => "warn,rumqttd=off",
        1 => "info,rumqttd=warn",
        2 => "debug,rumqttd=info",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let opts = DemoOptions {
        devices: cli.devices,
        data_dir: cli.data_dir,
        keep: cli.keep,
        delay: cli.delay,
        timeout: cli.timeout,
        exit_when_converged: cli.exit_when_converged,
        ..DemoOptions::default()
    };
    let token = CancellationToken::new();
    let signals = tokio::spawn(margo_manager::shutdown_on_signal(token.clone()));
    let result = run_demo(opts, token.clone()).await;
    token.cancel();
    signals.await.context("signal task")??;
    result.context("demo failed")?;
    Ok(())
}
