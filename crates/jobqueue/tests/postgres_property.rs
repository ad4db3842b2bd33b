//! The store-protocol property test (`common/property.rs`) on PostgreSQL:
//! random claims, failures, snoozes, heartbeats, worker crashes and clock
//! jumps; after every step no job is lost, no job has two live leases,
//! attempts stay within the maximum and a completed job stays completed.
//! Each case works in a fresh schema, with a `ManualClock` as the store's
//! clock.

#![cfg(feature = "postgres")]

mod common;
mod postgres_support;

use std::sync::Arc;

use common::property::{op, run_ops};
use proptest::prelude::*;
use steadfast_jobqueue::{ManualClock, Timestamp};

proptest! {
    // Fewer cases than in memory: each creates and drops a schema.
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn property_no_loss_no_double_lease_postgres(ops in proptest::collection::vec(op(), 1..120)) {
        let Some(db) = postgres_support::database("property") else {
            return Ok(());
        };
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = db.builder().test_clock(clock.clone()).listen(false).connect().await.unwrap();
            let result = run_ops(Arc::new(store.clone()), clock, ops).await;
            store.close().await;
            result
        })?;
    }
}
