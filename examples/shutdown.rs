//! Graceful shutdown through the umbrella crate: two workers finish the job in hand when
//! asked to stop, a teardown hook runs last, and the exit code tells a supervisor how it
//! went.
//!
//! ```sh
//! cargo run --example shutdown          # then press Ctrl-C; twice to force
//! cargo run --example shutdown -- 3     # or let it stop itself after 3 s
//! ```

use std::time::Duration;

use steadfast::shutdown::Shutdown;
use tokio::time::sleep;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(5))
        .build()?;

    for worker in ["worker-1", "worker-2"] {
        let stop = shutdown.token();
        shutdown.spawn(worker, async move {
            let mut jobs = 0_u32;
            while !stop.is_cancelled() {
                // One job: always finished once started.
                sleep(Duration::from_millis(700)).await;
                jobs += 1;
            }
            println!("{worker}: stopped after {jobs} jobs");
        });
    }
    shutdown.hook("close store", || async { println!("store closed") });

    if let Some(seconds) = std::env::args().nth(1) {
        let handle = shutdown.handle();
        let after = Duration::from_secs(seconds.parse()?);
        tokio::spawn(async move {
            sleep(after).await;
            handle.trigger();
        });
    }
    println!("running; press Ctrl-C to stop");

    let report = shutdown.run().await;
    println!("{report}");
    report.exit()
}
