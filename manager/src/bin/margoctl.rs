//! `margoctl`: operate a running margo-manager through its admin socket.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use margo_manager::admin::{parse_documents, AdminClient, RejectManyRequest};
use margo_manager::identity_bundle::write_bundle;
use margo_manager::status_table;
use margo_schemas::schedule::{Schedule, ValidSchedule};

#[derive(Parser)]
#[command(name = "margoctl", version, about = "Operate a running margo-manager")]
struct Cli {
    /// The manager's admin socket.
    #[arg(long, global = true, env = "MARGO_ADMIN_SOCKET")]
    socket: Option<PathBuf>,
    /// The manager's data directory (socket = DIR/admin.sock).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// How long each call to the manager may take (connect and answer),
    /// e.g. 30s. Bulk provisioning adds 10 ms per client.
    #[arg(long, global = true, env = "MARGO_ADMIN_TIMEOUT", default_value = "10s",
          value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
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
    /// Assign the same YAML files to many clients at once (one transaction).
    DeployMany {
        /// Every live client whose name starts with this.
        #[arg(long, required_unless_present = "client")]
        prefix: Option<String>,
        /// A client id or name (repeatable).
        #[arg(long)]
        client: Vec<String>,
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
    /// Devices onboarding over HTTPS: list, approve, reject.
    Onboarding {
        #[command(subcommand)]
        command: OnboardingCommand,
    },
    /// Enrollment tokens: devices presenting one are approved at once.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// The fleet CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
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
    /// Provision many clients in one call ({prefix}{first}..) and write
    /// their identity bundles to OUT/<name>/.
    AddBulk {
        /// How many.
        #[arg(long)]
        count: u32,
        /// Name prefix, e.g. `sim-`.
        #[arg(long)]
        prefix: String,
        /// Number of the first name.
        #[arg(long, default_value_t = 1)]
        first: u32,
        /// Directory for the bundles (one subdirectory per client).
        #[arg(long)]
        out: PathBuf,
        /// Broker URL for the devices (default: the manager's public_broker_url).
        #[arg(long)]
        broker_url: Option<String>,
    },
    /// List clients.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one client: identity, presence, versions, capabilities, deployments.
    Show {
        /// Client id or name.
        client: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a client: refused at the gateway and by ingest, retained state cleared.
    Revoke {
        /// Client id or name.
        client: String,
    },
    /// Set (--file) or clear (--clear) a client's remote schedule: stored
    /// with the next config version and published, signed, on its R/config.
    Schedule {
        /// Client id or name.
        client: String,
        /// Schedule file (TOML; see docs/schedule.md and config/schedules/).
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        file: Option<PathBuf>,
        /// Remove the remote schedule: the device falls back to its local one.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Subcommand)]
enum OnboardingCommand {
    /// List onboarding requests, most recently seen first.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request: the device becomes a client.
    Approve {
        /// Request id (fingerprint, with or without sha256:, or a unique prefix of 8+).
        id: String,
        /// Fleet name (default: the name the device asked for, else device-<id>).
        #[arg(long)]
        name: Option<String>,
    },
    /// Reject a request, or every pending request the filters select: the
    /// devices are refused from now on.
    Reject {
        /// Request id (or a unique prefix of 8+). Without it, filters select.
        id: Option<String>,
        /// Every pending request (needed when no other filter is given).
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Only requests first seen at least this long ago, e.g. 2h, 3days.
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "id")]
        older_than: Option<std::time::Duration>,
        /// Only requests from this address or network (192.0.2.0/24, 2001:db8::/64).
        #[arg(long, value_name = "ADDR", conflicts_with = "id")]
        from: Option<String>,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create a token and print it (once: only its hash is stored).
    Create {
        /// How many devices it may approve.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Lifetime, e.g. 24h, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: std::time::Duration,
        /// A note shown by `tokens list`.
        #[arg(long)]
        note: Option<String>,
    },
    /// List tokens (id, uses left, expiry, note; never the token).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id (from `tokens list`).
        id: String,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA fingerprint devices pin (sha256:<hex> of its DER).
    Fingerprint,
}

/// `2025-01-31T12:00:00Z` for milliseconds since the epoch.
fn when(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

fn or_dash(v: Option<&str>) -> &str {
    v.filter(|s| !s.is_empty()).unwrap_or("-")
}

fn print_client(d: &margo_manager::admin::ClientDetails) {
    let c = &d.client;
    let s = &d.status;
    println!("client       {}", c.client_id);
    println!("name         {}", c.name);
    println!("revoked      {}", c.revoked);
    println!("created      {}", when(c.created_at));
    println!("certificate  {}", d.cert_fingerprint);
    if let Some(not_after) = d.cert_not_after.and_then(|t| u64::try_from(t).ok()) {
        println!("cert expires {}", when(not_after.saturating_mul(1000)));
    }
    println!("presence     {}", s.presence);
    println!("availability {}", s.availability);
    if let Some(cloned) = &s.cloned {
        println!("warning      {}", cloned.describe());
    }
    println!(
        "schedule     {}",
        print_in_force(s.schedule_in_force.as_ref())
    );
    println!("remote sched {}", print_remote(d.remote_config.as_ref()));
    println!(
        "last seen    {}",
        s.last_seen.map(when).unwrap_or_else(|| "-".into())
    );
    println!(
        "versions     desired {}, adopted {}, agent {}",
        s.desired_version,
        s.adopted_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into()),
        or_dash(s.agent_version.as_deref())
    );
    println!("acked seq    {}", s.acked_seq);
    if d.capabilities.is_empty() {
        println!("capabilities -");
    }
    for cap in &d.capabilities {
        // The normalised form of the document as sent (any published shape).
        let Some(p) = &cap.normalized else {
            println!(
                "capabilities {}: (stored document does not read: {}) (seq {}, {})",
                cap.device_id,
                cap.manifest,
                cap.seq,
                when(cap.received_at)
            );
            continue;
        };
        let cpus: Vec<String> = p
            .cpus
            .iter()
            .map(|c| format!("{}x{}", c.cores, c.architecture.as_deref().unwrap_or("?")))
            .collect();
        let quantity = |q: Option<u64>| {
            q.map(margo_schemas::capabilities::format_binary_quantity)
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "capabilities {}: {} {} serial {}; cpu {}; memory {}; storage {}; runtimes [{}]; types [{}] ({} shape, seq {}, {})",
            cap.device_id,
            p.vendor,
            p.model_number,
            p.serial_number,
            if cpus.is_empty() { "-".to_string() } else { cpus.join(",") },
            quantity(p.memory_bytes),
            quantity(p.storage_bytes),
            wire_names(&p.supported_runtimes),
            wire_names(&p.supported_deployment_types),
            p.shape,
            cap.seq,
            when(cap.received_at)
        );
    }
    if s.deployments.is_empty() {
        println!("deployments  -");
    }
    for dep in &s.deployments {
        println!(
            "deployment   {} {} state {} (reported for v{})",
            dep.deployment_id,
            or_dash(dep.name.as_deref()),
            dep.state
                .map(|st| format!("{st:?}").to_lowercase())
                .unwrap_or_else(|| "-".into()),
            dep.reported_manifest_version
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
}

/// Reads and validates a schedule file; errors name the file and the field.
fn read_schedule(file: &std::path::Path) -> anyhow::Result<Schedule> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the schedule file {}", file.display()))?;
    let schedule: Schedule =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Err(e) = ValidSchedule::try_from(&schedule) {
        bail!("{}: {e}", file.display());
    }
    Ok(schedule)
}

/// One line for a schedule (`Europe/Berlin; polling 08:00-18:00 every 15m; ...`).
fn schedule_line(schedule: &Schedule) -> String {
    match ValidSchedule::try_from(schedule) {
        Ok(valid) => valid.to_string(),
        Err(e) => format!("(unreadable: {e})"),
    }
}

fn print_remote(remote: Option<&margo_manager::store::RemoteConfig>) -> String {
    match remote {
        None => "-".into(),
        Some(r) => match &r.schedule {
            Some(s) => format!(
                "v{} ({}): {}",
                r.version,
                when(r.updated_at),
                schedule_line(s)
            ),
            None => format!(
                "v{} ({}): cleared, the device uses its local schedule",
                r.version,
                when(r.updated_at)
            ),
        },
    }
}

fn print_in_force(in_force: Option<&margo_schemas::messages::ScheduleInForce>) -> String {
    match in_force {
        None => "- (none reported)".into(),
        Some(f) => {
            let source = match f.source {
                margo_schemas::messages::ScheduleSource::Local => "local".to_string(),
                margo_schemas::messages::ScheduleSource::Remote => {
                    format!("remote v{}", f.config_version)
                }
            };
            format!("{source}: {}", schedule_line(&f.schedule))
        }
    }
}

/// Reads and checks YAML files; errors name the file.
fn read_documents(files: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let mut docs = Vec::with_capacity(files.len());
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        if let Err(e) = parse_documents(vec![text.clone()]) {
            let detail = e.strip_prefix("document 0: ").unwrap_or(&e).to_string();
            bail!("{}: {detail}", file.display());
        }
        docs.push(text);
    }
    if let Err(e) = parse_documents(docs.clone()) {
        bail!("{e} (documents are numbered from 0 in the order of the files given)");
    }
    Ok(docs)
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
    let admin = AdminClient::new(socket_path(&cli)).with_timeout(cli.timeout);
    let data_dir = cli.data_dir.clone();
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
            ClientsCommand::AddBulk {
                count,
                prefix,
                first,
                out,
                broker_url,
            } => {
                let mut done = 0u32;
                while done < count {
                    let chunk = (count - done).min(margo_manager::admin::MAX_BULK_CLIENTS);
                    let bulk = admin
                        .add_clients(&prefix, chunk, first + done, broker_url.as_deref())
                        .await
                        .context("provisioning the clients")?;
                    for bundle in bulk.bundles() {
                        let dir = out.join(&bundle.name);
                        write_bundle(&dir, &bundle).with_context(|| {
                            format!(
                                "writing the bundle of client {} to {}",
                                bundle.client_id,
                                dir.display()
                            )
                        })?;
                    }
                    done += chunk;
                    eprintln!("provisioned {done}/{count}");
                }
                println!(
                    "{count} clients {prefix}{first}..{prefix}{} provisioned; bundles in {}/<name>",
                    first + count - 1,
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
            ClientsCommand::Show { client, json } => {
                let details = admin.client(&client).await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&details)?);
                } else {
                    print_client(&details);
                }
            }
            ClientsCommand::Schedule {
                client,
                file,
                clear,
            } => {
                let view = match (file, clear) {
                    (Some(file), false) => {
                        let schedule = read_schedule(&file)?;
                        admin.set_schedule(&client, &schedule).await?
                    }
                    (None, true) => admin.clear_schedule(&client).await?,
                    _ => bail!("give either --file FILE or --clear"),
                };
                println!(
                    "client {}: remote schedule {}",
                    view.client_id,
                    print_remote(view.remote.as_ref())
                );
            }
            ClientsCommand::Revoke { client } => {
                let c = admin.revoke(&client).await?;
                if c.already_revoked {
                    println!("client {} ({}) was already revoked", c.client_id, c.name);
                } else {
                    println!(
                        "client {} ({}) revoked: its messages are refused, its retained topics cleared",
                        c.client_id, c.name
                    );
                }
                match c.connections_closed {
                    Some(n) => println!(
                        "gateway: {n} live connection(s) closed; new connections get CONNACK not authorized"
                    ),
                    None => match c.revocation_list_entries {
                        Some(n) => println!(
                            "external broker: the revocation list pki/revoked.crl now names {n} certificate(s); reload the broker so new connections are refused (Mosquitto: kill -HUP), and cut the live connection there (docs/external-broker.md)"
                        ),
                        None => println!(
                            "external broker: the revocation list could NOT be rewritten (see the manager's log); the broker keeps accepting this certificate"
                        ),
                    },
                }
            }
        },
        Command::Onboarding { command } => match command {
            OnboardingCommand::List { json } => {
                let requests = admin.onboarding_requests().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&requests)?);
                } else {
                    println!(
                        "{:<64}  {:<8}  {:<20}  {:<12}  {:<12}  {:<12}  {:<22}  {:<20}  {:<20}  {:<20}  CLIENT",
                        "REQUEST", "STATE", "NAME", "VENDOR", "MODEL", "SERIAL", "SOURCE", "FIRST SEEN", "LAST SEEN", "EXPIRES"
                    );
                    for r in requests {
                        println!(
                            "{:<64}  {:<8}  {:<20}  {:<12}  {:<12}  {:<12}  {:<22}  {:<20}  {:<20}  {:<20}  {}",
                            r.request_id,
                            wire_name(&r.state),
                            or_dash(r.claims.name.as_deref()),
                            or_dash(r.claims.vendor.as_deref()),
                            or_dash(r.claims.model_number.as_deref()),
                            or_dash(r.claims.serial_number.as_deref()),
                            r.source,
                            when(r.first_seen),
                            when(r.last_seen),
                            r.expires_at.map(when).unwrap_or_else(|| "-".into()),
                            r.client_id.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
            OnboardingCommand::Approve { id, name } => {
                let r = admin.approve(&id, name.as_deref()).await?;
                println!(
                    "request {} approved ({}): client {} ({})",
                    r.request.request_id, r.decided_by, r.client_id, r.name
                );
                if r.http_only {
                    println!(
                        "note: the device's key is not ECDSA P-256, so this client can use the HTTP API only (MQTT needs P-256)"
                    );
                }
            }
            OnboardingCommand::Reject { id: Some(id), .. } => {
                let r = admin.reject(&id).await?;
                println!("request {} rejected", r.request_id);
            }
            OnboardingCommand::Reject {
                id: None,
                all,
                older_than,
                from,
            } => {
                if !all && older_than.is_none() && from.is_none() {
                    anyhow::bail!(
                        "name a request id, or select requests with --all, --older-than or --from"
                    );
                }
                let filter = RejectManyRequest {
                    all,
                    older_than_secs: older_than.map(|d| d.as_secs()),
                    from,
                };
                let rejected = admin.reject_matching(&filter).await?;
                for r in &rejected {
                    println!("request {} rejected ({})", r.request_id, r.source);
                }
                println!("{} request(s) rejected", rejected.len());
            }
        },
        Command::Tokens { command } => match command {
            TokensCommand::Create {
                uses,
                expires,
                note,
            } => {
                let t = admin.create_token(uses, expires, note.as_deref()).await?;
                println!("{}", t.token);
                eprintln!(
                    "token {} created: {} use(s), expires {}; shown only now, keep it secret",
                    t.view.id,
                    t.view.uses,
                    when(t.view.expires_at)
                );
            }
            TokensCommand::List { json } => {
                let tokens = admin.tokens().await?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&tokens)?);
                } else {
                    println!("{:<14} {:>9} {:<22} NOTE", "ID", "USES LEFT", "EXPIRES");
                    for t in tokens {
                        println!(
                            "{:<14} {:>9} {:<22} {}",
                            t.id,
                            format!("{}/{}", t.uses_left, t.uses),
                            if t.expired {
                                format!("{} (expired)", when(t.expires_at))
                            } else {
                                when(t.expires_at)
                            },
                            or_dash(t.note.as_deref())
                        );
                    }
                }
            }
            TokensCommand::Revoke { id } => {
                let t = admin.revoke_token(&id).await?;
                println!(
                    "token {} revoked ({} of {} uses were left)",
                    t.id, t.uses_left, t.uses
                );
            }
        },
        Command::Ca { command } => match command {
            CaCommand::Fingerprint => {
                // With --data-dir this works while the manager is stopped.
                let local = data_dir.map(|d| d.join("pki").join("ca.crt"));
                match local.filter(|p| p.exists()) {
                    Some(path) => {
                        let pem = std::fs::read(&path)
                            .with_context(|| format!("reading {}", path.display()))?;
                        let der = margo_schemas::pki::certs_from_pem(&pem, "CA certificate")?;
                        let first = der.first().context("the CA file holds no certificate")?;
                        println!("{}", margo_schemas::pki::fingerprint(first.as_ref()));
                    }
                    None => println!("{}", admin.ca().await?.fingerprint),
                }
            }
        },
        Command::DeployMany {
            prefix,
            client,
            files,
        } => {
            let docs = read_documents(&files)?;
            let request = margo_manager::admin::DeployManyRequest {
                clients: client,
                name_prefix: prefix,
                documents: docs,
            };
            let results = admin.deploy_many(&request).await?;
            let changed = results.iter().filter(|r| !r.changed.is_empty()).count();
            println!(
                "{} clients selected, {changed} changed (the others had these documents already)",
                results.len()
            );
        }
        Command::Deploy { client, files } => {
            let docs = read_documents(&files)?;
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
                let approval = admin
                    .health()
                    .await
                    .ok()
                    .and_then(|h| h.onboarding_approval);
                if approval.as_deref() == Some("auto") {
                    println!(
                        "WARNING: onboarding approval is \"auto\": every device that asks is approved without an operator"
                    );
                }
                print!("{}", status_table::render(&status, status_table::now_ms()));
            }
        }
    }
    Ok(())
}

/// How an enum value is spelled on the wire (`arm64`, `compose`), for display.
fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "?".to_string(),
    }
}

/// Wire names of a list, comma-separated.
fn wire_names<T: serde::Serialize>(values: &[T]) -> String {
    values.iter().map(wire_name).collect::<Vec<_>>().join(",")
}
