//! Property tests: the store protocol (random claims, handler failures,
//! snoozes, heartbeats, worker crashes between claim and completion, clock
//! jumps) on the in-memory store and on SQLite, checked after every step by
//! `common::property`; and real workers with random failures and crashes.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::property::{op, run_ops};
use proptest::prelude::*;
use steadfast_jobqueue::{
    InMemoryStore, JobId, JobState, ListFilter, ManualClock, NewJob, SqliteStore, Store, Timestamp,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn property_no_loss_no_double_lease_memory(ops in proptest::collection::vec(op(), 1..120)) {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let store = Arc::new(InMemoryStore::with_clock(clock.clone()));
        runtime().block_on(run_ops(store, clock, ops))?;
    }
}

proptest! {
    // Fewer cases on SQLite: each opens a database file.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn property_no_loss_no_double_lease_sqlite(ops in proptest::collection::vec(op(), 1..120)) {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let dir = tempfile::tempdir().unwrap();
        runtime().block_on(async {
            let store = SqliteStore::builder(dir.path().join("p.db")).clock(clock.clone()).open().await.unwrap();
            run_ops(Arc::new(store), clock, ops).await
        })?;
    }
}

/// The payload of the worker-level property test.
#[derive(serde::Serialize, serde::Deserialize)]
struct Chaos {
    n: u32,
}

impl steadfast_jobqueue::Job for Chaos {
    const KIND: &'static str = "chaos";
}

/// What an attempt does, decided by the seed, the job and the attempt.
fn fate(seed: u64, id: JobId, attempt: u32) -> (u8, u64) {
    use rand::{Rng, SeedableRng};

    let mix = seed ^ (id.get() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(attempt);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(mix);
    (rng.random_range(0..10), rng.random_range(0..1500))
}

/// Real workers under paused time: handlers fail, panic or run for a
/// while at random; workers crash (their tasks dropped mid-job) or shut
/// down gracefully at random moments and new ones take over. At the end
/// every job is completed or dead, attempts never exceeded the maximum,
/// and no attempt started after its job completed.
async fn workers_with_crashes(seed: u64) -> Result<(), TestCaseError> {
    use rand::{Rng, SeedableRng};
    use steadfast_jobqueue::{Event, JobContext, JobError, Queue, TokioClock};
    use tokio_util::sync::CancellationToken;

    let store = Arc::new(InMemoryStore::with_clock(TokioClock::new()));
    let queue = Queue::new(Arc::clone(&store));
    let mut events = queue.subscribe();
    let jobs = (0..30)
        .map(|n| NewJob::new(&Chaos { n }).unwrap().max_attempts(4))
        .collect();
    queue.enqueue_many(jobs).await.unwrap();

    let handler = move |_job: Chaos, cx: JobContext| async move {
        let (roll, ms) = fate(seed, cx.id(), cx.attempt());
        tokio::time::sleep(Duration::from_millis(ms)).await;
        match roll {
            0..=2 => Err(JobError::retryable("random failure")),
            3 => panic!("random panic"),
            _ => Ok(()),
        }
    };
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    for round in 0..8 {
        let stop = CancellationToken::new();
        let worker = queue
            .worker()
            .id(format!("w{round}"))
            .queue("default", 4)
            .lease(Duration::from_millis(1000))
            .heartbeat(Duration::from_millis(300))
            .sweep_interval(Duration::from_millis(200))
            .poll_interval(Duration::from_millis(100))
            .drain_timeout(Duration::from_millis(500))
            .backoff(
                steadfast_backoff::Backoff::constant(Duration::from_millis(200))
                    .unlimited_attempts(),
            )
            .handle(handler)
            .build()
            .unwrap();
        let running = tokio::spawn(worker.run(stop.clone()));
        tokio::time::sleep(Duration::from_millis(rng.random_range(200..3000))).await;
        if rng.random_bool(0.5) {
            running.abort();
            let _ = running.await;
        } else {
            stop.cancel();
            running.await.unwrap();
        }
    }

    let stop = CancellationToken::new();
    let finisher = queue
        .worker()
        .id("finisher")
        .lease(Duration::from_millis(1000))
        .heartbeat(Duration::from_millis(300))
        .sweep_interval(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(100))
        .backoff(
            steadfast_backoff::Backoff::constant(Duration::from_millis(200)).unlimited_attempts(),
        )
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(finisher.run(stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let all = store.list(&ListFilter::default().limit(100)).await.unwrap();
        prop_assert_eq!(all.len(), 30, "no job lost");
        for job in &all {
            prop_assert!(
                job.attempt <= job.max_attempts,
                "attempt {} of {}",
                job.attempt,
                job.max_attempts
            );
        }
        if all
            .iter()
            .all(|j| matches!(j.state, JobState::Completed | JobState::Dead))
        {
            break;
        }
        prop_assert!(
            tokio::time::Instant::now() < deadline,
            "jobs still unfinished"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    running.await.unwrap();

    let mut completed = HashSet::new();
    while let Ok(event) = events.try_recv() {
        match event {
            Event::Completed { id, .. } => {
                prop_assert!(completed.insert(id), "job {} completed twice", id);
            }
            Event::Started { id, .. } => {
                prop_assert!(
                    !completed.contains(&id),
                    "job {} started after it completed",
                    id
                );
            }
            _ => {}
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn property_workers_with_random_failures_and_crashes(seed in any::<u64>()) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(workers_with_crashes(seed))?;
    }
}
