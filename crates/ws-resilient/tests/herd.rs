//! WS-06: many clients dropped at once spread their reconnects.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast_ws_resilient::{Backoff, Client, Config, IntoClientRequest, Jitter};
use support::{Server, wait_open};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;

const CLIENTS: usize = 200;

/// Attempt times of one run, relative to the moment the server dropped everyone.
#[derive(Debug, PartialEq)]
struct Run {
    /// Each client's first attempt after the mass drop, in ms.
    first_wave: Vec<u128>,
    /// Each client's attempts during the two minutes of rejection, in ms.
    rejected: Vec<Vec<u128>>,
}

/// The backoff of the case: 1 s doubling to 30 s, full jitter from zero.
fn case_backoff() -> Backoff {
    Backoff::exponential(Duration::from_secs(1))
        .max_delay(Duration::from_secs(30))
        .min_delay(Duration::ZERO)
        .jitter(Jitter::Full)
        .unlimited_attempts()
}

async fn herd(master_seed: u64, backoff: Backoff) -> Run {
    let reject = Arc::new(AtomicBool::new(false));
    let (kick, _) = watch::channel(0u32);
    let kick = Arc::new(kick);
    let server = {
        let reject = Arc::clone(&reject);
        let kick = Arc::clone(&kick);
        Server::start(move |accepted| {
            let reject = reject.load(Ordering::SeqCst);
            let mut kicked = kick.subscribe();
            async move {
                if reject {
                    #[expect(
                        clippy::result_large_err,
                        reason = "the signature of tungstenite's server callback"
                    )]
                    let refuse = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                        let mut response = ErrorResponse::new(None);
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        Err(response)
                    };
                    let _ = tokio_tungstenite::accept_hdr_async(accepted.tcp, refuse).await;
                    return;
                }
                let ws = tokio_tungstenite::accept_async(accepted.tcp).await.unwrap();
                let _ = kicked.changed().await;
                drop(ws);
            }
        })
        .await
    };

    let attempts: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();
    let mut clients = Vec::new();
    for id in 0..CLIENTS {
        let config = Config {
            backoff: backoff.clone(),
            ping_interval: None,
            seed: Some(master_seed ^ (id as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            ..Config::default()
        };
        let url = server.url();
        let log = Arc::clone(&attempts);
        let (client, incoming) = Client::builder(url.clone())
            .config(config)
            .request(move || {
                log.lock().unwrap().push((id, Instant::now()));
                Ok(url.as_str().into_client_request()?)
            })
            .build()
            .unwrap();
        clients.push((client, incoming));
    }
    for (client, _) in &clients {
        wait_open(client).await;
    }
    tokio::time::sleep(Duration::from_secs(20)).await;

    // The mass drop; the server goes on accepting.
    attempts.lock().unwrap().clear();
    let dropped_at = Instant::now();
    kick.send_modify(|generation| *generation += 1);
    // Every client notices the drop and tries again; only then can "open" mean reopened.
    while clients_logged(&attempts) < CLIENTS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (client, _) in &clients {
        wait_open(client).await;
    }
    let mut first_wave = vec![u128::MAX; CLIENTS];
    for (id, at) in attempts.lock().unwrap().drain(..) {
        first_wave[id] = first_wave[id].min((at - dropped_at).as_millis());
    }
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Two minutes of rejection.
    reject.store(true, Ordering::SeqCst);
    let rejecting_from = Instant::now();
    kick.send_modify(|generation| *generation += 1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    let mut rejected = vec![Vec::new(); CLIENTS];
    for (id, at) in attempts.lock().unwrap().drain(..) {
        rejected[id].push((at - rejecting_from).as_millis());
    }

    for (client, _) in &clients {
        client.close().await;
    }
    Run {
        first_wave,
        rejected,
    }
}

/// How many distinct clients have logged an attempt.
fn clients_logged(attempts: &Mutex<Vec<(usize, Instant)>>) -> usize {
    let attempts = attempts.lock().unwrap();
    attempts
        .iter()
        .map(|(id, _)| id)
        .collect::<BTreeSet<_>>()
        .len()
}

#[tokio::test(start_paused = true)]
async fn ws_06_many_clients_dropped_at_once_do_not_reconnect_in_lockstep() {
    let run = herd(7, case_backoff()).await;

    assert!(
        run.first_wave.iter().all(|at| *at <= 1_000),
        "every first reconnect within the first delay: {:?}",
        run.first_wave
    );
    let immediate = run.first_wave.iter().filter(|at| **at == 0).count();
    assert!(
        immediate < CLIENTS,
        "the first reconnects do not all land at t = 0"
    );
    let busiest = (0..=1_000)
        .step_by(10)
        .map(|start| {
            run.first_wave
                .iter()
                .filter(|at| (start..start + 100).contains(*at))
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 40, "{busiest} reconnects in one 100 ms window");

    // At the cap, waits still vary rather than all being exactly 30 s.
    let mut capped_gaps = BTreeSet::new();
    for attempts in &run.rejected {
        assert!(attempts.len() >= 5, "a client kept trying: {attempts:?}");
        for pair in attempts.windows(2).skip(5) {
            capped_gaps.insert(pair[1] - pair[0]);
        }
    }
    assert!(
        capped_gaps.len() > 50,
        "only {} distinct waits at the cap",
        capped_gaps.len()
    );
    assert!(capped_gaps.iter().all(|gap| *gap <= 30_000));

    let again = herd(7, case_backoff()).await;
    assert_eq!(
        run, again,
        "the same master seed reproduces every attempt time"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_backoff_spreads_the_first_reconnects_too() {
    let default = Config::default().backoff;

    let run = herd(11, default.clone()).await;

    // Full jitter from zero to the 500 ms initial delay: 200 clients over half a second.
    let initial = default.initial.as_millis();
    assert!(
        run.first_wave.iter().all(|at| *at <= initial),
        "{:?}",
        run.first_wave
    );
    let distinct: BTreeSet<_> = run.first_wave.iter().collect();
    assert!(
        distinct.len() > CLIENTS / 2,
        "only {} distinct first reconnect times",
        distinct.len()
    );
    let busiest = (0..=initial)
        .step_by(10)
        .map(|start| {
            let window = start..start + 100;
            run.first_wave
                .iter()
                .filter(|at| window.contains(*at))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= CLIENTS / 3,
        "{busiest} reconnects in one 100 ms window"
    );
}
