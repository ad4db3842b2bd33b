//! Cancellation mid-run accounts for every item and hands back the rest of the input.

use std::convert::Infallible;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use steadfast_batch::{Batch, CancelMode, CancellationToken, OutcomeKind, StopReason};
use tokio::time::{Instant, sleep};

/// 100 ms of work that returns its input.
async fn slow(index: u32) -> Result<u32, Infallible> {
    sleep(Duration::from_millis(100)).await;
    Ok(index)
}

fn batch(mode: CancelMode, token: &CancellationToken) -> Batch {
    Batch::builder()
        .concurrency(NonZeroUsize::new(5).expect("five"))
        .cancel_mode(mode)
        .cancel(token.clone())
        .build()
        .expect("valid settings")
}

fn cancel_after(token: &CancellationToken, after: Duration) {
    let token = token.clone();
    tokio::spawn(async move {
        sleep(after).await;
        token.cancel();
    });
}

#[tokio::test(start_paused = true)]
async fn graceful_cancellation_lets_running_items_finish_and_hands_back_the_rest() {
    let token = CancellationToken::new();
    let run = batch(
        CancelMode::Graceful {
            grace: Duration::from_secs(1),
        },
        &token,
    )
    .run(0..50u32, slow);
    cancel_after(&token, Duration::from_millis(250));

    let (results, finished) = run.collect_all().await;
    let (report, remaining) = finished.expect("cancellation is not an error").into_parts();

    assert_eq!(results.len(), 15);
    assert!(results.iter().all(|result| result.outcome.is_success()));
    assert_eq!(report.stop_reason(), Some(&StopReason::Cancelled));
    assert_eq!(report.counts().succeeded, 15);
    assert!(!report.input_exhausted());
    let rest: Vec<u32> = remaining.expect("input is left").into_inner().collect();
    assert_eq!(rest, (15..50).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_grace_period_that_runs_out_cancels_the_items_still_running() {
    let token = CancellationToken::new();
    let start = Instant::now();
    let run = batch(
        CancelMode::Graceful {
            grace: Duration::from_millis(20),
        },
        &token,
    )
    .run(0..50u32, slow);
    cancel_after(&token, Duration::from_millis(250));

    let report = run
        .finish()
        .await
        .expect("cancellation is not an error")
        .into_full_report()
        .await;

    assert_eq!(start.elapsed(), Duration::from_millis(270));
    let counts = report.counts();
    assert_eq!(
        (counts.succeeded, counts.cancelled, counts.not_started),
        (10, 5, 35)
    );
    assert_eq!(report.total(), 50);
    assert_eq!(report.outcome_of(14), Some(OutcomeKind::Cancelled));
}

#[tokio::test(start_paused = true)]
async fn immediate_cancellation_aborts_running_items_at_once() {
    let token = CancellationToken::new();
    let finished_work = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&finished_work);
    let run = batch(CancelMode::Immediate, &token).run(0..50u32, move |index| {
        let counter = Arc::clone(&counter);
        async move {
            let value = slow(index).await;
            counter.fetch_add(1, Ordering::SeqCst);
            value
        }
    });
    cancel_after(&token, Duration::from_millis(250));

    let (results, finished) = run.collect_all().await;
    let report = finished
        .expect("cancellation is not an error")
        .into_report();

    assert_eq!(report.counts().succeeded, 10);
    assert_eq!(report.counts().cancelled, 5);
    assert_eq!(
        results
            .iter()
            .filter(|result| result.outcome.kind() == OutcomeKind::Cancelled)
            .count(),
        5
    );
    sleep(Duration::from_secs(1)).await;
    assert_eq!(
        finished_work.load(Ordering::SeqCst),
        10,
        "aborted items never finish"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_run_resumes_from_the_handed_back_input() {
    let token = CancellationToken::new();
    let first = batch(
        CancelMode::Graceful {
            grace: Duration::from_secs(1),
        },
        &token,
    )
    .run(0..50u32, slow);
    cancel_after(&token, Duration::from_millis(150));
    let (mut values, finished) = collect_values(first).await;
    let rest = finished
        .into_remaining()
        .expect("input is left")
        .into_inner();

    let second = batch(CancelMode::Immediate, &CancellationToken::new()).run(rest, slow);
    let (more, finished) = collect_values(second).await;
    values.extend(more);
    values.sort_unstable();

    assert_eq!(values, (0..50).collect::<Vec<_>>());
    assert!(finished.report().is_complete());
}

async fn collect_values<S>(
    run: steadfast_batch::BatchRun<S, u32, Infallible>,
) -> (Vec<u32>, steadfast_batch::Finished<S>) {
    let (results, finished) = run.collect_all().await;
    let values = results
        .into_iter()
        .filter_map(|result| result.outcome.into_value())
        .collect();
    (values, finished.expect("the run ends normally"))
}

#[tokio::test(start_paused = true)]
async fn cancelling_one_run_leaves_the_parent_token_alone() {
    let parent = CancellationToken::new();
    let batch = batch(CancelMode::Immediate, &parent);
    let run = batch.run(0..10u32, slow);

    run.cancel();
    let report = run
        .finish()
        .await
        .expect("cancellation is not an error")
        .into_report();

    assert_eq!(report.stop_reason(), Some(&StopReason::Cancelled));
    assert!(!parent.is_cancelled());
    let again = batch
        .run(0..3u32, slow)
        .finish()
        .await
        .expect("a fresh run works");
    assert_eq!(again.report().counts().succeeded, 3);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_aborts_its_items() {
    let finished_work = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&finished_work);
    let batch = Batch::builder().build().expect("valid settings");
    let mut run = batch.run(0..100u32, move |index| {
        let counter = Arc::clone(&counter);
        async move {
            let value = slow(index).await;
            counter.fetch_add(1, Ordering::SeqCst);
            value
        }
    });

    let first = run.next().await.expect("one result");
    assert_eq!(first.outcome.kind(), OutcomeKind::Succeeded);
    drop(run);
    sleep(Duration::from_secs(5)).await;

    assert_eq!(
        finished_work.load(Ordering::SeqCst),
        16,
        "only the first 16 ever finished"
    );
}

#[tokio::test(start_paused = true)]
async fn cancellation_while_waiting_for_a_slow_input_stream_ends_the_run() {
    let token = CancellationToken::new();
    let input = futures::stream::iter(0..10u32).then(|index| async move {
        sleep(Duration::from_secs(60)).await;
        index
    });
    let run = batch(CancelMode::Immediate, &token).run_stream(Box::pin(input), slow);
    cancel_after(&token, Duration::from_millis(10));

    let finished = run.finish().await.expect("cancellation is not an error");

    assert_eq!(finished.report().total(), 0);
    assert!(finished.into_remaining().is_some());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_mid_way_still_accounts_for_every_started_item_in_progress() {
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(4).expect("four"))
        .build()
        .expect("valid settings");
    let mut run = batch.run(0..100u32, |index| async move {
        sleep(Duration::from_millis(10)).await;
        Ok::<_, Infallible>(index)
    });
    let progress = run.progress();

    for _ in 0..10 {
        run.next().await.expect("a result");
    }
    drop(run);
    let mut watch = progress.clone().into_receiver();
    watch
        .wait_for(|snapshot| snapshot.done)
        .await
        .expect("the run publishes its end");

    let last = progress.snapshot();
    assert_eq!(last.in_flight, 0);
    assert!(last.counts.cancelled > 0, "{last:?}");
    assert_eq!(last.ended(), last.started, "{last:?}");
}
