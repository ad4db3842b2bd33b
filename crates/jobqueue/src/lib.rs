//! A reliable background job queue that loses no job when a worker crashes.
//!
//! Jobs are typed ([`Job`]): a kind name plus a serde payload, stored as raw
//! bytes and decoded only when a handler runs, so a payload that no longer
//! decodes is a recorded failure of that job, never a crashed worker.
//! Handlers are [`tower::Service`]s (or plain async functions), one per kind.
//!
//! What makes it reliable:
//!
//! - **Leases with fencing.** A claim takes a lease with a fresh lease
//!   number; heartbeats extend it; every state change out of running must
//!   present the current number, so a stalled worker's late result is
//!   refused and its handler is told to stop.
//! - **Crash recovery without a manual call.** Every worker sweeps for
//!   expired leases; a crashed worker's jobs run again within about one
//!   lease period plus a sweep interval.
//! - **Attempts counted at claim.** A job that kills its worker every time
//!   still runs out of attempts and becomes a dead letter.
//! - **Retries on a backoff schedule** from [`steadfast_backoff`], jittered
//!   by default, overridable per kind and per job, honouring an explicit
//!   retry-after; permanent errors and undecodable payloads go straight to
//!   dead letters, which can be listed, inspected, re-driven (idempotently)
//!   and purged.
//! - **Unique jobs** enforced by the store's own write.
//! - **Graceful shutdown** through a [`CancellationToken`]: stop claiming,
//!   drain until a deadline, then cancel and hand jobs straight back.
//! - **Stores behind one trait** ([`Store`]): [`InMemoryStore`] (tests, with
//!   an injectable [`Clock`]) and, with the default `sqlite` feature, a
//!   durable `SqliteStore`. The store's clock decides what is due.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//!
//! use serde::{Deserialize, Serialize};
//! use steadfast_jobqueue::{InMemoryStore, Job, JobContext, JobError, Queue, TokioClock};
//! use tokio_util::sync::CancellationToken;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Greet {
//!     name: String,
//! }
//!
//! impl Job for Greet {
//!     const KIND: &'static str = "greet";
//! }
//!
//! async fn greet(job: Greet, _cx: JobContext) -> Result<(), JobError> {
//!     tracing::info!("hello, {}", job.name);
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let queue = Queue::new(InMemoryStore::with_clock(TokioClock::new()));
//! let id = queue.enqueue(&Greet { name: "Ada".into() }).await?.id();
//!
//! let worker = queue.worker().handle(greet).build()?;
//! let shutdown = CancellationToken::new();
//! let running = tokio::spawn(worker.run(shutdown.clone()));
//!
//! tokio::time::sleep(Duration::from_millis(100)).await;
//! shutdown.cancel();
//! running.await?;
//!
//! let job = queue.get(id).await?.expect("the job is kept");
//! assert_eq!(job.state, steadfast_jobqueue::JobState::Completed);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `sqlite` (default): `SqliteStore`, a queue in a SQLite file (WAL mode).
//! - `cli`: the `steadfast-queue` admin command line.
//! - `postgres`: `PostgresStore`, one queue shared by many processes and
//!   machines, and durable periodic jobs ([`periodic`]).
//!
//! [`CancellationToken`]: tokio_util::sync::CancellationToken

pub mod clock;
pub mod error;
pub mod handler;
pub mod job;
pub mod periodic;
pub mod queue;
pub mod store;
pub mod worker;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp, TokioClock};
pub use error::{BoxError, BuildError, EnqueueError, LeaseLost, StoreError};
pub use handler::{JobContext, JobError, JobRequest, KindOptions, Outcome};
pub use job::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, ErrorEntry, FailureKind, JSON_CODEC, Job, JobId,
    JobRecord, JobState, Lease, NewJob,
};
pub use queue::{CounterSnapshot, Event, Queue};
pub use store::memory::InMemoryStore;
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresConfig, PostgresStore, PostgresStoreBuilder};
#[cfg(feature = "sqlite")]
pub use store::sqlite::SqliteStore;
pub use store::{
    Cancel, ClaimRequest, Completion, Enqueued, Finish, FinishResult, LeaseRef, ListFilter, Purge,
    QueueStats, Redrive, Rescued, Store,
};
pub use worker::{INTERRUPTED_BY_SHUTDOWN, ShutdownReport, Worker, WorkerBuilder, WorkerConfig};
