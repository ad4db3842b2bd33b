//! A job queue in a temporary SQLite file: one job that succeeds, one that
//! fails twice before succeeding, and one that fails for good and ends in
//! the dead letters, which are then re-driven.
//!
//! Run with `cargo run -p steadfast-jobqueue --example retries`.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use steadfast_backoff::{Backoff, Jitter};
use steadfast_jobqueue::{Event, Job, JobContext, JobError, JobState, Queue, SqliteStore};
use tokio_util::sync::CancellationToken;

/// Charges a card; `fails` says how many attempts fail first.
#[derive(Serialize, Deserialize)]
struct Charge {
    cents: u64,
    fails: u32,
}

impl Job for Charge {
    const KIND: &'static str = "charge";
}

async fn charge(job: Charge, cx: JobContext) -> Result<(), JobError> {
    if job.fails == u32::MAX {
        return Err(JobError::permanent("card declined"));
    }
    if cx.attempt() <= job.fails {
        return Err(JobError::retryable(format!(
            "gateway timeout on attempt {}",
            cx.attempt()
        )));
    }
    println!(
        "charged {} cents (job {}, attempt {})",
        job.cents,
        cx.id(),
        cx.attempt()
    );
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let queue = Queue::new(SqliteStore::open(dir.path().join("jobs.db")).await?);
    let mut events = queue.subscribe();

    queue
        .enqueue(&Charge {
            cents: 500,
            fails: 0,
        })
        .await?;
    queue
        .enqueue(&Charge {
            cents: 700,
            fails: 2,
        })
        .await?;
    let declined = queue
        .enqueue(&Charge {
            cents: 900,
            fails: u32::MAX,
        })
        .await?
        .id();

    let backoff = Backoff::exponential(Duration::from_millis(50))
        .jitter(Jitter::Full)
        .unlimited_attempts();
    let worker = queue
        .worker()
        .poll_interval(Duration::from_millis(20))
        .backoff(backoff)
        .handle(charge)
        .build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));

    let mut finished = 0;
    while finished < 3 {
        match events.recv().await? {
            Event::RetryScheduled {
                id, attempt, delay, ..
            } => {
                println!("job {id}: attempt {attempt} failed, retrying in {delay:?}");
            }
            Event::Completed { .. } => finished += 1,
            Event::DeadLettered { id, .. } => {
                println!("job {id}: dead letter");
                finished += 1;
            }
            _ => {}
        }
    }
    shutdown.cancel();
    running.await?;

    for dead in queue.dead_letters(10).await? {
        let reason = dead
            .last_error()
            .map(|e| e.message.as_str())
            .unwrap_or_default();
        println!(
            "dead letter {}: {} after {} attempt(s): {reason}",
            dead.id, dead.kind, dead.attempt
        );
    }
    println!("re-drive: {:?}", queue.redrive(&[declined]).await?);
    println!("re-drive again: {:?}", queue.redrive(&[declined]).await?);
    let state = queue.get(declined).await?.map(|j| j.state);
    assert_eq!(state, Some(JobState::Available));
    println!("counters: {:?}", queue.counters());
    Ok(())
}
