//! Closing: by the application, by a terminal rule, by giving up.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use steadfast_testkit::FaultProxy;
use steadfast_ws_resilient::{
    Backoff, CancellationToken, Client, CloseReason, Config, Error, Event, Jitter, SendError, State,
};
use support::{Server, close_with, config, dead_address, record_texts, wait_open};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Asserts the client closed at the application's request, and that it stays inert.
async fn assert_closed_for_good(client: &Client) {
    assert!(matches!(
        client.current_state(),
        State::Closed(CloseReason::Requested)
    ));
    let error = client.send("late").await.unwrap_err();
    assert!(matches!(error, SendError::Closed(_)));
    assert_eq!(client.buffered(), (0, 0));
    assert!(client.close().await.is_empty(), "a second close is a no-op");
}

#[tokio::test(start_paused = true)]
async fn ws_03_close_during_the_backoff_wait_is_final() {
    // Connections are refused; constant 2 s waits so attempt 3 is due 2 s after attempt 2.
    let proxy = FaultProxy::start(dead_address().await).await.unwrap();
    let config = Config {
        backoff: Backoff::constant(Duration::from_secs(2))
            .jitter(Jitter::None)
            .unlimited_attempts(),
        ..Config::default()
    };
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config)
        .build()
        .unwrap();
    let mut state = client.state();
    state
        .wait_for(|state| matches!(state, State::Reconnecting { attempt: 3, .. }))
        .await
        .unwrap();
    let accepted = proxy.stats().connections_accepted;
    assert_eq!(accepted, 2);

    let called = Instant::now();
    client.close().await;
    let took = called.elapsed();
    tokio::time::sleep(Duration::from_secs(10)).await;

    assert!(
        took < Duration::from_millis(100),
        "close sat out the wait: {took:?}"
    );
    assert_eq!(
        proxy.stats().connections_accepted,
        accepted,
        "no attempt after close"
    );
    assert_closed_for_good(&client).await;
}

#[tokio::test(start_paused = true)]
async fn ws_03_close_during_a_connect_in_progress_is_final() {
    // The server accepts TCP but never answers the upgrade.
    let server = Server::start(|accepted| async move {
        let _held = accepted.tcp;
        std::future::pending::<()>().await;
    })
    .await;
    let (client, _incoming) = Client::builder(server.url()).build().unwrap();
    server.wait_for_accepts(1).await;

    let called = Instant::now();
    client.close().await;
    let took = called.elapsed();
    tokio::time::sleep(Duration::from_secs(30)).await;

    assert!(took < Duration::from_millis(100), "{took:?}");
    assert_eq!(server.accepts(), 1);
    assert_closed_for_good(&client).await;

    let mut fresh = Server::start(record_texts).await;
    let (again, _incoming) = Client::builder(fresh.url()).build().unwrap();
    again.send("hello").await.unwrap();
    assert_eq!(fresh.take(1).await, ["hello"]);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_token_closes_like_close() {
    let mut server = Server::start(record_texts).await;
    let token = CancellationToken::new();
    let (client, _incoming) = Client::builder(server.url())
        .cancel_token(token.clone())
        .build()
        .unwrap();
    client.send("one").await.unwrap();
    assert_eq!(server.take(1).await, ["one"]);

    token.cancel();
    let reason = client.closed().await;

    assert!(matches!(reason, CloseReason::Requested));
    assert!(matches!(
        client.send("two").await,
        Err(SendError::Closed(_))
    ));
}

#[tokio::test(start_paused = true)]
async fn the_event_stream_ends_after_the_closed_event() {
    let server = Server::start(record_texts).await;
    let (client, _incoming) = support::client_for(&server, Config::default());
    let mut events = client.events();
    wait_open(&client).await;

    client.close().await;
    let mut seen = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.next().await {
            seen.push(event);
        }
    })
    .await;

    assert!(ended.is_ok(), "the stream did not end: {seen:?}");
    assert!(
        matches!(seen.last(), Some(Event::Closed(CloseReason::Requested))),
        "{seen:?}"
    );
    assert!(
        client.events().next().await.is_none(),
        "subscribed after close"
    );
}

#[tokio::test(start_paused = true)]
async fn ws_04_policy_violation_close_is_terminal() {
    let server = Server::start(|accepted| async move {
        close_with(accepted.tcp, 1008).await;
    })
    .await;
    let (client, mut incoming) = support::client_for(&server, config(Duration::from_millis(100)));

    let reason = client.closed().await;
    tokio::time::sleep(Duration::from_secs(60)).await;

    let error = reason.error().expect("a terminal error");
    assert_eq!(error.close_code(), Some(1008));
    assert!(matches!(error, Error::Closed { code: 1008, .. }));
    assert_eq!(server.accepts(), 1);
    assert_eq!(incoming.recv().await, None, "the application sees the end");
}

#[tokio::test(start_paused = true)]
async fn ws_04_unauthorized_upgrade_is_not_retried() {
    let server = Server::start(|accepted| async move {
        #[expect(
            clippy::result_large_err,
            reason = "the signature of tungstenite's server callback"
        )]
        let reject = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            let mut response = ErrorResponse::new(Some("bad token".to_owned()));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Err(response)
        };
        let _ = tokio_tungstenite::accept_hdr_async(accepted.tcp, reject).await;
    })
    .await;
    let (client, _incoming) = support::client_for(&server, config(Duration::from_millis(100)));

    let reason = client.closed().await;
    tokio::time::sleep(Duration::from_secs(60)).await;

    let error = reason.error().expect("a terminal error");
    assert_eq!(error.status(), Some(401));
    assert!(error.to_string().contains("401"), "{error}");
    assert_eq!(server.accepts(), 1);
}

#[tokio::test(start_paused = true)]
async fn ws_04_connect_then_kick_backs_off_and_gives_up() {
    let server_1011 = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let frame = CloseFrame {
            code: CloseCode::Error,
            reason: "".into(),
        };
        let _ = ws.send(Frame::Close(Some(frame))).await;
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    // The same with the TCP connection simply dropped after 50 ms, without a close frame.
    let server = Server::start(|accepted| async move {
        let ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(ws);
    })
    .await;

    for server in [&server_1011, &server] {
        let mut config = config(Duration::from_millis(100));
        config.backoff = config.backoff.max_attempts(6);
        let (client, _incoming) = support::client_for(server, config);

        let reason = client.closed().await;

        let error = reason.error().expect("gave up");
        assert!(
            matches!(
                error,
                Error::GaveUp {
                    attempts: 6,
                    quick_drops: true,
                    ..
                }
            ),
            "{error}"
        );
        assert!(
            error
                .to_string()
                .contains("keep dropping right after they open"),
            "{error}"
        );
        let times = server.accept_times();
        assert_eq!(times.len(), 6);
        let gaps: Vec<u128> = times
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_millis())
            .collect();
        assert_eq!(
            gaps,
            [150, 250, 450, 850, 1650],
            "50 ms open, then 100, 200, 400, 800, 1600"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn ws_07_graceful_server_close_does_not_spin_the_loop() {
    let test = async {
        let server = Server::start(|accepted| async move {
            close_with(accepted.tcp, 1001).await;
        })
        .await;
        let ticks = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&ticks);
        let ticker = tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(10));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                interval.tick().await;
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        let started = Instant::now();
        let (_client, _incoming) = support::client_for(&server, config(Duration::from_millis(100)));

        tokio::time::sleep(Duration::from_secs(10)).await;
        ticker.abort();

        let offsets: Vec<u128> = server
            .accept_times()
            .iter()
            .map(|at| (*at - started).as_millis())
            .collect();
        assert_eq!(offsets, [0, 100, 300, 700, 1500, 3100, 6300]);
        assert!(
            ticks.load(Ordering::Relaxed) >= 990,
            "{}",
            ticks.load(Ordering::Relaxed)
        );
    };

    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("no hang");
}

#[tokio::test(start_paused = true)]
async fn an_unauthorized_upgrade_can_be_retried_once_credentials_are_refreshed() {
    // The application overrides 401 to retry and mints a fresh token for every attempt.
    let server = Server::start(|accepted| async move {
        #[expect(
            clippy::result_large_err,
            reason = "the signature of tungstenite's server callback"
        )]
        let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
            if request
                .headers()
                .get("authorization")
                .is_some_and(|token| token == "fresh")
            {
                return Ok(response);
            }
            let mut refused = ErrorResponse::new(None);
            *refused.status_mut() = StatusCode::UNAUTHORIZED;
            Err(refused)
        };
        if let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(accepted.tcp, check).await {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    let mut config = config(Duration::from_millis(100));
    config.rules = config
        .rules
        .status(401, steadfast_ws_resilient::Action::Retry);
    let url = server.url();
    let attempts = Arc::new(AtomicU64::new(0));
    let (client, _incoming) = Client::builder(url.clone())
        .config(config)
        .request(move || {
            use steadfast_ws_resilient::IntoClientRequest;
            let mut request = url.as_str().into_client_request()?;
            let token = if attempts.fetch_add(1, Ordering::Relaxed) == 0 {
                "stale"
            } else {
                "fresh"
            };
            request
                .headers_mut()
                .insert("authorization", token.parse()?);
            Ok(request)
        })
        .build()
        .unwrap();

    support::wait_open(&client).await;

    assert_eq!(server.accepts(), 2);
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_closes_the_connection() {
    let mut server = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        let mut close_code = None;
        while let Some(Ok(frame)) = ws.next().await {
            if let Frame::Close(frame) = frame {
                close_code = frame.map(|frame| u16::from(frame.code));
            }
        }
        let _ = accepted.record.send(format!("ended with {close_code:?}"));
    })
    .await;
    let (client, mut incoming) = Client::builder(server.url()).build().unwrap();
    support::wait_open(&client).await;
    let other = client.clone();

    drop(client);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        server.records.try_recv().is_err(),
        "one handle is still there"
    );
    drop(other);

    assert_eq!(server.take(1).await, ["ended with Some(1000)"]);
    assert_eq!(incoming.recv().await, None);
}

#[test]
fn a_client_whose_runtime_shuts_down_ends_closed() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (client, _incoming) = runtime.block_on(async {
        Client::builder(format!("ws://{}", dead_port()))
            .build()
            .unwrap()
    });

    drop(runtime);

    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async {
        let reason = tokio::time::timeout(Duration::from_secs(5), client.closed())
            .await
            .expect("closed, not stuck");
        assert!(matches!(reason, CloseReason::Aborted), "{reason:?}");
        assert!(matches!(
            client.send("late").await,
            Err(SendError::Closed(_))
        ));
    });
}

/// A loopback address nothing listens on.
fn dead_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}
