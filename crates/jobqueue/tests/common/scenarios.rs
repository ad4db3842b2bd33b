//! The scenarios of `shared/cases/jobqueue.md` as functions generic over the
//! store, so every store runs the same code (see `tests/cases.rs`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use steadfast_backoff::{Backoff, Jitter};
use steadfast_jobqueue::{
    ClaimRequest, Completion, Event, FailureKind, Finish, INTERRUPTED_BY_SHUTDOWN, Job, JobContext,
    JobError, JobState, LeaseLost, LeaseRef, NewJob, Queue, Redrive, Store,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use super::{EventLog, Hooked, job, wait_until};

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// A job that sleeps for `ms` milliseconds of tokio time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct Work {
    ms: u64,
}

impl Job for Work {
    const KIND: &'static str = "work";
}

/// Counts runs, then sleeps for the job's time.
fn sleepy(
    runs: Arc<AtomicU32>,
) -> impl Fn(Work, JobContext) -> HandlerFuture + Clone + Send + Sync {
    move |job: Work, _cx: JobContext| {
        let runs = Arc::clone(&runs);
        Box::pin(async move {
            runs.fetch_add(1, Ordering::SeqCst);
            sleep(Duration::from_millis(job.ms)).await;
            Ok(())
        })
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// JQ-01 · A job running when its worker is killed is run again, never lost.
pub async fn jq_01_killed_worker_job_runs_again_never_lost<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let runs = Arc::new(AtomicU32::new(0));
    let id = queue.enqueue(&Work { ms: 10_000 }).await.unwrap().id();
    let worker = |name: &str| {
        queue
            .worker()
            .id(name)
            .lease(ms(2000))
            .heartbeat(ms(500))
            .poll_interval(ms(100))
            .sweep_interval(ms(250))
            .handle(sleepy(Arc::clone(&runs)))
            .build()
            .unwrap()
    };

    let a = tokio::spawn(worker("a").run(CancellationToken::new()));
    wait_until(ms(5000), "worker a to start the job", || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    sleep(ms(600)).await;
    // Crash: every task of worker a is dropped, no cleanup code runs.
    a.abort();
    let _ = a.await;
    let crashed_at = Instant::now();

    let b_stop = CancellationToken::new();
    let b = tokio::spawn(worker("b").run(b_stop.clone()));
    let mut claimed_by_b = None;
    while crashed_at.elapsed() < ms(3000) {
        let record = job(&*store, id).await;
        let owner = record.lease.as_ref().map(|l| l.owner.clone());
        if crashed_at.elapsed() < ms(1500) {
            assert_eq!(record.state, JobState::Running, "a's lease still holds");
            assert_eq!(owner.as_deref(), Some("a"));
        }
        if owner.as_deref() == Some("b") && claimed_by_b.is_none() {
            claimed_by_b = Some(crashed_at.elapsed());
        }
        sleep(ms(50)).await;
    }
    let claimed_by_b = claimed_by_b.expect("worker b claims the job within 3 s");
    assert!(
        claimed_by_b >= ms(1400),
        "not before a's lease ran out: {claimed_by_b:?}"
    );

    wait_until(ms(15_000), "the job to complete", || async {
        job(&*store, id).await.state == JobState::Completed
    })
    .await;
    let record = job(&*store, id).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "two executions");
    assert_eq!(record.attempt, 2);
    assert_eq!(record.errors.len(), 1);
    assert_eq!(record.errors[0].kind, FailureKind::WorkerLost);

    b_stop.cancel();
    b.await.unwrap();
}

// JQ-02 · Jobs of a dead worker are recovered automatically.
pub async fn jq_02_dead_worker_jobs_recovered_without_manual_call<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let runs = Arc::new(AtomicU32::new(0));
    let id = queue.enqueue(&Work { ms: 60_000 }).await.unwrap().id();
    let worker = |name: &str| {
        queue
            .worker()
            .id(name)
            .lease(ms(5000))
            .heartbeat(ms(1000))
            .sweep_interval(ms(1000))
            .poll_interval(ms(200))
            .handle(sleepy(Arc::clone(&runs)))
            .build()
            .unwrap()
    };

    let start = Instant::now();
    let w1 = tokio::spawn(worker("w1").run(CancellationToken::new()));
    wait_until(ms(1000), "w1 to start the job", || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    w1.abort();
    let _ = w1.await;

    let w2_stop = CancellationToken::new();
    let w2 = tokio::spawn(worker("w2").run(w2_stop.clone()));
    sleep((start + ms(7000)).saturating_duration_since(Instant::now())).await;

    let record = job(&*store, id).await;
    let on_w2 =
        record.state == JobState::Running && record.lease.as_ref().is_some_and(|l| l.owner == "w2");
    assert!(
        record.state == JobState::Available || on_w2,
        "recovered: {:?}",
        record.state
    );
    let lost: Vec<_> = record
        .errors
        .iter()
        .filter(|e| e.kind == FailureKind::WorkerLost)
        .collect();
    assert_eq!(lost.len(), 1, "exactly one lost attempt recorded");
    assert_eq!(lost[0].attempt, 1, "exactly one attempt charged to w1");
    assert!(lost[0].message.contains("w1"), "{}", lost[0].message);
    let stats = queue.stats().await.unwrap();
    assert!(
        !stats.running_by_worker.contains_key("w1"),
        "nothing in flight for w1: {stats:?}"
    );
    assert!(queue.counters().recovered >= 1);

    w2_stop.cancel();
    let _ = tokio::time::timeout(ms(60_000), w2).await;
}

// JQ-03 · Concurrent claimers never receive the same job.
pub async fn claim_race<S: Store>(store: Arc<S>, seed: u64) {
    let jobs: Vec<NewJob> = (0..200)
        .map(|i| NewJob::new(&Work { ms: i }).unwrap())
        .collect();
    store.enqueue(jobs).await.unwrap();

    let seen: Arc<Mutex<Vec<(i64, u32)>>> = Arc::default();
    let mut claimers = Vec::new();
    for n in 0..8u64 {
        let store = Arc::clone(&store);
        let seen = Arc::clone(&seen);
        claimers.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(n));
            let req = ClaimRequest {
                queue: "default".into(),
                kinds: vec![Work::KIND.into()],
                limit: 5,
                worker: format!("claimer-{n}"),
                lease: Duration::from_secs(60),
            };
            loop {
                for _ in 0..rng.random_range(0..3) {
                    tokio::task::yield_now().await;
                }
                let claimed = store.claim(&req).await.unwrap();
                if claimed.is_empty() {
                    return;
                }
                let completions = claimed
                    .iter()
                    .map(|j| Completion {
                        lease: LeaseRef {
                            id: j.id,
                            lease: j.lease_number,
                        },
                        finish: Finish::Complete,
                    })
                    .collect();
                seen.lock()
                    .unwrap()
                    .extend(claimed.iter().map(|j| (j.id.get(), j.attempt)));
                for result in store.finish(completions).await.unwrap() {
                    assert_eq!(result, Ok(JobState::Completed));
                }
            }
        }));
    }
    for claimer in claimers {
        claimer.await.unwrap();
    }

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200, "claims total 200 (seed {seed})");
    let mut pairs = seen.clone();
    pairs.sort_unstable();
    pairs.dedup();
    assert_eq!(
        pairs.len(),
        200,
        "each (job, attempt) comes back from exactly one claim (seed {seed})"
    );
    assert!(
        seen.iter().all(|&(_, attempt)| attempt == 1),
        "every job executed exactly once"
    );
}

// JQ-04 (a) · A handler that blocks its thread does not lose its lease.
pub async fn blocking_handler_keeps_lease<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let runs = Arc::new(AtomicU32::new(0));
    let id = queue.enqueue(&Work { ms: 3000 }).await.unwrap().id();
    let blocking = {
        let runs = Arc::clone(&runs);
        move |job: Work, _cx: JobContext| {
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(ms(job.ms));
                Ok::<_, JobError>(())
            }
        }
    };
    let worker = |name: &str| {
        queue
            .worker()
            .id(name)
            .lease(ms(1000))
            .heartbeat(ms(300))
            .poll_interval(ms(100))
            .sweep_interval(ms(100))
            .handle(blocking.clone())
            .build()
            .unwrap()
    };
    let stop = CancellationToken::new();
    let a = tokio::spawn(worker("a").run(stop.clone()));
    wait_until(ms(2000), "a to start", || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    let b = tokio::spawn(worker("b").run(stop.clone()));

    wait_until(ms(10_000), "completion", || async {
        job(&*store, id).await.state == JobState::Completed
    })
    .await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "executed once");
    assert_eq!(job(&*store, id).await.attempt, 1);
    assert!(
        events
            .matching(|e| matches!(e, Event::LeaseLost { .. }))
            .is_empty()
    );
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();
}

// JQ-04 (b) · A lapsed lease fences out the old attempt.
pub async fn jq_04b_lapsed_lease_fences_out_old_attempt<S: Store>(store: Arc<S>) {
    let hooked = Arc::new(Hooked::new(Arc::clone(&store)));
    let queue_a = Queue::new(Arc::clone(&hooked));
    let queue_b = Queue::new(Arc::clone(&store));
    let events_a = EventLog::start(&queue_a);
    let id = queue_b.enqueue(&Work { ms: 0 }).await.unwrap().id();

    let first_cancelled = Arc::new(AtomicBool::new(false));
    let handler = {
        let first_cancelled = Arc::clone(&first_cancelled);
        move |_job: Work, cx: JobContext| {
            let first_cancelled = Arc::clone(&first_cancelled);
            async move {
                if cx.attempt() == 1 {
                    // Keeps running past its cancellation, as a stuck handler would.
                    let watch = cx.clone();
                    let flag = Arc::clone(&first_cancelled);
                    tokio::spawn(async move {
                        watch.cancelled().await;
                        flag.store(true, Ordering::SeqCst);
                    });
                    sleep(ms(4000)).await;
                } else {
                    sleep(ms(10_000)).await;
                }
                Ok::<_, JobError>(())
            }
        }
    };
    let build = |queue: &Queue<_>, name: &str| {
        queue
            .worker()
            .id(name)
            .queue("default", 1)
            .lease(ms(1000))
            .heartbeat(ms(300))
            .poll_interval(ms(100))
            .sweep_interval(ms(100))
            .handle(handler.clone())
            .build()
            .unwrap()
    };
    let start = Instant::now();
    hooked.stall_heartbeats_until(start + ms(3000));
    let stop = CancellationToken::new();
    // One slot: while its stuck attempt runs, a cannot take the job back.
    let a = tokio::spawn(build(&queue_a, "a").run(stop.clone()));
    wait_until(ms(500), "a to claim", || async {
        job(&*store, id).await.state == JobState::Running
    })
    .await;
    let b = tokio::spawn(
        queue_b
            .worker()
            .id("b")
            .lease(ms(1000))
            .heartbeat(ms(300))
            .poll_interval(ms(100))
            .sweep_interval(ms(100))
            .handle(handler.clone())
            .build()
            .unwrap()
            .run(stop.clone()),
    );

    wait_until(ms(2500), "b to claim attempt 2", || async {
        let record = job(&*store, id).await;
        record.attempt == 2 && record.lease.is_some_and(|l| l.owner == "b")
    })
    .await;
    assert!(
        first_cancelled.load(Ordering::SeqCst),
        "attempt 1's cancellation fired"
    );

    // Attempt 1 finishes at t = 4 s; its completion must be refused.
    sleep((start + ms(4500)).saturating_duration_since(Instant::now())).await;
    let record = job(&*store, id).await;
    assert_eq!(record.state, JobState::Running, "attempt 2 untouched");
    assert_eq!(
        record.lease.as_ref().map(|l| (l.number, l.owner.as_str())),
        Some((2, "b"))
    );
    let lost = events_a.matching(|e| matches!(e, Event::LeaseLost { lease: 1, .. }));
    assert_eq!(lost.len(), 1, "one lease-lost event: {:?}", events_a.all());
    assert!(
        events_a
            .matching(|e| matches!(e, Event::Completed { .. }))
            .is_empty()
    );

    // The store itself refuses a stale completion.
    let stale = Completion {
        lease: LeaseRef { id, lease: 1 },
        finish: Finish::Complete,
    };
    let refused = store.finish(vec![stale]).await.unwrap();
    assert_eq!(refused, vec![Err(LeaseLost { id, lease: 1 })]);
    assert_eq!(job(&*store, id).await.state, JobState::Running);

    wait_until(ms(15_000), "attempt 2 to complete", || async {
        job(&*store, id).await.state == JobState::Completed
    })
    .await;
    stop.cancel();
    a.await.unwrap();
    b.await.unwrap();
}

// JQ-05 · A healthy long job is not rescued, and its unique key stays held.
pub async fn jq_05_healthy_long_job_keeps_lease_and_unique_key<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let runs = Arc::new(AtomicU32::new(0));
    let unique = || {
        NewJob::new(&Work { ms: 10_000 })
            .unwrap()
            .max_attempts(1)
            .unique_by_payload()
    };
    let id = queue.enqueue_new(unique()).await.unwrap().id();
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .lease(ms(2000))
        .heartbeat(ms(500))
        .sweep_interval(ms(100))
        .handle(sleepy(Arc::clone(&runs)))
        .build()
        .unwrap();
    let start = Instant::now();
    let running = tokio::spawn(worker.run(stop.clone()));

    sleep(ms(3000)).await;
    let second = queue.enqueue_new(unique()).await.unwrap();
    assert!(second.is_duplicate(), "an identical job is a duplicate");
    assert_eq!(second.id(), id, "the existing job's id is returned");
    assert_eq!(
        queue.list(&Default::default()).await.unwrap().len(),
        1,
        "nothing added"
    );
    assert_eq!(
        job(&*store, id).await.state,
        JobState::Running,
        "not rescued while heartbeating"
    );

    wait_until(ms(8000), "completion", || async {
        job(&*store, id).await.state == JobState::Completed
    })
    .await;
    wait_until(ms(1000), "the completion event", || async {
        !events
            .matching(|e| matches!(e, Event::Completed { .. }))
            .is_empty()
    })
    .await;
    let done = events.matching(|e| matches!(e, Event::Completed { .. }));
    assert_eq!(done.len(), 1);
    let at = start.elapsed();
    assert!(
        at >= ms(10_000) && at < ms(10_100),
        "completed at t = 10 s, not {at:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert!(
        events
            .matching(|e| matches!(e, Event::Recovered { .. }))
            .is_empty()
    );
    stop.cancel();
    running.await.unwrap();
}

pub async fn jq_05_variant_stalled_heartbeats_fence_before_unique_key_frees<S: Store>(
    store: Arc<S>,
) {
    let hooked = Arc::new(Hooked::new(Arc::clone(&store)));
    let queue = Queue::new(Arc::clone(&hooked));
    let unique = || {
        NewJob::new(&Work { ms: 0 })
            .unwrap()
            .max_attempts(1)
            .unique_by_payload()
    };
    let id = queue.enqueue_new(unique()).await.unwrap().id();
    let cancelled = Arc::new(AtomicBool::new(false));
    let handler = {
        let cancelled = Arc::clone(&cancelled);
        move |_job: Work, cx: JobContext| {
            let cancelled = Arc::clone(&cancelled);
            async move {
                cx.cancelled().await;
                cancelled.store(true, Ordering::SeqCst);
                Err::<(), _>(JobError::retryable("stopped after cancellation"))
            }
        }
    };
    let worker = queue
        .worker()
        .lease(ms(2000))
        .heartbeat(ms(500))
        .sweep_interval(ms(100))
        .handle(handler)
        .build()
        .unwrap();
    let start = Instant::now();
    let running = tokio::spawn(worker.run(CancellationToken::new()));
    sleep(ms(1000)).await;
    hooked.stall_heartbeats_until(start + ms(600_000));

    // The lease (last renewed at t = 0.5 s) runs to t = 2.5 s; until the
    // old attempt is fenced out the key is held.
    sleep(ms(1000)).await;
    assert!(
        queue.enqueue_new(unique()).await.unwrap().is_duplicate(),
        "duplicate in the window"
    );

    wait_until(ms(2000), "the attempt to be fenced out", || async {
        job(&*store, id).await.state == JobState::Dead
    })
    .await;
    assert!(
        cancelled.load(Ordering::SeqCst),
        "the running attempt's cancellation fired"
    );
    let record = job(&*store, id).await;
    assert_eq!(
        record.last_error().map(|e| e.kind),
        Some(FailureKind::WorkerLost)
    );
    let after = queue.enqueue_new(unique()).await.unwrap();
    assert!(
        !after.is_duplicate(),
        "the key frees once the old attempt is fenced out"
    );
    running.abort();
}

// JQ-06 (in-process form) · A job that kills its worker is not run forever.
// The SIGKILL/abort form on a SQLite file is in tests/crash.rs.
pub async fn jq_06_worker_killing_job_reaches_dead_letters<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let runs = Arc::new(AtomicU32::new(0));
    let id = queue
        .enqueue_new(NewJob::new(&Work { ms: 60_000 }).unwrap().max_attempts(2))
        .await
        .unwrap()
        .id();
    for start in 1..=5u32 {
        let before = runs.load(Ordering::SeqCst);
        let worker = queue
            .worker()
            .id(format!("start-{start}"))
            .lease(ms(1000))
            .heartbeat(ms(300))
            .sweep_interval(ms(100))
            .poll_interval(ms(100))
            .handle(sleepy(Arc::clone(&runs)))
            .build()
            .unwrap();
        let running = tokio::spawn(worker.run(CancellationToken::new()));
        // Long enough for an expired lease to be swept and the job claimed.
        sleep(ms(1500)).await;
        // The crash: the worker dies mid-job with no cleanup.
        running.abort();
        let _ = running.await;
        let expected = before + u32::from(start <= 2);
        assert_eq!(
            runs.load(Ordering::SeqCst),
            expected,
            "executions after start {start}"
        );
    }
    let record = job(&*store, id).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "exactly two executions");
    assert_eq!(record.state, JobState::Dead);
    assert_eq!(record.attempt, 2);
    assert_eq!(
        record.last_error().map(|e| e.kind),
        Some(FailureKind::WorkerLost)
    );
}

// JQ-07 A · Failures are retried on a backoff schedule, not in a hot loop.
pub async fn jq_07a_failures_retry_on_schedule_not_hot_loop<S: Store>(store: Arc<S>) {
    let hooked = Arc::new(Hooked::new(Arc::clone(&store)));
    let queue = Queue::new(Arc::clone(&hooked));
    let id = queue
        .enqueue_new(NewJob::new(&Work { ms: 0 }).unwrap().max_attempts(3))
        .await
        .unwrap()
        .id();
    let origin = Instant::now();
    let runs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let handler = {
        let runs = Arc::clone(&runs);
        move |_job: Work, cx: JobContext| {
            let runs = Arc::clone(&runs);
            async move {
                runs.lock().unwrap().push(origin.elapsed());
                Err::<(), _>(JobError::retryable(format!("failure {}", cx.attempt())))
            }
        }
    };
    let backoff = Backoff::exponential(ms(1000))
        .factor(2.0)
        .jitter(Jitter::None)
        .unlimited_attempts();
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .poll_interval(ms(200))
        .backoff(backoff)
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));

    wait_until(ms(5000), "dead letter", || async {
        job(&*store, id).await.state == JobState::Dead
    })
    .await;
    let polls_by_third = hooked.claims();
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 3, "{runs:?}");
    for (run, due) in runs.iter().zip([0, 1000, 3000]) {
        assert!(
            *run >= ms(due) && *run <= ms(due + 200),
            "run at {run:?}, due at {due} ms"
        );
    }
    assert!(
        polls_by_third <= 16,
        "{polls_by_third} polls in 3 s with a 200 ms interval"
    );
    let record = job(&*store, id).await;
    assert_eq!(record.errors.len(), 3);
    assert_eq!(
        record.last_error().map(|e| e.message.as_str()),
        Some("failure 3")
    );
    stop.cancel();
    running.await.unwrap();
}

// JQ-07 B · 1,000 jobs failing together do not all retry at once.
pub async fn jq_07b_simultaneous_failures_spread_their_retries<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let jobs = (0..1000)
        .map(|_| NewJob::new(&Work { ms: 0 }).unwrap().max_attempts(5))
        .collect();
    queue.enqueue_many(jobs).await.unwrap();
    let handler = |_job: Work, _cx: JobContext| async {
        Err::<(), _>(JobError::retryable("database overloaded"))
    };
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .queue("default", 1000)
        .claim_batch(1000)
        .seed(7)
        .backoff(
            Backoff::exponential(ms(10_000))
                .min_delay(Duration::ZERO)
                .unlimited_attempts(),
        )
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    wait_until(ms(20_000), "1000 first failures", || async {
        events
            .matching(|e| matches!(e, Event::RetryScheduled { attempt: 1, .. }))
            .len()
            == 1000
    })
    .await;
    stop.cancel();
    running.await.unwrap();

    let mut windows: BTreeMap<u64, u32> = BTreeMap::new();
    for (_, event) in events.matching(|e| matches!(e, Event::RetryScheduled { attempt: 1, .. })) {
        let Event::RetryScheduled { delay, .. } = event else {
            unreachable!()
        };
        assert!(delay < ms(10_000), "within [0 s, 10 s): {delay:?}");
        *windows.entry(delay.as_secs()).or_default() += 1;
    }
    let busiest = windows.values().max().copied().unwrap_or(0);
    assert!(
        busiest <= 150,
        "busiest 1 s window holds {busiest} retries: {windows:?}"
    );
}

// JQ-08 · Re-driving a dead job gives it a clean run, once.
pub async fn jq_08_redrive_gives_one_clean_run<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let fixed = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicU32::new(0));
    let handler = {
        let fixed = Arc::clone(&fixed);
        let runs = Arc::clone(&runs);
        move |_job: Work, _cx: JobContext| {
            let fixed = fixed.load(Ordering::SeqCst);
            runs.fetch_add(u32::from(fixed), Ordering::SeqCst);
            async move {
                if fixed {
                    Ok(())
                } else {
                    Err(JobError::retryable("bug in handler"))
                }
            }
        }
    };
    let id = queue
        .enqueue_new(NewJob::new(&Work { ms: 0 }).unwrap().max_attempts(3))
        .await
        .unwrap()
        .id();
    let backoff = Backoff::constant(ms(500))
        .jitter(Jitter::None)
        .unlimited_attempts();
    let worker = || {
        queue
            .worker()
            .poll_interval(ms(100))
            .backoff(backoff.clone())
            .handle(handler.clone())
            .build()
            .unwrap()
    };
    let stop = CancellationToken::new();
    let first = tokio::spawn(worker().run(stop.clone()));
    wait_until(ms(5000), "dead letter", || async {
        job(&*store, id).await.state == JobState::Dead
    })
    .await;
    stop.cancel();
    first.await.unwrap();
    assert_eq!(job(&*store, id).await.errors.len(), 3);
    assert_eq!(queue.dead_letters(10).await.unwrap().len(), 1);

    fixed.store(true, Ordering::SeqCst);
    assert_eq!(queue.redrive(&[id]).await.unwrap(), vec![Redrive::Redriven]);
    let record = job(&*store, id).await;
    assert_eq!(record.state, JobState::Available);
    assert_eq!(
        (record.attempt, record.rescues),
        (0, 0),
        "full budget, no rescues"
    );
    assert!(record.lease.is_none());
    assert_eq!(record.errors.len(), 3, "history kept");
    sleep(ms(1)).await;
    assert_eq!(
        queue.redrive(&[id]).await.unwrap(),
        vec![Redrive::AlreadyQueued],
        "second re-drive is a no-op"
    );

    let stop = CancellationToken::new();
    let second = tokio::spawn(worker().run(stop.clone()));
    wait_until(ms(2000), "completion", || async {
        job(&*store, id).await.state == JobState::Completed
    })
    .await;
    sleep(ms(1000)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "runs once");
    assert_eq!(job(&*store, id).await.attempt, 1);
    stop.cancel();
    second.await.unwrap();
}

// JQ-09 · A forced shutdown hands running jobs back at once.
pub async fn jq_09_forced_shutdown_hands_running_jobs_back<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let id = queue.enqueue(&Work { ms: 60_000 }).await.unwrap().id();
    let cancelled_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let handler = {
        let cancelled_at = Arc::clone(&cancelled_at);
        move |job: Work, cx: JobContext| {
            let cancelled_at = Arc::clone(&cancelled_at);
            async move {
                let watch = cx.clone();
                tokio::spawn(async move {
                    watch.cancelled().await;
                    cancelled_at
                        .lock()
                        .unwrap()
                        .get_or_insert_with(Instant::now);
                });
                sleep(ms(job.ms)).await;
                Ok::<_, JobError>(())
            }
        }
    };
    let worker = |name: &str| {
        queue
            .worker()
            .id(name)
            .poll_interval(ms(200))
            .drain_timeout(ms(2000))
            .handle(handler.clone())
            .build()
            .unwrap()
    };
    let stop_a = CancellationToken::new();
    let a = tokio::spawn(worker("a").run(stop_a.clone()));
    wait_until(ms(1000), "a to start", || async {
        job(&*store, id).await.state == JobState::Running
    })
    .await;
    let stop_b = CancellationToken::new();
    let b = tokio::spawn(worker("b").run(stop_b.clone()));

    let shutdown_at = Instant::now();
    stop_a.cancel();
    sleep(ms(50)).await;
    let late = queue.enqueue(&Work { ms: 10 }).await.unwrap().id();
    wait_until(ms(1000), "the late job", || async {
        job(&*store, late).await.state == JobState::Completed
    })
    .await;
    let late_owner = events.matching(|e| matches!(e, Event::Started { id, .. } if *id == late));
    assert!(
        late_owner
            .iter()
            .all(|(_, e)| matches!(e, Event::Started { worker, .. } if worker == "b")),
        "a stopped claiming at once"
    );

    let report = a.await.unwrap();
    assert_eq!(report.released, 1);
    let fired = cancelled_at
        .lock()
        .unwrap()
        .expect("a's handler was cancelled");
    let fired = fired - shutdown_at;
    assert!(
        fired >= ms(2000) && fired < ms(2050),
        "cancellation at the 2 s deadline, not {fired:?}"
    );

    // Events trail the store writes they report, so wait on the events.
    let started_on_b =
        |e: &Event| matches!(e, Event::Started { id: j, worker, .. } if *j == id && worker == "b");
    wait_until(ms(1000), "b to start the job", || async {
        !events.matching(started_on_b).is_empty()
            && !events
                .matching(|e| matches!(e, Event::Released { .. }))
                .is_empty()
    })
    .await;
    let owner = job(&*store, id).await.lease.map(|l| l.owner);
    assert_eq!(owner.as_deref(), Some("b"));
    let started = events.matching(
        |e| matches!(e, Event::Started { id: j, worker, .. } if *j == id && worker == "b"),
    );
    let (at_b, Event::Started { attempt, .. }) = &started[0] else {
        unreachable!()
    };
    let released = events.matching(|e| matches!(e, Event::Released { .. }));
    let (at_release, _) = released[0];
    assert!(
        at_b.saturating_sub(at_release) <= ms(200),
        "b starts within one poll interval"
    );
    assert_eq!(*attempt, 1, "the interrupted attempt was not charged");
    let record = job(&*store, id).await;
    let note = record
        .errors
        .iter()
        .find(|e| e.kind == FailureKind::Interrupted)
        .expect("history note");
    assert_eq!(note.message, INTERRUPTED_BY_SHUTDOWN);

    stop_b.cancel();
    let _ = tokio::time::timeout(ms(60_000), b).await;
}

// JQ-09 variant · the first worker dies instead (the process form is in
// tests/crash.rs): the second worker starts the job within the lease plus
// one sweep and one poll interval.
pub async fn jq_09_variant_killed_worker_job_restarts_within_lease<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let runs = Arc::new(AtomicU32::new(0));
    let id = queue.enqueue(&Work { ms: 60_000 }).await.unwrap().id();
    let worker = |name: &str| {
        queue
            .worker()
            .id(name)
            .lease(ms(5000))
            .heartbeat(ms(1000))
            .poll_interval(ms(200))
            .sweep_interval(ms(200))
            .handle(sleepy(Arc::clone(&runs)))
            .build()
            .unwrap()
    };
    let a = tokio::spawn(worker("a").run(CancellationToken::new()));
    wait_until(ms(1000), "a to start", || async {
        runs.load(Ordering::SeqCst) == 1
    })
    .await;
    a.abort();
    let _ = a.await;
    let killed_at = Instant::now();
    let b = tokio::spawn(worker("b").run(CancellationToken::new()));
    wait_until(ms(6000), "b to start the job", || async {
        runs.load(Ordering::SeqCst) == 2
    })
    .await;
    assert!(
        killed_at.elapsed() <= ms(5000 + 200 + 200),
        "restarted after {:?}",
        killed_at.elapsed()
    );
    assert_eq!(
        job(&*store, id).await.lease.map(|l| l.owner),
        Some("b".to_owned())
    );
    b.abort();
}

/// A job whose `id` is a number: the payload `{"id":"abc"}` does not decode.
#[derive(Debug, Serialize, Deserialize)]
struct Strict {
    id: u64,
}

impl Job for Strict {
    const KIND: &'static str = "strict";
}

/// The same kind, registered later with a type that accepts any id.
#[derive(Debug, Serialize, Deserialize)]
struct Lenient {
    id: serde_json::Value,
}

impl Job for Lenient {
    const KIND: &'static str = "strict";
}

// JQ-10 · A payload that no longer decodes fails cleanly and is kept intact.
pub async fn jq_10_undecodable_payload_fails_cleanly_and_is_kept<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let bad_json = br#"{"id":"abc"}"#.to_vec();
    let bad_codec = b"\x81\xa2id\x07".to_vec();
    let bad = queue
        .enqueue_new(NewJob::raw("strict", "json", bad_json.clone()))
        .await
        .unwrap()
        .id();
    let alien = queue
        .enqueue_new(NewJob::raw("strict", "msgpack", bad_codec.clone()))
        .await
        .unwrap()
        .id();
    let good: Vec<_> = queue
        .enqueue_many(
            (0..10)
                .map(|i| NewJob::new(&Strict { id: i }).unwrap())
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    let done = Arc::new(AtomicU32::new(0));
    let strict = {
        let done = Arc::clone(&done);
        move |_job: Strict, _cx: JobContext| {
            done.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, JobError>(()) }
        }
    };
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .poll_interval(ms(100))
        .handle(strict)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    wait_until(ms(2000), "the valid jobs", || async {
        done.load(Ordering::SeqCst) == 10
    })
    .await;
    sleep(ms(500)).await;
    for id in &good {
        assert_eq!(job(&*store, *id).await.state, JobState::Completed);
    }
    for (id, bytes, codec) in [(bad, &bad_json, "json"), (alien, &bad_codec, "msgpack")] {
        let record = job(&*store, id).await;
        assert_eq!(record.state, JobState::Dead, "not retried by default");
        assert_eq!(record.attempt, 1);
        assert_eq!(
            record.last_error().map(|e| e.kind),
            Some(FailureKind::Decode)
        );
        assert_eq!(&record.payload, bytes, "stored bytes unchanged");
        assert_eq!(record.codec, codec);
    }
    assert!(!running.is_finished(), "the worker stays up");
    stop.cancel();
    running.await.unwrap();

    let lenient_runs = Arc::new(AtomicU32::new(0));
    let lenient = {
        let runs = Arc::clone(&lenient_runs);
        move |job: Lenient, _cx: JobContext| {
            assert_eq!(job.id, serde_json::json!("abc"));
            runs.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, JobError>(()) }
        }
    };
    assert_eq!(
        queue.redrive(&[bad]).await.unwrap(),
        vec![Redrive::Redriven]
    );
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .poll_interval(ms(100))
        .handle(lenient)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    wait_until(ms(2000), "the re-driven job", || async {
        job(&*store, bad).await.state == JobState::Completed
    })
    .await;
    assert_eq!(lenient_runs.load(Ordering::SeqCst), 1);
    assert_eq!(job(&*store, bad).await.payload, bad_json);
    stop.cancel();
    running.await.unwrap();
}
