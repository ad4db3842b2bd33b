//! Graceful shutdown that loses no work: readiness that flips before draining, a drain
//! with a deadline, teardown in reverse start order, a second signal that forces exit, and
//! a report of what was still running.
//!
//! A [`Shutdown`] coordinator is built on tokio-util's
//! [`CancellationToken`] and
//! [`TaskTracker`](tokio_util::task::TaskTracker). Components register their work
//! through a cloneable [`Handle`]: tasks with [`Handle::spawn`] (or
//! [`Handle::spawn_critical`] for work the service cannot live without), in-flight
//! requests with [`Handle::track`], blocking work with [`Handle::spawn_blocking`], and
//! teardown with [`Handle::stage`] and [`Handle::hook`]. When SIGTERM, SIGINT,
//! [`Handle::trigger`] or the end of a critical task starts the shutdown,
//! [`Shutdown::run`] walks through the phases described there and returns a [`Report`]
//! whose [`exit_code`](Report::exit_code) a supervisor can trust: 0 only when everything
//! stopped by itself in time.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//!
//! use steadfast_shutdown::{Outcome, Shutdown};
//!
//! let shutdown = Shutdown::builder()
//!     .drain_deadline(Duration::from_secs(10))
//!     .signals(false) // a real service keeps the default: listen for SIGTERM and SIGINT
//!     .build()?;
//! let readiness = shutdown.readiness();
//!
//! // A worker that finishes its current item once draining starts.
//! let stop = shutdown.token();
//! shutdown.spawn("worker", async move {
//!     stop.cancelled().await;
//!     tokio::time::sleep(Duration::from_millis(300)).await;
//! });
//! shutdown.hook("close pool", || async { Ok::<(), std::io::Error>(()) });
//!
//! shutdown.trigger(); // as a SIGTERM would
//! assert!(!readiness.is_ready());
//!
//! let report = shutdown.run().await;
//! assert_eq!(report.outcome(), Outcome::Clean);
//! assert_eq!(report.exit_code(), 0);
//! // In `main`, end with `report.exit()`: it exits with the code without waiting for
//! // blocking work left behind.
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `axum` (default): [`axum::serve`] runs an axum `Router` whose listener, keep-alive
//!   connections and long-lived responses drain with the coordinator.
//! - `fixture`: builds a small program the crate's own signal tests run as a child
//!   process. Not for applications.

mod builder;
mod config;
mod coordinator;
mod readiness;
mod report;
mod task;
mod teardown;

#[cfg(feature = "axum")]
pub mod axum;

pub use builder::{BuildError, Builder};
pub use config::{Config, ExitCodes};
pub use coordinator::{Handle, Shutdown, WorkGuard};
pub use readiness::Readiness;
pub use report::{End, Kind, Outcome, Phase, Record, Report, Signal, Trigger};
pub use task::{BoxError, TaskOutput};
pub use tokio_util::sync::CancellationToken;

/// The README's example, compiled as a doctest so that it stays true.
#[cfg(all(doctest, feature = "axum"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
