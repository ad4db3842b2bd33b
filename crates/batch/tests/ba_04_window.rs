//! BA-04: a sliding window, not batch barriers: a slot refills as soon as an item ends.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use steadfast_batch::Batch;
use tokio::time::{Instant, sleep};

const CONCURRENCY: usize = 100;

/// 20 items of 600 ms, 100 of 100 ms and 1,880 of 5 ms, in a seeded order.
fn durations() -> Vec<Duration> {
    let mut durations: Vec<Duration> = std::iter::repeat_n(Duration::from_millis(600), 20)
        .chain(std::iter::repeat_n(Duration::from_millis(100), 100))
        .chain(std::iter::repeat_n(Duration::from_millis(5), 1_880))
        .collect();
    durations.shuffle(&mut SmallRng::seed_from_u64(4));
    durations
}

#[tokio::test(start_paused = true)]
async fn ba_04_a_slot_refills_as_soon_as_an_item_ends() {
    let durations = durations();
    let total_work: Duration = durations.iter().sum();
    assert_eq!(total_work, Duration::from_millis(31_400));

    let spans = Arc::new(Mutex::new(Vec::with_capacity(durations.len())));
    let start = Instant::now();
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(CONCURRENCY).expect("not zero"))
        .build()
        .expect("valid settings");

    let recorder = Arc::clone(&spans);
    let mut run = batch.run(durations, move |duration| {
        let recorder = Arc::clone(&recorder);
        async move {
            let began = Instant::now();
            sleep(duration).await;
            recorder
                .lock()
                .expect("not poisoned")
                .push((began, Instant::now()));
            Ok::<_, Infallible>(())
        }
    });
    let mut ended = 0;
    while run.next().await.is_some() {
        ended += 1;
    }
    let elapsed = start.elapsed();
    let report = run
        .finish()
        .await
        .expect("the run ends normally")
        .into_report();

    assert_eq!(ended, 2_000);
    assert_eq!(report.counts().succeeded, 2_000);
    let bound = total_work / CONCURRENCY as u32 + Duration::from_millis(600);
    assert!(elapsed <= bound, "took {elapsed:?}, bound {bound:?}");

    // With a sliding window the k-th item to start (k >= 100) starts exactly when the
    // (k - 100)-th item to end ends, so 100 are in flight at every moment input remains.
    let spans = spans.lock().expect("not poisoned");
    let mut starts: Vec<Instant> = spans.iter().map(|(began, _)| *began).collect();
    let mut ends: Vec<Instant> = spans.iter().map(|(_, end)| *end).collect();
    starts.sort();
    ends.sort();
    assert!(starts[..CONCURRENCY].iter().all(|began| *began == start));
    for (k, began) in starts.iter().enumerate().skip(CONCURRENCY) {
        assert_eq!(
            *began,
            ends[k - CONCURRENCY],
            "start {k} waited for a slot it had"
        );
    }
}
