//! The store-protocol property: a random sequence of claims, outcomes,
//! heartbeats, crashes, clock jumps and sweeps against any store, checking
//! the invariants after every step. Shared so every store runs it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use steadfast_jobqueue::{
    ClaimRequest, Completion, FailureKind, Finish, JobId, JobState, LeaseLost, LeaseRef,
    ListFilter, ManualClock, NewJob, Store,
};

pub const JOBS: usize = 12;
pub const MAX_ATTEMPTS: u32 = 3;
pub const LEASE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug)]
pub enum Op {
    Claim { worker: u8, limit: u8 },
    Complete { pick: u16 },
    Fail { pick: u16, delay_ms: u16 },
    Snooze { pick: u16, delay_ms: u16 },
    Heartbeat { worker: u8 },
    Crash { worker: u8 },
    Advance { ms: u16 },
    Sweep,
}

pub fn op() -> impl Strategy<Value = Op> {
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

pub async fn run_ops<S: Store>(
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
