//! Echo throughput through the client against raw tokio-tungstenite in the same run, and
//! the time from a server restart to a reconnected client.
//!
//! Prints `bench <name>: <value> <unit>` lines.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures_util::{FutureExt, SinkExt, StreamExt};
use steadfast_ws_resilient::{
    Backoff, BufferConfig, Client, Config, Jitter, Message, Overflow, State,
};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as Frame;

/// The largest message measured.
const MAX_SIZE: usize = 16 << 10;

/// Rounds per figure; the median is reported.
const ROUNDS: usize = 9;

fn main() {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The echo server is the remote peer: it gets a thread and a runtime of its own so
    // that it does not compete with the client for the client runtime's workers.
    let server = echo_server_thread();
    runtime.block_on(async {
        for (name, size, count) in [("64b", 64, 400_000), ("16kib", MAX_SIZE, 40_000)] {
            if filter
                .as_ref()
                .is_some_and(|filter| !name.contains(filter.as_str()))
            {
                continue;
            }
            let mut raw = Vec::new();
            let mut ours = Vec::new();
            for _ in 0..ROUNDS {
                // The application's code runs in a spawned task, as in a service.
                raw.push(spawned(raw_echo(server, size, count)).await);
                ours.push(spawned(client_echo(server, size, count)).await);
            }
            let paired = |figure: fn(&Round) -> Option<f64>| -> Option<f64> {
                let ratios: Option<Vec<f64>> = ours
                    .iter()
                    .zip(&raw)
                    .map(|(ours, raw)| Some(figure(ours)? / figure(raw)?))
                    .collect();
                ratios.map(median)
            };
            let rate = |round: &Round| Some(round.per_second);
            let rates = |rounds: &[Round]| median(rounds.iter().map(|r| r.per_second).collect());
            println!("bench echo_{name}_raw: {:.0} msg/s", rates(&raw));
            println!("bench echo_{name}_client: {:.0} msg/s", rates(&ours));
            if let Some(ratio) = paired(rate) {
                println!("bench echo_{name}_ratio: {ratio:.3} ratio");
            }
            // CPU time per message of the whole process (echo server included), raw over
            // ours: what the client's layer costs, apart from how well it spreads over cores.
            let cpu = |round: &Round| Some(1.0 / round.cpu?.as_secs_f64());
            if let Some(ratio) = paired(cpu) {
                println!("bench echo_{name}_cpu_ratio: {ratio:.3} ratio");
            }
        }
        if filter.is_some() {
            return;
        }

        let initial = Duration::from_millis(100);
        let mut after_restart = Vec::new();
        let mut after_drop = Vec::new();
        for _ in 0..ROUNDS {
            let (restart, drop) = reconnect_after_restart(initial).await;
            after_restart.push(restart.as_secs_f64() * 1e3);
            after_drop.push(drop.as_secs_f64() * 1e3);
        }
        let after_drop = median(after_drop);
        println!("bench reconnect_initial_delay: {} ms", initial.as_millis());
        println!(
            "bench reconnect_restart_to_open: {:.1} ms",
            median(after_restart)
        );
        println!("bench reconnect_drop_to_open: {after_drop:.1} ms");
        println!(
            "bench reconnect_drop_to_open_vs_initial_delay: {:.3} ratio",
            after_drop / initial.as_secs_f64() / 1e3
        );
    });
}

/// Runs `work` in a spawned task and returns its output.
async fn spawned<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(work).await.expect("bench task")
}

/// An echo server on a thread and runtime of its own, for the whole run.
fn echo_server_thread() -> SocketAddr {
    let (address_tx, address_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let (address, tasks) = echo_server(None).await;
            address_tx.send(address).expect("address");
            let _tasks = tasks;
            std::future::pending::<()>().await;
        });
    });
    address_rx.recv().expect("server address")
}

/// An echo server; `at` rebinds a given address (a restart).
async fn echo_server(at: Option<SocketAddr>) -> (SocketAddr, JoinSet<()>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(at.unwrap_or_else(|| "127.0.0.1:0".parse().expect("address")))
        .expect("bind");
    let listener: TcpListener = socket.listen(1024).expect("listen");
    let addr = listener.local_addr().expect("address");
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        let mut connections = JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            connections.spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let _ = echo(ws).await;
            });
        }
    });
    (addr, tasks)
}

/// Echoes data frames, writing out whenever nothing more has arrived.
async fn echo(
    mut ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    while let Some(frame) = ws.next().await {
        let mut frame = frame?;
        loop {
            if frame.is_text() || frame.is_binary() {
                ws.feed(frame).await?;
            }
            match ws.next().now_or_never() {
                Some(Some(next)) => frame = next?,
                _ => break,
            }
        }
        ws.flush().await?;
    }
    Ok(())
}

/// One measured round.
struct Round {
    per_second: f64,
    /// CPU time the whole process spent while the round ran, where the platform tells.
    cpu: Option<Duration>,
}

impl Round {
    fn new(count: usize, started: Instant, cpu_at_start: Option<Duration>) -> Self {
        let elapsed = started.elapsed();
        Self {
            per_second: count as f64 / elapsed.as_secs_f64(),
            cpu: process_cpu()
                .zip(cpu_at_start)
                .map(|(now, start)| now.saturating_sub(start)),
        }
    }
}

/// CPU time used so far by every thread of this process, from Linux's per-thread
/// scheduler statistics (nanoseconds on CPU); `None` elsewhere.
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Messages per second through a raw tokio-tungstenite client, sending while receiving.
async fn raw_echo(server: SocketAddr, size: usize, count: usize) -> Round {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{server}"))
        .await
        .expect("connect");
    let (mut sink, mut stream) = ws.split();
    let payload = payload(size);
    let cpu_at_start = process_cpu();
    let started = Instant::now();

    let writer = tokio::spawn(async move {
        for _ in 0..count {
            sink.feed(Frame::Binary(payload.clone()))
                .await
                .expect("feed");
        }
        sink.flush().await.expect("flush");
        sink
    });
    let mut received = 0;
    while received < count {
        match stream.next().await {
            Some(Ok(Frame::Binary(_))) => received += 1,
            Some(Ok(_)) => {}
            other => panic!("echo ended early: {other:?}"),
        }
    }
    let round = Round::new(count, started, cpu_at_start);
    let _ = writer.await;
    round
}

/// The same through our client.
async fn client_echo(server: SocketAddr, size: usize, count: usize) -> Round {
    let config = Config {
        buffer: BufferConfig {
            max_messages: 4096,
            max_bytes: 64 << 20,
            overflow: Overflow::Wait,
            max_age: None,
        },
        ..Config::default()
    };
    let (client, mut incoming) = Client::builder(format!("ws://{server}"))
        .config(config)
        .build()
        .expect("client");
    let mut state = client.state();
    state.wait_for(State::is_open).await.expect("open");
    let payload = payload(size);
    let cpu_at_start = process_cpu();
    let started = Instant::now();

    let sender = client.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            sender
                .send(Message::Binary(payload.clone()))
                .await
                .expect("send");
        }
    });
    let mut received = 0;
    let mut batch = Vec::with_capacity(1024);
    while received < count {
        let got = incoming.recv_many(&mut batch, 1024).await;
        assert!(got > 0, "echo ended early");
        received += got;
        batch.clear();
    }
    let round = Round::new(count, started, cpu_at_start);
    let _ = writer.await;
    client.close().await;
    round
}

/// Kills the server, restarts it on the same address and measures how long the client
/// takes to be open again: from the restart, and from the drop.
async fn reconnect_after_restart(initial: Duration) -> (Duration, Duration) {
    let (server, tasks) = echo_server(None).await;
    let config = Config {
        backoff: Backoff::exponential(initial)
            .jitter(Jitter::None)
            .unlimited_attempts(),
        ..Config::default()
    };
    let (client, _incoming) = Client::builder(format!("ws://{server}"))
        .config(config)
        .build()
        .expect("client");
    let mut state = client.state();
    state.wait_for(State::is_open).await.expect("open");

    let dropped = Instant::now();
    drop(tasks);
    state
        .wait_for(|state| !state.is_open())
        .await
        .expect("noticed");
    let (_, _restarted_tasks) = echo_server(Some(server)).await;
    let restarted = Instant::now();
    state.wait_for(State::is_open).await.expect("reopened");
    let open = Instant::now();
    client.close().await;
    (open - restarted, open - dropped)
}

/// A payload of `size` bytes whose clones cost nothing: a shared reference count, bumped
/// by the sending thread and dropped by whichever thread writes the frame, would measure
/// cache-line traffic between cores rather than the client.
fn payload(size: usize) -> bytes::Bytes {
    static DATA: [u8; MAX_SIZE] = [7; MAX_SIZE];
    bytes::Bytes::from_static(&DATA[..size])
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
