//! Teardown: hooks and stages in reverse order, each bounded by its own timeout (SD-06).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast_shutdown::{CancellationToken, End, Kind, Outcome, Record, Shutdown};
use tokio::time::{Instant, sleep};

fn shutdown() -> Shutdown {
    Shutdown::builder()
        .signals(false)
        .step_timeout(Duration::from_secs(1))
        .build()
        .expect("valid settings")
}

fn teardown_order(
    records: impl Iterator<Item = impl std::ops::Deref<Target = Record>>,
) -> Vec<(String, End)> {
    records
        .map(|record| (record.name.clone(), record.end.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn hooks_run_in_reverse_order_of_registration() {
    let shutdown = shutdown();
    let ran = Arc::new(Mutex::new(Vec::new()));
    for name in ["first", "second", "third"] {
        let ran = Arc::clone(&ran);
        shutdown.hook(name, move || async move {
            ran.lock().expect("lock").push(name);
        });
    }

    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(*ran.lock().expect("lock"), ["third", "second", "first"]);
    let names: Vec<&str> = report
        .teardown()
        .map(|record| record.name.as_str())
        .collect();
    assert_eq!(names, ["third", "second", "first"]);
    assert_eq!(report.outcome(), Outcome::Clean);
}

#[tokio::test(start_paused = true)]
async fn a_hung_hook_is_bounded_and_the_rest_still_run() {
    let shutdown = shutdown();
    let first_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&first_ran);
    shutdown.hook("close pool", move || async move {
        flag.store(true, Ordering::SeqCst)
    });
    shutdown.hook_with_timeout("flush metrics", Duration::from_secs(2), || {
        std::future::pending::<()>()
    });
    shutdown.hook("stop tracing", || async {});

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(2),
        "only the hung hook's own timeout"
    );
    assert!(
        first_ran.load(Ordering::SeqCst),
        "the hook registered first still ran"
    );
    assert_eq!(
        teardown_order(report.teardown()),
        [
            ("stop tracing".to_owned(), End::Completed),
            ("flush metrics".to_owned(), End::Forced),
            ("close pool".to_owned(), End::Completed),
        ]
    );
    assert_eq!(report.outcome(), Outcome::Forced);
}

#[tokio::test(start_paused = true)]
async fn a_failing_or_panicking_hook_is_reported_and_makes_the_exit_non_zero() {
    let shutdown = shutdown();
    shutdown.hook("panics", || async {
        let blown_up = true;
        assert!(!blown_up, "hook blew up");
    });
    shutdown.hook("fails", || async {
        Err::<(), _>(std::io::Error::other("disk full"))
    });

    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(
        report.record("fails").map(|r| &r.end),
        Some(&End::Failed("disk full".to_owned()))
    );
    let panicked = End::Panicked("hook blew up".to_owned());
    assert_eq!(report.record("panics").map(|r| &r.end), Some(&panicked));
    assert_eq!(report.outcome(), Outcome::Panicked);
    assert_eq!(report.exit_code(), 70);
}

/// Shared liveness of the three SD-06 stages and what each saw.
#[derive(Default)]
struct World {
    db_up: AtomicBool,
    cache_up: AtomicBool,
    stopped: Mutex<Vec<&'static str>>,
    violations: Mutex<Vec<String>>,
}

impl World {
    fn expect_up(&self, who: &str, flag: &AtomicBool, dependency: &str) {
        if !flag.load(Ordering::SeqCst) {
            let seen = format!("{who} saw {dependency} gone while running");
            self.violations.lock().expect("lock").push(seen);
        }
    }

    fn stopped(&self, who: &'static str) {
        self.stopped.lock().expect("lock").push(who);
    }
}

/// Starts `db_pool`, `cache_refresher` and `http` in that order; each checks every 100 ms
/// that what it depends on is still up.
fn start_stages(shutdown: &Shutdown, world: &Arc<World>, stubborn_cache: bool) {
    let db = Arc::clone(world);
    shutdown.stage("db_pool", move |stop: CancellationToken| async move {
        db.db_up.store(true, Ordering::SeqCst);
        stop.cancelled().await;
        db.db_up.store(false, Ordering::SeqCst);
        db.stopped("db_pool");
    });

    let cache = Arc::clone(world);
    shutdown.stage(
        "cache_refresher",
        move |stop: CancellationToken| async move {
            cache.cache_up.store(true, Ordering::SeqCst);
            loop {
                cache.expect_up("cache_refresher", &cache.db_up, "db_pool");
                tokio::select! {
                    () = stop.cancelled(), if !stubborn_cache => break,
                    () = sleep(Duration::from_millis(100)) => {}
                }
            }
            cache.cache_up.store(false, Ordering::SeqCst);
            cache.stopped("cache_refresher");
        },
    );

    let http = Arc::clone(world);
    shutdown.stage("http", move |stop: CancellationToken| async move {
        loop {
            http.expect_up("http", &http.db_up, "db_pool");
            http.expect_up("http", &http.cache_up, "cache_refresher");
            tokio::select! {
                () = stop.cancelled() => break,
                () = sleep(Duration::from_millis(100)) => {}
            }
        }
        http.stopped("http");
    });
}

#[tokio::test(start_paused = true)]
async fn a_hook_that_panics_before_returning_its_future_is_reported_and_the_rest_still_run() {
    let shutdown = shutdown();
    let first_ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&first_ran);
    shutdown.hook("close pool", move || async move {
        flag.store(true, Ordering::SeqCst)
    });
    shutdown.hook("build flush", || -> std::future::Ready<()> {
        let blown_up = true;
        assert!(!blown_up, "hook blew up before its future");
        std::future::ready(())
    });

    shutdown.trigger();
    let report = shutdown.run().await;

    let panicked = End::Panicked("hook blew up before its future".to_owned());
    assert_eq!(
        report.record("build flush").map(|r| &r.end),
        Some(&panicked)
    );
    assert!(first_ran.load(Ordering::SeqCst), "the next hook still ran");
    assert_eq!(
        report.record("close pool").map(|r| &r.end),
        Some(&End::Completed)
    );
    assert_eq!(report.exit_code(), 70);
}

#[tokio::test(start_paused = true)]
async fn a_hook_registered_during_teardown_still_runs_in_reverse_order() {
    let shutdown = shutdown();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let first = Arc::clone(&ran);
    shutdown.hook("first", move || async move {
        first.lock().expect("lock").push("first");
    });
    let (handle, second) = (shutdown.handle(), Arc::clone(&ran));
    shutdown.hook("second", move || async move {
        second.lock().expect("lock").push("second");
        let late = Arc::clone(&second);
        handle.hook("late", move || async move {
            late.lock().expect("lock").push("late");
        });
    });

    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(*ran.lock().expect("lock"), ["second", "late", "first"]);
    let names: Vec<&str> = report.teardown().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["second", "late", "first"]);
    assert_eq!(report.outcome(), Outcome::Clean);
}

#[tokio::test(start_paused = true)]
async fn sd_06_stages_stop_in_reverse_start_order() {
    let shutdown = shutdown();
    let world = Arc::new(World::default());
    start_stages(&shutdown, &world, false);
    sleep(Duration::from_secs(1)).await;

    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(
        *world.stopped.lock().expect("lock"),
        ["http", "cache_refresher", "db_pool"]
    );
    assert!(
        world.violations.lock().expect("lock").is_empty(),
        "{:?}",
        world.violations
    );
    let order = teardown_order(report.teardown());
    let names: Vec<&str> = order.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["http", "cache_refresher", "db_pool"]);
    assert!(
        report
            .teardown()
            .all(|r| r.kind == Kind::Stage && r.end == End::Completed)
    );
    assert_eq!(report.outcome(), Outcome::Clean);
}

#[tokio::test(start_paused = true)]
async fn sd_06_a_stuck_stage_is_aborted_and_the_rest_still_stop_in_turn() {
    let shutdown = shutdown();
    let world = Arc::new(World::default());
    start_stages(&shutdown, &world, true);
    sleep(Duration::from_secs(1)).await;

    let t0 = Instant::now();
    shutdown.trigger();
    let report = shutdown.run().await;

    assert_eq!(
        t0.elapsed(),
        Duration::from_secs(1),
        "the stuck stage got its 1 s, no more"
    );
    assert_eq!(*world.stopped.lock().expect("lock"), ["http", "db_pool"]);
    assert!(
        world.violations.lock().expect("lock").is_empty(),
        "{:?}",
        world.violations
    );
    assert_eq!(
        teardown_order(report.teardown()),
        [
            ("http".to_owned(), End::Completed),
            ("cache_refresher".to_owned(), End::Forced),
            ("db_pool".to_owned(), End::Completed),
        ]
    );
    assert_eq!(report.outcome(), Outcome::Forced);
}

#[tokio::test(start_paused = true)]
async fn a_stage_that_dies_early_triggers_the_shutdown() {
    let shutdown = shutdown();
    shutdown.stage("db_pool", |_stop: CancellationToken| async {
        sleep(Duration::from_millis(50)).await;
        Err::<(), _>(std::io::Error::other("pool exhausted"))
    });

    let report = shutdown.run().await;

    assert_eq!(report.outcome(), Outcome::Failed);
    let record = report.record("db_pool").expect("named");
    assert_eq!(record.end, End::Failed("pool exhausted".to_owned()));
}
