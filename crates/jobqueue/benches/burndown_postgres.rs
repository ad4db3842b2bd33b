//! Burn-down on PostgreSQL: 100,000 no-op jobs drained by two worker
//! processes while a producer enqueues them in bulk, against the same
//! machine's `pgbench -N` (single-row commits) measured in the same run.
//!
//! Prints `bench <name>: <value> <unit>` lines: jobs per second, p50 and p99
//! from enqueue to start (the claim, by the database clock), pgbench's TPS
//! and the ratio of the two. Before the burn-down, 200 jobs enqueued one by
//! one into the idle queue measure the wake-up path (LISTEN/NOTIFY): their
//! p50/p99 enqueue-to-start are printed too.
//!
//! The server is `STEADFAST_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); the benchmark uses a fresh
//! schema there and a scratch database for pgbench, and drops both.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use steadfast_jobqueue::{NewJob, PostgresStore, Store};

const JOBS: usize = 100_000;
const BATCH: usize = 2_000;
const WORKERS: usize = 2;
const CONCURRENCY: &str = "256";
const PGBENCH_SECONDS: &str = "10";
const IDLE_JOBS: usize = 200;

/// What the run measured.
struct Figures {
    jobs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    idle_p50_ms: f64,
    idle_p99_ms: f64,
}

fn main() {
    let url = std::env::var("STEADFAST_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    if let Err(error) = runtime.block_on(run(&url)) {
        println!("bench burndown_postgres: skipped ({error})");
    }
}

async fn run(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let schema = format!("bench_burndown_{}", std::process::id());
    let store = PostgresStore::builder(url)
        .schema(schema.clone())
        .retention(None)
        .connect()
        .await?;
    let result = burndown(url, &schema, &store).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
    )))
    .execute(store.pool())
    .await?;
    store.close().await;
    let figures = result?;

    let tps = pgbench(url).await?;
    let Figures {
        jobs_per_sec,
        p50_ms,
        p99_ms,
        idle_p50_ms,
        idle_p99_ms,
    } = figures;
    println!("bench burndown_postgres_jobs_per_sec: {jobs_per_sec:.0} jobs/s");
    println!("bench burndown_postgres_enqueue_to_start_p50: {p50_ms:.1} ms");
    println!("bench burndown_postgres_enqueue_to_start_p99: {p99_ms:.1} ms");
    println!("bench postgres_idle_enqueue_to_start_p50: {idle_p50_ms:.1} ms");
    println!("bench postgres_idle_enqueue_to_start_p99: {idle_p99_ms:.1} ms");
    println!("bench pgbench_simple_update_tps: {tps:.0} tps");
    println!(
        "bench burndown_postgres_vs_pgbench: {:.2} x",
        jobs_per_sec / tps
    );
    Ok(())
}

/// Runs the idle phase and the burn-down.
async fn burndown(
    url: &str,
    schema: &str,
    store: &PostgresStore,
) -> Result<Figures, Box<dyn std::error::Error>> {
    let mut workers = Vec::new();
    for n in 0..WORKERS {
        let child = Command::new(env!("CARGO_BIN_EXE_steadfast-queue-pg-worker"))
            .args([
                "--url",
                url,
                "--schema",
                schema,
                "--id",
                &format!("bench-{n}"),
            ])
            .args(["--mode", "noop", "--concurrency", CONCURRENCY])
            .args(["--lease-ms", "30000", "--heartbeat-ms", "10000"])
            .args(["--poll-ms", "5000", "--sweep-ms", "5000"])
            .args(["--expect", &(JOBS + IDLE_JOBS).to_string()])
            .stdout(Stdio::null())
            .spawn()?;
        workers.push(child);
    }
    // Let the workers connect and make their first (empty) claim.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Idle queue: each job has to be noticed (NOTIFY), not found by a poll.
    for _ in 0..IDLE_JOBS {
        store
            .enqueue(vec![NewJob::raw("noop", "json", b"{}".to_vec())])
            .await?;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let jobs = format!("\"{schema}\".steadfast_jobs");
    let idle_done = Instant::now();
    loop {
        let completed: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM {jobs} WHERE state = 'completed'"
        )))
        .fetch_one(store.pool())
        .await?;
        if completed as usize == IDLE_JOBS {
            break;
        }
        if idle_done.elapsed() > Duration::from_secs(30) {
            return Err("the idle jobs did not complete".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (idle_p50_ms, idle_p99_ms) = latencies(store, &jobs, "id <= $1", IDLE_JOBS).await?;

    let started = Instant::now();
    for _ in 0..JOBS / BATCH {
        let jobs = (0..BATCH)
            .map(|_| NewJob::raw("noop", "json", b"{}".to_vec()))
            .collect();
        store.enqueue(jobs).await?;
    }
    let enqueued = started.elapsed();
    for mut worker in workers {
        let status = tokio::task::spawn_blocking(move || worker.wait()).await??;
        if !status.success() {
            return Err(format!("a worker failed: {status}").into());
        }
    }
    eprintln!(
        "burndown_postgres: enqueued {JOBS} in {:.2}s, drained in {:.2}s",
        enqueued.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let span_ms: f64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT extract(epoch FROM max(finalized_at) - min(created_at))::float8 * 1000 \
         FROM {jobs} WHERE id > $1 AND state = 'completed'"
    )))
    .bind(IDLE_JOBS as i64)
    .fetch_one(store.pool())
    .await?;
    let (p50_ms, p99_ms) = latencies(store, &jobs, "id > $1", IDLE_JOBS).await?;
    let completed = store
        .stats()
        .await?
        .count(steadfast_jobqueue::JobState::Completed);
    if completed != (JOBS + IDLE_JOBS) as u64 {
        return Err(format!("only {completed} of {} jobs completed", JOBS + IDLE_JOBS).into());
    }
    Ok(Figures {
        jobs_per_sec: JOBS as f64 / (span_ms / 1000.0),
        p50_ms,
        p99_ms,
        idle_p50_ms,
        idle_p99_ms,
    })
}

/// The p50 and p99 from enqueue to claim, in milliseconds, of the completed
/// jobs matching `filter` (which binds `bound` as `$1`).
async fn latencies(
    store: &PostgresStore,
    jobs: &str,
    filter: &str,
    bound: usize,
) -> Result<(f64, f64), sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT \
           percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - created_at))::float8 * 1000, \
           percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM attempted_at - created_at))::float8 * 1000 \
         FROM {jobs} WHERE {filter} AND state = 'completed'"
    )))
    .bind(bound as i64)
    .fetch_one(store.pool())
    .await
}

/// `pgbench -N` (TPC-B without the branch and teller updates: three
/// single-row writes and a read per transaction) on a scratch database.
async fn pgbench(url: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let options: PgConnectOptions = url.parse()?;
    let mut admin = PgConnection::connect_with(&options).await?;
    let scratch = format!("steadfast_pgbench_{}", std::process::id());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {scratch}"
    )))
    .execute(&mut admin)
    .await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {scratch}")))
        .execute(&mut admin)
        .await?;

    let host = options.get_host().to_owned();
    let port = options.get_port().to_string();
    let user = options.get_username().to_owned();
    let common = ["-h", &host, "-p", &port, "-U", &user];
    let result = (|| -> Result<f64, Box<dyn std::error::Error>> {
        let init = Command::new("pgbench")
            .args(common)
            .args(["-i", "-s", "1", "-q", &scratch])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if !init.success() {
            return Err(format!("pgbench -i failed: {init}").into());
        }
        let clients = WORKERS.to_string();
        let out = Command::new("pgbench")
            .args(common)
            .args(["-N", "-c", &clients, "-j", &clients, "-T", PGBENCH_SECONDS])
            .arg(&scratch)
            .stderr(Stdio::null())
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| {
                let rest = line.trim().strip_prefix("tps = ")?;
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .ok_or_else(|| format!("no tps line in pgbench's output: {text}").into())
    })();

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {scratch}"
    )))
    .execute(&mut admin)
    .await?;
    result
}
