//! The account of a whole run: how many items ended which way, and which ones.

use std::collections::BTreeMap;
use std::fmt;
use std::iter::Peekable;
use std::ops::Range;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::outcome::OutcomeKind;

/// How many items ended in each way.
///
/// The fields always add up to the number of items taken from the input (plus, after
/// [`Finished::into_full_report`](crate::Finished::into_full_report), the items that were
/// left in it), so a shortfall can never hide.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Counts {
    /// Items whose work returned `Ok`.
    pub succeeded: u64,
    /// Items whose work returned an error.
    pub failed: u64,
    /// Items whose work panicked.
    pub panicked: u64,
    /// Items that overran the per-item timeout.
    pub timed_out: u64,
    /// Failed items that the skip policy let pass.
    pub skipped: u64,
    /// Items aborted while running because the run was cancelled or stopped.
    pub cancelled: u64,
    /// Items that never ran because the run had stopped.
    pub not_started: u64,
}

/// One item that did not succeed, as listed in a [`Report`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ItemRecord {
    /// Position of the item in the input.
    pub index: u64,
    /// The item's key, if the run had a key function.
    pub key: Option<String>,
    /// What became of it.
    pub kind: OutcomeKind,
    /// The error's or the panic's message, when there was one.
    pub detail: Option<String>,
    /// For a skipped item, how it failed (failed, panicked or timed out).
    pub cause: Option<OutcomeKind>,
}

/// Why a run ended before its input was used up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StopReason {
    /// The run's cancellation token was cancelled.
    Cancelled,
    /// The policy was [`ErrorPolicy::StopOnFirst`](crate::ErrorPolicy::StopOnFirst) and an
    /// item failed.
    FirstFailure,
    /// The number of failed items reached the policy's limit.
    FailureCount {
        /// The limit that was reached.
        limit: u64,
    },
    /// The share of failed items rose above the policy's ratio.
    FailureRatio {
        /// The ratio observed when the run stopped.
        observed: f64,
        /// The policy's highest tolerated ratio.
        max: f64,
    },
    /// More items failed than the skip policy allows to skip.
    SkipLimit {
        /// How many failures the policy allowed to skip.
        limit: u64,
    },
    /// The consumer dropped the run before it ended.
    ConsumerGone,
    /// The input stream or iterator panicked; it cannot be resumed.
    InputPanicked {
        /// The panic's message.
        message: String,
    },
}

/// The complete account of a run.
///
/// Lists every item taken from the input exactly once, by index, with what became of it.
/// Successful items are held as index ranges and only the others one by one, so a report
/// over millions of successful items stays small.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    counts: Counts,
    succeeded: IndexSet,
    not_started: IndexSet,
    records: BTreeMap<u64, ItemRecord>,
    stop: Option<StopReason>,
    input_exhausted: bool,
    elapsed: Duration,
}

impl Counts {
    /// The sum of every field: the number of items accounted for.
    pub fn total(&self) -> u64 {
        self.succeeded
            + self.failed
            + self.panicked
            + self.timed_out
            + self.skipped
            + self.cancelled
            + self.not_started
    }

    /// Items that ended and count against the error policy: failed, panicked, timed out.
    pub fn failures(&self) -> u64 {
        self.failed + self.panicked + self.timed_out
    }

    /// The count of one kind.
    pub fn of(&self, kind: OutcomeKind) -> u64 {
        match kind {
            OutcomeKind::Succeeded => self.succeeded,
            OutcomeKind::Failed => self.failed,
            OutcomeKind::Panicked => self.panicked,
            OutcomeKind::TimedOut => self.timed_out,
            OutcomeKind::Skipped => self.skipped,
            OutcomeKind::Cancelled => self.cancelled,
            OutcomeKind::NotStarted => self.not_started,
        }
    }

    pub(crate) fn add(&mut self, kind: OutcomeKind, by: u64) {
        let field = match kind {
            OutcomeKind::Succeeded => &mut self.succeeded,
            OutcomeKind::Failed => &mut self.failed,
            OutcomeKind::Panicked => &mut self.panicked,
            OutcomeKind::TimedOut => &mut self.timed_out,
            OutcomeKind::Skipped => &mut self.skipped,
            OutcomeKind::Cancelled => &mut self.cancelled,
            OutcomeKind::NotStarted => &mut self.not_started,
        };
        *field = field.saturating_add(by);
    }
}

impl Report {
    /// How many items ended in each way.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// How many items the report accounts for (the sum of [`counts`](Self::counts)).
    pub fn total(&self) -> u64 {
        self.counts.total()
    }

    /// Why the run ended early, or `None` when it ran until its input was used up.
    pub fn stop_reason(&self) -> Option<&StopReason> {
        self.stop.as_ref()
    }

    /// Whether the run used up its input and every item succeeded or was skipped.
    pub fn is_complete(&self) -> bool {
        self.stop.is_none()
            && self.input_exhausted
            && self.counts.succeeded + self.counts.skipped == self.counts.total()
    }

    /// Whether the run pulled every item of its input.
    pub fn input_exhausted(&self) -> bool {
        self.input_exhausted
    }

    /// Wall time (tokio time) from the start of the run to its end.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// What became of the item at `index`, or `None` if the run never took it.
    pub fn outcome_of(&self, index: u64) -> Option<OutcomeKind> {
        if self.succeeded.contains(index) {
            return Some(OutcomeKind::Succeeded);
        }
        if self.not_started.contains(index) {
            return Some(OutcomeKind::NotStarted);
        }
        self.records.get(&index).map(|record| record.kind)
    }

    /// Every item that did not succeed (and was not left unstarted), in index order.
    pub fn problems(&self) -> impl Iterator<Item = &ItemRecord> {
        self.records.values()
    }

    /// The indices of the successful items as sorted, disjoint ranges: a compact listing
    /// that stays a handful of ranges however many items succeeded.
    pub fn succeeded_ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.succeeded
            .ranges
            .iter()
            .map(|(&start, &end)| start..end)
    }

    /// The record of the non-successful item at `index`.
    pub fn problem(&self, index: u64) -> Option<&ItemRecord> {
        self.records.get(&index)
    }

    /// Every item the report accounts for, once each, in index order, with its kind.
    pub fn entries(&self) -> impl Iterator<Item = (u64, OutcomeKind)> + '_ {
        let succeeded = self
            .succeeded
            .iter()
            .map(|index| (index, OutcomeKind::Succeeded));
        let not_started = self
            .not_started
            .iter()
            .map(|index| (index, OutcomeKind::NotStarted));
        let records = self
            .records
            .values()
            .map(|record| (record.index, record.kind));
        MergeByIndex::new(MergeByIndex::new(succeeded, not_started), records)
    }

    pub(crate) fn record(&mut self, record: ItemRecord) {
        self.counts.add(record.kind, 1);
        match record.kind {
            OutcomeKind::Succeeded => self.succeeded.insert(record.index),
            OutcomeKind::NotStarted => self.not_started.insert(record.index),
            _ => {
                self.records.insert(record.index, record);
            }
        }
    }

    pub(crate) fn record_not_started(&mut self, index: u64) {
        self.counts.add(OutcomeKind::NotStarted, 1);
        self.not_started.insert(index);
    }

    pub(crate) fn set_stop(&mut self, reason: StopReason) {
        self.stop.get_or_insert(reason);
    }

    pub(crate) fn finish(&mut self, input_exhausted: bool, elapsed: Duration) {
        self.input_exhausted = input_exhausted;
        self.elapsed = elapsed;
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cancelled => f.write_str("the run was cancelled"),
            Self::FirstFailure => f.write_str("an item failed and the policy stops at the first"),
            Self::FailureCount { limit } => write!(f, "{limit} items failed, the policy's limit"),
            Self::FailureRatio { observed, max } => {
                write!(
                    f,
                    "failure ratio {observed:.3} rose above the allowed {max:.3}"
                )
            }
            Self::SkipLimit { limit } => {
                write!(
                    f,
                    "more items failed than the {limit} the skip policy allows"
                )
            }
            Self::ConsumerGone => f.write_str("the consumer dropped the run"),
            Self::InputPanicked { message } => write!(f, "the input panicked: {message}"),
        }
    }
}

/// A set of indices held as sorted, disjoint, non-adjacent half-open ranges.
///
/// Items end roughly in input order, so the set stays a handful of ranges however many
/// indices it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct IndexSet {
    ranges: BTreeMap<u64, u64>,
}

impl IndexSet {
    fn insert(&mut self, index: u64) {
        let end = index.saturating_add(1);
        let mut start = index;
        let mut new_end = end;

        if let Some((&before_start, &before_end)) = self.ranges.range(..=index).next_back() {
            if before_end > index {
                return;
            }
            if before_end == index {
                start = before_start;
            }
        }
        if let Some(after_end) = self.ranges.remove(&end) {
            new_end = after_end;
        }
        self.ranges.insert(start, new_end);
    }

    fn contains(&self, index: u64) -> bool {
        self.ranges
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &end)| end > index)
    }

    fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges.iter().flat_map(|(&start, &end)| start..end)
    }
}

/// Merges two iterators that are each sorted by index into one sorted by index.
struct MergeByIndex<A: Iterator, B: Iterator> {
    left: Peekable<A>,
    right: Peekable<B>,
}

impl<A, B> MergeByIndex<A, B>
where
    A: Iterator<Item = (u64, OutcomeKind)>,
    B: Iterator<Item = (u64, OutcomeKind)>,
{
    fn new(left: A, right: B) -> Self {
        Self {
            left: left.peekable(),
            right: right.peekable(),
        }
    }
}

impl<A, B> Iterator for MergeByIndex<A, B>
where
    A: Iterator<Item = (u64, OutcomeKind)>,
    B: Iterator<Item = (u64, OutcomeKind)>,
{
    type Item = (u64, OutcomeKind);

    fn next(&mut self) -> Option<Self::Item> {
        match (self.left.peek(), self.right.peek()) {
            (Some(left), Some(right)) if right.0 < left.0 => self.right.next(),
            (Some(_), _) => self.left.next(),
            (None, _) => self.right.next(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_set_merges_out_of_order_inserts_into_one_range() {
        let mut set = IndexSet::default();
        for index in [3, 1, 0, 2, 5, 4, 9] {
            set.insert(index);
        }

        assert_eq!(set.ranges.len(), 2);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 9]);
        assert!(set.contains(5) && set.contains(9) && !set.contains(6) && !set.contains(10));
    }

    #[test]
    fn index_set_ignores_a_repeated_index() {
        let mut set = IndexSet::default();
        set.insert(7);
        set.insert(7);

        assert_eq!(set.iter().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn entries_list_every_index_once_in_order() {
        let mut report = Report::default();
        for index in [0, 2, 3] {
            report.record(ItemRecord {
                index,
                key: None,
                kind: OutcomeKind::Succeeded,
                detail: None,
                cause: None,
            });
        }
        report.record(ItemRecord {
            index: 1,
            key: Some("b".into()),
            kind: OutcomeKind::Failed,
            detail: Some("nope".into()),
            cause: None,
        });
        report.record_not_started(4);

        let entries: Vec<_> = report.entries().collect();
        assert_eq!(
            entries,
            vec![
                (0, OutcomeKind::Succeeded),
                (1, OutcomeKind::Failed),
                (2, OutcomeKind::Succeeded),
                (3, OutcomeKind::Succeeded),
                (4, OutcomeKind::NotStarted),
            ]
        );
        assert_eq!(report.total(), 5);
        assert_eq!(report.outcome_of(1), Some(OutcomeKind::Failed));
        assert_eq!(report.outcome_of(5), None);
    }
}
