//! The failure cases of `shared/cases/jobqueue.md` on PostgreSQL: the same
//! scenario bodies as the in-memory and SQLite stores (`common/scenarios.rs`),
//! each in a fresh schema. Paused-time cases move the database clock with
//! tokio time (`PostgresStoreBuilder::test_clock`).

#![cfg(feature = "postgres")]

mod common;
mod postgres_support;

use std::sync::Arc;

use common::scenarios;

/// Runs the scenario `$name` on a PostgreSQL store under paused time.
macro_rules! on_postgres {
    ($name:ident) => {
        #[tokio::test(start_paused = true)]
        async fn $name() {
            let Some(db) = postgres_support::database(stringify!($name)) else {
                return;
            };
            let store = Arc::new(db.paused_store().await);
            scenarios::$name(Arc::clone(&store)).await;
            store.close().await;
            db.cleanup();
        }
    };
}

on_postgres!(jq_01_killed_worker_job_runs_again_never_lost);
on_postgres!(jq_02_dead_worker_jobs_recovered_without_manual_call);
on_postgres!(jq_04b_lapsed_lease_fences_out_old_attempt);
on_postgres!(jq_05_healthy_long_job_keeps_lease_and_unique_key);
on_postgres!(jq_05_variant_stalled_heartbeats_fence_before_unique_key_frees);
on_postgres!(jq_06_worker_killing_job_reaches_dead_letters);
on_postgres!(jq_07a_failures_retry_on_schedule_not_hot_loop);
on_postgres!(jq_07b_simultaneous_failures_spread_their_retries);
on_postgres!(jq_08_redrive_gives_one_clean_run);
on_postgres!(jq_09_forced_shutdown_hands_running_jobs_back);
on_postgres!(jq_09_variant_killed_worker_job_restarts_within_lease);
on_postgres!(jq_10_undecodable_payload_fails_cleanly_and_is_kept);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jq_03_concurrent_claimers_never_share_a_job_postgres() {
    let Some(db) = postgres_support::database("jq_03") else {
        return;
    };
    let store = Arc::new(db.store().await);
    for seed in 0..10 {
        scenarios::claim_race(Arc::clone(&store), seed).await;
    }
    store.close().await;
    db.cleanup();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jq_04a_blocking_handler_keeps_its_lease_postgres() {
    let Some(db) = postgres_support::database("jq_04a") else {
        return;
    };
    let store = Arc::new(db.store().await);
    scenarios::blocking_handler_keeps_lease(Arc::clone(&store)).await;
    store.close().await;
    db.cleanup();
}
