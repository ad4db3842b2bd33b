//! The drain: it waits for in-flight work, and no longer than the deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use steadfast_shutdown::{End, Kind, Outcome, Phase, Shutdown, Trigger};
use tokio::time::{Instant, sleep};

fn shutdown(deadline: Duration) -> Shutdown {
    Shutdown::builder()
        .signals(false)
        .drain_deadline(deadline)
        .build()
        .expect("valid settings")
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_in_flight_work() {
    let shutdown = shutdown(Duration::from_secs(5));
    let finished = Arc::new(AtomicBool::new(false));
    let stop = shutdown.token();
    let flag = Arc::clone(&finished);
    shutdown.spawn("writer", async move {
        stop.cancelled().await;
        sleep(Duration::from_secs(2)).await;
        flag.store(true, Ordering::SeqCst);
    });

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert!(
        finished.load(Ordering::SeqCst),
        "the writer finished its work"
    );
    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(2),
        "waited exactly as long as the work"
    );
    assert_eq!(report.outcome(), Outcome::Clean, "{report}");
    assert_eq!(report.trigger(), &Trigger::Requested);
    assert_eq!(report.forced().count(), 0);
    let drain = report
        .phases()
        .iter()
        .find(|(phase, _)| *phase == Phase::Drain);
    assert_eq!(drain, Some(&(Phase::Drain, Duration::from_secs(2))));
}

#[tokio::test(start_paused = true)]
async fn drain_stops_at_the_deadline() {
    let shutdown = shutdown(Duration::from_secs(1));
    shutdown.spawn("quick", async {});
    shutdown.spawn("stubborn", sleep(Duration::from_secs(60)));

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "no longer than the deadline"
    );
    assert_eq!(report.outcome(), Outcome::Forced);
    assert_eq!(report.exit_code(), 1);
    assert_eq!(report.forced().collect::<Vec<_>>(), ["stubborn"]);
    let record = report.record("stubborn").expect("named in the report");
    assert_eq!((record.kind, &record.end), (Kind::Task, &End::Forced));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_counts_from_the_trigger_including_the_delay() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_delay(Duration::from_millis(400))
        .drain_deadline(Duration::from_secs(1))
        .build()
        .expect("valid settings");
    shutdown.spawn("stubborn", sleep(Duration::from_secs(60)));

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(t0.elapsed(), Duration::from_secs(1));
    let phases: Vec<Phase> = report.phases().iter().map(|(phase, _)| *phase).collect();
    assert_eq!(
        phases,
        [Phase::Delay, Phase::Drain, Phase::Cancel, Phase::Teardown]
    );
}

#[tokio::test(start_paused = true)]
async fn a_work_guard_holds_the_drain_until_dropped() {
    let shutdown = shutdown(Duration::from_secs(10));
    let guard = shutdown.track("upload 42");
    tokio::spawn(async move {
        sleep(Duration::from_secs(3)).await;
        drop(guard);
    });

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(report.outcome(), Outcome::Clean);
}

#[tokio::test(start_paused = true)]
async fn blocking_work_left_at_the_deadline_is_reported_as_abandoned() {
    let shutdown = shutdown(Duration::from_secs(1));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let lookup = shutdown.spawn_blocking("dns lookup", move || released.recv().is_ok());

    shutdown.trigger();
    let run = tokio::spawn(shutdown.run());
    // Running blocking work keeps paused time from advancing by itself.
    tokio::time::advance(Duration::from_secs(1)).await;
    let report = run.await.expect("run");

    let record = report.record("dns lookup").expect("named in the report");
    assert_eq!(
        (record.kind, &record.end),
        (Kind::Blocking, &End::Abandoned)
    );
    assert_eq!(report.outcome(), Outcome::Forced);
    assert!(
        report
            .to_string()
            .contains("blocking work `dns lookup` was abandoned")
    );

    release.send(()).expect("still waiting");
    assert!(
        lookup.await.expect("no panic"),
        "the work itself was never cut"
    );
}

#[tokio::test(start_paused = true)]
async fn readiness_can_start_false_and_never_comes_back_after_the_trigger() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .starts_ready(false)
        .build()
        .expect("valid settings");
    let readiness = shutdown.readiness();
    assert!(!readiness.is_ready());

    shutdown.mark_ready();
    assert!(readiness.is_ready());

    assert!(shutdown.trigger(), "the first trigger starts the shutdown");
    assert!(!shutdown.trigger(), "a second one changes nothing");
    shutdown.mark_ready();
    assert!(
        !readiness.is_ready(),
        "a shutdown in progress stays not ready"
    );
}

#[tokio::test(start_paused = true)]
async fn the_token_is_cancelled_only_after_the_drain_delay() {
    let shutdown = Shutdown::builder()
        .signals(false)
        .drain_delay(Duration::from_millis(500))
        .build()
        .expect("valid settings");
    let token = shutdown.token();
    let handle = shutdown.handle();

    let t0 = Instant::now();
    shutdown.trigger();
    let run = tokio::spawn(shutdown.run());
    handle.triggered().await;
    assert!(handle.is_triggered() && !handle.is_draining());

    token.cancelled().await;
    assert_eq!(t0.elapsed(), Duration::from_millis(500));
    assert!(handle.is_draining());
    assert_eq!(run.await.expect("run").outcome(), Outcome::Clean);
}

#[tokio::test(start_paused = true)]
async fn blocking_work_that_finishes_in_time_is_waited_for() {
    let shutdown = shutdown(Duration::from_secs(5));
    let (release, released) = std::sync::mpsc::channel::<()>();
    let work = shutdown.spawn_blocking("compress log", move || released.recv().is_ok());

    shutdown.trigger();
    let run = tokio::spawn(shutdown.run());
    // Running blocking work keeps paused time from advancing by itself.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(
        !run.is_finished(),
        "two seconds in, the drain still waits for the work"
    );

    release.send(()).expect("still waiting");
    assert!(work.await.expect("no panic"));
    let report = run.await.expect("run");
    assert_eq!(report.outcome(), Outcome::Clean, "{report}");
}
