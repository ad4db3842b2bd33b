//! The failure cases of `shared/cases/jobqueue.md`, each on the in-memory
//! store and on SQLite, under paused tokio time unless the case says
//! otherwise. The bodies live in `common/scenarios.rs`; the SIGKILL forms
//! are in `tests/crash.rs`.

mod common;

use std::sync::Arc;

use steadfast_jobqueue::{InMemoryStore, SystemClock};

use common::scenarios::{blocking_handler_keeps_lease, claim_race};

on_both_stores!(jq_01_killed_worker_job_runs_again_never_lost);
on_both_stores!(jq_02_dead_worker_jobs_recovered_without_manual_call);
on_both_stores!(jq_04b_lapsed_lease_fences_out_old_attempt);
on_both_stores!(jq_05_healthy_long_job_keeps_lease_and_unique_key);
on_both_stores!(jq_05_variant_stalled_heartbeats_fence_before_unique_key_frees);
on_both_stores!(jq_06_worker_killing_job_reaches_dead_letters);
on_both_stores!(jq_07a_failures_retry_on_schedule_not_hot_loop);
on_both_stores!(jq_07b_simultaneous_failures_spread_their_retries);
on_both_stores!(jq_08_redrive_gives_one_clean_run);
on_both_stores!(jq_09_forced_shutdown_hands_running_jobs_back);
on_both_stores!(jq_09_variant_killed_worker_job_restarts_within_lease);
on_both_stores!(jq_10_undecodable_payload_fails_cleanly_and_is_kept);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jq_03_concurrent_claimers_never_share_a_job_memory() {
    for seed in 0..50 {
        let store = Arc::new(InMemoryStore::with_clock(SystemClock).interleave_claims(true));
        claim_race(store, seed).await;
    }
}

// SQLite runs fewer seeds than the in-memory store (5 instead of 50): each
// seed creates a database file, and SQLite serialises writers anyway, so
// more seeds add run time rather than interleavings.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jq_03_concurrent_claimers_never_share_a_job_sqlite() {
    for seed in 0..5 {
        let (store, _dir) = common::sqlite_real_time().await;
        claim_race(store, seed).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jq_04a_blocking_handler_keeps_its_lease_memory() {
    blocking_handler_keeps_lease(Arc::new(InMemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jq_04a_blocking_handler_keeps_its_lease_sqlite() {
    let (store, _dir) = common::sqlite_real_time().await;
    blocking_handler_keeps_lease(store).await;
}
