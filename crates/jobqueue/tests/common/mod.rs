//! Shared fixtures for the integration tests: stores on paused time, a
//! store wrapper with fault hooks, an event recorder and polling helpers.

#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test binaries, each using a different subset"
)]

pub mod property;
pub mod scenarios;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast_jobqueue::{
    Cancel, ClaimRequest, Completion, Enqueued, Event, FinishResult, InMemoryStore, JobId,
    JobRecord, LeaseRef, ListFilter, Purge, Queue, QueueStats, Redrive, Rescued, SqliteStore,
    Store, StoreError, Timestamp, TokioClock,
};
use tempfile::TempDir;
use tokio::time::Instant;

/// An in-memory store on tokio time.
pub fn memory() -> Arc<InMemoryStore> {
    Arc::new(InMemoryStore::with_clock(TokioClock::new()))
}

/// A SQLite store in a fresh temporary file, on tokio time, safe under
/// paused time. Keep the directory alive as long as the store.
pub async fn sqlite() -> (Arc<SqliteStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::builder(dir.path().join("jobs.db"))
        .clock(TokioClock::new())
        .paused_time_safe(true)
        .open()
        .await
        .expect("open the SQLite store");
    (Arc::new(store), dir)
}

/// A SQLite store in a fresh temporary file on the system clock, for tests
/// in real time.
pub async fn sqlite_real_time() -> (Arc<SqliteStore>, TempDir) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = SqliteStore::open(dir.path().join("jobs.db"))
        .await
        .expect("open the SQLite store");
    (Arc::new(store), dir)
}

/// Runs the body `$name` (an `async fn(Arc<S>)` generic over the store,
/// from `common::scenarios`, or from the calling file with `local`) once on
/// the in-memory store and once on SQLite, both under paused time.
#[macro_export]
macro_rules! on_both_stores {
    (local $name:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                super::$name($crate::common::memory()).await;
            }

            #[tokio::test(start_paused = true)]
            async fn sqlite() {
                let (store, _dir) = $crate::common::sqlite().await;
                super::$name(store).await;
            }
        }
    };
    ($name:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn memory() {
                $crate::common::scenarios::$name($crate::common::memory()).await;
            }

            #[tokio::test(start_paused = true)]
            async fn sqlite() {
                let (store, _dir) = $crate::common::sqlite().await;
                $crate::common::scenarios::$name(store).await;
            }
        }
    };
}

/// A store wrapper with hooks that tests use to inject faults into one
/// worker's view of a shared store.
pub struct Hooked<S> {
    inner: Arc<S>,
    stall_heartbeats_until: Mutex<Option<Instant>>,
    finish_delay: Mutex<Duration>,
    claims: AtomicU64,
}

impl<S: Store> Hooked<S> {
    pub fn new(inner: Arc<S>) -> Self {
        Self {
            inner,
            stall_heartbeats_until: Mutex::new(None),
            finish_delay: Mutex::new(Duration::ZERO),
            claims: AtomicU64::new(0),
        }
    }

    /// Makes every heartbeat call made before `until` wait until then.
    pub fn stall_heartbeats_until(&self, until: Instant) {
        *self.stall_heartbeats_until.lock().unwrap() = Some(until);
    }

    /// Makes every outcome write take `delay` (a slow store).
    pub fn delay_finishes(&self, delay: Duration) {
        *self.finish_delay.lock().unwrap() = delay;
    }

    /// How many claim calls went through this wrapper.
    pub fn claims(&self) -> u64 {
        self.claims.load(Ordering::SeqCst)
    }
}

impl<S: Store> Store for Hooked<S> {
    fn now(&self) -> Timestamp {
        self.inner.now()
    }

    fn enqueue(
        &self,
        jobs: Vec<steadfast_jobqueue::NewJob>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, StoreError>> + Send {
        self.inner.enqueue(jobs)
    }

    fn claim(
        &self,
        req: &ClaimRequest,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send {
        self.claims.fetch_add(1, Ordering::SeqCst);
        self.inner.claim(req)
    }

    async fn heartbeat(
        &self,
        leases: &[LeaseRef],
        extend: Duration,
    ) -> Result<Vec<bool>, StoreError> {
        let stall = *self.stall_heartbeats_until.lock().unwrap();
        if let Some(until) = stall {
            tokio::time::sleep_until(until).await;
        }
        self.inner.heartbeat(leases, extend).await
    }

    async fn finish(&self, completions: Vec<Completion>) -> Result<Vec<FinishResult>, StoreError> {
        let delay = *self.finish_delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        self.inner.finish(completions).await
    }

    fn rescue_expired(
        &self,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Rescued>, StoreError>> + Send {
        self.inner.rescue_expired(limit)
    }

    fn get(&self, id: JobId) -> impl Future<Output = Result<Option<JobRecord>, StoreError>> + Send {
        self.inner.get(id)
    }

    fn list(
        &self,
        filter: &ListFilter,
    ) -> impl Future<Output = Result<Vec<JobRecord>, StoreError>> + Send {
        self.inner.list(filter)
    }

    fn redrive(
        &self,
        ids: &[JobId],
    ) -> impl Future<Output = Result<Vec<Redrive>, StoreError>> + Send {
        self.inner.redrive(ids)
    }

    fn purge_dead(&self, which: &Purge) -> impl Future<Output = Result<u64, StoreError>> + Send {
        self.inner.purge_dead(which)
    }

    fn cancel(
        &self,
        ids: &[JobId],
    ) -> impl Future<Output = Result<Vec<Cancel>, StoreError>> + Send {
        self.inner.cancel(ids)
    }

    fn stats(&self) -> impl Future<Output = Result<QueueStats, StoreError>> + Send {
        self.inner.stats()
    }

    fn wakeups(&self, queue: &str) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.inner.wakeups(queue)
    }
}

/// Records every event of a queue with the (tokio) time it arrived.
#[derive(Clone)]
pub struct EventLog {
    events: Arc<Mutex<Vec<(Duration, Event)>>>,
}

impl EventLog {
    pub fn start<S: Store>(queue: &Queue<S>) -> Self {
        let mut rx = queue.subscribe();
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        let origin = Instant::now();
        tokio::spawn(async move {
            while let Ok(event) = rx.recv().await {
                sink.lock().unwrap().push((origin.elapsed(), event));
            }
        });
        Self { events }
    }

    pub fn all(&self) -> Vec<(Duration, Event)> {
        self.events.lock().unwrap().clone()
    }

    /// The events matching `pred`, with their arrival times.
    pub fn matching(&self, pred: impl Fn(&Event) -> bool) -> Vec<(Duration, Event)> {
        self.all().into_iter().filter(|(_, e)| pred(e)).collect()
    }
}

/// Polls `check` every 10 ms of tokio time until it holds; panics after
/// `within`.
pub async fn wait_until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads a job that must exist.
pub async fn job<S: Store>(store: &S, id: JobId) -> JobRecord {
    store
        .get(id)
        .await
        .expect("store read")
        .expect("the job must never go missing")
}
