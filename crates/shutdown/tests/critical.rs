//! SD-05: a failed, panicked or vanished critical task brings the service down loudly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use steadfast_shutdown::{End, ExitCodes, Outcome, Report, Shutdown, Trigger};
use tokio::time::{Instant, sleep};

#[derive(Debug, thiserror::Error)]
#[error("event stream closed")]
struct StreamClosed;

/// Starts subsystems A (built by `a`), B and C, waits for the shutdown A causes, and checks
/// what all cases share: it starts at 100 ms, readiness flips then, B and C are cancelled
/// and finish.
async fn run_with_a<F>(codes: ExitCodes, a: impl FnOnce() -> F) -> Report
where
    F: std::future::Future<Output = Result<(), StreamClosed>> + Send + 'static,
{
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_deadline(Duration::from_secs(5))
        .exit_codes(codes)
        .build()
        .expect("valid settings");
    let readiness = shutdown.readiness();
    let finished = Arc::new(AtomicUsize::new(0));
    for name in ["B", "C"] {
        let stop = shutdown.token();
        let finished = Arc::clone(&finished);
        shutdown.spawn(name, async move {
            stop.cancelled().await;
            finished.fetch_add(1, Ordering::SeqCst);
        });
    }
    shutdown.spawn_critical("A", a());

    let t0 = Instant::now();
    let run = tokio::spawn(shutdown.run());
    readiness.not_ready().await;
    assert_eq!(
        t0.elapsed(),
        Duration::from_millis(100),
        "shutdown starts when A ends"
    );

    let report = run.await.expect("run");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        2,
        "B and C were cancelled and finished"
    );
    assert_eq!(report.forced().count(), 0, "{report}");
    report
}

#[tokio::test(start_paused = true)]
async fn sd_05_a_failing_critical_task_exits_with_the_error_code() {
    let report = run_with_a(ExitCodes::default(), || async {
        sleep(Duration::from_millis(100)).await;
        Err(StreamClosed)
    })
    .await;

    let failed = End::Failed("event stream closed".to_owned());
    assert_eq!(
        report.trigger(),
        &Trigger::Task {
            name: "A".to_owned(),
            end: failed
        }
    );
    assert_eq!(report.outcome(), Outcome::Failed);
    assert_eq!(report.exit_code(), 1);
}

#[tokio::test(start_paused = true)]
async fn sd_05_a_panicking_critical_task_exits_with_the_panic_code() {
    let report = run_with_a(ExitCodes::default(), || async {
        sleep(Duration::from_millis(100)).await;
        panic!("index out of range in event loop");
    })
    .await;

    let panicked = End::Panicked("index out of range in event loop".to_owned());
    assert_eq!(
        report.trigger(),
        &Trigger::Task {
            name: "A".to_owned(),
            end: panicked
        }
    );
    assert_eq!(report.outcome(), Outcome::Panicked);
    assert_eq!(report.exit_code(), 70);
}

#[tokio::test(start_paused = true)]
async fn sd_05_a_critical_task_ending_on_its_own_is_a_failure() {
    let report = run_with_a(ExitCodes::default(), || async {
        sleep(Duration::from_millis(100)).await;
        Ok(())
    })
    .await;

    assert_eq!(
        report.trigger(),
        &Trigger::Task {
            name: "A".to_owned(),
            end: End::Completed
        }
    );
    assert_eq!(report.outcome(), Outcome::Failed);
    assert_eq!(report.exit_code(), 1);
    assert!(
        report
            .to_string()
            .contains("critical task `A` ended on its own"),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn sd_05_exit_codes_are_configurable() {
    let codes = ExitCodes {
        error: 3,
        panic: 4,
        ..ExitCodes::default()
    };
    let report = run_with_a(codes, || async {
        sleep(Duration::from_millis(100)).await;
        panic!("boom");
    })
    .await;
    assert_eq!(report.exit_code(), 4);

    let report = run_with_a(codes, || async {
        sleep(Duration::from_millis(100)).await;
        Err(StreamClosed)
    })
    .await;
    assert_eq!(report.exit_code(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_failing_plain_task_is_reported_but_does_not_stop_the_service() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .build()
        .expect("valid settings");
    shutdown.spawn("import", async { Err::<(), _>(StreamClosed) });
    sleep(Duration::from_secs(1)).await;
    assert!(!shutdown.is_triggered());

    shutdown.trigger();
    let report = shutdown.run().await;
    assert_eq!(report.outcome(), Outcome::Clean);
    let record = report.record("import").expect("the failure is not lost");
    assert_eq!(record.end, End::Failed("event stream closed".to_owned()));
}
