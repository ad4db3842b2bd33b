//! Burn-down benchmark: 100,000 no-op jobs through a worker, on the
//! in-memory store and on SQLite, in the same run.
//!
//! Two phases per store:
//! - `burndown`: 100,000 jobs are enqueued first (batches of 1,000), then a
//!   worker (concurrency 64) drains them; jobs/s is measured from the
//!   worker's start to the last completion.
//! - `live`: the worker runs while a producer enqueues 100,000 jobs in
//!   batches of 100 at a third of the burn-down rate just measured (headroom,
//!   so the figure is latency rather than backlog on a busy machine); enqueue-to-start
//!   latency is measured per job from the moment its batch was handed to
//!   the store to the moment its handler starts (p50 and p99).
//!
//! Prints `bench <name>: <value> <unit>` lines; run with
//! `cargo xtask bench jobqueue`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use steadfast_jobqueue::{
    InMemoryStore, Job, JobContext, JobError, NewJob, Queue, SqliteStore, Store,
};
use tokio_util::sync::CancellationToken;

const JOBS: usize = 100_000;

/// A no-op job carrying the time it was enqueued.
#[derive(Serialize, Deserialize)]
struct Noop {
    /// Nanoseconds since [`base`] when the job was handed to the store.
    enqueued: u64,
}

impl Job for Noop {
    const KIND: &'static str = "noop";
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn since_base() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct Run {
    jobs_per_sec: f64,
    latencies: Vec<u64>,
}

async fn enqueue_all<S: Store>(queue: &Queue<S>, batch: usize, rate: Option<f64>) {
    let began = Instant::now();
    for start in (0..JOBS).step_by(batch) {
        if let Some(rate) = rate {
            let due = began + Duration::from_secs_f64(start as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let stamp = since_base();
        let jobs = (start..(start + batch).min(JOBS))
            .map(|_| NewJob::new(&Noop { enqueued: stamp }).expect("encode"))
            .collect();
        queue.enqueue_many(jobs).await.expect("enqueue");
    }
}

async fn run<S: Store>(store: S, pace: Option<f64>) -> Run {
    let queue = Queue::new(store);
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(JOBS)));
    let handler = {
        let latencies = Arc::clone(&latencies);
        move |job: Noop, _cx: JobContext| {
            let waited = since_base().saturating_sub(job.enqueued);
            latencies.lock().expect("latency log").push(waited);
            async { Ok::<_, JobError>(()) }
        }
    };
    let worker = queue
        .worker()
        .queue("default", 64)
        .claim_batch(64)
        .poll_interval(Duration::from_millis(10))
        .handle(handler)
        .build()
        .expect("worker");

    if pace.is_none() {
        enqueue_all(&queue, 1000, None).await;
    }
    let started = Instant::now();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    if pace.is_some() {
        enqueue_all(&queue, 100, pace).await;
    }
    while queue.counters().completed < JOBS as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    running.await.expect("worker task");

    let mut latencies = std::mem::take(&mut *latencies.lock().expect("latency log"));
    latencies.sort_unstable();
    Run {
        jobs_per_sec: JOBS as f64 / elapsed.as_secs_f64(),
        latencies,
    }
}

fn percentile_ms(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank] as f64 / 1e6
}

fn report(name: &str, run: &Run, latency: bool) -> f64 {
    println!("bench {name}: {:.0} jobs/s", run.jobs_per_sec);
    if latency {
        println!(
            "bench {name}_enqueue_to_start_p50: {:.3} ms",
            percentile_ms(&run.latencies, 0.50)
        );
        println!(
            "bench {name}_enqueue_to_start_p99: {:.3} ms",
            percentile_ms(&run.latencies, 0.99)
        );
    }
    run.jobs_per_sec
}

async fn sqlite(dir: &tempfile::TempDir, name: &str) -> SqliteStore {
    SqliteStore::open(dir.path().join(name))
        .await
        .expect("open SQLite")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _ = base();
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("temporary directory");

        let memory = run(InMemoryStore::new(), None).await;
        let memory_rate = report("jobqueue_burndown_memory", &memory, false);
        let memory_live = run(InMemoryStore::new(), Some(memory_rate / 3.0)).await;
        report("jobqueue_live_memory", &memory_live, true);

        let sqlite_burn = run(sqlite(&dir, "burndown.db").await, None).await;
        let sqlite_rate = report("jobqueue_burndown_sqlite", &sqlite_burn, false);
        let sqlite_live = run(sqlite(&dir, "live.db").await, Some(sqlite_rate / 3.0)).await;
        report("jobqueue_live_sqlite", &sqlite_live, true);

        println!(
            "bench jobqueue_burndown_sqlite_vs_memory: {:.3} ratio",
            sqlite_rate / memory_rate
        );
    });
}
