//! The end-to-end ingest demo: a server and a client that compose every steadfast crate.
//!
//! - `ingest server` runs a tus endpoint (`steadfast::chunk_upload`), a job queue that
//!   verifies each finished upload against the checksum its client declared
//!   (`steadfast::jobqueue`, in SQLite or PostgreSQL), a WebSocket of progress events, and
//!   `/healthz` and `/readyz`, all under one graceful shutdown (`steadfast::shutdown`).
//! - `ingest client DIR` uploads every file of DIR with bounded concurrency
//!   (`steadfast::batch`) through a loopback proxy that cuts connections and answers 503
//!   (`steadfast-testkit`), so uploads really resume; it follows the server over a
//!   reconnecting WebSocket (`steadfast::ws_resilient`) and retries its own calls with
//!   `steadfast::backoff`.
//!
//! `cargo xtask demo` builds this example and runs both, restarting the server once
//! midway. Run by hand:
//!
//! ```sh
//! cargo run --example ingest -- server --state /tmp/ingest/server --addr-file /tmp/ingest/addr
//! cargo run --example ingest -- client . --server "$(cat /tmp/ingest/addr)" --state /tmp/ingest/client
//! ```

mod client;
mod server;
mod wire;

use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use steadfast::batch::CancellationToken;
use tracing_subscriber::EnvFilter;

use crate::client::ClientOptions;
use crate::server::{BoxError, ServerOptions};

#[derive(Debug, Parser)]
#[command(about = "The steadfast ingest demo: a tus server with verification jobs, and a client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the ingest server until SIGTERM or Ctrl-C.
    Server(ServerArgs),
    /// Uploads a directory to a running server and reports.
    Client(ClientArgs),
}

#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// State directory: uploads, results and the SQLite queue.
    #[arg(long)]
    state: PathBuf,
    /// Where the job queue lives: `sqlite` (in the state directory) or a
    /// `postgres://` URL.
    #[arg(long, default_value = "sqlite")]
    queue: String,
    /// Share of verification attempts that fail with a transient error (retried).
    #[arg(long, default_value_t = 0.2)]
    transient_rate: f64,
    /// Files whose relative path matches this glob fail verification for good.
    #[arg(long, default_value = "*.lock")]
    dead_pattern: String,
    /// Verification jobs run side by side.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Write the address the server listens on to this file once it is ready.
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Directory to upload.
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// The server's address (host:port).
    #[arg(long)]
    server: SocketAddr,
    /// State directory: upload URLs and files already done, for resuming.
    #[arg(long)]
    state: PathBuf,
    /// Files uploaded side by side.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Chance per 100 ms that the proxy cuts the live connections.
    #[arg(long, default_value_t = 0.1)]
    cut_rate: f64,
    /// Chance per 100 ms that the proxy answers new connections with 503.
    #[arg(long, default_value_t = 0.05)]
    status_rate: f64,
    /// Largest PATCH in bytes.
    #[arg(long, default_value_t = 256 * 1024)]
    chunk_size: u64,
    /// Seed of the proxy's fault schedule.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Seconds to wait for the verifications after the last upload.
    #[arg(long, default_value_t = 120)]
    verify_timeout: u64,
    /// Draw no progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Create this file once half the bytes are uploaded (the demo driver restarts the
    /// server then).
    #[arg(long)]
    midway_file: Option<PathBuf>,
    /// Write the one-line summary to this file instead of printing it.
    #[arg(long)]
    summary_file: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ingest: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Server(args) => {
            init_tracing("info,sqlx=warn");
            runtime.block_on(serve(args))
        }
        Command::Client(args) => {
            init_tracing("warn");
            runtime.block_on(upload(args))
        }
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ingest: {error}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: ServerArgs) -> Result<ExitCode, BoxError> {
    let postgres = match args.queue.as_str() {
        "sqlite" => None,
        url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Some(url.to_owned())
        }
        other => {
            return Err(
                format!("--queue must be `sqlite` or a postgres:// URL, got {other:?}").into(),
            );
        }
    };
    let running = server::start(ServerOptions {
        listen: args.listen,
        state: args.state,
        postgres,
        transient_rate: args.transient_rate,
        dead_pattern: args.dead_pattern,
        workers: args.workers,
        signals: true,
    })
    .await?;

    // A driver waits for this file; without it nobody can reach the server, so stop.
    let announced = match &args.addr_file {
        Some(path) => write_atomically(path, &running.addr.to_string()),
        None => Ok(()),
    };
    if let Err(error) = &announced {
        tracing::error!(%error, "cannot write the address file; shutting down");
        running.handle.trigger();
    }
    let report = running.finished.await?;
    announced?;
    report.exit()
}

fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, path)
}

async fn upload(args: ClientArgs) -> Result<ExitCode, BoxError> {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!(
                "interrupted: stopping the uploads; rerun with the same state to resume"
            );
            on_signal.cancel();
        }
    });

    let midway = args.midway_file.map(|path| -> Box<dyn FnOnce() + Send> {
        Box::new(move || {
            if let Err(error) = std::fs::write(&path, b"midway") {
                tracing::warn!(%error, path = %path.display(), "cannot write the midway file");
            }
        })
    });
    let report = client::run(
        ClientOptions {
            dir: args.dir,
            server: args.server,
            state: args.state,
            concurrency: args.concurrency,
            cut_rate: args.cut_rate,
            status_rate: args.status_rate,
            chunk_size: args.chunk_size,
            seed: args.seed,
            progress: !args.no_progress,
            verify_timeout: Duration::from_secs(args.verify_timeout),
        },
        cancel,
        midway,
    )
    .await?;

    for line in report.lines() {
        println!("{line}");
    }
    let summary = report.summary();
    match &args.summary_file {
        Some(path) => std::fs::write(path, format!("{summary}\n"))?,
        None => println!("{summary}"),
    }
    Ok(if report.interrupted {
        ExitCode::from(130)
    } else if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
