//! A WebSocket client that stays connected: it reconnects with jittered backoff, notices a
//! dead peer by its own pings, buffers what the application sends while offline, and stops
//! for good when the server says so.
//!
//! Built on tokio-tungstenite, which does the upgrade, the close handshake and every
//! unusual frame; the client frames and reads the common ones itself. One task owns the
//! socket; the application talks to it through a [`Client`] handle (send, state, events,
//! close) and an [`Incoming`] receiver.
//!
//! - **Reconnects** follow a [`steadfast_backoff::Backoff`] policy (jitter on by default).
//!   The attempt counter starts again only after a connection stayed up for
//!   [`Config::stable_after`], so a server that accepts and then kicks the client at once
//!   still meets the backoff and the attempt limit. A `Retry-After` on a `429`/`503`
//!   upgrade answer is honoured.
//! - **Rules** ([`Rules`]) decide per close code and handshake status whether to retry,
//!   retry later or stop: by default 1008, 4000–4999, 401 and 403 stop.
//! - **Liveness**: a ping every [`Config::ping_interval`]; if nothing at all arrives within
//!   [`Config::pong_timeout`] after it, the connection is declared dead and replaced. The
//!   server's pings are answered by the task whether or not the application reads.
//! - **Sending** goes through a buffer bounded in messages and bytes with an explicit
//!   [`Overflow`] policy; [`Client::send`] says what happened ([`Sent`] or a
//!   [`SendError`] holding the message). Buffered messages go out in order, after the
//!   on-connect hook has succeeded.
//! - **Closing** with [`Client::close`] or a `CancellationToken` is final and idempotent.
//!
//! ```
//! use std::time::Duration;
//!
//! use steadfast_ws_resilient::{Client, Config, Message};
//! use tokio::net::TcpListener;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A loopback echo server.
//! let listener = TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("ws://{}", listener.local_addr()?);
//! tokio::spawn(async move {
//!     use futures_util::{SinkExt, StreamExt};
//!     while let Ok((tcp, _)) = listener.accept().await {
//!         tokio::spawn(async move {
//!             let mut ws = tokio_tungstenite::accept_async(tcp).await?;
//!             while let Some(Ok(message)) = ws.next().await {
//!                 if message.is_text() {
//!                     ws.send(message).await?;
//!                 }
//!             }
//!             Ok::<_, tokio_tungstenite::tungstenite::Error>(())
//!         });
//!     }
//! });
//!
//! let config = Config { ping_interval: Some(Duration::from_secs(5)), ..Config::default() };
//! let (client, mut incoming) = Client::builder(url)
//!     .config(config)
//!     .on_connect(|hook| async move {
//!         hook.send("subscribe")?;
//!         Ok(())
//!     })
//!     .build()?;
//!
//! // Sent before the connection is even open: it waits in the buffer, after the hook.
//! client.send("hello").await?;
//! assert_eq!(incoming.recv().await, Some(Message::text("subscribe")));
//! assert_eq!(incoming.recv().await, Some(Message::text("hello")));
//!
//! let unsent = client.close().await;
//! assert!(unsent.is_empty());
//! assert!(client.send("late").await.is_err());
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `json`: [`JsonIncoming`] and [`Client::send_json`], typed messages through serde.
//! - `rustls`: `wss://` URLs, through rustls and the webpki roots.

mod blocks;
mod client;
mod config;
mod error;
mod inbox;
#[cfg(feature = "json")]
mod json;
mod link;
mod message;
mod outbox;
mod state;
mod task;
mod wire;

pub use client::{Builder, Client, HookSender, Incoming, Request};
pub use config::{Action, BufferConfig, Config, Overflow, Rules};
pub use error::{BoxError, BuildError, CloseReason, Error, SendError};
#[cfg(feature = "json")]
pub use json::{JsonIncoming, JsonSendError};
pub use message::{Message, Utf8Bytes};
pub use outbox::Sent;
/// The rustls version this crate uses, for [`Builder::tls`].
#[cfg(feature = "rustls")]
pub use rustls;
pub use state::{DiscardReason, Event, Events, Metrics, State};
pub use steadfast_backoff::{Backoff, CapMode, Jitter};
pub use tokio_tungstenite::tungstenite::client::IntoClientRequest;
pub use tokio_util::sync::CancellationToken;
