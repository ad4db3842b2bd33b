//! Test helpers shared by the steadfast crates: above all [`FaultProxy`], a loopback TCP
//! proxy that injects real network faults between a client under test and a server.
//!
//! Resilience code is only as good as the faults it has met. Mocks that return an error
//! value never show what a stalled socket, a reset in the middle of a frame or a server
//! answering `503` does to a real client, so the steadfast tests put a [`FaultProxy`]
//! between the client and a real loopback server and change its [`Fault`] while the test
//! runs: for connections still to come, for live ones, or both.
//!
//! Faults on offer: pass through, delay, cut after a number of bytes, black-hole (read and
//! forward nothing, in one direction or both), reset (RST), close after a time, answer a
//! given raw HTTP response instead of forwarding, and strip a named header from HTTP
//! requests. The proxy counts accepted connections and bytes in each direction, and can
//! drop every live connection at once.
//!
//! All waiting goes through `tokio::time`, so the proxy works under paused time.
//!
//! ```
//! use steadfast_testkit::{Fault, FaultProxy};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use tokio::net::TcpListener;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! // A server that answers every connection with "pong".
//! let server = TcpListener::bind("127.0.0.1:0").await?;
//! let target = server.local_addr()?;
//! tokio::spawn(async move {
//!     while let Ok((mut socket, _)) = server.accept().await {
//!         let _ = socket.write_all(b"pong").await;
//!     }
//! });
//!
//! let proxy = FaultProxy::start(target).await?;
//!
//! // Passing through, the client sees the server.
//! let mut client = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
//! let mut reply = [0; 4];
//! client.read_exact(&mut reply).await?;
//! assert_eq!(&reply, b"pong");
//!
//! // Answering 503 instead, the server is never reached.
//! proxy.set_fault(Fault::status(503));
//! let mut client = tokio::net::TcpStream::connect(proxy.local_addr()).await?;
//! client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await?;
//! let mut answer = String::new();
//! client.read_to_string(&mut answer).await?;
//! assert!(answer.starts_with("HTTP/1.1 503"));
//! assert_eq!(proxy.stats().connections_accepted, 2);
//! # Ok(())
//! # }
//! ```

mod fault;
mod proxy;
mod strip;

pub use fault::{Direction, Fault, RawResponse};
pub use proxy::{FaultProxy, ProxyStats};

/// Installs a `tracing` subscriber that writes through the test harness's capture, filtered
/// by `RUST_LOG` (nothing by default), so a failing test can be rerun with logs.
///
/// Calling it more than once, from many tests in one binary, is fine: only the first call
/// installs anything.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off"));

    // Another test may have installed it already; that is the expected case, not an error.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
