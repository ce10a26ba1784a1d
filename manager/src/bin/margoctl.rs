//! `margoctl`: operate a running margo-manager through its admin socket.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use margo_manager::admin::{parse_documents, AdminClient};
use margo_manager::bundle::write_bundle;
use margo_manager::status_table;

#[derive(Parser)]
#[command(name = "margoctl", version, about = "Operate a running margo-manager")]
struct Cli {
    /// The manager's admin socket.
    #[arg(long, global = true, env = "MARGO_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
    /// The manager's data directory (socket = DIR/admin.sock).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// More logging.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage clients (devices).
    Clients {
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// Assign ApplicationDeployment YAML files to a client (add or update).
    Deploy {
        /// Client id or name.
        client: String,
        /// YAML files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Remove a deployment from a client.
    Undeploy {
        /// Client id or name.
        client: String,
        /// Deployment id.
        deployment_id: String,
    },
    /// Show the fleet (or one client).
    Status {
        /// Client id or name.
        client: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ClientsCommand {
    /// Provision a client and write its identity bundle.
    Add {
        /// Unique name.
        name: String,
        /// Directory for the bundle (must not hold one already).
        #[arg(long)]
        out: PathBuf,
        /// Broker URL for the device (default: the manager's public_broker_url).
        #[arg(long)]
        broker_url: Option<String>,
    },
    /// List clients.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client.
    Revoke {
        /// Client id or name.
        client: String,
    },
}

fn socket_path(cli: &Cli) -> PathBuf {
    match (&cli.socket, &cli.data_dir) {
        (Some(socket), _) => socket.clone(),
        (None, Some(dir)) => dir.join("admin.sock"),
        (None, None) => std::env::var_os("MARGO_MANAGER_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("margo-manager-data"))
            .join("admin.sock"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default = if cli.verbose > 0 { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let admin = AdminClient::new(socket_path(&cli));
    match cli.command {
        Command::Clients { command } => match command {
            ClientsCommand::Add {
                name,
                out,
                broker_url,
            } => {
                if out.join(margo_schemas::identity::INDEX_FILE).exists() {
                    bail!(
                        "{} already holds an identity bundle; refusing to overwrite it",
                        out.display()
                    );
                }
                let bundle = admin
                    .add_client(&name, broker_url.as_deref())
                    .await
                    .context("provisioning the client")?;
                write_bundle(&out, &bundle).with_context(|| {
                    format!(
                        "writing the bundle of client {} to {}",
                        bundle.client_id,
                        out.display()
                    )
                })?;
                println!(
                    "client {} ({}) provisioned; bundle in {}",
                    bundle.client_id,
                    bundle.name,
                    out.display()
                );
            }
            ClientsCommand::List { json } => {
                let clients = admin.list_clients().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&clients)?);
                } else {
                    println!("{:<28} {:<24} REVOKED", "CLIENT", "NAME");
                    for c in clients {
                        println!("{:<28} {:<24} {}", c.client_id, c.name, c.revoked);
                    }
                }
            }
            ClientsCommand::Revoke { client } => {
                let c = admin.revoke(&client).await?;
                println!("client {} ({}) revoked", c.client_id, c.name);
            }
        },
        Command::Deploy { client, files } => {
            let mut docs = Vec::with_capacity(files.len());
            for file in &files {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("reading {}", file.display()))?;
                if let Err(e) = parse_documents(vec![text.clone()]) {
                    let detail = e.strip_prefix("document 0: ").unwrap_or(&e).to_string();
                    bail!("{}: {detail}", file.display());
                }
                docs.push(text);
            }
            if let Err(e) = parse_documents(docs.clone()) {
                bail!("{e} (documents are numbered from 0 in the order of the files given)");
            }
            let r = admin.deploy(&client, docs).await?;
            if r.changed.is_empty() {
                println!(
                    "client {}: nothing changed; manifest version {}",
                    r.client_id, r.manifest_version
                );
            } else {
                println!(
                    "client {}: manifest version {} ({} changed)",
                    r.client_id,
                    r.manifest_version,
                    r.changed.len()
                );
            }
        }
        Command::Undeploy {
            client,
            deployment_id,
        } => {
            let r = admin.undeploy(&client, &deployment_id).await?;
            println!(
                "client {}: removed {deployment_id}; manifest version {}",
                r.client_id, r.manifest_version
            );
        }
        Command::Status { client, json } => {
            let status = admin.status(client.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status_table::render(&status, status_table::now_ms()));
            }
        }
    }
    Ok(())
}
