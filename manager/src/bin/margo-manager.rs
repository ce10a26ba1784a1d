//! `margo-manager`: the fleet manager.
//!
//!     margo-manager serve [--config FILE] [--data-dir D] [--broker URL] [-v]
//!     margo-manager init  [--config FILE] [--data-dir D] [--hostname H]...
//!
//! The demo (a manager and simulated agents in one process) is `margo-demo`
//! in the `margo-tests` crate: the manager does not link the agent.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use margo_manager::config::{ManagerConfig, Overrides};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "margo-manager", version, about = "margo-mqtt fleet manager")]
struct Cli {
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the manager (store, PKI, broker, publisher, ingest, admin API).
    Serve(Common),
    /// Create the PKI and the store, print their paths, and exit.
    Init(Common),
    /// Moved: the demo is `margo-demo` (cargo run --release --bin margo-demo).
    Demo {
        /// Ignored; pass them to margo-demo.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<String>,
    },
}

#[derive(Args)]
struct Common {
    /// TOML configuration file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory (store, PKI, admin socket).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// External broker URL (mqtt://host:port or mqtts://host:port).
    #[arg(long)]
    broker: Option<String>,
    /// Broker URL written into identity bundles.
    #[arg(long)]
    public_broker_url: Option<String>,
    /// Admin socket path.
    #[arg(long)]
    admin_socket: Option<PathBuf>,
    /// Name or IP for the gateway certificate (repeatable; replaces broker.hostnames).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
}

impl Common {
    fn load(self) -> anyhow::Result<ManagerConfig> {
        let overrides = Overrides {
            data_dir: self.data_dir,
            broker_url: self.broker,
            public_broker_url: self.public_broker_url,
            admin_socket: self.admin_socket,
            hostnames: self.hostnames,
        };
        ManagerConfig::load(self.config.as_deref(), std::env::vars(), overrides)
            .context("loading the configuration")
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Routine rumqttd errors of the embedded broker are dropped below -vv.
    margo_broker::rumqttd_log::init_stderr(cli.verbose);
    match cli.command {
        Command::Init(common) => {
            let config = common.load()?;
            let report = margo_manager::init(&config).context("initialising")?;
            let p = &report.pki;
            println!("data_dir={}", config.data_dir.display());
            println!("store={}", report.store.display());
            println!("ca_cert={}", p.ca_cert.display());
            println!("ca_key={}", p.ca_key.display());
            println!("gateway_cert={}", p.gateway_cert.display());
            println!("gateway_key={}", p.gateway_key.display());
            println!("manager_client_cert={}", p.manager_client_cert.display());
            println!("manager_client_key={}", p.manager_client_key.display());
            println!("signing_cert={}", p.signing_cert.display());
            println!("signing_key={}", p.signing_key.display());
            println!("ca_fingerprint={}", report.ca_fingerprint);
            Ok(())
        }
        Command::Serve(common) => {
            let config = common.load()?;
            let token = CancellationToken::new();
            let signals = tokio::spawn(margo_manager::shutdown_on_signal(token.clone()));
            let result = margo_manager::run(config, token.clone()).await;
            token.cancel();
            signals.await.context("signal task")??;
            result.context("margo-manager failed")
        }
        Command::Demo { .. } => {
            // The manager no longer links the agent (docs/decisions/0012-demo-outside-the-manager.md).
            eprintln!(
                "margo-manager demo has moved to its own binary, margo-demo (same options):\n  \
                 cargo run --release --bin margo-demo -- [--devices N] [--delay D] [--exit-when-converged] ..."
            );
            std::process::exit(2)
        }
    }
}
