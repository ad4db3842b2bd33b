//! The handles the application holds: `Builder`, `Client`, `Incoming`, `HookSender`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::{BoxError, BuildError, CloseReason, SendError};
use crate::inbox::Inbox;
use crate::message::Message;
use crate::outbox::{Outbox, Sent};
use crate::state::{Counters, DiscardReason, Event, Events, Metrics, State};
use crate::task;

/// The HTTP request of a WebSocket upgrade, as the request builder returns it.
pub type Request = tokio_tungstenite::tungstenite::handshake::client::Request;

/// Builds the upgrade request for each attempt.
pub(crate) type RequestFn = Arc<dyn Fn() -> Result<Request, BoxError> + Send + Sync>;

/// The on-connect hook, boxed.
pub(crate) type HookFn = Arc<
    dyn Fn(HookSender) -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send + Sync,
>;

/// Sets up a [`Client`]: the URL or request builder, the [`Config`], the on-connect hook and
/// a cancellation token.
pub struct Builder {
    url: String,
    request: Option<RequestFn>,
    config: Config,
    hook: Option<HookFn>,
    cancel: Option<CancellationToken>,
    #[cfg(feature = "rustls")]
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Builder")
            .field("url", &self.url)
            .field("config", &self.config)
            .field("custom_request", &self.request.is_some())
            .field("hook", &self.hook.is_some())
            .finish_non_exhaustive()
    }
}

impl Builder {
    /// A client of the server at `url` (`ws://` or `wss://`), with the default [`Config`].
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            request: None,
            config: Config::default(),
            hook: None,
            cancel: None,
            #[cfg(feature = "rustls")]
            tls: None,
        }
    }

    /// Replaces every plain setting.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Builds the upgrade request afresh for every attempt, so that headers and tokens are
    /// current each time. An error or a panic fails that attempt. It runs in the client's
    /// task before each connect, so it should not block. By default the request is a plain
    /// GET of the URL given to [`Builder::new`].
    pub fn request<F>(mut self, request: F) -> Self
    where
        F: Fn() -> Result<Request, BoxError> + Send + Sync + 'static,
    {
        self.request = Some(Arc::new(request));
        self
    }

    /// Runs `hook` on every new connection before buffered messages go out, typically to
    /// authenticate or resubscribe through the [`HookSender`]. It runs in its own task; if it
    /// fails or exceeds [`Config::hook_timeout`], the attempt counts as failed.
    pub fn on_connect<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(HookSender) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        self.hook = Some(Arc::new(move |sender| Box::pin(hook(sender))));
        self
    }

    /// Closes the client when `token` is cancelled, exactly as [`Client::close`] does, so
    /// that the client takes part in an application's graceful shutdown.
    pub fn cancel_token(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    /// Uses this rustls configuration for `wss://` (private roots, client certificates)
    /// instead of the webpki roots.
    #[cfg(feature = "rustls")]
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Checks the settings and starts the client's task, which connects at once.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] for a URL that is not `ws://` or `wss://`, an invalid backoff
    /// policy, a zero limit, or a call outside a tokio runtime.
    pub fn build(self) -> Result<(Client, Incoming), BuildError> {
        self.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;

        let request = match self.request {
            Some(request) => request,
            None => {
                let url = self.url.clone();
                Arc::new(move || url.as_str().into_client_request().map_err(BoxError::from))
            }
        };
        let stop = self
            .cancel
            .map(|token| token.child_token())
            .unwrap_or_default();
        let (state, state_rx) = watch::channel(State::Connecting { attempt: 1 });
        let (events, _) = broadcast::channel(256);
        let shared = Arc::new(Shared {
            outbox: Outbox::new(self.config.buffer.clone(), self.config.max_message_size),
            inbox: Inbox::new(self.config.inbound_capacity, self.config.inbound_max_bytes),
            counters: Counters::default(),
            events: Mutex::new(Some(events)),
            state,
            rtt: Mutex::new(None),
            stop,
            handles_gone: AtomicBool::new(false),
            config: self.config,
            #[cfg(feature = "rustls")]
            tls: self.tls.unwrap_or_else(default_tls),
        });

        runtime.spawn(task::run(Arc::clone(&shared), request, self.hook));

        let client = Client {
            shared: Arc::clone(&shared),
            state: state_rx,
            _handles: Arc::new(HandlesGuard {
                shared: Arc::clone(&shared),
            }),
        };
        Ok((client, Incoming { shared }))
    }

    fn validate(&self) -> Result<(), BuildError> {
        let url_error = |why: &str| BuildError::Url {
            url: self.url.clone(),
            why: why.to_owned(),
        };
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|error| url_error(&error.to_string()))?;
        crate::task::port_of(request.uri()).map_err(|why| url_error(&why))?;
        match request.uri().scheme_str() {
            Some("ws") => {}
            Some("wss") if cfg!(feature = "rustls") => {}
            Some("wss") => return Err(url_error("wss needs the `rustls` feature")),
            _ => return Err(url_error("the scheme must be ws or wss")),
        }

        let config = &self.config;
        config.backoff.validate().map_err(BuildError::Backoff)?;
        let zero_checks = [
            (config.buffer.max_messages == 0, "buffer.max_messages"),
            (config.buffer.max_bytes == 0, "buffer.max_bytes"),
            (config.inbound_capacity == 0, "inbound_capacity"),
            (config.inbound_max_bytes == 0, "inbound_max_bytes"),
            (config.max_message_size == 0, "max_message_size"),
            (config.max_frame_size == 0, "max_frame_size"),
            (config.max_write_buffer_size == 0, "max_write_buffer_size"),
            (config.connect_timeout.is_zero(), "connect_timeout"),
            (config.pong_timeout.is_zero(), "pong_timeout"),
            (config.hook_timeout.is_zero(), "hook_timeout"),
            (
                config.buffer.max_age.is_some_and(|age| age.is_zero()),
                "buffer.max_age",
            ),
            (
                config
                    .ping_interval
                    .is_some_and(|interval| interval.is_zero()),
                "ping_interval",
            ),
        ];
        if let Some((_, name)) = zero_checks.into_iter().find(|(zero, _)| *zero) {
            return Err(BuildError::Zero(name));
        }
        if config.write_buffer_size >= config.max_write_buffer_size {
            return Err(BuildError::Conflict(
                "write_buffer_size must be smaller than max_write_buffer_size",
            ));
        }
        Ok(())
    }
}

/// State shared by the handles and the socket task.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) outbox: Outbox,
    pub(crate) inbox: Inbox,
    pub(crate) counters: Counters,
    /// Taken away when the client closes, so that every `Events` stream ends.
    pub(crate) events: Mutex<Option<broadcast::Sender<Event>>>,
    pub(crate) state: watch::Sender<State>,
    pub(crate) rtt: Mutex<Option<Duration>>,
    /// Cancelled by `close`, by the application's token, or when the last `Client` goes.
    pub(crate) stop: CancellationToken,
    /// Set before `stop` is cancelled because the last `Client` went.
    pub(crate) handles_gone: AtomicBool,
    pub(crate) config: Config,
    /// The rustls configuration for `wss://`: the builder's, or the webpki roots.
    #[cfg(feature = "rustls")]
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

impl Shared {
    /// Why `stop` was cancelled.
    pub(crate) fn stop_reason(&self) -> CloseReason {
        if self.handles_gone.load(Ordering::Acquire) {
            CloseReason::Dropped
        } else {
            CloseReason::Requested
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(events) = &*self.lock_events() {
            // No subscriber is fine: events are for whoever wants them.
            let _ = events.send(event);
        }
    }

    /// Ends every `Events` stream once it has seen what was sent so far.
    pub(crate) fn end_events(&self) {
        self.lock_events().take();
    }

    fn lock_events(&self) -> MutexGuard<'_, Option<broadcast::Sender<Event>>> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn set_rtt(&self, rtt: Duration) {
        *self.rtt.lock().unwrap_or_else(PoisonError::into_inner) = Some(rtt);
    }
}

/// A handle to a reconnecting WebSocket client. Cheap to clone; the client runs until it is
/// closed, a rule stops it, or every handle is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    state: watch::Receiver<State>,
    _handles: Arc<HandlesGuard>,
}

/// Stops the client when the last [`Client`] handle is dropped.
#[derive(Debug)]
struct HandlesGuard {
    shared: Arc<Shared>,
}

impl Drop for HandlesGuard {
    fn drop(&mut self) {
        self.shared.handles_gone.store(true, Ordering::Release);
        self.shared.stop.cancel();
    }
}

impl Client {
    /// A client of `url` with the default settings; see [`Builder`] for more.
    pub fn builder(url: impl Into<String>) -> Builder {
        Builder::new(url)
    }

    /// Queues a message; it goes out in order once a connection is open and its
    /// on-connect hook has succeeded, or at once if that is the case already.
    ///
    /// What happens when the buffer is full depends on [`Overflow`](crate::Overflow); the
    /// result says which. A message handed to an open socket that then fails before it was
    /// flushed is reported as [`DiscardReason::LostInFlight`](crate::DiscardReason), never
    /// replayed.
    ///
    /// # Errors
    ///
    /// [`SendError`], with the message inside: the buffer is full (reject policy), the
    /// message is larger than the buffer itself ([`BufferConfig::max_bytes`], 1 MiB by
    /// default) or than [`Config::max_message_size`], or the client is closed.
    ///
    /// [`BufferConfig::max_bytes`]: crate::BufferConfig::max_bytes
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a cancelled send (possible only under the wait policy) has not queued
    /// its message.
    pub async fn send(&self, message: impl Into<Message>) -> Result<Sent, SendError> {
        let sent = self.shared.outbox.push(message.into(), true).await;
        self.count_drops(sent)
    }

    /// Like [`Client::send`], for a message that only makes sense on the current
    /// connection (a reply to a request on it, an unsubscribe): it is never replayed on a
    /// later one. If the connection ends before it went out, it is discarded and reported.
    ///
    /// # Errors
    ///
    /// As [`Client::send`], plus [`SendError::NotConnected`] when no connection is open.
    ///
    /// # Cancel safety
    ///
    /// As [`Client::send`].
    pub async fn send_no_replay(&self, message: impl Into<Message>) -> Result<Sent, SendError> {
        let sent = self.shared.outbox.push(message.into(), false).await;
        self.count_drops(sent)
    }

    /// Counts and reports what an overflow policy discarded, on the way to the caller.
    fn count_drops(&self, sent: Result<Sent, SendError>) -> Result<Sent, SendError> {
        let dropped = match &sent {
            Ok(Sent::QueuedDropping(dropped)) => {
                Some((DiscardReason::DroppedOldest, dropped.len()))
            }
            Ok(Sent::Dropped(_)) => Some((DiscardReason::DroppedNewest, 1)),
            _ => None,
        };
        if let Some((reason, count)) = dropped {
            let count = count as u64;
            self.shared.counters.discarded(reason, count);
            self.shared.emit(Event::Discarded { reason, count });
        }
        sent
    }

    /// The state as a `watch` receiver, to await changes.
    pub fn state(&self) -> watch::Receiver<State> {
        self.state.clone()
    }

    /// The state right now.
    pub fn current_state(&self) -> State {
        self.state.borrow().clone()
    }

    /// Events from now on; the stream ends once the client has closed and its last event,
    /// [`Event::Closed`], was seen.
    pub fn events(&self) -> Events {
        let receiver = match &*self.shared.lock_events() {
            Some(events) => events.subscribe(),
            // Closed already: a stream that ends at once.
            None => broadcast::channel(1).1,
        };
        Events { receiver }
    }

    /// The counters so far.
    pub fn metrics(&self) -> Metrics {
        self.shared.counters.snapshot()
    }

    /// The round-trip time of the last answered ping.
    pub fn rtt(&self) -> Option<Duration> {
        *self
            .shared
            .rtt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Messages and payload bytes waiting in the outbound buffer.
    pub fn buffered(&self) -> (usize, usize) {
        self.shared.outbox.len()
    }

    /// Closes the client for good: cancels a pending backoff wait or a connect in progress,
    /// sends a close frame on an open connection and waits for the server's answer up to
    /// [`Config::close_timeout`]. Calling it again, or after the client stopped by itself,
    /// returns at once.
    ///
    /// Returns the messages still buffered, which were never handed to a socket. Of several
    /// calls at once, one gets them and the others an empty list.
    ///
    /// # Cancel safety
    ///
    /// The close goes on in the client's task even if this future is dropped; only the
    /// buffered messages are not returned then.
    pub async fn close(&self) -> Vec<Message> {
        self.shared.stop.cancel();
        self.closed().await;
        self.shared.outbox.close()
    }

    /// Waits until the client is closed, for whatever reason, and returns the reason.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn closed(&self) -> CloseReason {
        let mut state = self.state.clone();
        let closed = state.wait_for(State::is_closed).await;
        match closed.as_deref() {
            Ok(State::Closed(reason)) => reason.clone(),
            // The task publishes Closed before it ends, so the sender outlives this wait.
            _ => CloseReason::Dropped,
        }
    }
}

/// The received data messages, in order. Separate from [`Client`] so that reading and
/// sending can live in different tasks.
///
/// The client keeps answering pings whether or not this is read; when
/// [`Config::inbound_capacity`] messages or [`Config::inbound_max_bytes`] of data wait
/// unread, it stops reading the socket (backpressure) and suspends the liveness check
/// until the application catches up.
///
/// A received payload shares the read buffer it arrived in (64 KiB), which stays
/// allocated while the application holds the payload; copy small messages that are kept
/// for long.
#[derive(Debug)]
pub struct Incoming {
    pub(crate) shared: Arc<Shared>,
}

impl Incoming {
    /// The next message, or `None` once the client is closed and every message was read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| {
            let next = self.shared.inbox.poll_take(cx, 1, |mut taken| taken.next());
            next.map(Option::flatten)
        })
        .await
    }

    /// Appends up to `limit` waiting messages to `buffer`, waiting only if none is waiting;
    /// returns how many were added, 0 once the client is closed and every message was read
    /// (or at once when `limit` is 0). Cheaper than [`Incoming::recv`] per message under
    /// load.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn recv_many(&mut self, buffer: &mut Vec<Message>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        std::future::poll_fn(|cx| {
            let taken = self.shared.inbox.poll_take(cx, limit, |taken| {
                let before = buffer.len();
                buffer.extend(taken);
                buffer.len() - before
            });
            taken.map(Option::unwrap_or_default)
        })
        .await
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        let unread = self.shared.inbox.close_receiving();
        Counters::add(&self.shared.counters.unread, unread);
    }
}

/// Given to the on-connect hook: writes messages on the new connection ahead of everything
/// buffered.
#[derive(Debug, Clone)]
pub struct HookSender {
    pub(crate) sender: mpsc::UnboundedSender<Message>,
    /// [`Config::max_message_size`]: a larger message would fail the connection.
    pub(crate) max_message_size: usize,
}

impl HookSender {
    /// Writes `message` on this connection, before any buffered message.
    ///
    /// # Errors
    ///
    /// [`SendError::TooLarge`] if the message exceeds [`Config::max_message_size`];
    /// [`SendError::Closed`] if the connection is gone already.
    pub fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        let message = message.into();
        let size = message.len();
        if size > self.max_message_size {
            return Err(SendError::TooLarge {
                message,
                size,
                limit: self.max_message_size,
            });
        }
        self.sender
            .send(message)
            .map_err(|error| SendError::Closed(error.0))
    }
}

/// The webpki roots over the ring provider, named explicitly rather than taken from the
/// process default: a process whose dependencies enable more than one rustls provider has
/// no default, and rustls would panic on the first `wss://` connect.
#[cfg(feature = "rustls")]
fn default_tls() -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports rustls' default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}
