//! Property test of the store protocol: random claims, handler failures,
//! snoozes, heartbeats, worker crashes between claim and completion, and
//! clock jumps, on the in-memory store and on SQLite. After every step: no
//! job is lost, no job has two live leases, attempts never exceed the
//! maximum, and a completed job stays completed. At the end every job is
//! completed or dead.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use steadfast_jobqueue::{
    ClaimRequest, Completion, FailureKind, Finish, InMemoryStore, JobId, JobState, LeaseLost,
    LeaseRef, ListFilter, ManualClock, NewJob, SqliteStore, Store, Timestamp,
};

const JOBS: usize = 12;
const MAX_ATTEMPTS: u32 = 3;
const LEASE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
enum Op {
    Claim { worker: u8, limit: u8 },
    Complete { pick: u16 },
    Fail { pick: u16, delay_ms: u16 },
    Snooze { pick: u16, delay_ms: u16 },
    Heartbeat { worker: u8 },
    Crash { worker: u8 },
    Advance { ms: u16 },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3u8, 1..5u8).prop_map(|(worker, limit)| Op::Claim { worker, limit }),
        3 => any::<u16>().prop_map(|pick| Op::Complete { pick }),
        3 => (any::<u16>(), 0..3000u16).prop_map(|(pick, delay_ms)| Op::Fail { pick, delay_ms }),
        1 => (any::<u16>(), 0..3000u16).prop_map(|(pick, delay_ms)| Op::Snooze { pick, delay_ms }),
        2 => (0..3u8).prop_map(|worker| Op::Heartbeat { worker }),
        1 => (0..3u8).prop_map(|worker| Op::Crash { worker }),
        3 => (0..4000u16).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Sweep),
    ]
}

/// A lease some simulated worker believes it holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    worker: u8,
    lease: LeaseRef,
}

struct Model {
    ids: Vec<JobId>,
    held: Vec<Held>,
    claimed: HashSet<(JobId, i64)>,
    completed: HashSet<JobId>,
}

async fn run_ops<S: Store>(
    store: Arc<S>,
    clock: ManualClock,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let jobs = (0..JOBS)
        .map(|i| NewJob::raw("k", "json", format!("{i}").into_bytes()).max_attempts(MAX_ATTEMPTS))
        .collect();
    let ids = store
        .enqueue(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    let mut model = Model {
        ids,
        held: Vec::new(),
        claimed: HashSet::new(),
        completed: HashSet::new(),
    };

    for op in ops {
        step(&*store, &clock, &mut model, op).await?;
        check(&*store, &model).await?;
    }

    // Every worker dies; after the leases run out, recovery and a healthy
    // worker finish the queue.
    model.held.clear();
    clock.advance(LEASE * 2);
    store.rescue_expired(usize::MAX).await.unwrap();
    for _ in 0..(JOBS as u32 * MAX_ATTEMPTS * 4) {
        clock.advance(Duration::from_secs(10));
        let claimed = store.claim(&request(9, JOBS)).await.unwrap();
        let done = claimed
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
    }
    check(&*store, &model).await?;
    for id in &model.ids {
        let job = store.get(*id).await.unwrap().expect("job kept");
        prop_assert!(
            matches!(job.state, JobState::Completed | JobState::Dead),
            "job {id} ended {:?}",
            job.state
        );
    }
    Ok(())
}

fn request(worker: u8, limit: usize) -> ClaimRequest {
    ClaimRequest {
        queue: "default".into(),
        kinds: vec!["k".into()],
        limit,
        worker: format!("w{worker}"),
        lease: LEASE,
    }
}

async fn step<S: Store>(
    store: &S,
    clock: &ManualClock,
    model: &mut Model,
    op: Op,
) -> Result<(), TestCaseError> {
    let take = |model: &mut Model, pick: u16| -> Option<Held> {
        if model.held.is_empty() {
            return None;
        }
        let index = usize::from(pick) % model.held.len();
        Some(model.held.swap_remove(index))
    };
    // Fencing: a report is accepted exactly when its lease is the job's
    // current one.
    let finish_one = |held: Held, finish: Finish| async move {
        let before = store.get(held.lease.id).await.unwrap().unwrap();
        let current = before.state == JobState::Running && before.lease_number == held.lease.lease;
        let result = store
            .finish(vec![Completion {
                lease: held.lease,
                finish,
            }])
            .await
            .unwrap();
        let result = result.into_iter().next().unwrap();
        assert_eq!(
            result.is_ok(),
            current,
            "stale lease accepted or current lease refused: {held:?}"
        );
        result
    };

    match op {
        Op::Claim { worker, limit } => {
            for job in store
                .claim(&request(worker, usize::from(limit)))
                .await
                .unwrap()
            {
                prop_assert!(
                    model.claimed.insert((job.id, job.lease_number)),
                    "lease handed out twice"
                );
                prop_assert!(
                    !model.completed.contains(&job.id),
                    "completed job claimed again"
                );
                model.held.push(Held {
                    worker,
                    lease: LeaseRef {
                        id: job.id,
                        lease: job.lease_number,
                    },
                });
            }
        }
        Op::Complete { pick } => {
            if let Some(held) = take(model, pick) {
                if let Ok(state) = finish_one(held, Finish::Complete).await {
                    prop_assert_eq!(state, JobState::Completed);
                    model.completed.insert(held.lease.id);
                }
            }
        }
        Op::Fail { pick, delay_ms } => {
            if let Some(held) = take(model, pick) {
                let finish = Finish::Retry {
                    delay: Duration::from_millis(u64::from(delay_ms)),
                    kind: FailureKind::Failed,
                    message: "random failure".into(),
                };
                let result = finish_one(held, finish).await;
                prop_assert!(result != Ok(JobState::Completed));
            }
        }
        Op::Snooze { pick, delay_ms } => {
            if let Some(held) = take(model, pick) {
                let delay = Duration::from_millis(u64::from(delay_ms));
                let result = finish_one(held, Finish::Snooze { delay }).await;
                if let Err(LeaseLost { id, .. }) = result {
                    prop_assert_eq!(id, held.lease.id);
                }
            }
        }
        Op::Heartbeat { worker } => {
            let mine: Vec<LeaseRef> = model
                .held
                .iter()
                .filter(|h| h.worker == worker)
                .map(|h| h.lease)
                .collect();
            let held = store.heartbeat(&mine, LEASE).await.unwrap();
            for (lease, ok) in mine.iter().zip(held) {
                let job = store.get(lease.id).await.unwrap().unwrap();
                let current = job.state == JobState::Running && job.lease_number == lease.lease;
                prop_assert_eq!(
                    ok,
                    current,
                    "heartbeat must succeed exactly for the current lease"
                );
            }
        }
        Op::Crash { worker } => model.held.retain(|h| h.worker != worker),
        Op::Advance { ms } => clock.advance(Duration::from_millis(u64::from(ms))),
        Op::Sweep => {
            for rescued in store.rescue_expired(usize::MAX).await.unwrap() {
                prop_assert!(
                    !model.completed.contains(&rescued.id),
                    "completed job rescued"
                );
            }
        }
    }
    Ok(())
}

async fn check<S: Store>(store: &S, model: &Model) -> Result<(), TestCaseError> {
    let jobs = store
        .list(&ListFilter::default().limit(1000))
        .await
        .unwrap();
    prop_assert_eq!(jobs.len(), JOBS, "no job lost");
    let mut live: HashMap<JobId, usize> = HashMap::new();
    for job in &jobs {
        prop_assert!(
            job.attempt <= job.max_attempts,
            "job {} at attempt {}",
            job.id,
            job.attempt
        );
        if model.completed.contains(&job.id) {
            prop_assert_eq!(job.state, JobState::Completed, "completed is final");
        }
        for held in &model.held {
            if held.lease.id == job.id
                && job.state == JobState::Running
                && held.lease.lease == job.lease_number
            {
                *live.entry(job.id).or_default() += 1;
            }
        }
    }
    prop_assert!(
        live.values().all(|&n| n <= 1),
        "two live leases on one job: {live:?}"
    );
    Ok(())
}

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
