//! Contention simulation of the AWS Architecture Blog post "Exponential Backoff and
//! Jitter" (2015), run with this crate's schedules, plus the cost of `retry` around an
//! operation that succeeds at once.
//!
//! # The model
//!
//! As in the simulator behind the post: `N = 100` clients start together and each
//! updates one row once, under optimistic concurrency control. A client reads the
//! row's version, then writes conditionally on that version; the write succeeds only
//! if no other write landed in between, otherwise the client waits its backoff and
//! starts over with a fresh read. Every message (read request, read answer, write
//! request, write answer) takes `|Normal(10 ms, 2 ms)|` on the network. Time is
//! virtual: a discrete-event queue ordered by arrival time. "Calls" counts write
//! attempts (successful or not); "time" is when the last client finished. Both are
//! averaged over 100 runs.
//!
//! Strategies, with the post's base of 5 ms and cap of 2 s (its retry `n`, from 1,
//! waits `min(2 s, 5 ms * 2^n)`, so our first un-jittered delay is 10 ms):
//!
//! - none: `Backoff::constant(0)`;
//! - exponential: `exponential(10 ms)`, ×2, cap 2 s, `Jitter::None`;
//! - equal and full: the same with `Jitter::Equal` / `Jitter::Full` and a floor of 0,
//!   as the post draws from `[v/2, v]` and `[0, v]`;
//! - decorrelated: `exponential(5 ms)`, cap 2 s, `Jitter::Decorrelated` with a 5 ms
//!   floor: uniform between 5 ms and three times the previous delay.
//!
//! Output: `bench <name>: <value> <unit>` lines.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::io;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use steadfast_backoff::{Backoff, Jitter, Schedule, retry};

const CLIENTS: usize = 100;
const RUNS: u64 = 100;
const NET_MEAN_NS: f64 = 10_000_000.0;
const NET_SD_NS: f64 = 2_000_000.0;
const OVERHEAD_CALLS: u32 = 200_000;
const OVERHEAD_ROUNDS: u32 = 7;

fn main() {
    for (name, policy) in strategies() {
        let (calls, time) = simulate(&policy);
        println!("bench contention_calls_{name}: {calls:.0} calls");
        println!("bench contention_time_{name}: {time:.0} ms");
    }

    let (direct, wrapped) = overhead();
    println!("bench retry_direct_call: {direct:.1} ns/op");
    println!("bench retry_wrapped_call: {wrapped:.1} ns/op");
    println!("bench retry_overhead_ratio: {:.2} x", wrapped / direct);
}

fn strategies() -> Vec<(&'static str, Backoff)> {
    let cap = Duration::from_secs(2);
    let exponential = Backoff::exponential(Duration::from_millis(10))
        .factor(2.0)
        .max_delay(cap)
        .min_delay(Duration::ZERO)
        .unlimited_attempts();
    vec![
        (
            "none",
            Backoff::constant(Duration::ZERO).unlimited_attempts(),
        ),
        ("exponential", exponential.clone().jitter(Jitter::None)),
        ("equal_jitter", exponential.clone().jitter(Jitter::Equal)),
        ("full_jitter", exponential.jitter(Jitter::Full)),
        (
            "decorrelated_jitter",
            Backoff::exponential(Duration::from_millis(5))
                .max_delay(cap)
                .min_delay(Duration::from_millis(5))
                .jitter(Jitter::Decorrelated)
                .unlimited_attempts(),
        ),
    ]
}

/// What arrives where, when.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Message {
    /// A read request reaches the server.
    Read,
    /// The version read reaches the client.
    ReadAnswer(u64),
    /// A conditional write reaches the server.
    Write(u64),
    /// The write's outcome reaches the client.
    WriteAnswer(bool),
}

/// Average write calls and completion time (ms) over `RUNS` runs.
fn simulate(policy: &Backoff) -> (f64, f64) {
    let mut calls = 0u64;
    let mut time_ns = 0u64;
    for run in 0..RUNS {
        let (run_calls, run_time) = simulate_once(policy, run);
        calls += run_calls;
        time_ns += run_time;
    }
    (
        calls as f64 / RUNS as f64,
        time_ns as f64 / RUNS as f64 / 1e6,
    )
}

fn simulate_once(policy: &Backoff, run: u64) -> (u64, u64) {
    let mut net = SmallRng::seed_from_u64(run);
    let mut schedules: Vec<Schedule> = (0..CLIENTS)
        .map(|client| policy.schedule().with_seed(run * 1_000 + client as u64))
        .collect();
    let mut queue = BinaryHeap::new();
    let mut sequence = 0u64;
    let mut send = |queue: &mut BinaryHeap<_>, at: u64, client: usize, message: Message| {
        sequence += 1;
        queue.push(Reverse((at, sequence, client, message)));
    };

    for client in 0..CLIENTS {
        let at = network_delay(&mut net);
        send(&mut queue, at, client, Message::Read);
    }

    let mut version = 0u64;
    let mut calls = 0u64;
    let mut now = 0u64;
    while let Some(Reverse((at, _, client, message))) = queue.pop() {
        now = at;
        let next = match message {
            Message::Read => Some((0, Message::ReadAnswer(version))),
            Message::ReadAnswer(read) => Some((0, Message::Write(read))),
            Message::Write(expected) => {
                calls += 1;
                let success = expected == version;
                if success {
                    version += 1;
                }
                Some((0, Message::WriteAnswer(success)))
            }
            Message::WriteAnswer(true) => None,
            Message::WriteAnswer(false) => {
                let backoff = schedules[client].next().unwrap_or(Duration::ZERO);
                Some((saturating_nanos(backoff), Message::Read))
            }
        };
        if let Some((wait, message)) = next {
            let at = now + network_delay(&mut net) + wait;
            send(&mut queue, at, client, message);
        }
    }
    (calls, now)
}

/// `|Normal(10 ms, 2 ms)|` in nanoseconds, by the Box-Muller transform.
fn network_delay(rng: &mut SmallRng) -> u64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    (NET_MEAN_NS + NET_SD_NS * normal).abs() as u64
}

fn saturating_nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX / 2)
}

/// Nanoseconds per call: calling an instantly successful operation directly, and
/// through `retry`, measured alternately in the same run (best of several rounds).
fn overhead() -> (f64, f64) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a tokio runtime for the overhead measurement");
    let policy = Backoff::exponential(Duration::from_millis(100));

    runtime.block_on(async {
        let mut best_direct = f64::MAX;
        let mut best_wrapped = f64::MAX;
        for _ in 0..OVERHEAD_ROUNDS {
            let started = Instant::now();
            for call in 0..OVERHEAD_CALLS {
                black_box(operation(call).await.ok());
            }
            best_direct = best_direct.min(per_call(started));

            let started = Instant::now();
            for call in 0..OVERHEAD_CALLS {
                black_box(retry(&policy, || operation(call)).await.ok());
            }
            best_wrapped = best_wrapped.min(per_call(started));
        }
        (best_direct, best_wrapped)
    })
}

async fn operation(call: u32) -> Result<u32, io::Error> {
    Ok(black_box(call).wrapping_mul(3))
}

fn per_call(started: Instant) -> f64 {
    started.elapsed().as_nanos() as f64 / f64::from(OVERHEAD_CALLS)
}
