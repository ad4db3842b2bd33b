//! The bounded queue between the socket task and [`Incoming`](crate::Incoming).
//!
//! The socket task reads frames in bursts; this queue takes a whole burst under one lock
//! and wakes the reader once for it, where a channel would take a permit, link a node and
//! wake the reader for every message.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::message::Message;

/// A FIFO bounded in messages and in payload bytes, with one producer (the socket task)
/// and one consumer (`Incoming`).
#[derive(Debug)]
pub(crate) struct Inbox {
    queue: Mutex<Queue>,
    capacity: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Queue {
    messages: VecDeque<Message>,
    /// Payload bytes in `messages`.
    bytes: usize,
    /// The socket task is done: once `messages` is empty, the reader gets `None`.
    sender_gone: bool,
    /// `Incoming` was dropped: nothing more is accepted.
    receiver_gone: bool,
    /// The reader, waiting for a message.
    reader: Option<Waker>,
    /// The socket task, waiting for room.
    writer: Option<Waker>,
}

/// What a push did with the messages offered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// All of them are queued.
    All,
    /// The queue is full; the ones left stay with the caller, which is woken on room.
    Full,
    /// `Incoming` is gone: the messages were dropped, and this many are unread.
    Unread(u64),
}

impl Inbox {
    /// An inbox for `capacity` messages and `max_bytes` of payload; one message is taken
    /// into an empty inbox whatever its size, so no message is too large for it.
    pub(crate) fn new(capacity: usize, max_bytes: usize) -> Self {
        Self {
            queue: Mutex::new(Queue {
                messages: VecDeque::new(),
                bytes: 0,
                sender_gone: false,
                receiver_gone: false,
                reader: None,
                writer: None,
            }),
            capacity,
            max_bytes,
        }
    }

    /// Moves as many of `messages` as there is room for, in order. When some are left,
    /// registers `cx` to be woken once the reader makes room.
    pub(crate) fn push(
        &self,
        messages: &mut VecDeque<Message>,
        cx: Option<&Context<'_>>,
    ) -> Pushed {
        self.push_within(messages, cx, self.max_bytes)
    }

    /// Moves as many of `messages` as the message bound allows, whatever their size: the
    /// last data of a client that is closing, already in memory, is not held back by the
    /// byte bound, which only exists to stop reading the socket.
    pub(crate) fn push_closing(&self, messages: &mut VecDeque<Message>) -> Pushed {
        self.push_within(messages, None, usize::MAX)
    }

    fn push_within(
        &self,
        messages: &mut VecDeque<Message>,
        cx: Option<&Context<'_>>,
        max_bytes: usize,
    ) -> Pushed {
        if messages.is_empty() {
            return Pushed::All;
        }
        let mut queue = self.lock();
        if queue.receiver_gone {
            let unread = messages.len() as u64;
            messages.clear();
            return Pushed::Unread(unread);
        }

        let (moved, bytes) = self.room_for(&queue, messages, max_bytes);
        queue.bytes += bytes;
        if queue.messages.is_empty() && moved == messages.len() {
            // The reader has caught up: the whole burst changes hands without a copy, and
            // the caller gets the reader's emptied buffer to fill next.
            std::mem::swap(&mut queue.messages, messages);
        } else {
            queue.messages.extend(messages.drain(..moved));
        }
        let reader = if moved > 0 { queue.reader.take() } else { None };
        let pushed = if messages.is_empty() {
            Pushed::All
        } else {
            if let Some(cx) = cx {
                register(&mut queue.writer, cx);
            }
            Pushed::Full
        };
        drop(queue);

        if let Some(reader) = reader {
            reader.wake();
        }
        pushed
    }

    /// Hands up to `limit` messages to `take`; ready with `None` once the socket task is
    /// done and everything was read.
    pub(crate) fn poll_take<T>(
        &self,
        cx: &Context<'_>,
        limit: usize,
        take: impl FnOnce(std::collections::vec_deque::Drain<'_, Message>) -> T,
    ) -> Poll<Option<T>> {
        let mut queue = self.lock();
        let taken = limit.min(queue.messages.len());
        if taken == 0 {
            if queue.sender_gone {
                return Poll::Ready(None);
            }
            register(&mut queue.reader, cx);
            return Poll::Pending;
        }

        let bytes: usize = queue.messages.range(..taken).map(Message::len).sum();
        queue.bytes -= bytes;
        let output = take(queue.messages.drain(..taken));
        let writer = queue.writer.take();
        drop(queue);

        if let Some(writer) = writer {
            writer.wake();
        }
        Poll::Ready(Some(output))
    }

    /// The socket task is done; the reader gets what is queued, then the end.
    pub(crate) fn close_sending(&self) {
        let reader = {
            let mut queue = self.lock();
            queue.sender_gone = true;
            queue.reader.take()
        };
        if let Some(reader) = reader {
            reader.wake();
        }
    }

    /// `Incoming` is gone; returns how many queued messages were never read.
    pub(crate) fn close_receiving(&self) -> u64 {
        let (unread, writer) = {
            let mut queue = self.lock();
            queue.receiver_gone = true;
            let unread = queue.messages.len() as u64;
            queue.messages.clear();
            queue.bytes = 0;
            (unread, queue.writer.take())
        };
        if let Some(writer) = writer {
            writer.wake();
        }
        unread
    }

    /// How many of `messages`, from the front, fit in `queue` under `max_bytes`, and their
    /// payload bytes.
    fn room_for(
        &self,
        queue: &Queue,
        messages: &VecDeque<Message>,
        max_bytes: usize,
    ) -> (usize, usize) {
        let room = self.capacity.saturating_sub(queue.messages.len());
        let mut bytes = 0;
        let mut fits = 0;
        for message in messages.iter().take(room) {
            let total = queue
                .bytes
                .saturating_add(bytes)
                .saturating_add(message.len());
            if total > max_bytes && (fits > 0 || !queue.messages.is_empty()) {
                break;
            }
            bytes += message.len();
            fits += 1;
        }
        (fits, bytes)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every critical section leaves the queue consistent, so a poisoned lock is usable.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(waker) if waker.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting_waker() -> (Arc<Counter>, Waker) {
        let counter = Arc::new(Counter::default());
        (Arc::clone(&counter), Waker::from(counter))
    }

    fn text(n: u32) -> Message {
        Message::text(n.to_string())
    }

    fn messages(range: std::ops::Range<u32>) -> VecDeque<Message> {
        range.map(text).collect()
    }

    fn take(inbox: &Inbox, cx: &Context<'_>, limit: usize) -> Poll<Option<VecDeque<Message>>> {
        inbox.poll_take(cx, limit, |taken| taken.collect())
    }

    #[test]
    fn a_burst_wakes_the_waiting_reader_once_and_keeps_its_order() {
        let inbox = Inbox::new(10, usize::MAX);
        let (reader, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        assert_eq!(take(&inbox, &cx, 10), Poll::Pending);

        assert_eq!(inbox.push(&mut messages(0..3), None), Pushed::All);
        assert_eq!(inbox.push(&mut messages(3..5), None), Pushed::All);

        assert_eq!(reader.0.load(Ordering::SeqCst), 1);
        assert_eq!(take(&inbox, &cx, 10), Poll::Ready(Some(messages(0..5))));
    }

    #[test]
    fn a_full_queue_keeps_the_rest_with_the_writer_and_wakes_it_on_room() {
        let inbox = Inbox::new(2, usize::MAX);
        let (writer, waker) = counting_waker();
        let cx = Context::from_waker(&waker);
        let mut left = messages(0..3);

        assert_eq!(inbox.push(&mut left, Some(&cx)), Pushed::Full);
        assert_eq!(left, messages(2..3));
        assert_eq!(take(&inbox, &cx, 1), Poll::Ready(Some(messages(0..1))));

        assert_eq!(writer.0.load(Ordering::SeqCst), 1);
        assert_eq!(inbox.push(&mut left, Some(&cx)), Pushed::All);
        assert_eq!(take(&inbox, &cx, 10), Poll::Ready(Some(messages(1..3))));
    }

    #[test]
    fn the_byte_bound_holds_messages_back_but_lets_a_large_one_into_an_empty_queue() {
        let inbox = Inbox::new(10, 8);
        let cx = Context::from_waker(Waker::noop());
        let large = || Message::text("x".repeat(20));
        let mut left = VecDeque::from([Message::text("1234"), Message::text("5678"), large()]);

        assert_eq!(inbox.push(&mut left, Some(&cx)), Pushed::Full);
        assert_eq!(left, [large()]);
        assert_eq!(
            take(&inbox, &cx, 1),
            Poll::Ready(Some([Message::text("1234")].into()))
        );
        assert_eq!(
            inbox.push(&mut left, Some(&cx)),
            Pushed::Full,
            "4 + 20 bytes > 8"
        );
        assert_eq!(
            take(&inbox, &cx, 10),
            Poll::Ready(Some([Message::text("5678")].into()))
        );

        assert_eq!(inbox.push(&mut left, Some(&cx)), Pushed::All);
        assert_eq!(take(&inbox, &cx, 10), Poll::Ready(Some([large()].into())));
        assert_eq!(inbox.push(&mut messages(0..3), Some(&cx)), Pushed::All);
    }

    #[test]
    fn the_reader_sees_everything_queued_before_the_end() {
        let inbox = Inbox::new(4, usize::MAX);
        inbox.push(&mut messages(0..2), None);
        inbox.close_sending();
        let cx = Context::from_waker(Waker::noop());

        assert_eq!(take(&inbox, &cx, 10), Poll::Ready(Some(messages(0..2))));
        assert_eq!(take(&inbox, &cx, 10), Poll::Ready(None));
    }

    #[test]
    fn a_dropped_reader_turns_queued_and_offered_messages_into_unread_counts() {
        let inbox = Inbox::new(4, usize::MAX);
        inbox.push(&mut messages(0..3), None);

        assert_eq!(inbox.close_receiving(), 3);
        assert_eq!(inbox.push(&mut messages(3..5), None), Pushed::Unread(2));
    }
}
