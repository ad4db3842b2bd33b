//! The storage contract every backend implements.
//!
//! A store owns the truth about jobs and the clock that decides what is due.
//! Workers never pass timestamps: they pass durations (a lease length, a
//! retry delay) and the store adds them to its own "now". Every operation
//! that touches many jobs takes a batch, so that a SQL backend can do it in
//! one statement or transaction.
//!
//! The rules a store must keep (the in-memory store is the reference):
//!
//! - A claim moves due waiting jobs to running atomically: it increments the
//!   attempt counter and the lease number and sets the lease expiry. Two
//!   claims never return the same (job, lease number).
//! - Every change out of running ([`Store::heartbeat`], [`Store::finish`])
//!   names the lease number it holds and is refused if that is not the
//!   job's current lease and state.
//! - [`Store::rescue_expired`] takes back running jobs whose lease ran out:
//!   back to available with a "worker lost" error, or to dead if no attempt
//!   is left.
//! - A uniqueness key is held by at most one active job, enforced inside
//!   the store's own write, not by a read before it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::clock::Timestamp;
use crate::error::{LeaseLost, StoreError};
use crate::job::{FailureKind, JobId, JobRecord, JobState, NewJob};

pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// What happened to one enqueued job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Enqueued {
    /// The job was stored under this id.
    Inserted(JobId),
    /// An active job already holds the uniqueness key; nothing was added.
    Duplicate(JobId),
}

impl Enqueued {
    /// The id of the new job, or of the existing one for a duplicate.
    pub fn id(self) -> JobId {
        match self {
            Enqueued::Inserted(id) | Enqueued::Duplicate(id) => id,
        }
    }

    /// Whether the job was refused as a duplicate.
    pub fn is_duplicate(self) -> bool {
        matches!(self, Enqueued::Duplicate(_))
    }
}

/// A request for up to `limit` due jobs from one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The queue to claim from.
    pub queue: String,
    /// The kinds the claimer can run; other kinds are left for others.
    pub kinds: Vec<String>,
    /// The most jobs to return.
    pub limit: usize,
    /// The claimer's id, recorded as the lease owner.
    pub worker: String,
    /// How long the lease lasts before it must be extended.
    pub lease: Duration,
}

/// A lease as a worker names it: the job and the lease number it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    /// The job.
    pub id: JobId,
    /// The lease number from the claim.
    pub lease: i64,
}

/// What a worker reports at the end of an attempt.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Finish {
    /// The job succeeded: completed, final.
    Complete,
    /// The attempt failed and the job runs again after `delay`.
    Retry {
        /// The wait before the next attempt.
        delay: Duration,
        /// What kind of failure it was.
        kind: FailureKind,
        /// The error text.
        message: String,
    },
    /// The job failed for good: dead letter.
    Dead {
        /// What kind of failure it was.
        kind: FailureKind,
        /// The error text.
        message: String,
    },
    /// Run again after `delay` without spending an attempt.
    Snooze {
        /// The wait before the job is due again.
        delay: Duration,
    },
    /// Hand the job back, available at once (a shutdown interrupted it).
    Release {
        /// Whether the interrupted attempt still counts.
        charge_attempt: bool,
        /// The note recorded in the error history.
        message: String,
    },
}

/// A worker's report for one lease.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The lease the worker holds.
    pub lease: LeaseRef,
    /// What to do with the job.
    pub finish: Finish,
}

/// A running job that [`Store::rescue_expired`] took back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rescued {
    /// The job.
    pub id: JobId,
    /// The lease that expired.
    pub lease: i64,
    /// The worker that held it.
    pub worker: String,
    /// Where the job went: available, or dead when no attempt was left.
    pub state: JobState,
}

/// What re-driving one dead job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Redrive {
    /// The job is available again with a full attempt budget.
    Redriven,
    /// The job is already waiting or running; nothing changed.
    AlreadyQueued,
    /// The job is completed or cancelled; nothing changed.
    NotDead(JobState),
    /// Another active job holds the job's uniqueness key now.
    Duplicate(JobId),
    /// There is no such job.
    NotFound,
}

/// What cancelling one job did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancel {
    /// The job will not run.
    Cancelled,
    /// The job is running, or already final; nothing changed.
    NotCancellable(JobState),
    /// There is no such job.
    NotFound,
}

/// Which jobs a listing returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListFilter {
    /// Only jobs in this (effective) state.
    pub state: Option<JobState>,
    /// Only jobs in this queue.
    pub queue: Option<String>,
    /// Only jobs with an id greater than this (for paging).
    pub after: Option<JobId>,
    /// At most this many jobs (100 if zero).
    pub limit: usize,
}

impl ListFilter {
    /// Jobs in `state`.
    pub fn state(state: JobState) -> Self {
        Self {
            state: Some(state),
            ..Self::default()
        }
    }

    /// Limits the listing to `limit` jobs.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = limit;
        self
    }

    /// Limits the listing to jobs in `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Starts the listing after job `id`.
    pub fn after(mut self, id: JobId) -> Self {
        self.after = Some(id);
        self
    }

    pub(crate) fn effective_limit(&self) -> usize {
        if self.limit == 0 { 100 } else { self.limit }
    }
}

/// Which dead letters to purge.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Purge {
    /// Every dead job.
    All,
    /// These jobs, if they are dead.
    Ids(Vec<JobId>),
    /// Dead jobs that died before this time.
    DiedBefore(Timestamp),
}

/// Gauges read from the store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The number of jobs per effective state.
    pub depth: BTreeMap<JobState, u64>,
    /// How long the oldest due, unclaimed job has been due.
    pub oldest_available_age: Option<Duration>,
    /// Running jobs per lease owner.
    pub running_by_worker: BTreeMap<String, u64>,
}

impl QueueStats {
    /// The number of jobs in `state`.
    pub fn count(&self, state: JobState) -> u64 {
        self.depth.get(&state).copied().unwrap_or(0)
    }

    /// The number of jobs that may yet run ([`JobState::is_active`]): when it reaches
    /// zero, everything enqueued so far has finished one way or another.
    pub fn active(&self) -> u64 {
        self.depth
            .iter()
            .filter(|(state, _)| state.is_active())
            .map(|(_, count)| count)
            .sum()
    }
}

/// The outcome of a batch of completions: the state each job moved to, or
/// the lease error if the worker's lease was stale.
pub type FinishResult = Result<JobState, LeaseLost>;

/// A place to keep jobs: in memory, in a SQLite file, in PostgreSQL.
///
/// See the [module documentation](self) for the rules an implementation
/// keeps. All methods are cancel safe in the sense that a dropped call
/// either took effect completely or not at all.
pub trait Store: Send + Sync + 'static {
    /// The store's current time, which decides what is due.
    fn now(&self) -> Timestamp;

    /// Stores jobs, returning one outcome per job in order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails; then none of the jobs is stored.
    fn enqueue(
        &self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send;

    /// Claims up to `req.limit` due jobs, highest priority first, then
    /// oldest run time, then lowest id.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails; then nothing was claimed.
    fn claim(
        &self,
        req: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Extends the given leases by `extend` from now; returns, per lease,
    /// whether it is still held.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails.
    fn heartbeat(
        &self,
        leases: &[LeaseRef],
        extend: Duration,
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send;

    /// Applies the outcomes of attempts, each guarded by its lease.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails; a stale lease is not an error
    /// of the call but a [`LeaseLost`] in its slot.
    fn finish(
        &self,
        completions: Vec<Completion>,
    ) -> impl Future<Output = Result<Vec<FinishResult>, StoreError>> + Send;

    /// Takes back up to `limit` running jobs whose lease has expired.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails.
    fn rescue_expired(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Rescued>, StoreError>> + Send;

    /// Reads one job.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails or the row is unreadable.
    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send;

    /// Lists jobs in id order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails or a row is unreadable.
    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send;

    /// Makes dead jobs available again with a full attempt budget and no
    /// rescues, keeping their error history. Idempotent: a job that is
    /// already queued is left alone.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails.
    fn redrive(
        &self,
        ids: &[JobId],
    ) -> impl Future<Output = Result<Vec<Redrive>, StoreError>> + Send;

    /// Deletes dead jobs; returns how many.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails.
    fn purge_dead(&self, which: &Purge) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Cancels waiting jobs.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails.
    fn cancel(&self, ids: &[JobId])
    -> impl Future<Output = Result<Vec<Cancel>, StoreError>> + Send;

    /// Reads the gauges.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the backend fails.
    fn stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;

    /// A signal that jobs may have become due in `queue` because of
    /// something outside this process (a notification from another
    /// machine). Workers note the current value before each claim and claim
    /// again as soon as it changes. `None` (the default): the store has no
    /// such channel and workers rely on in-process wake-ups and polling.
    fn wakeups(&self, queue: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        let _ = queue;
        None
    }
}

/// The history note recorded when a lease expires.
pub(crate) fn worker_lost_message(worker: &str) -> String {
    format!("worker lost: lease held by {worker} expired without a heartbeat")
}

/// A shared store is a store: several [`crate::Queue`]s (or a queue and a
/// test harness) can work on one `Arc`'d store.
impl<S: Store> Store for std::sync::Arc<S> {
    fn now(&self) -> Timestamp {
        (**self).now()
    }

    fn enqueue(
        &self,
        jobs: Vec<NewJob>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send {
        (**self).enqueue(jobs)
    }

    fn claim(
        &self,
        req: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send {
        (**self).claim(req)
    }

    fn heartbeat(
        &self,
        leases: &[LeaseRef],
        extend: Duration,
    ) -> impl Future<Output = Result<Vec<bool>, StoreError>> + Send {
        (**self).heartbeat(leases, extend)
    }

    fn finish(
        &self,
        completions: Vec<Completion>,
    ) -> impl Future<Output = Result<Vec<FinishResult>, StoreError>> + Send {
        (**self).finish(completions)
    }

    fn rescue_expired(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Rescued>, StoreError>> + Send {
        (**self).rescue_expired(limit)
    }

    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send {
        (**self).get(id)
    }

    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send {
        (**self).list(filter)
    }

    fn redrive(
        &self,
        ids: &[JobId],
    ) -> impl Future<Output = Result<Vec<Redrive>, StoreError>> + Send {
        (**self).redrive(ids)
    }

    fn purge_dead(&self, which: &Purge) -> impl Future<Output = Result<u64, StoreError>> + Send {
        (**self).purge_dead(which)
    }

    fn cancel(
        &self,
        ids: &[JobId],
    ) -> impl Future<Output = Result<Vec<Cancel>, StoreError>> + Send {
        (**self).cancel(ids)
    }

    fn stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send {
        (**self).stats()
    }

    fn wakeups(&self, queue: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        (**self).wakeups(queue)
    }
}

/// Reads a state column, naming the job whose stored state no longer parses.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn parse_state(id: JobId, text: &str) -> Result<JobState, StoreError> {
    text.parse()
        .map_err(|e: crate::job::UnknownState| StoreError::Corrupt {
            id,
            field: "state",
            source: e.into(),
        })
}

/// Runs one database call, on tokio's blocking pool when `paused_time_safe` is set: a
/// query in flight there keeps paused test time from jumping ahead of it.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) async fn run_database_call<T, F>(
    paused_time_safe: bool,
    work: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    if !paused_time_safe {
        return work.await;
    }
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || handle.block_on(work))
        .await
        .map_err(|e| StoreError::backend("a blocking database call", e))?
}
