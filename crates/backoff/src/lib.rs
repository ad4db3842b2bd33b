//! Retry with exponential backoff, jitter, deadlines, server hints and retry budgets.
//!
//! Every service that calls another one retries, and most hand-roll it: a loop, a
//! `2^n * 1000 ms` sleep, no jitter, no cap, no notion of which errors are worth a
//! second try. This crate does it once: a [`Backoff`] policy as a plain value, its
//! delays as an iterator, and an async [`retry()`] loop that classifies errors,
//! honours server hints, stops on time, and can share a budget with every other
//! caller of the same dependency.
//!
//! ```
//! use std::io;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//!
//! use steadfast_backoff::{Backoff, retry};
//!
//! /// Fails twice with a reset connection, then answers.
//! async fn fetch(calls: &AtomicU32) -> Result<String, io::Error> {
//!     if calls.fetch_add(1, Ordering::SeqCst) < 2 {
//!         return Err(io::Error::from(io::ErrorKind::ConnectionReset));
//!     }
//!     Ok("hello".to_owned())
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let policy = Backoff::exponential(Duration::from_millis(200))
//!     .max_delay(Duration::from_secs(10))
//!     .max_attempts(5);
//!
//! let calls = AtomicU32::new(0);
//! let body = retry(&policy, || fetch(&calls)).await?;
//! assert_eq!(body, "hello");
//! assert_eq!(calls.load(Ordering::SeqCst), 3);
//! # Ok(())
//! # }
//! ```
//!
//! # Schedules
//!
//! A policy yields a delay before each retry: `initial * factor^n`, capped at
//! `max_delay` ([`Backoff::exponential`]), or the same delay each time
//! ([`Backoff::constant`]). [`Backoff::schedule`] gives these delays as an
//! `Iterator<Item = Duration>` that ends when the attempt limit is reached;
//! [`Schedule::with_seed`] makes it reproducible. A job queue that stores only an
//! attempt count asks [`Backoff::delay_for`] instead. All arithmetic saturates: an
//! attempt number of 10,000, a factor of 1e300 or `Duration::MAX` settings give
//! delays at the cap, never an overflow or a panic.
//!
//! Presets carry documented constants: [`Backoff::grpc`] (gRPC connection backoff:
//! 1 s, ×1.6, 120 s, ±20 %) and [`Backoff::aws_standard`] (the AWS SDKs' standard
//! mode: full jitter over 1 s × 2ⁿ, 20 s, 3 attempts).
//!
//! # Jitter
//!
//! Clients that fail together (a server restarted, a network blipped) retry together
//! if their delays are exact, and the second wave fails like the first. [`Jitter`]
//! spreads each delay randomly:
//!
//! - [`Jitter::Full`], the default: uniform between the floor and the delay. In the
//!   contention simulation of the AWS "Exponential Backoff and Jitter" article (our
//!   `benches/contention.rs` reproduces it) it does the least total work: about a third
//!   of the calls of no backoff, and fewer than exponential backoff without jitter.
//! - [`Jitter::Equal`]: uniform in the upper half, keeping a minimum wait.
//! - [`Jitter::Decorrelated`]: uniform up to three times the previous delay.
//! - [`Jitter::Proportional`]: `±spread` around the delay, as gRPC does.
//! - [`Jitter::None`]: exact delays, for a single client.
//!
//! The cap holds after jitter ([`CapMode::Hard`]): no delay ever exceeds `max_delay`,
//! and at the cap the jitter spreads downwards instead of piling every client onto the
//! same maximum. No delay is below the floor ([`Backoff::min_delay`], by default the
//! initial delay), so no retry is immediate. With that default floor the first retry's
//! full-jitter window is empty; a large fleet that fails all at once should set a lower
//! floor so that the first retry is spread too. [`CapMode::Soft`] lets proportional
//! jitter reach `max_delay * (1 + spread)`.
//!
//! # Stop conditions
//!
//! They combine, and the first to trigger wins:
//!
//! - [`Backoff::max_attempts`]: total calls, the first included (5 by default).
//! - [`Backoff::max_elapsed`]: time since the first call, the operation's own time
//!   included. A retry whose wait would end past it is not made: the loop never sleeps
//!   past its deadline only to give up afterwards.
//! - [`Retry::deadline`]: an outer deadline that also stops a call in flight.
//! - [`Retry::cancel`]: a `CancellationToken` that ends a pending wait at once.
//!
//! When the loop gives up, [`RetryError`] carries the last error, the attempts made,
//! the time taken and the [`GiveUpReason`].
//!
//! # Classification
//!
//! Not every error deserves another call: a `400 Bad Request` fails the same way
//! every time, and retrying it only gets the client rate-limited. Errors say what they
//! are through [`Classify`] (implemented for `std::io::Error`), or a call decides with
//! [`Retry::classify_with`]. An [`ErrorClass`] is transient, permanent, transient with
//! a server hint ([`ErrorClass::RetryAfter`], see [`retry_after`]), or ambiguous: the
//! operation may have taken effect (a timeout after the request was sent), which is
//! retried only for operations declared [idempotent](Retry::idempotent).
//! [`ErrorClass::from_http_status`] classifies HTTP statuses.
//!
//! A server hint may lengthen one wait, within [`Backoff::max_retry_after`] and the
//! deadline; it never adds attempts. A longer hint ends the loop at once with
//! [`GiveUpReason::RetryAfterTooLong`], which states what the server asked for,
//! instead of silently turning retrying off or sleeping for an hour.
//!
//! # Budgets
//!
//! Attempt limits are per call; an outage multiplies load by them all the same. A
//! [`RetryBudget`] shared by every caller allows retries up to a ratio of real
//! requests (plus a small floor per second), over a sliding window; a [`TokenBucket`]
//! is the AWS SDKs' retry quota (retries spend tokens, successes refill them). With
//! the budget empty, a failing call returns at once with [`GiveUpReason::Budget`]
//! instead of waiting to fail again.
//!
//! # Features
//!
//! - `serde` (default): `Serialize`/`Deserialize` for [`Backoff`] and the budget settings.
//! - `tower`: [`TowerPolicy`], the same policy as a `tower::retry::Policy`.
//!
//! Each retry emits a `tracing` debug event with the attempt, the delay and the error
//! class; nothing is printed.

mod budget;
mod classify;
mod delay;
mod error;
mod policy;
pub mod retry_after;
mod retrying;
mod schedule;
#[cfg(feature = "tower")]
mod tower_policy;

pub use budget::{Budget, BudgetConfig, RetryBudget, RetryKind, TokenBucket, TokenBucketConfig};
pub use classify::{ByTrait, Classifier, Classify, ErrorClass};
pub use error::{GiveUpReason, RetryError};
pub use policy::{Backoff, BuildError, CapMode, Jitter};
pub use retrying::{NoNotify, Notify, Retry, RetryFuture, retry};
pub use schedule::Schedule;
pub use tokio_util::sync::CancellationToken;
#[cfg(feature = "tower")]
pub use tower_policy::TowerPolicy;

/// The README's example, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
