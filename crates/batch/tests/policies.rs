//! Error ratio, timeouts, rate limit, ordered results, keys, progress, and a slow consumer.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use steadfast_batch::{
    Batch, BatchConfig, BatchError, BuildError, ChunksExt, ErrorPolicy, Order, Outcome,
    OutcomeKind, StopReason,
};
use tokio::time::{Instant, sleep};

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).expect("not zero")
}

#[tokio::test(start_paused = true)]
async fn a_failure_ratio_above_the_limit_stops_the_run() {
    let batch = Batch::builder()
        .concurrency(nz(1))
        .policy(ErrorPolicy::StopAboveRatio {
            max: 0.3,
            min_items: 10,
        })
        .build()
        .expect("valid settings");

    let run = batch.run(0..100u32, |index| async move {
        if index % 2 == 1 {
            Err("odd")
        } else {
            Ok(index)
        }
    });
    let error = run.finish().await.expect_err("half of the items fail");

    let Some(StopReason::FailureRatio { observed, max }) =
        error.report().and_then(|r| r.stop_reason()).cloned()
    else {
        panic!("stopped for another reason: {error:?}");
    };
    assert!((observed - 0.5).abs() < 1e-9 && (max - 0.3).abs() < 1e-9);
    assert_eq!(error.report().map(|report| report.total()), Some(10));
}

#[tokio::test(start_paused = true)]
async fn an_item_over_its_timeout_is_reported_timed_out() {
    let batch = Batch::builder()
        .item_timeout(Duration::from_millis(100))
        .build()
        .expect("valid settings");

    let run = batch.run([50u64, 200, 80], |ms| async move {
        sleep(Duration::from_millis(ms)).await;
        Ok::<_, Infallible>(ms)
    });
    let (results, finished) = run.collect_all().await;
    let report = finished
        .expect("collecting every outcome ends normally")
        .into_report();

    let slow = results
        .iter()
        .find(|result| result.index == 1)
        .expect("item 1 reported");
    assert_eq!(slow.outcome, Outcome::TimedOut);
    assert_eq!(slow.elapsed, Duration::from_millis(100));
    assert_eq!(
        (report.counts().succeeded, report.counts().timed_out),
        (2, 1)
    );
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_spaces_starts_whatever_the_concurrency() {
    let starts = Arc::new(Mutex::new(Vec::new()));
    let batch = Batch::builder()
        .concurrency(nz(10))
        .rate_limit(5.0)
        .build()
        .expect("valid");
    let origin = Instant::now();

    let recorder = Arc::clone(&starts);
    let run = batch.run(0..10u32, move |_| {
        recorder
            .lock()
            .expect("not poisoned")
            .push(origin.elapsed());
        async { Ok::<_, Infallible>(()) }
    });
    run.finish().await.expect("the run ends normally");

    let starts = starts.lock().expect("not poisoned");
    let expected: Vec<Duration> = (0..10).map(|k| Duration::from_millis(200 * k)).collect();
    assert_eq!(*starts, expected);
}

#[tokio::test(start_paused = true)]
async fn input_order_holds_with_uneven_durations_and_a_small_window() {
    let batch = Batch::builder()
        .concurrency(nz(4))
        .order(Order::Input { window: nz(6) })
        .build()
        .expect("valid settings");

    let run = batch.run(0..60u64, |index| async move {
        sleep(Duration::from_millis((index * 37) % 23 + 1)).await;
        Ok::<_, Infallible>(index)
    });
    let (results, finished) = run.collect_all().await;

    let indices: Vec<u64> = results.iter().map(|result| result.index).collect();
    assert_eq!(indices, (0..60).collect::<Vec<_>>());
    assert!(finished.expect("ends normally").report().is_complete());
}

#[tokio::test(start_paused = true)]
async fn keys_travel_with_results_and_problem_records() {
    let batch = Batch::builder().build().expect("valid settings");
    let run = batch.run_keyed(
        vec!["a.csv", "b.csv", "c.csv"],
        |path: &&str| (*path).to_owned(),
        |path| async move {
            if path == "b.csv" {
                Err("unreadable")
            } else {
                Ok(path.len())
            }
        },
    );

    let (results, finished) = run.collect_all().await;
    let report = finished.expect("ends normally").into_report();

    assert!(results.iter().all(|result| result.key.is_some()));
    let record = report.problem(1).expect("b.csv failed");
    assert_eq!(record.key.as_deref(), Some("b.csv"));
    assert_eq!(record.detail.as_deref(), Some("unreadable"));
}

#[tokio::test(start_paused = true)]
async fn progress_is_visible_while_the_run_goes_on() {
    let batch = Batch::builder()
        .concurrency(nz(4))
        .progress_interval(Duration::ZERO)
        .build()
        .expect("valid settings");
    let run = batch.run(0..20u32, |_| async {
        sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(())
    });
    let progress = run.progress();

    sleep(Duration::from_millis(150)).await;
    let snapshot = progress.snapshot();
    assert_eq!(
        (
            snapshot.started,
            snapshot.in_flight,
            snapshot.counts.succeeded
        ),
        (8, 4, 4)
    );
    assert_eq!(snapshot.total, Some(20));
    // Published when the first four ended, at 100 ms: 40 items/s, 16 to go.
    assert_eq!(snapshot.elapsed, Duration::from_millis(100));
    assert_eq!(snapshot.eta(), Some(Duration::from_millis(400)));

    run.finish().await.expect("ends normally");
    let last = progress.snapshot();
    assert!(last.done);
    assert_eq!(last.counts.succeeded, 20);
}

#[tokio::test(start_paused = true)]
async fn a_consumer_away_for_a_while_does_not_stall_the_workers() {
    let batch = Batch::builder()
        .concurrency(nz(4))
        .buffer(nz(16))
        .progress_interval(Duration::ZERO)
        .build()
        .expect("valid settings");
    let mut run = batch.run(0..100u32, |_| async {
        sleep(Duration::from_millis(10)).await;
        Ok::<_, Infallible>(())
    });

    sleep(Duration::from_secs(1)).await;
    let snapshot = run.progress().snapshot();

    // The buffer is full and the four items that ended after it are held back: the work
    // went on without the consumer, and stopped only at the bound.
    assert_eq!(snapshot.counts.succeeded, 20);
    assert_eq!((snapshot.started, snapshot.in_flight), (20, 0));
    let mut read = 0;
    while run.next().await.is_some() {
        read += 1;
    }
    assert_eq!(read, 100);
}

#[tokio::test(start_paused = true)]
async fn results_group_into_chunks_for_bulk_writes() {
    let batch = Batch::builder()
        .concurrency(nz(8))
        .build()
        .expect("valid settings");
    let run = batch.run(
        0..1_000u32,
        |index| async move { Ok::<_, Infallible>(index) },
    );

    let chunks: Vec<Vec<u32>> = run
        .filter_map(|result| async move { result.outcome.into_value() })
        .chunks_by(nz(100), Duration::from_millis(50))
        .collect()
        .await;

    assert_eq!(chunks.len(), 10);
    assert!(chunks.iter().all(|chunk| chunk.len() == 100));
}

#[tokio::test(start_paused = true)]
async fn chunking_a_run_keeps_its_report_reachable() {
    let batch = Batch::builder()
        .concurrency(nz(4))
        .build()
        .expect("valid settings");
    let run = batch.run(0..250u32, |index| async move {
        if index == 7 { Err("bad") } else { Ok(index) }
    });

    let mut chunks = run.chunks_by(nz(100), Duration::from_millis(50));
    let mut sizes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        sizes.push(chunk.len());
    }
    let report = chunks
        .into_inner()
        .finish()
        .await
        .expect("the run ends normally")
        .into_report();

    assert_eq!(sizes, vec![100, 100, 50]);
    assert_eq!(report.total(), 250);
    assert_eq!(report.outcome_of(7), Some(OutcomeKind::Failed));
}

#[test]
fn a_results_buffer_too_large_for_a_channel_fails_at_build() {
    let error = Batch::builder()
        .buffer(NonZeroUsize::MAX)
        .build()
        .expect_err("no channel holds that many results");

    assert_eq!(error, BuildError::Buffer(usize::MAX));
}

#[tokio::test(start_paused = true)]
async fn a_huge_reorder_window_does_not_overflow() {
    let batch = Batch::builder()
        .concurrency(nz(3))
        .order(Order::Input {
            window: NonZeroUsize::MAX,
        })
        .build()
        .expect("valid settings");
    let run = batch.run(0..20u64, |index| async move {
        sleep(Duration::from_millis(20 - index)).await;
        Ok::<_, Infallible>(index)
    });

    let (results, finished) = run.collect_all().await;

    let indices: Vec<u64> = results.iter().map(|result| result.index).collect();
    assert_eq!(indices, (0..20).collect::<Vec<_>>());
    let report = finished.expect("the run ends normally").into_report();
    assert_eq!(report.counts().succeeded, 20);
}

#[test]
fn bad_settings_fail_at_build_with_the_rule_named() {
    let error = Batch::builder()
        .rate_limit(-1.0)
        .build()
        .expect_err("negative rate");
    assert_eq!(error, BuildError::RateLimit(-1.0));
    assert_eq!(
        error.to_string(),
        "rate limit must be a finite number of items per second above zero, got -1"
    );

    let config = BatchConfig {
        item_timeout: Some(Duration::ZERO),
        ..BatchConfig::default()
    };
    assert!(matches!(Batch::new(config), Err(BuildError::ZeroTimeout)));
}

#[tokio::test(start_paused = true)]
async fn a_policy_stop_gives_running_items_the_stop_grace() {
    let batch = Batch::builder()
        .concurrency(nz(4))
        .policy(ErrorPolicy::StopOnFirst)
        .stop_grace(Duration::from_secs(1))
        .build()
        .expect("valid settings");

    let run = batch.run(0..20u64, |index| async move {
        sleep(Duration::from_millis(if index == 0 { 10 } else { 100 })).await;
        if index == 0 {
            Err("first fails")
        } else {
            Ok(())
        }
    });
    let error = run
        .finish()
        .await
        .expect_err("the first failure stops the run");

    assert!(matches!(
        &error,
        BatchError::Stopped {
            reason: StopReason::FirstFailure,
            ..
        }
    ));
    let report = error.report().expect("the report is inside");
    assert_eq!(report.outcome_of(0), Some(OutcomeKind::Failed));
    assert_eq!(
        (report.counts().succeeded, report.counts().cancelled),
        (3, 0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_key_function_marks_the_key_and_the_run_goes_on() {
    let batch = Batch::builder().build().expect("valid settings");
    let run = batch.run_keyed(
        0..3u32,
        |index: &u32| {
            assert!(*index != 1, "no key for {index}");
            index.to_string()
        },
        |index| async move { Ok::<_, Infallible>(index) },
    );

    let (results, finished) = run.collect_all().await;

    assert_eq!(
        finished.expect("ends normally").report().counts().succeeded,
        3
    );
    let odd = results
        .iter()
        .find(|result| result.index == 1)
        .expect("item 1 reported");
    assert_eq!(
        odd.key.as_deref(),
        Some("<key function panicked: no key for 1>")
    );
}

#[tokio::test(start_paused = true)]
async fn an_extremely_low_rate_saturates_instead_of_overflowing() {
    let token = steadfast_batch::CancellationToken::new();
    let batch = Batch::builder()
        .rate_limit(1e-300)
        .cancel(token.clone())
        .build()
        .expect("a tiny rate is still a rate");
    let run = batch.run(0..2u32, |index| async move { Ok::<_, Infallible>(index) });

    sleep(Duration::from_secs(3_600)).await;
    token.cancel();
    let finished = run.finish().await.expect("cancellation is not an error");

    assert_eq!(finished.report().counts().succeeded, 1);
    let rest: Vec<u32> = finished
        .into_remaining()
        .expect("input is left")
        .into_inner()
        .collect();
    assert_eq!(rest, vec![1]);
}

#[tokio::test(start_paused = true)]
async fn progress_can_be_watched_until_the_run_ends() {
    let batch = Batch::builder()
        .concurrency(nz(2))
        .progress_interval(Duration::from_millis(50))
        .build()
        .expect("valid settings");
    let run = batch.run(0..10u32, |_| async {
        sleep(Duration::from_millis(30)).await;
        Ok::<_, Infallible>(())
    });
    let mut watch = run.progress();
    let finishing = tokio::spawn(run.finish());

    let mut seen = Vec::new();
    while let Some(snapshot) = watch.changed().await {
        seen.push(snapshot);
    }
    finishing.await.expect("no panic").expect("ends normally");

    let last = seen.last().expect("at least the final snapshot");
    assert!(last.done);
    assert_eq!(last.counts.succeeded, 10);
    assert!(
        seen.len() >= 3,
        "updates while running, not only at the end: {}",
        seen.len()
    );
    assert!(
        seen.windows(2)
            .all(|pair| pair[0].ended() <= pair[1].ended())
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_input_stops_the_run_with_its_report() {
    let batch = Batch::builder()
        .concurrency(nz(2))
        .build()
        .expect("valid settings");
    let input = (0..10u32).inspect(|index| assert!(*index != 5, "input broke at {index}"));
    let run = batch.run(input, |index| async move { Ok::<_, Infallible>(index) });

    let error = run
        .finish()
        .await
        .expect_err("a broken input stops the run");

    let Some(StopReason::InputPanicked { message }) = error.report().and_then(|r| r.stop_reason())
    else {
        panic!("stopped for another reason: {error:?}");
    };
    assert_eq!(message, "input broke at 5");
    assert_eq!(
        error.report().map(|report| report.counts().succeeded),
        Some(5)
    );
    assert!(
        error
            .into_finished()
            .and_then(|finished| finished.into_remaining())
            .is_none()
    );
}
