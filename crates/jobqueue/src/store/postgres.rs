//! The PostgreSQL store: one queue shared by many worker processes on many
//! machines.
//!
//! Jobs live in one table (`steadfast_jobs`) in a schema of your choice.
//! What makes it safe and fast with many claimers:
//!
//! - **Claims lock due rows with `FOR UPDATE SKIP LOCKED`** and update them in
//!   the same statement, so concurrent claimers never block on each other nor
//!   receive the same row, and a batch of jobs costs one round trip.
//! - **Heartbeats and outcomes are batched** (`UPDATE ... FROM UNNEST(...)`),
//!   each row guarded by its lease number: a stale worker's write changes
//!   nothing and comes back as a [`LeaseLost`].
//! - **The database clock decides** what is due, when a lease runs out and
//!   when a retry is scheduled: every statement computes times from `now()`,
//!   so machines with skewed clocks still agree.
//! - **Uniqueness is a partial unique index** on the key of active jobs, so
//!   two machines enqueueing the same key at once insert one job.
//! - **Wake-ups through `LISTEN`/`NOTIFY`**: an insert trigger notifies the
//!   schema's channel at commit; [`Store::wakeups`] turns that into a
//!   signal per queue, with a jittered polling fallback for notifications lost
//!   while the listening connection was down.
//! - **Transactional enqueue** ([`PostgresStore::enqueue_in`]): a job written
//!   in the caller's own transaction exists exactly when that transaction
//!   commits (the outbox pattern).
//! - **Bulk enqueue in one statement** (arrays through `UNNEST`), and pruning
//!   of final jobs after a configurable retention
//!   ([`PostgresConfig::retention`]), done by the workers' sweeps at most once
//!   per [`PostgresConfig::prune_interval`] per process, or on demand with
//!   [`PostgresStore::prune`].
//!
//! [`Store::now`] (used only for reporting, never for a decision) is this
//! machine's clock corrected by the offset to the database clock measured
//! at connect.
//!
//! Tables are always named with their schema, so the store works on a pool
//! shared with the application whatever its `search_path`, and several
//! queues can live in one database, one schema each.
//!
//! The schema is created and upgraded on connect by embedded migrations
//! (`migrations/postgres/*.sql`), serialised across processes by an advisory
//! lock and recorded in `steadfast_migrations`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use steadfast_jobqueue::{PostgresStore, Queue};
//!
//! let store = PostgresStore::builder("postgres://postgres@127.0.0.1/app")
//!     .schema("jobs")
//!     .connect()
//!     .await?;
//! let queue = Queue::new(store);
//! # let _ = queue;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Row};
use steadfast_backoff::Backoff;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

use crate::clock::{Clock, SystemClock, Timestamp, duration_millis};
use crate::error::{LeaseLost, StoreError};
use crate::job::{ErrorEntry, FailureKind, JobId, JobRecord, JobState, Lease, NewJob};
use crate::store::{
    Cancel, ClaimRequest, Completion, Enqueued, Finish, FinishResult, LeaseRef, ListFilter, Purge,
    QueueStats, Redrive, Rescued, Store, parse_state, run_database_call,
};

/// Plain settings of a [`PostgresStore`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The schema holding the queue's tables; created if missing. A plain
    /// lower-case identifier (letters, digits, `_`). Default `public`.
    pub schema: String,
    /// The connection pool size of this process. Default 10.
    pub max_connections: u32,
    /// How long a statement may wait for a pool connection. Default 10 s.
    pub acquire_timeout: Duration,
    /// The mean interval of the polling fallback behind `LISTEN`/`NOTIFY`:
    /// a wake-up is signalled this often even without a notification, so
    /// jobs whose retry time came, or whose notification was lost while the
    /// listening connection was down, are still claimed. Default 5 s.
    pub poll_fallback: Duration,
    /// The jitter of the polling fallback, as a fraction of its interval:
    /// each wait is drawn uniformly from `[1 - j, 1 + j] × poll_fallback`, so
    /// many workers do not poll in lock step. Default 0.2.
    pub poll_jitter: f64,
    /// How long completed, dead and cancelled jobs are kept before the sweep
    /// deletes them. `None` keeps them for ever. Default 7 days.
    pub retention: Option<Duration>,
    /// The least time between two automatic prunes by one process. Default
    /// 60 s.
    pub prune_interval: Duration,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: "public".to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            poll_fallback: Duration::from_secs(5),
            poll_jitter: 0.2,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            prune_interval: Duration::from_secs(60),
        }
    }
}

impl PostgresConfig {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] naming the rule that was broken.
    pub fn validate(&self) -> Result<(), StoreError> {
        let invalid = |reason: &str| {
            Err(StoreError::Invalid {
                reason: reason.to_owned(),
            })
        };
        if !valid_schema(&self.schema) {
            return invalid(
                "schema must be 1 to 48 characters of lower-case letters, digits and '_', \
                 not starting with a digit",
            );
        }
        if self.max_connections < 2 {
            return invalid("max_connections must be at least 2 (one is kept for LISTEN)");
        }
        if self.poll_fallback.is_zero() {
            return invalid("poll_fallback must be longer than zero");
        }
        if !(0.0..1.0).contains(&self.poll_jitter) {
            return invalid("poll_jitter must be in [0, 1)");
        }
        if self.prune_interval.is_zero() {
            return invalid("prune_interval must be longer than zero");
        }
        Ok(())
    }
}

/// A job queue in a PostgreSQL database, shared by any number of processes.
///
/// Cloning is cheap: clones share the pool, the listener and the settings.
/// See the [module documentation](self) for how it works.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.inner.config.schema)
            .field("paused_time_safe", &self.inner.paused_time_safe)
            .finish_non_exhaustive()
    }
}

/// Options for connecting a [`PostgresStore`]; made by
/// [`PostgresStore::builder`] or [`PostgresStore::builder_with_pool`].
#[must_use = "a builder does nothing until connected"]
pub struct PostgresStoreBuilder {
    target: Target,
    config: PostgresConfig,
    test_clock: Option<Arc<dyn Clock>>,
    paused_time_safe: bool,
    migrate: bool,
    listen: bool,
}

enum Target {
    Url(String),
    Pool(PgPool),
}

impl PostgresStoreBuilder {
    /// Replaces all plain settings at once.
    pub fn config(mut self, config: PostgresConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets [`PostgresConfig::schema`].
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.config.schema = schema.into();
        self
    }

    /// Sets [`PostgresConfig::max_connections`] (ignored with a given pool).
    pub fn max_connections(mut self, max: u32) -> Self {
        self.config.max_connections = max;
        self
    }

    /// Sets [`PostgresConfig::acquire_timeout`].
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.config.acquire_timeout = timeout;
        self
    }

    /// Sets [`PostgresConfig::poll_fallback`].
    pub fn poll_fallback(mut self, every: Duration) -> Self {
        self.config.poll_fallback = every;
        self
    }

    /// Sets [`PostgresConfig::retention`].
    pub fn retention(mut self, keep: Option<Duration>) -> Self {
        self.config.retention = keep;
        self
    }

    /// Sets [`PostgresConfig::prune_interval`].
    pub fn prune_interval(mut self, every: Duration) -> Self {
        self.config.prune_interval = every;
        self
    }

    /// Whether workers get wake-ups from `LISTEN`/`NOTIFY` and the polling
    /// fallback ([`Store::wakeups`]). Default true; without them workers
    /// find new jobs by their own poll interval only.
    pub fn listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Whether to create or upgrade the schema on connect. Default true;
    /// turn it off where the application runs migrations itself
    /// ([`PostgresStore::migrate`]).
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// A testing aid: every statement reads `clock` instead of the database
    /// clock, so that tests under paused tokio time
    /// ([`crate::TokioClock`]) see leases expire and retries come due when
    /// they advance time. Production stores leave it unset: the database
    /// clock alone decides. Default: none.
    pub fn test_clock(mut self, clock: impl Clock) -> Self {
        self.test_clock = Some(Arc::new(clock));
        self
    }

    /// Runs each database call on tokio's blocking pool, which stops paused
    /// tokio time from jumping ahead while a query is in flight. For tests
    /// under `start_paused`; it costs a thread hop per call. Default off.
    pub fn paused_time_safe(mut self, safe: bool) -> Self {
        self.paused_time_safe = safe;
        self
    }

    /// Connects, creates the schema if needed and brings its tables up to
    /// date.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for bad settings or a malformed URL;
    /// [`StoreError::Backend`] if the database cannot be reached or migrated.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        self.config.validate()?;
        let pool = match self.target {
            Target::Pool(pool) => pool,
            Target::Url(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(StoreError::Invalid {
                        reason: "a PostgreSQL URL starts with postgres:// or postgresql://"
                            .to_owned(),
                    });
                }
                let options: PgConnectOptions = url.parse().map_err(|e| StoreError::Invalid {
                    reason: format!("not a PostgreSQL URL: {e}"),
                })?;
                PgPoolOptions::new()
                    .max_connections(self.config.max_connections)
                    .acquire_timeout(self.config.acquire_timeout)
                    .connect_lazy_with(options)
            }
        };
        let sql = Arc::new(Sql::new(&self.config.schema));
        let store = PostgresStore {
            inner: Arc::new(Inner {
                pool,
                sql,
                test_clock: self.test_clock,
                paused_time_safe: self.paused_time_safe,
                listen: self.listen,
                skew: AtomicI64::new(0),
                wake: Mutex::new(HashMap::new()),
                listener: std::sync::atomic::AtomicBool::new(false),
                last_prune: Mutex::new(None),
                stop: CancellationToken::new(),
                config: self.config,
            }),
        };
        if self.migrate {
            store.migrate().await?;
        }
        store.sync_clock().await?;
        Ok(store)
    }
}

struct Inner {
    pool: PgPool,
    sql: Arc<Sql>,
    config: PostgresConfig,
    test_clock: Option<Arc<dyn Clock>>,
    paused_time_safe: bool,
    listen: bool,
    /// The database clock minus this machine's, in milliseconds.
    skew: AtomicI64,
    wake: Mutex<HashMap<String, watch::Sender<u64>>>,
    listener: std::sync::atomic::AtomicBool,
    last_prune: Mutex<Option<tokio::time::Instant>>,
    /// Stops the listener task when the last clone is dropped.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PostgresStore {
    /// Connects to the database at `url` with default settings (schema
    /// `public`), migrating it if needed.
    ///
    /// # Errors
    ///
    /// As [`PostgresStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// Starts configuring a store that opens its own pool to `url`.
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        Self::builder_from(Target::Url(url.into()))
    }

    /// Starts configuring a store on an existing pool (shared with the
    /// application). Table names are always schema-qualified, so the pool
    /// needs no particular `search_path`.
    pub fn builder_with_pool(pool: PgPool) -> PostgresStoreBuilder {
        Self::builder_from(Target::Pool(pool))
    }

    fn builder_from(target: Target) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            target,
            config: PostgresConfig::default(),
            test_clock: None,
            paused_time_safe: false,
            migrate: true,
            listen: true,
        }
    }

    /// The connection pool, for the application's own queries and
    /// transactions (see [`PostgresStore::enqueue_in`]).
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema holding the queue's tables.
    pub fn schema(&self) -> &str {
        &self.inner.config.schema
    }

    /// Closes the pool and stops the listener, waiting for connections in
    /// use.
    pub async fn close(&self) {
        self.inner.stop.cancel();
        self.inner.pool.close().await;
    }

    /// Creates the schema if missing and applies the embedded migrations
    /// that have not run yet, under an advisory lock so that processes
    /// starting together migrate once.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] if the database has a newer schema than this
    /// build knows; [`StoreError::Backend`] if a statement fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        self.run(async move { migrate(&inner.pool, &inner.config.schema).await })
            .await
    }

    /// Stores jobs inside the caller's transaction (or on any connection):
    /// they exist exactly when that transaction commits, and vanish with it
    /// if it rolls back, so business data and the jobs about it can never
    /// disagree (the transactional outbox). Workers are notified at commit.
    ///
    /// The connection needs no `search_path`: table names are qualified.
    ///
    /// ```no_run
    /// # async fn demo(store: steadfast_jobqueue::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use steadfast_jobqueue::{JSON_CODEC, NewJob};
    ///
    /// let mut tx = store.pool().begin().await?;
    /// sqlx::query("INSERT INTO orders (id) VALUES (42)").execute(&mut *tx).await?;
    /// let job = NewJob::raw("ship_order", JSON_CODEC, br#"{"order":42}"#.to_vec());
    /// store.enqueue_in(&mut tx, vec![job]).await?;
    /// tx.commit().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] if a job is invalid (nothing is written);
    /// [`StoreError::Backend`] if a statement fails, which in PostgreSQL
    /// aborts the caller's transaction.
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        validate_jobs(&jobs)?;
        enqueue_on(conn, &self.inner.sql, self.offset_ms(), jobs).await
    }

    /// Deletes completed, dead and cancelled jobs that reached their final
    /// state more than `older_than` ago (by the database clock); returns
    /// how many. Runs in chunks so that it never holds many row locks.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if a statement fails.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        self.run(async move { prune(&inner.pool, &inner.sql, offset, older_than).await })
            .await
    }

    /// What every statement binds as `$1`: `None`, so the database clock
    /// decides, or the test clock's reading.
    fn offset_ms(&self) -> Option<i64> {
        self.inner
            .test_clock
            .as_ref()
            .map(|clock| clock.now().as_millis())
    }

    /// Reads the clock that decides (the database's, or the test clock) on
    /// `conn`, inside the caller's transaction.
    pub(crate) async fn clock_on(&self, conn: &mut PgConnection) -> Result<Timestamp, StoreError> {
        let ms: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT {}", millis(NOW))))
            .bind(self.offset_ms())
            .fetch_one(conn)
            .await
            .map_err(db("read the clock"))?;
        Ok(Timestamp::from_millis(ms))
    }

    // Not yet: the skew is measured once, at connect; if this machine's clock
    // drifts later, `Store::now()` drifts with it (every decision made in SQL
    // still uses the database clock).
    async fn sync_clock(&self) -> Result<(), StoreError> {
        let inner = Arc::clone(&self.inner);
        let db_now: i64 = self
            .run(async move {
                sqlx::query_scalar("SELECT (extract(epoch FROM now()) * 1000)::int8")
                    .fetch_one(&inner.pool)
                    .await
                    .map_err(db("connect"))
            })
            .await?;
        let local = SystemClock.now().as_millis();
        self.inner
            .skew
            .store(db_now.saturating_sub(local), Ordering::Relaxed);
        Ok(())
    }

    fn start_listener(&self) {
        if self.inner.listener.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let pool = self.inner.pool.clone();
        let stop = self.inner.stop.clone();
        let config = self.inner.config.clone();
        tokio::spawn(listen_loop(weak, pool, config, stop));
    }

    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        run_database_call(self.inner.paused_time_safe, work).await
    }
}

impl Store for PostgresStore {
    fn now(&self) -> Timestamp {
        let skew = self.inner.skew.load(Ordering::Relaxed);
        let local = SystemClock.now().as_millis();
        match self.offset_ms() {
            Some(test_now) => Timestamp::from_millis(test_now),
            None => Timestamp::from_millis(local.saturating_add(skew)),
        }
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        validate_jobs(&jobs)?;
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        self.run(async move { enqueue(&inner.pool, &inner.sql, offset, jobs).await })
            .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<JobRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        let req = req.clone();
        self.run(async move { claim(&inner, offset, req).await })
            .await
    }

    async fn heartbeat(
        &self,
        leases: &[LeaseRef],
        extend: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        let leases = leases.to_vec();
        self.run(async move { heartbeat(&inner, offset, leases, extend).await })
            .await
    }

    async fn finish(&self, completions: Vec<Completion>) -> Result<Vec<FinishResult>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        self.run(async move { finish(&inner, offset, completions).await })
            .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Rescued>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        let rescued = self
            .run(async move { rescue(&inner, offset, limit).await })
            .await?;
        self.prune_if_due().await;
        Ok(rescued)
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        self.run(async move {
            let row = sqlx::query(sql(&inner.sql.get))
                .bind(offset)
                .bind(id.get())
                .fetch_optional(&inner.pool)
                .await
                .map_err(db("get"))?;
            row.map(|row| read_record(&row)).transpose()
        })
        .await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        let filter = filter.clone();
        self.run(async move {
            let rows = sqlx::query(sql(&inner.sql.list))
                .bind(offset)
                .bind(filter.after.map_or(i64::MIN, JobId::get))
                .bind(filter.queue.clone())
                .bind(filter.state.map(JobState::as_str))
                .bind(i64::try_from(filter.effective_limit()).unwrap_or(i64::MAX))
                .fetch_all(&inner.pool)
                .await
                .map_err(db("list"))?;
            rows.iter().map(read_record).collect()
        })
        .await
    }

    async fn redrive(&self, ids: &[JobId]) -> Result<Vec<Redrive>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        let ids = ids.to_vec();
        self.run(async move { redrive(&inner, offset, ids).await })
            .await
    }

    async fn purge_dead(&self, which: &Purge) -> Result<u64, StoreError> {
        let inner = Arc::clone(&self.inner);
        let which = which.clone();
        self.run(async move {
            let (all, ids, before) = match &which {
                Purge::All => (true, Vec::new(), None),
                Purge::Ids(ids) => (false, ids.iter().map(|id| id.get()).collect(), None),
                Purge::DiedBefore(t) => (false, Vec::new(), Some(t.as_millis())),
            };
            let done = sqlx::query(sql(&inner.sql.purge))
                .bind(all)
                .bind(ids)
                .bind(before)
                .execute(&inner.pool)
                .await
                .map_err(db("purge"))?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn cancel(&self, ids: &[JobId]) -> Result<Vec<Cancel>, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        let ids = ids.to_vec();
        self.run(async move { cancel(&inner, offset, ids).await })
            .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let inner = Arc::clone(&self.inner);
        let offset = self.offset_ms();
        self.run(async move { stats(&inner, offset).await }).await
    }

    /// Changes when a `NOTIFY` for `queue` arrives from any process, and at
    /// the jittered [`PostgresConfig::poll_fallback`] interval. The first
    /// call starts the listener task on the current tokio runtime; `None`
    /// if the store was built with [`PostgresStoreBuilder::listen`] off.
    fn wakeups(&self, queue: &str) -> Option<watch::Receiver<u64>> {
        if !self.inner.listen {
            return None;
        }
        self.start_listener();
        let mut wake = lock(&self.inner.wake);
        let rx = wake
            .entry(queue.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Some(rx)
    }
}

impl PostgresStore {
    /// Prunes old final jobs if a retention is set and the last prune by
    /// this process was long enough ago. Failures are logged, not returned:
    /// pruning is housekeeping and must not fail a sweep.
    async fn prune_if_due(&self) {
        let Some(retention) = self.inner.config.retention else {
            return;
        };
        {
            let mut last = lock(&self.inner.last_prune);
            let now = tokio::time::Instant::now();
            if last.is_some_and(|at| now.duration_since(at) < self.inner.config.prune_interval) {
                return;
            }
            *last = Some(now);
        }
        match self.prune(retention).await {
            Ok(0) => {}
            Ok(count) => debug!(count, "pruned final jobs past their retention"),
            Err(error) => warn!(error = %crate::handler::chain(&error), "pruning failed"),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single assignment or map operation.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn valid_schema(schema: &str) -> bool {
    let mut chars = schema.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    first_ok
        && schema.len() <= 48
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn validate_jobs(jobs: &[NewJob]) -> Result<(), StoreError> {
    for job in jobs {
        job.validate().map_err(|e| StoreError::Invalid {
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

fn db(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::backend(op, e)
}

fn sql(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    AssertSqlSafe(Arc::clone(text))
}

fn to_i32(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

// ---------------------------------------------------------------------------
// SQL text

/// The clock as every statement reads it: the database's `now()`, or with a
/// test clock, its reading bound as `$1` (NULL in production).
const NOW: &str = "coalesce(to_timestamp($1::int8 / 1000.0), now())";

/// Milliseconds since the epoch of a `timestamptz` expression.
fn millis(expr: &str) -> String {
    format!("(extract(epoch FROM {expr}) * 1000)::int8")
}

const ACTIVE: &str = "('scheduled', 'available', 'running', 'retryable')";
const WAITING: &str = "('scheduled', 'available', 'retryable')";

/// The statements, with the schema's table names filled in once.
struct Sql {
    /// The `LISTEN`/`NOTIFY` channel of the schema.
    channel: String,
    enqueue: Arc<str>,
    holders: Arc<str>,
    claim: Arc<str>,
    heartbeat: Arc<str>,
    finish: Arc<str>,
    rescue: Arc<str>,
    get: Arc<str>,
    list: Arc<str>,
    redrive: Arc<str>,
    state_of: Arc<str>,
    cancel: Arc<str>,
    purge: Arc<str>,
    prune: Arc<str>,
    depth: Arc<str>,
    oldest: Arc<str>,
    running: Arc<str>,
}

impl Sql {
    fn new(schema: &str) -> Self {
        let jobs = format!("\"{schema}\".steadfast_jobs");
        let now_ms = millis(NOW);
        let columns = format!(
            "j.id, j.kind, j.queue, j.codec, j.payload, j.state, j.priority, j.attempt, \
             j.max_attempts, j.rescues, j.lease_number, j.lease_owner, \
             {} AS lease_expires_at, {} AS run_at, {} AS created_at, {} AS attempted_at, \
             {} AS finalized_at, j.unique_key, j.timeout_ms, j.backoff, j.errors::text AS errors, \
             {now_ms} AS db_now",
            millis("j.lease_expires_at"),
            millis("j.run_at"),
            millis("j.created_at"),
            millis("j.attempted_at"),
            millis("j.finalized_at"),
        );
        let effective = format!(
            "(CASE WHEN j.state IN {WAITING} AND j.run_at <= {NOW} THEN 'available' ELSE j.state END)"
        );
        let error_entry = |kind: &str, message: &str| {
            format!(
                "jsonb_build_array(jsonb_build_object('attempt', j.attempt, 'at', {now_ms}, \
                 'kind', {kind}, 'message', {message}))"
            )
        };

        let enqueue = format!(
            "WITH input AS ( \
               SELECT t.*, nextval('\"{schema}\".steadfast_jobs_id_seq') AS new_id, \
                 coalesce(to_timestamp(t.run_at_ms / 1000.0), {NOW} + t.delay_ms * interval '1 millisecond') AS due \
               FROM UNNEST($2::text[], $3::text[], $4::text[], $5::bytea[], $6::int4[], $7::int8[], \
                 $8::int8[], $9::int4[], $10::text[], $11::int8[], $12::text[]) WITH ORDINALITY \
                 AS t(kind, queue, codec, payload, priority, run_at_ms, delay_ms, max_attempts, \
                 unique_key, timeout_ms, backoff, ord) \
             ), ins AS ( \
               INSERT INTO {jobs} (id, kind, queue, codec, payload, state, priority, max_attempts, \
                 run_at, created_at, unique_key, timeout_ms, backoff) \
               SELECT new_id, kind, queue, codec, payload, \
                 CASE WHEN due > {NOW} THEN 'scheduled' ELSE 'available' END, priority, \
                 max_attempts, due, {NOW}, unique_key, timeout_ms, backoff \
               FROM input ORDER BY ord \
               ON CONFLICT DO NOTHING RETURNING id \
             ) \
             SELECT input.new_id, ins.id IS NOT NULL AS inserted, input.unique_key \
             FROM input LEFT JOIN ins ON ins.id = input.new_id ORDER BY input.ord"
        );
        let holders = format!(
            "SELECT j.unique_key, j.id FROM {jobs} j \
             WHERE j.unique_key = ANY($1::text[]) AND j.state IN {ACTIVE}"
        );
        let claim = format!(
            "WITH due AS ( \
               SELECT j.id FROM {jobs} j \
               WHERE j.queue = $2 AND j.state IN {WAITING} AND j.run_at <= {NOW} \
                 AND j.kind = ANY($3::text[]) \
               ORDER BY j.priority DESC, j.run_at, j.id \
               LIMIT $4 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE {jobs} j SET state = 'running', attempt = j.attempt + 1, \
               lease_number = j.lease_number + 1, lease_owner = $5, \
               lease_expires_at = {NOW} + $6::int8 * interval '1 millisecond', attempted_at = {NOW} \
             FROM due WHERE j.id = due.id \
             RETURNING {columns}"
        );
        // Heartbeats and outcomes of one worker touch the same rows at the
        // same time; both lock their rows in id order first, so they wait
        // for each other instead of deadlocking. (Claims, rescues and pruning
        // skip locked rows and never wait.)
        let lock_in_order = |input: &str| {
            format!(
                "locked AS ( \
                   SELECT j.id FROM {jobs} j JOIN {input} ON j.id = {input}.id \
                   AND j.lease_number = {input}.lease WHERE j.state = 'running' \
                   ORDER BY j.id FOR UPDATE OF j \
                 )"
            )
        };
        let heartbeat = format!(
            "WITH l AS (SELECT * FROM UNNEST($3::int8[], $4::int8[]) AS l(id, lease)), {locked} \
             UPDATE {jobs} j SET lease_expires_at = {NOW} + $2::int8 * interval '1 millisecond' \
             FROM locked WHERE j.id = locked.id AND j.state = 'running' \
             RETURNING j.id, j.lease_number",
            locked = lock_in_order("l"),
        );
        // One statement for a whole batch of outcomes. `c.charge` only
        // matters for a release: whether the interrupted attempt counts.
        let next_attempt = "(CASE WHEN c.action = 'snooze' OR (c.action = 'release' AND NOT c.charge) \
             THEN greatest(j.attempt - 1, 0) ELSE j.attempt END)";
        let next_state = format!(
            "(CASE c.action \
               WHEN 'complete' THEN 'completed' \
               WHEN 'dead' THEN 'dead' \
               WHEN 'snooze' THEN 'scheduled' \
               WHEN 'retry' THEN CASE WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'retryable' END \
               ELSE CASE WHEN {next_attempt} >= j.max_attempts THEN 'dead' ELSE 'available' END \
             END)"
        );
        let finish = format!(
            "WITH c AS ( \
               SELECT * FROM UNNEST($2::int8[], $3::int8[], $4::text[], $5::int8[], $6::text[], \
                 $7::text[], $8::bool[]) AS c(id, lease, action, delay_ms, kind, message, charge) \
             ), {locked} \
             UPDATE {jobs} j SET \
               state = {next_state}, \
               attempt = {next_attempt}, \
               finalized_at = CASE WHEN {next_state} IN ('completed', 'dead') THEN {NOW} ELSE NULL END, \
               run_at = CASE \
                 WHEN {next_state} IN ('completed', 'dead') THEN j.run_at \
                 WHEN c.action = 'release' THEN {NOW} \
                 ELSE {NOW} + c.delay_ms * interval '1 millisecond' END, \
               errors = CASE WHEN c.action IN ('retry', 'dead', 'release') \
                 THEN j.errors || {entry} ELSE j.errors END, \
               lease_expires_at = NULL \
             FROM c, locked \
             WHERE j.id = c.id AND j.id = locked.id AND j.lease_number = c.lease \
               AND j.state = 'running' \
             RETURNING j.id, j.lease_number, j.state, j.queue",
            entry = error_entry("c.kind", "c.message"),
            locked = lock_in_order("c"),
        );
        let rescue = format!(
            "WITH expired AS ( \
               SELECT j.id FROM {jobs} j WHERE j.state = 'running' AND j.lease_expires_at <= {NOW} \
               ORDER BY j.lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE {jobs} j SET \
               errors = j.errors || {entry}, \
               rescues = j.rescues + 1, \
               state = CASE WHEN j.attempt >= j.max_attempts THEN 'dead' ELSE 'available' END, \
               finalized_at = CASE WHEN j.attempt >= j.max_attempts THEN {NOW} ELSE NULL END, \
               run_at = CASE WHEN j.attempt >= j.max_attempts THEN j.run_at ELSE {NOW} END, \
               lease_expires_at = NULL \
             FROM expired WHERE j.id = expired.id \
             RETURNING j.id, j.lease_number, j.lease_owner, j.state, j.queue",
            entry = error_entry(
                &format!("'{}'", FailureKind::WorkerLost.as_str()),
                "$3 || coalesce(j.lease_owner, '') || $4"
            ),
        );
        let get = format!("SELECT {columns} FROM {jobs} j WHERE j.id = $2");
        let list = format!(
            "SELECT {columns} FROM {jobs} j WHERE j.id > $2 AND ($3::text IS NULL OR j.queue = $3) \
             AND ($4::text IS NULL OR {effective} = $4) ORDER BY j.id LIMIT $5"
        );
        let redrive = format!(
            "UPDATE {jobs} j SET state = 'available', run_at = {NOW}, attempt = 0, rescues = 0, \
             lease_expires_at = NULL, finalized_at = NULL WHERE j.id = $2 AND j.state = 'dead' \
             RETURNING j.queue"
        );
        let state_of = format!(
            "SELECT j.state, {effective} AS effective, j.unique_key FROM {jobs} j WHERE j.id = $2"
        );
        let cancel = format!(
            "UPDATE {jobs} j SET state = 'cancelled', finalized_at = {NOW} \
             WHERE j.id = $2 AND j.state IN {WAITING} RETURNING j.id"
        );
        let purge = format!(
            "DELETE FROM {jobs} j WHERE j.state = 'dead' AND ($1 OR j.id = ANY($2::int8[]) \
             OR j.finalized_at < to_timestamp($3::int8 / 1000.0))"
        );
        let prune = format!(
            "DELETE FROM {jobs} WHERE id IN ( \
               SELECT j.id FROM {jobs} j WHERE j.state IN ('completed', 'dead', 'cancelled') \
               AND j.finalized_at < {NOW} - $2::int8 * interval '1 millisecond' \
               LIMIT $3 FOR UPDATE SKIP LOCKED)"
        );
        let depth = format!("SELECT {effective} AS effective, count(*) FROM {jobs} j GROUP BY 1");
        let oldest = format!(
            "SELECT (extract(epoch FROM ({NOW} - min(j.run_at))) * 1000)::int8 FROM {jobs} j \
             WHERE j.state IN {WAITING} AND j.run_at <= {NOW}"
        );
        let running = format!(
            "SELECT j.lease_owner, count(*) FROM {jobs} j WHERE j.state = 'running' GROUP BY 1"
        );

        let arc = |s: String| -> Arc<str> { Arc::from(s) };
        Self {
            channel: format!("steadfast_jobs:{schema}"),
            enqueue: arc(enqueue),
            holders: arc(holders),
            claim: arc(claim),
            heartbeat: arc(heartbeat),
            finish: arc(finish),
            rescue: arc(rescue),
            get: arc(get),
            list: arc(list),
            redrive: arc(redrive),
            state_of: arc(state_of),
            cancel: arc(cancel),
            purge: arc(purge),
            prune: arc(prune),
            depth: arc(depth),
            oldest: arc(oldest),
            running: arc(running),
        }
    }
}

// ---------------------------------------------------------------------------
// Migrations

/// The schema steps, applied in order and recorded by version.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "jobs",
        include_str!("../../migrations/postgres/0001_jobs.sql"),
    ),
    (
        2,
        "periodic",
        include_str!("../../migrations/postgres/0002_periodic.sql"),
    ),
];

/// The first key of the advisory lock that serialises migrations; the
/// second is a hash of the schema name.
const MIGRATION_LOCK: i32 = 0x5354_4446;

async fn migrate(pool: &PgPool, schema: &str) -> Result<(), StoreError> {
    let op = "migrate";
    let mut tx = pool.begin().await.map_err(db(op))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(MIGRATION_LOCK)
        .bind(schema)
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
    let setup = format!(
        "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
         SET LOCAL search_path TO \"{schema}\"; \
         CREATE TABLE IF NOT EXISTS steadfast_migrations ( \
           version integer PRIMARY KEY, name text NOT NULL, \
           applied_at timestamptz NOT NULL DEFAULT now())"
    );
    sqlx::raw_sql(AssertSqlSafe(setup))
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
    let applied: Option<i32> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT max(version) FROM \"{schema}\".steadfast_migrations"
    )))
    .fetch_one(&mut *tx)
    .await
    .map_err(db(op))?;
    let applied = applied.unwrap_or(0);
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if applied > known {
        return Err(StoreError::Invalid {
            reason: format!(
                "schema {schema} is at version {applied}, newer than this build knows ({known})"
            ),
        });
    }

    for (version, name, text) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
        debug!(schema, version, name, "applying migration");
        sqlx::raw_sql(AssertSqlSafe(*text))
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO \"{schema}\".steadfast_migrations (version, name) VALUES ($1, $2)"
        )))
        .bind(version)
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
    }
    tx.commit().await.map_err(db(op))
}

// ---------------------------------------------------------------------------
// Operations

async fn enqueue(
    pool: &PgPool,
    sql: &Sql,
    offset: Option<i64>,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>, StoreError> {
    if jobs.iter().all(|job| job.unique_key.is_none()) {
        // Without keys there are no duplicates to look up: one statement.
        let mut conn = pool.acquire().await.map_err(db("enqueue"))?;
        return enqueue_on(&mut conn, sql, offset, jobs).await;
    }
    let mut tx = pool.begin().await.map_err(db("enqueue"))?;
    let out = enqueue_on(&mut tx, sql, offset, jobs).await?;
    tx.commit().await.map_err(db("enqueue"))?;
    Ok(out)
}

/// Inserts a batch with one statement; refused keys are then resolved to
/// the active job holding them. A holder can finish between the two
/// statements, so refused jobs are retried a few times.
async fn enqueue_on(
    conn: &mut PgConnection,
    sql: &Sql,
    offset: Option<i64>,
    jobs: Vec<NewJob>,
) -> Result<Vec<Enqueued>, StoreError> {
    let op = "enqueue";
    let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut pending: Vec<(usize, NewJob)> = jobs.into_iter().enumerate().collect();

    for _round in 0..5 {
        if pending.is_empty() {
            break;
        }
        let rows = insert_batch(conn, sql, offset, &pending).await?;
        let mut refused = Vec::new();
        for ((slot, job), (id, inserted)) in pending.drain(..).zip(rows) {
            if inserted {
                out[slot] = Some(Enqueued::Inserted(JobId::new(id)));
            } else {
                refused.push((slot, job));
            }
        }
        if refused.is_empty() {
            break;
        }

        let keys: Vec<String> = refused
            .iter()
            .filter_map(|(_, job)| job.unique_key.clone())
            .collect();
        let holders: HashMap<String, i64> = sqlx::query_as(sql_ref(&sql.holders))
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(db(op))?
            .into_iter()
            .collect();
        for (slot, job) in refused {
            match job.unique_key.as_ref().and_then(|k| holders.get(k)) {
                Some(&holder) => out[slot] = Some(Enqueued::Duplicate(JobId::new(holder))),
                None => pending.push((slot, job)),
            }
        }
    }

    trace!(jobs = out.len(), "jobs enqueued");
    if !pending.is_empty() {
        return Err(StoreError::backend(
            op,
            "unique keys kept conflicting with jobs that finished before they could be read",
        ));
    }
    Ok(out.into_iter().flatten().collect())
}

fn sql_ref(text: &Arc<str>) -> AssertSqlSafe<Arc<str>> {
    sql(text)
}

async fn insert_batch(
    conn: &mut PgConnection,
    sql: &Sql,
    offset: Option<i64>,
    jobs: &[(usize, NewJob)],
) -> Result<Vec<(i64, bool)>, StoreError> {
    let op = "enqueue";
    let n = jobs.len();
    let mut kind = Vec::with_capacity(n);
    let mut queue = Vec::with_capacity(n);
    let mut codec = Vec::with_capacity(n);
    let mut payload = Vec::with_capacity(n);
    let mut priority = Vec::with_capacity(n);
    let mut run_at = Vec::with_capacity(n);
    let mut delay = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut unique_key = Vec::with_capacity(n);
    let mut timeout = Vec::with_capacity(n);
    let mut backoff = Vec::with_capacity(n);
    for (_, job) in jobs {
        kind.push(job.kind.as_str());
        queue.push(job.queue.as_str());
        codec.push(job.codec.as_str());
        payload.push(job.payload.as_slice());
        priority.push(job.priority);
        run_at.push(job.run_at.map(Timestamp::as_millis));
        delay.push(duration_millis(job.delay));
        max_attempts.push(to_i32(job.max_attempts));
        unique_key.push(job.unique_key.as_deref());
        timeout.push(job.timeout.map(duration_millis));
        backoff.push(
            job.backoff
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(|e| StoreError::backend(op, e))?,
        );
    }

    let rows: Vec<(i64, bool, Option<String>)> = sqlx::query_as(sql_ref(&sql.enqueue))
        .bind(offset)
        .bind(kind)
        .bind(queue)
        .bind(codec)
        .bind(payload)
        .bind(priority)
        .bind(run_at)
        .bind(delay)
        .bind(max_attempts)
        .bind(unique_key)
        .bind(timeout)
        .bind(backoff)
        .fetch_all(&mut *conn)
        .await
        .map_err(db(op))?;
    if rows.len() != n {
        return Err(StoreError::backend(
            op,
            format!("the insert reported {} rows for {n} jobs", rows.len()),
        ));
    }
    Ok(rows.into_iter().map(|(id, ins, _)| (id, ins)).collect())
}

async fn claim(
    inner: &Inner,
    offset: Option<i64>,
    req: ClaimRequest,
) -> Result<Vec<JobRecord>, StoreError> {
    if req.limit == 0 || req.kinds.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(sql(&inner.sql.claim))
        .bind(offset)
        .bind(&req.queue)
        .bind(&req.kinds)
        .bind(i64::try_from(req.limit).unwrap_or(i64::MAX))
        .bind(&req.worker)
        .bind(duration_millis(req.lease))
        .fetch_all(&inner.pool)
        .await
        .map_err(db("claim"))?;

    let mut jobs = rows
        .iter()
        .map(read_record)
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by_key(|job| (std::cmp::Reverse(job.priority), job.run_at, job.id));
    trace!(queue = %req.queue, claimed = jobs.len(), "claimed");
    Ok(jobs)
}

async fn heartbeat(
    inner: &Inner,
    offset: Option<i64>,
    leases: Vec<LeaseRef>,
    extend: Duration,
) -> Result<Vec<bool>, StoreError> {
    if leases.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = leases.iter().map(|l| l.id.get()).collect();
    let numbers: Vec<i64> = leases.iter().map(|l| l.lease).collect();
    let held: Vec<(i64, i64)> = sqlx::query_as(sql(&inner.sql.heartbeat))
        .bind(offset)
        .bind(duration_millis(extend))
        .bind(ids)
        .bind(numbers)
        .fetch_all(&inner.pool)
        .await
        .map_err(db("heartbeat"))?;
    trace!(
        extended = held.len(),
        lost = leases.len().saturating_sub(held.len()),
        "leases extended"
    );
    Ok(leases
        .iter()
        .map(|l| held.contains(&(l.id.get(), l.lease)))
        .collect())
}

async fn finish(
    inner: &Inner,
    offset: Option<i64>,
    completions: Vec<Completion>,
) -> Result<Vec<FinishResult>, StoreError> {
    let op = "finish";
    if completions.is_empty() {
        return Ok(Vec::new());
    }
    let n = completions.len();
    let mut ids = Vec::with_capacity(n);
    let mut leases = Vec::with_capacity(n);
    let mut actions = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let mut kinds: Vec<Option<&'static str>> = Vec::with_capacity(n);
    let mut messages: Vec<Option<String>> = Vec::with_capacity(n);
    let mut charges = Vec::with_capacity(n);
    for Completion { lease, finish } in &completions {
        ids.push(lease.id.get());
        leases.push(lease.lease);
        let (action, delay, kind, message, charge) = match finish {
            Finish::Complete => ("complete", Duration::ZERO, None, None, true),
            Finish::Retry {
                delay,
                kind,
                message,
            } => (
                "retry",
                *delay,
                Some(kind.as_str()),
                Some(message.clone()),
                true,
            ),
            Finish::Dead { kind, message } => (
                "dead",
                Duration::ZERO,
                Some(kind.as_str()),
                Some(message.clone()),
                true,
            ),
            Finish::Snooze { delay } => ("snooze", *delay, None, None, true),
            Finish::Release {
                charge_attempt,
                message,
            } => (
                "release",
                Duration::ZERO,
                Some(FailureKind::Interrupted.as_str()),
                Some(message.clone()),
                *charge_attempt,
            ),
        };
        actions.push(action);
        delays.push(duration_millis(delay));
        kinds.push(kind);
        messages.push(message);
        charges.push(charge);
    }

    let rows: Vec<(i64, i64, String, String)> = sqlx::query_as(sql(&inner.sql.finish))
        .bind(offset)
        .bind(ids)
        .bind(leases)
        .bind(actions)
        .bind(delays)
        .bind(kinds)
        .bind(messages)
        .bind(charges)
        .fetch_all(&inner.pool)
        .await
        .map_err(db(op))?;
    trace!(
        written = rows.len(),
        refused = completions.len().saturating_sub(rows.len()),
        "outcomes written"
    );
    let handed_back = rows
        .iter()
        .filter(|row| row.2 == JobState::Available.as_str())
        .map(|row| row.3.clone())
        .collect();
    notify_available(inner, handed_back).await;
    let written: HashMap<(i64, i64), String> = rows
        .into_iter()
        .map(|(id, lease, state, _)| ((id, lease), state))
        .collect();

    completions
        .iter()
        .map(|c| {
            let LeaseRef { id, lease } = c.lease;
            match written.get(&(id.get(), lease)) {
                None => Ok(Err(LeaseLost { id, lease })),
                Some(state) => parse_state(id, state).map(Ok),
            }
        })
        .collect()
}

/// The pieces around the worker id in the "worker lost" history note.
const WORKER_LOST_PREFIX: &str = "worker lost: lease held by ";
const WORKER_LOST_SUFFIX: &str = " expired without a heartbeat";

async fn rescue(
    inner: &Inner,
    offset: Option<i64>,
    limit: usize,
) -> Result<Vec<Rescued>, StoreError> {
    let rows: Vec<(i64, i64, Option<String>, String, String)> =
        sqlx::query_as(sql(&inner.sql.rescue))
            .bind(offset)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .bind(WORKER_LOST_PREFIX)
            .bind(WORKER_LOST_SUFFIX)
            .fetch_all(&inner.pool)
            .await
            .map_err(db("rescue"))?;
    if !rows.is_empty() {
        trace!(rescued = rows.len(), "took back jobs with expired leases");
    }
    let available = rows
        .iter()
        .filter(|row| row.3 == JobState::Available.as_str())
        .map(|row| row.4.clone())
        .collect();
    notify_available(inner, available).await;

    rows.into_iter()
        .map(|(id, lease, worker, state, _)| {
            let id = JobId::new(id);
            Ok(Rescued {
                id,
                lease,
                worker: worker.unwrap_or_default(),
                state: parse_state(id, &state)?,
            })
        })
        .collect()
}

async fn redrive(
    inner: &Inner,
    offset: Option<i64>,
    ids: Vec<JobId>,
) -> Result<Vec<Redrive>, StoreError> {
    let op = "redrive";
    // Not yet: one statement per id rather than one per batch; re-drives are
    // operator actions on a handful of jobs.
    let mut out = Vec::with_capacity(ids.len());
    let mut queues = Vec::new();
    for id in ids {
        let updated = sqlx::query_scalar::<_, String>(sql(&inner.sql.redrive))
            .bind(offset)
            .bind(id.get())
            .fetch_optional(&inner.pool)
            .await;
        let outcome = match updated {
            Ok(Some(queue)) => {
                queues.push(queue);
                Redrive::Redriven
            }
            Ok(None) => match read_state(inner, offset, id).await? {
                None => Redrive::NotFound,
                Some((stored, _, _)) if stored.is_active() => Redrive::AlreadyQueued,
                Some((stored, _, _)) => Redrive::NotDead(stored),
            },
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let key = read_state(inner, offset, id).await?.and_then(|s| s.2);
                let holder: Option<(String, i64)> = sqlx::query_as(sql(&inner.sql.holders))
                    .bind(key.into_iter().collect::<Vec<_>>())
                    .fetch_optional(&inner.pool)
                    .await
                    .map_err(db(op))?;
                match holder {
                    Some((_, holder)) => Redrive::Duplicate(JobId::new(holder)),
                    None => {
                        return Err(StoreError::backend(
                            op,
                            "the job's unique key was taken and released during the re-drive",
                        ));
                    }
                }
            }
            Err(e) => return Err(StoreError::backend(op, e)),
        };
        out.push(outcome);
    }
    notify_available(inner, queues).await;
    Ok(out)
}

/// Tells the workers of every process that jobs in `queues` became
/// available now (handed back, rescued or re-driven); inserts notify by their
/// trigger. A lost notification costs at most a polling interval, so a
/// failure is logged, not returned.
async fn notify_available(inner: &Inner, mut queues: Vec<String>) {
    if queues.is_empty() {
        return;
    }
    queues.sort_unstable();
    queues.dedup();
    let sent = sqlx::query("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q")
        .bind(&inner.sql.channel)
        .bind(&queues)
        .execute(&inner.pool)
        .await;
    if let Err(error) = sent {
        debug!(%error, "could not notify other workers");
    }
}

/// A job's stored state, effective state and unique key.
async fn read_state(
    inner: &Inner,
    offset: Option<i64>,
    id: JobId,
) -> Result<Option<(JobState, JobState, Option<String>)>, StoreError> {
    let row: Option<(String, String, Option<String>)> = sqlx::query_as(sql(&inner.sql.state_of))
        .bind(offset)
        .bind(id.get())
        .fetch_optional(&inner.pool)
        .await
        .map_err(db("read state"))?;
    row.map(|(stored, effective, key)| {
        Ok((parse_state(id, &stored)?, parse_state(id, &effective)?, key))
    })
    .transpose()
}

async fn cancel(
    inner: &Inner,
    offset: Option<i64>,
    ids: Vec<JobId>,
) -> Result<Vec<Cancel>, StoreError> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let cancelled = sqlx::query(sql(&inner.sql.cancel))
            .bind(offset)
            .bind(id.get())
            .fetch_optional(&inner.pool)
            .await
            .map_err(db("cancel"))?;
        let outcome = match cancelled {
            Some(_) => Cancel::Cancelled,
            None => match read_state(inner, offset, id).await? {
                None => Cancel::NotFound,
                Some((_, effective, _)) => Cancel::NotCancellable(effective),
            },
        };
        out.push(outcome);
    }
    Ok(out)
}

async fn prune(
    pool: &PgPool,
    sql: &Sql,
    offset: Option<i64>,
    older_than: Duration,
) -> Result<u64, StoreError> {
    const CHUNK: i64 = 5000;
    let mut total = 0;
    loop {
        let done = sqlx::query(sql_ref(&sql.prune))
            .bind(offset)
            .bind(duration_millis(older_than))
            .bind(CHUNK)
            .execute(pool)
            .await
            .map_err(db("prune"))?;
        total += done.rows_affected();
        if done.rows_affected() < CHUNK.unsigned_abs() {
            return Ok(total);
        }
    }
}

async fn stats(inner: &Inner, offset: Option<i64>) -> Result<QueueStats, StoreError> {
    let op = "stats";
    let mut stats = QueueStats::default();
    let depth: Vec<(String, i64)> = sqlx::query_as(sql(&inner.sql.depth))
        .bind(offset)
        .fetch_all(&inner.pool)
        .await
        .map_err(db(op))?;
    for (state, count) in depth {
        let state = state
            .parse::<JobState>()
            .map_err(|e| StoreError::backend(op, e))?;
        stats.depth.insert(state, count.max(0).unsigned_abs());
    }

    let oldest: Option<i64> = sqlx::query_scalar(sql(&inner.sql.oldest))
        .bind(offset)
        .fetch_one(&inner.pool)
        .await
        .map_err(db(op))?;
    stats.oldest_available_age = oldest.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs()));

    let running: Vec<(Option<String>, i64)> = sqlx::query_as(sql(&inner.sql.running))
        .fetch_all(&inner.pool)
        .await
        .map_err(db(op))?;
    for (owner, count) in running {
        stats
            .running_by_worker
            .insert(owner.unwrap_or_default(), count.max(0).unsigned_abs());
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------
// Wake-ups

/// Listens on the schema's channel and turns notifications and the jittered
/// polling fallback into wake-up signals, until the store is dropped.
async fn listen_loop(
    store: std::sync::Weak<Inner>,
    pool: PgPool,
    config: PostgresConfig,
    stop: CancellationToken,
) {
    let channel = Sql::new(&config.schema).channel;
    let mut listener: Option<PgListener> = None;
    let mut retry = Duration::from_millis(100);
    let mut rng = fresh_rng();
    loop {
        if listener.is_none() {
            match connect_listener(&pool, &channel).await {
                Ok(l) => {
                    debug!(%channel, "listening for job notifications");
                    listener = Some(l);
                    retry = Duration::from_millis(100);
                    // Anything sent while no one listened is found by a claim.
                    bump(&store, None);
                }
                Err(error) => {
                    debug!(%error, "cannot listen for job notifications yet");
                }
            }
        }
        let fallback = jittered(config.poll_fallback, config.poll_jitter, &mut rng);

        let event = match listener.as_mut() {
            Some(l) => tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(fallback) => Wake::Poll,
                got = l.try_recv() => match got {
                    Ok(Some(n)) => Wake::Queue(n.payload().to_owned()),
                    // The connection was lost; the next call reconnects.
                    Ok(None) => Wake::Poll,
                    Err(error) => {
                        warn!(%error, "job notification listener failed");
                        listener = None;
                        Wake::Poll
                    }
                },
            },
            None => tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(retry.min(fallback)) => {
                    retry = retry.saturating_mul(2).min(Duration::from_secs(5));
                    Wake::Poll
                }
            },
        };
        let alive = match event {
            Wake::Queue(queue) => bump(&store, Some(&queue)),
            Wake::Poll => bump(&store, None),
        };
        if !alive {
            return;
        }
    }
}

enum Wake {
    Queue(String),
    Poll,
}

async fn connect_listener(pool: &PgPool, channel: &str) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// Signals one queue (or all); false once the store is gone.
fn bump(store: &std::sync::Weak<Inner>, queue: Option<&str>) -> bool {
    let Some(inner) = store.upgrade() else {
        return false;
    };
    let wake = lock(&inner.wake);
    let signal = |tx: &watch::Sender<u64>| tx.send_modify(|n| *n = n.wrapping_add(1));
    match queue {
        Some(queue) => {
            if let Some(tx) = wake.get(queue) {
                trace!(queue, "wake-up by notification");
                signal(tx);
            }
        }
        None => wake.values().for_each(signal),
    }
    true
}

fn jittered(mean: Duration, jitter: f64, rng: &mut SmallRng) -> Duration {
    if jitter <= 0.0 {
        return mean;
    }
    let factor = rng.random_range((1.0 - jitter)..=(1.0 + jitter));
    mean.mul_f64(factor)
}

/// A generator seeded differently in every process and store, so workers
/// started together drift apart.
fn fresh_rng() -> SmallRng {
    static NEXT: AtomicI64 = AtomicI64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let salt = NEXT.fetch_add(1, Ordering::Relaxed).unsigned_abs();
    SmallRng::seed_from_u64((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32) ^ salt)
}

// ---------------------------------------------------------------------------
// Rows

fn read_record(row: &PgRow) -> Result<JobRecord, StoreError> {
    let id: i64 = row
        .try_get("id")
        .map_err(|e| StoreError::backend("reading a job", e))?;
    let job = JobId::new(id);
    let corrupt = |field: &'static str| {
        move |e: sqlx::Error| StoreError::Corrupt {
            id: job,
            field,
            source: e.into(),
        }
    };
    let get_i64 = |field: &'static str| row.try_get::<i64, _>(field).map_err(corrupt(field));
    let get_i32 = |field: &'static str| row.try_get::<i32, _>(field).map_err(corrupt(field));
    let get_u32 = |field: &'static str| {
        let n = get_i32(field)?;
        u32::try_from(n).map_err(|e| StoreError::Corrupt {
            id: job,
            field,
            source: e.into(),
        })
    };
    let get_opt =
        |field: &'static str| row.try_get::<Option<i64>, _>(field).map_err(corrupt(field));
    let get_time = |field: &'static str| get_i64(field).map(Timestamp::from_millis);

    let stored: String = row.try_get("state").map_err(corrupt("state"))?;
    let stored = parse_state(job, &stored)?;
    let now = get_time("db_now")?;
    let run_at = get_time("run_at")?;
    let lease_number = get_i64("lease_number")?;
    let owner: Option<String> = row.try_get("lease_owner").map_err(corrupt("lease_owner"))?;
    let lease = match (stored, owner) {
        (JobState::Running, Some(owner)) => Some(Lease {
            number: lease_number,
            owner,
            expires_at: Timestamp::from_millis(get_opt("lease_expires_at")?.unwrap_or(0)),
        }),
        _ => None,
    };
    let backoff: Option<String> = row.try_get("backoff").map_err(corrupt("backoff"))?;
    let backoff = backoff
        .map(|text| serde_json::from_str::<Backoff>(&text))
        .transpose()
        .map_err(|e| StoreError::Corrupt {
            id: job,
            field: "backoff",
            source: e.into(),
        })?;
    let errors: String = row.try_get("errors").map_err(corrupt("errors"))?;
    let errors: Vec<ErrorEntry> =
        serde_json::from_str(&errors).map_err(|e| StoreError::Corrupt {
            id: job,
            field: "errors",
            source: e.into(),
        })?;

    Ok(JobRecord {
        id: job,
        kind: row.try_get("kind").map_err(corrupt("kind"))?,
        queue: row.try_get("queue").map_err(corrupt("queue"))?,
        codec: row.try_get("codec").map_err(corrupt("codec"))?,
        payload: row.try_get("payload").map_err(corrupt("payload"))?,
        state: stored.effective(run_at, now),
        priority: get_i32("priority")?,
        attempt: get_u32("attempt")?,
        max_attempts: get_u32("max_attempts")?,
        rescues: get_u32("rescues")?,
        lease_number,
        lease,
        run_at,
        created_at: get_time("created_at")?,
        attempted_at: get_opt("attempted_at")?.map(Timestamp::from_millis),
        finalized_at: get_opt("finalized_at")?.map(Timestamp::from_millis),
        unique_key: row.try_get("unique_key").map_err(corrupt("unique_key"))?,
        timeout: get_opt("timeout_ms")?.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
        backoff,
        errors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::worker_lost_message;

    #[test]
    fn sql_worker_lost_text_matches_the_reference() {
        let from_sql = format!("{WORKER_LOST_PREFIX}w1{WORKER_LOST_SUFFIX}");
        assert_eq!(from_sql, worker_lost_message("w1"));
    }

    #[test]
    fn schema_names_are_plain_identifiers() {
        assert!(valid_schema("public"));
        assert!(valid_schema("_jobs_2"));
        assert!(!valid_schema(""));
        assert!(!valid_schema("2jobs"));
        assert!(!valid_schema("Jobs"));
        assert!(!valid_schema("jobs\"; DROP TABLE x; --"));
    }

    #[test]
    fn config_rules_are_named() {
        let config = PostgresConfig {
            poll_jitter: 1.5,
            ..PostgresConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("poll_jitter"), "{err}");
        PostgresConfig::default().validate().unwrap();
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(10), 0.2, &mut rng);
            assert!(
                d >= Duration::from_secs(8) && d <= Duration::from_secs(12),
                "{d:?}"
            );
        }
        assert_eq!(
            jittered(Duration::from_secs(3), 0.0, &mut rng),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn every_statement_names_the_schema() {
        let sql = Sql::new("q_test");
        for text in [
            &sql.enqueue,
            &sql.claim,
            &sql.finish,
            &sql.rescue,
            &sql.prune,
        ] {
            assert!(text.contains("\"q_test\".steadfast_jobs"), "{text}");
        }
    }
}
