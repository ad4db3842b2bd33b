//! Processing a large input with `steadfast::batch`: a sliding window of 16 items, one
//! panicking item and a few failing ones that do not end the run, progress while it goes
//! on, and a report that accounts for every item.
//!
//! Run with `cargo run --example batch`.

use std::num::NonZeroUsize;
use std::time::Duration;

use steadfast::batch::{Batch, ErrorPolicy, Outcome};

/// A stand-in for real work: item 123 panics, every 97th item fails.
async fn process(id: u64) -> Result<u64, String> {
    tokio::time::sleep(Duration::from_millis(1 + id % 7)).await;
    assert!(id != 123, "corrupt record {id}");
    if id % 97 == 96 {
        return Err(format!("record {id} was rejected"));
    }
    Ok(id * 2)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the planned panic's message out of the example's output.
    std::panic::set_hook(Box::new(|_| {}));

    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(16).ok_or("zero")?)
        .item_timeout(Duration::from_secs(1))
        .policy(ErrorPolicy::SkipUpTo(50))
        .build()?;

    let mut run = batch.run_keyed(0..2_000u64, |id| format!("record-{id}"), process);
    let progress = run.progress();

    let mut checksum = 0u64;
    while let Some(result) = run.recv().await {
        match result.outcome {
            Outcome::Succeeded(value) => checksum = checksum.wrapping_add(value),
            Outcome::Skipped(failure) => {
                println!("skipped {} ({:?}): {failure:?}", result.index, result.key)
            }
            other => println!("item {} ended {:?}", result.index, other.kind()),
        }
        if result.index % 500 == 0 {
            let snapshot = progress.snapshot();
            println!(
                "progress: {} ended, {} in flight, {:.0} items/s",
                snapshot.ended(),
                snapshot.in_flight,
                snapshot.throughput()
            );
        }
    }

    let report = run.finish().await?.into_report();
    println!("checksum {checksum}");
    println!("{:?}", report.counts());
    for problem in report.problems() {
        println!(
            "  #{} {:?} {:?}: {:?}",
            problem.index, problem.key, problem.kind, problem.detail
        );
    }
    Ok(())
}
