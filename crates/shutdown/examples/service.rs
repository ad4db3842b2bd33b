//! A small HTTP service that shuts down gracefully. Run it, then press Ctrl-C once (or
//! `kill -TERM <pid>`) and watch the phases in the log; press Ctrl-C again to force.
//!
//! ```sh
//! cargo run -p steadfast-shutdown --example service
//! curl localhost:3000/ready        # 200, then 503 once shutting down
//! curl localhost:3000/slow         # takes 2 s, and still completes after Ctrl-C
//! curl -N localhost:3000/events    # a stream that ends when draining starts
//! ```

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use futures::stream::{self, Stream};
use steadfast_shutdown::axum::{Drain, readiness_route, serve};
use steadfast_shutdown::{CancellationToken, Shutdown};
use tokio::net::TcpListener;
use tokio::time::sleep;
use tracing::info;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();

    let shutdown = Shutdown::builder()
        .drain_delay(Duration::from_secs(1))
        .drain_deadline(Duration::from_secs(10))
        .build()?;

    // Started first, stopped last: everything after it may use it.
    shutdown.stage("db_pool", |stop: CancellationToken| async move {
        info!("pool open");
        stop.cancelled().await;
        info!("pool closed");
    });

    let stop = shutdown.token();
    shutdown.spawn("ticker", async move {
        while !stop.is_cancelled() {
            tokio::select! {
                () = stop.cancelled() => {}
                () = sleep(Duration::from_secs(5)) => info!("tick"),
            }
        }
    });

    let app = Router::new()
        .route("/ready", readiness_route(shutdown.readiness()))
        .route("/slow", get(slow))
        .route("/events", get(events));
    let listener = TcpListener::bind("127.0.0.1:3000").await?;
    info!(address = %listener.local_addr()?, "listening; press Ctrl-C to stop");
    shutdown.spawn_critical("http", serve(&shutdown, listener, app));
    shutdown.hook("flush metrics", || async { info!("metrics flushed") });

    shutdown.run().await.exit()
}

async fn slow() -> &'static str {
    sleep(Duration::from_secs(2)).await;
    "done\n"
}

async fn events(drain: Drain) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let ticks = stream::unfold(0_u64, move |n| {
        let drain = drain.clone();
        async move {
            tokio::select! {
                () = drain.cancelled() => None,
                () = sleep(Duration::from_secs(1)) => {
                    Some((Ok(Event::default().data(format!("tick {n}"))), n + 1))
                }
            }
        }
    });
    Sse::new(ticks)
}
