//! A scripted loopback server for the integration tests.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of the support"
)]

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use steadfast_ws_resilient::{
    Backoff, Client, Config, Error, Event, Events, Incoming, Jitter, State,
};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// One accepted TCP connection, handed to the test's script.
pub struct Accepted {
    /// 0 for the first connection, 1 for the next, ...
    pub index: usize,
    pub tcp: TcpStream,
    /// Whatever the script wants the test to see, in order.
    pub record: mpsc::UnboundedSender<String>,
}

/// A loopback server running a script per accepted connection.
pub struct Server {
    pub addr: SocketAddr,
    accepts: watch::Receiver<usize>,
    accept_times: Arc<Mutex<Vec<Instant>>>,
    pub records: mpsc::UnboundedReceiver<String>,
}

impl Server {
    pub async fn start<F, Fut>(script: F) -> Self
    where
        F: Fn(Accepted) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepts_tx, accepts) = watch::channel(0);
        let accept_times = Arc::new(Mutex::new(Vec::new()));
        let (record, records) = mpsc::unbounded_channel();
        let times = Arc::clone(&accept_times);
        tokio::spawn(async move {
            let mut index = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                times.lock().unwrap().push(Instant::now());
                accepts_tx.send_replace(index + 1);
                tokio::spawn(script(Accepted {
                    index,
                    tcp,
                    record: record.clone(),
                }));
                index += 1;
            }
        });
        Self {
            addr,
            accepts,
            accept_times,
            records,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn accepts(&self) -> usize {
        *self.accepts.borrow()
    }

    pub async fn wait_for_accepts(&self, count: usize) {
        let mut accepts = self.accepts.clone();
        accepts.wait_for(|accepts| *accepts >= count).await.unwrap();
    }

    pub fn accept_times(&self) -> Vec<Instant> {
        self.accept_times.lock().unwrap().clone()
    }

    /// The next `count` records.
    pub async fn take(&mut self, count: usize) -> Vec<String> {
        let mut taken = Vec::new();
        while taken.len() < count {
            taken.push(self.records.recv().await.unwrap());
        }
        taken
    }
}

/// Upgrades, then records every text message received until the peer goes away.
pub async fn record_texts(accepted: Accepted) {
    let mut ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
    while let Some(Ok(frame)) = ws.next().await {
        if let Frame::Text(text) = frame {
            let _ = accepted.record.send(text.to_string());
        }
    }
}

/// Upgrades, then closes at once with `code`.
pub async fn close_with(tcp: TcpStream, code: u16) -> WebSocketStream<TcpStream> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    };
    let _ = ws.send(Frame::Close(Some(frame))).await;
    // Let the close handshake finish.
    while let Some(Ok(_)) = ws.next().await {}
    ws
}

/// Sends a close frame with `code` on an open connection and finishes the handshake.
pub async fn close_with_frame(ws: &mut WebSocketStream<TcpStream>, code: u16) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    };
    let _ = ws.send(Frame::Close(Some(frame))).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// An address where nothing listens.
pub async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Settings most tests share: no jitter so waits are exact, quiet liveness.
pub fn config(initial: Duration) -> Config {
    Config {
        backoff: Backoff::exponential(initial)
            .max_delay(Duration::from_secs(5))
            .jitter(Jitter::None)
            .unlimited_attempts(),
        stable_after: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A client of `server` with `config`, and its receiver.
pub fn client_for(server: &Server, config: Config) -> (Client, Incoming) {
    Client::builder(server.url())
        .config(config)
        .build()
        .unwrap()
}

pub async fn wait_open(client: &Client) {
    let mut state = client.state();
    state.wait_for(State::is_open).await.unwrap();
}

pub async fn wait_not_open(client: &Client) {
    let mut state = client.state();
    state.wait_for(|state| !state.is_open()).await.unwrap();
}

/// For servers that write their own bytes: reads the upgrade request and returns the
/// answer that accepts it, its head's lines ended by `line_end`; `None` if the client went
/// away first.
pub async fn upgrade_answer(tcp: &mut TcpStream, line_end: &str) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    while !request.ends_with(b"\r\n\r\n") {
        request.push(tcp.read_u8().await.ok()?);
    }
    let request = String::from_utf8(request).ok()?;
    let key = request.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    let accept = derive_accept_key(key.as_bytes());
    let head = [
        "HTTP/1.1 101 Switching Protocols",
        "Upgrade: websocket",
        "Connection: Upgrade",
        &format!("Sec-WebSocket-Accept: {accept}"),
        "",
        "",
    ];
    Some(head.join(line_end).into_bytes())
}

/// The error of the next disconnect; a stream that ends first (the client closed) fails
/// the test rather than leaving it waiting.
pub async fn next_disconnect(events: &mut Events) -> Error {
    loop {
        match events.next().await {
            Some(Event::Disconnected { error }) => return error,
            Some(_) => {}
            None => panic!("the client closed before it disconnected"),
        }
    }
}
