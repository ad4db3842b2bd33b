//! The in-memory store: for tests, and the reference for other stores.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::trace;

use crate::clock::{Clock, SystemClock, Timestamp};
use crate::error::{LeaseLost, StoreError};
use crate::job::{ErrorEntry, FailureKind, JobId, JobRecord, JobState, Lease, NewJob};
use crate::store::{
    Cancel, ClaimRequest, Completion, Enqueued, Finish, FinishResult, LeaseRef, ListFilter, Purge,
    QueueStats, Redrive, Rescued, Store, worker_lost_message,
};

/// A store that keeps jobs in process memory.
///
/// Nothing survives the process, so it suits tests and ephemeral work; it
/// follows the store rules exactly and is the yardstick the durable stores
/// are tested against. Its clock is injectable ([`InMemoryStore::with_clock`]).
///
/// ```
/// use steadfast_jobqueue::{InMemoryStore, ManualClock, Timestamp};
///
/// let clock = ManualClock::new(Timestamp::from_millis(0));
/// let store = InMemoryStore::with_clock(clock.clone());
/// # let _ = store;
/// ```
pub struct InMemoryStore {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
    interleave_claims: bool,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("interleave_claims", &self.interleave_claims)
            .finish()
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::with_clock(SystemClock)
    }

    /// An empty store on `clock`.
    pub fn with_clock(clock: impl Clock) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            clock: Arc::new(clock),
            interleave_claims: false,
        }
    }

    /// Splits every claim into a read step and a write step with a yield to
    /// the scheduler in between, so that concurrent claimers interleave at
    /// the worst moment. A testing aid: it proves the write step re-checks
    /// what the read step saw.
    pub fn interleave_claims(mut self, interleave: bool) -> Self {
        self.interleave_claims = interleave;
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change
        // (every change is applied in full before the guard drops), so a
        // poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Default)]
struct Inner {
    next_id: i64,
    jobs: BTreeMap<i64, JobRecord>,
    index: Index,
}

/// Secondary structures kept in step with `jobs` by [`Inner::update`].
#[derive(Default)]
struct Index {
    /// Waiting jobs not yet known to be due, per queue: (run_at, id).
    waiting: HashMap<String, BTreeSet<(i64, i64)>>,
    /// Waiting jobs known to be due, per queue, in claim order.
    ready: HashMap<String, BTreeSet<(Reverse<i32>, i64, i64)>>,
    running: BTreeSet<i64>,
    unique: HashMap<String, i64>,
}

impl Index {
    fn remove(&mut self, job: &JobRecord) {
        let id = job.id.get();
        if let Some(set) = self.waiting.get_mut(&job.queue) {
            set.remove(&(job.run_at.as_millis(), id));
        }
        if let Some(set) = self.ready.get_mut(&job.queue) {
            set.remove(&(Reverse(job.priority), job.run_at.as_millis(), id));
        }
        self.running.remove(&id);
    }

    fn insert(&mut self, job: &JobRecord) {
        let id = job.id.get();
        if job.state.is_waiting() {
            self.waiting
                .entry(job.queue.clone())
                .or_default()
                .insert((job.run_at.as_millis(), id));
        } else if job.state == JobState::Running {
            self.running.insert(id);
        }
    }

    /// Moves the queue's due waiting jobs into its ready set.
    fn promote(&mut self, queue: &str, now: Timestamp, jobs: &BTreeMap<i64, JobRecord>) {
        let Some(waiting) = self.waiting.get_mut(queue) else {
            return;
        };
        let ready = self.ready.entry(queue.to_owned()).or_default();
        while let Some(&(run_at, id)) = waiting.first() {
            if run_at > now.as_millis() {
                break;
            }
            waiting.pop_first();
            if let Some(job) = jobs.get(&id) {
                ready.insert((Reverse(job.priority), run_at, id));
            }
        }
    }
}

impl Inner {
    /// Applies `change` to a job and keeps the indexes and uniqueness keys
    /// in step with it.
    fn update<T>(&mut self, id: i64, change: impl FnOnce(&mut JobRecord) -> T) -> Option<T> {
        let job = self.jobs.get_mut(&id)?;
        let was = job.state;
        let was_active = was.is_active();
        self.index.remove(job);

        let out = change(job);
        if job.state != was {
            trace!(job.id = id, from = %was, to = %job.state, lease = job.lease_number, "job state change");
        }

        self.index.insert(job);
        if was_active && !job.state.is_active() {
            if let Some(key) = &job.unique_key {
                if self.index.unique.get(key) == Some(&id) {
                    self.index.unique.remove(key);
                }
            }
        }
        if !was_active && job.state.is_active() {
            if let Some(key) = &job.unique_key {
                self.index.unique.insert(key.clone(), id);
            }
        }
        Some(out)
    }

    fn view(&self, job: &JobRecord, now: Timestamp) -> JobRecord {
        let mut out = job.clone();
        out.state = job.state.effective(job.run_at, now);
        out
    }
}

impl Store for InMemoryStore {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        for job in &jobs {
            job.validate().map_err(|e| StoreError::Invalid {
                reason: e.to_string(),
            })?;
        }

        let now = self.now();
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            if let Some(existing) = job
                .unique_key
                .as_ref()
                .and_then(|k| inner.index.unique.get(k))
            {
                out.push(Enqueued::Duplicate(JobId::new(*existing)));
                continue;
            }

            inner.next_id += 1;
            let id = inner.next_id;
            let record = new_record(id, job, now);
            if let Some(key) = &record.unique_key {
                inner.index.unique.insert(key.clone(), id);
            }
            inner.index.insert(&record);
            inner.jobs.insert(id, record);
            out.push(Enqueued::Inserted(JobId::new(id)));
        }
        Ok(out)
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<JobRecord>, StoreError> {
        let now = self.now();
        let candidates: Vec<(i64, i64)> = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            inner.index.promote(&req.queue, now, &inner.jobs);
            let Some(ready) = inner.index.ready.get(&req.queue) else {
                return Ok(Vec::new());
            };
            ready
                .iter()
                .filter_map(|&(_, _, id)| inner.jobs.get(&id))
                .filter(|job| req.kinds.contains(&job.kind))
                .take(req.limit)
                .map(|job| (job.id.get(), job.lease_number))
                .collect()
        };

        if self.interleave_claims {
            tokio::task::yield_now().await;
        }

        let now = if self.interleave_claims {
            self.now()
        } else {
            now
        };
        let mut inner = self.lock();
        let mut claimed = Vec::with_capacity(candidates.len());
        for (id, seen_lease) in candidates {
            let still_due = inner.jobs.get(&id).is_some_and(|job| {
                job.state.is_waiting() && job.lease_number == seen_lease && job.run_at <= now
            });
            if !still_due {
                continue;
            }
            let job = inner.update(id, |job| {
                job.state = JobState::Running;
                job.attempt = job.attempt.saturating_add(1);
                job.lease_number += 1;
                job.lease = Some(Lease {
                    number: job.lease_number,
                    owner: req.worker.clone(),
                    expires_at: now.saturating_add(req.lease),
                });
                job.attempted_at = Some(now);
                job.clone()
            });
            claimed.extend(job);
        }
        Ok(claimed)
    }

    async fn heartbeat(
        &self,
        leases: &[LeaseRef],
        extend: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        let held = leases
            .iter()
            .map(|lease| {
                let Some(job) = inner.jobs.get_mut(&lease.id.get()) else {
                    return false;
                };
                match job.lease.as_mut() {
                    Some(current)
                        if job.state == JobState::Running && current.number == lease.lease =>
                    {
                        current.expires_at = now.saturating_add(extend);
                        true
                    }
                    _ => false,
                }
            })
            .collect();
        Ok(held)
    }

    async fn finish(&self, completions: Vec<Completion>) -> Result<Vec<FinishResult>, StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        let results = completions
            .into_iter()
            .map(|completion| {
                let LeaseRef { id, lease } = completion.lease;
                let holds = inner.jobs.get(&id.get()).is_some_and(|job| {
                    job.state == JobState::Running
                        && job.lease.as_ref().is_some_and(|l| l.number == lease)
                });
                if !holds {
                    return Err(LeaseLost { id, lease });
                }
                let state = inner
                    .update(id.get(), |job| apply_finish(job, completion.finish, now))
                    .unwrap_or(JobState::Running);
                Ok(state)
            })
            .collect();
        Ok(results)
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Rescued>, StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        let expired: Vec<i64> = inner
            .index
            .running
            .iter()
            .filter(|id| {
                inner
                    .jobs
                    .get(id)
                    .and_then(|job| job.lease.as_ref())
                    .is_some_and(|l| l.expires_at <= now)
            })
            .take(limit)
            .copied()
            .collect();

        let rescued = expired
            .into_iter()
            .filter_map(|id| inner.update(id, |job| rescue(job, now)))
            .collect();
        Ok(rescued)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let now = self.now();
        let inner = self.lock();
        Ok(inner.jobs.get(&id.get()).map(|job| inner.view(job, now)))
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let now = self.now();
        let inner = self.lock();
        let start = filter
            .after
            .map_or(i64::MIN, |id| id.get().saturating_add(1));
        let jobs = inner
            .jobs
            .range(start..)
            .map(|(_, job)| inner.view(job, now))
            .filter(|job| filter.state.is_none_or(|s| s == job.state))
            .filter(|job| filter.queue.as_ref().is_none_or(|q| *q == job.queue))
            .take(filter.effective_limit())
            .collect();
        Ok(jobs)
    }

    async fn redrive(&self, ids: &[JobId]) -> Result<Vec<Redrive>, StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        let outcomes = ids
            .iter()
            .map(|id| {
                let Some(job) = inner.jobs.get(&id.get()) else {
                    return Redrive::NotFound;
                };
                if job.state.is_active() {
                    return Redrive::AlreadyQueued;
                }
                if job.state != JobState::Dead {
                    return Redrive::NotDead(job.state);
                }
                let holder = job
                    .unique_key
                    .as_ref()
                    .and_then(|k| inner.index.unique.get(k));
                if let Some(&other) = holder.filter(|&&other| other != id.get()) {
                    return Redrive::Duplicate(JobId::new(other));
                }
                inner.update(id.get(), |job| redrive(job, now));
                Redrive::Redriven
            })
            .collect();
        Ok(outcomes)
    }

    async fn purge_dead(&self, which: &Purge) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let doomed: Vec<i64> = inner
            .jobs
            .values()
            .filter(|job| job.state == JobState::Dead)
            .filter(|job| match which {
                Purge::All => true,
                Purge::Ids(ids) => ids.contains(&job.id),
                Purge::DiedBefore(t) => job.finalized_at.is_some_and(|at| at < *t),
            })
            .map(|job| job.id.get())
            .collect();
        for id in &doomed {
            inner.jobs.remove(id);
        }
        Ok(doomed.len() as u64)
    }

    async fn cancel(&self, ids: &[JobId]) -> Result<Vec<Cancel>, StoreError> {
        let now = self.now();
        let mut inner = self.lock();
        let outcomes = ids
            .iter()
            .map(|id| {
                let Some(job) = inner.jobs.get(&id.get()) else {
                    return Cancel::NotFound;
                };
                if !job.state.is_waiting() {
                    return Cancel::NotCancellable(job.state);
                }
                inner.update(id.get(), |job| {
                    job.state = JobState::Cancelled;
                    job.finalized_at = Some(now);
                });
                Cancel::Cancelled
            })
            .collect();
        Ok(outcomes)
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let now = self.now();
        let inner = self.lock();
        let mut stats = QueueStats::default();
        for job in inner.jobs.values() {
            let state = job.state.effective(job.run_at, now);
            *stats.depth.entry(state).or_default() += 1;
            if state == JobState::Available {
                let age = now.saturating_duration_since(job.run_at);
                stats.oldest_available_age = stats.oldest_available_age.max(Some(age));
            }
            if let (JobState::Running, Some(lease)) = (state, &job.lease) {
                *stats
                    .running_by_worker
                    .entry(lease.owner.clone())
                    .or_default() += 1;
            }
        }
        Ok(stats)
    }
}

fn new_record(id: i64, job: NewJob, now: Timestamp) -> JobRecord {
    let run_at = job.run_at.unwrap_or_else(|| now.saturating_add(job.delay));
    JobRecord {
        id: JobId::new(id),
        kind: job.kind,
        queue: job.queue,
        codec: job.codec,
        payload: job.payload,
        state: if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        },
        priority: job.priority,
        attempt: 0,
        max_attempts: job.max_attempts,
        rescues: 0,
        lease_number: 0,
        lease: None,
        run_at,
        created_at: now,
        attempted_at: None,
        finalized_at: None,
        unique_key: job.unique_key,
        timeout: job.timeout,
        backoff: job.backoff,
        errors: Vec::new(),
    }
}

/// Applies a worker's report to a running job whose lease was checked.
fn apply_finish(job: &mut JobRecord, finish: Finish, now: Timestamp) -> JobState {
    job.lease = None;
    let entry = |job: &JobRecord, kind, message| ErrorEntry {
        attempt: job.attempt,
        at: now,
        kind,
        message,
    };
    match finish {
        Finish::Complete => {
            job.state = JobState::Completed;
            job.finalized_at = Some(now);
        }
        Finish::Retry {
            delay,
            kind,
            message,
        } => {
            job.errors.push(entry(job, kind, message));
            if job.attempt >= job.max_attempts {
                job.state = JobState::Dead;
                job.finalized_at = Some(now);
            } else {
                job.state = JobState::Retryable;
                job.run_at = now.saturating_add(delay);
            }
        }
        Finish::Dead { kind, message } => {
            job.errors.push(entry(job, kind, message));
            job.state = JobState::Dead;
            job.finalized_at = Some(now);
        }
        Finish::Snooze { delay } => {
            job.attempt = job.attempt.saturating_sub(1);
            job.state = JobState::Scheduled;
            job.run_at = now.saturating_add(delay);
        }
        Finish::Release {
            charge_attempt,
            message,
        } => {
            job.errors
                .push(entry(job, FailureKind::Interrupted, message));
            if !charge_attempt {
                job.attempt = job.attempt.saturating_sub(1);
            }
            if job.attempt >= job.max_attempts {
                job.state = JobState::Dead;
                job.finalized_at = Some(now);
            } else {
                job.state = JobState::Available;
                job.run_at = now;
            }
        }
    }
    job.state
}

fn rescue(job: &mut JobRecord, now: Timestamp) -> Rescued {
    let lease = job.lease.take();
    let (number, worker) = lease.map_or((job.lease_number, String::new()), |l| (l.number, l.owner));
    job.errors.push(ErrorEntry {
        attempt: job.attempt,
        at: now,
        kind: FailureKind::WorkerLost,
        message: worker_lost_message(&worker),
    });
    job.rescues = job.rescues.saturating_add(1);
    if job.attempt >= job.max_attempts {
        job.state = JobState::Dead;
        job.finalized_at = Some(now);
    } else {
        job.state = JobState::Available;
        job.run_at = now;
    }
    Rescued {
        id: job.id,
        lease: number,
        worker,
        state: job.state,
    }
}

fn redrive(job: &mut JobRecord, now: Timestamp) {
    job.state = JobState::Available;
    job.run_at = now;
    job.attempt = 0;
    job.rescues = 0;
    job.lease = None;
    job.finalized_at = None;
}
