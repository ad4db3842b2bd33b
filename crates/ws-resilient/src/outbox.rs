//! The outbound buffer between `send` and the socket task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{BufferConfig, Overflow};
use crate::error::SendError;
use crate::message::Message;
use crate::state::DiscardReason;

/// What happened to a message handed to `send`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Sent {
    /// Queued; it goes out, in order, as soon as a connection is open and its on-connect
    /// hook has succeeded.
    Queued,
    /// Queued, after these older messages were discarded to make room (drop-oldest).
    QueuedDropping(Vec<Message>),
    /// Not queued: the buffer was full and the policy is drop-newest. The message is
    /// given back.
    Dropped(Message),
}

/// One buffered message.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) message: Message,
    /// Read from the clock only when messages can expire.
    queued_at: Option<Instant>,
    /// For messages that must not be replayed: the connection they were meant for.
    only_on: Option<u64>,
}

/// The buffer proper, behind one lock.
#[derive(Debug)]
struct Queue {
    entries: VecDeque<Entry>,
    bytes: usize,
    /// Entries meant for one connection only, which a take must look at one by one.
    pinned: usize,
    closed: bool,
    /// The connection currently open (hook done), if any.
    open: Option<u64>,
}

/// A bounded FIFO shared by every `send` and the socket task.
#[derive(Debug)]
pub(crate) struct Outbox {
    queue: Mutex<Queue>,
    config: BufferConfig,
    max_message_size: usize,
    /// Wakes the socket task's writer.
    pub(crate) ready: Ready,
    /// Wakes senders waiting for room.
    room: Notify,
}

/// Messages a `take` had to discard, by reason.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Discards {
    pub(crate) expired: u64,
    pub(crate) not_replayable: u64,
}

impl Outbox {
    pub(crate) fn new(config: BufferConfig, max_message_size: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                entries: VecDeque::new(),
                bytes: 0,
                pinned: 0,
                closed: false,
                open: None,
            }),
            config,
            max_message_size,
            ready: Ready::default(),
            room: Notify::new(),
        }
    }

    /// Queues a message under the overflow policy, waiting for room under
    /// [`Overflow::Wait`].
    pub(crate) async fn push(&self, message: Message, replay: bool) -> Result<Sent, SendError> {
        // The common case takes no part in the waiting machinery.
        let mut message = match self.try_push(message, replay) {
            Err(SendError::BufferFull(back)) if self.config.overflow == Overflow::Wait => back,
            other => return other,
        };

        loop {
            // Registered before the retry, so room made in between is not missed.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();

            match self.try_push(message, replay) {
                Err(SendError::BufferFull(back)) if self.config.overflow == Overflow::Wait => {
                    message = back;
                    room.await;
                }
                other => return other,
            }
        }
    }

    fn try_push(&self, message: Message, replay: bool) -> Result<Sent, SendError> {
        let size = message.len();
        let limit = self.config.max_bytes.min(self.max_message_size);
        if size > limit {
            return Err(SendError::TooLarge {
                message,
                size,
                limit,
            });
        }

        let queued_at = self.config.max_age.map(|_| Instant::now());
        let mut queue = self.lock();
        if queue.closed {
            return Err(SendError::Closed(message));
        }
        let only_on = match (replay, queue.open) {
            (true, _) => None,
            (false, Some(connection)) => Some(connection),
            (false, None) => return Err(SendError::NotConnected(message)),
        };

        let fits = |queue: &Queue| {
            queue.entries.len() < self.config.max_messages
                && queue.bytes + size <= self.config.max_bytes
        };
        let mut dropped = Vec::new();
        if !fits(&queue) {
            match self.config.overflow {
                Overflow::Reject | Overflow::Wait => return Err(SendError::BufferFull(message)),
                Overflow::DropNewest => return Ok(Sent::Dropped(message)),
                Overflow::DropOldest => {
                    while !fits(&queue) {
                        let Some(oldest) = queue.entries.pop_front() else {
                            break;
                        };
                        queue.bytes -= oldest.message.len();
                        queue.pinned -= usize::from(oldest.only_on.is_some());
                        dropped.push(oldest.message);
                    }
                }
            }
        }

        queue.bytes += size;
        queue.pinned += usize::from(only_on.is_some());
        queue.entries.push_back(Entry {
            message,
            queued_at,
            only_on,
        });
        drop(queue);
        self.ready.signal();

        if dropped.is_empty() {
            Ok(Sent::Queued)
        } else {
            Ok(Sent::QueuedDropping(dropped))
        }
    }

    /// Takes the next message that may still be sent, discarding expired ones and ones
    /// meant for an earlier connection.
    #[cfg(test)]
    pub(crate) fn take(&self, discards: &mut Discards) -> Option<Message> {
        let mut batch = VecDeque::with_capacity(1);
        self.take_batch(&mut batch, 1, discards);
        batch.pop_front().map(|entry| entry.message)
    }

    /// Moves up to `max` sendable messages into `batch` under one lock, discarding expired
    /// ones and ones meant for an earlier connection.
    pub(crate) fn take_batch(
        &self,
        batch: &mut VecDeque<Entry>,
        max: usize,
        discards: &mut Discards,
    ) {
        let expired_before = self.config.max_age.map(|age| (Instant::now(), age));
        let mut queue = self.lock();
        if expired_before.is_none() && queue.pinned == 0 {
            // Nothing can be discarded: the batch moves in bulk.
            take_all(&mut queue, batch, max);
        } else {
            take_each(&mut queue, batch, max, expired_before, discards);
        }
        drop(queue);

        // Only `Overflow::Wait` has senders waiting for room.
        if self.config.overflow == Overflow::Wait {
            self.room.notify_waiters();
        }
    }

    /// Returns messages that were taken for a connection that failed before writing them,
    /// ahead of everything queued since, as far as the limits allow. Counts the ones meant
    /// only for that connection as not replayable and the ones with no room as lost.
    pub(crate) fn put_back(&self, entries: &mut VecDeque<Entry>, discards: &mut Discards) -> u64 {
        let mut queue = self.lock();
        let replayable = |entry: &Entry| entry.only_on.is_none();
        discards.not_replayable += entries.iter().filter(|entry| !replayable(entry)).count() as u64;
        entries.retain(replayable);

        // Keep the oldest that fit, as they would have gone out first.
        let mut count = queue.entries.len();
        let mut bytes = queue.bytes;
        let fitting = if queue.closed {
            0
        } else {
            entries
                .iter()
                .take_while(|entry| {
                    count += 1;
                    bytes += entry.message.len();
                    count <= self.config.max_messages && bytes <= self.config.max_bytes
                })
                .count()
        };
        let lost = (entries.len() - fitting) as u64;
        entries.truncate(fitting);
        for entry in entries.drain(..).rev() {
            queue.bytes += entry.message.len();
            queue.entries.push_front(entry);
        }
        drop(queue);

        if fitting > 0 {
            self.ready.signal();
        }
        lost
    }

    /// Records which connection is open (hook done), or that none is.
    pub(crate) fn set_open(&self, connection: Option<u64>) {
        self.lock().open = connection;
    }

    /// Refuses further messages, keeping the ones queued for [`Outbox::close`] to hand back.
    pub(crate) fn refuse(&self) {
        self.lock().closed = true;
        self.room.notify_waiters();
    }

    /// Refuses further messages and hands back the ones still queued.
    pub(crate) fn close(&self) -> Vec<Message> {
        let mut queue = self.lock();
        queue.closed = true;
        queue.bytes = 0;
        queue.pinned = 0;
        let left = queue.entries.drain(..).map(|entry| entry.message).collect();
        drop(queue);

        self.room.notify_waiters();
        left
    }

    /// Messages and bytes queued right now.
    pub(crate) fn len(&self) -> (usize, usize) {
        let queue = self.lock();
        (queue.entries.len(), queue.bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent, so a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Moves up to `max` entries from the front of `queue` to `batch`.
fn take_all(queue: &mut Queue, batch: &mut VecDeque<Entry>, max: usize) {
    if batch.is_empty() && queue.entries.len() <= max {
        std::mem::swap(&mut queue.entries, batch);
        queue.bytes = 0;
        return;
    }
    let taken = max.min(queue.entries.len());
    let bytes: usize = queue
        .entries
        .range(..taken)
        .map(|entry| entry.message.len())
        .sum();
    queue.bytes -= bytes;
    batch.extend(queue.entries.drain(..taken));
}

/// Moves up to `max` sendable entries from the front of `queue` to `batch`, one by one,
/// counting the expired and the ones meant for another connection.
fn take_each(
    queue: &mut Queue,
    batch: &mut VecDeque<Entry>,
    max: usize,
    expired_before: Option<(Instant, Duration)>,
    discards: &mut Discards,
) {
    let mut taken = 0;
    while taken < max {
        let Some(entry) = queue.entries.pop_front() else {
            break;
        };
        queue.bytes -= entry.message.len();
        queue.pinned -= usize::from(entry.only_on.is_some());
        if let (Some((now, age)), Some(queued_at)) = (expired_before, entry.queued_at)
            && now.duration_since(queued_at) > age
        {
            discards.expired += 1;
            continue;
        }
        if entry.only_on.is_some() && entry.only_on != queue.open {
            discards.not_replayable += 1;
            continue;
        }
        batch.push_back(entry);
        taken += 1;
    }
}

/// A wake-up flag for the single writer: lock-free, unlike `Notify`, because it is touched
/// on every send.
#[derive(Debug, Default)]
pub(crate) struct Ready {
    flag: AtomicBool,
    waker: AtomicWaker,
}

impl Ready {
    /// Marks work as ready and wakes the writer.
    pub(crate) fn signal(&self) {
        // Whoever raised the flag is waking the writer already, and the writer looks at
        // the flag again after registering, so only the first signal needs to wake it.
        // The plain load first: while the writer is busy the flag stays raised, and reading
        // it does not pull the cache line away from the writer as a swap would.
        if !self.flag.load(Ordering::Acquire) && !self.flag.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Ready when work was signalled since the last time this returned ready; otherwise
    /// registers the task to be woken by the next signal.
    pub(crate) fn poll_signalled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A signal between the first check and the registration woke no one: look again.
        if self.flag.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Discards {
    /// Each non-zero count with its reason.
    pub(crate) fn reasons(&self) -> impl Iterator<Item = (DiscardReason, u64)> {
        [
            (DiscardReason::Expired, self.expired),
            (DiscardReason::NotReplayable, self.not_replayable),
        ]
        .into_iter()
        .filter(|(_, count)| *count > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn outbox(max_messages: usize, max_bytes: usize, overflow: Overflow) -> Outbox {
        Outbox::new(
            BufferConfig {
                max_messages,
                max_bytes,
                overflow,
                max_age: None,
            },
            1 << 20,
        )
    }

    fn text(n: u32) -> Message {
        Message::text(n.to_string())
    }

    #[tokio::test]
    async fn reject_gives_the_message_back_when_full() {
        let outbox = outbox(2, 1024, Overflow::Reject);

        assert_eq!(outbox.push(text(1), true).await.unwrap(), Sent::Queued);
        assert_eq!(outbox.push(text(2), true).await.unwrap(), Sent::Queued);
        let error = outbox.push(text(3), true).await.unwrap_err();

        assert!(matches!(error, SendError::BufferFull(_)));
        assert_eq!(error.into_message(), text(3));
    }

    #[tokio::test]
    async fn the_byte_limit_holds_too() {
        let outbox = outbox(100, 10, Overflow::DropOldest);

        outbox.push(Message::text("aaaaaa"), true).await.unwrap();
        let sent = outbox.push(Message::text("bbbbbb"), true).await.unwrap();

        assert_eq!(sent, Sent::QueuedDropping(vec![Message::text("aaaaaa")]));
        assert_eq!(outbox.len(), (1, 6));
    }

    #[tokio::test]
    async fn too_large_is_refused_whatever_the_policy() {
        let outbox = outbox(100, 4, Overflow::DropOldest);

        let error = outbox.push(Message::text("12345"), true).await.unwrap_err();

        assert!(matches!(
            error,
            SendError::TooLarge {
                size: 5,
                limit: 4,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn drop_newest_reports_the_new_message() {
        let outbox = outbox(1, 1024, Overflow::DropNewest);
        outbox.push(text(1), true).await.unwrap();

        assert_eq!(
            outbox.push(text(2), true).await.unwrap(),
            Sent::Dropped(text(2))
        );
        assert_eq!(outbox.take(&mut Discards::default()), Some(text(1)));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_resumes_when_the_task_takes_a_message() {
        let outbox = std::sync::Arc::new(outbox(1, 1024, Overflow::Wait));
        outbox.push(text(1), true).await.unwrap();

        let waiting = tokio::spawn({
            let outbox = std::sync::Arc::clone(&outbox);
            async move { outbox.push(text(2), true).await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished());
        outbox.take(&mut Discards::default());

        assert_eq!(waiting.await.unwrap().unwrap(), Sent::Queued);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_and_stale_unreplayable_messages_are_skipped() {
        let outbox = Outbox::new(
            BufferConfig {
                max_age: Some(Duration::from_secs(10)),
                ..BufferConfig::default()
            },
            1 << 20,
        );
        outbox.set_open(Some(1));
        outbox.push(text(1), true).await.unwrap();
        outbox.push(text(2), false).await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        outbox.push(text(3), true).await.unwrap();
        outbox.set_open(Some(2));
        outbox.push(text(4), false).await.unwrap();

        let mut discards = Discards::default();
        let taken: Vec<_> = std::iter::from_fn(|| outbox.take(&mut discards)).collect();

        assert_eq!(taken, vec![text(3), text(4)]);
        assert_eq!(
            discards,
            Discards {
                expired: 2,
                not_replayable: 0
            }
        );
    }

    #[tokio::test]
    async fn takes_in_bulk_and_one_by_one_keep_order_and_counts() {
        let outbox = outbox(3, 1024, Overflow::DropOldest);
        let mut batch = VecDeque::new();
        let mut discards = Discards::default();
        let messages = |batch: &mut VecDeque<Entry>| -> Vec<Message> {
            batch.drain(..).map(|entry| entry.message).collect()
        };

        // The only message meant for one connection is dropped to make room.
        outbox.set_open(Some(1));
        outbox.push(text(1), false).await.unwrap();
        for n in 2..=4 {
            outbox.push(text(n), true).await.unwrap();
        }
        outbox.take_batch(&mut batch, 2, &mut discards);
        assert_eq!(messages(&mut batch), vec![text(2), text(3)]);
        assert_eq!(outbox.len(), (1, 1));

        // One meant for this connection and one for the last: the latter is discarded.
        outbox.push(text(5), false).await.unwrap();
        outbox.set_open(Some(2));
        outbox.push(text(6), false).await.unwrap();
        outbox.take_batch(&mut batch, 10, &mut discards);
        assert_eq!(messages(&mut batch), vec![text(4), text(6)]);
        assert_eq!(outbox.len(), (0, 0));
        assert_eq!(discards.not_replayable, 1);

        // Nothing left to filter: the whole queue changes hands.
        outbox.push(text(7), true).await.unwrap();
        outbox.push(text(8), true).await.unwrap();
        outbox.take_batch(&mut batch, 10, &mut discards);
        assert_eq!(messages(&mut batch), vec![text(7), text(8)]);
        assert_eq!(outbox.len(), (0, 0));
        assert_eq!(discards.not_replayable, 1);
    }

    #[tokio::test]
    async fn put_back_keeps_the_oldest_that_fit_ahead_of_newer_messages() {
        let outbox = outbox(4, 1024, Overflow::Reject);
        outbox.set_open(Some(1));
        outbox.push(text(1), false).await.unwrap();
        outbox.push(text(2), true).await.unwrap();
        outbox.push(text(3), true).await.unwrap();
        let mut discards = Discards::default();
        let mut taken = VecDeque::new();
        outbox.take_batch(&mut taken, 3, &mut discards);
        outbox.set_open(None);
        outbox.push(text(4), true).await.unwrap();
        outbox.push(text(5), true).await.unwrap();
        outbox.push(text(6), true).await.unwrap();

        // 1 was meant for connection 1 only; of 2 and 3 only 2 fits beside 4, 5 and 6.
        let lost = outbox.put_back(&mut taken, &mut discards);
        let left: Vec<_> = std::iter::from_fn(|| outbox.take(&mut discards)).collect();

        assert_eq!(lost, 1);
        assert_eq!(discards.not_replayable, 1);
        assert_eq!(left, vec![text(2), text(4), text(5), text(6)]);
    }

    #[tokio::test]
    async fn put_back_after_close_keeps_nothing() {
        let outbox = outbox(4, 1024, Overflow::Reject);
        outbox.push(text(1), true).await.unwrap();
        let mut discards = Discards::default();
        let mut taken = VecDeque::new();
        outbox.take_batch(&mut taken, 1, &mut discards);
        outbox.refuse();

        assert_eq!(outbox.put_back(&mut taken, &mut discards), 1);
        assert_eq!(outbox.len(), (0, 0));
    }

    #[tokio::test]
    async fn unreplayable_messages_need_an_open_connection_and_close_refuses_all() {
        let outbox = outbox(10, 1024, Overflow::Reject);

        let error = outbox.push(text(1), false).await.unwrap_err();
        outbox.push(text(2), true).await.unwrap();
        let left = outbox.close();
        let after = outbox.push(text(3), true).await.unwrap_err();

        assert!(matches!(error, SendError::NotConnected(_)));
        assert_eq!(left, vec![text(2)]);
        assert!(matches!(after, SendError::Closed(_)));
    }
}
