//! A worker process on a PostgreSQL queue, for the chaos test and the
//! burn-down benchmark (`tests/postgres_chaos.rs`, `benches/burndown_postgres.rs`).
//!
//! ```text
//! steadfast-queue-pg-worker --url postgres://... --schema s --id w1 --mode chaos|noop|abort
//!     [--fail-rate 0.2] [--seed 1] [--concurrency 16] [--lease-ms 2000]
//!     [--heartbeat-ms 500] [--poll-ms 200] [--sweep-ms 500] [--work-ms 5] --expect N
//! ```
//!
//! It runs kind `chaos` (mode `chaos`: records each execution in the
//! `chaos_executions` table of the schema, sleeps up to `--work-ms`, fails a
//! seeded fraction of attempts), kind `noop` (mode `noop`: does nothing) or
//! kind `chaos` again (mode `abort`: records the execution, then aborts the
//! process, as a job that crashes its worker would),
//! and exits by itself once `--expect` jobs are final and none is active.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use steadfast_backoff::{Backoff, Jitter};
use steadfast_jobqueue::{
    Job, JobContext, JobError, JobState, PostgresStore, Queue, Store, StoreError,
};
use tokio_util::sync::CancellationToken;

/// The chaos test's job: its number is only for the record.
#[derive(Serialize, Deserialize)]
struct Chaos {
    n: u64,
}

impl Job for Chaos {
    const KIND: &'static str = "chaos";
}

/// The benchmark's job: nothing to do.
#[derive(Serialize, Deserialize)]
struct Noop {}

impl Job for Noop {
    const KIND: &'static str = "noop";
}

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("steadfast-queue-pg-worker: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("steadfast-queue-pg-worker: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steadfast-queue-pg-worker: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Chaos,
    Noop,
    Abort,
}

struct Args {
    url: String,
    schema: String,
    id: String,
    mode: Mode,
    fail_rate: f64,
    seed: u64,
    concurrency: usize,
    lease: Duration,
    heartbeat: Duration,
    poll: Duration,
    sweep: Duration,
    work_ms: u64,
    expect: u64,
}

impl Args {
    fn parse(mut raw: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut map = HashMap::new();
        while let Some(key) = raw.next() {
            let key = key
                .strip_prefix("--")
                .ok_or_else(|| format!("expected --option, got {key:?}"))?
                .to_owned();
            let value = raw.next().ok_or_else(|| format!("--{key} needs a value"))?;
            map.insert(key, value);
        }
        let text = |key: &str| {
            map.get(key)
                .cloned()
                .ok_or_else(|| format!("--{key} is required"))
        };
        let number = |key: &str, default: u64| -> Result<u64, String> {
            map.get(key).map_or(Ok(default), |v| {
                v.parse().map_err(|e| format!("--{key} {v:?}: {e}"))
            })
        };
        let mode = text("mode")?;
        let mode = match mode.as_str() {
            "chaos" => Mode::Chaos,
            "noop" => Mode::Noop,
            "abort" => Mode::Abort,
            _ => return Err(format!("--mode must be chaos, noop or abort, not {mode:?}")),
        };
        let fail_rate = map.get("fail-rate").map_or(Ok(0.0), |v| {
            v.parse::<f64>()
                .map_err(|e| format!("--fail-rate {v:?}: {e}"))
        })?;
        Ok(Self {
            url: text("url")?,
            schema: text("schema")?,
            id: text("id")?,
            mode,
            fail_rate,
            seed: number("seed", 1)?,
            concurrency: usize::try_from(number("concurrency", 16)?).unwrap_or(16),
            lease: Duration::from_millis(number("lease-ms", 2000)?),
            heartbeat: Duration::from_millis(number("heartbeat-ms", 500)?),
            poll: Duration::from_millis(number("poll-ms", 200)?),
            sweep: Duration::from_millis(number("sweep-ms", 500)?),
            work_ms: number("work-ms", 5)?,
            expect: number("expect", 0)?,
        })
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let separator = if args.url.contains('?') { '&' } else { '?' };
    let url = format!("{}{separator}application_name={}", args.url, args.id);
    let store = PostgresStore::builder(url)
        .schema(args.schema.clone())
        .max_connections(6)
        .poll_fallback(Duration::from_secs(1))
        .retention(None)
        .connect()
        .await?;
    let queue = Queue::new(store.clone());
    let backoff = Backoff::exponential(Duration::from_millis(50))
        .factor(2.0)
        .max_delay(Duration::from_secs(1))
        .jitter(Jitter::Full)
        .unlimited_attempts();
    let builder = queue
        .worker()
        .id(args.id.clone())
        .queue("default", args.concurrency)
        .claim_batch(args.concurrency)
        .lease(args.lease)
        .heartbeat(args.heartbeat)
        .poll_interval(args.poll)
        .sweep_interval(args.sweep)
        .drain_timeout(Duration::from_secs(2))
        .backoff(backoff);
    let worker = if args.mode != Mode::Noop {
        let pool = store.pool().clone();
        let table = format!("\"{}\".chaos_executions", args.schema);
        let (fail_rate, seed, work_ms) = (args.fail_rate, args.seed, args.work_ms);
        let abort = args.mode == Mode::Abort;
        builder
            .handle(move |job: Chaos, cx: JobContext| {
                chaos(
                    pool.clone(),
                    table.clone(),
                    job,
                    cx,
                    (fail_rate, seed, work_ms, abort),
                )
            })
            .build()?
    } else {
        builder
            .handle(|_job: Noop, _cx: JobContext| async { Ok::<_, JobError>(()) })
            .build()?
    };

    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    wait_until_drained(&store, args.expect).await?;
    stop.cancel();
    running.await?;
    store.close().await;
    Ok(())
}

/// Records the execution, works a little, and fails a seeded fraction of
/// attempts.
async fn chaos(
    pool: PgPool,
    table: String,
    job: Chaos,
    cx: JobContext,
    (fail_rate, seed, work_ms, abort): (f64, u64, u64, bool),
) -> Result<(), JobError> {
    let insert = format!(
        "INSERT INTO {table} (job_id, n, attempt, lease, worker, started_at) \
         VALUES ($1, $2, $3, $4, $5, clock_timestamp())"
    );
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(cx.id().get())
        .bind(i64::try_from(job.n).unwrap_or(i64::MAX))
        .bind(i32::try_from(cx.attempt()).unwrap_or(i32::MAX))
        .bind(cx.lease())
        .bind(cx.worker())
        .execute(&pool)
        .await
        .map_err(|e| JobError::retryable(format!("recording the execution failed: {e}")))?;
    if abort {
        std::process::abort();
    }

    let roll = mix(seed ^ mix(cx.id().get().unsigned_abs() ^ u64::from(cx.attempt()) << 48));
    if work_ms > 0 {
        tokio::time::sleep(Duration::from_millis(roll % (work_ms + 1))).await;
    }
    let ok = (roll >> 11) as f64 / (1u64 << 53) as f64 >= fail_rate;

    // The handler's own verdict, so the test can tell a crash-caused rerun
    // of work that had already succeeded from a retry of a failure.
    let verdict = format!("UPDATE {table} SET ok = $3 WHERE job_id = $1 AND lease = $2");
    sqlx::query(sqlx::AssertSqlSafe(verdict))
        .bind(cx.id().get())
        .bind(cx.lease())
        .bind(ok)
        .execute(&pool)
        .await
        .map_err(|e| JobError::retryable(format!("recording the verdict failed: {e}")))?;
    if ok {
        Ok(())
    } else {
        Err(JobError::retryable("injected failure"))
    }
}

/// splitmix64: a seeded, well-spread hash of the attempt.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Returns once `expect` jobs are final and no job is active.
async fn wait_until_drained(store: &PostgresStore, expect: u64) -> Result<(), StoreError> {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats = match store.stats().await {
            Ok(stats) => stats,
            // The chaos test terminates our connections once; carry on.
            Err(e) if e.is_transient() => continue,
            Err(e) => return Err(e),
        };
        let active = stats.active();
        let finished: u64 = [JobState::Completed, JobState::Dead]
            .into_iter()
            .map(|s| stats.count(s))
            .sum();
        if active == 0 && finished >= expect {
            return Ok(());
        }
    }
}
