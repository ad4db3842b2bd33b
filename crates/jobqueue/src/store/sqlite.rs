//! The SQLite store: a durable queue in one file.
//!
//! Jobs live in a single table in WAL mode, so readers (the admin tool, a
//! dashboard) never block the worker and a crash of the process loses
//! nothing that was committed: the attempt counter is written by the claim
//! itself, before any handler runs. Every multi-row change is one statement
//! or one `BEGIN IMMEDIATE` transaction, so several processes can share the
//! file safely. The schema is created and upgraded on open (embedded
//! migrations tracked in `PRAGMA user_version`).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use steadfast_backoff::Backoff;
use tracing::trace;

use crate::clock::{Clock, SystemClock, Timestamp, duration_millis};
use crate::error::{LeaseLost, StoreError};
use crate::job::{ErrorEntry, FailureKind, JobId, JobRecord, JobState, Lease, NewJob};
use crate::store::{
    Cancel, ClaimRequest, Completion, Enqueued, Finish, FinishResult, LeaseRef, ListFilter, Purge,
    QueueStats, Redrive, Rescued, Store, parse_state, run_database_call,
};

/// A store in a SQLite database file.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use steadfast_jobqueue::{Queue, SqliteStore};
///
/// let dir = tempfile::tempdir()?;
/// let store = SqliteStore::open(dir.path().join("jobs.db")).await?;
/// let queue = Queue::new(store);
/// # let _ = queue;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    paused_time_safe: bool,
    /// Serialises this process's writes, so that its own connections never
    /// meet in SQLite's busy handler (which backs off by sleeping).
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("paused_time_safe", &self.paused_time_safe)
            .finish_non_exhaustive()
    }
}

/// Options for opening a [`SqliteStore`].
#[must_use = "a builder does nothing until opened"]
pub struct SqliteStoreBuilder {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    max_connections: u32,
    busy_timeout: Duration,
    paused_time_safe: bool,
}

impl SqliteStoreBuilder {
    /// Sets the clock that decides what is due. Default: the system clock.
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Sets the connection pool size. Default 4.
    pub fn max_connections(mut self, max: u32) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets how long a write waits for another writer (another process on
    /// the same file) before failing. Default 5 s.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Runs each database call on tokio's blocking pool, which stops paused
    /// tokio time from jumping ahead while a query is in flight. For tests
    /// under `start_paused`; it costs a thread hop per call. Default off.
    pub fn paused_time_safe(mut self, safe: bool) -> Self {
        self.paused_time_safe = safe;
        self
    }

    /// Opens (creating if needed) the database and brings its schema up to
    /// date.
    ///
    /// # Errors
    ///
    /// [`StoreError::Invalid`] for a pool size of zero; [`StoreError::Backend`]
    /// if the file cannot be opened or migrated.
    pub async fn open(self) -> Result<SqliteStore, StoreError> {
        if self.max_connections == 0 {
            return Err(StoreError::Invalid {
                reason: "max_connections must be at least 1".to_owned(),
            });
        }
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(self.busy_timeout);
        let store = SqliteStore {
            pool: SqlitePoolOptions::new()
                .max_connections(self.max_connections)
                .connect_lazy_with(options),
            clock: self.clock,
            paused_time_safe: self.paused_time_safe,
            writer: Arc::new(tokio::sync::Mutex::new(())),
        };
        let pool = store.pool.clone();
        store.write(async move { migrate(&pool).await }).await?;
        Ok(store)
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the queue database at `path` with default
    /// options.
    ///
    /// # Errors
    ///
    /// [`StoreError::Backend`] if the file cannot be opened or migrated.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder(path).open().await
    }

    /// Starts configuring a store at `path`.
    pub fn builder(path: impl AsRef<Path>) -> SqliteStoreBuilder {
        SqliteStoreBuilder {
            path: path.as_ref().to_owned(),
            clock: Arc::new(SystemClock),
            max_connections: 4,
            busy_timeout: Duration::from_secs(5),
            paused_time_safe: false,
        }
    }

    /// Closes the connection pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs a write under the process-wide writer lock.
    async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let guard = Arc::clone(&self.writer).lock_owned().await;
        self.run(async move {
            let out = work.await;
            drop(guard);
            out
        })
        .await
    }

    async fn run<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        run_database_call(self.paused_time_safe, work).await
    }
}

const SCHEMA_V1: &str = r#"
CREATE TABLE IF NOT EXISTS steadfast_jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    kind             TEXT    NOT NULL,
    queue            TEXT    NOT NULL,
    codec            TEXT    NOT NULL,
    payload          BLOB    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    rescues          INTEGER NOT NULL DEFAULT 0,
    lease_number     INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_at INTEGER,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    attempted_at     INTEGER,
    finalized_at     INTEGER,
    unique_key       TEXT,
    timeout_ms       INTEGER,
    backoff          TEXT,
    errors           TEXT    NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS steadfast_jobs_due
    ON steadfast_jobs (queue, priority DESC, run_at, id)
    WHERE state IN ('scheduled', 'available', 'retryable');
CREATE INDEX IF NOT EXISTS steadfast_jobs_leases
    ON steadfast_jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS steadfast_jobs_state ON steadfast_jobs (state, id);
CREATE UNIQUE INDEX IF NOT EXISTS steadfast_jobs_unique
    ON steadfast_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state IN ('scheduled', 'available', 'running', 'retryable');
"#;

/// The schema steps, applied in order; `PRAGMA user_version` records how
/// many have run.
const MIGRATIONS: &[&str] = &[SCHEMA_V1];

async fn migrate(pool: &SqlitePool) -> Result<(), StoreError> {
    let mut tx = begin(pool, "migrate").await?;
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| StoreError::backend("migrate", e))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied > MIGRATIONS.len() {
        return Err(StoreError::Invalid {
            reason: format!("database schema version {version} is newer than this build knows"),
        });
    }
    for (step, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        sqlx::raw_sql(*sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::backend("migrate", e))?;
        let set = format!("PRAGMA user_version = {}", step + 1);
        sqlx::raw_sql(sqlx::AssertSqlSafe(set))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::backend("migrate", e))?;
    }
    commit(tx, "migrate").await
}

async fn begin(
    pool: &SqlitePool,
    op: &'static str,
) -> Result<Transaction<'static, Sqlite>, StoreError> {
    pool.begin_with("BEGIN IMMEDIATE")
        .await
        .map_err(|e| StoreError::backend(op, e))
}

async fn commit(tx: Transaction<'static, Sqlite>, op: &'static str) -> Result<(), StoreError> {
    tx.commit().await.map_err(|e| StoreError::backend(op, e))
}

macro_rules! columns {
    () => {
        "id, kind, queue, codec, payload, state, priority, attempt, max_attempts, rescues, \
         lease_number, lease_owner, lease_expires_at, run_at, created_at, attempted_at, \
         finalized_at, unique_key, timeout_ms, backoff, errors"
    };
}

fn to_i64(n: u32) -> i64 {
    i64::from(n)
}

fn to_u32(id: i64, field: &'static str, n: i64) -> Result<u32, StoreError> {
    u32::try_from(n).map_err(|e| StoreError::Corrupt {
        id: JobId::new(id),
        field,
        source: e.into(),
    })
}

fn read_record(row: &SqliteRow, now: Timestamp) -> Result<JobRecord, StoreError> {
    let id: i64 = row
        .try_get("id")
        .map_err(|e| StoreError::backend("reading a job", e))?;
    let corrupt = |field: &'static str| {
        move |e: sqlx::Error| StoreError::Corrupt {
            id: JobId::new(id),
            field,
            source: e.into(),
        }
    };
    let get_i64 = |field: &'static str| row.try_get::<i64, _>(field).map_err(corrupt(field));
    let get_opt =
        |field: &'static str| row.try_get::<Option<i64>, _>(field).map_err(corrupt(field));

    let stored: String = row.try_get("state").map_err(corrupt("state"))?;
    let stored = parse_state(JobId::new(id), &stored)?;
    let run_at = Timestamp::from_millis(get_i64("run_at")?);
    let lease_number = get_i64("lease_number")?;
    let lease = match (
        stored,
        row.try_get::<Option<String>, _>("lease_owner")
            .map_err(corrupt("lease_owner"))?,
    ) {
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
            id: JobId::new(id),
            field: "backoff",
            source: e.into(),
        })?;
    let errors: String = row.try_get("errors").map_err(corrupt("errors"))?;
    let errors: Vec<ErrorEntry> =
        serde_json::from_str(&errors).map_err(|e| StoreError::Corrupt {
            id: JobId::new(id),
            field: "errors",
            source: e.into(),
        })?;

    Ok(JobRecord {
        id: JobId::new(id),
        kind: row.try_get("kind").map_err(corrupt("kind"))?,
        queue: row.try_get("queue").map_err(corrupt("queue"))?,
        codec: row.try_get("codec").map_err(corrupt("codec"))?,
        payload: row.try_get("payload").map_err(corrupt("payload"))?,
        state: stored.effective(run_at, now),
        priority: i32::try_from(get_i64("priority")?).map_err(|e| StoreError::Corrupt {
            id: JobId::new(id),
            field: "priority",
            source: e.into(),
        })?,
        attempt: to_u32(id, "attempt", get_i64("attempt")?)?,
        max_attempts: to_u32(id, "max_attempts", get_i64("max_attempts")?)?,
        rescues: to_u32(id, "rescues", get_i64("rescues")?)?,
        lease_number,
        lease,
        run_at,
        created_at: Timestamp::from_millis(get_i64("created_at")?),
        attempted_at: get_opt("attempted_at")?.map(Timestamp::from_millis),
        finalized_at: get_opt("finalized_at")?.map(Timestamp::from_millis),
        unique_key: row.try_get("unique_key").map_err(corrupt("unique_key"))?,
        timeout: get_opt("timeout_ms")?.map(|ms| Duration::from_millis(ms.max(0).unsigned_abs())),
        backoff,
        errors,
    })
}

fn db(op: &'static str) -> impl Fn(sqlx::Error) -> StoreError {
    move |e| StoreError::backend(op, e)
}

impl Store for SqliteStore {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, StoreError> {
        for job in &jobs {
            job.validate().map_err(|e| StoreError::Invalid {
                reason: e.to_string(),
            })?;
        }
        let now = self.now();
        let pool = self.pool.clone();
        self.write(async move { enqueue(&pool, jobs, now).await })
            .await
    }

    async fn claim(&self, req: &ClaimRequest) -> Result<Vec<JobRecord>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        let req = req.clone();
        self.write(async move { claim(&pool, req, now).await })
            .await
    }

    async fn heartbeat(
        &self,
        leases: &[LeaseRef],
        extend: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        let leases = leases.to_vec();
        self.write(async move { heartbeat(&pool, leases, now.saturating_add(extend)).await })
            .await
    }

    async fn finish(&self, completions: Vec<Completion>) -> Result<Vec<FinishResult>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        self.write(async move { finish(&pool, completions, now).await })
            .await
    }

    async fn rescue_expired(&self, limit: usize) -> Result<Vec<Rescued>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        self.write(async move { rescue(&pool, limit, now).await })
            .await
    }

    async fn get(&self, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        self.run(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM steadfast_jobs WHERE id = ?"
            ))
            .bind(id.get())
            .fetch_optional(&pool)
            .await
            .map_err(db("get"))?;
            row.map(|row| read_record(&row, now)).transpose()
        })
        .await
    }

    async fn list(&self, filter: &ListFilter) -> Result<Vec<JobRecord>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        let filter = filter.clone();
        self.run(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM steadfast_jobs WHERE id > ?1 AND (?2 IS NULL OR queue = ?2) AND (?3 IS NULL OR \
                 (CASE WHEN state IN ('scheduled', 'available', 'retryable') AND run_at <= ?4 \
                 THEN 'available' ELSE state END) = ?3) ORDER BY id LIMIT ?5"
            ))
            .bind(filter.after.map_or(i64::MIN, JobId::get))
            .bind(filter.queue.clone())
            .bind(filter.state.map(JobState::as_str))
            .bind(now.as_millis())
            .bind(i64::try_from(filter.effective_limit()).unwrap_or(i64::MAX))
            .fetch_all(&pool)
            .await
            .map_err(db("list"))?;
            rows.iter().map(|row| read_record(row, now)).collect()
        })
        .await
    }

    async fn redrive(&self, ids: &[JobId]) -> Result<Vec<Redrive>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        let ids = ids.to_vec();
        self.write(async move { redrive(&pool, ids, now).await })
            .await
    }

    async fn purge_dead(&self, which: &Purge) -> Result<u64, StoreError> {
        let pool = self.pool.clone();
        let which = which.clone();
        self.write(async move {
            let query = match &which {
                Purge::All => sqlx::query("DELETE FROM steadfast_jobs WHERE state = 'dead'"),
                Purge::Ids(ids) => {
                    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
                    let ids =
                        serde_json::to_string(&ids).map_err(|e| StoreError::backend("purge", e))?;
                    sqlx::query(
                        "DELETE FROM steadfast_jobs WHERE state = 'dead' \
                         AND id IN (SELECT value FROM json_each(?))",
                    )
                    .bind(ids)
                }
                Purge::DiedBefore(t) => sqlx::query(
                    "DELETE FROM steadfast_jobs WHERE state = 'dead' AND finalized_at < ?",
                )
                .bind(t.as_millis()),
            };
            let done = query.execute(&pool).await.map_err(db("purge"))?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn cancel(&self, ids: &[JobId]) -> Result<Vec<Cancel>, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        let ids = ids.to_vec();
        self.write(async move { cancel(&pool, ids, now).await })
            .await
    }

    async fn stats(&self) -> Result<QueueStats, StoreError> {
        let now = self.now();
        let pool = self.pool.clone();
        self.run(async move { stats(&pool, now).await }).await
    }
}

async fn enqueue(
    pool: &SqlitePool,
    jobs: Vec<NewJob>,
    now: Timestamp,
) -> Result<Vec<Enqueued>, StoreError> {
    let op = "enqueue";
    let mut tx = begin(pool, op).await?;
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let run_at = job.run_at.unwrap_or_else(|| now.saturating_add(job.delay));
        let state = if run_at > now {
            JobState::Scheduled
        } else {
            JobState::Available
        };
        let backoff = job
            .backoff
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::backend(op, e))?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO steadfast_jobs (kind, queue, codec, payload, state, priority, max_attempts, \
             run_at, created_at, unique_key, timeout_ms, backoff) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&job.kind)
        .bind(&job.queue)
        .bind(&job.codec)
        .bind(&job.payload)
        .bind(state.as_str())
        .bind(job.priority)
        .bind(to_i64(job.max_attempts))
        .bind(run_at.as_millis())
        .bind(now.as_millis())
        .bind(&job.unique_key)
        .bind(job.timeout.map(duration_millis))
        .bind(backoff)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db(op))?;

        let outcome = match inserted {
            Some(id) => Enqueued::Inserted(JobId::new(id)),
            None => {
                let existing: i64 = sqlx::query_scalar(
                    "SELECT id FROM steadfast_jobs WHERE unique_key = ? \
                     AND state IN ('scheduled', 'available', 'running', 'retryable')",
                )
                .bind(&job.unique_key)
                .fetch_one(&mut *tx)
                .await
                .map_err(db(op))?;
                Enqueued::Duplicate(JobId::new(existing))
            }
        };
        out.push(outcome);
    }
    commit(tx, op).await?;
    Ok(out)
}

async fn claim(
    pool: &SqlitePool,
    req: ClaimRequest,
    now: Timestamp,
) -> Result<Vec<JobRecord>, StoreError> {
    let kinds = serde_json::to_string(&req.kinds).map_err(|e| StoreError::backend("claim", e))?;
    let rows = sqlx::query(concat!(
        "UPDATE steadfast_jobs SET state = 'running', attempt = attempt + 1, \
         lease_number = lease_number + 1, lease_owner = ?1, lease_expires_at = ?2, attempted_at = ?3 \
         WHERE id IN (SELECT id FROM steadfast_jobs WHERE queue = ?4 \
         AND state IN ('scheduled', 'available', 'retryable') AND run_at <= ?3 \
         AND kind IN (SELECT value FROM json_each(?5)) \
         ORDER BY priority DESC, run_at, id LIMIT ?6) RETURNING ",
        columns!()
    ))
    .bind(&req.worker)
    .bind(now.saturating_add(req.lease).as_millis())
    .bind(now.as_millis())
    .bind(&req.queue)
    .bind(kinds)
    .bind(i64::try_from(req.limit).unwrap_or(i64::MAX))
    .fetch_all(pool)
    .await
    .map_err(db("claim"))?;

    trace!(queue = %req.queue, worker = %req.worker, claimed = rows.len(), "claimed jobs");
    let mut jobs = rows
        .iter()
        .map(|row| read_record(row, now))
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by_key(|job| (std::cmp::Reverse(job.priority), job.run_at, job.id));
    Ok(jobs)
}

async fn heartbeat(
    pool: &SqlitePool,
    leases: Vec<LeaseRef>,
    until: Timestamp,
) -> Result<Vec<bool>, StoreError> {
    let pairs: Vec<[i64; 2]> = leases.iter().map(|l| [l.id.get(), l.lease]).collect();
    let pairs = serde_json::to_string(&pairs).map_err(|e| StoreError::backend("heartbeat", e))?;
    let held: Vec<(i64, i64)> = sqlx::query_as(
        "UPDATE steadfast_jobs SET lease_expires_at = ?1 WHERE state = 'running' \
         AND (id, lease_number) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') \
         FROM json_each(?2)) RETURNING id, lease_number",
    )
    .bind(until.as_millis())
    .bind(pairs)
    .fetch_all(pool)
    .await
    .map_err(db("heartbeat"))?;

    Ok(leases
        .iter()
        .map(|l| held.contains(&(l.id.get(), l.lease)))
        .collect())
}

async fn finish(
    pool: &SqlitePool,
    completions: Vec<Completion>,
    now: Timestamp,
) -> Result<Vec<FinishResult>, StoreError> {
    let op = "finish";
    let mut tx = begin(pool, op).await?;
    let mut out: Vec<Option<FinishResult>> = vec![None; completions.len()];

    // Successes, the bulk of any batch, are written in one statement.
    let completes: Vec<(usize, LeaseRef)> = completions
        .iter()
        .enumerate()
        .filter(|(_, c)| c.finish == Finish::Complete)
        .map(|(i, c)| (i, c.lease))
        .collect();
    if !completes.is_empty() {
        let pairs: Vec<[i64; 2]> = completes
            .iter()
            .map(|(_, l)| [l.id.get(), l.lease])
            .collect();
        let pairs = serde_json::to_string(&pairs).map_err(|e| StoreError::backend(op, e))?;
        let done: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE steadfast_jobs SET state = 'completed', finalized_at = ?1, lease_expires_at = NULL \
             WHERE state = 'running' AND (id, lease_number) IN (SELECT json_extract(value, '$[0]'), \
             json_extract(value, '$[1]') FROM json_each(?2)) RETURNING id, lease_number",
        )
        .bind(now.as_millis())
        .bind(pairs)
        .fetch_all(&mut *tx)
        .await
        .map_err(db(op))?;
        for (index, lease) in completes {
            out[index] = Some(if done.contains(&(lease.id.get(), lease.lease)) {
                Ok(JobState::Completed)
            } else {
                Err(LeaseLost {
                    id: lease.id,
                    lease: lease.lease,
                })
            });
        }
    }

    for (index, Completion { lease, finish }) in completions.into_iter().enumerate() {
        if out[index].is_some() {
            continue;
        }
        let head = |sql: &'static str| {
            sqlx::query(sql)
                .bind(now.as_millis())
                .bind(lease.id.get())
                .bind(lease.lease)
        };
        let query = match finish {
            Finish::Complete => continue,
            Finish::Retry {
                delay,
                kind,
                message,
            } => head(
                "UPDATE steadfast_jobs SET \
                 state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'retryable' END, \
                 finalized_at = CASE WHEN attempt >= max_attempts THEN ?1 ELSE NULL END, \
                 run_at = CASE WHEN attempt >= max_attempts THEN run_at ELSE ?4 END, \
                 errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?1, \
                 'kind', ?5, 'message', ?6)), lease_expires_at = NULL \
                 WHERE id = ?2 AND state = 'running' AND lease_number = ?3 RETURNING state",
            )
            .bind(now.saturating_add(delay).as_millis())
            .bind(kind.as_str())
            .bind(message),
            Finish::Dead { kind, message } => head(
                "UPDATE steadfast_jobs SET state = 'dead', finalized_at = ?1, \
                 errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?1, \
                 'kind', ?4, 'message', ?5)), lease_expires_at = NULL \
                 WHERE id = ?2 AND state = 'running' AND lease_number = ?3 RETURNING state",
            )
            .bind(kind.as_str())
            .bind(message),
            Finish::Snooze { delay } => head(
                "UPDATE steadfast_jobs SET state = 'scheduled', attempt = max(attempt - 1, 0), \
                 run_at = max(?4, ?1), lease_expires_at = NULL, finalized_at = NULL \
                 WHERE id = ?2 AND state = 'running' AND lease_number = ?3 RETURNING state",
            )
            .bind(now.saturating_add(delay).as_millis()),
            Finish::Release {
                charge_attempt,
                message,
            } => head(
                "UPDATE steadfast_jobs SET \
                 attempt = CASE WHEN ?4 THEN attempt ELSE max(attempt - 1, 0) END, \
                 state = CASE WHEN (CASE WHEN ?4 THEN attempt ELSE max(attempt - 1, 0) END) \
                 >= max_attempts THEN 'dead' ELSE 'available' END, \
                 finalized_at = CASE WHEN (CASE WHEN ?4 THEN attempt ELSE max(attempt - 1, 0) END) \
                 >= max_attempts THEN ?1 ELSE NULL END, \
                 run_at = ?1, \
                 errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?1, \
                 'kind', ?5, 'message', ?6)), lease_expires_at = NULL \
                 WHERE id = ?2 AND state = 'running' AND lease_number = ?3 RETURNING state",
            )
            .bind(charge_attempt)
            .bind(FailureKind::Interrupted.as_str())
            .bind(message),
        };
        let state: Option<String> = query
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(op))?
            .map(|row| row.try_get(0))
            .transpose()
            .map_err(db(op))?;
        let result = match state {
            None => Err(LeaseLost {
                id: lease.id,
                lease: lease.lease,
            }),
            Some(state) => Ok(parse_state(lease.id, &state)?),
        };
        out[index] = Some(result);
    }
    commit(tx, op).await?;
    // Every slot was filled: completes above, the rest in the loop.
    Ok(out.into_iter().flatten().collect())
}

async fn rescue(
    pool: &SqlitePool,
    limit: usize,
    now: Timestamp,
) -> Result<Vec<Rescued>, StoreError> {
    let rows: Vec<(i64, i64, Option<String>, String)> = sqlx::query_as(
        "UPDATE steadfast_jobs SET \
         errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?1, \
         'kind', ?3, 'message', ?4 || coalesce(lease_owner, '') || ?5)), \
         rescues = rescues + 1, \
         state = CASE WHEN attempt >= max_attempts THEN 'dead' ELSE 'available' END, \
         finalized_at = CASE WHEN attempt >= max_attempts THEN ?1 ELSE NULL END, \
         run_at = CASE WHEN attempt >= max_attempts THEN run_at ELSE ?1 END, \
         lease_expires_at = NULL \
         WHERE id IN (SELECT id FROM steadfast_jobs WHERE state = 'running' \
         AND lease_expires_at <= ?1 ORDER BY lease_expires_at LIMIT ?2) \
         RETURNING id, lease_number, lease_owner, state",
    )
    .bind(now.as_millis())
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .bind(FailureKind::WorkerLost.as_str())
    .bind(WORKER_LOST_PREFIX)
    .bind(WORKER_LOST_SUFFIX)
    .fetch_all(pool)
    .await
    .map_err(db("rescue"))?;

    if !rows.is_empty() {
        trace!(rescued = rows.len(), "took back jobs with expired leases");
    }
    rows.into_iter()
        .map(|(id, lease, worker, state)| {
            let state = parse_state(JobId::new(id), &state)?;
            Ok(Rescued {
                id: JobId::new(id),
                lease,
                worker: worker.unwrap_or_default(),
                state,
            })
        })
        .collect()
}

/// The pieces around the worker id in `worker_lost_message`.
const WORKER_LOST_PREFIX: &str = "worker lost: lease held by ";
const WORKER_LOST_SUFFIX: &str = " expired without a heartbeat";

async fn redrive(
    pool: &SqlitePool,
    ids: Vec<JobId>,
    now: Timestamp,
) -> Result<Vec<Redrive>, StoreError> {
    let op = "redrive";
    let mut tx = begin(pool, op).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let found: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT state, unique_key FROM steadfast_jobs WHERE id = ?")
                .bind(id.get())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(op))?;
        let Some((state, unique_key)) = found else {
            out.push(Redrive::NotFound);
            continue;
        };
        let state = parse_state(id, &state)?;
        if state.is_active() {
            out.push(Redrive::AlreadyQueued);
            continue;
        }
        if state != JobState::Dead {
            out.push(Redrive::NotDead(state));
            continue;
        }
        if let Some(key) = unique_key {
            let holder: Option<i64> = sqlx::query_scalar(
                "SELECT id FROM steadfast_jobs WHERE unique_key = ? AND id != ? \
                 AND state IN ('scheduled', 'available', 'running', 'retryable')",
            )
            .bind(key)
            .bind(id.get())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db(op))?;
            if let Some(holder) = holder {
                out.push(Redrive::Duplicate(JobId::new(holder)));
                continue;
            }
        }
        sqlx::query(
            "UPDATE steadfast_jobs SET state = 'available', run_at = ?1, attempt = 0, rescues = 0, \
             lease_expires_at = NULL, finalized_at = NULL WHERE id = ?2 AND state = 'dead'",
        )
        .bind(now.as_millis())
        .bind(id.get())
        .execute(&mut *tx)
        .await
        .map_err(db(op))?;
        out.push(Redrive::Redriven);
    }
    commit(tx, op).await?;
    Ok(out)
}

async fn cancel(
    pool: &SqlitePool,
    ids: Vec<JobId>,
    now: Timestamp,
) -> Result<Vec<Cancel>, StoreError> {
    let op = "cancel";
    let mut tx = begin(pool, op).await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let state: Option<(String, i64)> =
            sqlx::query_as("SELECT state, run_at FROM steadfast_jobs WHERE id = ?")
                .bind(id.get())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db(op))?;
        let Some((state, run_at)) = state else {
            out.push(Cancel::NotFound);
            continue;
        };
        let state = parse_state(id, &state)?;
        if !state.is_waiting() {
            out.push(Cancel::NotCancellable(
                state.effective(Timestamp::from_millis(run_at), now),
            ));
            continue;
        }
        sqlx::query("UPDATE steadfast_jobs SET state = 'cancelled', finalized_at = ? WHERE id = ?")
            .bind(now.as_millis())
            .bind(id.get())
            .execute(&mut *tx)
            .await
            .map_err(db(op))?;
        out.push(Cancel::Cancelled);
    }
    commit(tx, op).await?;
    Ok(out)
}

async fn stats(pool: &SqlitePool, now: Timestamp) -> Result<QueueStats, StoreError> {
    let op = "stats";
    let mut stats = QueueStats::default();
    let depth: Vec<(String, i64)> = sqlx::query_as(
        "SELECT CASE WHEN state IN ('scheduled', 'available', 'retryable') AND run_at <= ?1 \
         THEN 'available' ELSE state END AS effective, count(*) FROM steadfast_jobs GROUP BY effective"
    )
    .bind(now.as_millis())
    .fetch_all(pool)
    .await
    .map_err(db(op))?;
    for (state, count) in depth {
        let state = state
            .parse::<JobState>()
            .map_err(|e| StoreError::backend(op, e))?;
        stats.depth.insert(state, count.max(0).unsigned_abs());
    }

    let oldest: Option<i64> = sqlx::query_scalar(
        "SELECT min(run_at) FROM steadfast_jobs \
         WHERE state IN ('scheduled', 'available', 'retryable') AND run_at <= ?1",
    )
    .bind(now.as_millis())
    .fetch_one(pool)
    .await
    .map_err(db(op))?;
    stats.oldest_available_age =
        oldest.map(|t| now.saturating_duration_since(Timestamp::from_millis(t)));

    let running: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT lease_owner, count(*) FROM steadfast_jobs WHERE state = 'running' GROUP BY lease_owner",
    )
    .fetch_all(pool)
    .await
    .map_err(db(op))?;
    for (owner, count) in running {
        stats
            .running_by_worker
            .insert(owner.unwrap_or_default(), count.max(0).unsigned_abs());
    }
    Ok(stats)
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
}
