//! What became of one input item.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The end of one item's processing, delivered with its input index.
///
/// Every item the run pulls from its input ends in exactly one `Outcome`, so a caller
/// can account for each of them; none is filtered out or dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome<V, E> {
    /// The work function returned `Ok` with this value.
    Succeeded(V),
    /// The work function returned this error (after any retries).
    Failed(E),
    /// The work function panicked; the panic message, when it was a string.
    Panicked(String),
    /// The item ran longer than the per-item timeout and was dropped.
    TimedOut,
    /// The item failed, but the skip policy let the run carry on past it.
    Skipped(Failure<E>),
    /// The item was running when the run was cancelled or stopped, and was aborted.
    Cancelled,
}

/// How an item failed, kept inside [`Outcome::Skipped`] so a skipped item still says why.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Failure<E> {
    /// The work function returned this error.
    Error(E),
    /// The work function panicked with this message.
    Panic(String),
    /// The item overran the per-item timeout.
    TimedOut,
}

/// The kind of an [`Outcome`] without its payload, as counted and listed in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum OutcomeKind {
    /// See [`Outcome::Succeeded`].
    Succeeded,
    /// See [`Outcome::Failed`].
    Failed,
    /// See [`Outcome::Panicked`].
    Panicked,
    /// See [`Outcome::TimedOut`].
    TimedOut,
    /// See [`Outcome::Skipped`].
    Skipped,
    /// See [`Outcome::Cancelled`].
    Cancelled,
    /// The item was taken from the input but never ran, because the run had stopped.
    NotStarted,
}

/// One finished item as the run hands it to the consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ItemResult<V, E> {
    /// Position of the item in the input, counting from zero.
    pub index: u64,
    /// The key the run's key function gave the item, if the run was started with one.
    pub key: Option<String>,
    /// What became of the item.
    pub outcome: Outcome<V, E>,
    /// How long the item itself ran, from its start to its end (waiting for the consumer
    /// is not included), retries and their waits included.
    pub elapsed: Duration,
    /// How many times the work function was called for this item: 1 without retry, and
    /// up to the policy's `max_attempts` with it (0 if a retried item was cancelled before
    /// its first call).
    pub attempts: u32,
}

impl<V, E> Outcome<V, E> {
    /// The kind of this outcome, without its payload.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Succeeded(_) => OutcomeKind::Succeeded,
            Self::Failed(_) => OutcomeKind::Failed,
            Self::Panicked(_) => OutcomeKind::Panicked,
            Self::TimedOut => OutcomeKind::TimedOut,
            Self::Skipped(_) => OutcomeKind::Skipped,
            Self::Cancelled => OutcomeKind::Cancelled,
        }
    }

    /// Whether the item succeeded.
    pub fn is_success(&self) -> bool {
        matches!(self, Self::Succeeded(_))
    }

    /// The value of a successful item, or `None` for any other outcome.
    pub fn into_value(self) -> Option<V> {
        match self {
            Self::Succeeded(value) => Some(value),
            _ => None,
        }
    }

    /// The error of a failed item (skipped or not), or `None` for any other outcome.
    pub fn error(&self) -> Option<&E> {
        match self {
            Self::Failed(error) | Self::Skipped(Failure::Error(error)) => Some(error),
            _ => None,
        }
    }
}

impl<E> Failure<E> {
    /// The outcome this failure would have been, had it not been skipped.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Self::Error(_) => OutcomeKind::Failed,
            Self::Panic(_) => OutcomeKind::Panicked,
            Self::TimedOut => OutcomeKind::TimedOut,
        }
    }
}

impl OutcomeKind {
    /// Whether this kind counts against the error policy (failed, panicked, timed out).
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Panicked | Self::TimedOut)
    }
}
