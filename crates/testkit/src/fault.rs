//! What the proxy does to a connection.

use std::fmt::Write as _;
use std::time::Duration;

/// A fault the proxy applies to a connection.
///
/// A fault set for new connections applies from the moment a client is accepted; a fault set
/// for live connections applies from the next chunk each direction reads, and counters such
/// as [`Fault::CutAfter`]'s start again from zero at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Fault {
    /// Forward everything unchanged: the proxy is invisible.
    #[default]
    PassThrough,
    /// Hold every chunk read this long before forwarding it, in both directions, so the
    /// link behaves like a slow one. Chunks keep their order, so delays add up under load.
    Delay(Duration),
    /// Forward this many bytes in the given direction (in each, for [`Direction::Both`]),
    /// then close both sides of the connection: a transfer cut in the middle.
    CutAfter {
        /// Which traffic is counted.
        direction: Direction,
        /// How many bytes get through before the cut.
        bytes: u64,
    },
    /// Keep the connection open and read from it, but forward nothing (not even an end of
    /// stream) in the given direction: a peer that vanished without closing, or a stateful
    /// middlebox that silently lost the flow.
    BlackHole(Direction),
    /// Abort with a TCP reset (RST, through `SO_LINGER` 0): immediately on accept for new
    /// connections, at once for live ones.
    Reset,
    /// Close both sides gracefully (FIN) once the connection has been open, or since the
    /// fault was applied to a live one, for this long.
    CloseAfter(Duration),
    /// Read the client's request head, answer with this response instead of forwarding,
    /// then close. The target is never contacted. Applies to new connections only; live
    /// ones ignore it.
    Respond(RawResponse),
    /// Forward HTTP/1.1 requests without any header of this name (compared ignoring case).
    /// Responses pass unchanged.
    StripHeader(String),
}

impl Fault {
    /// Answers every new connection with this bare status code and an empty body.
    pub fn status(status: u16) -> Self {
        Self::Respond(RawResponse::new(status))
    }

    /// Answers every new connection with this status and a `Retry-After` of `seconds`, as a
    /// server that sheds load does with `429` or `503`.
    pub fn retry_after(status: u16, seconds: u64) -> Self {
        Self::Respond(RawResponse::new(status).header("Retry-After", seconds.to_string()))
    }
}

/// Which way traffic flows through the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Direction {
    /// From the client under test to the target server.
    ToTarget,
    /// From the target server back to the client.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    /// Whether this direction includes `one`, which names a single way.
    pub(crate) fn covers(self, one: Direction) -> bool {
        self == Direction::Both || self == one
    }
}

/// A raw HTTP/1.1 response the proxy sends instead of forwarding a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// The status code, sent as is even if it is not a standard one.
    pub status: u16,
    /// Extra headers, in order. `Content-Length` and `Connection: close` are always added.
    pub headers: Vec<(String, String)>,
    /// The body text.
    pub body: String,
}

impl RawResponse {
    /// A response with this status, no extra headers and an empty body.
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<String>) -> Self {
        self.body = body.into();
        self
    }

    /// The bytes on the wire.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|status| status.canonical_reason())
            .unwrap_or("Unknown");

        let mut head = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(
            head,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        );

        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_renders_status_reason_headers_and_length() {
        let response = RawResponse::new(429)
            .header("Retry-After", "7")
            .body("slow down");

        let text = String::from_utf8(response.to_bytes()).unwrap();

        assert_eq!(
            text,
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 9\r\n\
             Connection: close\r\n\r\nslow down"
        );
    }

    #[test]
    fn an_unknown_status_still_renders() {
        let text = String::from_utf8(RawResponse::new(599).to_bytes()).unwrap();

        assert!(text.starts_with("HTTP/1.1 599 Unknown\r\n"));
    }

    #[test]
    fn both_covers_each_direction_and_one_covers_only_itself() {
        assert!(Direction::Both.covers(Direction::ToTarget));
        assert!(Direction::Both.covers(Direction::ToClient));
        assert!(Direction::ToTarget.covers(Direction::ToTarget));
        assert!(!Direction::ToTarget.covers(Direction::ToClient));
    }
}
