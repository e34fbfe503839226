//! `strait-control`: the control plane's command line: `serve`, and the management API's client
//! commands (`apply`, `diff`, `get`, `delete`).

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use strait_control::store::{Directory, Embedded, MeshSource};
use xds_proto::control as pb;
use xds_proto::control::mesh_service_client::MeshServiceClient;

#[derive(Parser)]
#[command(name = "strait-control", version, about = "Strait's control plane: mesh config served to proxies over xDS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve xDS (ADS) and the management API for a config directory, or for the embedded example.
    Serve {
        /// A directory of mesh YAML files, watched for changes (default: the embedded example).
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// Where proxies connect for xDS.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_address: SocketAddr,
        /// Where the management API (and this CLI) connects.
        #[arg(long, default_value = "127.0.0.1:15011")]
        api_address: SocketAddr,
        /// Log level (error, warn, info, debug, trace).
        #[arg(short = 'l', long, default_value = "info")]
        log_level: String,
        /// Serve the certificate authority, for the workloads this file of bootstrap tokens
        /// (`<token> <namespace> <service-account>` lines) names.
        #[arg(long)]
        ca_tokens: Option<PathBuf>,
        /// Where proxies ask for certificates.
        #[arg(long, default_value = "127.0.0.1:15012")]
        ca_address: SocketAddr,
        /// The CA's root certificate and key (generated there on first start).
        #[arg(long, default_value = "strait-ca")]
        ca_dir: PathBuf,
        /// The trust domain of the SPIFFE IDs the CA signs.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// The lifetime of the certificates served over SDS (to ADS clients with a token).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        sds_certificate_lifetime: std::time::Duration,
    },
    /// Replace the CA's root; the previous root stays in the trust bundle for the overlap.
    RotateRoot {
        #[arg(long, default_value = "strait-ca")]
        ca_dir: PathBuf,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// How long the previous root stays trusted (at least the workload certificates' lifetime).
        #[arg(long, default_value = "48h", value_parser = humantime::parse_duration)]
        overlap: std::time::Duration,
    },
    /// Create or replace the objects in a mesh YAML file through the management API.
    Apply {
        #[arg(short = 'f', long)]
        file: PathBuf,
        /// Validate and show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "http://127.0.0.1:15011")]
        server: String,
    },
    /// What applying a file would change (a dry run).
    Diff {
        #[arg(short = 'f', long)]
        file: PathBuf,
        #[arg(long, default_value = "http://127.0.0.1:15011")]
        server: String,
    },
    /// Print the mesh being served, as YAML, with its version.
    Get {
        #[arg(long, default_value = "http://127.0.0.1:15011")]
        server: String,
    },
    /// Delete objects applied through the API: KIND NAME (kind: listener, service, route).
    Delete {
        kind: String,
        names: Vec<String>,
        #[arg(long)]
        dry_run: bool,
        #[arg(long, default_value = "http://127.0.0.1:15011")]
        server: String,
    },
    /// Check a config directory and print every problem.
    Validate { config_dir: PathBuf },
    /// Print the embedded example config.
    Example,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    let result = match cli.command {
        Command::Serve {
            config_dir,
            xds_address,
            api_address,
            log_level,
            ca_tokens,
            ca_address,
            ca_dir,
            trust_domain,
            sds_certificate_lifetime,
        } => {
            tracing_subscriber::fmt()
                // The level is for Strait's own logs; the HTTP/2 and gRPC libraries stay at info.
                .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                    "{log_level},h2=info,hyper=info,tower=info"
                )))
                .with_writer(std::io::stderr)
                .init();
            let source: Arc<dyn MeshSource> = match config_dir {
                Some(dir) => Arc::new(Directory(dir)),
                None => Arc::new(Embedded),
            };
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            let mut addresses = strait_control::Addresses { xds: xds_address, api: Some(api_address), sds: None };
            runtime.block_on(async move {
                let ca = match ca_tokens {
                    None => None,
                    Some(tokens) => {
                        let tokens =
                            Arc::new(strait_control::ca::tokens::Tokens::load(&tokens).map_err(anyhow::Error::msg)?);
                        let ca =
                            Arc::new(strait_control::ca::CertificateAuthority::load_or_create(&ca_dir, &trust_domain)?);
                        addresses.sds = Some(strait_control::ca::sds::SdsIssuer {
                            ca: ca.clone(),
                            tokens: tokens.clone(),
                            lifetime: sds_certificate_lifetime,
                        });
                        let listener = tokio::net::TcpListener::bind(ca_address)
                            .await
                            .map_err(|e| anyhow::anyhow!("bind {ca_address}: {e}"))?;
                        let settings = strait_control::CaSettings { listener, ca, tokens };
                        Some(tokio::spawn(strait_control::serve_ca(settings, std::future::pending())))
                    }
                };
                let served = strait_control::serve_all(source, addresses, shutdown).await;
                if let Some(ca) = ca {
                    ca.abort();
                }
                served
            })
        }
        Command::RotateRoot { ca_dir, trust_domain, overlap } => {
            strait_control::ca::CertificateAuthority::rotate_root(&ca_dir, &trust_domain, overlap)
                .map(|()| {
                    println!(
                        "{}: new root; the previous one stays trusted for {}",
                        ca_dir.display(),
                        humantime::format_duration(overlap)
                    )
                })
                .map_err(anyhow::Error::from)
        }
        Command::Apply { file, dry_run, server } => runtime.block_on(apply(&file, dry_run, &server)),
        Command::Diff { file, server } => runtime.block_on(apply(&file, true, &server)),
        Command::Get { server } => runtime.block_on(get(&server)),
        Command::Delete { kind, names, dry_run, server } => runtime.block_on(delete(kind, names, dry_run, &server)),
        Command::Validate { config_dir } => match strait_control::load(&Directory(config_dir.clone())) {
            Ok(resources) => {
                println!(
                    "{}: ok (version {}, {} listeners, {} clusters)",
                    config_dir.display(),
                    resources.version,
                    resources.count(xds_proto::type_url::LISTENER),
                    resources.count(xds_proto::type_url::CLUSTER)
                );
                Ok(())
            }
            Err(e) => Err(anyhow::anyhow!("{}:\n{e}", config_dir.display())),
        },
        Command::Example => {
            print!("{}", strait_control::store::EMBEDDED_DEFAULT);
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client(server: &str) -> anyhow::Result<MeshServiceClient<tonic::transport::Channel>> {
    MeshServiceClient::connect(server.to_string())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the management API at {server}: {e}"))
}

fn rpc_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", status.message())
}

fn print_changes(response: pb::ChangeResponse, dry_run: bool) {
    let verb = if dry_run { "would change" } else { "changed" };
    if response.changes.is_empty() {
        println!("nothing to change (version {})", response.version);
    }
    for change in &response.changes {
        println!("{verb}: {change}");
    }
    if !response.changes.is_empty() {
        println!("version {}{}", response.version, if dry_run { " (dry run: nothing applied)" } else { "" });
    }
}

async fn apply(file: &std::path::Path, dry_run: bool, server: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mesh = strait_control::mesh::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let objects = strait_control::api::to_proto(&mesh);
    let response = client(server)
        .await?
        .apply(pb::ApplyRequest { objects: Some(objects), dry_run })
        .await
        .map_err(rpc_error)?
        .into_inner();
    print_changes(response, dry_run);
    Ok(())
}

async fn get(server: &str) -> anyhow::Result<()> {
    let state = client(server).await?.list(pb::ListRequest {}).await.map_err(rpc_error)?.into_inner();
    let mesh = strait_control::api::from_proto(state.mesh.unwrap_or_default()).map_err(anyhow::Error::msg)?;
    println!("# version {}", state.version);
    print!("{}", yaml_serde::to_string(&mesh)?);
    Ok(())
}

async fn delete(kind: String, names: Vec<String>, dry_run: bool, server: &str) -> anyhow::Result<()> {
    let objects = names.into_iter().map(|name| pb::ObjectRef { kind: kind.clone(), name }).collect();
    let response =
        client(server).await?.delete(pb::DeleteRequest { objects, dry_run }).await.map_err(rpc_error)?.into_inner();
    print_changes(response, dry_run);
    Ok(())
}
