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
