//! Throughput of `steadfast-batch` against the baselines it replaces.
//!
//! (a) 1,000,000 no-op items at concurrency 64, ours against
//!     `futures::StreamExt::buffer_unordered` in the same run, on one current-thread
//!     runtime each (the overhead of spawning a task per item, which is what buys
//!     progress without polling and panic isolation).
//! (b) 20,000 items with seeded heavy-tailed latency (1-5 ms, 1 % at 200 ms) at
//!     concurrency 50: wall time of ours and of the seed's batch-then-pool approach
//!     (batches of 100, each run with 50 at a time and awaited before the next: the
//!     seed's pool of 5 raised to 50 so both use the same concurrency), each as a ratio
//!     of the ideal lower bound max(sum / concurrency, longest item). Measured on paused
//!     (virtual) tokio time, which is exact and deterministic, and once more for ours on
//!     real time, where the timer's 1 ms granularity adds to every short item. For
//!     reference, the seed's literal pool of 5, and ours at concurrency 5, are also
//!     measured against their own ideal (the same bound at concurrency 5).

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use steadfast_batch::Batch;
use tokio::runtime::{Builder, Runtime};

const NOOP_ITEMS: u64 = 1_000_000;
const NOOP_CONCURRENCY: usize = 64;
const LATENCY_ITEMS: usize = 20_000;
const LATENCY_CONCURRENCY: usize = 50;
const SEED_BATCH: usize = 100;
const SEED_POOL: usize = 5;

fn main() {
    noop_throughput();
    heavy_tailed_latency();
}

fn runtime(paused: bool) -> Runtime {
    // Paused from the start, so that the paused clock sits on the timer wheel's
    // millisecond ticks; pausing later leaves an offset that rounds every sleep up.
    Builder::new_current_thread()
        .enable_time()
        .start_paused(paused)
        .build()
        .expect("a runtime")
}

fn batch(concurrency: usize) -> Batch {
    Batch::builder()
        .concurrency(NonZeroUsize::new(concurrency).expect("not zero"))
        .build()
        .expect("valid settings")
}

async fn ours_noop(items: u64) -> u64 {
    let mut run = batch(NOOP_CONCURRENCY).run(0..items, |n| async move { Ok::<_, Infallible>(n) });
    let mut read = 0;
    while run.next().await.is_some() {
        read += 1;
    }
    run.finish().await.expect("the run ends normally");
    read
}

async fn buffer_unordered_noop(items: u64) -> u64 {
    let mut results = futures::stream::iter(0..items)
        .map(|n| async move { Ok::<_, Infallible>(n) })
        .buffer_unordered(NOOP_CONCURRENCY);
    let mut read = 0;
    while results.next().await.is_some() {
        read += 1;
    }
    read
}

fn noop_throughput() {
    let runtime = runtime(false);
    runtime.block_on(ours_noop(NOOP_ITEMS / 10));
    runtime.block_on(buffer_unordered_noop(NOOP_ITEMS / 10));

    let start = Instant::now();
    assert_eq!(runtime.block_on(ours_noop(NOOP_ITEMS)), NOOP_ITEMS);
    let ours = start.elapsed();

    let start = Instant::now();
    assert_eq!(
        runtime.block_on(buffer_unordered_noop(NOOP_ITEMS)),
        NOOP_ITEMS
    );
    let baseline = start.elapsed();

    println!("bench noop_1m_ours: {:.1} ms", ours.as_secs_f64() * 1e3);
    println!(
        "bench noop_1m_buffer_unordered: {:.1} ms",
        baseline.as_secs_f64() * 1e3
    );
    println!(
        "bench noop_1m_ours_per_item: {:.0} ns",
        ours.as_secs_f64() * 1e9 / NOOP_ITEMS as f64
    );
    println!(
        "bench noop_1m_ours_vs_buffer_unordered: {:.2} x",
        ours.as_secs_f64() / baseline.as_secs_f64()
    );
}

/// Seeded latencies: 1 % at 200 ms, the rest 1 to 5 ms (whole milliseconds, so that the
/// timer's 1 ms granularity does not round them up on virtual time).
fn latencies() -> Vec<Duration> {
    let mut rng = SmallRng::seed_from_u64(20_000);
    (0..LATENCY_ITEMS)
        .map(|_| {
            if rng.random_bool(0.01) {
                Duration::from_millis(200)
            } else {
                Duration::from_millis(rng.random_range(1..=5))
            }
        })
        .collect()
}

async fn ours_latency(latencies: Vec<Duration>, concurrency: usize) -> Duration {
    let start = tokio::time::Instant::now();
    let mut run = batch(concurrency).run(latencies, |latency| async move {
        tokio::time::sleep(latency).await;
        Ok::<_, Infallible>(())
    });
    while run.next().await.is_some() {}
    run.finish().await.expect("the run ends normally");
    start.elapsed()
}

/// The seed's approach: split into batches, run each with bounded concurrency, and await
/// the whole batch before starting the next.
async fn batch_then_pool(latencies: Vec<Duration>, pool: usize) -> Duration {
    let start = tokio::time::Instant::now();
    for chunk in latencies.chunks(SEED_BATCH) {
        futures::stream::iter(chunk.iter().copied())
            .map(tokio::time::sleep)
            .buffer_unordered(pool)
            .collect::<Vec<()>>()
            .await;
    }
    start.elapsed()
}

fn heavy_tailed_latency() {
    let latencies = latencies();
    let sum: Duration = latencies.iter().sum();
    let longest = latencies.iter().max().copied().unwrap_or_default();
    let ideal = (sum / LATENCY_CONCURRENCY as u32).max(longest);

    let ours = runtime(true).block_on(ours_latency(latencies.clone(), LATENCY_CONCURRENCY));
    let seed = runtime(true).block_on(batch_then_pool(latencies.clone(), LATENCY_CONCURRENCY));
    let seed_pool5 = runtime(true).block_on(batch_then_pool(latencies.clone(), SEED_POOL));
    let ours_pool5 = runtime(true).block_on(ours_latency(latencies.clone(), SEED_POOL));
    let ideal_pool5 = (sum / SEED_POOL as u32).max(longest);
    let ours_real = runtime(false).block_on(ours_latency(latencies, LATENCY_CONCURRENCY));

    println!(
        "bench latency_20k_ideal: {:.1} ms",
        ideal.as_secs_f64() * 1e3
    );
    println!(
        "bench latency_20k_ours_virtual: {:.1} ms",
        ours.as_secs_f64() * 1e3
    );
    println!(
        "bench latency_20k_batch_then_pool_virtual: {:.1} ms",
        seed.as_secs_f64() * 1e3
    );
    println!(
        "bench latency_20k_ours_vs_ideal_virtual: {:.3} x",
        ratio(ours, ideal)
    );
    println!(
        "bench latency_20k_batch_then_pool_vs_ideal_virtual: {:.3} x",
        ratio(seed, ideal)
    );
    println!(
        "bench latency_20k_ours_real: {:.1} ms",
        ours_real.as_secs_f64() * 1e3
    );
    println!(
        "bench latency_20k_ours_vs_ideal_real: {:.3} x",
        ratio(ours_real, ideal)
    );
    println!(
        "bench latency_20k_seed_literal_pool5_vs_its_ideal_virtual: {:.3} x",
        ratio(seed_pool5, ideal_pool5)
    );
    println!(
        "bench latency_20k_ours_pool5_vs_its_ideal_virtual: {:.3} x",
        ratio(ours_pool5, ideal_pool5)
    );
}

fn ratio(measured: Duration, ideal: Duration) -> f64 {
    measured.as_secs_f64() / ideal.as_secs_f64()
}
