//! The outbound buffer: bounded, loud when full, replayed in order after the hook.

mod support;

use std::time::Duration;

use steadfast_testkit::FaultProxy;
use steadfast_ws_resilient::{
    BufferConfig, Client, Config, DiscardReason, Event, Message, Overflow, SendError, Sent,
};
use support::{Server, config, dead_address, record_texts, wait_open};

/// At most 3 messages and 64 KiB, as in the case, with the given policy.
fn buffer_config(overflow: Overflow) -> Config {
    Config {
        buffer: BufferConfig {
            max_messages: 3,
            max_bytes: 64 << 10,
            overflow,
            max_age: Some(Duration::from_secs(10)),
        },
        ..config(Duration::from_millis(100))
    }
}

/// A client behind a proxy that points nowhere yet; `proxy.set_target` brings the server.
async fn offline_client(overflow: Overflow) -> (Client, FaultProxy) {
    let proxy = FaultProxy::start(dead_address().await).await.unwrap();
    let (client, _incoming) = Client::builder(format!("ws://{}", proxy.local_addr()))
        .config(buffer_config(overflow))
        .on_connect(|hook| async move {
            // Resubscribing takes a moment; buffered messages must wait for it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            hook.send("subscribe")?;
            Ok(())
        })
        .build()
        .unwrap();
    (client, proxy)
}

#[tokio::test(start_paused = true)]
async fn ws_05_reject_policy_gives_messages_back_when_full() {
    let (client, _proxy) = offline_client(Overflow::Reject).await;

    let mut results = Vec::new();
    for n in 1..=5 {
        results.push(client.send(n.to_string()).await);
    }

    for result in &results[..3] {
        assert_eq!(result.as_ref().unwrap(), &Sent::Queued);
    }
    for (n, result) in [(4, &results[3]), (5, &results[4])] {
        match result {
            Err(SendError::BufferFull(message)) => {
                assert_eq!(message, &Message::text(n.to_string()))
            }
            other => panic!("send {n}: {other:?}"),
        }
    }
    assert_eq!(client.buffered(), (3, 3));
}

#[tokio::test(start_paused = true)]
async fn ws_05_drop_oldest_reports_each_drop_and_replays_the_rest_in_order_after_the_hook() {
    let (client, proxy) = offline_client(Overflow::DropOldest).await;
    let mut events = client.events();

    let mut results = Vec::new();
    for n in 1..=5 {
        results.push(client.send(n.to_string()).await.unwrap());
    }

    assert_eq!(results[..3], [Sent::Queued, Sent::Queued, Sent::Queued]);
    assert_eq!(results[3], Sent::QueuedDropping(vec![Message::text("1")]));
    assert_eq!(results[4], Sent::QueuedDropping(vec![Message::text("2")]));
    assert_eq!(client.metrics().dropped_oldest, 2);

    let mut server = Server::start(record_texts).await;
    proxy.set_target(server.addr);
    assert_eq!(server.take(4).await, ["subscribe", "3", "4", "5"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.records.try_recv().is_err(), "each message once");
    let mut discarded = 0;
    while let Some(event) = events.try_next() {
        if let Event::Discarded {
            reason: DiscardReason::DroppedOldest,
            count,
        } = event
        {
            discarded += count;
        }
    }
    assert_eq!(discarded, 2);
}

#[tokio::test(start_paused = true)]
async fn ws_05_stale_and_unreplayable_messages_are_never_sent() {
    let (client, proxy) = offline_client(Overflow::Reject).await;

    client.send("old").await.unwrap();
    let refused = client.send_no_replay("unsubscribe").await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(11)).await;
    client.send("fresh").await.unwrap();
    let mut server = Server::start(record_texts).await;
    proxy.set_target(server.addr);

    assert!(matches!(refused, SendError::NotConnected(_)));
    assert_eq!(server.take(2).await, ["subscribe", "fresh"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(server.records.try_recv().is_err());
    assert_eq!(client.metrics().expired, 1);
}

#[tokio::test(start_paused = true)]
async fn ws_05_buffered_bytes_stay_bounded_while_the_socket_looks_open_but_nothing_moves() {
    // The server upgrades and then reads nothing: the connection looks open, the socket
    // fills up, and what the application sends must pile up in the bounded buffer only.
    let server = Server::start(|accepted| async move {
        let _ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let mut config = buffer_config(Overflow::DropOldest);
    config.buffer.max_messages = 1_000;
    config.ping_interval = None;
    let (client, _incoming) = support::client_for(&server, config);
    wait_open(&client).await;

    let mut most = 0;
    for _ in 0..10_000 {
        client.send(vec![7u8; 4096]).await.unwrap();
        most = most.max(client.buffered().1);
        // Let the client's task write what it can.
        tokio::task::yield_now().await;
    }

    assert!(most <= 64 << 10, "{most} bytes buffered");
    assert!(
        client.metrics().dropped_oldest > 0,
        "the socket did fill up"
    );
    assert!(
        client.current_state().is_open(),
        "the connection still looks open"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_sent_on_a_stalled_connection_vanishes_unreported() {
    // The first connection upgrades and then reads nothing, so the socket fills and
    // messages wait unwritten; the pong deadline ends it, and the next connection reads.
    let mut server = Server::start(|accepted| async move {
        if accepted.index > 0 {
            return record_texts(accepted).await;
        }
        let _ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let config = Config {
        buffer: BufferConfig {
            max_messages: 4_000,
            max_bytes: 64 << 20,
            overflow: Overflow::Reject,
            max_age: None,
        },
        ping_interval: Some(Duration::from_secs(1)),
        pong_timeout: Duration::from_secs(2),
        ..config(Duration::from_millis(100))
    };
    let (client, _incoming) = support::client_for(&server, config);
    wait_open(&client).await;

    let sent = 2_000u64;
    let padding = "x".repeat(16 << 10);
    // All at once, so the client takes them from its buffer in large batches and part of a
    // batch is still unwritten when the socket stops moving.
    for n in 0..sent {
        client.send(format!("{n:05}{padding}")).await.unwrap();
    }

    // Every message is either written to a socket or reported lost, and none twice.
    let accounted = async {
        loop {
            let metrics = client.metrics();
            if metrics.messages_sent + metrics.lost_in_flight >= sent {
                return metrics;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let metrics = tokio::time::timeout(Duration::from_secs(60), accounted)
        .await
        .expect("every message accounted for");
    assert_eq!(metrics.messages_sent + metrics.lost_in_flight, sent);
    assert!(server.accepts() >= 2, "the stalled connection was replaced");
    // Lost can only be what went into the dead connection since its last completed flush:
    // Linux's send buffer (4 MiB at most by default), the server's untouched receive window
    // (128 KiB) and the client's write queue (128 KiB). Messages taken from the buffer but
    // not yet written went back to it.
    let message = (16 << 10) + 5;
    assert!(
        metrics.lost_in_flight <= ((4 << 20) + (256 << 10)) / message + 1,
        "{} lost",
        metrics.lost_in_flight
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut numbers = Vec::new();
    while let Ok(text) = server.records.try_recv() {
        numbers.push(text[..5].parse::<u64>().unwrap());
    }
    assert!(!numbers.is_empty());
    assert!(
        numbers.windows(2).all(|pair| pair[0] < pair[1]),
        "in order, each once"
    );
}

#[tokio::test(start_paused = true)]
async fn wait_policy_holds_the_sender_until_there_is_room() {
    let (client, proxy) = offline_client(Overflow::Wait).await;
    for n in 1..=3 {
        client.send(n.to_string()).await.unwrap();
    }

    let waiting = tokio::spawn({
        let client = client.clone();
        async move { client.send("4").await }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    let mut server = Server::start(record_texts).await;
    proxy.set_target(server.addr);

    assert_eq!(waiting.await.unwrap().unwrap(), Sent::Queued);
    assert_eq!(server.take(5).await, ["subscribe", "1", "2", "3", "4"]);
}

#[tokio::test(start_paused = true)]
async fn drop_newest_reports_the_refused_message() {
    let (client, _proxy) = offline_client(Overflow::DropNewest).await;
    for n in 1..=3 {
        client.send(n.to_string()).await.unwrap();
    }

    let sent = client.send("4").await.unwrap();

    assert_eq!(sent, Sent::Dropped(Message::text("4")));
    assert_eq!(client.metrics().dropped_newest, 1);
}

#[tokio::test(start_paused = true)]
async fn close_hands_back_what_was_never_sent() {
    let (client, _proxy) = offline_client(Overflow::Reject).await;
    client.send("a").await.unwrap();
    client.send("b").await.unwrap();

    let unsent = client.close().await;

    assert_eq!(unsent, [Message::text("a"), Message::text("b")]);
}

#[tokio::test(start_paused = true)]
async fn a_message_above_the_size_limit_is_refused() {
    let (client, _proxy) = offline_client(Overflow::DropOldest).await;

    let error = client.send(vec![0u8; (64 << 10) + 1]).await.unwrap_err();

    assert!(matches!(
        error,
        SendError::TooLarge {
            size: 65537,
            limit: 65536,
            ..
        }
    ));
}
