//! BO-03: Retry-After is honoured within bounds and never silently switches retrying off.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, SystemTime};

use steadfast_backoff::retry_after::{self, WallClock};
use steadfast_backoff::{Backoff, ErrorClass, GiveUpReason, Jitter, retry};
use tokio::time::Instant;

/// A wall clock that moves with tokio's paused clock, from a fixed date.
struct PausedWallClock {
    origin: SystemTime,
    started: Instant,
}

impl PausedWallClock {
    fn new() -> Self {
        Self {
            // Wed, 21 Oct 2015 07:28:00 GMT: whole seconds, as HTTP dates are.
            origin: SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480),
            started: Instant::now(),
        }
    }
}

impl WallClock for PausedWallClock {
    fn now(&self) -> SystemTime {
        self.origin + self.started.elapsed()
    }
}

/// A response the fake server gives: a status and maybe a `Retry-After` header.
#[derive(Debug)]
struct Response {
    status: u16,
    retry_after: Option<String>,
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status {}", self.status)
    }
}

impl std::error::Error for Response {}

/// What the server sends for one call; dates are made relative to the clock then.
enum Hint {
    None,
    Seconds(&'static str),
    DateIn(Duration),
}

struct Server<'a> {
    script: RefCell<VecDeque<(u16, Hint)>>,
    calls: RefCell<Vec<Instant>>,
    clock: &'a PausedWallClock,
}

impl<'a> Server<'a> {
    fn new(clock: &'a PausedWallClock, script: Vec<(u16, Hint)>) -> Self {
        Self {
            script: RefCell::new(script.into()),
            calls: RefCell::new(Vec::new()),
            clock,
        }
    }

    async fn call(&self) -> Result<u16, Response> {
        self.calls.borrow_mut().push(Instant::now());
        let (status, hint) = self
            .script
            .borrow_mut()
            .pop_front()
            .expect("a scripted answer");
        let retry_after = match hint {
            Hint::None => None,
            Hint::Seconds(value) => Some(value.to_owned()),
            Hint::DateIn(delay) => Some(httpdate::fmt_http_date(self.clock.now() + delay)),
        };
        if status < 300 {
            return Ok(status);
        }
        Err(Response {
            status,
            retry_after,
        })
    }

    fn gaps(&self) -> Vec<Duration> {
        let calls = self.calls.borrow();
        calls.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }
}

/// The classification a caller writes: status table plus the server's hint.
fn classify(clock: &PausedWallClock) -> impl FnMut(&Response) -> ErrorClass + '_ {
    move |response: &Response| {
        let hint = response
            .retry_after
            .as_deref()
            .and_then(|value| retry_after::parse(value, clock).ok());
        ErrorClass::from_http_status(response.status).with_hint(hint)
    }
}

fn policy() -> Backoff {
    Backoff::exponential(Duration::from_millis(500))
        .factor(2.0)
        .jitter(Jitter::None)
        .max_attempts(5)
}

#[tokio::test(start_paused = true)]
async fn bo_03_hints_in_both_forms_are_honoured_and_an_unreadable_one_falls_back() {
    let clock = PausedWallClock::new();
    let server = Server::new(
        &clock,
        vec![
            (503, Hint::Seconds("2")),
            (429, Hint::DateIn(Duration::from_secs(3))),
            (503, Hint::Seconds("soon")),
            (200, Hint::None),
        ],
    );
    let mut sleeps = Vec::new();

    let status = retry(&policy(), || server.call())
        .classify_with(classify(&clock))
        .notify(|_: &Response, _, delay| sleeps.push(delay))
        .await
        .unwrap();

    assert_eq!(status, 200);
    let expected = [2, 3, 2].map(Duration::from_secs);
    assert_eq!(sleeps, expected);
    assert_eq!(server.gaps(), expected);
    assert_eq!(server.calls.borrow().len(), 4);
}

#[tokio::test(start_paused = true)]
async fn bo_03_hint_beyond_the_ceiling_fails_at_once_stating_the_request() {
    let clock = PausedWallClock::new();
    let server = Server::new(
        &clock,
        vec![(503, Hint::Seconds("3600")), (200, Hint::None)],
    );
    let started = Instant::now();

    let error = retry(&policy().max_retry_after(Duration::from_secs(30)), || {
        server.call()
    })
    .classify_with(classify(&clock))
    .deadline(started + Duration::from_secs(60))
    .await
    .unwrap_err();

    assert_eq!(started.elapsed(), Duration::ZERO, "no sleep");
    assert_eq!(server.calls.borrow().len(), 1);
    assert_eq!(
        error.reason(),
        GiveUpReason::RetryAfterTooLong {
            requested: Duration::from_secs(3600),
            allowed: Duration::from_secs(30),
        }
    );
    assert_eq!(error.requested_delay(), Some(Duration::from_secs(3600)));
    assert!(
        error
            .to_string()
            .contains("the server asked to retry after 3600 s"),
        "{error}"
    );
    assert_eq!(
        error.last_error().map(|response| response.status),
        Some(503)
    );
}

#[tokio::test(start_paused = true)]
async fn bo_03_hint_never_raises_the_attempt_limit() {
    let clock = PausedWallClock::new();
    let script = (0..5).map(|_| (503, Hint::Seconds("1"))).collect();
    let server = Server::new(&clock, script);

    let error = retry(&policy().max_attempts(3), || server.call())
        .classify_with(classify(&clock))
        .await
        .unwrap_err();

    assert!(error.is_exhausted());
    assert_eq!(error.attempts(), 3);
    assert_eq!(server.calls.borrow().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn bo_03_hint_never_pushes_past_the_deadline() {
    let clock = PausedWallClock::new();
    let server = Server::new(&clock, vec![(503, Hint::Seconds("20")), (200, Hint::None)]);
    let started = Instant::now();

    let error = retry(&policy(), || server.call())
        .classify_with(classify(&clock))
        .deadline(started + Duration::from_secs(10))
        .await
        .unwrap_err();

    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "no sleep towards a deadline it cannot meet"
    );
    assert_eq!(
        error.reason(),
        GiveUpReason::RetryAfterTooLong {
            requested: Duration::from_secs(20),
            allowed: Duration::from_secs(10),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn bo_03_hint_lengthens_a_wait_but_never_shortens_it() {
    let clock = PausedWallClock::new();
    let server = Server::new(
        &clock,
        vec![
            (503, Hint::Seconds("0")),
            (503, Hint::DateIn(Duration::ZERO)),
            (200, Hint::None),
        ],
    );
    let mut sleeps = Vec::new();

    retry(&policy(), || server.call())
        .classify_with(classify(&clock))
        .notify(|_: &Response, _, delay| sleeps.push(delay))
        .await
        .unwrap();

    assert_eq!(sleeps, [Duration::from_millis(500), Duration::from_secs(1)]);
}
