//! `strait-proxy`: run from an Envoy-format bootstrap (`-c FILE`), check one (`validate FILE`), run a
//! mesh config directory standalone (`mesh DIR`), or run the built-in demo (`demo`).

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use strait_proxy::app::{self, ConfigSource, Options};
use strait_proxy::xds::{self, BuildOptions};

#[derive(Parser)]
#[command(name = "strait-proxy", version, about = "Strait: an L4/L7 proxy driven by Envoy xDS v3 config")]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Bootstrap file in Envoy's format (YAML, or JSON for .json), as `envoy -c`.
    #[arg(short = 'c', long = "config-path")]
    config: Option<PathBuf>,
    /// Reject fields Strait does not implement instead of warning and ignoring them.
    #[arg(long)]
    strict: bool,
    /// How long SIGTERM waits for in-flight requests before exiting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_time: Duration,
    /// Reload when the config file changes (SIGHUP always reloads).
    #[arg(long)]
    watch: bool,
    /// Data-plane worker threads (default: one per core).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Log level or filter (e.g. `info`, `strait_proxy=debug`).
    #[arg(short = 'l', long = "log-level", default_value = "info")]
    log_level: String,
    /// The mesh CA's certificate service (`http://host:port`): the proxy makes a key, asks for a
    /// certificate for `--spiffe-id` and serves it as the secrets `default` and `ROOTCA`, renewed at
    /// half its lifetime.
    #[arg(long, requires_all = ["ca_token_file", "spiffe_id"])]
    ca_address: Option<String>,
    /// The file holding this workload's bootstrap token for the CA.
    #[arg(long)]
    ca_token_file: Option<PathBuf>,
    /// This workload's SPIFFE ID (`spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`).
    #[arg(long)]
    spiffe_id: Option<String>,
    /// The certificate lifetime to ask for (default: the CA's, 24h).
    #[arg(long, value_parser = humantime::parse_duration)]
    certificate_lifetime: Option<Duration>,
}

#[derive(Subcommand)]
enum Command {
    /// Check a bootstrap file and print every problem with its path in the document.
    Validate {
        file: PathBuf,
        #[arg(long)]
        strict: bool,
    },
    /// Run the proxy on a built-in config with built-in upstreams.
    Demo {
        #[arg(long)]
        concurrency: Option<usize>,
    },
    /// Run a mesh config directory (strait-control's YAML) standalone; edits apply live.
    Mesh {
        config_dir: PathBuf,
        /// The node cluster this proxy is (listeners with `nodes:` are for some clusters only).
        #[arg(long, default_value = "strait")]
        node_cluster: String,
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: std::net::SocketAddr,
        #[arg(long)]
        concurrency: Option<usize>,
    },
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Validate { file, strict }) => {
            init_logging("warn");
            let result = xds::read_bootstrap(&file).and_then(|b| {
                let _ = strait_proxy::telemetry::prometheus();
                xds::build_snapshot(&b, None, BuildOptions { strict })
            });
            match result {
                Ok(s) => {
                    println!("{}: OK ({} listeners, {} clusters)", file.display(), s.listeners.len(), s.clusters.len());
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    for e in &errors.0 {
                        eprintln!("{}: {e}", file.display());
                    }
                    eprintln!("{}: {} problem(s)", file.display(), errors.0.len());
                    ExitCode::FAILURE
                }
            }
        }
        Some(Command::Mesh { config_dir, node_cluster, admin, concurrency }) => {
            init_logging("info");
            report(strait_proxy::mesh::run(
                config_dir,
                &node_cluster,
                admin,
                concurrency.unwrap_or_else(default_concurrency),
            ))
        }
        Some(Command::Demo { concurrency }) => {
            init_logging("info");
            report(strait_proxy::demo::run(concurrency.unwrap_or_else(default_concurrency)))
        }
        None => {
            let args = cli.run;
            init_logging(&args.log_level);
            let Some(config) = args.config else {
                eprintln!("strait-proxy: no config given. Use -c FILE, or `strait-proxy demo` for the built-in demo.");
                return ExitCode::from(2);
            };
            let options = Options {
                source: ConfigSource::File(config),
                strict: args.strict,
                drain_time: args.drain_time,
                watch: args.watch,
                concurrency: args.concurrency.unwrap_or_else(default_concurrency),
                identity: args.ca_address.clone().map(|ca_address| strait_proxy::tls::agent::AgentSettings {
                    ca_address,
                    token_file: args.ca_token_file.clone().unwrap_or_default(),
                    spiffe_id: args.spiffe_id.clone().unwrap_or_default(),
                    lifetime: args.certificate_lifetime,
                }),
            };
            report(app::run(options, |started| {
                tracing::info!(admin = ?started.admin, listeners = ?started.listeners, "ready");
            }))
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strait-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
