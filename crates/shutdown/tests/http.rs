//! The axum integration: readiness, drain delay, listener close, long-lived connections.
#![cfg(feature = "axum")]

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::Router;
use axum::response::sse::{Event, Sse};
use axum::routing::get;
use futures::stream;
use http_body_util::BodyExt;
use steadfast_shutdown::axum::{Drain, readiness_route, serve};
use steadfast_shutdown::{End, Outcome, Shutdown, Signal};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep};

use common::{connect, connection_header, get_fresh, text};

async fn work() -> &'static str {
    sleep(Duration::from_millis(300)).await;
    "done"
}

/// SD-01: readiness reports 503 from the signal on; fresh connections and reused ones are
/// served through the 500 ms drain delay, the reused one told to close; then the listener
/// goes away while a request that arrived at 450 ms still gets its 200.
#[tokio::test(start_paused = true)]
async fn sd_01_a_rolling_update_loses_no_request() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_delay(Duration::from_millis(500))
        .drain_deadline(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let app = Router::new()
        .route("/work", get(work))
        .route("/ready", readiness_route(shutdown.readiness()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    shutdown.spawn_critical("http", serve(&shutdown, listener, app));

    // Before the signal: ready, and a connection a client will reuse.
    assert_eq!(get_fresh(addr, "/ready").await.0, 200);
    let mut reused = connect(addr).await;
    let first = reused.get("/work").await.expect("first response");
    assert_eq!(connection_header(&first), None);
    assert_eq!(text(first).await, "done");

    let t0 = Instant::now();
    shutdown.signal(Signal::Terminate);
    let run = tokio::spawn(shutdown.run());

    let (status, _, body) = get_fresh(addr, "/ready").await;
    assert_eq!(
        (status, body.as_str()),
        (503, "shutting down"),
        "not ready as soon as the signal lands"
    );

    let fresh = tokio::spawn(get_fresh(addr, "/work"));
    let on_reused = tokio::spawn(async move {
        let response = reused.get("/work").await.expect("reused response");
        (
            response.status().as_u16(),
            connection_header(&response),
            text(response).await,
        )
    });
    let late = tokio::spawn(async move {
        sleep(Duration::from_millis(450)).await;
        let (status, _, body) = get_fresh(addr, "/work").await;
        (status, body, t0.elapsed())
    });
    let refused = tokio::spawn(async move {
        sleep(Duration::from_millis(600)).await;
        TcpStream::connect(addr).await.map(drop)
    });

    let (status, _, body) = fresh.await.expect("fresh");
    assert_eq!(
        (status, body.as_str()),
        (200, "done"),
        "a fresh connection during the delay"
    );
    let (status, connection, body) = on_reused.await.expect("reused");
    assert_eq!((status, body.as_str()), (200, "done"));
    assert_eq!(
        connection.as_deref(),
        Some("close"),
        "a reused connection is told to close"
    );
    let (status, body, at) = late.await.expect("late");
    assert_eq!(
        (status, body.as_str()),
        (200, "done"),
        "the request from 450 ms completes"
    );
    assert_eq!(at, Duration::from_millis(750));
    let error = refused
        .await
        .expect("refused")
        .expect_err("listener gone at 600 ms");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

    let report = run.await.expect("run");
    assert_eq!(report.outcome(), Outcome::Clean, "{report}");
    assert_eq!(report.exit_code(), 0);
}

/// Readiness turns false at the trigger, while the listener still accepts; the listener
/// closes only when the drain delay is over.
#[tokio::test(start_paused = true)]
async fn readiness_flips_before_the_listener_closes() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_delay(Duration::from_millis(200))
        .build()
        .expect("valid settings");
    let readiness = shutdown.readiness();
    let app = Router::new().route("/ready", readiness_route(readiness.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    shutdown.spawn_critical("http", serve(&shutdown, listener, app));

    shutdown.trigger();
    assert!(!readiness.is_ready());
    let run = tokio::spawn(shutdown.run());
    assert_eq!(
        get_fresh(addr, "/ready").await.0,
        503,
        "served, but not ready"
    );

    sleep(Duration::from_millis(199)).await;
    TcpStream::connect(addr)
        .await
        .expect("still accepting just before the delay ends");
    sleep(Duration::from_millis(2)).await;
    let error = TcpStream::connect(addr)
        .await
        .expect_err("closed after the delay");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);

    assert_eq!(run.await.expect("run").outcome(), Outcome::Clean);
}

/// SD-02: a connection that never sent a request and an idle keep-alive connection are
/// dropped at once, an endless SSE stream sees its cancellation and ends, and a handler
/// that ignores cancellation is aborted at the 1 s deadline and named in the report.
#[tokio::test(start_paused = true)]
async fn sd_02_idle_and_never_ending_connections_cannot_hold_shutdown_open() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_deadline(Duration::from_secs(1))
        .build()
        .expect("valid settings");
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route("/events", get(events))
        .route(
            "/stuck",
            get(|| async {
                sleep(Duration::from_secs(60)).await;
                "too late"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    shutdown.spawn_critical("http", serve(&shutdown, listener, app));

    // (a) a bare connection that never sends a request.
    let mut bare = TcpStream::connect(addr).await.expect("connect");
    // (b) an SSE response with no end; its first event has arrived.
    let mut sse = connect(addr).await;
    let mut events = sse.get("/events").await.expect("sse response").into_body();
    let first = events.frame().await.expect("a frame").expect("no error");
    assert!(
        first
            .data_ref()
            .is_some_and(|data| data.starts_with(b"data: hello"))
    );
    // (c) a keep-alive connection resting between requests.
    let mut idle = connect(addr).await;
    assert_eq!(text(idle.get("/ok").await.expect("ok")).await, "ok");
    // (d) a handler that ignores cancellation.
    let mut stuck = connect(addr).await;
    let stuck_response = tokio::spawn(async move { stuck.get("/stuck").await.map(drop) });
    sleep(Duration::from_millis(10)).await;

    let t0 = Instant::now();
    shutdown.trigger();
    let run = tokio::spawn(shutdown.run());

    let read = bare.read(&mut [0_u8; 16]).await.expect("read");
    assert_eq!(
        (read, t0.elapsed()),
        (0, Duration::ZERO),
        "(a) closed at once"
    );
    idle.driver.await.expect("driver").expect("clean close");
    assert_eq!(t0.elapsed(), Duration::ZERO, "(c) closed at once");
    let rest = events.collect().await.expect("(b) the stream ends cleanly");
    assert!(rest.to_bytes().is_empty());
    assert_eq!(
        t0.elapsed(),
        Duration::ZERO,
        "(b) ends as soon as it is cancelled"
    );

    let error = stuck_response
        .await
        .expect("task")
        .expect_err("(d) cut off");
    assert!(
        error.is_incomplete_message() || error.is_canceled(),
        "{error}"
    );
    let report = run.await.expect("run");
    assert!(t0.elapsed() <= Duration::from_millis(1200), "back by 1.2 s");
    assert_eq!(report.outcome(), Outcome::Forced, "{report}");
    assert_ne!(report.exit_code(), 0);
    assert_eq!(
        report.record("GET /stuck").map(|r| &r.end),
        Some(&End::Forced),
        "{report}"
    );
    assert!(
        report.record("GET /events").is_none(),
        "the SSE stream ended in time"
    );
}

async fn events(drain: Drain) -> Sse<impl futures::Stream<Item = Result<Event, Infallible>>> {
    let events = stream::unfold(false, move |sent| {
        let drain = drain.clone();
        async move {
            if sent {
                drain.cancelled().await;
                None
            } else {
                Some((Ok(Event::default().data("hello")), true))
            }
        }
    });
    Sse::new(events)
}

/// A handler outside `serve` gets a clear 500 instead of a token that never fires.
#[tokio::test]
async fn the_drain_extractor_outside_serve_is_a_clear_error() {
    use tower::ServiceExt;

    let app = Router::new().route("/events", get(|_drain: Drain| async { "unreachable" }));
    let request = axum::http::Request::get("/events")
        .body(axum::body::Body::empty())
        .expect("request");
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status().as_u16(), 500);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("steadfast_shutdown::axum::serve"));
}

/// Work that outlives its response, as a WebSocket session does after the upgrade, is
/// counted in the drain through `Drain::track` and may wind down after the cancellation.
#[tokio::test(start_paused = true)]
async fn a_session_outliving_its_response_is_counted_in_the_drain() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_deadline(Duration::from_secs(5))
        .build()
        .expect("valid settings");
    let app = Router::new().route(
        "/session",
        get(|drain: Drain| async move {
            let guard = drain.track("session 7");
            tokio::spawn(async move {
                drain.cancelled().await;
                sleep(Duration::from_millis(800)).await;
                drop(guard);
            });
            "opened"
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    shutdown.spawn_critical("http", serve(&shutdown, listener, app));
    assert_eq!(get_fresh(addr, "/session").await.2, "opened");

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(800),
        "the drain waited for the session"
    );
    assert_eq!(report.outcome(), Outcome::Clean, "{report}");
}
