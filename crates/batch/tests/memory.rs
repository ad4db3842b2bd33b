//! Memory stays flat over a 1,000,000-item stream: what the run holds is bounded by its
//! settings, not by the size of its input.
//!
//! A counting global allocator would need `unsafe`, which the workspace forbids, so the
//! test bounds what is held instead: every item and every result carries a guard that
//! counts the live ones, and the high-water mark must stay within concurrency plus buffer.
//! On Linux the resident set size is checked as well.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use steadfast_batch::Batch;

const ITEMS: u64 = 1_000_000;
const CONCURRENCY: usize = 64;
const BUFFER: usize = 64;

/// Counts itself in `live` while it exists, and records the highest count seen.
struct Tracked {
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Counters {
    live: AtomicUsize,
    high_water: AtomicUsize,
}

impl Tracked {
    fn new(counters: &Arc<Counters>) -> Self {
        let live = counters.live.fetch_add(1, Ordering::SeqCst) + 1;
        counters.high_water.fetch_max(live, Ordering::SeqCst);
        Self {
            counters: Arc::clone(counters),
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.counters.live.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resident set size in KiB, where the platform tells it.
fn resident_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn memory_stays_flat_over_a_million_item_stream() {
    let counters = Arc::new(Counters::default());
    let input_counters = Arc::clone(&counters);
    let input = futures::stream::iter(0..ITEMS).map(move |_| Tracked::new(&input_counters));
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(CONCURRENCY).expect("not zero"))
        .buffer(NonZeroUsize::new(BUFFER).expect("not zero"))
        .build()
        .expect("valid settings");

    let mut run = batch.run_stream(input, |item| async move { Ok::<_, Infallible>(item) });
    let mut read = 0u64;
    let mut resident_early = None;
    while let Some(result) = run.next().await {
        drop(result);
        read += 1;
        if read == ITEMS / 10 {
            resident_early = resident_kib();
        }
    }
    let resident_late = resident_kib();
    let report = run
        .finish()
        .await
        .expect("the run ends normally")
        .into_report();

    assert_eq!(read, ITEMS);
    assert_eq!(report.counts().succeeded, ITEMS);
    assert_eq!(
        report.succeeded_ranges().collect::<Vec<_>>(),
        vec![0..ITEMS]
    );
    assert_eq!(counters.live.load(Ordering::SeqCst), 0);

    // Running items, finished results in the buffer, results waiting to enter it, the one
    // being read, and the one being pulled.
    let bound = CONCURRENCY + BUFFER + CONCURRENCY + 2;
    let high_water = counters.high_water.load(Ordering::SeqCst);
    assert!(
        high_water <= bound,
        "{high_water} items held at once, bound {bound}"
    );

    if let (Some(early), Some(late)) = (resident_early, resident_late) {
        let growth = late.saturating_sub(early);
        assert!(
            growth < 32 * 1024,
            "resident set grew by {growth} KiB over 900,000 items"
        );
    }
}
