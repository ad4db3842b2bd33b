//! The proxy's faults, each against a real loopback server.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use steadfast_testkit::{Direction, Fault, FaultProxy, RawResponse, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// An echo server that also reports every chunk it receives.
async fn echo_server() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let mut buffer = [0; 4096];
                while let Ok(read) = socket.read(&mut buffer).await {
                    if read == 0 {
                        break;
                    }
                    let _ = seen.send(buffer[..read].to_vec());
                    if socket.write_all(&buffer[..read]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen_rx)
}

async fn setup() -> (FaultProxy, mpsc::UnboundedReceiver<Vec<u8>>) {
    init_tracing();
    let (target, seen) = echo_server().await;
    (FaultProxy::start(target).await.unwrap(), seen)
}

#[tokio::test]
async fn pass_through_forwards_both_ways_and_counts_bytes() {
    let (proxy, _) = setup().await;
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    client.write_all(b"hello").await.unwrap();
    let mut reply = [0; 5];
    client.read_exact(&mut reply).await.unwrap();

    assert_eq!(&reply, b"hello");
    let stats = proxy.stats();
    assert_eq!(stats.connections_accepted, 1);
    assert_eq!(stats.live_connections, 1);
    assert_eq!(stats.bytes_to_target, 5);
    assert_eq!(stats.bytes_to_client, 5);
}

#[tokio::test]
async fn cut_after_forwards_that_many_bytes_then_closes() {
    let (proxy, mut seen) = setup().await;
    proxy.set_fault(Fault::CutAfter {
        direction: Direction::ToTarget,
        bytes: 4,
    });
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    client.write_all(b"0123456789").await.unwrap();
    let mut received = Vec::new();
    let _ = client.read_to_end(&mut received).await;

    assert_eq!(seen.recv().await.unwrap(), b"0123");
    assert!(
        received.len() <= 4,
        "at most the echo of the 4 bytes came back"
    );
}

#[tokio::test(start_paused = true)]
async fn black_hole_reads_but_forwards_nothing_either_way() {
    let (proxy, mut seen) = setup().await;
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    client.write_all(b"before").await.unwrap();
    let mut reply = [0; 6];
    client.read_exact(&mut reply).await.unwrap();
    assert_eq!(seen.recv().await.unwrap(), b"before");

    proxy.set_fault_for_live(Fault::BlackHole(Direction::Both));
    client.write_all(b"after").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(60), client.read(&mut reply)).await;

    assert!(waited.is_err(), "nothing comes back through a black hole");
    assert!(seen.try_recv().is_err(), "nothing reached the server");
    assert_eq!(
        proxy.stats().live_connections,
        1,
        "the connection is still open"
    );
}

#[tokio::test(start_paused = true)]
async fn black_hole_one_way_still_forwards_the_other() {
    let (proxy, mut seen) = setup().await;
    proxy.set_fault(Fault::BlackHole(Direction::ToClient));
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    client.write_all(b"ping").await.unwrap();
    let mut reply = [0; 4];
    let waited = tokio::time::timeout(Duration::from_secs(60), client.read(&mut reply)).await;

    assert_eq!(seen.recv().await.unwrap(), b"ping");
    assert!(waited.is_err(), "the echo was swallowed");
}

#[tokio::test]
async fn reset_on_accept_aborts_the_connection() {
    let (proxy, _) = setup().await;
    proxy.set_fault(Fault::Reset);
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    let mut buffer = [0; 1];
    let error = client.read(&mut buffer).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

#[tokio::test]
async fn reset_of_a_live_connection_aborts_it() {
    let (proxy, _) = setup().await;
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    client.write_all(b"x").await.unwrap();
    let mut buffer = [0; 1];
    client.read_exact(&mut buffer).await.unwrap();

    proxy.set_fault_for_live(Fault::Reset);
    let error = client.read(&mut buffer).await.unwrap_err();

    assert_eq!(error.kind(), ErrorKind::ConnectionReset);
}

#[tokio::test(start_paused = true)]
async fn close_after_ends_the_connection_on_time() {
    let (proxy, _) = setup().await;
    proxy.set_fault(Fault::CloseAfter(Duration::from_millis(500)));
    let started = Instant::now();
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    let mut buffer = [0; 1];
    let read = client.read(&mut buffer).await.unwrap();

    assert_eq!(read, 0, "a graceful end of stream");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_millis(600));
}

#[tokio::test(start_paused = true)]
async fn delay_holds_each_chunk() {
    let (proxy, _) = setup().await;
    proxy.set_fault(Fault::Delay(Duration::from_millis(200)));
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let started = Instant::now();

    client.write_all(b"slow").await.unwrap();
    let mut reply = [0; 4];
    client.read_exact(&mut reply).await.unwrap();

    assert_eq!(&reply, b"slow");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "delayed both ways"
    );
}

#[tokio::test]
async fn respond_answers_without_reaching_the_target() {
    let (proxy, mut seen) = setup().await;
    proxy.set_fault(Fault::retry_after(429, 3));
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    client
        .write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();

    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer}"
    );
    assert!(answer.contains("Retry-After: 3\r\n"), "{answer}");
    assert!(seen.try_recv().is_err());
    assert_eq!(proxy.stats().bytes_to_target, 0);
}

#[tokio::test]
async fn respond_sends_a_body_and_custom_headers() {
    let (proxy, _) = setup().await;
    proxy.set_fault(Fault::Respond(
        RawResponse::new(503).header("X-Why", "busy").body("later"),
    ));
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();

    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();

    assert!(answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"));
    assert!(answer.contains("X-Why: busy\r\n"));
    assert!(answer.ends_with("\r\n\r\nlater"));
}

#[tokio::test]
async fn strip_header_removes_it_from_requests_only() {
    let (proxy, mut seen) = setup().await;
    proxy.set_fault(Fault::StripHeader("Tus-Resumable".to_owned()));
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let request = b"HEAD /f HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n";

    client.write_all(request).await.unwrap();
    let expected = b"HEAD /f HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut arrived = Vec::new();
    while arrived.len() < expected.len() {
        arrived.extend(seen.recv().await.unwrap());
    }

    assert_eq!(arrived, expected);
}

#[tokio::test]
async fn drop_all_closes_live_connections_and_new_ones_still_work() {
    let (proxy, _) = setup().await;
    let mut first = TcpStream::connect(proxy.local_addr()).await.unwrap();
    proxy.wait_for_accepts(1).await;

    proxy.drop_all();
    let mut buffer = [0; 2];
    let read = first.read(&mut buffer).await.unwrap();
    let mut second = TcpStream::connect(proxy.local_addr()).await.unwrap();
    second.write_all(b"ok").await.unwrap();
    second.read_exact(&mut buffer).await.unwrap();

    assert_eq!(read, 0);
    assert_eq!(&buffer, b"ok");
    assert_eq!(proxy.stats().connections_accepted, 2);
}

#[tokio::test(start_paused = true)]
async fn a_fault_for_new_connections_leaves_live_ones_alone() {
    let (proxy, _) = setup().await;
    let mut live = TcpStream::connect(proxy.local_addr()).await.unwrap();
    proxy.wait_for_accepts(1).await;

    proxy.set_fault_for_new(Fault::BlackHole(Direction::Both));
    live.write_all(b"up").await.unwrap();
    let mut buffer = [0; 2];
    live.read_exact(&mut buffer).await.unwrap();
    let mut fresh = TcpStream::connect(proxy.local_addr()).await.unwrap();
    fresh.write_all(b"up").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(10), fresh.read(&mut buffer)).await;

    assert_eq!(&buffer, b"up");
    assert!(waited.is_err());
}

#[tokio::test]
async fn set_target_redirects_new_connections() {
    let (proxy, _) = setup().await;
    let (other, mut seen_other) = echo_server().await;

    proxy.set_target(other);
    let mut client = TcpStream::connect(proxy.local_addr()).await.unwrap();
    client.write_all(b"hi").await.unwrap();

    assert_eq!(seen_other.recv().await.unwrap(), b"hi");
}
