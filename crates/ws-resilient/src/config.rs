//! Plain settings: timeouts, liveness, the outbound buffer and the reconnect rules.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steadfast_backoff::{Backoff, ErrorClass};

/// Every plain setting of a [`Client`](crate::Client), with documented defaults.
///
/// Build one with `Config { field: value, ..Config::default() }` or read it from a
/// configuration file (serde: missing fields take their defaults, and a misspelt one is an
/// error rather than silently ignored); things that are code (the request builder, the
/// on-connect hook, a cancellation token) go on the [`Builder`](crate::Builder) instead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Reconnect delays and limits. Default: 500 ms doubling to 30 s, full jitter from zero
    /// (so that clients dropped together do not all come back after exactly 500 ms), no
    /// attempt or time limit. `max_attempts` and `max_elapsed` count consecutive failed
    /// attempts; they start again after a stable connection.
    pub backoff: Backoff,
    /// How long a connection must stay open before the attempt counter starts again. A
    /// connection that drops sooner counts as a failed attempt, so a server that accepts
    /// and then kicks the client at once still meets the backoff (default 10 s).
    pub stable_after: Duration,
    /// A time limit on one attempt: TCP connect, TLS and the HTTP upgrade (default 10 s).
    pub connect_timeout: Duration,
    /// How often the client pings an open connection; `None` turns liveness checks off
    /// (default 15 s).
    pub ping_interval: Option<Duration>,
    /// How long after a ping the connection counts as dead if nothing at all has arrived
    /// meanwhile (default 10 s). Anything received proves life, not only the pong: any
    /// frame, or part of a large one.
    pub pong_timeout: Duration,
    /// How long `close` waits for the server to answer the close frame, and how long the
    /// client waits, after answering a close from the server, for the server to end the
    /// connection (default 5 s).
    pub close_timeout: Duration,
    /// How long the on-connect hook may run before the attempt counts as failed
    /// (default 10 s).
    pub hook_timeout: Duration,
    /// The outbound buffer.
    pub buffer: BufferConfig,
    /// The rule table: what each close code and handshake status means.
    pub rules: Rules,
    /// Received messages held for the application before the client stops reading the
    /// socket (default 1024).
    pub inbound_capacity: usize,
    /// Received payload bytes held for the application before the client stops reading the
    /// socket (default 1 MiB). A message larger than this is still taken, alone, once the
    /// application has read everything before it. This counts payloads, not the read
    /// buffers they share: see [`Incoming`](crate::Incoming) on keeping small messages.
    pub inbound_max_bytes: usize,
    /// The largest message accepted either way, in bytes (default 16 MiB; tungstenite's own
    /// default is 64 MiB).
    pub max_message_size: usize,
    /// The largest frame accepted, in bytes (default 16 MiB, as large as a message: most
    /// servers send a message as one frame, and a larger one is answered with 1009, which
    /// stops the client by default).
    pub max_frame_size: usize,
    /// Bytes gathered before a write reaches the socket (default 128 KiB).
    pub write_buffer_size: usize,
    /// The most bytes waiting to be written before writes fail (default 4 MiB; unbounded in
    /// tungstenite). Must be larger than `write_buffer_size`.
    pub max_write_buffer_size: usize,
    /// Seed for the jitter RNG, for reproducible schedules in tests; `None` seeds from the
    /// operating system.
    pub seed: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            backoff: Backoff::exponential(Duration::from_millis(500))
                .min_delay(Duration::ZERO)
                .unlimited_attempts(),
            stable_after: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(15)),
            pong_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            hook_timeout: Duration::from_secs(10),
            buffer: BufferConfig::default(),
            rules: Rules::default(),
            inbound_capacity: 1024,
            inbound_max_bytes: 1 << 20,
            max_message_size: 16 << 20,
            max_frame_size: 16 << 20,
            write_buffer_size: 128 << 10,
            max_write_buffer_size: 4 << 20,
            seed: None,
        }
    }
}

/// The outbound buffer: every message passes through it, and while the client is not
/// connected, messages wait there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BufferConfig {
    /// The most messages held (default 1024).
    pub max_messages: usize,
    /// The most payload bytes held (default 1 MiB).
    pub max_bytes: usize,
    /// What `send` does when the buffer is full (default [`Overflow::Reject`]).
    pub overflow: Overflow,
    /// Messages older than this when their turn comes are discarded and reported instead of
    /// sent; `None` keeps them however old (the default).
    pub max_age: Option<Duration>,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_bytes: 1 << 20,
            overflow: Overflow::Reject,
            max_age: None,
        }
    }
}

/// What `send` does with a message that does not fit in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[non_exhaustive]
pub enum Overflow {
    /// Fail the send and give the message back.
    #[default]
    Reject,
    /// Discard the oldest buffered messages until the new one fits; the send reports them.
    DropOldest,
    /// Discard the new message; the send reports it.
    DropNewest,
    /// Wait until there is room (or the client closes).
    Wait,
}

/// What the client does after a connection ends or an attempt fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Action {
    /// Reconnect after the backoff delay.
    Retry,
    /// Reconnect, but wait at least this long (or the server's `Retry-After`, if longer).
    RetryLater(Duration),
    /// Stop for good: the client ends closed with this error.
    Stop,
}

/// The rule table: what each close code and each handshake HTTP status means.
///
/// Overrides take precedence over the documented defaults of [`Rules::default_for_close`]
/// and [`Rules::default_for_status`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rules {
    /// What a normal close (1000) by the server means (default [`Action::Retry`]: a server
    /// that says goodbye normally is usually restarting or rebalancing).
    pub normal_close: Action,
    /// Overrides per close code.
    pub close_codes: BTreeMap<u16, Action>,
    /// Overrides per handshake HTTP status.
    pub statuses: BTreeMap<u16, Action>,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            normal_close: Action::Retry,
            close_codes: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }
}

impl Rules {
    /// Overrides the action for one close code.
    pub fn close_code(mut self, code: u16, action: Action) -> Self {
        self.close_codes.insert(code, action);
        self
    }

    /// Overrides the action for one handshake HTTP status.
    pub fn status(mut self, status: u16, action: Action) -> Self {
        self.statuses.insert(status, action);
        self
    }

    /// The action for a close frame with this code sent by the server.
    pub fn for_close(&self, code: u16) -> Action {
        if let Some(action) = self.close_codes.get(&code) {
            return *action;
        }
        if code == 1000 {
            return self.normal_close;
        }
        Self::default_for_close(code)
    }

    /// The action for a handshake answered with this HTTP status instead of `101`.
    pub fn for_status(&self, status: u16) -> Action {
        self.statuses
            .get(&status)
            .copied()
            .unwrap_or_else(|| Self::default_for_status(status))
    }

    /// The built-in action for a close code.
    ///
    /// | codes | action | why |
    /// | --- | --- | --- |
    /// | 1000 (normal), 1001 (going away), 1005 (no code), 1006 (abnormal) | retry | the server restarted or the network failed |
    /// | 1011 (server error), 1012 (restart), 1014 (bad gateway) | retry | a passing failure on the server side |
    /// | 1013 (try again later) | retry, at least 5 s later | the server asked for a pause |
    /// | 1002, 1003, 1007, 1009, 1010 | stop | the client speaks something the server will never accept |
    /// | 1008 (policy violation), 1015 (TLS) | stop | credentials or policy; retrying only gets the client banned |
    /// | 3000 (unauthorized), 3003 (forbidden) | stop | registered as authorization failures |
    /// | 4000–4999 | stop | application-defined; an application that wants retries says so in an override |
    /// | anything else | retry | |
    pub fn default_for_close(code: u16) -> Action {
        match code {
            1013 => Action::RetryLater(Duration::from_secs(5)),
            1002 | 1003 | 1007 | 1008 | 1009 | 1010 | 1015 | 3000 | 3003 | 4000..=4999 => {
                Action::Stop
            }
            _ => Action::Retry,
        }
    }

    /// The built-in action for a handshake status: the classification of
    /// `steadfast-backoff` (408, 425, 429 and most 5xx retry; 401, 403 and other 4xx stop).
    /// A `Retry-After` header on the answer is honoured.
    pub fn default_for_status(status: u16) -> Action {
        match ErrorClass::from_http_status(status) {
            ErrorClass::Permanent => Action::Stop,
            _ => Action::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_close_rules_follow_the_table() {
        let rules = Rules::default();

        assert_eq!(rules.for_close(1000), Action::Retry);
        assert_eq!(rules.for_close(1006), Action::Retry);
        assert_eq!(rules.for_close(1011), Action::Retry);
        assert_eq!(rules.for_close(1014), Action::Retry);
        assert_eq!(
            rules.for_close(1013),
            Action::RetryLater(Duration::from_secs(5))
        );
        assert_eq!(rules.for_close(1008), Action::Stop);
        assert_eq!(rules.for_close(4000), Action::Stop);
        assert_eq!(rules.for_close(4999), Action::Stop);
    }

    #[test]
    fn default_status_rules_stop_on_auth_and_retry_on_overload() {
        let rules = Rules::default();

        assert_eq!(rules.for_status(401), Action::Stop);
        assert_eq!(rules.for_status(403), Action::Stop);
        assert_eq!(rules.for_status(429), Action::Retry);
        assert_eq!(rules.for_status(503), Action::Retry);
    }

    #[test]
    fn overrides_win_over_defaults_and_normal_close_is_configurable() {
        let mut rules = Rules::default()
            .close_code(4001, Action::Retry)
            .status(401, Action::Retry);
        rules.normal_close = Action::Stop;

        assert_eq!(rules.for_close(4001), Action::Retry);
        assert_eq!(rules.for_status(401), Action::Retry);
        assert_eq!(rules.for_close(1000), Action::Stop);
    }

    #[test]
    fn settings_read_back_as_written_and_a_misspelt_one_is_refused() {
        let config = Config {
            inbound_max_bytes: 1234,
            ..Config::default()
        };
        let written = serde_json::to_string(&config).unwrap();
        let read: Config = serde_json::from_str(&written).unwrap();
        assert_eq!(read, config);

        let partial: Config = serde_json::from_str(r#"{"inbound_capacity": 7}"#).unwrap();
        assert_eq!(partial.inbound_capacity, 7);
        assert_eq!(partial.max_message_size, Config::default().max_message_size);

        let typo = serde_json::from_str::<Config>(r#"{"inbound_capacty": 7}"#).unwrap_err();
        assert!(typo.to_string().contains("inbound_capacty"), "{typo}");
        let nested = r#"{"buffer": {"max_byte": 7}}"#;
        let typo = serde_json::from_str::<Config>(nested).unwrap_err();
        assert!(typo.to_string().contains("max_byte"), "{typo}");
    }
}
