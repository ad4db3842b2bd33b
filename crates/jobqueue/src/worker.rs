//! Workers: claim jobs, run their handlers under a lease, report outcomes.
//!
//! A worker runs these loops until its shutdown token fires:
//!
//! - one claimer per queue, taking as many due jobs as it has free slots
//!   (per-queue concurrency) in one store call, then waiting for a free slot,
//!   a wake-up from an enqueue in this process, or the poll interval;
//! - a heartbeat loop that extends every lease it holds in one store call on
//!   its own task, and cancels any attempt whose lease the store says is gone;
//! - a sweeper that takes back jobs whose lease expired (other workers'
//!   crashes), so recovery never needs a manual call;
//! - a completer that writes attempt outcomes in batches, each guarded by
//!   its lease number.
//!
//! Each attempt runs on its own task in a `tracing` span, with a watchdog:
//! if the worker cannot renew the lease before it runs out, the attempt's
//! cancellation fires even though the store was not reachable.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use steadfast_backoff::{Backoff, ErrorClass};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::{Instrument, debug, info_span, trace, warn};

use crate::error::{BoxError, BuildError, LeaseLost};
use crate::handler::{
    ErasedHandler, Failure, HandlerFuture, JobContext, JobError, JobRequest, KindOptions, Outcome,
    Registered, Registry, TypedHandler,
};
use crate::job::{DEFAULT_QUEUE, FailureKind, Job, JobId, JobRecord, JobState};
use crate::queue::{Counters, Event, Queue, Shared};
use crate::store::{ClaimRequest, Completion, Finish, FinishResult, LeaseRef, Store};

/// The history note of a job handed back by a shutdown.
pub const INTERRUPTED_BY_SHUTDOWN: &str = "interrupted by shutdown";

/// Plain settings of a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct WorkerConfig {
    /// How long a claim's lease lasts without a heartbeat. Default 30 s. A
    /// crashed worker's jobs are recovered within about a lease plus a
    /// sweep interval.
    pub lease: Duration,
    /// How often leases are extended; must be shorter than `lease`.
    /// Default 10 s.
    pub heartbeat: Duration,
    /// How long an idle claimer waits before asking the store again.
    /// Default 1 s.
    pub poll_interval: Duration,
    /// How often expired leases are looked for. Default 5 s.
    pub sweep_interval: Duration,
    /// The most jobs claimed in one store call. Default 32.
    pub claim_batch: usize,
    /// The most outcomes written in one store call. Default 256.
    pub finish_batch: usize,
    /// How long a shutdown lets running jobs finish before it cancels them
    /// and hands them back. Default 30 s.
    pub drain_timeout: Duration,
    /// How long an attempt whose lease was lost may run on after its
    /// cancellation fired before it is dropped. Default 5 s.
    pub cancel_grace: Duration,
    /// Whether an attempt interrupted by shutdown counts against the job's
    /// attempts. Default false.
    pub charge_interrupted: bool,
    /// The retry policy for kinds and jobs that set none. Default:
    /// exponential from 1 s, doubling, capped at 1 h, full jitter down to
    /// zero (so jobs that fail together spread their retries).
    pub backoff: Backoff,
    /// A seed for retry jitter, for reproducible runs. Default: none.
    pub seed: Option<u64>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(5),
            claim_batch: 32,
            finish_batch: 256,
            drain_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            charge_interrupted: false,
            backoff: Backoff::exponential(Duration::from_secs(1))
                .min_delay(Duration::ZERO)
                .factor(2.0)
                .max_delay(Duration::from_secs(3600))
                .unlimited_attempts(),
            seed: None,
        }
    }
}

impl WorkerConfig {
    /// Checks the rules between settings.
    ///
    /// # Errors
    ///
    /// [`BuildError::Invalid`] naming the rule that was broken.
    pub fn validate(&self) -> Result<(), BuildError> {
        let invalid = |rule: &str| Err(BuildError::Invalid(rule.to_owned()));
        if self.lease.is_zero() {
            return invalid("lease must be longer than zero");
        }
        if self.heartbeat.is_zero() || self.heartbeat >= self.lease {
            return invalid("heartbeat must be longer than zero and shorter than lease");
        }
        if self.poll_interval.is_zero() {
            return invalid("poll_interval must be longer than zero");
        }
        if self.sweep_interval.is_zero() {
            return invalid("sweep_interval must be longer than zero");
        }
        if self.claim_batch == 0 || self.finish_batch == 0 {
            return invalid("claim_batch and finish_batch must be at least 1");
        }
        self.backoff
            .validate()
            .map_err(|e| BuildError::Invalid(format!("backoff: {e}")))
    }
}

/// Configures a [`Worker`]; made by [`Queue::worker`].
#[must_use = "a builder does nothing until built and run"]
pub struct WorkerBuilder<S> {
    queue: Queue<S>,
    config: WorkerConfig,
    id: Option<String>,
    queues: Vec<(String, usize)>,
    registry: Registry,
    duplicate: Option<String>,
}

impl<S: Store> WorkerBuilder<S> {
    pub(crate) fn new(queue: Queue<S>) -> Self {
        Self {
            queue,
            config: WorkerConfig::default(),
            id: None,
            queues: Vec::new(),
            registry: HashMap::new(),
            duplicate: None,
        }
    }

    /// Replaces all plain settings at once.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }

    /// Names the worker (recorded as lease owner). Default: a name made of
    /// the process id and a counter.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Claims from `queue`, running at most `concurrency` of its jobs at a
    /// time. Without any call, the worker serves [`DEFAULT_QUEUE`] with 10.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency));
        self
    }

    /// Sets [`WorkerConfig::lease`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// Sets [`WorkerConfig::heartbeat`].
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.config.heartbeat = every;
        self
    }

    /// Sets [`WorkerConfig::poll_interval`].
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.config.poll_interval = every;
        self
    }

    /// Sets [`WorkerConfig::sweep_interval`].
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.config.sweep_interval = every;
        self
    }

    /// Sets [`WorkerConfig::claim_batch`].
    pub fn claim_batch(mut self, batch: usize) -> Self {
        self.config.claim_batch = batch;
        self
    }

    /// Sets [`WorkerConfig::drain_timeout`].
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// Sets [`WorkerConfig::cancel_grace`].
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.config.cancel_grace = grace;
        self
    }

    /// Sets [`WorkerConfig::charge_interrupted`].
    pub fn charge_interrupted(mut self, charge: bool) -> Self {
        self.config.charge_interrupted = charge;
        self
    }

    /// Sets [`WorkerConfig::backoff`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Sets [`WorkerConfig::seed`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = Some(seed);
        self
    }

    /// Registers a tower service as the handler of kind `J`.
    pub fn register<J, Svc>(self, service: Svc) -> Self
    where
        J: Job,
        Svc: Service<JobRequest<J>> + Clone + Send + Sync + 'static,
        Svc::Response: Into<Outcome>,
        Svc::Error: Into<BoxError>,
        Svc::Future: Send + 'static,
    {
        self.register_with(service, KindOptions::default())
    }

    /// Registers a tower service as the handler of kind `J`, with options.
    pub fn register_with<J, Svc>(mut self, service: Svc, options: KindOptions) -> Self
    where
        J: Job,
        Svc: Service<JobRequest<J>> + Clone + Send + Sync + 'static,
        Svc::Response: Into<Outcome>,
        Svc::Error: Into<BoxError>,
        Svc::Future: Send + 'static,
    {
        let handler: Box<dyn ErasedHandler> = Box::new(TypedHandler::new(service, options.clone()));
        if self
            .registry
            .insert(J::KIND.to_owned(), Registered { handler, options })
            .is_some()
        {
            self.duplicate.get_or_insert_with(|| J::KIND.to_owned());
        }
        self
    }

    /// Registers an async function as the handler of kind `J`.
    pub fn handle<J, F, Fut, O>(self, handler: F) -> Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, JobError>> + Send + 'static,
        O: Into<Outcome>,
    {
        self.handle_with(handler, KindOptions::default())
    }

    /// Registers an async function as the handler of kind `J`, with options.
    pub fn handle_with<J, F, Fut, O>(self, handler: F, options: KindOptions) -> Self
    where
        J: Job,
        F: Fn(J, JobContext) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<O, JobError>> + Send + 'static,
        O: Into<Outcome>,
    {
        let service = tower::service_fn(move |req: JobRequest<J>| handler(req.job, req.context));
        self.register_with(service, options)
    }

    /// Checks the settings and makes the worker.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming the broken rule: an invalid setting, a queue
    /// with zero concurrency, no handler, or a kind registered twice.
    pub fn build(self) -> Result<Worker<S>, BuildError> {
        self.config.validate()?;
        if let Some(kind) = self.duplicate {
            return Err(BuildError::DuplicateKind(kind));
        }
        if self.registry.is_empty() {
            return Err(BuildError::NoHandlers);
        }
        let mut queues = self.queues;
        if queues.is_empty() {
            queues.push((DEFAULT_QUEUE.to_owned(), 10));
        }
        if queues
            .iter()
            .any(|(name, concurrency)| name.is_empty() || *concurrency == 0)
        {
            return Err(BuildError::Invalid(
                "every queue needs a name and a concurrency of at least 1".to_owned(),
            ));
        }

        let id = self.id.unwrap_or_else(default_worker_id);
        Ok(Worker {
            queue: self.queue,
            config: self.config,
            id,
            queues,
            registry: self.registry,
        })
    }
}

/// A configured worker; [`Worker::run`] runs it until shutdown.
pub struct Worker<S> {
    queue: Queue<S>,
    config: WorkerConfig,
    id: String,
    queues: Vec<(String, usize)>,
    registry: Registry,
}

impl<S> std::fmt::Debug for Worker<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("id", &self.id)
            .field("queues", &self.queues)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What a worker's shutdown did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Running jobs cancelled at the drain deadline and handed back.
    pub released: usize,
    /// Claimed jobs that had not started when the shutdown began, handed back.
    pub unstarted: usize,
    /// Attempts dropped because their lease was lost and they did not stop.
    pub abandoned: usize,
}

impl<S: Store> Worker<S> {
    /// The worker's id, as recorded on its leases.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Runs the worker until `shutdown` fires, then shuts down gracefully:
    /// stops claiming at once, lets running jobs finish for up to
    /// [`WorkerConfig::drain_timeout`], then cancels the rest and hands their
    /// jobs straight back to the queue in one write.
    ///
    /// Store errors are logged and retried; they never end the worker.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future aborts every task of the worker at once, as a
    /// crash would: running jobs stay claimed until their lease expires and
    /// another worker's sweep recovers them. Use the token for a clean stop.
    pub async fn run(self, shutdown: CancellationToken) -> ShutdownReport {
        let kinds: Vec<String> = self.registry.keys().cloned().collect();
        let ctx = Arc::new(Ctx {
            store: self.queue.store_arc(),
            shared: self.queue.shared(),
            rng: Mutex::new(seeded_rng(self.config.seed)),
            config: self.config,
            id: Arc::from(self.id.as_str()),
            registry: self.registry,
            kinds,
            active: Mutex::new(HashMap::new()),
            force: CancellationToken::new(),
            finals: Mutex::new(Finals::default()),
        });
        debug!(worker = %ctx.id, "worker starting");

        let stop_claiming = CancellationToken::new();
        let stop_services = CancellationToken::new();
        let (job_tx, mut job_rx) = mpsc::channel::<Claimed>(1024);
        let (finish_tx, finish_rx) = mpsc::unbounded_channel::<Report>();

        let mut services = JoinSet::new();
        for (name, concurrency) in &self.queues {
            let claimer = claim_loop(
                Arc::clone(&ctx),
                name.clone(),
                Arc::new(Semaphore::new(*concurrency)),
                job_tx.clone(),
                stop_claiming.clone(),
            );
            services.spawn(claimer);
        }
        drop(job_tx);
        services.spawn(heartbeat_loop(Arc::clone(&ctx), stop_services.clone()));
        services.spawn(sweep_loop(Arc::clone(&ctx), stop_claiming.clone()));
        let mut completer = JoinSet::new();
        completer.spawn(complete_loop(Arc::clone(&ctx), finish_rx));

        let mut runners = JoinSet::new();
        loop {
            tokio::select! {
                Some(claimed) = job_rx.recv() => {
                    runners.spawn(run_attempt(Arc::clone(&ctx), claimed, finish_tx.clone()));
                }
                Some(_) = runners.join_next(), if !runners.is_empty() => {}
                () = shutdown.cancelled() => break,
            }
        }

        debug!(worker = %ctx.id, running = runners.len(), "worker draining");
        stop_claiming.cancel();
        let mut report = ShutdownReport::default();
        while let Some(claimed) = job_rx.recv().await {
            report.unstarted += 1;
            let message = format!("{INTERRUPTED_BY_SHUTDOWN} before it started");
            let finish = Finish::Release {
                charge_attempt: false,
                message,
            };
            let report = Report::new(&claimed.job, finish, None, claimed.permit);
            let _ = finish_tx.send(report);
        }

        let drained = timeout(ctx.config.drain_timeout, join_all(&mut runners)).await;
        if drained.is_err() {
            ctx.force.cancel();
            join_all(&mut runners).await;
        }
        drop(finish_tx);
        join_all(&mut completer).await;
        stop_services.cancel();
        join_all(&mut services).await;

        let finals = ctx.finals.lock().map(|f| *f).unwrap_or_default();
        report.released = finals.released;
        report.abandoned = finals.abandoned;
        debug!(worker = %ctx.id, ?report, "worker stopped");
        report
    }
}

async fn join_all<T: 'static>(set: &mut JoinSet<T>) {
    while set.join_next().await.is_some() {}
}

struct Ctx<S> {
    store: Arc<S>,
    shared: Arc<Shared>,
    config: WorkerConfig,
    id: Arc<str>,
    registry: Registry,
    kinds: Vec<String>,
    active: Mutex<HashMap<JobId, Active>>,
    rng: Mutex<SmallRng>,
    /// Fires at the drain deadline: running attempts stop and hand back.
    force: CancellationToken,
    finals: Mutex<Finals>,
}

/// Counts only known at the end of a run.
#[derive(Clone, Copy, Default)]
struct Finals {
    released: usize,
    abandoned: usize,
}

/// A running attempt as the heartbeat loop sees it.
struct Active {
    lease: i64,
    /// Fires when the lease is known to be gone.
    lost: CancellationToken,
    /// When the lease runs out by this worker's reckoning.
    deadline: watch::Sender<Instant>,
    /// Set once a lease-lost event was emitted for this attempt.
    lost_reported: Arc<AtomicBool>,
}

/// A claimed job on its way to a runner.
struct Claimed {
    job: JobRecord,
    permit: OwnedSemaphorePermit,
    lost: CancellationToken,
    deadline: watch::Receiver<Instant>,
    lost_reported: Arc<AtomicBool>,
}

/// An attempt's outcome on its way to the store.
///
/// It carries the job's concurrency slot: the slot frees only once the
/// outcome is written, so running plus unwritten jobs never exceed the
/// queue's concurrency, however slow the store's writes are.
struct Report {
    lease: LeaseRef,
    attempt: u32,
    finish: Finish,
    lost_reported: Option<Arc<AtomicBool>>,
    _slot: OwnedSemaphorePermit,
}

impl Report {
    fn new(
        job: &JobRecord,
        finish: Finish,
        lost_reported: Option<Arc<AtomicBool>>,
        slot: OwnedSemaphorePermit,
    ) -> Self {
        let lease = LeaseRef {
            id: job.id,
            lease: job.lease_number,
        };
        Self {
            lease,
            attempt: job.attempt,
            finish,
            lost_reported,
            _slot: slot,
        }
    }
}

impl<S: Store> Ctx<S> {
    fn active(&self) -> MutexGuard<'_, HashMap<JobId, Active>> {
        // Every critical section is a single map operation, so a poisoned
        // map is still consistent.
        self.active
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lease_lost(&self, id: JobId, lease: i64, reported: &AtomicBool) {
        if reported.swap(true, Ordering::SeqCst) {
            return;
        }
        Counters::bump(&self.shared.counters.lease_lost);
        debug!(job.id = %id, lease, worker = %self.id, "lease lost");
        self.shared.emit(Event::LeaseLost {
            id,
            lease,
            worker: self.id.to_string(),
        });
    }

    fn retry_delay(&self, job: &JobRecord, attempt: u32) -> Duration {
        let backoff = job
            .backoff
            .as_ref()
            .or_else(|| {
                self.registry
                    .get(&job.kind)
                    .and_then(|r| r.options.backoff.as_ref())
            })
            .unwrap_or(&self.config.backoff);
        let mut rng = self
            .rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        backoff.delay_for(attempt.saturating_sub(1), &mut *rng)
    }

    fn finals(&self) -> MutexGuard<'_, Finals> {
        self.finals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

async fn claim_loop<S: Store>(
    ctx: Arc<Ctx<S>>,
    queue: String,
    slots: Arc<Semaphore>,
    jobs: mpsc::Sender<Claimed>,
    stop: CancellationToken,
) {
    let mut request = ClaimRequest {
        queue,
        kinds: ctx.kinds.clone(),
        limit: 0,
        worker: ctx.id.to_string(),
        lease: ctx.config.lease,
    };
    let mut store_wake = ctx.store.wakeups(&request.queue);
    loop {
        let first = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => permit,
            () = stop.cancelled() => return,
        };
        let Ok(first) = first else { return };
        let mut permits = vec![first];
        while permits.len() < ctx.config.claim_batch {
            match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => permits.push(permit),
                Err(_) => break,
            }
        }

        // Registered before the claim, so an enqueue during it is not missed.
        let wake = ctx.shared.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        if let Some(rx) = &mut store_wake {
            rx.borrow_and_update();
        }

        request.limit = permits.len();
        let started = Instant::now();
        Counters::bump(&ctx.shared.counters.polls);
        let claimed = match ctx.store.claim(&request).await {
            Ok(claimed) => claimed,
            Err(error) => {
                warn!(queue = %request.queue, error = %crate::handler::chain(&error), "claim failed");
                Vec::new()
            }
        };
        trace!(queue = %request.queue, asked = request.limit, got = claimed.len(), "claimed");

        let full = claimed.len() == request.limit;
        for job in claimed {
            let Some(permit) = permits.pop() else { break };
            let claimed = track(&ctx, job, permit, started);
            if jobs.send(claimed).await.is_err() {
                return;
            }
        }
        drop(permits);

        if !full {
            tokio::select! {
                () = sleep(ctx.config.poll_interval) => {}
                () = &mut wake => {}
                () = store_changed(&mut store_wake) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Resolves when the store signals new work; never if it cannot.
async fn store_changed(wake: &mut Option<watch::Receiver<u64>>) {
    match wake {
        Some(rx) => {
            if rx.changed().await.is_err() {
                *wake = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Puts a claimed job under the heartbeat loop's care.
fn track<S: Store>(
    ctx: &Ctx<S>,
    job: JobRecord,
    permit: OwnedSemaphorePermit,
    claimed_at: Instant,
) -> Claimed {
    let lost = CancellationToken::new();
    let (deadline_tx, deadline) = watch::channel(claimed_at + ctx.config.lease);
    let lost_reported = Arc::new(AtomicBool::new(false));
    let active = Active {
        lease: job.lease_number,
        lost: lost.clone(),
        deadline: deadline_tx,
        lost_reported: Arc::clone(&lost_reported),
    };
    ctx.active().insert(job.id, active);
    Claimed {
        job,
        permit,
        lost,
        deadline,
        lost_reported,
    }
}

async fn heartbeat_loop<S: Store>(ctx: Arc<Ctx<S>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.config.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }

        let leases: Vec<LeaseRef> = ctx
            .active()
            .iter()
            .map(|(id, a)| LeaseRef {
                id: *id,
                lease: a.lease,
            })
            .collect();
        if leases.is_empty() {
            continue;
        }
        let sent_at = Instant::now();
        // A hung store must not hold up shutdown; a dropped heartbeat is harmless.
        let answer = tokio::select! {
            answer = ctx.store.heartbeat(&leases, ctx.config.lease) => answer,
            () = stop.cancelled() => return,
        };
        let held = match answer {
            Ok(held) => held,
            Err(error) => {
                warn!(worker = %ctx.id, error = %crate::handler::chain(&error), "heartbeat failed");
                continue;
            }
        };

        let active = ctx.active();
        for (lease, held) in leases.iter().zip(held) {
            let Some(entry) = active.get(&lease.id).filter(|a| a.lease == lease.lease) else {
                continue;
            };
            if held {
                entry.deadline.send_replace(sent_at + ctx.config.lease);
            } else {
                entry.lost.cancel();
                ctx.lease_lost(lease.id, lease.lease, &entry.lost_reported);
            }
        }
    }
}

async fn sweep_loop<S: Store>(ctx: Arc<Ctx<S>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(ctx.config.sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }

        let answer = tokio::select! {
            answer = ctx.store.rescue_expired(1000) => answer,
            () = stop.cancelled() => return,
        };
        let rescued = match answer {
            Ok(rescued) => rescued,
            Err(error) => {
                warn!(worker = %ctx.id, error = %crate::handler::chain(&error), "sweep failed");
                continue;
            }
        };
        let any = !rescued.is_empty();
        for job in rescued {
            debug!(job.id = %job.id, lease = job.lease, lost_worker = %job.worker, state = %job.state, "recovered job from expired lease");
            Counters::bump(&ctx.shared.counters.recovered);
            if job.state == JobState::Dead {
                Counters::bump(&ctx.shared.counters.dead);
            }
            ctx.shared.emit(Event::Recovered {
                id: job.id,
                lease: job.lease,
                worker: job.worker,
                state: job.state,
            });
        }
        if any {
            ctx.shared.wake.notify_waiters();
        }
    }
}

async fn complete_loop<S: Store>(ctx: Arc<Ctx<S>>, mut reports: mpsc::UnboundedReceiver<Report>) {
    let mut batch = Vec::new();
    while reports.recv_many(&mut batch, ctx.config.finish_batch).await > 0 {
        let completions: Vec<Completion> = batch
            .iter()
            .map(|r| Completion {
                lease: r.lease,
                finish: r.finish.clone(),
            })
            .collect();
        let results = write_with_retry(&ctx, completions).await;

        {
            let mut active = ctx.active();
            for report in &batch {
                if active
                    .get(&report.lease.id)
                    .is_some_and(|a| a.lease == report.lease.lease)
                {
                    active.remove(&report.lease.id);
                }
            }
        }
        for (report, result) in batch.drain(..).zip(results) {
            record_outcome(&ctx, report, result);
        }
    }
}

/// Writes outcomes, retrying a failing store a few times; after that the
/// leases run out and the sweep hands the jobs back, so nothing is lost.
async fn write_with_retry<S: Store>(
    ctx: &Ctx<S>,
    completions: Vec<Completion>,
) -> Vec<Option<FinishResult>> {
    let count = completions.len();
    let mut delay = Duration::from_millis(50);
    for _ in 0..5 {
        match ctx.store.finish(completions.clone()).await {
            Ok(results) => return results.into_iter().map(Some).collect(),
            Err(error) => {
                warn!(worker = %ctx.id, error = %crate::handler::chain(&error), "writing outcomes failed");
                sleep(delay).await;
                delay = delay.saturating_mul(2);
            }
        }
    }
    // Not yet: outcomes that could not be written are dropped here and the jobs
    // run again after lease expiry; a durable local journal would avoid the rerun.
    vec![None; count]
}

fn record_outcome<S: Store>(ctx: &Ctx<S>, report: Report, result: Option<FinishResult>) {
    let id = report.lease.id;
    let counters = &ctx.shared.counters;
    let state = match result {
        None => return,
        Some(Err(LeaseLost { id, lease })) => {
            let reported = report.lost_reported.unwrap_or_default();
            ctx.lease_lost(id, lease, &reported);
            return;
        }
        Some(Ok(state)) => state,
    };

    let attempt = report.attempt;
    let event = match (report.finish, state) {
        (Finish::Complete, _) => {
            Counters::bump(&counters.completed);
            Event::Completed { id, attempt }
        }
        (Finish::Retry { kind, .. } | Finish::Dead { kind, .. }, JobState::Dead) => {
            Counters::bump(&counters.dead);
            Event::DeadLettered { id, attempt, kind }
        }
        (Finish::Retry { delay, kind, .. }, _) => {
            Counters::bump(&counters.retried);
            Event::RetryScheduled {
                id,
                attempt,
                delay,
                kind,
            }
        }
        (Finish::Snooze { delay }, _) => {
            Counters::bump(&counters.snoozed);
            Event::Snoozed { id, delay }
        }
        (Finish::Release { .. }, JobState::Dead) => {
            Counters::bump(&counters.dead);
            Event::DeadLettered {
                id,
                attempt,
                kind: FailureKind::Interrupted,
            }
        }
        (Finish::Release { .. }, _) => {
            Counters::bump(&counters.released);
            Event::Released { id, attempt }
        }
        (Finish::Dead { kind, .. }, _) => {
            Counters::bump(&counters.dead);
            Event::DeadLettered { id, attempt, kind }
        }
    };
    debug!(job.id = %id, attempt, state = %state, "attempt outcome written");
    ctx.shared.emit(event);
}

/// How an attempt ended, from the worker's side.
enum Ended {
    /// The handler returned (or failed to start).
    Done(Result<Outcome, Failure>),
    /// The drain deadline passed: hand the job back.
    Interrupted,
    /// The lease was lost and the handler did not stop in time.
    Abandoned,
}

async fn run_attempt<S: Store>(
    ctx: Arc<Ctx<S>>,
    claimed: Claimed,
    reports: mpsc::UnboundedSender<Report>,
) {
    let Claimed {
        job,
        permit,
        lost,
        deadline,
        lost_reported,
    } = claimed;
    let span = info_span!(
        "job_attempt",
        job.id = %job.id,
        job.kind = %job.kind,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        worker = %ctx.id,
    );

    async move {
        Counters::bump(&ctx.shared.counters.started);
        ctx.shared.emit(Event::Started {
            id: job.id,
            attempt: job.attempt,
            lease: job.lease_number,
            worker: ctx.id.to_string(),
        });
        debug!("attempt started");

        let cancel = CancellationToken::new();
        let context = JobContext {
            id: job.id,
            kind: Arc::from(job.kind.as_str()),
            queue: Arc::from(job.queue.as_str()),
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            lease: job.lease_number,
            worker: Arc::clone(&ctx.id),
            created_at: job.created_at,
            cancel: cancel.clone(),
        };
        let ended = match ctx.registry.get(&job.kind) {
            None => Ended::Done(Err(Failure::new(
                FailureKind::Permanent,
                ErrorClass::Permanent,
                format!("no handler registered for kind {:?}", job.kind),
            ))),
            Some(registered) => match registered.handler.call(&job.codec, &job.payload, context) {
                Err(failure) => Ended::Done(Err(failure)),
                Ok(future) => {
                    let limit = job.timeout.or(registered.options.timeout);
                    supervise(&ctx, future, limit, &cancel, &lost, deadline).await
                }
            },
        };

        let finish = match ended {
            Ended::Done(result) => decide(&ctx, &job, result),
            Ended::Interrupted => {
                debug!("attempt interrupted by shutdown");
                ctx.finals().released += 1;
                let message = INTERRUPTED_BY_SHUTDOWN.to_owned();
                Finish::Release {
                    charge_attempt: ctx.config.charge_interrupted,
                    message,
                }
            }
            Ended::Abandoned => {
                ctx.finals().abandoned += 1;
                ctx.lease_lost(job.id, job.lease_number, &lost_reported);
                ctx.active().remove(&job.id);
                return;
            }
        };
        // The completer is alive as long as any runner is.
        let _ = reports.send(Report::new(&job, finish, Some(lost_reported), permit));
    }
    .instrument(span)
    .await;
}

/// Runs the handler until it returns, its lease is lost, or the drain
/// deadline passes.
async fn supervise<S: Store>(
    ctx: &Ctx<S>,
    future: HandlerFuture,
    limit: Option<Duration>,
    cancel: &CancellationToken,
    lost: &CancellationToken,
    mut deadline: watch::Receiver<Instant>,
) -> Ended {
    let guarded = async move {
        let caught = AssertUnwindSafe(future).catch_unwind().map(|r| match r {
            Ok(result) => result,
            Err(panic) => Err(Failure::panicked(&*panic)),
        });
        match limit {
            None => caught.await,
            Some(limit) => timeout(limit, caught).await.unwrap_or_else(|_| {
                let message = format!("attempt exceeded its hard timeout of {limit:?}");
                Err(Failure::new(
                    FailureKind::TimedOut,
                    ErrorClass::Transient,
                    message,
                ))
            }),
        }
    };
    tokio::pin!(guarded);

    tokio::select! {
        biased;
        result = &mut guarded => {
            if matches!(&result, Err(f) if f.kind == FailureKind::TimedOut) {
                cancel.cancel();
            }
            return Ended::Done(result);
        }
        () = ctx.force.cancelled() => {
            cancel.cancel();
            return Ended::Interrupted;
        }
        () = lease_gone(lost, &mut deadline) => {
            debug!("lease gone; cancelling the attempt");
            cancel.cancel();
        }
    }

    // A failure from here on is the lost lease's doing, and is recorded as such whether
    // this worker's report or the sweep reaches the store first.
    tokio::select! {
        biased;
        result = &mut guarded => Ended::Done(result.map_err(Failure::after_lease_lost)),
        () = sleep(ctx.config.cancel_grace) => Ended::Abandoned,
        () = ctx.force.cancelled() => Ended::Abandoned,
    }
}

/// Resolves once the lease is known lost or has run out by this worker's
/// clock without a successful heartbeat.
async fn lease_gone(lost: &CancellationToken, deadline: &mut watch::Receiver<Instant>) {
    loop {
        let at = *deadline.borrow_and_update();
        tokio::select! {
            () = lost.cancelled() => return,
            () = sleep_until(at) => {
                if *deadline.borrow() <= Instant::now() {
                    return;
                }
            }
            changed = deadline.changed() => {
                if changed.is_err() {
                    // The heartbeat loop is gone; only the lost signal remains.
                    lost.cancelled().await;
                    return;
                }
            }
        }
    }
}

/// Turns a handler's result into the store update.
fn decide<S: Store>(ctx: &Ctx<S>, job: &JobRecord, result: Result<Outcome, Failure>) -> Finish {
    let failure = match result {
        Ok(Outcome::Complete) => return Finish::Complete,
        Ok(Outcome::Snooze(delay)) => return Finish::Snooze { delay },
        Err(failure) => failure,
    };
    debug!(kind = %failure.kind, error = %failure.message, "attempt failed");

    let Failure {
        kind,
        message,
        class,
    } = failure;
    if matches!(class, ErrorClass::Permanent) || job.attempt >= job.max_attempts {
        return Finish::Dead { kind, message };
    }
    let delay = match class {
        ErrorClass::RetryAfter(delay) => delay,
        _ => ctx.retry_delay(job, job.attempt),
    };
    Finish::Retry {
        delay,
        kind,
        message,
    }
}

fn seeded_rng(seed: Option<u64>) -> SmallRng {
    let seed = seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        (nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    SmallRng::seed_from_u64(seed)
}

fn default_worker_id() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    format!("{host}-{}-{n}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        WorkerConfig::default().validate().unwrap();
    }

    #[test]
    fn heartbeat_must_be_shorter_than_lease() {
        let config = WorkerConfig {
            heartbeat: Duration::from_secs(30),
            ..WorkerConfig::default()
        };
        let err = config.validate().unwrap_err();
        assert!(err.to_string().contains("heartbeat"), "{err}");
    }
}
