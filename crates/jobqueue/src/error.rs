//! Error types.

use crate::job::JobId;

/// A boxed error from a store backend or a handler.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend (database, file) reported an error.
    #[error("store backend failed during {op}")]
    Backend {
        /// The store operation that failed.
        op: &'static str,
        /// The backend's error.
        #[source]
        source: BoxError,
    },
    /// A stored row could not be read back.
    #[error("job {id} has an unreadable {field} column")]
    Corrupt {
        /// The job whose row is damaged.
        id: JobId,
        /// The column that could not be read.
        field: &'static str,
        /// What went wrong reading it.
        #[source]
        source: BoxError,
    },
    /// The request is not valid for this store.
    #[error("invalid store request: {reason}")]
    Invalid {
        /// The rule that was broken.
        reason: String,
    },
}

impl StoreError {
    /// Wraps a backend error raised during `op`.
    pub fn backend(op: &'static str, source: impl Into<BoxError>) -> Self {
        StoreError::Backend {
            op,
            source: source.into(),
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Backend { .. })
    }
}

/// Enqueueing a job failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The payload could not be encoded.
    #[error("could not encode the payload of a {kind} job")]
    Encode {
        /// The job kind.
        kind: String,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The job's options break a rule.
    #[error("invalid job: {reason}")]
    Invalid {
        /// The rule that was broken.
        reason: String,
    },
    /// The store refused or failed.
    #[error("the store could not take the job")]
    Store(#[from] StoreError),
}

/// A worker or queue was configured in a way that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A setting breaks a rule; the message names it.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// The worker has no handler, so it could never run a job.
    #[error("a worker needs at least one registered job kind")]
    NoHandlers,
    /// Two handlers were registered for the same kind.
    #[error("job kind {0:?} is registered twice")]
    DuplicateKind(String),
}

/// A state change was refused because the caller's lease is no longer the
/// job's current lease: another worker owns the job now, or the job was
/// recovered after the lease expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("lease {lease} on job {id} was lost")]
pub struct LeaseLost {
    /// The job.
    pub id: JobId,
    /// The stale lease number.
    pub lease: i64,
}
