//! Liveness: our pings find dead peers, the server's pings are answered.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use steadfast_testkit::{Direction, Fault, FaultProxy};
use steadfast_ws_resilient::{Backoff, Client, Config, Jitter};
use support::{Server, record_texts, wait_open};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Ping every second, pong deadline two seconds. The case wants a fresh connection by
/// t = 3 s, which is exactly when the dead one is declared, so reconnect without delay.
fn liveness_config() -> Config {
    Config {
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout: Duration::from_secs(2),
        backoff: Backoff::constant(Duration::ZERO)
            .jitter(Jitter::None)
            .unlimited_attempts(),
        ..Config::default()
    }
}

#[tokio::test(start_paused = true)]
async fn ws_01_half_open_connection_is_detected_by_the_clients_own_pings() {
    steadfast_testkit::init_tracing();
    let server = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        if accepted.index == 0 {
            // Silent: the socket stays open, nothing is read or written.
            std::future::pending::<()>().await;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let started = Instant::now();
    let (client, _incoming) = support::client_for(&server, liveness_config());
    let mut events = client.events();

    let error = support::next_disconnect(&mut events).await;
    server.wait_for_accepts(2).await;

    assert!(error.is_pong_timeout(), "{error}");
    assert!(
        started.elapsed() <= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    wait_open(&client).await;
    assert_eq!(client.metrics().connects, 2);
}

#[tokio::test(start_paused = true)]
async fn ws_01_black_holed_proxy_is_declared_dead_within_interval_plus_timeout() {
    let server = Server::start(record_texts).await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(liveness_config())
        .build()
        .unwrap();
    let mut events = client.events();
    wait_open(&client).await;

    proxy.set_fault_for_live(Fault::BlackHole(Direction::Both));
    let cut_at = Instant::now();
    let error = support::next_disconnect(&mut events).await;

    assert!(error.is_pong_timeout(), "{error}");
    assert!(
        cut_at.elapsed() <= Duration::from_secs(3),
        "{:?}",
        cut_at.elapsed()
    );
    wait_open(&client).await;
    assert_eq!(proxy.stats().connections_accepted, 2);
}

/// A server that pings every 100 ms and closes with 1011 when a pong is 300 ms late;
/// after 5 s it records its counts.
async fn pinging_server(accepted: support::Accepted) {
    let ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
    let (mut sink, mut stream) = ws.split();
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut outstanding = std::collections::VecDeque::new();
    let (mut pings, mut pongs) = (0, 0);

    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if outstanding.front().is_some_and(|sent: &Instant| sent.elapsed() > Duration::from_millis(300)) {
                    let frame = CloseFrame { code: CloseCode::Error, reason: "no pong".into() };
                    let _ = sink.send(Frame::Close(Some(frame))).await;
                    break;
                }
                if started.elapsed() >= Duration::from_secs(5) {
                    break;
                }
                sink.send(Frame::Ping(vec![1].into())).await.unwrap();
                outstanding.push_back(Instant::now());
                pings += 1;
            }
            frame = stream.next() => match frame {
                Some(Ok(Frame::Pong(_))) => {
                    outstanding.pop_front();
                    pongs += 1;
                }
                Some(Ok(_)) => {}
                _ => break,
            },
        }
    }
    let _ = accepted.record.send(format!("pings={pings} pongs={pongs}"));
    std::future::pending::<()>().await;
}

#[tokio::test(start_paused = true)]
async fn ws_02_pings_are_answered_while_the_application_awaits_messages() {
    let mut server = Server::start(pinging_server).await;
    let (client, mut incoming) = Client::builder(server.url()).build().unwrap();
    let reader = tokio::spawn(async move { incoming.recv().await });

    let counts = server.take(1).await;

    assert_eq!(counts, ["pings=50 pongs=50"]);
    assert_eq!(client.metrics().disconnects, 0);
    assert_eq!(server.accepts(), 1);
    assert!(!reader.is_finished(), "no message ever came");
}

#[tokio::test(start_paused = true)]
async fn ws_02_pings_are_answered_when_the_application_never_reads() {
    let mut server = Server::start(pinging_server).await;
    let (client, _incoming) = Client::builder(server.url()).build().unwrap();

    let counts = server.take(1).await;

    assert_eq!(counts, ["pings=50 pongs=50"]);
    assert_eq!(client.metrics().disconnects, 0);
    assert_eq!(server.accepts(), 1);
}

#[tokio::test(start_paused = true)]
async fn round_trip_time_is_measured_from_pongs() {
    let server = Server::start(record_texts).await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    proxy.set_fault(Fault::Delay(Duration::from_millis(40)));
    let config = Config {
        ping_interval: Some(Duration::from_secs(1)),
        ..Config::default()
    };
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(config)
        .build()
        .unwrap();
    wait_open(&client).await;
    assert_eq!(client.rtt(), None);

    tokio::time::sleep(Duration::from_millis(1500)).await;

    let rtt = client.rtt().expect("a pong came back");
    assert!(rtt >= Duration::from_millis(80), "{rtt:?}");
    assert!(rtt < Duration::from_millis(200), "{rtt:?}");
}
