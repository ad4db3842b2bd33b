//! The one task that owns the socket: connect, run the connection, back off, repeat.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use steadfast_backoff::retry_after;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, trace};

use crate::client::{HookFn, HookSender, Request, RequestFn, Shared};
use crate::config::{Action, Config};
use crate::error::{CloseReason, Error};
use crate::message::Message;
use crate::outbox::Discards;
use crate::state::{Counters, DiscardReason, Event, State};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Most messages fed to the socket before a flush, so a long buffer still goes out in
/// several writes and control frames get their turn.
const MAX_BATCH: usize = 256;

/// Bytes of received data gathered before they are handed to the application, so a burst
/// of large messages is not held back for long.
const MAX_GATHERED_BYTES: usize = 256 << 10;

/// Most batches fed per wake-up before a flush; tungstenite writes out on its own whenever
/// its write buffer fills, so this only bounds how long a ping may wait behind data.
const MAX_ROUNDS: usize = 16;

/// Messages from the supervisor to the writer of one connection.
#[derive(Debug)]
pub(crate) enum Control {
    /// Send a ping with this payload.
    Ping(Bytes),
    /// The on-connect hook succeeded: buffered messages may flow.
    HookDone,
}

/// Runs the client until it is closed, stopped by a rule, or abandoned.
pub(crate) async fn run(
    shared: Arc<Shared>,
    request: RequestFn,
    hook: Option<HookFn>,
    incoming: mpsc::Sender<Message>,
) {
    let mut supervisor = Supervisor {
        shared: Arc::clone(&shared),
        request,
        hook,
        incoming,
        rng: match shared.config.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::seed_from_u64(RandomState::new().hash_one(0u8)),
        },
        failures: 0,
        retries: 0,
        quick_only: true,
        since: None,
    };
    let reason = supervisor.run().await;

    shared.outbox.set_open(None);
    shared.outbox.refuse();
    debug!(?reason, "closed");
    shared.state.send_replace(State::Closed(reason.clone()));
    shared.emit(Event::Closed(reason));
}

struct Supervisor {
    shared: Arc<Shared>,
    request: RequestFn,
    hook: Option<HookFn>,
    incoming: mpsc::Sender<Message>,
    rng: SmallRng,
    /// Failed attempts in a row (connections that did not become stable included).
    failures: u32,
    /// Waits taken in the current run of failures: the index into the backoff schedule.
    retries: u32,
    /// Whether every failure of this run was a connection that opened and dropped early.
    quick_only: bool,
    /// When the current run of failures began.
    since: Option<Instant>,
}

/// How one connection ended.
enum Ended {
    /// The client must stop.
    Stop(CloseReason),
    /// It failed; `lived` is how long it was open, if it got that far.
    Failed {
        error: Error,
        lived: Option<Duration>,
    },
}

/// What comes after a failure.
enum Next {
    Stop(CloseReason),
    Wait(Duration),
}

impl Supervisor {
    async fn run(&mut self) -> CloseReason {
        let ws_config = ws_config(&self.shared.config);
        let mut attempt = 1;
        let mut connection = 0u64;

        loop {
            self.transition(State::Connecting { attempt }, Event::Connecting { attempt });
            let stop = self.shared.stop.clone();
            let connected = tokio::select! {
                biased;
                () = stop.cancelled() => return self.shared.stop_reason(),
                connected = connect(&self.request, &self.shared, ws_config) => connected,
            };

            let ended = match connected {
                Ok(socket) => {
                    connection += 1;
                    self.open(socket, connection, attempt).await
                }
                Err(error) => Ended::Failed { error, lived: None },
            };
            let (error, lived) = match ended {
                Ended::Stop(reason) => return reason,
                Ended::Failed { error, lived } => (error, lived),
            };

            self.shared.outbox.set_open(None);
            Counters::add(&self.shared.counters.disconnects, 1);
            debug!(%error, ?lived, "disconnected");
            self.shared.emit(Event::Disconnected {
                error: error.clone(),
            });

            let delay = match self.next(&error, lived) {
                Next::Stop(reason) => return reason,
                Next::Wait(delay) => delay,
            };
            attempt = self.failures.saturating_add(1);
            self.transition(
                State::Reconnecting {
                    attempt,
                    delay,
                    last_error: error,
                },
                Event::Reconnecting { attempt, delay },
            );
            tokio::select! {
                biased;
                () = stop.cancelled() => return self.shared.stop_reason(),
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Publishes a state and its event, and traces the transition.
    fn transition(&self, state: State, event: Event) {
        debug!(?state, "state");
        self.shared.state.send_replace(state);
        self.shared.emit(event);
    }

    /// Applies the rules and the backoff to a failure.
    fn next(&mut self, error: &Error, lived: Option<Duration>) -> Next {
        let rules = &self.shared.config.rules;
        let action = match error {
            Error::Closed { code, .. } => rules.for_close(*code),
            Error::Rejected { status, .. } => rules.for_status(*status),
            _ => Action::Retry,
        };
        if action == Action::Stop {
            return Next::Stop(CloseReason::Terminal(error.clone()));
        }

        let stable = lived.is_some_and(|lived| lived >= self.shared.config.stable_after);
        if stable {
            self.failures = 0;
            self.retries = 0;
            self.quick_only = true;
            self.since = None;
        } else {
            self.failures = self.failures.saturating_add(1);
            self.quick_only &= lived.is_some();
        }
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);

        let backoff = &self.shared.config.backoff;
        let give_up = || {
            Next::Stop(CloseReason::Terminal(Error::GaveUp {
                attempts: self.failures,
                quick_drops: self.quick_only && self.failures > 0,
                last: Box::new(error.clone()),
            }))
        };
        if !stable && backoff.max_attempts.is_some_and(|max| self.failures >= max) {
            return give_up();
        }

        let mut delay = backoff.delay_for(self.retries, &mut self.rng);
        self.retries = self.retries.saturating_add(1);
        if let Action::RetryLater(at_least) = action {
            delay = delay.max(at_least);
        }
        if let Error::Rejected {
            retry_after: Some(asked),
            ..
        } = error
        {
            if *asked > backoff.max_retry_after {
                return Next::Stop(CloseReason::Terminal(Error::RetryAfterTooLong {
                    requested: *asked,
                    allowed: backoff.max_retry_after,
                }));
            }
            delay = delay.max(*asked);
        }
        if let Some(max_elapsed) = backoff.max_elapsed {
            let spent = now.duration_since(since).saturating_add(delay);
            if spent > max_elapsed {
                return give_up();
            }
        }
        Next::Wait(delay)
    }

    /// Runs one connection: the hook, then messages both ways, pings, until it ends.
    async fn open(&mut self, socket: Socket, connection: u64, attempt: u32) -> Ended {
        let shared = Arc::clone(&self.shared);
        let config = &shared.config;
        let (mut sink, mut stream) = socket.split();
        let (control_tx, mut control_rx) = mpsc::unbounded_channel();
        let (hook_tx, mut hook_rx) = mpsc::unbounded_channel();
        let mut in_flight = 0u64;
        let mut opened_at = None;
        let mut close_code = None;

        let hook = run_hook(
            self.hook.clone(),
            HookSender { sender: hook_tx },
            config.hook_timeout,
        );
        let ended = {
            let writer = write(
                &mut sink,
                &mut control_rx,
                &mut hook_rx,
                &shared,
                &mut in_flight,
            );
            let reader = read(
                &mut stream,
                &control_tx,
                &self.incoming,
                &shared,
                &mut close_code,
            );
            tokio::pin!(hook, writer, reader);
            let mut hook_done = false;

            loop {
                tokio::select! {
                    biased;
                    () = shared.stop.cancelled() => break Ended::Stop(shared.stop_reason()),
                    error = &mut reader => break failed(error, opened_at),
                    error = &mut writer => break failed(error, opened_at),
                    outcome = &mut hook, if !hook_done => {
                        if let Err(error) = outcome {
                            break Ended::Failed { error, lived: None };
                        }
                        hook_done = true;
                        opened_at = Some(Instant::now());
                        // The writer handles this after every message the hook sent.
                        let _ = control_tx.send(Control::HookDone);
                        shared.outbox.set_open(Some(connection));
                        Counters::add(&shared.counters.connects, 1);
                        self.transition(State::Open, Event::Connected { attempt });
                    }
                }
            }
        };

        shared.outbox.set_open(None);
        if let Ended::Stop(reason) = &ended {
            debug!(?reason, "closing");
            shared.state.send_replace(State::Closing);
            shared.outbox.refuse();
            if close_gracefully(&mut sink, &mut stream, config.close_timeout).await {
                // The close frame went out behind everything fed before it.
                Counters::add(&shared.counters.messages_sent, in_flight);
                in_flight = 0;
            }
        }
        if in_flight > 0 {
            report_discards(&shared, DiscardReason::LostInFlight, in_flight);
        }
        ended
    }
}

fn failed(error: Error, opened_at: Option<Instant>) -> Ended {
    Ended::Failed {
        error,
        lived: opened_at.map(|opened| opened.elapsed()),
    }
}

/// The tungstenite settings from the plain config.
fn ws_config(config: &Config) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_frame_size))
        .write_buffer_size(config.write_buffer_size)
        .max_write_buffer_size(
            config
                .max_write_buffer_size
                .max(config.write_buffer_size + 1),
        )
}

/// One attempt: a fresh request, TCP, TLS and the upgrade, all within the connect timeout.
async fn connect(
    request: &RequestFn,
    shared: &Shared,
    ws_config: WebSocketConfig,
) -> Result<Socket, Error> {
    let request = request().map_err(|error| Error::Request(Arc::new(error)))?;
    let timeout = shared.config.connect_timeout;
    match tokio::time::timeout(timeout, handshake(request, shared, ws_config)).await {
        Ok(connected) => connected,
        Err(_) => Err(Error::ConnectTimeout(timeout)),
    }
}

async fn handshake(
    request: Request,
    #[cfg_attr(
        not(feature = "rustls"),
        expect(unused_variables, reason = "used for TLS only")
    )]
    shared: &Shared,
    ws_config: WebSocketConfig,
) -> Result<Socket, Error> {
    let uri = request.uri();
    let secure = uri.scheme_str() == Some("wss");
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    trace!(%host, port, "connecting");

    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|source| Error::Connect {
            address: format!("{host}:{port}"),
            source: Arc::new(source),
        })?;
    // Small messages must not wait for Nagle's algorithm.
    let _ = tcp.set_nodelay(true);

    #[cfg(feature = "rustls")]
    let upgraded = tokio_tungstenite::client_async_tls_with_config(
        request,
        tcp,
        Some(ws_config),
        shared.tls.clone().map(tokio_tungstenite::Connector::Rustls),
    )
    .await;
    #[cfg(not(feature = "rustls"))]
    let upgraded = tokio_tungstenite::client_async_with_config(
        request,
        MaybeTlsStream::Plain(tcp),
        Some(ws_config),
    )
    .await;

    upgraded.map(|(socket, _)| socket).map_err(upgrade_error)
}

fn upgrade_error(error: tungstenite::Error) -> Error {
    // Not yet: redirects (3xx) on the upgrade are not followed; they end as a rejection.
    match error {
        tungstenite::Error::Http(response) => Error::Rejected {
            status: response.status().as_u16(),
            retry_after: response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| retry_after::parse_now(value).ok()),
        },
        other => Error::WebSocket(Arc::new(other)),
    }
}

/// Runs the on-connect hook in its own task, within its timeout.
async fn run_hook(
    hook: Option<HookFn>,
    sender: HookSender,
    timeout: Duration,
) -> Result<(), Error> {
    let Some(hook) = hook else { return Ok(()) };
    let task = AbortOnDropHandle::new(tokio::spawn(hook(sender)));

    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(Error::HookTimeout(timeout)),
        Ok(Err(join)) => Err(Error::Hook(Arc::new(Box::new(join)))),
        Ok(Ok(Err(error))) => Err(Error::Hook(Arc::new(error))),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

/// Writes pings, hook messages and then buffered messages, feeding a batch and flushing
/// once. Returns only on failure.
async fn write(
    sink: &mut SplitSink<Socket, tungstenite::Message>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    hook: &mut mpsc::UnboundedReceiver<Message>,
    shared: &Shared,
    in_flight: &mut u64,
) -> Error {
    let error = write_until_error(sink, control, hook, shared, in_flight).await;
    if let Error::WebSocket(source) = &error
        && matches!(
            source.as_ref(),
            tungstenite::Error::ConnectionClosed
                | tungstenite::Error::AlreadyClosed
                | tungstenite::Error::Protocol(tungstenite::error::ProtocolError::SendAfterClosing)
        )
    {
        // The server's close frame arrived first: the reader has its code and ends the
        // connection with it once the close handshake is over.
        std::future::pending::<()>().await;
    }
    error
}

async fn write_until_error(
    sink: &mut SplitSink<Socket, tungstenite::Message>,
    control: &mut mpsc::UnboundedReceiver<Control>,
    hook: &mut mpsc::UnboundedReceiver<Message>,
    shared: &Shared,
    in_flight: &mut u64,
) -> Error {
    let mut hook_done = false;

    loop {
        tokio::select! {
            biased;
            command = control.recv() => match command {
                Some(Control::Ping(payload)) => {
                    if let Err(error) = sink.feed(tungstenite::Message::Ping(payload)).await {
                        return Error::WebSocket(Arc::new(error));
                    }
                }
                Some(Control::HookDone) => hook_done = true,
                // The supervisor holds the sender for the connection's whole life.
                None => return Error::Dropped,
            },
            Some(message) = hook.recv() => {
                *in_flight += 1;
                if let Err(error) = sink.feed(message.into_frame()).await {
                    return Error::WebSocket(Arc::new(error));
                }
            }
            () = shared.outbox.ready.wait(), if hook_done => {}
        }

        // Whatever woke us, send everything that is ready now, then flush once.
        while let Ok(message) = hook.try_recv() {
            *in_flight += 1;
            if let Err(error) = sink.feed(message.into_frame()).await {
                return Error::WebSocket(Arc::new(error));
            }
        }
        if hook_done {
            let mut discards = Discards::default();
            let mut batch = Vec::with_capacity(MAX_BATCH);
            let mut rounds = 0;
            loop {
                shared
                    .outbox
                    .take_batch(&mut batch, MAX_BATCH, &mut discards);
                let full = batch.len() == MAX_BATCH;
                // Taken messages count as in flight until a flush succeeds.
                *in_flight += batch.len() as u64;
                for message in batch.drain(..) {
                    if let Err(error) = sink.feed(message.into_frame()).await {
                        return Error::WebSocket(Arc::new(error));
                    }
                }
                rounds += 1;
                if !full {
                    break;
                }
                if rounds == MAX_ROUNDS {
                    // More is waiting: flush, let pings through, and come back at once.
                    shared.outbox.ready.signal();
                    break;
                }
            }
            for (reason, count) in discards.reasons() {
                report_discards(shared, reason, count);
            }
        }
        if let Err(error) = sink.flush().await {
            return Error::WebSocket(Arc::new(error));
        }
        Counters::add(&shared.counters.messages_sent, *in_flight);
        *in_flight = 0;
    }
}

/// Reads frames, hands data to the application, pings on schedule and declares the
/// connection dead when nothing answers. Returns only when the connection ends.
async fn read(
    stream: &mut SplitStream<Socket>,
    control: &mpsc::UnboundedSender<Control>,
    incoming: &mpsc::Sender<Message>,
    shared: &Shared,
    close_code: &mut Option<(u16, String)>,
) -> Error {
    let config = &shared.config;
    let mut ticker = config.ping_interval.map(|interval| {
        let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    });
    let mut deadline: Option<Instant> = None;
    let mut ping: Option<(u64, Instant)> = None;
    let mut nonce = 0u64;
    let mut gathered = Vec::with_capacity(MAX_BATCH);

    loop {
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let tick = async {
            match ticker.as_mut() {
                Some(ticker) => ticker.tick().await,
                None => std::future::pending().await,
            }
        };

        let mut frame = tokio::select! {
            biased;
            frame = stream.next() => frame,
            () = expired => return Error::PongTimeout(config.pong_timeout),
            _ = tick => {
                if deadline.is_none() {
                    nonce = nonce.wrapping_add(1);
                    let sent_at = Instant::now();
                    ping = Some((nonce, sent_at));
                    deadline = Some(sent_at + config.pong_timeout);
                    Counters::add(&shared.counters.pings, 1);
                    trace!(nonce, "ping");
                    let _ = control.send(Control::Ping(Bytes::copy_from_slice(&nonce.to_be_bytes())));
                }
                continue;
            }
        };

        // Gather the frames that are ready now (up to a batch), then hand their data over
        // in one burst: the application wakes once for the lot instead of once per message.
        let mut handled = 0;
        let mut gathered_bytes = 0;
        let ended = loop {
            handled += 1;
            // Any frame at all proves the peer is alive.
            deadline = None;
            match frame {
                Some(Ok(tungstenite::Message::Text(text))) => {
                    gathered_bytes += text.len();
                    gathered.push(Message::Text(text));
                }
                Some(Ok(tungstenite::Message::Binary(data))) => {
                    gathered_bytes += data.len();
                    gathered.push(Message::Binary(data));
                }
                Some(Ok(tungstenite::Message::Pong(payload))) => {
                    if let Some((expected, sent_at)) = ping
                        && payload.as_ref() == expected.to_be_bytes()
                    {
                        let rtt = sent_at.elapsed();
                        trace!(?rtt, "pong");
                        shared.set_rtt(rtt);
                        ping = None;
                    }
                }
                Some(Ok(tungstenite::Message::Close(frame))) => {
                    // tungstenite answers the close itself; keep reading until the stream ends.
                    *close_code = Some(match frame {
                        Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                        None => (1005, String::new()),
                    });
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    break Some(match close_code.take() {
                        Some((code, reason)) => Error::Closed { code, reason },
                        None if matches!(error, tungstenite::Error::ConnectionClosed) => {
                            Error::Dropped
                        }
                        None => Error::WebSocket(Arc::new(error)),
                    });
                }
                None => {
                    break Some(match close_code.take() {
                        Some((code, reason)) => Error::Closed { code, reason },
                        None => Error::Dropped,
                    });
                }
            }
            if handled == MAX_BATCH || gathered_bytes >= MAX_GATHERED_BYTES {
                break None;
            }
            match futures_util::FutureExt::now_or_never(stream.next()) {
                Some(next) => frame = next,
                None => break None,
            }
        };

        // Data that arrived before the end is delivered before the end is reported.
        deliver(&mut gathered, incoming, shared).await;
        if let Some(error) = ended {
            return error;
        }
    }
}

/// Hands messages to the application in order, waiting while its queue is full; while it
/// waits, the socket is not read and the liveness check is suspended.
async fn deliver(messages: &mut Vec<Message>, incoming: &mpsc::Sender<Message>, shared: &Shared) {
    // Not yet: while the application's queue is full the socket is not read, so the
    // server's pings wait for the application too.
    Counters::add(&shared.counters.messages_received, messages.len() as u64);
    let mut unread = 0;
    for message in messages.drain(..) {
        let message = match incoming.try_send(message) {
            Ok(()) => continue,
            Err(mpsc::error::TrySendError::Full(message)) => message,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                unread += 1;
                continue;
            }
        };
        if incoming.send(message).await.is_err() {
            // The application dropped its `Incoming`: it chose not to read.
            unread += 1;
        }
    }
    Counters::add(&shared.counters.unread, unread);
}

fn report_discards(shared: &Shared, reason: DiscardReason, count: u64) {
    debug!(?reason, count, "messages discarded");
    shared.counters.discarded(reason, count);
    shared.emit(Event::Discarded { reason, count });
}

/// Sends a normal close and waits, within `timeout`, for the server's close. Returns
/// whether the close frame, and so everything written before it, was flushed.
async fn close_gracefully(
    sink: &mut SplitSink<Socket, tungstenite::Message>,
    stream: &mut SplitStream<Socket>,
    timeout: Duration,
) -> bool {
    let mut flushed = false;
    let handshake = async {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        if sink
            .send(tungstenite::Message::Close(Some(frame)))
            .await
            .is_err()
        {
            return;
        }
        flushed = true;
        while let Some(Ok(_)) = stream.next().await {}
    };
    if tokio::time::timeout(timeout, handshake).await.is_err() {
        debug!(?timeout, "the server did not answer the close in time");
    }
    flushed
}
