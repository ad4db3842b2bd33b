//! Reconnecting: many drops in a row, server hints, faults from the proxy, fresh requests.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::StreamExt;
use steadfast_testkit::{Fault, FaultProxy};
use steadfast_ws_resilient::{
    BoxError, BuildError, Client, Config, Error, IntoClientRequest, SendError, State,
};
use support::{Server, config, record_texts, wait_not_open, wait_open};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

#[tokio::test(start_paused = true)]
async fn a_hundred_server_drops_give_a_hundred_reconnects_with_in_order_delivery() {
    // Each connection: record text messages up to one ending in '!', then drop the TCP
    // connection without a close frame.
    let mut server = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        while let Some(Ok(frame)) = ws.next().await {
            if let Frame::Text(text) = frame {
                let _ = accepted.record.send(text.to_string());
                if text.ends_with('!') {
                    break;
                }
            }
        }
    })
    .await;
    let (client, _incoming) = Client::builder(server.url())
        .config(config(Duration::from_millis(10)))
        .on_connect(|hook| async move {
            hook.send("hello")?;
            Ok(())
        })
        .build()
        .unwrap();

    let mut expected = Vec::new();
    for round in 0..=100 {
        // Sent while disconnected: they wait in the buffer for the next connection.
        wait_not_open(&client).await;
        let batch = [
            format!("{round}.a"),
            format!("{round}.b"),
            format!("{round}.c!"),
        ];
        for message in &batch {
            client.send(message.as_str()).await.unwrap();
        }
        expected.push("hello".to_owned());
        expected.extend(batch);
        let received = server.take(4).await;
        assert_eq!(received, expected[expected.len() - 4..], "round {round}");
    }

    assert_eq!(server.accepts(), 101);
    assert_eq!(client.metrics().connects, 101);
    assert!(client.metrics().disconnects >= 100);
    assert_eq!(client.metrics().lost_in_flight, 0);
    assert!(server.records.try_recv().is_err(), "nothing twice");
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_a_429_upgrade_answer_is_honoured() {
    let server = Server::start(record_texts).await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    proxy.set_fault(Fault::retry_after(429, 3));
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config(Duration::from_millis(100)))
        .build()
        .unwrap();
    let mut events = client.events();

    let started = Instant::now();
    let error = support::next_disconnect(&mut events).await;
    proxy.set_fault(Fault::PassThrough);
    wait_open(&client).await;

    assert!(
        matches!(error, Error::Rejected { status: 429, retry_after: Some(wait) } if wait == Duration::from_secs(3))
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(3100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.stats().connections_accepted, 2);
}

#[tokio::test(start_paused = true)]
async fn a_503_without_hint_follows_the_schedule() {
    let server = Server::start(record_texts).await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    proxy.set_fault(Fault::status(503));
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config(Duration::from_millis(100)))
        .build()
        .unwrap();
    let mut state = client.state();

    state
        .wait_for(|state| matches!(state, State::Reconnecting { attempt: 3, .. }))
        .await
        .unwrap();

    assert!(matches!(
        client.current_state(),
        State::Reconnecting { delay, last_error: Error::Rejected { status: 503, .. }, .. }
            if delay == Duration::from_millis(200)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_reset_connection_is_replaced() {
    let mut server = Server::start(record_texts).await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config(Duration::from_millis(100)))
        .build()
        .unwrap();
    wait_open(&client).await;

    let mut events = client.events();

    proxy.set_fault_for_live(Fault::Reset);
    wait_not_open(&client).await;
    wait_open(&client).await;
    client.send("after").await.unwrap();

    assert_eq!(server.take(1).await, ["after"]);
    assert_eq!(proxy.stats().connections_accepted, 2);
    let dropped = support::next_disconnect(&mut events).await;
    assert!(matches!(dropped, Error::Dropped), "{dropped:?}");
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_after_a_while_is_replaced_and_a_stable_one_resets_the_count() {
    let server = Server::start(record_texts).await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    // Each connection lives 6 s, longer than the 5 s stability period.
    proxy.set_fault(Fault::CloseAfter(Duration::from_secs(6)));
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config(Duration::from_millis(100)))
        .build()
        .unwrap();
    let mut state = client.state();

    let mut attempts = Vec::new();
    for _ in 0..3 {
        state
            .wait_for(|state| matches!(state, State::Reconnecting { .. }))
            .await
            .unwrap();
        if let State::Reconnecting { attempt, delay, .. } = client.current_state() {
            attempts.push((attempt, delay));
        }
        wait_open(&client).await;
    }

    let first = (1, Duration::from_millis(100));
    assert_eq!(attempts, [first, first, first]);
}

#[tokio::test(start_paused = true)]
async fn the_request_builder_runs_for_every_attempt() {
    let mut server = Server::start(|accepted| async move {
        let record = accepted.record.clone();
        #[expect(
            clippy::result_large_err,
            reason = "the signature of tungstenite's server callback"
        )]
        let callback =
            move |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                let token = request
                    .headers()
                    .get("x-token")
                    .and_then(|v| v.to_str().ok());
                let _ = record.send(token.unwrap_or("none").to_owned());
                Ok(response)
            };
        let ws = tokio_tungstenite::accept_hdr_async(accepted.tcp, callback)
            .await
            .unwrap();
        drop(ws);
    })
    .await;
    let url = server.url();
    let issued = Arc::new(AtomicU32::new(0));
    let (_client, _incoming) = Client::builder(url.clone())
        .config(config(Duration::from_millis(100)))
        .request(move || {
            let mut request = url.as_str().into_client_request()?;
            let token = format!("token-{}", issued.fetch_add(1, Ordering::Relaxed));
            request.headers_mut().insert("x-token", token.parse()?);
            Ok(request)
        })
        .build()
        .unwrap();

    assert_eq!(server.take(3).await, ["token-0", "token-1", "token-2"]);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_request_builder_fails_the_attempt_and_the_client_retries() {
    let mut server = Server::start(record_texts).await;
    let url = server.url();
    let calls = Arc::new(AtomicU32::new(0));
    let (client, _incoming) = Client::builder(url.clone())
        .config(config(Duration::from_millis(100)))
        .request(move || {
            if calls.fetch_add(1, Ordering::Relaxed) == 0 {
                panic!("no token yet");
            }
            Ok(url.as_str().into_client_request()?)
        })
        .build()
        .unwrap();
    let mut events = client.events();

    let error = support::next_disconnect(&mut events).await;
    client.send("after the panic").await.unwrap();

    assert!(matches!(error, Error::Request(_)), "{error:?}");
    let cause = std::error::Error::source(&error).unwrap().to_string();
    assert_eq!(cause, "the request builder panicked: no token yet");
    assert_eq!(server.take(1).await, ["after the panic"]);
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_panics_before_returning_its_future_fails_only_that_attempt() {
    let mut server = Server::start(record_texts).await;
    let calls = Arc::new(AtomicU32::new(0));
    let (client, _incoming) = Client::builder(server.url())
        .config(config(Duration::from_millis(100)))
        .on_connect(move |hook| {
            assert_ne!(
                calls.fetch_add(1, Ordering::Relaxed),
                0,
                "first call panics"
            );
            async move {
                hook.send("subscribed")?;
                Ok(())
            }
        })
        .build()
        .unwrap();
    let mut events = client.events();

    let error = support::next_disconnect(&mut events).await;

    assert!(matches!(error, Error::Hook(_)), "{error}");
    assert_eq!(server.take(1).await, ["subscribed"]);
    assert!(client.current_state().is_open());
}

#[tokio::test(start_paused = true)]
async fn a_failing_hook_counts_as_a_failed_attempt() {
    let mut server = Server::start(record_texts).await;
    let calls = Arc::new(AtomicU32::new(0));
    let (client, _incoming) = Client::builder(server.url())
        .config(config(Duration::from_millis(100)))
        .on_connect(move |hook| {
            let call = calls.fetch_add(1, Ordering::Relaxed);
            async move {
                if call == 0 {
                    return Err(BoxError::from("resubscribe refused"));
                }
                hook.send("subscribed")?;
                Ok(())
            }
        })
        .build()
        .unwrap();
    let mut events = client.events();
    client.send("data").await.unwrap();

    let error = support::next_disconnect(&mut events).await;

    assert!(matches!(error, Error::Hook(_)), "{error}");
    assert_eq!(server.take(2).await, ["subscribed", "data"]);
    assert_eq!(server.accepts(), 2);
    assert_eq!(client.metrics().connects, 1);
}

#[tokio::test(start_paused = true)]
async fn the_connect_timeout_covers_the_upgrade() {
    let server = Server::start(|accepted| async move {
        let _held = accepted.tcp;
        std::future::pending::<()>().await;
    })
    .await;
    let config = Config {
        connect_timeout: Duration::from_secs(2),
        ..config(Duration::from_millis(100))
    };
    let (client, _incoming) = support::client_for(&server, config);
    let mut events = client.events();

    let started = Instant::now();
    let error = support::next_disconnect(&mut events).await;

    assert!(matches!(error, Error::ConnectTimeout(limit) if limit == Duration::from_secs(2)));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test]
async fn bad_settings_are_refused_at_build() {
    let no_scheme = Client::builder("http://127.0.0.1:1").build().unwrap_err();
    let zero = Client::builder("ws://127.0.0.1:1")
        .config(Config {
            inbound_capacity: 0,
            ..Config::default()
        })
        .build()
        .unwrap_err();

    let zero_bytes = Client::builder("ws://127.0.0.1:1")
        .config(Config {
            inbound_max_bytes: 0,
            ..Config::default()
        })
        .build()
        .unwrap_err();

    let bad_port = Client::builder("ws://127.0.0.1:99999/")
        .build()
        .unwrap_err();
    let zero_hook_timeout = Client::builder("ws://127.0.0.1:1")
        .config(Config {
            hook_timeout: Duration::ZERO,
            ..Config::default()
        })
        .build()
        .unwrap_err();

    assert!(no_scheme.to_string().contains("ws or wss"), "{no_scheme}");
    let buffers = Client::builder("ws://127.0.0.1:1")
        .config(Config {
            write_buffer_size: 1 << 20,
            max_write_buffer_size: 1 << 20,
            ..Config::default()
        })
        .build()
        .unwrap_err();

    assert!(bad_port.to_string().contains("99999"), "{bad_port}");
    assert!(matches!(buffers, BuildError::Conflict(_)), "{buffers}");
    assert_eq!(
        zero_hook_timeout.to_string(),
        "hook_timeout must be greater than zero"
    );
    assert_eq!(
        zero.to_string(),
        "inbound_capacity must be greater than zero"
    );
    assert_eq!(
        zero_bytes.to_string(),
        "inbound_max_bytes must be greater than zero"
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_close_while_the_client_writes_keeps_its_close_code() {
    // The server reads three messages, then closes with 1008 while more are arriving.
    let server = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        let mut seen = 0;
        while let Some(Ok(frame)) = ws.next().await {
            if frame.is_text() {
                seen += 1;
                if seen == 3 {
                    break;
                }
            }
        }
        support::close_with_frame(&mut ws, 1008).await;
    })
    .await;
    let (client, _incoming) = support::client_for(&server, config(Duration::from_millis(100)));
    wait_open(&client).await;

    for n in 0..200 {
        let _ = client.send(format!("message {n}")).await;
        tokio::task::yield_now().await;
    }
    let reason = client.closed().await;

    assert_eq!(
        reason.error().and_then(Error::close_code),
        Some(1008),
        "{reason:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_time_limit_ends_a_run_of_failures() {
    let proxy = FaultProxy::start(support::dead_address().await)
        .await
        .unwrap();
    let mut config = config(Duration::from_millis(100));
    config.backoff = config.backoff.max_elapsed(Duration::from_secs(1));
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config)
        .build()
        .unwrap();
    let started = Instant::now();

    let reason = client.closed().await;

    // Waits of 100, 200 and 400 ms fit in the second; the next one (800 ms) would not.
    let error = reason.error().expect("gave up");
    assert!(
        matches!(
            error,
            Error::GaveUp {
                attempts: 4,
                quick_drops: false,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(started.elapsed(), Duration::from_millis(700));
    assert_eq!(proxy.stats().connections_accepted, 4);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_longer_than_allowed_stops_with_what_the_server_asked() {
    let proxy = FaultProxy::start(support::dead_address().await)
        .await
        .unwrap();
    proxy.set_fault(Fault::retry_after(503, 600));
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config(Duration::from_millis(100)))
        .build()
        .unwrap();

    let reason = client.closed().await;

    let error = reason.error().expect("stopped");
    assert!(
        matches!(error, Error::RetryAfterTooLong { requested, .. } if *requested == Duration::from_secs(600)),
        "{error}"
    );
    assert_eq!(proxy.stats().connections_accepted, 1);
}

#[tokio::test(start_paused = true)]
async fn try_again_later_waits_at_least_five_seconds() {
    let server = Server::start(|accepted| async move {
        if accepted.index == 0 {
            support::close_with(accepted.tcp, 1013).await;
        } else {
            record_texts(accepted).await;
        }
    })
    .await;
    let (client, _incoming) = support::client_for(&server, config(Duration::from_millis(100)));
    server.wait_for_accepts(2).await;
    wait_open(&client).await;

    let times = server.accept_times();
    assert_eq!(times[1] - times[0], Duration::from_secs(5));
}

#[tokio::test(start_paused = true)]
async fn huge_timer_settings_mean_never_rather_than_a_crash() {
    let mut server = Server::start(record_texts).await;
    for config in [
        Config {
            ping_interval: Some(Duration::MAX),
            ..config(Duration::from_millis(100))
        },
        Config {
            ping_interval: Some(Duration::from_secs(1)),
            pong_timeout: Duration::MAX,
            ..config(Duration::from_millis(100))
        },
    ] {
        let (client, _incoming) = support::client_for(&server, config);
        wait_open(&client).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        client.send("still here").await.unwrap();

        assert_eq!(server.take(1).await, ["still here"]);
        assert!(client.current_state().is_open());
        client.close().await;
    }
}

#[tokio::test(start_paused = true)]
async fn the_hook_cannot_send_a_message_over_the_size_limit() {
    let server = Server::start(record_texts).await;
    let (hook_result_tx, mut hook_result) = tokio::sync::mpsc::unbounded_channel();
    let (client, _incoming) = Client::builder(server.url())
        .config(Config {
            max_message_size: 1024,
            ..config(Duration::from_millis(100))
        })
        .on_connect(move |hook| {
            let results = hook_result_tx.clone();
            async move {
                let _ = results.send(hook.send(vec![0u8; 4096]));
                Ok(())
            }
        })
        .build()
        .unwrap();
    wait_open(&client).await;

    let refused = hook_result.recv().await.unwrap().unwrap_err();
    assert!(
        matches!(
            refused,
            SendError::TooLarge {
                size: 4096,
                limit: 1024,
                ..
            }
        ),
        "{refused:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(server.accepts(), 1, "the connection was not failed by it");
}

#[tokio::test(start_paused = true)]
async fn text_that_is_not_utf8_is_answered_with_1007_and_stops_the_client() {
    let (codes_tx, mut codes) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::start(move |accepted| {
        let codes = codes_tx.clone();
        async move {
            let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
            let broken = Frame::Frame(
                tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
                    vec![0xff, 0xfe],
                    OpCode::Data(Data::Text),
                    true,
                ),
            );
            ws.send(broken).await.unwrap();
            while let Some(Ok(frame)) = ws.next().await {
                if let Frame::Close(Some(close)) = frame {
                    let _ = codes.send(u16::from(close.code));
                }
            }
        }
    })
    .await;
    let (client, _incoming) = support::client_for(&server, config(Duration::from_millis(100)));

    let reason = client.closed().await;

    assert_eq!(codes.recv().await, Some(1007));
    let error = reason.error().expect("a terminal error");
    assert_eq!(error.violation_code(), Some(1007), "{error:?}");
    assert_eq!(server.accepts(), 1);
}
