//! JQ-06 in its process form on PostgreSQL: a job that aborts its worker
//! process every time. The attempt counter is written by the claim itself,
//! so after two executions the job reaches the dead letters with "worker
//! lost", and later starts run no handler.

#![cfg(feature = "postgres")]

mod postgres_support;

use std::process::Stdio;
use std::time::Duration;

use steadfast_jobqueue::{FailureKind, JobState, NewJob, Store};
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_06_job_that_aborts_its_worker_process_is_dead_lettered_after_two_runs() {
    let Some(db) = postgres_support::database("jq_06_process") else {
        return;
    };
    let store = db.store().await;
    let schema = &db.schema;
    db.admin(&format!(
        "CREATE TABLE \"{schema}\".chaos_executions (job_id bigint NOT NULL, n bigint NOT NULL, \
         attempt integer NOT NULL, lease bigint NOT NULL, worker text NOT NULL, \
         started_at timestamptz NOT NULL, ok boolean)"
    ));
    let id = store
        .enqueue(vec![
            NewJob::raw("chaos", "json", br#"{"n":1}"#.to_vec()).max_attempts(2),
        ])
        .await
        .unwrap()[0]
        .id();
    let executions = || async {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".chaos_executions"
        )))
        .fetch_one(store.pool())
        .await
        .unwrap()
    };

    for start in 1..=5 {
        let mut worker = Command::new(env!("CARGO_BIN_EXE_steadfast-queue-pg-worker"))
            .args(["--url", &db.url, "--schema", schema])
            .args(["--id", &format!("start-{start}"), "--mode", "abort"])
            .args(["--lease-ms", "1000", "--heartbeat-ms", "300"])
            .args(["--poll-ms", "100", "--sweep-ms", "200", "--expect", "1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
            .await
            .expect("each start ends: by the abort, or idle once the job is dead")
            .unwrap();
        let expected = if start <= 2 { start } else { 2 };
        assert_eq!(
            executions().await,
            expected,
            "executions after start {start}"
        );
        if start <= 2 {
            assert!(!status.success(), "start {start} was aborted by the job");
        } else {
            assert!(status.success(), "start {start} ran no handler: {status}");
        }
    }

    let record = store.get(id).await.unwrap().expect("the job is kept");
    assert_eq!(record.state, JobState::Dead);
    assert_eq!(record.attempt, 2);
    assert_eq!(
        record.last_error().map(|e| e.kind),
        Some(FailureKind::WorkerLost)
    );
    store.close().await;
    db.cleanup();
}
