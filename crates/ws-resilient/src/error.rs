//! Errors: why a connection failed, why a send failed, why the client was built wrong.

use std::sync::Arc;
use std::time::Duration;

use tokio_tungstenite::tungstenite;

use crate::message::Message;

/// A boxed error from application code (the request builder, the on-connect hook).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a connection attempt failed or an open connection ended.
///
/// Cheap to clone (sources sit behind `Arc`), so the same error can go into the state, an
/// event and the final close reason.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request builder failed.
    #[error("the request builder failed")]
    Request(#[source] Arc<BoxError>),
    /// TCP could not connect.
    #[error("could not connect to {address}")]
    Connect {
        /// The address tried (`host:port`).
        address: String,
        /// What the operating system said.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// TCP, TLS and the upgrade together took longer than the connect timeout.
    #[error("connecting took longer than {0:?}")]
    ConnectTimeout(Duration),
    /// The server answered the upgrade with an HTTP status instead of `101`.
    #[error("the server refused the upgrade with HTTP {status}")]
    Rejected {
        /// The status code, 401 for example.
        status: u16,
        /// The server's `Retry-After`, if it sent one that could be read.
        retry_after: Option<Duration>,
    },
    /// The WebSocket layer (handshake, TLS, protocol or I/O) failed.
    #[error("websocket failure: {0}")]
    WebSocket(Arc<tokio_tungstenite::tungstenite::Error>),
    /// The server closed the connection with a close frame.
    #[error(
        "the server closed the connection with code {code}{}",
        reason_suffix(reason)
    )]
    Closed {
        /// The close code, 1008 for example (1005 when the frame carried none).
        code: u16,
        /// The reason text the server gave, possibly empty.
        reason: String,
    },
    /// The connection ended without a close frame (1006 in WebSocket terms).
    #[error("the connection dropped without a close frame")]
    Dropped,
    /// Nothing arrived within the pong timeout after a ping: the peer is gone.
    #[error("no pong or other frame within {0:?} after a ping")]
    PongTimeout(Duration),
    /// The on-connect hook failed.
    #[error("the on-connect hook failed")]
    Hook(#[source] Arc<BoxError>),
    /// The on-connect hook did not finish within its timeout.
    #[error("the on-connect hook took longer than {0:?}")]
    HookTimeout(Duration),
    /// The backoff policy's attempt or time limit ran out.
    #[error("gave up after {attempts} failed attempts in a row{}", quick_suffix(*quick_drops))]
    GaveUp {
        /// Consecutive failed attempts.
        attempts: u32,
        /// Whether every one of them was a connection that opened and then dropped before
        /// it became stable (a server that accepts and kicks).
        quick_drops: bool,
        /// The last failure.
        #[source]
        last: Box<Error>,
    },
    /// The server's `Retry-After` asked for a longer wait than the policy allows.
    #[error("the server asked to wait {requested:?}, more than the allowed {allowed:?}")]
    RetryAfterTooLong {
        /// What the server asked for.
        requested: Duration,
        /// The policy's `max_retry_after`.
        allowed: Duration,
    },
}

impl Error {
    /// The close code, if the server closed with one (directly or as the last failure
    /// before giving up).
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Self::Closed { code, .. } => Some(*code),
            Self::GaveUp { last, .. } => last.close_code(),
            _ => None,
        }
    }

    /// The HTTP status, if the upgrade was refused (directly or as the last failure).
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status, .. } => Some(*status),
            Self::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// Whether the connection was declared dead by the liveness check.
    pub fn is_pong_timeout(&self) -> bool {
        matches!(self, Self::PongTimeout(_))
    }
}

fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(" ({reason})")
    }
}

fn quick_suffix(quick_drops: bool) -> &'static str {
    if quick_drops {
        ": connections keep dropping right after they open"
    } else {
        ""
    }
}

impl Error {
    /// The close code the client answers a protocol violation by the server with: 1007
    /// for text that is not UTF-8, 1009 for a message over the size limit, 1002 for any
    /// other broken framing. `None` for errors that are not the server's violation.
    pub fn violation_code(&self) -> Option<u16> {
        let Self::WebSocket(source) = self else {
            return None;
        };
        match source.as_ref() {
            tungstenite::Error::Utf8(_) => Some(1007),
            tungstenite::Error::Capacity(_) => Some(1009),
            tungstenite::Error::Protocol(
                tungstenite::error::ProtocolError::ResetWithoutClosingHandshake
                | tungstenite::error::ProtocolError::SendAfterClosing
                | tungstenite::error::ProtocolError::ReceivedAfterClosing,
            ) => None,
            tungstenite::Error::Protocol(_) => Some(1002),
            _ => None,
        }
    }
}

/// Why the client ended up closed for good.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum CloseReason {
    /// The application called `close` or cancelled the client's token.
    #[error("closed at the application's request")]
    Requested,
    /// A rule said stop (a terminal close code or handshake status), or the backoff gave up.
    #[error("closed for good: {0}")]
    Terminal(Error),
    /// Every `Client` handle was dropped.
    #[error("every client handle was dropped")]
    Dropped,
    /// The client's task stopped without closing: its runtime shut down, or it panicked.
    #[error("the client's task ended unexpectedly")]
    Aborted,
}

impl CloseReason {
    /// The error that ended the client, if it was not the application's choice.
    pub fn error(&self) -> Option<&Error> {
        match self {
            Self::Terminal(error) => Some(error),
            _ => None,
        }
    }
}

/// Why `send` did not queue a message; the message comes back inside.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The buffer is full and the policy is [`Overflow::Reject`](crate::Overflow::Reject).
    #[error("the outbound buffer is full")]
    BufferFull(Message),
    /// The message is larger than the buffer or than the maximum message size.
    #[error("a message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The message.
        message: Message,
        /// Its size.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The message must not be replayed and the client is not connected right now.
    #[error("not connected, and the message must not wait for a reconnect")]
    NotConnected(Message),
    /// The client is closed (or closing); nothing is queued any more.
    #[error("the client is closed")]
    Closed(Message),
}

impl SendError {
    /// Takes the message back.
    pub fn into_message(self) -> Message {
        match self {
            Self::BufferFull(message)
            | Self::TooLarge { message, .. }
            | Self::NotConnected(message)
            | Self::Closed(message) => message,
        }
    }
}

/// A setting that cannot work; the message names the rule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The URL does not parse or is not `ws://` / `wss://`.
    #[error("invalid websocket url {url:?}: {why}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The backoff policy breaks one of its rules.
    #[error("invalid backoff policy: {0}")]
    Backoff(steadfast_backoff::BuildError),
    /// A limit that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// Two settings contradict each other; the message says which and how.
    #[error("{0}")]
    Conflict(&'static str),
    /// `build` was called outside a tokio runtime, where the client's task cannot run.
    #[error("build must be called within a tokio runtime")]
    NoRuntime,
}
