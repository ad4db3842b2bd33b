//! BA-03: every input item is accounted for exactly once, whatever happens to it.

use std::collections::HashSet;
use std::num::{NonZeroU64, NonZeroUsize};
use std::time::Duration;

use futures::StreamExt;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use steadfast_batch::{
    Batch, BatchError, CancelMode, CancellationToken, ErrorPolicy, Order, OutcomeKind, StopReason,
};
use tokio::time::sleep;

/// What one item will do, with durations in units (1 ms on paused time, less on real time).
#[derive(Clone, Copy, Debug)]
enum Fate {
    Succeed(u32),
    Fail(u32),
    Panic(u32),
    Overrun,
}

/// The per-item timeout, in units.
const TIMEOUT: u32 = 50;

async fn play(fate: Fate, unit: Duration) -> Result<(), String> {
    match fate {
        Fate::Succeed(units) => {
            sleep(unit * units).await;
            Ok(())
        }
        Fate::Fail(units) => {
            sleep(unit * units).await;
            Err(format!("failed after {units} units"))
        }
        Fate::Panic(units) => {
            sleep(unit * units).await;
            panic!("panicked after {units} units");
        }
        Fate::Overrun => {
            sleep(unit * TIMEOUT * 2).await;
            Ok(())
        }
    }
}

fn fates(rng: &mut SmallRng, max_items: usize) -> Vec<Fate> {
    let count = rng.random_range(0..=max_items);
    (0..count)
        .map(|_| {
            let units = rng.random_range(1..20);
            match rng.random_range(0..100) {
                0..70 => Fate::Succeed(units),
                70..80 => Fate::Fail(units),
                80..90 => Fate::Panic(units),
                _ => Fate::Overrun,
            }
        })
        .collect()
}

/// One seeded run: random input, policy, window and cancellation; checks the accounting.
async fn one_run(seed: u64, unit: Duration, max_items: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let fates = fates(&mut rng, max_items);
    let count = fates.len() as u64;

    let skip_limit = rng.random_range(0..10);
    let policy = match rng.random_range(0..3) {
        0 => ErrorPolicy::CollectAll,
        1 => ErrorPolicy::StopOnFirst,
        _ => ErrorPolicy::SkipUpTo(skip_limit),
    };
    let ordered = rng.random_bool(0.5);
    let order = if ordered {
        Order::Input {
            window: NonZeroUsize::new(rng.random_range(1..32)).expect("not zero"),
        }
    } else {
        Order::Completion
    };
    let cancel_mode = if rng.random_bool(0.5) {
        CancelMode::Immediate
    } else {
        CancelMode::Graceful {
            grace: unit * rng.random_range(0..50),
        }
    };
    let cancel_at = rng
        .random_bool(0.3)
        .then(|| unit * rng.random_range(0..300));

    let token = CancellationToken::new();
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(rng.random_range(1..16)).expect("not zero"))
        .buffer(NonZeroUsize::new(rng.random_range(1..8)).expect("not zero"))
        .order(order)
        .policy(policy)
        .item_timeout(unit * TIMEOUT)
        .cancel_mode(cancel_mode)
        .stop_grace(unit * rng.random_range(0..30))
        .cancel(token.clone())
        .build()
        .expect("valid settings");
    if let Some(at) = cancel_at {
        tokio::spawn(async move {
            sleep(at).await;
            token.cancel();
        });
    }

    let mut run = batch.run(fates, move |fate| play(fate, unit));
    let mut seen = HashSet::new();
    let mut streamed = Vec::new();
    while let Some(result) = run.next().await {
        assert!(
            seen.insert(result.index),
            "seed {seed}: index {} twice",
            result.index
        );
        if ordered {
            assert_eq!(
                result.index,
                streamed.len() as u64,
                "seed {seed}: out of order"
            );
        }
        streamed.push((result.index, result.outcome.kind()));
    }

    let finished = match run.finish().await {
        Ok(finished) => finished,
        Err(BatchError::Stopped { reason, finished }) => {
            if let ErrorPolicy::SkipUpTo(limit) = policy {
                assert_eq!(reason, StopReason::SkipLimit { limit }, "seed {seed}");
                assert_eq!(finished.report().counts().skipped, limit, "seed {seed}");
            }
            *finished
        }
        Err(other) => panic!("seed {seed}: {other}"),
    };
    let report = finished.into_full_report().await;

    let counts = report.counts();
    let sum = counts.succeeded
        + counts.failed
        + counts.panicked
        + counts.timed_out
        + counts.skipped
        + counts.cancelled
        + counts.not_started;
    assert_eq!(sum, count, "seed {seed}: {counts:?}");

    let entries: Vec<(u64, OutcomeKind)> = report.entries().collect();
    let indices: Vec<u64> = entries.iter().map(|(index, _)| *index).collect();
    assert_eq!(
        indices,
        (0..count).collect::<Vec<_>>(),
        "seed {seed}: every index once"
    );
    for kind in [
        OutcomeKind::Succeeded,
        OutcomeKind::Skipped,
        OutcomeKind::NotStarted,
    ] {
        let listed = entries.iter().filter(|(_, listed)| *listed == kind).count() as u64;
        assert_eq!(listed, counts.of(kind), "seed {seed}: {kind:?}");
    }

    streamed.sort_unstable();
    let pulled: Vec<(u64, OutcomeKind)> = entries
        .into_iter()
        .filter(|(_, kind)| *kind != OutcomeKind::NotStarted)
        .collect();
    assert_eq!(
        streamed, pulled,
        "seed {seed}: the stream and the report agree"
    );
}

#[tokio::test(start_paused = true)]
async fn ba_03_every_item_is_accounted_for_once_over_1000_seeded_runs() {
    quiet_planned_panics();

    for seed in 0..1_000 {
        let run = one_run(seed, Duration::from_millis(1), 500);
        tokio::time::timeout(Duration::from_secs(600), run)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the run hangs"));
    }
}

/// The same property with items finishing on two worker threads in real time (units of
/// 100 µs, so each run lasts milliseconds): no interleaving may lose or repeat an item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ba_03_accounting_holds_with_real_threads_and_real_time() {
    quiet_planned_panics();

    for seed in 0..60 {
        let run = one_run(seed, Duration::from_micros(100), 80);
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: the run hangs"));
    }
}

/// Hundreds of items panic on purpose; keeps their messages out of the test output.
fn quiet_planned_panics() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let planned = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|message| message.starts_with("panicked after"));
        if !planned {
            default_hook(info);
        }
    }));
}

#[tokio::test(start_paused = true)]
async fn ba_03_going_over_the_skip_limit_ends_in_an_error_with_the_full_report() {
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(1).expect("one"))
        .policy(ErrorPolicy::SkipUpTo(2))
        .build()
        .expect("valid settings");

    let run = batch.run(0..20u64, |index| async move {
        sleep(Duration::from_millis(1)).await;
        if index % 3 == 2 {
            Err(format!("item {index} is bad"))
        } else {
            Ok(index)
        }
    });
    let (results, finished) = run.collect_all().await;
    let error = finished.expect_err("the third failure is one too many");

    assert!(matches!(
        &error,
        BatchError::Stopped {
            reason: StopReason::SkipLimit { limit: 2 },
            ..
        }
    ));
    assert_eq!(
        error.to_string(),
        "the batch stopped early: more items failed than the 2 the skip policy allows"
    );
    let report = error
        .into_finished()
        .expect("the report is inside")
        .into_full_report()
        .await;
    let counts = report.counts();
    assert_eq!((counts.succeeded, counts.skipped, counts.failed), (6, 2, 1));
    assert_eq!(counts.not_started, 11);
    assert_eq!(report.total(), 20);
    assert_eq!(report.outcome_of(2), Some(OutcomeKind::Skipped));
    assert_eq!(
        report.problem(2).and_then(|record| record.cause),
        Some(OutcomeKind::Failed)
    );
    assert_eq!(
        report.problem(2).and_then(|record| record.cause),
        Some(OutcomeKind::Failed)
    );
    assert_eq!(report.outcome_of(8), Some(OutcomeKind::Failed));
    assert_eq!(
        report
            .problem(8)
            .and_then(|record| record.detail.as_deref()),
        Some("item 8 is bad")
    );
    assert_eq!(results.len(), 9);
}

#[tokio::test(start_paused = true)]
async fn ba_03_stop_after_n_failures_counts_every_item() {
    let batch = Batch::builder()
        .concurrency(NonZeroUsize::new(1).expect("one"))
        .policy(ErrorPolicy::StopAfter(NonZeroU64::new(3).expect("three")))
        .build()
        .expect("valid settings");

    let run = batch.run(0..50u64, |index| async move {
        if index % 5 == 4 { Err("bad") } else { Ok(()) }
    });
    let error = run.finish().await.expect_err("three failures stop the run");

    assert!(matches!(
        &error,
        BatchError::Stopped {
            reason: StopReason::FailureCount { limit: 3 },
            ..
        }
    ));
    let report = error.report().expect("the report is inside");
    assert_eq!((report.counts().succeeded, report.counts().failed), (12, 3));
    assert_eq!(report.total(), 15);
}
