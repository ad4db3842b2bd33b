//! Drain under load: a loopback axum server served by `steadfast_shutdown::axum::serve`
//! gets a real SIGTERM while a client keeps 200 requests in flight, each taking 50-500 ms
//! (seeded). Prints the requests completed and failed (failed must be 0), and the time
//! from the signal to the end of the shutdown as a ratio of the longest request still in
//! flight at the signal (1.0 is the floor: no shutdown can end before that request does).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::Path;
use axum::routing::get;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use steadfast_shutdown::Shutdown;
use steadfast_shutdown::axum::serve;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, sleep};

const IN_FLIGHT: usize = 200;
const LOAD_BEFORE_SIGNAL: Duration = Duration::from_secs(2);
const DRAIN_DELAY: Duration = Duration::from_millis(100);
const SEED: u64 = 0x5eed;

/// What the client saw, shared by its workers.
struct Load {
    base: Instant,
    stop: AtomicBool,
    completed: AtomicU64,
    failed: AtomicU64,
    /// Per worker: when its request in flight is due to end, in µs since `base`; 0 if idle.
    due: Vec<AtomicU64>,
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let shutdown = Shutdown::builder()
        .drain_delay(DRAIN_DELAY)
        .drain_deadline(Duration::from_secs(10))
        .build()
        .expect("valid settings");
    let app = Router::new().route("/work/{ms}", get(work));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    shutdown.spawn_critical("http", serve(&shutdown, listener, app));
    let run = tokio::spawn(shutdown.run());

    let load = Arc::new(Load {
        base: Instant::now(),
        stop: AtomicBool::new(false),
        completed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        due: (0..IN_FLIGHT).map(|_| AtomicU64::new(0)).collect(),
    });
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|index| tokio::spawn(worker(addr, index, Arc::clone(&load))))
        .collect();
    sleep(LOAD_BEFORE_SIGNAL).await;

    // The client stops starting requests, as a load balancer would, then SIGTERM arrives.
    load.stop.store(true, Ordering::SeqCst);
    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -TERM failed");
    let signalled = Instant::now();
    let completed_before = load.completed.load(Ordering::SeqCst);
    let dues: Vec<u64> = load
        .due
        .iter()
        .map(|due| due.load(Ordering::SeqCst))
        .collect();
    let in_flight = dues.iter().filter(|due| **due != 0).count();
    let longest_due = dues.into_iter().max().unwrap_or(0);
    let longest =
        (load.base + Duration::from_micros(longest_due)).saturating_duration_since(signalled);

    let report = run.await.expect("run");
    let to_exit = signalled.elapsed();
    for worker in workers {
        worker.await.expect("worker");
    }

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "bench drain_requests_completed: {} requests",
        load.completed.load(Ordering::SeqCst)
    );
    println!(
        "bench drain_requests_failed: {} requests",
        load.failed.load(Ordering::SeqCst)
    );
    println!("bench drain_in_flight_at_signal: {in_flight} requests");
    let after = load.completed.load(Ordering::SeqCst) - completed_before;
    println!("bench drain_completed_after_signal: {after} requests");
    println!("bench drain_signal_to_exit: {:.1} ms", ms(to_exit));
    println!(
        "bench drain_longest_in_flight_at_signal: {:.1} ms",
        ms(longest)
    );
    println!(
        "bench drain_exit_over_longest_in_flight: {:.3} ratio",
        to_exit.as_secs_f64() / longest.as_secs_f64().max(f64::EPSILON)
    );
    println!("bench drain_exit_code: {} code", report.exit_code());
}

async fn work(Path(ms): Path<u64>) -> &'static str {
    sleep(Duration::from_millis(ms)).await;
    "ok"
}

/// Keeps one request in flight on a keep-alive connection until told to stop.
async fn worker(addr: SocketAddr, index: usize, load: Arc<Load>) {
    let mut rng = SmallRng::seed_from_u64(SEED ^ index as u64);
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;

    while !load.stop.load(Ordering::SeqCst) {
        let ms = rng.random_range(50..=500_u64);
        let due = load.base.elapsed() + Duration::from_millis(ms);
        load.due[index].store(due.as_micros() as u64, Ordering::SeqCst);

        let outcome = request(addr, &mut sender, ms).await;
        load.due[index].store(0, Ordering::SeqCst);
        match outcome {
            Ok(()) => load.completed.fetch_add(1, Ordering::SeqCst),
            Err(error) => {
                eprintln!("request failed: {error}");
                sender = None;
                load.failed.fetch_add(1, Ordering::SeqCst)
            }
        };
    }
}

async fn request(
    addr: SocketAddr,
    sender: &mut Option<SendRequest<Empty<Bytes>>>,
    ms: u64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut connection = match sender.take() {
        Some(open) if !open.is_closed() => open,
        _ => {
            let stream = TcpStream::connect(addr).await?;
            let (open, driver) = handshake(TokioIo::new(stream)).await?;
            tokio::spawn(driver);
            open
        }
    };
    connection.ready().await?;
    let request = Request::get(format!("/work/{ms}"))
        .header("host", "localhost")
        .body(Empty::new())?;
    let response = connection.send_request(request).await?;
    let keep = response
        .headers()
        .get("connection")
        .is_none_or(|value| value != "close");
    if !response.status().is_success() {
        return Err(format!("status {}", response.status()).into());
    }
    response.into_body().collect().await?;
    if keep {
        *sender = Some(connection);
    }
    Ok(())
}
