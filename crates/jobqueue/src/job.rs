//! Jobs as the queue stores them: kinds, payloads, states and error history.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use steadfast_backoff::Backoff;

use crate::clock::Timestamp;
use crate::error::EnqueueError;

/// The codec tag of payloads written by [`NewJob::new`]: JSON via serde.
pub const JSON_CODEC: &str = "json";

/// The queue a job goes to when none is named.
pub const DEFAULT_QUEUE: &str = "default";

/// The number of attempts a job gets when none is set.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 20;

/// A kind of job: a serde payload that names its handler.
///
/// The name is stored with every job, so it must stay stable across
/// deployments; renaming it strands the jobs already queued.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use steadfast_jobqueue::Job;
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
/// }
///
/// impl Job for SendEmail {
///     const KIND: &'static str = "send_email";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The stable name under which jobs of this kind are stored and handled.
    const KIND: &'static str;
}

/// The store's identifier of a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(i64);

impl JobId {
    /// Wraps a raw identifier, as read from a store or typed by an operator.
    pub const fn new(raw: i64) -> Self {
        Self(raw)
    }

    /// The raw identifier.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a job is in its life.
///
/// `Scheduled`, `Available` and `Retryable` jobs are waiting; the store
/// treats any of them whose run time has come as available. `Completed`,
/// `Dead` and `Cancelled` are final until an operator re-drives a dead job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for a run time in the future.
    Scheduled,
    /// Ready to be claimed.
    Available,
    /// Claimed by a worker holding a lease.
    Running,
    /// Failed an attempt and waiting for its retry time.
    Retryable,
    /// Finished successfully; final.
    Completed,
    /// Out of attempts or failed permanently: a dead letter.
    Dead,
    /// Withdrawn by an operator before it ran.
    Cancelled,
}

impl JobState {
    /// Every state, in lifecycle order.
    pub const ALL: [JobState; 7] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The name used in storage and on the command line.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Whether the job still holds its uniqueness key and may yet run.
    pub const fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Scheduled | JobState::Available | JobState::Running | JobState::Retryable
        )
    }

    /// Whether the job waits to be claimed (once its run time has come).
    pub const fn is_waiting(self) -> bool {
        matches!(
            self,
            JobState::Scheduled | JobState::Available | JobState::Retryable
        )
    }

    /// The state to report for a stored state: a waiting job whose run time
    /// has come is available, whatever it was waiting for.
    pub fn effective(self, run_at: Timestamp, now: Timestamp) -> JobState {
        if self.is_waiting() && run_at <= now {
            JobState::Available
        } else {
            self
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state name that is not one of [`JobState`]'s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown job state {0:?} (expected one of scheduled, available, running, retryable, completed, dead, cancelled)"
)]
pub struct UnknownState(pub String);

impl FromStr for JobState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

/// Why an attempt ended without success.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The handler returned a retryable error.
    Failed,
    /// The handler returned a permanent error.
    Permanent,
    /// The handler panicked.
    Panicked,
    /// The stored payload did not decode into the job type.
    Decode,
    /// The attempt ran past the job's hard timeout.
    TimedOut,
    /// The worker stopped heartbeating and its lease expired.
    WorkerLost,
    /// A shutdown cancelled the attempt and handed the job back.
    Interrupted,
}

impl FailureKind {
    /// The name used in storage and output.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureKind::Failed => "failed",
            FailureKind::Permanent => "permanent",
            FailureKind::Panicked => "panicked",
            FailureKind::Decode => "decode",
            FailureKind::TimedOut => "timed_out",
            FailureKind::WorkerLost => "worker_lost",
            FailureKind::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of a job's error history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// The attempt that failed (1 for the first run).
    pub attempt: u32,
    /// When the store recorded the failure.
    pub at: Timestamp,
    /// What kind of failure it was.
    pub kind: FailureKind,
    /// The error's text, with its source chain.
    pub message: String,
}

/// The lease a worker holds on a running job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The fencing number of this claim; every change out of running must
    /// present it.
    pub number: i64,
    /// The id of the worker holding the lease.
    pub owner: String,
    /// When the lease runs out unless it is extended.
    pub expires_at: Timestamp,
}

/// A job as the store holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// The job's id.
    pub id: JobId,
    /// The job's kind (see [`Job::KIND`]).
    pub kind: String,
    /// The queue it belongs to.
    pub queue: String,
    /// The payload's codec tag (see [`JSON_CODEC`]).
    pub codec: String,
    /// The payload bytes, exactly as enqueued.
    pub payload: Vec<u8>,
    /// The state, with due waiting jobs reported as available.
    pub state: JobState,
    /// Higher runs first among due jobs.
    pub priority: i32,
    /// Attempts charged so far; counted when a worker claims the job.
    pub attempt: u32,
    /// Attempts allowed before the job is dead-lettered.
    pub max_attempts: u32,
    /// How often the job was taken back from a lost worker since it was
    /// enqueued or last re-driven.
    pub rescues: u32,
    /// The last lease number handed out (0 before the first claim).
    pub lease_number: i64,
    /// The current lease, while running.
    pub lease: Option<Lease>,
    /// When the job becomes (or became) due.
    pub run_at: Timestamp,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// When it was last claimed.
    pub attempted_at: Option<Timestamp>,
    /// When it reached a final state.
    pub finalized_at: Option<Timestamp>,
    /// The uniqueness key, if any.
    pub unique_key: Option<String>,
    /// The hard limit on one attempt's run time, if set for this job.
    pub timeout: Option<Duration>,
    /// The retry policy for this job, overriding its kind's.
    pub backoff: Option<Backoff>,
    /// Every failure, oldest first.
    pub errors: Vec<ErrorEntry>,
}

impl JobRecord {
    /// The most recent error, if any.
    pub fn last_error(&self) -> Option<&ErrorEntry> {
        self.errors.last()
    }
}

/// A job to enqueue: its kind, payload and scheduling options.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct NewJob {
    /// The job's kind.
    pub kind: String,
    /// The queue to put it in ([`DEFAULT_QUEUE`] unless set).
    pub queue: String,
    /// The payload's codec tag.
    pub codec: String,
    /// The payload bytes, stored untouched.
    pub payload: Vec<u8>,
    /// Higher runs first among due jobs (0 unless set).
    pub priority: i32,
    /// An absolute run time; wins over `delay`.
    pub run_at: Option<Timestamp>,
    /// Run this long after the store receives the job.
    pub delay: Duration,
    /// Attempts allowed ([`DEFAULT_MAX_ATTEMPTS`] unless set).
    pub max_attempts: u32,
    /// At most one active job holds a given key.
    pub unique_key: Option<String>,
    /// A hard limit on one attempt's run time.
    pub timeout: Option<Duration>,
    /// A retry policy overriding the kind's.
    pub backoff: Option<Backoff>,
}

impl NewJob {
    /// A job of kind `J` with its payload encoded as JSON.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::Encode`] if serde cannot encode the payload.
    pub fn new<J: Job>(job: &J) -> Result<Self, EnqueueError> {
        let payload = serde_json::to_vec(job).map_err(|source| EnqueueError::Encode {
            kind: J::KIND.to_owned(),
            source,
        })?;
        Ok(Self::raw(J::KIND, JSON_CODEC, payload))
    }

    /// A job from a kind name, a codec tag and payload bytes, for callers
    /// that do not have the Rust type (admin tools, other languages).
    pub fn raw(kind: impl Into<String>, codec: impl Into<String>, payload: Vec<u8>) -> Self {
        Self {
            kind: kind.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            codec: codec.into(),
            payload,
            priority: 0,
            run_at: None,
            delay: Duration::ZERO,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            timeout: None,
            backoff: None,
        }
    }

    /// Puts the job in `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the priority; higher runs first.
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// Runs the job no earlier than `at`.
    pub fn run_at(mut self, at: Timestamp) -> Self {
        self.run_at = Some(at);
        self
    }

    /// Runs the job no earlier than `delay` after it is stored.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// Sets the number of attempts allowed (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Makes the job unique under `key` while it is active.
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Makes the job unique by its kind, codec and exact payload bytes.
    pub fn unique_by_payload(mut self) -> Self {
        // Not yet: a digest of the payload; the key is the payload in hex, so it
        // grows with the payload.
        let mut key = format!("{}:{}:", self.kind, self.codec);
        for byte in &self.payload {
            key.push_str(&format!("{byte:02x}"));
        }
        self.unique_key = Some(key);
        self
    }

    /// Sets a hard limit on one attempt's run time.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the retry policy for this job, overriding its kind's.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Checks the options a store cannot repair.
    ///
    /// # Errors
    ///
    /// [`EnqueueError::Invalid`] naming the rule that was broken.
    pub fn validate(&self) -> Result<(), EnqueueError> {
        let invalid = |reason: &str| {
            Err(EnqueueError::Invalid {
                reason: reason.to_owned(),
            })
        };
        if self.kind.is_empty() {
            return invalid("the job kind must not be empty");
        }
        if self.queue.is_empty() {
            return invalid("the queue name must not be empty");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if self.timeout == Some(Duration::ZERO) {
            return invalid("a job timeout must be longer than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>(), Ok(state));
        }
        assert!("bogus".parse::<JobState>().is_err());
    }

    #[test]
    fn due_waiting_jobs_read_as_available() {
        let now = Timestamp::from_millis(100);
        let past = Timestamp::from_millis(50);
        let future = Timestamp::from_millis(150);
        assert_eq!(
            JobState::Retryable.effective(past, now),
            JobState::Available
        );
        assert_eq!(
            JobState::Scheduled.effective(future, now),
            JobState::Scheduled
        );
        assert_eq!(JobState::Dead.effective(past, now), JobState::Dead);
    }

    #[test]
    fn validation_names_the_rule() {
        let job = NewJob::raw("k", JSON_CODEC, b"{}".to_vec()).max_attempts(0);
        let err = job.validate().unwrap_err();
        assert!(err.to_string().contains("max_attempts"), "{err}");
    }

    #[test]
    fn unique_by_payload_depends_on_the_bytes() {
        let a = NewJob::raw("k", JSON_CODEC, b"{\"a\":1}".to_vec()).unique_by_payload();
        let b = NewJob::raw("k", JSON_CODEC, b"{\"a\":2}".to_vec()).unique_by_payload();
        assert_ne!(a.unique_key, b.unique_key);
    }
}
