//! BA-01: items keep running while the consumer is busy, and a permit shared between the
//! items and the consumer cannot deadlock the run.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use steadfast_batch::{Batch, Outcome};
use tokio::sync::Semaphore;
use tokio::time::{Instant, sleep, timeout};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("not zero")
}

/// One item: holds the shared permit for 10 ms.
async fn hold_permit(permit: Arc<Semaphore>) -> Result<(), Infallible> {
    let _held = permit.acquire().await.expect("the semaphore stays open");
    sleep(Duration::from_millis(10)).await;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn ba_01_items_and_a_slow_consumer_share_one_permit_without_deadlock() {
    let permit = Arc::new(Semaphore::new(1));
    let batch = Batch::builder()
        .concurrency(nz(4))
        .build()
        .expect("valid settings");
    let start = Instant::now();

    let for_items = Arc::clone(&permit);
    let mut run = batch.run(0..100u32, move |_| hold_permit(Arc::clone(&for_items)));
    let read_all = async {
        let mut successes = 0;
        while let Some(result) = run.next().await {
            let _held = permit.acquire().await.expect("the semaphore stays open");
            sleep(Duration::from_millis(50)).await;
            successes += u32::from(result.outcome.is_success());
        }
        successes
    };
    let successes = timeout(Duration::from_secs(10), read_all)
        .await
        .expect("no deadlock");

    assert_eq!(successes, 100);
    assert!(
        start.elapsed() <= Duration::from_secs(10),
        "took {:?}",
        start.elapsed()
    );
    let report = run
        .finish()
        .await
        .expect("the run ends normally")
        .into_report();
    assert_eq!(report.counts().succeeded, 100);
    assert_eq!(report.total(), 100);
}

#[tokio::test(start_paused = true)]
async fn ba_01_an_items_clock_runs_only_while_the_item_runs() {
    // A buffer of one makes the run hold items back while the reader is busy, so items
    // wait long before they start; none of that wait may count against their timeout.
    let batch = Batch::builder()
        .concurrency(nz(4))
        .buffer(nz(1))
        .item_timeout(Duration::from_millis(150))
        .build()
        .expect("valid settings");

    let mut run = batch.run(0..20u32, |_| async {
        sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(())
    });
    let mut outcomes = Vec::new();
    while let Some(result) = run.next().await {
        sleep(Duration::from_millis(500)).await;
        outcomes.push(result.outcome);
    }

    assert_eq!(outcomes.len(), 20);
    assert!(
        outcomes
            .iter()
            .all(|outcome| matches!(outcome, Outcome::Succeeded(())))
    );
    let report = run
        .finish()
        .await
        .expect("the run ends normally")
        .into_report();
    assert_eq!(report.counts().timed_out, 0);
    assert_eq!(report.counts().succeeded, 20);
}

/// The same scenario as the first test, written with `buffer_unordered`.
///
/// Ignored on purpose: it reproduces the upstream bug and fails. `buffer_unordered` polls
/// its futures only while the loop polls the stream, so when the loop body waits for the
/// permit that a buffered item has just taken, that item is never polled again and never
/// releases it. Run it with `--ignored` to watch the 10 s timeout expire.
#[tokio::test(start_paused = true)]
#[ignore = "reproduces the futures-rs#2387 deadlock this crate avoids; it fails by design"]
async fn ba_01_contrast_buffer_unordered_deadlocks_on_the_shared_permit() {
    let permit = Arc::new(Semaphore::new(1));
    let for_items = Arc::clone(&permit);
    let mut results = futures::stream::iter(0..100u32)
        .map(move |_| hold_permit(Arc::clone(&for_items)))
        .buffer_unordered(4);

    let read_all = async {
        let mut successes = 0;
        while let Some(result) = results.next().await {
            let _held = permit.acquire().await.expect("the semaphore stays open");
            sleep(Duration::from_millis(50)).await;
            successes += u32::from(result.is_ok());
        }
        successes
    };

    let successes = timeout(Duration::from_secs(10), read_all)
        .await
        .expect("no deadlock");
    assert_eq!(successes, 100);
}
