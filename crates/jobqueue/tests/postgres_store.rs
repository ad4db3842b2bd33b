//! What only the PostgreSQL store does: the transactional outbox, bulk
//! enqueue, wake-ups across processes, batched lease-guarded writes,
//! pruning and migrations. Each test works in a fresh schema.

#![cfg(feature = "postgres")]

mod postgres_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::Acquire;
use steadfast_jobqueue::{
    ClaimRequest, Completion, Enqueued, FailureKind, Finish, Job, JobContext, JobError, JobState,
    LeaseLost, LeaseRef, ListFilter, NewJob, PostgresStore, Queue, Store, StoreError, TokioClock,
};
use tokio_util::sync::CancellationToken;

#[derive(Serialize, Deserialize)]
struct Ping {
    n: u32,
}

impl Job for Ping {
    const KIND: &'static str = "ping";
}

fn ping(n: u32) -> NewJob {
    NewJob::new(&Ping { n }).unwrap()
}

fn claim_request(limit: usize) -> ClaimRequest {
    ClaimRequest {
        queue: "default".into(),
        kinds: vec![Ping::KIND.into()],
        limit,
        worker: "tester".into(),
        lease: Duration::from_secs(30),
    }
}

#[tokio::test]
async fn outbox_jobs_exist_exactly_when_the_callers_transaction_commits() {
    let Some(db) = postgres_support::database("outbox") else {
        return;
    };
    let store = db.store().await;
    let orders = format!("\"{}\".orders", db.schema);
    db.admin(&format!("CREATE TABLE {orders} (id bigint PRIMARY KEY)"));

    // Rolled back: neither the order nor its job exists.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {orders} VALUES (1)"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let rolled_back = store.enqueue_in(&mut tx, vec![ping(1)]).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(store.get(rolled_back[0].id()).await.unwrap().is_none());

    // Committed: both exist, and the job is invisible to claims until then.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO {orders} VALUES (2)"
    )))
    .execute(&mut *tx)
    .await
    .unwrap();
    let conn = tx.acquire().await.unwrap();
    let committed = store.enqueue_in(conn, vec![ping(2)]).await.unwrap();
    assert!(
        store.claim(&claim_request(10)).await.unwrap().is_empty(),
        "an uncommitted job cannot be claimed"
    );
    tx.commit().await.unwrap();
    let claimed = store.claim(&claim_request(10)).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].id, committed[0].id());
    assert_eq!(claimed[0].payload, br#"{"n":2}"#);

    store.close().await;
    db.cleanup();
}

#[tokio::test]
async fn bulk_enqueue_reports_every_outcome_in_order_with_duplicates() {
    let Some(db) = postgres_support::database("bulk") else {
        return;
    };
    let store = db.store().await;
    let first = store
        .enqueue(vec![ping(0).unique_key("held")])
        .await
        .unwrap();
    let Enqueued::Inserted(held) = first[0] else {
        panic!("first insert of a key: {first:?}")
    };

    let mut batch: Vec<NewJob> = (1..=2000).map(ping).collect();
    batch[10] = ping(10).unique_key("held");
    batch[20] = ping(20).unique_key("new");
    batch[30] = ping(30).unique_key("new");
    let outcomes = store.enqueue(batch).await.unwrap();

    assert_eq!(outcomes.len(), 2000);
    assert_eq!(outcomes[10], Enqueued::Duplicate(held));
    let Enqueued::Inserted(new) = outcomes[20] else {
        panic!("the first job with a new key is stored: {:?}", outcomes[20])
    };
    assert_eq!(
        outcomes[30],
        Enqueued::Duplicate(new),
        "a key repeated in one batch"
    );
    let inserted: Vec<i64> = outcomes
        .iter()
        .filter(|o| !o.is_duplicate())
        .map(|o| o.id().get())
        .collect();
    assert_eq!(inserted.len(), 1998);
    assert!(
        inserted.windows(2).all(|w| w[0] < w[1]),
        "ids follow batch order"
    );
    let record = store.get(outcomes[1999].id()).await.unwrap().unwrap();
    assert_eq!(record.payload, br#"{"n":2000}"#, "outcome i is job i");
    assert_eq!(
        store.stats().await.unwrap().count(JobState::Available),
        1999
    );

    store.close().await;
    db.cleanup();
}

#[tokio::test]
async fn invalid_jobs_are_refused_before_anything_is_written() {
    let Some(db) = postgres_support::database("invalid") else {
        return;
    };
    let store = db.store().await;
    let err = store
        .enqueue(vec![ping(1), ping(2).max_attempts(0)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
    assert!(store.list(&ListFilter::default()).await.unwrap().is_empty());
    store.close().await;
    db.cleanup();
}

#[tokio::test]
async fn heartbeats_and_outcomes_are_batched_and_fenced_by_lease() {
    let Some(db) = postgres_support::database("fenced") else {
        return;
    };
    let store = db.store().await;
    store.enqueue((0..3).map(ping).collect()).await.unwrap();
    let claimed = store.claim(&claim_request(3)).await.unwrap();
    assert_eq!(claimed.len(), 3);
    let lease = |i: usize, stale: bool| LeaseRef {
        id: claimed[i].id,
        lease: claimed[i].lease_number - i64::from(stale),
    };

    let held = store
        .heartbeat(
            &[lease(0, false), lease(1, true), lease(2, false)],
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert_eq!(held, vec![true, false, true]);

    let results = store
        .finish(vec![
            Completion {
                lease: lease(0, false),
                finish: Finish::Complete,
            },
            Completion {
                lease: lease(1, true),
                finish: Finish::Complete,
            },
            Completion {
                lease: lease(2, false),
                finish: Finish::Retry {
                    delay: Duration::from_secs(3600),
                    kind: FailureKind::Failed,
                    message: "later".into(),
                },
            },
        ])
        .await
        .unwrap();
    assert_eq!(
        results,
        vec![
            Ok(JobState::Completed),
            Err(LeaseLost {
                id: claimed[1].id,
                lease: claimed[1].lease_number - 1,
            }),
            Ok(JobState::Retryable),
        ]
    );
    let untouched = store.get(claimed[1].id).await.unwrap().unwrap();
    assert_eq!(
        untouched.state,
        JobState::Running,
        "a stale write changes nothing"
    );
    let retried = store.get(claimed[2].id).await.unwrap().unwrap();
    assert_eq!(retried.errors.len(), 1);
    assert_eq!(retried.errors[0].message, "later");
    assert!(retried.run_at > store.now(), "the retry waits");

    store.close().await;
    db.cleanup();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_worker_in_another_process_without_waiting_for_its_poll() {
    let Some(db) = postgres_support::database("notify") else {
        return;
    };
    // Two stores with pools of their own stand for two machines.
    let worker_store = db
        .builder()
        .poll_fallback(Duration::from_secs(3600))
        .connect()
        .await
        .unwrap();
    let producer = Queue::new(db.store().await);
    let queue = Queue::new(worker_store.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let worker = queue
        .worker()
        .poll_interval(Duration::from_secs(3600))
        .handle(move |_job: Ping, _cx: JobContext| {
            let runs = Arc::clone(&counted);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, JobError>(())
            }
        })
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    // Let the worker make its first (empty) claim and start listening.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = std::time::Instant::now();
    producer.enqueue(&Ping { n: 1 }).await.unwrap();
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the notification never woke the worker"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first claim at start, one when the listener came up (it cannot
    // know what it missed), one on the notification: never a timed poll.
    assert!(queue.counters().polls <= 3, "{:?}", queue.counters());

    stop.cancel();
    running.await.unwrap();
    worker_store.close().await;
    producer.store().close().await;
    db.cleanup();
}

#[tokio::test(start_paused = true)]
async fn prune_deletes_only_final_jobs_past_their_retention() {
    let Some(db) = postgres_support::database("prune") else {
        return;
    };
    let store = db.paused_store().await;
    let ids: Vec<_> = store
        .enqueue((0..4).map(ping).collect())
        .await
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    let claimed = store.claim(&claim_request(2)).await.unwrap();
    let finish = |i: usize, finish| Completion {
        lease: LeaseRef {
            id: claimed[i].id,
            lease: claimed[i].lease_number,
        },
        finish,
    };
    store
        .finish(vec![
            finish(0, Finish::Complete),
            finish(
                1,
                Finish::Dead {
                    kind: FailureKind::Permanent,
                    message: "no".into(),
                },
            ),
        ])
        .await
        .unwrap();
    store.cancel(&[ids[2]]).await.unwrap();

    tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
    let recent = store.enqueue(vec![ping(9)]).await.unwrap()[0].id();
    let recent_claim = store.claim(&claim_request(10)).await.unwrap();
    assert_eq!(recent_claim.len(), 2, "job 3 and the recent one");
    let done: Vec<_> = recent_claim
        .iter()
        .map(|j| Completion {
            lease: LeaseRef {
                id: j.id,
                lease: j.lease_number,
            },
            finish: Finish::Complete,
        })
        .collect();
    store.finish(done).await.unwrap();

    let pruned = store.prune(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(pruned, 3, "completed, dead and cancelled of two hours ago");
    for id in &ids[..3] {
        assert!(store.get(*id).await.unwrap().is_none());
    }
    assert!(
        store.get(ids[3]).await.unwrap().is_some(),
        "finished just now"
    );
    assert!(store.get(recent).await.unwrap().is_some());

    store.close().await;
    db.cleanup();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_starting_together_migrate_once() {
    let Some(db) = postgres_support::database("migrate") else {
        return;
    };
    let connects: Vec<_> = (0..4)
        .map(|_| {
            let builder = db.builder();
            tokio::spawn(builder.connect())
        })
        .collect();
    let mut stores = Vec::new();
    for connect in connects {
        stores.push(connect.await.unwrap().expect("every process connects"));
    }
    let versions: Vec<i32> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{}\".steadfast_migrations ORDER BY version",
        db.schema
    )))
    .fetch_all(stores[0].pool())
    .await
    .unwrap();
    assert_eq!(versions, vec![1, 2]);
    stores[0]
        .migrate()
        .await
        .expect("migrating again is a no-op");
    for store in stores {
        store.close().await;
    }
    db.cleanup();
}

#[tokio::test]
async fn bad_settings_are_refused_naming_the_rule() {
    let err = PostgresStore::builder("postgres://127.0.0.1:1/x")
        .schema("Jobs; DROP TABLE users")
        .connect()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("schema must be"), "{err}");

    let err = PostgresStore::builder("mysql://127.0.0.1/x")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
}

#[tokio::test]
async fn an_unreachable_database_is_a_transient_backend_error() {
    let err = PostgresStore::builder("postgres://postgres@127.0.0.1:1/test")
        .acquire_timeout(Duration::from_secs(2))
        .connect()
        .await
        .unwrap_err();
    assert!(err.is_transient(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn the_store_clock_is_the_test_clock_when_one_is_set() {
    let Some(db) = postgres_support::database("clock") else {
        return;
    };
    let clock = TokioClock::new();
    let store = db
        .builder()
        .test_clock(clock)
        .paused_time_safe(true)
        .connect()
        .await
        .unwrap();
    let id = store
        .enqueue(vec![ping(1).delay(Duration::from_secs(60))])
        .await
        .unwrap()[0]
        .id();
    assert_eq!(
        store.get(id).await.unwrap().unwrap().state,
        JobState::Scheduled
    );
    tokio::time::sleep(Duration::from_secs(61)).await;
    let record = store.get(id).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Available);
    assert_eq!(
        record.run_at.saturating_duration_since(record.created_at),
        Duration::from_secs(60)
    );
    store.close().await;
    db.cleanup();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_handed_back_by_shutdown_wakes_a_worker_in_another_process() {
    let Some(db) = postgres_support::database("handback") else {
        return;
    };
    let quiet = || {
        db.builder()
            .poll_fallback(Duration::from_secs(3600))
            .connect()
    };
    let first = Queue::new(quiet().await.unwrap());
    let second = Queue::new(quiet().await.unwrap());
    let runs = Arc::new(AtomicU32::new(0));
    let handler = {
        let runs = Arc::clone(&runs);
        move |_job: Ping, cx: JobContext| {
            let runs = Arc::clone(&runs);
            async move {
                if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                    // The first run lasts until shutdown cancels it.
                    cx.cancelled().await;
                }
                Ok::<_, JobError>(())
            }
        }
    };
    let build = |queue: &Queue<PostgresStore>| {
        queue
            .worker()
            .poll_interval(Duration::from_secs(3600))
            .drain_timeout(Duration::from_millis(100))
            .handle(handler.clone())
            .build()
            .unwrap()
    };
    let stop_first = CancellationToken::new();
    let id = first.enqueue(&Ping { n: 1 }).await.unwrap().id();
    let running_first = tokio::spawn(build(&first).run(stop_first.clone()));
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stop_second = CancellationToken::new();
    let running_second = tokio::spawn(build(&second).run(stop_second.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop_first.cancel();
    let report = running_first.await.unwrap();
    assert_eq!(report.released, 1);
    let released = std::time::Instant::now();
    while second.get(id).await.unwrap().unwrap().state != JobState::Completed {
        assert!(
            released.elapsed() < Duration::from_secs(10),
            "the hand-back never woke the other process"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    stop_second.cancel();
    running_second.await.unwrap();
    first.store().close().await;
    second.store().close().await;
    db.cleanup();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_heartbeats_and_outcomes_of_one_worker_never_deadlock() {
    let Some(db) = postgres_support::database("deadlock") else {
        return;
    };
    let store = Arc::new(db.store().await);
    for round in 0..5u32 {
        store.enqueue((0..400).map(ping).collect()).await.unwrap();
        let claimed = store.claim(&claim_request(400)).await.unwrap();
        let mut leases: Vec<LeaseRef> = claimed
            .iter()
            .map(|j| LeaseRef {
                id: j.id,
                lease: j.lease_number,
            })
            .collect();
        // The two batches name the same rows in opposite orders, the worst
        // case for row locks taken in input order.
        let outcomes: Vec<Completion> = leases
            .iter()
            .map(|&lease| Completion {
                lease,
                finish: Finish::Complete,
            })
            .collect();
        leases.reverse();
        let beat = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.heartbeat(&leases, Duration::from_secs(60)).await })
        };
        let done = {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.finish(outcomes).await })
        };
        beat.await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: heartbeat failed: {e:?}"));
        let results = done
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("round {round}: finish failed: {e:?}"));
        assert!(results.iter().all(|r| *r == Ok(JobState::Completed)));
    }
    store.close().await;
    db.cleanup();
}
