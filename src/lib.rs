//! steadfast: the async patterns that production services get wrong, done once and right.
//!
//! This crate re-exports the steadfast family, one cargo feature per member (all on by
//! default). Each member also publishes on its own, so a service that needs only retries
//! can depend on `steadfast-backoff` alone.
//!
//! | module | crate | what it is for |
//! | --- | --- | --- |
//! | [`backoff`] | `steadfast-backoff` | retry with backoff, jitter, deadlines, server hints, budgets |
//! | [`shutdown`] | `steadfast-shutdown` | signals, readiness, drain with a deadline, ordered teardown |
//! | [`jobqueue`] | `steadfast-jobqueue` | background jobs with leases, retries and dead letters |
//! | [`ws_resilient`] | `steadfast-ws-resilient` | a WebSocket client that stays connected |
//! | [`chunk_upload`] | `steadfast-chunk-upload` | resumable upload over tus 1.0 |
//! | [`batch`] | `steadfast-batch` | bounded-concurrency processing, every item accounted for |
//!
//! # A guided tour
//!
//! The members are small on purpose and meet in a few shared types, so a service wires
//! them together rather than choosing one framework. The ingest demo (`cargo xtask demo`,
//! `examples/ingest`) does exactly that; here is the route it takes.
//!
//! 1. **One retry policy.** A [`backoff::Backoff`] says how long to wait and when to give
//!    up, with jitter and a hard cap. Every member that retries takes one: the job queue
//!    for failed attempts, the WebSocket client for reconnects, the uploader between
//!    requests, the batch runner per item. [`backoff::retry`] runs any async call under it.
//! 2. **One shutdown.** [`shutdown::Shutdown`] turns SIGTERM or Ctrl-C into phases:
//!    readiness goes false, the HTTP server ([`shutdown::axum::serve`]) stops accepting and
//!    drains, then stages stop in reverse order (the job worker, the event feed) and hooks
//!    run (closing the job store). Every long-running part of the other crates stops on a
//!    `CancellationToken`, so one shutdown reaches all of them.
//! 3. **Uploads that resume.** [`chunk_upload::server::TusServer`] is an axum router; its
//!    `on_complete` hook fires once per finished file. [`chunk_upload::client::Uploader`]
//!    resumes from the server's offset after any failure, and across runs through its URL
//!    store.
//! 4. **Work that is not lost.** The completion hook enqueues a job on a
//!    [`jobqueue::Queue`]; a worker runs it under a lease, retries transient errors on the
//!    backoff schedule and parks permanent ones as dead letters. The queue lives in
//!    SQLite ([`jobqueue::SqliteStore`]) or, with the `postgres` feature, PostgreSQL, so a
//!    restart picks up where it stopped.
//! 5. **Progress that reconnects.** [`ws_resilient::Client`] follows the server's event
//!    feed, reconnecting with backoff when the server restarts, and buffers what it sends
//!    meanwhile.
//! 6. **Many items, each accounted for.** [`batch::Batch`] uploads files with bounded
//!    concurrency; every file ends in exactly one outcome, and a failure stays with its
//!    file.
//!
//! Each crate also has a runnable example of its own; the README lists them.
//!
//! ```
//! # #[cfg(feature = "backoff")]
//! # {
//! use std::time::Duration;
//!
//! use steadfast::backoff::Backoff;
//!
//! let policy = Backoff::exponential(Duration::from_millis(100)).max_delay(Duration::from_secs(10));
//! let delays: Vec<Duration> = policy.schedule().with_seed(7).take(5).collect();
//! assert!(delays.iter().all(|delay| *delay <= Duration::from_secs(10)));
//! # }
//! ```

#[cfg(feature = "backoff")]
#[doc(inline)]
pub use steadfast_backoff as backoff;

/// The README's Quick start, compiled and run as a doctest so that it stays true.
#[cfg(all(doctest, feature = "backoff"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "shutdown")]
#[doc(inline)]
pub use steadfast_shutdown as shutdown;

#[cfg(feature = "jobqueue")]
#[doc(inline)]
pub use steadfast_jobqueue as jobqueue;

#[cfg(feature = "ws-resilient")]
#[doc(inline)]
pub use steadfast_ws_resilient as ws_resilient;

#[cfg(feature = "chunk-upload")]
#[doc(inline)]
pub use steadfast_chunk_upload as chunk_upload;

#[cfg(feature = "batch")]
#[doc(inline)]
pub use steadfast_batch as batch;
