//! `strait-control`: the control plane's command line.

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use strait_control::store::{Directory, Embedded, MeshSource};

#[derive(Parser)]
#[command(name = "strait-control", version, about = "Strait's control plane: mesh config served to proxies over xDS")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve xDS (ADS) for the config in a directory, or for the embedded example.
    Serve {
        /// A directory of mesh YAML files, watched for changes (default: the embedded example).
        #[arg(long)]
        config_dir: Option<PathBuf>,
        /// Where proxies connect for xDS.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_address: SocketAddr,
        /// Log level (error, warn, info, debug, trace).
        #[arg(short = 'l', long, default_value = "info")]
        log_level: String,
    },
    /// Check a config directory and print every problem.
    Validate { config_dir: PathBuf },
    /// Print the embedded example config.
    Example,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config_dir, xds_address, log_level } => {
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
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let shutdown = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            match runtime.block_on(strait_control::serve(source, xds_address, shutdown)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("strait-control: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Command::Validate { config_dir } => match strait_control::load(&Directory(config_dir.clone())) {
            Ok(resources) => {
                println!(
                    "{}: ok (version {}, {} listeners, {} clusters)",
                    config_dir.display(),
                    resources.version,
                    resources.count(xds_proto::type_url::LISTENER),
                    resources.count(xds_proto::type_url::CLUSTER)
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}:\n{e}", config_dir.display());
                std::process::ExitCode::FAILURE
            }
        },
        Command::Example => {
            print!("{}", strait_control::store::EMBEDDED_DEFAULT);
            std::process::ExitCode::SUCCESS
        }
    }
}
