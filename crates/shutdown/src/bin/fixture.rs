//! A tiny service for the crate's signal tests, which run it as a child process and send
//! it real signals. Usage: `steadfast-shutdown-fixture <scenario> [marker file]`.
//!
//! - `blocking`: a subsystem waits on 30 s of blocking work; drain deadline 1 s.
//! - `stubborn`: a subsystem ignores cancellation; drain deadline 60 s.
//! - `marker <path>`: a subsystem needs 500 ms to drain and a close hook writes `path`;
//!   drain deadline 60 s.
//!
//! It prints `ready` on stdout once its signal handlers are in place, and logs to stderr.

use std::time::Duration;

use steadfast_shutdown::Shutdown;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter("info")
        .init();
    let mut args = std::env::args().skip(1);
    let scenario = args.next().unwrap_or_default();
    let deadline = if scenario == "blocking" { 1 } else { 60 };
    let shutdown = match Shutdown::builder()
        .drain_deadline(Duration::from_secs(deadline))
        .build()
    {
        Ok(shutdown) => shutdown,
        Err(error) => {
            eprintln!("fixture: {error}");
            std::process::exit(2);
        }
    };

    match scenario.as_str() {
        "blocking" => {
            let handle = shutdown.handle();
            shutdown.spawn("resolver", async move {
                let sleep = || std::thread::sleep(Duration::from_secs(30));
                handle.spawn_blocking("dns lookup", sleep).await
            });
        }
        "stubborn" => shutdown.spawn("stubborn worker", std::future::pending::<()>()),
        "marker" => {
            let Some(path) = args.next() else {
                eprintln!("fixture: `marker` needs a file path");
                std::process::exit(2);
            };
            let stop = shutdown.token();
            shutdown.spawn("slow drain", async move {
                stop.cancelled().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            });
            shutdown.hook("write marker", move || async move {
                std::fs::write(path, "closed")
            });
        }
        other => {
            eprintln!("fixture: unknown scenario `{other}`");
            std::process::exit(2);
        }
    }

    println!("ready");
    shutdown.run().await.exit();
}
