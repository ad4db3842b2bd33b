//! One open connection: frames both ways, pings and the hand-over of received data, all
//! polled by the socket task on the whole socket.
//!
//! The socket is not split into halves. Splitting puts a lock in front of every read and
//! every write, which buys nothing when a single task does both; polling the directions
//! one after the other in one `poll` keeps that cost off every message.
//!
//! Common frames skip tungstenite's per-frame machinery both ways (see [`crate::wire`]):
//! data messages and pings are framed into the wire's write queue, and whole data frames
//! up to [`READ_UP_TO`] are taken from its read buffer. tungstenite reads every other frame
//! and answers pings and close frames itself.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc::{self, error::TryRecvError};
use tokio::time::{Instant, Interval, MissedTickBehavior, Sleep};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes, error::ProtocolError};
use tracing::{debug, trace};

use crate::client::Shared;
use crate::error::Error;
use crate::inbox::Pushed;
use crate::message::Message;
use crate::outbox::{Discards, Entry};
use crate::state::{Counters, DiscardReason};
use crate::task::Socket;
use crate::wire::{self, Front};

/// Most messages taken from the outbox under one lock.
const OUTBOX_BATCH: usize = 1024;

/// Most frames fed to the socket before reads get their turn; tungstenite writes out by
/// itself whenever its write buffer fills, so this only bounds how long reads wait.
const MAX_FED: usize = 4096;

/// Most frames read before the data gathered so far is handed over.
const MAX_READ: usize = 256;

/// Bytes of received data gathered before it is handed over, so a burst of large messages
/// is not held back for long.
const MAX_GATHERED_BYTES: usize = 256 << 10;

/// Data frames up to this size are read from the wire's buffer, without tungstenite; the
/// rare larger ones go through it.
const READ_UP_TO: usize = 16 << 10;

/// The state of one connection between the upgrade and its end.
pub(crate) struct Link {
    socket: Socket,
    shared: Arc<Shared>,
    /// Whether the on-connect hook has succeeded, so the outbox may flow.
    hook_done: bool,
    /// Whether a `HookSender` may still send.
    hook_open: bool,

    /// Messages taken from the outbox and not yet fed to the socket.
    outgoing: VecDeque<Entry>,
    /// Whether the last take filled a whole batch, so more may be waiting unsignalled.
    outbox_more: bool,
    /// A ping waiting to be written.
    ping_out: Option<Bytes>,
    /// Messages taken (from the outbox or the hook) whose flush has not succeeded yet.
    in_flight: u64,
    /// Of those, the ones framed into the wire since the last successful flush.
    unconfirmed: u64,
    /// Whether frames were fed since the last successful flush.
    unflushed: bool,
    /// Set when a write failed because the peer's close arrived first: the read side has
    /// the close code and ends the connection with it.
    write_closed: bool,

    /// Received data the application's queue has not accepted yet, in order.
    received: VecDeque<Message>,
    /// Why the read side ended; reported once `received` is handed over.
    ended: Option<Error>,
    /// The close frame the peer sent, if any.
    close_code: Option<(u16, String)>,

    /// Masking keys for outgoing frames, which must be unpredictable to the network.
    masks: StdRng,

    ticker: Option<Interval>,
    /// The unanswered ping: its nonce and when it went out.
    ping: Option<(u64, Instant)>,
    nonce: u64,
    /// When the unanswered ping counts as lost; armed while `pong_due`.
    pong_deadline: Pin<Box<Sleep>>,
    pong_due: bool,
    /// Once the peer's close has arrived and been answered: when the peer must have ended
    /// the connection.
    close_deadline: Option<Pin<Box<Sleep>>>,
}

impl Link {
    pub(crate) fn new(socket: Socket, shared: Arc<Shared>) -> Self {
        let ticker = shared.config.ping_interval.map(|interval| {
            let mut ticker = tokio::time::interval_at(later(Instant::now(), interval), interval);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            ticker
        });
        Self {
            socket,
            shared,
            hook_done: false,
            hook_open: true,
            outgoing: VecDeque::new(),
            outbox_more: false,
            ping_out: None,
            in_flight: 0,
            unconfirmed: 0,
            unflushed: false,
            write_closed: false,
            received: VecDeque::new(),
            ended: None,
            close_code: None,
            masks: StdRng::from_rng(&mut rand::rng()),
            ticker,
            ping: None,
            nonce: 0,
            pong_deadline: Box::pin(tokio::time::sleep(Duration::ZERO)),
            pong_due: false,
            close_deadline: None,
        }
    }

    /// Lets buffered messages flow, after every message the hook sent.
    pub(crate) fn hook_done(&mut self) {
        self.hook_done = true;
    }

    /// Messages taken for this connection that were not confirmed written.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Hands the messages taken but never fed to the socket back to the outbox, so a later
    /// connection sends them; what cannot go back is reported.
    pub(crate) fn put_back_unwritten(&mut self) {
        let unwritten = self.outgoing.len() as u64;
        if unwritten == 0 {
            return;
        }
        let mut discards = Discards::default();
        let lost = self
            .shared
            .outbox
            .put_back(&mut self.outgoing, &mut discards);
        self.in_flight -= unwritten;
        for (reason, count) in discards.reasons() {
            report_discards(&self.shared, reason, count);
        }
        if lost > 0 {
            report_discards(&self.shared, DiscardReason::LostInFlight, lost);
        }
    }

    /// Runs the connection until it fails; returns why.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: every piece of progress lives in `self`, so a later call resumes.
    pub(crate) async fn run(&mut self, hook: &mut mpsc::UnboundedReceiver<Message>) -> Error {
        std::future::poll_fn(|cx| self.poll(cx, hook)).await
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        hook: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Poll<Error> {
        // Received data first: while the application's queue is full, nothing is read and
        // the liveness check waits with it.
        // Not yet: so the server's pings also wait for the application to read.
        if self.poll_hand_over(cx).is_ready() && self.ended.is_none() {
            self.poll_read(cx);
            if self.poll_hand_over(cx).is_ready()
                && self.ended.is_none()
                && let Poll::Ready(error) = self.poll_liveness(cx)
            {
                self.ended = Some(error);
            }
        }
        if self.ended.is_none()
            && let Poll::Ready(error) = self.poll_write(cx, hook)
        {
            self.ended = Some(error);
        }

        // The end is reported only once the data that arrived before it is handed over.
        if self.received.is_empty()
            && let Some(error) = self.ended.take()
        {
            return Poll::Ready(error);
        }
        Poll::Pending
    }

    /// Reads the frames that are ready, up to a batch, into `received`.
    fn poll_read(&mut self, cx: &mut Context<'_>) {
        let mut frames = 0;
        let mut bytes = 0;
        let mut data = 0;

        while self.ended.is_none() {
            if frames == MAX_READ || bytes >= MAX_GATHERED_BYTES {
                // More may be ready: hand these over first, then come back.
                cx.waker().wake_by_ref();
                break;
            }
            if self.close_code.is_none() {
                match self.read_simple_frame(cx) {
                    Poll::Ready(Ok(Some(message))) => {
                        frames += 1;
                        bytes += message.len();
                        data += 1;
                        self.received.push_back(message);
                        continue;
                    }
                    // The frame at the front is tungstenite's to read.
                    Poll::Ready(Ok(None)) => {}
                    Poll::Ready(Err(error)) => {
                        self.ended = Some(self.read_error(error));
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            let Poll::Ready(frame) = Pin::new(&mut self.socket).poll_next(cx) else {
                break;
            };
            frames += 1;
            match frame {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    bytes += text.len();
                    data += 1;
                    self.received.push_back(Message::Text(text));
                }
                Some(Ok(tungstenite::Message::Binary(payload))) => {
                    bytes += payload.len();
                    data += 1;
                    self.received.push_back(Message::Binary(payload));
                }
                Some(Ok(tungstenite::Message::Pong(payload))) => self.pong(&payload),
                // tungstenite owes the server a pong, which the next flush sends.
                Some(Ok(tungstenite::Message::Ping(_))) => self.unflushed = true,
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    // tungstenite answers the close itself; reading goes on until the end.
                    self.close_code = Some(match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                        None => (1005, String::new()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => self.ended = Some(self.read_error(error)),
                None => self.ended = Some(self.read_error(tungstenite::Error::ConnectionClosed)),
            }
        }
        Counters::add(&self.shared.counters.messages_received, data);
        if self.socket.get_mut().take_progress() {
            // Anything received proves the peer alive, even part of a large frame.
            self.pong_due = false;
        }
    }

    /// Takes the frame at the front of the wire's read buffer when it is a whole data
    /// frame of modest size, reading more of the stream as needed. Ready with `None` when
    /// the frame is one for tungstenite. Text that is not UTF-8 fails as it would in
    /// tungstenite.
    fn read_simple_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Message>, tungstenite::Error>> {
        let max_payload = READ_UP_TO
            .min(self.shared.config.max_frame_size)
            .min(self.shared.config.max_message_size);
        loop {
            let wire = self.socket.get_mut();
            let (text, start, end) = match wire.front(max_payload) {
                Front::Data { text, start, end } => (text, start, end),
                Front::Tungstenite => return Poll::Ready(Ok(None)),
                Front::More => {
                    ready!(wire.poll_fill(cx))?;
                    continue;
                }
            };

            let payload = wire.take_payload(start, end);
            let message = if text {
                Message::Text(Utf8Bytes::try_from(payload)?)
            } else {
                Message::Binary(payload)
            };
            return Poll::Ready(Ok(Some(message)));
        }
    }

    fn read_error(&mut self, error: tungstenite::Error) -> Error {
        match self.close_code.take() {
            Some((code, reason)) => Error::Closed { code, reason },
            None if is_drop(&error) => Error::Dropped,
            None => Error::WebSocket(Arc::new(error)),
        }
    }

    fn pong(&mut self, payload: &[u8]) {
        if let Some((expected, sent_at)) = self.ping
            && payload == expected.to_be_bytes()
        {
            let rtt = sent_at.elapsed();
            trace!(?rtt, "pong");
            self.shared.set_rtt(rtt);
            self.ping = None;
        }
    }

    /// Hands received data to the application in order. Ready once nothing is left.
    fn poll_hand_over(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match self.shared.inbox.push(&mut self.received, Some(cx)) {
            Pushed::All => Poll::Ready(()),
            Pushed::Full => Poll::Pending,
            Pushed::Unread(unread) => {
                Counters::add(&self.shared.counters.unread, unread);
                Poll::Ready(())
            }
        }
    }

    /// Sends a ping on schedule and fails the connection when one goes unanswered.
    fn poll_liveness(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        if let Some((code, reason)) = &self.close_code {
            return self.poll_close_wait(cx, *code, reason.clone());
        }
        let timeout = self.shared.config.pong_timeout;
        if let Some(ticker) = self.ticker.as_mut() {
            while ticker.poll_tick(cx).is_ready() {
                self.socket.get_mut().release_if_idle();
                if self.pong_due {
                    continue;
                }
                self.nonce = self.nonce.wrapping_add(1);
                let sent_at = Instant::now();
                self.ping = Some((self.nonce, sent_at));
                self.ping_out = Some(Bytes::copy_from_slice(&self.nonce.to_be_bytes()));
                self.pong_deadline.as_mut().reset(later(sent_at, timeout));
                self.pong_due = true;
                Counters::add(&self.shared.counters.pings, 1);
                trace!(nonce = self.nonce, "ping");
            }
        }

        if self.pong_due && self.pong_deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Error::PongTimeout(timeout));
        }
        Poll::Pending
    }

    /// After the peer's close was answered, the peer should end the connection; one that
    /// keeps it open past `close_timeout` is left with the code it sent. No pings go out
    /// after a close, so none is waited for.
    fn poll_close_wait(&mut self, cx: &mut Context<'_>, code: u16, reason: String) -> Poll<Error> {
        let timeout = self.shared.config.close_timeout;
        let deadline = self.close_deadline.get_or_insert_with(|| {
            Box::pin(tokio::time::sleep_until(later(Instant::now(), timeout)))
        });
        ready!(deadline.as_mut().poll(cx));
        debug!(
            code,
            ?timeout,
            "the server kept the connection open after its close"
        );
        Poll::Ready(Error::Closed { code, reason })
    }

    /// Frames pings, the hook's messages and then buffered messages into the wire, and
    /// flushes once. Ready only on failure.
    fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        hook: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Poll<Error> {
        // After the peer's close frame nothing more may be sent; tungstenite answers it.
        if self.write_closed || self.close_code.is_some() {
            return Poll::Pending;
        }

        let mut fed = 0;
        while fed < MAX_FED {
            let wire = self.socket.get_mut();
            if wire.queued() >= self.shared.config.write_buffer_size {
                match wire.poll_drain(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(error)) => return self.write_failed(error.into()),
                    Poll::Pending => break,
                }
            }
            let Some((opcode, payload)) = self.next_frame(cx, hook) else {
                break;
            };
            self.push_frame(opcode, &payload);
            self.unflushed = true;
            fed += 1;
        }
        if fed == MAX_FED {
            // More is waiting: flush, let reads in, and come back at once.
            cx.waker().wake_by_ref();
        }

        if self.unflushed {
            // Through tungstenite, so an answer it owes the server goes out too.
            match Pin::new(&mut self.socket).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.unflushed = false;
                    self.confirm_written();
                }
                Poll::Ready(Err(error)) => return self.write_failed(error),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    }

    /// The next frame to write, as its opcode and payload, registering for a wake-up when
    /// there is none.
    fn next_frame(
        &mut self,
        cx: &mut Context<'_>,
        hook: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Option<(u8, Bytes)> {
        if let Some(payload) = self.ping_out.take() {
            // Not a message: `push_frame` does not count it.
            return Some((wire::PING, payload));
        }
        if let Some(message) = self.next_hook_message(cx, hook) {
            return Some(message.into_frame_parts());
        }
        if !self.hook_done {
            return None;
        }

        loop {
            if let Some(entry) = self.outgoing.pop_front() {
                return Some(entry.message.into_frame_parts());
            }
            if !self.outbox_more && self.shared.outbox.ready.poll_signalled(cx).is_pending() {
                return None;
            }
            self.take_from_outbox();
        }
    }

    /// The next message the hook sent, counted in flight, registering for a wake-up when
    /// there is none.
    fn next_hook_message(
        &mut self,
        cx: &mut Context<'_>,
        hook: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Option<Message> {
        if !self.hook_open {
            return None;
        }
        // `try_recv` first: unlike `poll_recv` it does not draw on tokio's cooperative
        // budget, which answering a flood of pings can use up, and a message the hook sent
        // must never look absent while buffered messages go out behind it.
        let polled = match hook.try_recv() {
            Ok(message) => Poll::Ready(Some(message)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => hook.poll_recv(cx),
        };
        match polled {
            Poll::Ready(Some(message)) => {
                self.in_flight += 1;
                Some(message)
            }
            Poll::Ready(None) => {
                // Every `HookSender` is gone: nothing more can come this way.
                self.hook_open = false;
                None
            }
            Poll::Pending => None,
        }
    }

    /// Ends the hook's channel for this connection and counts what it still held as in
    /// flight, so that what the hook sent is written or reported, never dropped unseen.
    pub(crate) fn take_hook_messages(
        &mut self,
        hook: &mut mpsc::UnboundedReceiver<Message>,
    ) -> Vec<Message> {
        hook.close();
        let mut messages = Vec::new();
        while let Ok(message) = hook.try_recv() {
            messages.push(message);
        }
        self.in_flight += messages.len() as u64;
        messages
    }

    /// Frames one message or ping into the wire, masked as a client must.
    fn push_frame(&mut self, opcode: u8, payload: &[u8]) {
        if opcode != wire::PING {
            self.unconfirmed += 1;
        }
        let mask = self.masks.random();
        self.socket.get_mut().push_frame(opcode, payload, mask);
    }

    /// Counts the messages framed since the last flush as sent, now that one succeeded.
    fn confirm_written(&mut self) {
        Counters::add(&self.shared.counters.messages_sent, self.unconfirmed);
        self.in_flight -= self.unconfirmed;
        self.unconfirmed = 0;
    }

    fn take_from_outbox(&mut self) {
        let mut discards = Discards::default();
        let before = self.outgoing.len();
        self.shared
            .outbox
            .take_batch(&mut self.outgoing, OUTBOX_BATCH, &mut discards);
        let taken = self.outgoing.len() - before;
        self.outbox_more = taken == OUTBOX_BATCH;
        // Taken messages count as in flight until a flush succeeds.
        self.in_flight += taken as u64;
        for (reason, count) in discards.reasons() {
            report_discards(&self.shared, reason, count);
        }
    }

    fn write_failed(&mut self, error: tungstenite::Error) -> Poll<Error> {
        if matches!(
            error,
            tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(ProtocolError::SendAfterClosing)
        ) {
            // The peer's close frame arrived first: the read side has its code and ends
            // the connection with it once the close handshake is over.
            self.write_closed = true;
            return Poll::Pending;
        }
        Poll::Ready(Error::WebSocket(Arc::new(error)))
    }

    /// Writes what the hook sent and what was taken, sends a normal close and waits, within
    /// `timeout`, for the peer's close. Counts everything written before the close as sent
    /// when the close frame was flushed, and hands over the data the peer sent before its
    /// close.
    pub(crate) async fn close(
        &mut self,
        timeout: Duration,
        hook: &mut mpsc::UnboundedReceiver<Message>,
    ) {
        self.hand_over_without_waiting();
        let from_hook = self.take_hook_messages(hook);
        if !self.write_closed && self.close_code.is_none() {
            for message in from_hook {
                let (opcode, payload) = message.into_frame_parts();
                self.push_frame(opcode, &payload);
            }
            while let Some(entry) = self.outgoing.pop_front() {
                let (opcode, payload) = entry.message.into_frame_parts();
                self.push_frame(opcode, &payload);
            }
        }
        let deadline = later(Instant::now(), timeout);
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let close = self.socket.send(tungstenite::Message::Close(Some(frame)));
        match tokio::time::timeout_at(deadline, close).await {
            // The close frame went out behind everything framed before it.
            Ok(Ok(())) => self.confirm_written(),
            Ok(Err(error)) => {
                debug!(%error, "the close handshake failed");
                return;
            }
            Err(_) => {
                debug!(?timeout, "the close frame could not be sent in time");
                return;
            }
        }

        // The server may still send data before its close; it is kept, not dropped.
        let (socket, received) = (&mut self.socket, &mut self.received);
        let mut data = 0;
        let answer = async {
            while let Some(Ok(frame)) = socket.next().await {
                match frame {
                    tungstenite::Message::Text(text) => received.push_back(Message::Text(text)),
                    tungstenite::Message::Binary(payload) => {
                        received.push_back(Message::Binary(payload));
                    }
                    _ => continue,
                }
                data += 1;
            }
        };
        if tokio::time::timeout_at(deadline, answer).await.is_err() {
            debug!(?timeout, "the server did not answer the close in time");
        }
        Counters::add(&self.shared.counters.messages_received, data);
        self.hand_over_without_waiting();
    }
}

impl Link {
    /// Answers a protocol violation by the server with a close frame carrying `code`, within
    /// `timeout`, without waiting for the server's answer.
    pub(crate) async fn refuse(&mut self, code: u16, timeout: Duration) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        let sent = tokio::time::timeout(
            timeout,
            self.socket.send(tungstenite::Message::Close(Some(frame))),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            debug!(
                code,
                "could not send the close frame for a protocol violation"
            );
        }
    }

    /// Hands over what the application's queue has room for in messages; the rest is counted
    /// unread.
    fn hand_over_without_waiting(&mut self) {
        let unread = match self.shared.inbox.push_closing(&mut self.received) {
            Pushed::All => 0,
            Pushed::Full => std::mem::take(&mut self.received).len() as u64,
            Pushed::Unread(unread) => unread,
        };
        Counters::add(&self.shared.counters.unread, unread);
    }
}

/// Whether `error` is the connection ending without a close frame: a clean end of the TCP
/// stream, a reset, or a broken pipe.
fn is_drop(error: &tungstenite::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => true,
        tungstenite::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
                | ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// `at + wait`, or a moment decades away when that does not fit: a huge setting means
/// "practically never", not a panic in the socket task.
fn later(at: Instant, wait: Duration) -> Instant {
    const DECADES: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);
    at.checked_add(wait).unwrap_or_else(|| at + DECADES)
}

pub(crate) fn report_discards(shared: &Shared, reason: DiscardReason, count: u64) {
    debug!(?reason, count, "messages discarded");
    shared.counters.discarded(reason, count);
    shared.emit(crate::state::Event::Discarded { reason, count });
}
