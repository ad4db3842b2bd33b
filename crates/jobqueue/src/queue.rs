//! The queue handle: enqueue, inspect, re-drive, observe.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tracing::debug;

use crate::error::{EnqueueError, StoreError};
use crate::job::{FailureKind, Job, JobId, JobRecord, JobState, NewJob};
use crate::store::{Cancel, Enqueued, ListFilter, Purge, QueueStats, Redrive, Store};
use crate::worker::WorkerBuilder;

/// How many events a slow subscriber may fall behind before it misses some.
const EVENT_CAPACITY: usize = 4096;

/// A handle on a job queue kept in a store `S`.
///
/// Cloning is cheap; clones share the store, the counters and the event
/// stream, and workers built from any clone report into them.
pub struct Queue<S> {
    store: Arc<S>,
    shared: Arc<Shared>,
}

impl<S> Clone for Queue<S> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for Queue<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("counters", &self.shared.counters.snapshot())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) counters: Counters,
    /// Woken on every enqueue through this handle, so idle workers in the
    /// same process start new jobs without waiting for their next poll.
    pub(crate) wake: Notify,
}

impl Shared {
    pub(crate) fn emit(&self, event: Event) {
        // No subscriber is not an error: events are optional.
        let _ = self.events.send(event);
    }
}

impl<S: Store> Queue<S> {
    /// A queue on `store`.
    pub fn new(store: S) -> Self {
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let shared = Shared {
            events,
            counters: Counters::default(),
            wake: Notify::new(),
        };
        Self {
            store: Arc::new(store),
            shared: Arc::new(shared),
        }
    }

    /// The store underneath, for operations the queue does not wrap.
    pub fn store(&self) -> &S {
        &self.store
    }

    pub(crate) fn store_arc(&self) -> Arc<S> {
        Arc::clone(&self.store)
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Enqueues a job of kind `J` with default options.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`] if the payload does not encode or the store fails.
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<Enqueued, EnqueueError> {
        self.enqueue_new(NewJob::new(job)?).await
    }

    /// Enqueues a prepared job.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`] if the job's options are invalid or the store fails.
    pub async fn enqueue_new(&self, job: NewJob) -> Result<Enqueued, EnqueueError> {
        let mut out = self.enqueue_many(vec![job]).await?;
        out.pop().ok_or_else(|| EnqueueError::Invalid {
            reason: "the store returned no outcome".to_owned(),
        })
    }

    /// Enqueues many jobs in one store write.
    ///
    /// # Errors
    ///
    /// [`EnqueueError`] if any job is invalid (then none is stored) or the
    /// store fails.
    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, EnqueueError> {
        for job in &jobs {
            job.validate()?;
        }
        let kinds: Vec<String> = jobs.iter().map(|j| j.kind.clone()).collect();

        let outcomes = self.store.enqueue(jobs).await?;

        for (outcome, kind) in outcomes.iter().zip(kinds) {
            match *outcome {
                Enqueued::Inserted(id) => {
                    self.shared
                        .counters
                        .enqueued
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(job.id = %id, job.kind = %kind, "job enqueued");
                    self.shared.emit(Event::Enqueued { id, kind });
                }
                Enqueued::Duplicate(id) => {
                    self.shared
                        .counters
                        .duplicates
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(job.id = %id, job.kind = %kind, "duplicate job refused");
                }
            }
        }
        self.shared.wake.notify_waiters();
        Ok(outcomes)
    }

    /// Reads one job with its full history.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.store.get(id).await
    }

    /// Lists jobs.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.store.list(filter).await
    }

    /// Lists up to `limit` dead letters, oldest id first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        self.store
            .list(&ListFilter::state(JobState::Dead).limit(limit))
            .await
    }

    /// Re-drives dead jobs (see [`Store::redrive`]); safe to repeat.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn redrive(&self, ids: &[JobId]) -> Result<Vec<Redrive>, StoreError> {
        let outcomes = self.store.redrive(ids).await?;
        for (id, outcome) in ids.iter().zip(&outcomes) {
            if *outcome == Redrive::Redriven {
                self.shared
                    .counters
                    .redriven
                    .fetch_add(1, Ordering::Relaxed);
                self.shared.emit(Event::Redriven { id: *id });
            }
        }
        self.shared.wake.notify_waiters();
        Ok(outcomes)
    }

    /// Deletes dead letters; returns how many.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn purge_dead(&self, which: &Purge) -> Result<u64, StoreError> {
        let count = self.store.purge_dead(which).await?;
        self.shared.emit(Event::Purged { count });
        Ok(count)
    }

    /// Cancels waiting jobs.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn cancel(&self, ids: &[JobId]) -> Result<Vec<Cancel>, StoreError> {
        self.store.cancel(ids).await
    }

    /// Reads the gauges from the store.
    ///
    /// # Errors
    ///
    /// [`StoreError`] if the store fails.
    pub async fn stats(&self) -> Result<QueueStats, StoreError> {
        self.store.stats().await
    }

    /// The counters of everything this handle and its workers have done.
    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// Subscribes to the event stream. A receiver that falls more than a
    /// few thousand events behind skips ahead (see
    /// [`broadcast::error::RecvError::Lagged`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// Starts configuring a worker that runs this queue's jobs.
    pub fn worker(&self) -> WorkerBuilder<S> {
        WorkerBuilder::new(self.clone())
    }
}

/// Something that happened to a job, as seen by this process.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A job was stored.
    Enqueued {
        /// The job.
        id: JobId,
        /// Its kind.
        kind: String,
    },
    /// A worker claimed the job and started an attempt.
    Started {
        /// The job.
        id: JobId,
        /// The attempt number.
        attempt: u32,
        /// The lease number.
        lease: i64,
        /// The worker.
        worker: String,
    },
    /// The job completed.
    Completed {
        /// The job.
        id: JobId,
        /// The attempt that succeeded.
        attempt: u32,
    },
    /// An attempt failed and the job will run again.
    RetryScheduled {
        /// The job.
        id: JobId,
        /// The attempt that failed.
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
        /// Why it failed.
        kind: FailureKind,
    },
    /// The handler asked to run later.
    Snoozed {
        /// The job.
        id: JobId,
        /// The wait.
        delay: Duration,
    },
    /// The job became a dead letter.
    DeadLettered {
        /// The job.
        id: JobId,
        /// The last attempt.
        attempt: u32,
        /// Why the last attempt failed.
        kind: FailureKind,
    },
    /// A worker lost its lease: its result, if any, was refused.
    LeaseLost {
        /// The job.
        id: JobId,
        /// The stale lease number.
        lease: i64,
        /// The worker.
        worker: String,
    },
    /// A job whose lease expired was taken back.
    Recovered {
        /// The job.
        id: JobId,
        /// The expired lease.
        lease: i64,
        /// The worker that held it.
        worker: String,
        /// Where it went (available, or dead).
        state: JobState,
    },
    /// A shutdown handed a running job back.
    Released {
        /// The job.
        id: JobId,
        /// The interrupted attempt.
        attempt: u32,
    },
    /// An operator re-drove a dead job.
    Redriven {
        /// The job.
        id: JobId,
    },
    /// Dead letters were purged.
    Purged {
        /// How many.
        count: u64,
    },
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) started: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) snoozed: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) redriven: AtomicU64,
    pub(crate) polls: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> CounterSnapshot {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            enqueued: read(&self.enqueued),
            duplicates: read(&self.duplicates),
            started: read(&self.started),
            completed: read(&self.completed),
            retried: read(&self.retried),
            snoozed: read(&self.snoozed),
            dead: read(&self.dead),
            lease_lost: read(&self.lease_lost),
            recovered: read(&self.recovered),
            released: read(&self.released),
            redriven: read(&self.redriven),
            polls: read(&self.polls),
        }
    }
}

/// The counters at one moment: totals since the queue handle was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// Jobs stored.
    pub enqueued: u64,
    /// Enqueues refused as duplicates.
    pub duplicates: u64,
    /// Attempts started.
    pub started: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Failed attempts scheduled for retry.
    pub retried: u64,
    /// Snoozes.
    pub snoozed: u64,
    /// Jobs dead-lettered (by a worker or by recovery).
    pub dead: u64,
    /// Attempts whose lease was lost.
    pub lease_lost: u64,
    /// Jobs taken back after their lease expired.
    pub recovered: u64,
    /// Running jobs handed back by a shutdown.
    pub released: u64,
    /// Dead jobs re-driven.
    pub redriven: u64,
    /// Claim calls made by workers.
    pub polls: u64,
}
