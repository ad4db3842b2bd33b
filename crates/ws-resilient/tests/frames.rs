//! Frames as the server lays them on the wire: sent along with the upgrade answer, split
//! across reads, fragmented around a ping, or malformed. The client reads the common frames
//! itself and leaves the rest to tungstenite; these check that the two never disagree about
//! where a frame starts.

mod support;

use std::time::Duration;

use steadfast_ws_resilient::{Client, Config, Error, Message};
use support::{Accepted, Server, config, wait_open};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const CLOSE: u8 = 0x8;

/// A server frame, unmasked, with the FIN bit as given.
fn frame(opcode: u8, is_final: bool, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![if is_final { 0x80 } else { 0 } | opcode];
    match payload.len() {
        length @ 0..=125 => bytes.push(length as u8),
        length @ 126..=0xFFFF => {
            bytes.push(126);
            bytes.extend((length as u16).to_be_bytes());
        }
        length => {
            bytes.push(127);
            bytes.extend((length as u64).to_be_bytes());
        }
    }
    bytes.extend(payload);
    bytes
}

/// A server close frame with `code`.
fn close_frame(code: u16) -> Vec<u8> {
    frame(CLOSE, true, &code.to_be_bytes())
}

/// Reads the upgrade request and returns the answer that accepts it, byte for byte.
async fn upgrade_answer(tcp: &mut TcpStream) -> Vec<u8> {
    upgrade_answer_with(tcp, "\r\n").await
}

/// The same, with `line_end` ending each line of the answer's head.
async fn upgrade_answer_with(tcp: &mut TcpStream, line_end: &str) -> Vec<u8> {
    support::upgrade_answer(tcp, line_end)
        .await
        .expect("an upgrade request")
}

/// A server that answers the upgrade with lines ended by `line_end`, sends `frames` in
/// the same write, and then waits.
async fn answer_then(line_end: &'static str, frames: Vec<u8>) -> Server {
    Server::start(move |mut accepted: Accepted| {
        let frames = frames.clone();
        async move {
            let mut bytes = upgrade_answer_with(&mut accepted.tcp, line_end).await;
            bytes.extend(frames);
            accepted.tcp.write_all(&bytes).await.unwrap();
            std::future::pending::<()>().await;
        }
    })
    .await
}

/// Reads one client frame and returns its opcode and unmasked payload.
async fn read_client_frame(tcp: &mut TcpStream) -> (u8, Vec<u8>) {
    let first = tcp.read_u8().await.unwrap();
    let second = tcp.read_u8().await.unwrap();
    assert_ne!(second & 0x80, 0, "a client frame is masked");
    let length = match second & 0x7F {
        126 => u64::from(tcp.read_u16().await.unwrap()),
        127 => tcp.read_u64().await.unwrap(),
        short => u64::from(short),
    };
    let mut mask = [0; 4];
    tcp.read_exact(&mut mask).await.unwrap();
    let mut payload = vec![0; length as usize];
    tcp.read_exact(&mut payload).await.unwrap();
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
    (first & 0x0F, payload)
}

async fn receive(incoming: &mut steadfast_ws_resilient::Incoming, count: usize) -> Vec<Message> {
    let mut messages = Vec::new();
    while messages.len() < count {
        let message = tokio::time::timeout(Duration::from_secs(10), incoming.recv())
            .await
            .expect("the messages arrive")
            .expect("the client is open");
        messages.push(message);
    }
    messages
}

fn client(server: &Server) -> (Client, steadfast_ws_resilient::Incoming) {
    support::client_for(server, config(Duration::from_millis(100)))
}

/// Settings without pings, so only the server's behaviour can end a connection.
fn quiet() -> Config {
    Config {
        ping_interval: None,
        ..config(Duration::from_millis(100))
    }
}

#[tokio::test(start_paused = true)]
async fn frames_sent_with_the_upgrade_answer_are_all_received() {
    let mut frames = frame(TEXT, true, b"first");
    frames.extend(frame(BINARY, true, &[1, 2, 3]));
    frames.extend(frame(TEXT, true, b"third"));
    // One write: the frames arrive in the same segment as the answer.
    let server = answer_then("\r\n", frames).await;
    let (_client, mut incoming) = client(&server);

    let messages = receive(&mut incoming, 3).await;

    assert_eq!(
        messages,
        [
            Message::text("first"),
            Message::binary(vec![1, 2, 3]),
            Message::text("third")
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn frames_trickling_in_a_byte_at_a_time_arrive_whole() {
    let large: Vec<u8> = (0..70_000u32).map(|n| n as u8).collect();
    let medium = "m".repeat(300);
    let mut frames = Vec::new();
    frames.extend(frame(TEXT, true, b"small"));
    frames.extend(frame(TEXT, true, medium.as_bytes()));
    frames.extend(frame(BINARY, true, &large));
    frames.extend(frame(BINARY, true, b""));
    frames.extend(frame(TEXT, true, b"last"));
    let script_frames = frames.clone();
    let server = Server::start(move |mut accepted: Accepted| {
        let frames = script_frames.clone();
        async move {
            let answer = upgrade_answer(&mut accepted.tcp).await;
            accepted.tcp.set_nodelay(true).unwrap();
            accepted.tcp.write_all(&answer).await.unwrap();
            // Headers and payloads split at every possible point, then the large one in
            // uneven pieces.
            let (head, tail) = frames.split_at(2 + 5 + 4 + 300);
            for byte in head {
                accepted.tcp.write_all(&[*byte]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for piece in tail.chunks(7_777) {
                accepted.tcp.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            std::future::pending::<()>().await;
        }
    })
    .await;
    let (_client, mut incoming) = client(&server);

    let messages = receive(&mut incoming, 5).await;

    assert_eq!(
        messages,
        [
            Message::text("small"),
            Message::text(medium),
            Message::binary(large),
            Message::binary(Vec::new()),
            Message::text("last"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_fragmented_message_with_a_ping_inside_arrives_whole_and_in_order() {
    let server = Server::start(|mut accepted: Accepted| async move {
        let mut bytes = upgrade_answer(&mut accepted.tcp).await;
        bytes.extend(frame(TEXT, true, b"before"));
        bytes.extend(frame(TEXT, false, b"hel"));
        bytes.extend(frame(PING, true, b"p"));
        bytes.extend(frame(CONTINUATION, false, b"lo, "));
        bytes.extend(frame(CONTINUATION, true, b"world"));
        bytes.extend(frame(BINARY, false, &[1]));
        bytes.extend(frame(CONTINUATION, true, &[2]));
        bytes.extend(frame(TEXT, true, b"after"));
        accepted.tcp.write_all(&bytes).await.unwrap();

        let (opcode, payload) = read_client_frame(&mut accepted.tcp).await;
        let _ = accepted
            .record
            .send(format!("opcode={opcode:#x} payload={payload:?}"));
        std::future::pending::<()>().await;
    })
    .await;
    let (_client, mut incoming) = client(&server);
    let mut server = server;

    let messages = receive(&mut incoming, 4).await;
    let answered = server.take(1).await;

    assert_eq!(
        messages,
        [
            Message::text("before"),
            Message::text("hello, world"),
            Message::binary(vec![1, 2]),
            Message::text("after"),
        ]
    );
    assert_eq!(answered, [format!("opcode={PONG:#x} payload=[112]")]);
}

#[tokio::test(start_paused = true)]
async fn a_masked_frame_from_the_server_is_a_protocol_violation() {
    let server = Server::start(|mut accepted: Accepted| async move {
        let mut bytes = upgrade_answer(&mut accepted.tcp).await;
        bytes.extend(frame(TEXT, true, b"fine"));
        // Servers must not mask: the same text frame with a mask bit and a zero key.
        bytes.extend([0x81, 0x80 | 4, 0, 0, 0, 0]);
        bytes.extend(b"bad!");
        accepted.tcp.write_all(&bytes).await.unwrap();

        let (opcode, payload) = read_client_frame(&mut accepted.tcp).await;
        let code = u16::from_be_bytes([payload[0], payload[1]]);
        let _ = accepted
            .record
            .send(format!("opcode={opcode:#x} code={code}"));
        std::future::pending::<()>().await;
    })
    .await;
    let (client, mut incoming) = client(&server);
    let mut server = server;

    let messages = receive(&mut incoming, 1).await;
    let refused = server.take(1).await;
    let reason = client.closed().await;

    assert_eq!(messages, [Message::text("fine")]);
    assert_eq!(refused, ["opcode=0x8 code=1002"]);
    let error = reason.error().expect("a terminal error");
    assert_eq!(error.violation_code(), Some(1002), "{error:?}");
}

#[tokio::test(start_paused = true)]
async fn a_data_frame_inside_a_fragmented_message_is_a_protocol_violation() {
    let mut frames = frame(TEXT, false, b"start");
    // A new message before the fragmented one ended.
    frames.extend(frame(TEXT, true, b"intruder"));
    let server = answer_then("\r\n", frames).await;
    let (client, mut incoming) = client(&server);

    let reason = client.closed().await;

    let error = reason.error().expect("a terminal error");
    assert_eq!(error.violation_code(), Some(1002), "{error:?}");
    assert!(
        tokio::time::timeout(Duration::from_secs(1), incoming.recv())
            .await
            .unwrap()
            .is_none(),
        "neither part was delivered"
    );
}

#[tokio::test(start_paused = true)]
async fn an_upgrade_answer_with_bare_line_feeds_keeps_the_frames_after_it() {
    let mut frames = frame(TEXT, true, b"one");
    frames.extend(frame(BINARY, true, &[9; 200]));
    let server = answer_then("\n", frames).await;
    let (_client, mut incoming) = client(&server);

    let messages = receive(&mut incoming, 2).await;

    assert_eq!(
        messages,
        [Message::text("one"), Message::binary(vec![9; 200])]
    );
}

/// A server that sends its close and then keeps the TCP connection open.
async fn close_and_linger(mut accepted: Accepted) {
    let mut bytes = upgrade_answer(&mut accepted.tcp).await;
    bytes.extend(close_frame(4000));
    accepted.tcp.write_all(&bytes).await.unwrap();
    let (opcode, payload) = read_client_frame(&mut accepted.tcp).await;
    let _ = accepted
        .record
        .send(format!("opcode={opcode:#x} payload={payload:?}"));
    std::future::pending::<()>().await;
}

#[tokio::test(start_paused = true)]
async fn a_server_that_closes_but_keeps_the_connection_is_left_with_its_code() {
    for ping_interval in [Some(Duration::from_secs(1)), None] {
        let mut server = Server::start(close_and_linger).await;
        let config = Config {
            ping_interval,
            close_timeout: Duration::from_secs(3),
            ..config(Duration::from_millis(100))
        };
        let (client, _incoming) = support::client_for(&server, config);
        let started = tokio::time::Instant::now();

        let reason = tokio::time::timeout(Duration::from_secs(60), client.closed())
            .await
            .expect("the client lets go");

        // The close was answered, and after close_timeout the client let go with the
        // server's code (4000: stop), never mistaking the silence for a dead peer.
        let answer = server.take(1).await;
        assert_eq!(answer, [format!("opcode={CLOSE:#x} payload=[15, 160]")]);
        let error = reason.error().expect("a terminal error");
        assert!(
            matches!(error, Error::Closed { code: 4000, .. }),
            "{ping_interval:?}: {error:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{ping_interval:?}"
        );
        assert_eq!(server.accepts(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn data_the_server_sends_before_answering_the_clients_close_is_delivered() {
    let server = Server::start(|mut accepted: Accepted| async move {
        let answer = upgrade_answer(&mut accepted.tcp).await;
        accepted.tcp.write_all(&answer).await.unwrap();
        while read_client_frame(&mut accepted.tcp).await.0 != CLOSE {}
        let mut bytes = frame(TEXT, true, b"in flight 1");
        bytes.extend(frame(BINARY, true, &[2; 20_000]));
        bytes.extend(close_frame(1000));
        accepted.tcp.write_all(&bytes).await.unwrap();
        accepted.tcp.shutdown().await.unwrap();
        std::future::pending::<()>().await;
    })
    .await;
    let (client, mut incoming) = support::client_for(&server, quiet());
    wait_open(&client).await;

    client.close().await;
    let mut messages = Vec::new();
    while let Some(message) = incoming.recv().await {
        messages.push(message);
    }

    assert_eq!(
        messages,
        [
            Message::text("in flight 1"),
            Message::binary(vec![2; 20_000])
        ]
    );
    assert_eq!(client.metrics().messages_received, 2);
}

#[tokio::test(start_paused = true)]
async fn a_large_frame_arriving_slowly_keeps_the_connection_alive() {
    let server = Server::start(|mut accepted: Accepted| async move {
        let mut bytes = upgrade_answer(&mut accepted.tcp).await;
        bytes.extend(frame(BINARY, true, &vec![5; 1 << 20]));
        // 256 pieces, 150 ms apart: about 38 s for one frame, during which the server
        // cannot answer a ping.
        for piece in bytes.chunks(4 << 10) {
            accepted.tcp.write_all(piece).await.unwrap();
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        std::future::pending::<()>().await;
    })
    .await;
    let config = Config {
        ping_interval: Some(Duration::from_secs(5)),
        pong_timeout: Duration::from_secs(5),
        ..config(Duration::from_millis(100))
    };
    let (client, mut incoming) = support::client_for(&server, config);
    let mut events = client.events();
    let disconnected = support::next_disconnect(&mut events);

    tokio::select! {
        message = incoming.recv() => assert_eq!(message.unwrap().len(), 1 << 20),
        error = disconnected => panic!("dropped while the frame was arriving: {error:?}"),
    }
}
