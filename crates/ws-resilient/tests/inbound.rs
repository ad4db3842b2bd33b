//! Received data: bounded while the application does not read, and nothing lost.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use steadfast_ws_resilient::{Config, Message};
use support::{Server, client_for, wait_open};
use tokio_tungstenite::tungstenite::Message as Frame;

const MESSAGES: usize = 64;
const SIZE: usize = 64 << 10;
const LARGE: usize = 3 << 20;

/// Sends `MESSAGES` binary messages of `SIZE` bytes, one of `LARGE` bytes and a final
/// text, as fast as the client takes them, then stays connected.
async fn flood(accepted: support::Accepted) {
    let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
    for index in 0..MESSAGES {
        let payload = vec![index as u8; SIZE];
        ws.feed(Frame::Binary(payload.into())).await.unwrap();
    }
    ws.feed(Frame::Binary(vec![0xAB; LARGE].into()))
        .await
        .unwrap();
    ws.feed(Frame::text("done")).await.unwrap();
    ws.flush().await.unwrap();
    std::future::pending::<()>().await;
}

#[tokio::test(start_paused = true)]
async fn unread_messages_are_bounded_in_bytes_and_all_arrive_in_order_once_read() {
    let server = Server::start(flood).await;
    let config = Config {
        inbound_max_bytes: 256 << 10,
        ping_interval: None,
        max_frame_size: 4 << 20,
        ..Config::default()
    };
    let (client, mut incoming) = client_for(&server, config);
    wait_open(&client).await;

    // The client reads what it can while nobody reads from it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let received = client.metrics().messages_received;
    // 256 KiB in the queue, plus what one read burst gathered before the queue filled;
    // a bound in messages only (1024) would have let all of them in.
    assert!(
        (1..=16).contains(&received),
        "{received} messages taken from the socket while none was read"
    );

    for index in 0..MESSAGES {
        let message = incoming.recv().await.expect("a message");
        assert_eq!(message, Message::Binary(vec![index as u8; SIZE].into()));
    }
    let large = incoming.recv().await.expect("the large message");
    assert_eq!(large.len(), LARGE, "larger than the bound, still delivered");
    assert!(large.as_bytes().iter().all(|&byte| byte == 0xAB));
    assert_eq!(incoming.recv().await, Some(Message::text("done")));

    let metrics = client.metrics();
    assert_eq!(metrics.messages_received, MESSAGES as u64 + 2);
    assert_eq!(metrics.unread, 0);
    client.close().await;
}

#[tokio::test(start_paused = true)]
async fn data_held_back_by_the_byte_bound_is_still_delivered_when_the_client_closes() {
    const COUNT: usize = 64;
    let server = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        for index in 0..COUNT {
            let payload = vec![index as u8; 32 << 10];
            ws.feed(Frame::Binary(payload.into())).await.unwrap();
        }
        ws.flush().await.unwrap();
        // Reading answers the client's close.
        while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
    })
    .await;
    let config = Config {
        ping_interval: None,
        ..Config::default()
    };
    let (client, mut incoming) = client_for(&server, config);
    wait_open(&client).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    client.close().await;
    let mut received = Vec::new();
    while let Some(message) = incoming.recv().await {
        received.push(message);
    }

    assert_eq!(client.metrics().unread, 0);
    assert_eq!(
        received.len(),
        COUNT,
        "more than the 1 MiB bound was waiting"
    );
    for (index, message) in received.iter().enumerate() {
        assert_eq!(
            message,
            &Message::Binary(vec![index as u8; 32 << 10].into())
        );
    }
}
