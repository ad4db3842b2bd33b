//! A second signal forces exit; a duplicate of the first does not (paused-time side of
//! SD-04; `signals.rs` sends real signals to a child process).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use steadfast_shutdown::{End, Outcome, Shutdown, Signal, Trigger};
use tokio::time::{Instant, sleep};

fn shutdown() -> Shutdown {
    Shutdown::builder()
        .signals(false)
        .drain_deadline(Duration::from_secs(60))
        .build()
        .expect("valid settings")
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_forces_an_immediate_exit() {
    let shutdown = shutdown();
    shutdown.spawn("stubborn", std::future::pending::<()>());
    shutdown.hook("close pool", || async {});
    let handle = shutdown.handle();

    handle.signal(Signal::Interrupt);
    let run = tokio::spawn(shutdown.run());
    sleep(Duration::from_secs(1)).await;
    let t1 = Instant::now();
    handle.signal(Signal::Interrupt);
    let report = run.await.expect("run");

    assert_eq!(
        t1.elapsed(),
        Duration::ZERO,
        "no waiting after the second signal"
    );
    assert_eq!(report.outcome(), Outcome::Interrupted(Signal::Interrupt));
    assert_eq!(report.exit_code(), 130);
    assert_eq!(report.forced().collect::<Vec<_>>(), ["stubborn"]);
    assert_eq!(
        report.record("close pool").map(|r| &r.end),
        Some(&End::Skipped)
    );
}

#[tokio::test(start_paused = true)]
async fn a_second_sigterm_exits_with_143() {
    let shutdown = shutdown();
    shutdown.spawn("stubborn", std::future::pending::<()>());
    let handle = shutdown.handle();

    handle.signal(Signal::Terminate);
    let run = tokio::spawn(shutdown.run());
    sleep(Duration::from_secs(1)).await;
    handle.signal(Signal::Terminate);

    assert_eq!(run.await.expect("run").exit_code(), 143);
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_signal_within_the_debounce_window_is_ignored() {
    let shutdown = shutdown();
    let stop = shutdown.token();
    shutdown.spawn("slow drain", async move {
        stop.cancelled().await;
        sleep(Duration::from_millis(500)).await;
    });
    let hook_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&hook_ran);
    shutdown.hook("write marker", move || async move {
        flag.store(true, Ordering::SeqCst)
    });
    let handle = shutdown.handle();

    let t0 = Instant::now();
    handle.signal(Signal::Interrupt);
    let run = tokio::spawn(shutdown.run());
    sleep(Duration::from_millis(5)).await;
    handle.signal(Signal::Interrupt);
    let report = run.await.expect("run");

    assert_eq!(t0.elapsed(), Duration::from_millis(500), "drained in full");
    assert!(hook_ran.load(Ordering::SeqCst));
    assert_eq!(report.trigger(), &Trigger::Signal(Signal::Interrupt));
    assert_eq!(report.outcome(), Outcome::Clean);
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_during_teardown_stops_the_hung_step_and_skips_the_rest() {
    let shutdown = shutdown();
    shutdown.hook("close pool", || async {});
    shutdown.hook_with_timeout("flush", Duration::from_secs(30), || {
        std::future::pending::<()>()
    });
    let handle = shutdown.handle();

    handle.signal(Signal::Terminate);
    let run = tokio::spawn(shutdown.run());
    sleep(Duration::from_secs(1)).await;
    handle.signal(Signal::Terminate);
    let report = run.await.expect("run");

    assert_eq!(report.record("flush").map(|r| &r.end), Some(&End::Forced));
    assert_eq!(
        report.record("close pool").map(|r| &r.end),
        Some(&End::Skipped)
    );
    assert_eq!(report.exit_code(), 143);
}

#[tokio::test(start_paused = true)]
async fn a_signal_after_a_programmatic_trigger_is_the_first_signal_not_a_second() {
    let shutdown = shutdown();
    let stop = shutdown.token();
    shutdown.spawn("slow drain", async move {
        stop.cancelled().await;
        sleep(Duration::from_secs(2)).await;
    });
    let handle = shutdown.handle();

    handle.trigger();
    let run = tokio::spawn(shutdown.run());
    sleep(Duration::from_secs(1)).await;
    handle.signal(Signal::Terminate);
    let report = run.await.expect("run");

    assert_eq!(report.trigger(), &Trigger::Requested);
    assert_eq!(report.outcome(), Outcome::Clean);
}
