//! What the application can observe: the state, events and counters.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::error::{CloseReason, Error};

/// Where the client stands, published through a `watch` channel.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum State {
    /// An attempt is under way (TCP, TLS, upgrade, then the on-connect hook); `attempt`
    /// counts from 1 and starts again after a stable connection.
    Connecting {
        /// Which attempt of the current run of failures this is.
        attempt: u32,
    },
    /// Connected, the on-connect hook has succeeded, buffered messages are flowing.
    Open,
    /// Waiting before the next attempt.
    Reconnecting {
        /// The attempt that comes after the wait.
        attempt: u32,
        /// How long the wait is.
        delay: Duration,
        /// Why the last attempt or connection failed.
        last_error: Error,
    },
    /// `close` was called or the token cancelled; the close handshake is under way.
    Closing,
    /// Closed for good.
    Closed(CloseReason),
}

impl State {
    /// Whether messages flow right now.
    pub fn is_open(&self) -> bool {
        matches!(self, Self::Open)
    }

    /// Whether the client has stopped for good.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }
}

/// Something the application may want to know about, in order of occurrence.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// An attempt started.
    Connecting {
        /// Which attempt.
        attempt: u32,
    },
    /// A connection opened and its on-connect hook succeeded.
    Connected {
        /// Which attempt succeeded.
        attempt: u32,
    },
    /// An attempt failed or an open connection ended.
    Disconnected {
        /// Why.
        error: Error,
    },
    /// The client waits this long before the next attempt.
    Reconnecting {
        /// The attempt that follows.
        attempt: u32,
        /// The wait.
        delay: Duration,
    },
    /// Queued messages were discarded rather than sent.
    Discarded {
        /// Why.
        reason: DiscardReason,
        /// How many.
        count: u64,
    },
    /// A received message did not parse as the expected JSON type (the `json` layer); the
    /// connection goes on.
    ParseFailed {
        /// The parser's message.
        error: String,
        /// The message that failed.
        message: crate::Message,
    },
    /// The client closed for good.
    Closed(CloseReason),
    /// This receiver fell behind and missed this many events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Why queued messages were not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscardReason {
    /// Pushed out by newer messages under [`Overflow::DropOldest`](crate::Overflow::DropOldest).
    DroppedOldest,
    /// Refused under [`Overflow::DropNewest`](crate::Overflow::DropNewest).
    DroppedNewest,
    /// Older than the buffer's `max_age` when their turn came.
    Expired,
    /// Flagged not to be replayed, and the connection they were meant for ended.
    NotReplayable,
    /// Handed to a connection that failed before they were flushed, or taken for it and
    /// then left without room to go back into the buffer.
    LostInFlight,
}

/// A snapshot of the client's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Connections that opened (hook included).
    pub connects: u64,
    /// Attempts that failed or connections that ended, before a reconnect.
    pub disconnects: u64,
    /// Data messages handed to the socket.
    pub messages_sent: u64,
    /// Data messages received.
    pub messages_received: u64,
    /// Messages pushed out under drop-oldest.
    pub dropped_oldest: u64,
    /// Messages refused under drop-newest.
    pub dropped_newest: u64,
    /// Messages that outlived the buffer's age limit.
    pub expired: u64,
    /// Non-replayable messages whose connection ended first.
    pub not_replayed: u64,
    /// Messages lost with a connection before they were flushed.
    pub lost_in_flight: u64,
    /// Received messages the JSON layer could not parse.
    pub parse_failures: u64,
    /// Received messages never read: the application dropped its `Incoming`, or its queue
    /// was full when the client closed.
    pub unread: u64,
    /// Pings sent.
    pub pings: u64,
}

/// The live counters behind [`Metrics`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connects: AtomicU64,
    pub(crate) disconnects: AtomicU64,
    pub(crate) messages_sent: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) dropped_oldest: AtomicU64,
    pub(crate) dropped_newest: AtomicU64,
    pub(crate) expired: AtomicU64,
    pub(crate) not_replayed: AtomicU64,
    pub(crate) lost_in_flight: AtomicU64,
    pub(crate) parse_failures: AtomicU64,
    pub(crate) unread: AtomicU64,
    pub(crate) pings: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Metrics {
            connects: get(&self.connects),
            disconnects: get(&self.disconnects),
            messages_sent: get(&self.messages_sent),
            messages_received: get(&self.messages_received),
            dropped_oldest: get(&self.dropped_oldest),
            dropped_newest: get(&self.dropped_newest),
            expired: get(&self.expired),
            not_replayed: get(&self.not_replayed),
            lost_in_flight: get(&self.lost_in_flight),
            parse_failures: get(&self.parse_failures),
            unread: get(&self.unread),
            pings: get(&self.pings),
        }
    }

    /// Counts discarded messages under their reason.
    pub(crate) fn discarded(&self, reason: DiscardReason, count: u64) {
        let counter = match reason {
            DiscardReason::DroppedOldest => &self.dropped_oldest,
            DiscardReason::DroppedNewest => &self.dropped_newest,
            DiscardReason::Expired => &self.expired,
            DiscardReason::NotReplayable => &self.not_replayed,
            DiscardReason::LostInFlight => &self.lost_in_flight,
        };
        Self::add(counter, count);
    }
}

/// A stream of [`Event`]s. Each call to `Client::events` gives an independent one that sees
/// events from that moment on.
#[derive(Debug)]
pub struct Events {
    pub(crate) receiver: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the client has closed and every event was seen.
    /// A receiver that falls behind gets [`Event::Lagged`] rather than silently missing
    /// events.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an event is only taken when it is returned.
    pub async fn next(&mut self) -> Option<Event> {
        match self.receiver.recv().await {
            Ok(event) => Some(event),
            Err(broadcast::error::RecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }

    /// The next event if one is waiting, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        match self.receiver.try_recv() {
            Ok(event) => Some(event),
            Err(broadcast::error::TryRecvError::Lagged(missed)) => Some(Event::Lagged { missed }),
            Err(_) => None,
        }
    }
}
