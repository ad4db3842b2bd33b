//! The one task that owns the socket: connect, run the connection, back off, repeat.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::SmallRng;
use steadfast_backoff::retry_after;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, trace};

use crate::client::{HookFn, HookSender, Request, RequestFn, Shared};
use crate::config::{Action, Config};
use crate::error::{CloseReason, Error};
use crate::link::{Link, report_discards};
use crate::state::{Counters, DiscardReason, Event, State};
use crate::wire::Wire;

/// The socket of one connection.
pub(crate) type Socket = WebSocketStream<Wire<MaybeTlsStream<TcpStream>>>;

/// Runs the client until it is closed, stopped by a rule, or abandoned.
pub(crate) fn run(
    shared: Arc<Shared>,
    request: RequestFn,
    hook: Option<HookFn>,
) -> impl Future<Output = ()> {
    // However this task ends, even dropped with its runtime before it first ran, or by a
    // panic, the handles learn of it: the guard exists before the future is first polled.
    let close_on_exit = CloseOnExit(Arc::clone(&shared));
    async move {
        let _close_on_exit = close_on_exit;
        supervise(shared, request, hook).await;
    }
}

async fn supervise(shared: Arc<Shared>, request: RequestFn, hook: Option<HookFn>) {
    let mut supervisor = Supervisor {
        shared: Arc::clone(&shared),
        request,
        hook,
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
    finish(&shared, reason);
}

/// Refuses further messages and publishes the final state.
fn finish(shared: &Shared, reason: CloseReason) {
    shared.outbox.set_open(None);
    shared.outbox.refuse();
    debug!(?reason, "closed");
    shared.state.send_replace(State::Closed(reason.clone()));
    shared.emit(Event::Closed(reason));
    shared.end_events();
}

/// Ends the client when the socket task goes: the reader gets the end of its messages, and
/// a task that went without closing (its runtime shut down, or it panicked) leaves the
/// client closed rather than stuck in its last state.
struct CloseOnExit(Arc<Shared>);

impl Drop for CloseOnExit {
    fn drop(&mut self) {
        if !self.0.state.borrow().is_closed() {
            finish(&self.0, CloseReason::Aborted);
        }
        self.0.inbox.close_sending();
    }
}

struct Supervisor {
    shared: Arc<Shared>,
    request: RequestFn,
    hook: Option<HookFn>,
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
            // A server that breaks the protocol is judged as if it had closed with the
            // code the client answered it with.
            other => match other.violation_code() {
                Some(code) => rules.for_close(code),
                None => Action::Retry,
            },
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
        let (hook_tx, mut hook_rx) = mpsc::unbounded_channel();
        let mut link = Link::new(socket, Arc::clone(&shared));
        let mut opened_at = None;

        let hook = run_hook(
            self.hook.clone(),
            HookSender {
                sender: hook_tx,
                max_message_size: shared.config.max_message_size,
            },
            shared.config.hook_timeout,
        );
        tokio::pin!(hook);
        let mut hook_done = false;
        let ended = loop {
            tokio::select! {
                biased;
                () = shared.stop.cancelled() => break Ended::Stop(shared.stop_reason()),
                outcome = &mut hook, if !hook_done => {
                    if let Err(error) = outcome {
                        break Ended::Failed { error, lived: None };
                    }
                    hook_done = true;
                    opened_at = Some(Instant::now());
                    // The link sends every message the hook sent before the buffered ones.
                    link.hook_done();
                    shared.outbox.set_open(Some(connection));
                    Counters::add(&shared.counters.connects, 1);
                    self.transition(State::Open, Event::Connected { attempt });
                }
                error = link.run(&mut hook_rx) => break failed(error, opened_at),
            }
        };

        shared.outbox.set_open(None);
        if let Ended::Stop(reason) = &ended {
            debug!(?reason, "closing");
            shared.state.send_replace(State::Closing);
            shared.outbox.refuse();
            link.close(shared.config.close_timeout, &mut hook_rx).await;
        }
        if let Ended::Failed { error, .. } = &ended
            && let Some(code) = error.violation_code()
        {
            link.refuse(code, shared.config.close_timeout).await;
        }
        link.put_back_unwritten();
        // The hook runs again on the next connection; what it sent for this one is lost.
        link.take_hook_messages(&mut hook_rx);
        if link.in_flight() > 0 {
            report_discards(&shared, DiscardReason::LostInFlight, link.in_flight());
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
        // `build` refused a write buffer not smaller than its maximum, which would panic.
        .max_write_buffer_size(config.max_write_buffer_size)
}

/// Calls the application's request builder. A panic in it fails this attempt, as an error
/// would, instead of taking the socket task down with it.
fn build_request(request: &RequestFn) -> Result<Request, Error> {
    let built = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| request()))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(format!("the request builder panicked: {message}").into())
        });
    built.map_err(|error| Error::Request(Arc::new(error)))
}

/// One attempt: a fresh request, TCP, TLS and the upgrade, all within the connect timeout.
async fn connect(
    request: &RequestFn,
    shared: &Shared,
    ws_config: WebSocketConfig,
) -> Result<Socket, Error> {
    let request = build_request(request)?;
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
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = port_of(uri).map_err(|why| Error::Request(Arc::new(why.into())))?;
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
    let stream = if uri.scheme_str() == Some("wss") {
        MaybeTlsStream::Rustls(tls(tcp, host, shared).await?)
    } else {
        MaybeTlsStream::Plain(tcp)
    };
    #[cfg(not(feature = "rustls"))]
    let stream = MaybeTlsStream::Plain(tcp);

    let wire = Wire::new(
        stream,
        ws_config.write_buffer_size,
        ws_config.max_write_buffer_size,
    );
    let (mut socket, _) =
        tokio_tungstenite::client_async_with_config(request, wire, Some(ws_config))
            .await
            .map_err(upgrade_error)?;
    socket.get_mut().start_framing();
    Ok(socket)
}

/// TLS over `tcp` with the client's rustls configuration.
#[cfg(feature = "rustls")]
async fn tls(
    tcp: TcpStream,
    host: String,
    shared: &Shared,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    use tungstenite::error::TlsError;

    let tls_error = |error: tungstenite::Error| Error::WebSocket(Arc::new(error));
    let name = rustls::pki_types::ServerName::try_from(host)
        .map_err(|_| tls_error(tungstenite::Error::Tls(TlsError::InvalidDnsName)))?;
    tokio_rustls::TlsConnector::from(Arc::clone(&shared.tls))
        .connect(name, tcp)
        .await
        .map_err(|error| tls_error(tungstenite::Error::Io(error)))
}

/// The port to connect to: the one the URL names, or the scheme's default when it names
/// none. A port that is not a number from 1 to 65535 is an error, not a reason to fall
/// back to the default.
pub(crate) fn port_of(uri: &http::Uri) -> Result<u16, String> {
    let default = if uri.scheme_str() == Some("wss") {
        443
    } else {
        80
    };
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    let host_and_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, rest)| rest);
    // An IPv6 host is bracketed, and its colons are not a port separator.
    let after_host = host_and_port
        .rsplit_once(']')
        .map_or(host_and_port, |(_, rest)| rest);
    match after_host.rsplit_once(':') {
        None | Some((_, "")) => Ok(default),
        Some((_, digits)) => digits
            .parse::<u16>()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| format!("the port {digits:?} is not a number from 1 to 65535")),
    }
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
    // The closure is called inside the spawned task too, so a panic before it returns its
    // future fails the attempt rather than the socket task.
    let task = AbortOnDropHandle::new(tokio::spawn(async move { hook(sender).await }));

    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(Error::HookTimeout(timeout)),
        Ok(Err(join)) => Err(Error::Hook(Arc::new(Box::new(join)))),
        Ok(Ok(Err(error))) => Err(Error::Hook(Arc::new(error))),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}
