//! Durable periodic jobs on PostgreSQL: one insertion per slot however many
//! schedulers run, and the catch-up policies after downtime. The store's
//! clock is a `ManualClock` here, so minutes pass on demand.

#![cfg(feature = "postgres")]

mod postgres_support;

use std::time::Duration;

use steadfast_jobqueue::periodic::{CatchUp, PeriodicScheduler};
use steadfast_jobqueue::{JSON_CODEC, JobState, ListFilter, ManualClock, NewJob, Store, Timestamp};

const MINUTE: i64 = 60_000;

/// 2026-01-01 00:00:30 UTC: half a minute past a slot of every schedule.
fn start() -> Timestamp {
    Timestamp::from_millis(20_454 * 24 * 60 * MINUTE + 30_000)
}

fn report() -> NewJob {
    NewJob::raw("report", JSON_CODEC, b"{}".to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_slots_are_inserted_once_however_many_schedulers_run() {
    let Some(db) = postgres_support::database("periodic_once") else {
        return;
    };
    let clock = ManualClock::new(start());
    let mut schedulers = Vec::new();
    for _ in 0..3 {
        // Each scheduler has a pool of its own, as separate processes would.
        let store = db
            .builder()
            .test_clock(clock.clone())
            .connect()
            .await
            .unwrap();
        let scheduler = PeriodicScheduler::builder(store)
            .schedule("every-minute", "* * * * *", report())
            .build()
            .unwrap();
        schedulers.push(std::sync::Arc::new(scheduler));
    }

    for round in 0..6 {
        let ticks: Vec<_> = schedulers
            .iter()
            .map(|s| {
                let s = std::sync::Arc::clone(s);
                tokio::spawn(async move { s.tick().await })
            })
            .collect();
        let mut inserted = 0;
        for tick in ticks {
            inserted += tick.await.unwrap().unwrap().len();
        }
        assert_eq!(inserted, 1, "round {round}: one insertion per slot");
        clock.advance(Duration::from_secs(60));
    }

    let store = db.store().await;
    let jobs = store.list(&ListFilter::default()).await.unwrap();
    assert_eq!(jobs.len(), 6);
    let mut slots: Vec<i64> = jobs.iter().map(|j| j.run_at.as_millis()).collect();
    slots.dedup();
    assert_eq!(slots.len(), 6, "one job per slot");
    assert_eq!(
        slots[0],
        start().as_millis() - 30_000,
        "the first slot is on the minute"
    );
    assert!(slots.windows(2).all(|w| w[1] - w[0] == MINUTE));
    assert!(jobs.iter().all(|j| {
        j.unique_key
            .as_deref()
            .is_some_and(|k| k.starts_with("periodic:every-minute:"))
    }));
    store.close().await;
    db.cleanup();
}

#[tokio::test]
async fn after_downtime_each_catch_up_policy_inserts_what_it_states() {
    let Some(db) = postgres_support::database("periodic_catch_up") else {
        return;
    };
    let clock = ManualClock::new(start());
    let store = db
        .builder()
        .test_clock(clock.clone())
        .connect()
        .await
        .unwrap();
    let scheduler = PeriodicScheduler::builder(store.clone())
        .schedule("latest", "* * * * *", report().queue("latest"))
        .catch_up(CatchUp::All { max: 3 })
        .schedule("all", "* * * * *", report().queue("all"))
        .catch_up(CatchUp::Skip)
        .schedule("skip", "*/4 * * * *", report().queue("skip"))
        .build()
        .unwrap();
    let count = |inserted: &[(String, steadfast_jobqueue::JobId)], name: &str| {
        inserted.iter().filter(|(n, _)| n == name).count()
    };

    // On time: every schedule inserts the slot of 00:00.
    let inserted = scheduler.tick().await.unwrap();
    assert_eq!(
        [
            count(&inserted, "latest"),
            count(&inserted, "all"),
            count(&inserted, "skip")
        ],
        [1, 1, 1]
    );

    // Ten minutes of downtime, then a start at 00:10:30.
    clock.advance(Duration::from_secs(600));
    let inserted = scheduler.tick().await.unwrap();
    assert_eq!(count(&inserted, "latest"), 1, "only the latest missed slot");
    assert_eq!(count(&inserted, "all"), 3, "the three latest missed slots");
    assert_eq!(count(&inserted, "skip"), 0, "00:04 and 00:08 are skipped");
    let latest = store
        .list(&ListFilter::default().queue("latest"))
        .await
        .unwrap();
    assert_eq!(
        latest.last().map(|j| j.run_at.as_millis()),
        Some(start().as_millis() - 30_000 + 10 * MINUTE)
    );
    assert_eq!(latest.last().map(|j| j.state), Some(JobState::Available));

    // The same moment again inserts nothing more.
    assert!(scheduler.tick().await.unwrap().is_empty());

    // Skip resumes with the next slot once it is on time (00:12).
    clock.advance(Duration::from_secs(120));
    let inserted = scheduler.tick().await.unwrap();
    assert_eq!(count(&inserted, "skip"), 1);
    assert_eq!(count(&inserted, "latest"), 1);

    store.close().await;
    db.cleanup();
}

#[tokio::test]
async fn a_malformed_schedule_is_refused_at_build() {
    let Some(db) = postgres_support::database("periodic_bad") else {
        return;
    };
    let store = db.store().await;
    let err = PeriodicScheduler::builder(store.clone())
        .schedule("bad", "61 * * * *", report())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("minute"), "{err}");
    store.close().await;
    db.cleanup();
}
