//! The chaos test of the PostgreSQL store: 10,000 jobs, a fifth of all
//! attempts failing (seeded), three worker processes on one schema, one of
//! them SIGKILLed at random moments and restarted, and the database
//! connections of another terminated once. At the end every job is
//! completed or dead, none is lost, none ran after it completed, no lease
//! ran twice; the duplicate executions (work that had already succeeded,
//! run again because a crash kept its result from the store) are printed.
//!
//! Real time (worker processes), loopback only, bounded to about a minute.

#![cfg(feature = "postgres")]

mod postgres_support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use steadfast_jobqueue::{JobState, NewJob, PostgresStore, Store};
use tokio::process::{Child, Command};

const JOBS: u64 = 10_000;
const MAX_ATTEMPTS: u32 = 6;
const CONCURRENCY: usize = 16;
const KILLS: usize = 6;
const SEED: u64 = 0x5eed;

fn spawn_worker(db: &postgres_support::TestDb, id: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_steadfast-queue-pg-worker"))
        .args(["--url", &db.url, "--schema", &db.schema, "--id", id])
        .args(["--mode", "chaos", "--fail-rate", "0.2"])
        .args(["--seed", &SEED.to_string()])
        .args(["--concurrency", &CONCURRENCY.to_string()])
        .args(["--lease-ms", "1500", "--heartbeat-ms", "400"])
        .args(["--poll-ms", "200", "--sweep-ms", "300", "--work-ms", "4"])
        .args(["--expect", &JOBS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start a worker process")
}

async fn scalar(store: &PostgresStore, sql: String) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(store.pool())
        .await
        .expect("a check query")
}

async fn active(store: &PostgresStore) -> u64 {
    let stats = store.stats().await.expect("stats");
    stats.active()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kills_and_cut_connections_lose_no_job_and_rerun_no_completed_one() {
    let Some(db) = postgres_support::database("chaos") else {
        return;
    };
    let started = Instant::now();
    let store = db.store().await;
    let schema = &db.schema;
    db.admin(&format!(
        "CREATE TABLE \"{schema}\".chaos_executions (job_id bigint NOT NULL, n bigint NOT NULL, \
         attempt integer NOT NULL, lease bigint NOT NULL, worker text NOT NULL, \
         started_at timestamptz NOT NULL, ok boolean)"
    ));

    let mut ids = Vec::new();
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(2500) {
        let jobs = chunk
            .iter()
            .map(|n| {
                NewJob::raw("chaos", "json", format!("{{\"n\":{n}}}").into_bytes())
                    .max_attempts(MAX_ATTEMPTS)
            })
            .collect();
        ids.extend(
            store
                .enqueue(jobs)
                .await
                .unwrap()
                .into_iter()
                .map(|e| e.id()),
        );
    }
    assert_eq!(ids.len() as u64, JOBS);

    let mut victim = spawn_worker(&db, "w0");
    let mut steady = vec![spawn_worker(&db, "w1"), spawn_worker(&db, "w2")];
    let mut rng = SmallRng::seed_from_u64(SEED);
    let mut kills = 0;
    let mut terminated = 0;
    for round in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(250..750))).await;
        if round == 1 {
            terminated = scalar(
                &store,
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'w1') AS t"
                    .to_owned(),
            )
            .await;
        }
        assert!(
            active(&store).await > 0,
            "the queue drained before kill {}: make the run longer",
            round + 1
        );
        victim.start_kill().expect("SIGKILL the victim");
        victim.wait().await.expect("reap the victim");
        kills += 1;
        victim = spawn_worker(&db, &format!("w0-{}", round + 1));
    }
    assert!(
        terminated >= 1,
        "pg_terminate_backend found no connection of w1"
    );

    steady.push(victim);
    for mut child in steady {
        let Ok(status) = tokio::time::timeout(Duration::from_secs(100), child.wait()).await else {
            panic!("workers did not drain the queue: {:?}", store.stats().await);
        };
        let status = status.expect("wait for a worker");
        assert!(status.success(), "a worker failed: {status}");
    }

    // Every job is completed or dead, and none is lost.
    let jobs = format!("\"{schema}\".steadfast_jobs");
    let executions = format!("\"{schema}\".chaos_executions");
    let stats = store.stats().await.unwrap();
    let completed = stats.count(JobState::Completed);
    let dead = stats.count(JobState::Dead);
    assert_eq!(completed + dead, JOBS, "{stats:?}");
    let present = scalar(
        &store,
        format!(
            "SELECT count(*) FROM {jobs} WHERE id = ANY(ARRAY[{}]::int8[])",
            ids.iter()
                .map(|id| id.get().to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    )
    .await;
    assert_eq!(present as u64, JOBS, "no job lost");

    // No job ran again after it was completed, and no lease ran twice.
    let after_completion = scalar(
        &store,
        format!(
            "SELECT count(*) FROM {executions} e JOIN {jobs} j ON j.id = e.job_id \
             WHERE j.state = 'completed' AND e.started_at > j.finalized_at"
        ),
    )
    .await;
    assert_eq!(after_completion, 0, "executions after completion");
    let lease_twice = scalar(
        &store,
        format!(
            "SELECT count(*) FROM (SELECT job_id, lease FROM {executions} \
             GROUP BY 1, 2 HAVING count(*) > 1) AS t"
        ),
    )
    .await;
    assert_eq!(lease_twice, 0, "one execution per (job, lease)");
    let beyond_lease = scalar(
        &store,
        format!(
            "SELECT count(*) FROM {executions} e JOIN {jobs} j ON j.id = e.job_id \
             WHERE e.lease > j.lease_number OR e.attempt > j.max_attempts"
        ),
    )
    .await;
    assert_eq!(beyond_lease, 0, "executions match the store's counters");
    let never_ran = scalar(
        &store,
        format!(
            "SELECT count(*) FROM {jobs} j WHERE j.state = 'completed' AND NOT EXISTS \
             (SELECT 1 FROM {executions} e WHERE e.job_id = j.id AND e.ok)"
        ),
    )
    .await;
    assert_eq!(
        never_ran, 0,
        "every completed job has a successful execution"
    );

    let total = scalar(&store, format!("SELECT count(*) FROM {executions}")).await;
    let duplicates = scalar(
        &store,
        format!(
            "SELECT coalesce(sum(n - 1), 0)::int8 FROM (SELECT count(*) AS n FROM {executions} \
             WHERE ok GROUP BY job_id) AS t"
        ),
    )
    .await;
    let failed = scalar(
        &store,
        format!("SELECT count(*) FROM {executions} WHERE NOT ok"),
    )
    .await;
    println!(
        "chaos: jobs={JOBS} completed={completed} dead={dead} executions={total} \
         injected_failures={failed} duplicate_executions={duplicates} kills={kills} \
         terminated_backends={terminated} elapsed={:.1}s",
        started.elapsed().as_secs_f64()
    );
    // Only crashes rerun finished work: every successful execution that was
    // followed by another one ran on a worker that was killed, or on the
    // one whose connections were cut.
    let killed: Vec<String> = std::iter::once("'w0'".to_owned())
        .chain((1..kills).map(|k| format!("'w0-{k}'")))
        .chain(std::iter::once("'w1'".to_owned()))
        .collect();
    let unexplained = scalar(
        &store,
        format!(
            "SELECT count(*) FROM (SELECT worker, row_number() OVER \
             (PARTITION BY job_id ORDER BY started_at DESC) AS rn FROM {executions} WHERE ok) AS t \
             WHERE rn > 1 AND worker NOT IN ({})",
            killed.join(", ")
        ),
    )
    .await;
    assert_eq!(unexplained, 0, "duplicates not caused by a crash");
    assert!(kills >= 5);

    store.close().await;
    db.cleanup();
}
