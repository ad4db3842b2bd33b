//! Handler outcomes, scheduling, dead-letter management and observability,
//! on the in-memory store and on SQLite under paused time.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steadfast_backoff::{Backoff, Jitter};
use steadfast_jobqueue::{
    BuildError, Cancel, Event, FailureKind, Job, JobContext, JobError, JobRequest, JobState,
    KindOptions, ListFilter, NewJob, Outcome, Purge, Queue, Store,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

use common::{EventLog, job, wait_until};

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Task {
    n: u32,
}

impl Job for Task {
    const KIND: &'static str = "task";
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn settle<S: Store>(store: &S, id: steadfast_jobqueue::JobId, state: JobState) {
    wait_until(ms(60_000), "the job to settle", || async {
        job(store, id).await.state == state
    })
    .await;
}

async fn snooze_runs_later_without_spending_an_attempt<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let id = queue
        .enqueue_new(NewJob::new(&Task { n: 0 }).unwrap().max_attempts(1))
        .await
        .unwrap()
        .id();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let origin = Instant::now();
    let handler = {
        let runs = Arc::clone(&runs);
        move |_job: Task, cx: JobContext| {
            runs.lock().unwrap().push((origin.elapsed(), cx.attempt()));
            let first = runs.lock().unwrap().len() == 1;
            async move {
                Ok::<_, JobError>(if first {
                    Outcome::Snooze(ms(5000))
                } else {
                    Outcome::Complete
                })
            }
        }
    };
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .poll_interval(ms(100))
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    sleep(ms(200)).await;
    assert_eq!(job(&*store, id).await.state, JobState::Scheduled);
    settle(&*store, id, JobState::Completed).await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 2);
    assert_eq!(
        (runs[0].1, runs[1].1),
        (1, 1),
        "the snooze spent no attempt"
    );
    assert!(
        runs[1].0 >= ms(5000),
        "ran again after the snooze: {:?}",
        runs[1].0
    );
    assert_eq!(queue.counters().snoozed, 1);
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local snooze_runs_later_without_spending_an_attempt);

async fn panic_is_a_failed_attempt_and_the_worker_survives<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let id = queue
        .enqueue_new(NewJob::new(&Task { n: 0 }).unwrap().max_attempts(2))
        .await
        .unwrap()
        .id();
    let handler = |_job: Task, cx: JobContext| async move {
        if cx.attempt() == 1 {
            panic!("boom on attempt 1");
        }
        Ok::<_, JobError>(())
    };
    let stop = CancellationToken::new();
    let backoff = Backoff::constant(ms(100))
        .jitter(Jitter::None)
        .unlimited_attempts();
    let worker = queue
        .worker()
        .poll_interval(ms(50))
        .backoff(backoff)
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    settle(&*store, id, JobState::Completed).await;
    let record = job(&*store, id).await;
    assert_eq!(record.attempt, 2);
    assert_eq!(record.errors[0].kind, FailureKind::Panicked);
    assert!(
        record.errors[0].message.contains("boom on attempt 1"),
        "{}",
        record.errors[0].message
    );
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local panic_is_a_failed_attempt_and_the_worker_survives);

async fn permanent_error_goes_straight_to_dead_letters<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let id = queue.enqueue(&Task { n: 0 }).await.unwrap().id();
    let handler = |_job: Task, _cx: JobContext| async {
        Err::<(), _>(JobError::permanent(std::io::Error::other("account closed")))
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        queue
            .worker()
            .handle(handler)
            .build()
            .unwrap()
            .run(stop.clone()),
    );
    settle(&*store, id, JobState::Dead).await;
    let record = job(&*store, id).await;
    assert_eq!(record.attempt, 1, "no retry");
    assert_eq!(record.errors[0].kind, FailureKind::Permanent);
    assert_eq!(record.errors[0].message, "account closed");
    sleep(ms(10)).await;
    assert_eq!(
        events
            .matching(|e| matches!(e, Event::DeadLettered { .. }))
            .len(),
        1
    );
    assert_eq!(queue.counters().dead, 1);
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local permanent_error_goes_straight_to_dead_letters);

async fn retry_after_and_per_job_backoff_set_the_delay<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let hinted = queue.enqueue(&Task { n: 1 }).await.unwrap().id();
    let custom = Backoff::constant(ms(7000)).jitter(Jitter::None);
    let per_job = queue
        .enqueue_new(NewJob::new(&Task { n: 2 }).unwrap().backoff(custom))
        .await
        .unwrap()
        .id();
    let per_kind = queue.enqueue(&Task { n: 3 }).await.unwrap().id();
    let handler = |job: Task, _cx: JobContext| async move {
        match job.n {
            1 => Err::<(), _>(JobError::retry_after("rate limited", ms(42_000))),
            _ => Err(JobError::retryable("flaky")),
        }
    };
    let kind_backoff = Backoff::constant(ms(3000)).jitter(Jitter::None);
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .handle_with(handler, KindOptions::default().backoff(kind_backoff))
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    wait_until(ms(1000), "three failures", || async {
        events
            .matching(|e| matches!(e, Event::RetryScheduled { .. }))
            .len()
            == 3
    })
    .await;
    let delay_of = |id| {
        events
            .matching(|e| matches!(e, Event::RetryScheduled { id: j, .. } if *j == id))
            .into_iter()
            .find_map(|(_, e)| match e {
                Event::RetryScheduled { delay, .. } => Some(delay),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(delay_of(hinted), ms(42_000), "explicit retry-after");
    assert_eq!(delay_of(per_job), ms(7000), "the job's own policy");
    assert_eq!(delay_of(per_kind), ms(3000), "the kind's policy");
    assert_eq!(job(&*store, hinted).await.state, JobState::Retryable);
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local retry_after_and_per_job_backoff_set_the_delay);

async fn hard_timeout_cancels_the_attempt<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let id = queue
        .enqueue_new(
            NewJob::new(&Task { n: 0 })
                .unwrap()
                .timeout(ms(2000))
                .max_attempts(1),
        )
        .await
        .unwrap()
        .id();
    let saw_cancel = Arc::new(AtomicU32::new(0));
    let handler = {
        let saw_cancel = Arc::clone(&saw_cancel);
        move |_job: Task, cx: JobContext| {
            let saw_cancel = Arc::clone(&saw_cancel);
            async move {
                let token = cx.cancellation_token();
                tokio::spawn(async move {
                    token.cancelled().await;
                    saw_cancel.fetch_add(1, Ordering::SeqCst);
                });
                sleep(ms(600_000)).await;
                Ok::<_, JobError>(())
            }
        }
    };
    let stop = CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(
        queue
            .worker()
            .handle(handler)
            .build()
            .unwrap()
            .run(stop.clone()),
    );
    settle(&*store, id, JobState::Dead).await;
    assert!(started.elapsed() < ms(3000));
    let record = job(&*store, id).await;
    assert_eq!(record.errors[0].kind, FailureKind::TimedOut);
    sleep(ms(10)).await;
    assert_eq!(
        saw_cancel.load(Ordering::SeqCst),
        1,
        "the handler was told to stop"
    );
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local hard_timeout_cancels_the_attempt);

async fn tower_middleware_wraps_a_handler<S: Store>(store: Arc<S>) {
    use tower::ServiceBuilder;

    let queue = Queue::new(Arc::clone(&store));
    let slow = queue.enqueue(&Task { n: 10_000 }).await.unwrap().id();
    let quick = queue.enqueue(&Task { n: 10 }).await.unwrap().id();
    let service = ServiceBuilder::new()
        .timeout(ms(1000))
        .concurrency_limit(4)
        .service_fn(|req: JobRequest<Task>| async move {
            sleep(ms(u64::from(req.job.n))).await;
            Ok::<_, JobError>(Outcome::Complete)
        });
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .backoff(
            Backoff::constant(ms(60_000))
                .jitter(Jitter::None)
                .unlimited_attempts(),
        )
        .register(service)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    settle(&*store, quick, JobState::Completed).await;
    settle(&*store, slow, JobState::Retryable).await;
    let record = job(&*store, slow).await;
    assert_eq!(record.errors[0].kind, FailureKind::Failed);
    assert!(
        record.errors[0].message.contains("timed out"),
        "{}",
        record.errors[0].message
    );
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local tower_middleware_wraps_a_handler);

async fn scheduled_jobs_priorities_and_queues<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let later = queue
        .enqueue_new(NewJob::new(&Task { n: 0 }).unwrap().delay(ms(10_000)))
        .await
        .unwrap()
        .id();
    let low = queue
        .enqueue_new(NewJob::new(&Task { n: 1 }).unwrap().priority(-5))
        .await
        .unwrap()
        .id();
    let high = queue
        .enqueue_new(NewJob::new(&Task { n: 2 }).unwrap().priority(5))
        .await
        .unwrap()
        .id();
    let mid = queue.enqueue(&Task { n: 3 }).await.unwrap().id();
    let other = queue
        .enqueue_new(NewJob::new(&Task { n: 4 }).unwrap().queue("emails"))
        .await
        .unwrap()
        .id();
    assert_eq!(job(&*store, later).await.state, JobState::Scheduled);

    let order = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let order = Arc::clone(&order);
        move |_job: Task, cx: JobContext| {
            order.lock().unwrap().push(cx.id());
            async { Ok::<_, JobError>(()) }
        }
    };
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .queue("default", 1)
        .claim_batch(1)
        .poll_interval(ms(100))
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));
    settle(&*store, later, JobState::Completed).await;
    assert_eq!(
        *order.lock().unwrap(),
        vec![high, mid, low, later],
        "priority order, then the scheduled job"
    );
    assert_eq!(
        job(&*store, other).await.state,
        JobState::Available,
        "other queues are left alone"
    );
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local scheduled_jobs_priorities_and_queues);

async fn dead_letters_are_listed_purged_and_waiting_jobs_cancelled<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    let events = EventLog::start(&queue);
    let doomed: Vec<_> = queue
        .enqueue_many((0..3).map(|n| NewJob::new(&Task { n }).unwrap()).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    let waiting = queue
        .enqueue_new(NewJob::new(&Task { n: 9 }).unwrap().delay(ms(60_000)))
        .await
        .unwrap()
        .id();
    let handler = |_job: Task, _cx: JobContext| async { Err::<(), _>(JobError::permanent("no")) };
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        queue
            .worker()
            .handle(handler)
            .build()
            .unwrap()
            .run(stop.clone()),
    );
    wait_until(ms(1000), "three dead letters", || async {
        queue.dead_letters(10).await.unwrap().len() == 3
    })
    .await;
    stop.cancel();
    running.await.unwrap();

    assert_eq!(
        queue.cancel(&[waiting, doomed[0]]).await.unwrap(),
        vec![Cancel::Cancelled, Cancel::NotCancellable(JobState::Dead)]
    );
    assert_eq!(
        queue
            .purge_dead(&Purge::Ids(vec![doomed[0]]))
            .await
            .unwrap(),
        1
    );
    assert_eq!(queue.dead_letters(10).await.unwrap().len(), 2);
    assert_eq!(queue.purge_dead(&Purge::All).await.unwrap(), 2);
    assert!(queue.dead_letters(10).await.unwrap().is_empty());
    assert_eq!(
        job(&*store, waiting).await.state,
        JobState::Cancelled,
        "cancelled jobs are kept"
    );
    let listed = queue
        .list(&ListFilter::state(JobState::Cancelled))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    sleep(ms(10)).await;
    assert_eq!(
        events.matching(|e| matches!(e, Event::Purged { .. })).len(),
        2
    );
}
on_both_stores!(local dead_letters_are_listed_purged_and_waiting_jobs_cancelled);

async fn counters_and_gauges_reflect_the_queue<S: Store>(store: Arc<S>) {
    let queue = Queue::new(Arc::clone(&store));
    for n in 0..4 {
        queue.enqueue(&Task { n }).await.unwrap();
    }
    queue
        .enqueue_new(NewJob::new(&Task { n: 9 }).unwrap().delay(ms(60_000)))
        .await
        .unwrap();
    sleep(ms(3000)).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Available), 4);
    assert_eq!(stats.count(JobState::Scheduled), 1);
    assert_eq!(
        stats.oldest_available_age,
        Some(ms(3000)),
        "age of the oldest available job"
    );

    let handler = |job: Task, _cx: JobContext| async move {
        sleep(ms(1000)).await;
        if job.n == 0 {
            Err(JobError::permanent("bad"))
        } else {
            Ok::<_, JobError>(())
        }
    };
    let stop = CancellationToken::new();
    let running = tokio::spawn(
        queue
            .worker()
            .id("gauge")
            .handle(handler)
            .build()
            .unwrap()
            .run(stop.clone()),
    );
    sleep(ms(500)).await;
    let stats = queue.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Running), 4);
    assert_eq!(stats.running_by_worker.get("gauge"), Some(&4));
    assert_eq!(stats.oldest_available_age, None);
    sleep(ms(1000)).await;
    let counters = queue.counters();
    assert_eq!(
        (
            counters.enqueued,
            counters.started,
            counters.completed,
            counters.dead
        ),
        (5, 4, 3, 1)
    );
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local counters_and_gauges_reflect_the_queue);

#[test]
fn builder_rejects_unworkable_settings() {
    let queue = Queue::new(steadfast_jobqueue::InMemoryStore::new());
    let handler = |_job: Task, _cx: JobContext| async { Ok::<_, JobError>(()) };
    assert_eq!(queue.worker().build().unwrap_err(), BuildError::NoHandlers);
    let err = queue
        .worker()
        .lease(ms(1000))
        .heartbeat(ms(1000))
        .handle(handler)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("heartbeat"), "{err}");
    let err = queue
        .worker()
        .queue("default", 0)
        .handle(handler)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("concurrency"), "{err}");
    let err = queue
        .worker()
        .handle(handler)
        .handle(handler)
        .build()
        .unwrap_err();
    assert_eq!(err, BuildError::DuplicateKind("task".into()));
}

#[tokio::test]
async fn invalid_jobs_are_refused_with_the_rule() {
    let queue = Queue::new(steadfast_jobqueue::InMemoryStore::new());
    let err = queue
        .enqueue_new(NewJob::new(&Task { n: 0 }).unwrap().queue(""))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("queue name"), "{err}");
    assert!(queue.list(&ListFilter::default()).await.unwrap().is_empty());
}

async fn slow_outcome_writes_hold_back_new_claims<S: Store>(store: Arc<S>) {
    let hooked = Arc::new(common::Hooked::new(Arc::clone(&store)));
    hooked.delay_finishes(ms(1000));
    let queue = Queue::new(Arc::clone(&hooked));
    queue
        .enqueue_many((0..20).map(|n| NewJob::new(&Task { n }).unwrap()).collect())
        .await
        .unwrap();
    let handler = |_job: Task, _cx: JobContext| async { Ok::<_, JobError>(()) };
    let stop = CancellationToken::new();
    let worker = queue
        .worker()
        .queue("default", 4)
        .handle(handler)
        .build()
        .unwrap();
    let running = tokio::spawn(worker.run(stop.clone()));

    sleep(ms(500)).await;
    let counters = queue.counters();
    assert_eq!(
        counters.started, 4,
        "no new claim while outcomes are unwritten"
    );
    assert_eq!(queue.stats().await.unwrap().count(JobState::Running), 4);
    wait_until(ms(30_000), "all jobs", || async {
        queue.counters().completed == 20
    })
    .await;
    stop.cancel();
    running.await.unwrap();
}
on_both_stores!(local slow_outcome_writes_hold_back_new_claims);
