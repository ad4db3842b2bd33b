//! The typed JSON layer.

#![cfg(feature = "json")]

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use steadfast_ws_resilient::Event;
use support::{Server, config};
use tokio_tungstenite::tungstenite::Message as Frame;

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Tick {
    n: u32,
}

#[tokio::test(start_paused = true)]
async fn a_message_that_does_not_parse_is_reported_and_the_connection_goes_on() {
    let mut server = Server::start(|accepted| async move {
        let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
        for text in [r#"{"n":1}"#, "not json", r#"{"n":2}"#] {
            ws.send(Frame::text(text)).await.unwrap();
        }
        while let Some(Ok(frame)) = ws.next().await {
            if let Frame::Text(text) = frame {
                let _ = accepted.record.send(text.to_string());
            }
        }
    })
    .await;
    let (client, incoming) = support::client_for(&server, config(Duration::from_millis(100)));
    let mut events = client.events();
    let mut ticks = incoming.json::<Tick>();

    let first = ticks.recv().await;
    let second = ticks.recv().await;
    client.send_json(&Tick { n: 3 }).await.unwrap();

    assert_eq!(first, Some(Tick { n: 1 }));
    assert_eq!(second, Some(Tick { n: 2 }));
    assert_eq!(client.metrics().parse_failures, 1);
    assert_eq!(server.take(1).await, [r#"{"n":3}"#]);
    assert!(client.current_state().is_open());
    let failed = loop {
        match events.try_next() {
            Some(Event::ParseFailed { message, .. }) => break message,
            Some(_) => {}
            None => panic!("no parse failure event"),
        }
    };
    assert_eq!(failed.as_text(), Some("not json"));
}
