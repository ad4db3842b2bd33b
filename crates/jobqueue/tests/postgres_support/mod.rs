//! Fixtures for the PostgreSQL tests: a fresh schema per test on the server
//! named by `STEADFAST_TEST_POSTGRES_URL`, so tests run in parallel.
//!
//! Without the variable a test prints that it skipped and passes, unless
//! `STEADFAST_REQUIRE_SERVICES=1`, where it fails instead.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test binaries, each using a different subset"
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::PgConnection;
use steadfast_jobqueue::{PostgresStore, PostgresStoreBuilder, TokioClock};

/// One test's schema on the test server.
pub struct TestDb {
    pub url: String,
    pub schema: String,
}

/// The test server, or `None` (after saying so) when the test must skip.
///
/// # Panics
///
/// When the server is not configured but `STEADFAST_REQUIRE_SERVICES=1`.
pub fn database(test: &str) -> Option<TestDb> {
    let Ok(url) = std::env::var("STEADFAST_TEST_POSTGRES_URL") else {
        let required = std::env::var("STEADFAST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "{test}: STEADFAST_TEST_POSTGRES_URL is not set but STEADFAST_REQUIRE_SERVICES=1"
        );
        eprintln!("SKIPPED {test}: set STEADFAST_TEST_POSTGRES_URL to run it against PostgreSQL");
        return None;
    };
    Some(TestDb {
        url,
        schema: unique_schema(test),
    })
}

fn unique_schema(test: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let tag: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(20)
        .collect::<String>()
        .to_ascii_lowercase();
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        "sft_{tag}_{:x}",
        (nanos ^ u64::from(std::process::id()).rotate_left(40)).wrapping_add(n) & 0xffff_ffff_ffff
    )
}

impl TestDb {
    /// A builder for a store in this test's schema.
    pub fn builder(&self) -> PostgresStoreBuilder {
        PostgresStore::builder(self.url.clone())
            .schema(self.schema.clone())
            .max_connections(8)
    }

    /// A store for tests in real time.
    pub async fn store(&self) -> PostgresStore {
        self.builder()
            .poll_fallback(Duration::from_millis(500))
            .connect()
            .await
            .expect("connect to the test PostgreSQL server")
    }

    /// A store for tests under paused tokio time: the database clock moves
    /// with tokio time and queries keep paused time from jumping ahead.
    /// The listener is off (its reconnect timers would race paused time);
    /// workers rely on in-process wake-ups and polling, as the cases set.
    pub async fn paused_store(&self) -> PostgresStore {
        self.builder()
            .test_clock(TokioClock::new())
            .paused_time_safe(true)
            .listen(false)
            .connect()
            .await
            .expect("connect to the test PostgreSQL server")
    }

    /// Runs SQL on a connection of its own, on a thread with its own
    /// runtime, so it works under paused time too.
    ///
    /// # Panics
    ///
    /// If the SQL fails.
    pub fn admin(&self, sql: &str) {
        if let Err(error) = self.try_admin(sql) {
            panic!("admin SQL failed: {error}");
        }
    }

    fn try_admin(&self, sql: &str) -> Result<(), String> {
        let url = self.url.clone();
        let sql = sql.to_owned();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&url)
                    .await
                    .map_err(|e| e.to_string())?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = conn.close().await;
                Ok(())
            })
        })
        .join()
        .map_err(|_| "the admin thread panicked".to_owned())?
    }

    /// Drops the test's schema (also done on drop, so that a failing test
    /// leaves nothing behind).
    pub fn cleanup(&self) {
        self.admin(&self.drop_schema());
    }

    fn drop_schema(&self) -> String {
        // A bounded wait: after a failed test, a task of it may still hold
        // a lock, and waiting for it would hang the test instead.
        format!(
            "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        )
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self.try_admin(&self.drop_schema());
    }
}
