//! A reconnecting WebSocket client with `steadfast::ws_resilient`, against a local echo
//! server that restarts every connection after three messages.
//!
//! Run with `cargo run --example ws_client`.

use std::time::Duration;

use axum::Router;
use axum::extract::ws::{CloseFrame, Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use steadfast::ws_resilient::{Backoff, Client, Config, Event, Incoming, Jitter};

/// Echoes three text messages, then closes with 1012 (service restart).
async fn echo_three(mut socket: WebSocket) {
    let mut echoed = 0;
    while let Some(Ok(message)) = socket.recv().await {
        if let AxumMessage::Text(text) = message {
            if socket.send(AxumMessage::Text(text)).await.is_err() {
                return;
            }
            echoed += 1;
            if echoed == 3 {
                let frame = CloseFrame {
                    code: 1012,
                    reason: "restarting".into(),
                };
                let _ = socket.send(AxumMessage::Close(Some(frame))).await;
                return;
            }
        }
    }
}

async fn upgrade(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(echo_three)
}

/// Waits up to a second for the echo of `text`, printing whatever arrives.
async fn echoed(incoming: &mut Incoming, text: &str) -> bool {
    let wait = async {
        while let Some(message) = incoming.recv().await {
            let echo = message.as_text().unwrap_or("<binary>");
            println!("echo: {echo}");
            if echo == text {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(1), wait)
        .await
        .unwrap_or(false)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws", listener.local_addr()?);
    tokio::spawn(
        async move { axum::serve(listener, Router::new().route("/ws", get(upgrade))).await },
    );

    let config = Config {
        backoff: Backoff::exponential(Duration::from_millis(100))
            .jitter(Jitter::Equal)
            .unlimited_attempts(),
        stable_after: Duration::from_secs(1),
        ..Config::default()
    };
    let (client, mut incoming) = Client::builder(url)
        .config(config)
        .on_connect(|hook| async move {
            hook.send("hello")?;
            Ok(())
        })
        .build()?;

    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Event::Connected { attempt } => println!("connected (attempt {attempt})"),
                Event::Disconnected { error } => println!("disconnected: {error}"),
                Event::Reconnecting { attempt, delay } => {
                    println!("reconnecting: attempt {attempt} in {delay:?}");
                }
                _ => {}
            }
        }
    });

    // Delivery is at most once: a message written just as the server closes is lost (and
    // reported as such), so this application resends what was not echoed in time.
    for n in 1..=6 {
        let text = format!("message {n}");
        loop {
            client.send(text.as_str()).await?;
            if echoed(&mut incoming, &text).await {
                break;
            }
            println!("no echo of {text:?}; sending it again");
        }
    }
    let unsent = client.close().await;
    println!(
        "closed; {} messages never sent; {:?}",
        unsent.len(),
        client.metrics()
    );
    Ok(())
}
