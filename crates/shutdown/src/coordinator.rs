//! The coordinator: triggers, registered work, the phases of a shutdown and its report.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tracing::{debug, error, info, warn};

use crate::builder::Builder;
use crate::config::Config;
use crate::readiness::Readiness;
use crate::report::{End, Kind, Phase, Record, Report, Signal, Trigger, outcome_of};
use crate::task::{TaskOutput, end_of};
use crate::teardown::{ABORT_GRACE, HookFn, StageControl, Step, StepBody};

/// Owns a graceful shutdown: waits for a trigger, then runs the phases and reports.
///
/// Everything a component needs (spawning tasks, tokens, readiness, teardown steps) is on
/// [`Handle`], which `Shutdown` dereferences to; hand out clones of
/// [`handle`](Self::handle) and keep the `Shutdown` itself in `main` to [`run`](Self::run).
///
/// The phases, each logged at info level with its duration:
///
/// 1. **Trigger**: the first SIGTERM or SIGINT, [`Handle::trigger`], or the end of a
///    critical task. Readiness turns false at once.
/// 2. **Delay**: for [`Config::drain_delay`] everything keeps serving while load balancers
///    notice.
/// 3. **Drain**: [`Handle::token`] is cancelled, listeners close, and the shutdown waits
///    for tasks, blocking work and [`WorkGuard`]s, until [`Config::drain_deadline`]
///    (counted from the trigger).
/// 4. **Cancel**: whatever still runs at the deadline is aborted and named in the report.
/// 5. **Teardown**: stages are stopped and hooks run in reverse order of registration,
///    each bounded by its own timeout.
///
/// A second signal later than [`Config::debounce`] after the first cuts all of this short.
pub struct Shutdown {
    handle: Handle,
    stop_listening: CancellationToken,
}

/// The cheap, cloneable side of a [`Shutdown`] that components use.
#[derive(Clone)]
pub struct Handle {
    inner: Arc<Inner>,
}

/// Keeps a piece of in-flight work counted in the drain, under a name for the report.
///
/// The drain waits for every live guard; a guard still alive at the deadline is reported
/// as forced. Dropping it marks the work done. Get one from [`Handle::track`].
#[must_use = "the work counts as done as soon as the guard is dropped"]
pub struct WorkGuard {
    inner: Arc<Inner>,
    id: u64,
    _token: TaskTrackerToken,
}

impl Shutdown {
    /// Starts configuring a shutdown.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn new(handle: Handle, stop_listening: CancellationToken) -> Self {
        Self {
            handle,
            stop_listening,
        }
    }

    /// A handle for components, to clone as often as needed.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Waits for a trigger, runs every phase, and reports what happened.
    ///
    /// End `main` with [`Report::exit`] on the result: it exits with the right code
    /// without waiting for blocking work left behind.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping the future part-way leaves the shutdown half done.
    pub async fn run(self) -> Report {
        let inner = Arc::clone(&self.handle.inner);
        inner.triggered.cancelled().await;
        let (trigger, triggered_at) = inner.trigger_info();

        let mut progress = Progress::default();
        match inner.walk_phases(triggered_at, &mut progress).await {
            Ok(()) => inner.report(trigger, progress),
            Err(Interrupted { steps }) => inner.interrupted(trigger, progress, steps),
        }
    }
}

impl Deref for Shutdown {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for Shutdown {
    fn drop(&mut self) {
        // Not yet: tokio keeps its signal handlers installed, so from here on SIGTERM and
        // SIGINT are swallowed instead of ending the process.
        self.stop_listening.cancel();
    }
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("handle", &self.handle)
            .finish()
    }
}

impl Handle {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Starts the shutdown, as if a first signal had arrived. Returns whether this call
    /// started it (`false` if it was already under way).
    pub fn trigger(&self) -> bool {
        self.inner.trigger(Trigger::Requested)
    }

    /// Delivers a signal as if the operating system had sent it: the first one triggers
    /// the shutdown, one within [`Config::debounce`] of the first is a duplicate and
    /// ignored, and a later one forces exit.
    ///
    /// For tests, and for integrations that receive stop requests some other way.
    pub fn signal(&self, signal: Signal) {
        self.inner.on_signal(signal);
    }

    /// Whether the shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.is_cancelled()
    }

    /// Waits until the shutdown is triggered, before the drain delay.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn triggered(&self) {
        self.inner.triggered.cancelled().await;
    }

    /// A token cancelled when draining starts (after the drain delay): the moment to stop
    /// taking new work and finish what is in hand.
    pub fn token(&self) -> CancellationToken {
        self.inner.draining.child_token()
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.is_cancelled()
    }

    /// The readiness flag for a health endpoint.
    pub fn readiness(&self) -> Readiness {
        Readiness::new(self.inner.ready.subscribe())
    }

    /// Reports ready, for services built with [`Config::starts_ready`] off. Does nothing
    /// once the shutdown has been triggered.
    pub fn mark_ready(&self) {
        let state = self.inner.lock();
        if state.trigger.is_none() {
            self.inner.ready.send_replace(true);
        }
    }

    /// Runs a task that the drain waits for. It should watch [`token`](Self::token) and
    /// finish when it is cancelled; if it is still running at the deadline it is aborted
    /// and named in the report. An error or panic is logged and reported but does not
    /// start a shutdown; use [`spawn_critical`](Self::spawn_critical) for that.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.spawn_task(name.into(), Kind::Task, task);
    }

    /// Like [`spawn`](Self::spawn), for a task the service cannot live without: if it
    /// fails, panics, or ends before the shutdown was triggered, it triggers the shutdown
    /// and the process exits non-zero.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime, like [`tokio::spawn`].
    pub fn spawn_critical<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.spawn_task(name.into(), Kind::CriticalTask, task);
    }

    /// Runs blocking work on tokio's blocking pool, counted in the drain under a name.
    ///
    /// Blocking work cannot be aborted. If it is still running at the deadline it is
    /// reported as abandoned, logged by name, and [`Report::exit`] ends the process
    /// without waiting for it.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime, like [`tokio::task::spawn_blocking`].
    pub fn spawn_blocking<F, R>(&self, name: impl Into<String>, work: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let guard = self.guard(name.into(), Kind::Blocking);
        tokio::task::spawn_blocking(move || {
            let _guard = guard;
            work()
        })
    }

    /// Counts a piece of in-flight work (a request, a WebSocket session) in the drain
    /// until the returned guard is dropped.
    ///
    /// A guard still alive at the deadline is reported as forced: the work it stands for
    /// is expected to end with the task that owns it, which the deadline aborts.
    pub fn track(&self, name: impl Into<String>) -> WorkGuard {
        self.guard(name.into(), Kind::Work)
    }

    /// Starts a stage: a long-running part (a pool, a refresher, a server) that later
    /// stages may depend on. It gets a token of its own, cancelled during teardown in
    /// reverse order of registration, after the drain; it then has
    /// [`Config::step_timeout`] to finish before it is aborted. The next stage is stopped
    /// only once this one has ended, so no stage outlives one it depends on.
    ///
    /// Like a critical task, a stage that fails, panics or ends before it was asked to
    /// stop triggers the shutdown.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime, like [`tokio::spawn`].
    pub fn stage<F, Fut>(&self, name: impl Into<String>, start: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutput,
    {
        self.stage_with_timeout(name, self.inner.config.step_timeout, start);
    }

    /// Like [`stage`](Self::stage), with its own stop timeout.
    ///
    /// # Panics
    ///
    /// Panics if called outside a tokio runtime, like [`tokio::spawn`].
    pub fn stage_with_timeout<F, Fut>(&self, name: impl Into<String>, timeout: Duration, start: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutput,
    {
        let name = name.into();
        let token = CancellationToken::new();
        let future = start(token.clone());
        let task = tokio::spawn(async move { future.await.into_result() });
        let control = StageControl {
            token: token.clone(),
            abort: task.abort_handle(),
            done: CancellationToken::new(),
            end: Arc::new(Mutex::new(None)),
        };

        let monitor = control.clone();
        let inner = Arc::clone(&self.inner);
        let stage_name = name.clone();
        tokio::spawn(async move {
            let end = end_of(task.await).unwrap_or(End::Forced);
            if !token.is_cancelled() && end != End::Forced {
                inner.ended_early(&stage_name, Kind::Stage, &end);
            }
            *lock(&monitor.end) = Some(end);
            monitor.done.cancel();
        });

        debug!(stage = %name, "stage started");
        self.inner.lock().steps.push(Step {
            name,
            timeout,
            body: StepBody::Stage(control),
        });
    }

    /// Registers a teardown hook (close a pool, flush a buffer, write a marker), run
    /// after the drain in reverse order of registration, bounded by
    /// [`Config::step_timeout`].
    pub fn hook<F, Fut>(&self, name: impl Into<String>, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutput,
    {
        self.hook_with_timeout(name, self.inner.config.step_timeout, hook);
    }

    /// Like [`hook`](Self::hook), with its own timeout.
    pub fn hook_with_timeout<F, Fut>(&self, name: impl Into<String>, timeout: Duration, hook: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: TaskOutput,
    {
        let run: HookFn = Box::new(move || {
            let future = hook();
            Box::pin(async move { future.await.into_result() })
        });
        self.inner.lock().steps.push(Step {
            name: name.into(),
            timeout,
            body: StepBody::Hook(run),
        });
    }

    fn spawn_task<F>(&self, name: String, kind: Kind, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        // Not yet: a task spawned after the drain has finished is neither waited for nor
        // reported; it runs until the process exits.
        let id = self.inner.register(name, kind);
        let task = tokio::spawn(async move { task.await.into_result() });
        if let Some(running) = self.inner.lock().running.get_mut(&id) {
            running.abort = Some(task.abort_handle());
        }

        let inner = Arc::clone(&self.inner);
        self.inner.tasks.spawn(async move {
            if let Some(end) = end_of(task.await) {
                inner.task_ended(id, end);
            }
        });
    }

    fn guard(&self, name: String, kind: Kind) -> WorkGuard {
        let token = self.inner.tracker.token();
        let id = self.inner.register(name, kind);
        WorkGuard {
            inner: Arc::clone(&self.inner),
            id,
            _token: token,
        }
    }

    #[cfg(feature = "axum")]
    pub(crate) fn draining_token(&self) -> &CancellationToken {
        &self.inner.draining
    }
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("triggered", &self.is_triggered())
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        self.inner.lock().running.remove(&self.id);
    }
}

impl fmt::Debug for WorkGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkGuard")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    config: Config,
    ready: watch::Sender<bool>,
    triggered: CancellationToken,
    draining: CancellationToken,
    forced: CancellationToken,
    /// Work guards, including those of blocking work.
    tracker: TaskTracker,
    /// The monitors of spawned tasks, which end once their task has ended or been aborted.
    tasks: TaskTracker,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    trigger: Option<(Trigger, Instant)>,
    first_signal: Option<Instant>,
    forced_by: Option<Signal>,
    running: HashMap<u64, Running>,
    ended: Vec<Record>,
    steps: Vec<Step>,
}

/// What the phases have done so far: their timings and the records they produced.
#[derive(Default)]
struct Progress {
    phases: Vec<(Phase, Duration)>,
    records: Vec<Record>,
}

impl Progress {
    fn phase(&mut self, phase: Phase, started: Instant) {
        let took = started.elapsed();
        info!(%phase, ?took, "shutdown phase finished");
        self.phases.push((phase, took));
    }
}

/// A second signal cut the phases short; `steps` are the teardown steps not yet run.
struct Interrupted {
    steps: Vec<Step>,
}

struct Running {
    name: String,
    kind: Kind,
    abort: Option<AbortHandle>,
}

impl Inner {
    pub(crate) fn new(config: Config) -> Self {
        let (ready, _) = watch::channel(config.starts_ready);
        Self {
            config,
            ready,
            triggered: CancellationToken::new(),
            draining: CancellationToken::new(),
            forced: CancellationToken::new(),
            tracker: TaskTracker::new(),
            tasks: TaskTracker::new(),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn register(&self, name: String, kind: Kind) -> u64 {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.running.insert(
            id,
            Running {
                name,
                kind,
                abort: None,
            },
        );
        id
    }

    fn trigger(&self, trigger: Trigger) -> bool {
        {
            let mut state = self.lock();
            if state.trigger.is_some() {
                debug!(%trigger, "shutdown already triggered");
                return false;
            }
            state.trigger = Some((trigger.clone(), Instant::now()));
        }
        self.ready.send_replace(false);
        self.triggered.cancel();
        info!(%trigger, "shutdown triggered; readiness is now false");
        true
    }

    pub(crate) fn on_signal(&self, signal: Signal) {
        let now = Instant::now();
        let mut state = self.lock();
        match state.first_signal {
            None => {
                state.first_signal = Some(now);
                drop(state);
                info!(%signal, "signal received");
                self.trigger(Trigger::Signal(signal));
            }
            Some(first) if now.saturating_duration_since(first) < self.config.debounce => {
                debug!(%signal, "duplicate of the first signal ignored");
            }
            Some(_) => {
                state.forced_by.get_or_insert(signal);
                drop(state);
                warn!(%signal, "second signal; forcing exit");
                self.forced.cancel();
            }
        }
    }

    fn trigger_info(&self) -> (Trigger, Instant) {
        self.lock()
            .trigger
            .clone()
            .unwrap_or_else(|| (Trigger::Requested, Instant::now()))
    }

    fn task_ended(&self, id: u64, end: End) {
        let Some(running) = self.lock().running.remove(&id) else {
            return;
        };
        match &end {
            End::Completed
                if running.kind == Kind::CriticalTask && !self.triggered.is_cancelled() =>
            {
                self.ended_early(&running.name, running.kind, &end);
            }
            End::Completed => debug!(task = %running.name, "task finished"),
            _ => self.ended_early(&running.name, running.kind, &end),
        }
    }

    /// Records a failure, or a critical end nobody asked for, and triggers if it was
    /// critical.
    fn ended_early(&self, name: &str, kind: Kind, end: &End) {
        let critical = matches!(kind, Kind::CriticalTask | Kind::Stage);
        if critical {
            error!(%kind, name, %end, "critical work ended; shutting down");
        } else {
            warn!(%kind, name, %end, "task ended badly");
        }

        // A stage's end is recorded by its teardown step.
        if kind != Kind::Stage {
            self.lock().ended.push(Record {
                name: name.to_owned(),
                kind,
                end: end.clone(),
            });
        }
        if critical {
            self.trigger(Trigger::Task {
                name: name.to_owned(),
                end: end.clone(),
            });
        }
    }

    /// Aborts every registered task and returns a record for everything still running.
    fn abort_running(&self) -> Vec<Record> {
        let mut running: Vec<(u64, Running)> = self.lock().running.drain().collect();
        running.sort_by_key(|(id, _)| *id);

        running
            .into_iter()
            .map(|(_, running)| {
                if let Some(abort) = &running.abort {
                    abort.abort();
                }
                let end = if running.kind == Kind::Blocking {
                    End::Abandoned
                } else {
                    End::Forced
                };
                Record {
                    name: running.name,
                    kind: running.kind,
                    end,
                }
            })
            .collect()
    }

    /// Runs the phases after the trigger, stopping early if a second signal forces exit.
    async fn walk_phases(
        &self,
        triggered_at: Instant,
        progress: &mut Progress,
    ) -> Result<(), Interrupted> {
        self.delay(triggered_at, progress).await?;
        let drained = self.drain(triggered_at, progress).await?;
        if !drained {
            self.cancel(progress).await;
        }
        self.teardown(progress).await
    }

    /// Keeps serving, not ready, through the drain delay.
    async fn delay(
        &self,
        triggered_at: Instant,
        progress: &mut Progress,
    ) -> Result<(), Interrupted> {
        let delay = self.config.drain_delay;
        if delay.is_zero() {
            return Ok(());
        }

        let started = Instant::now();
        info!(?delay, "still serving through the drain delay");
        self.unless_forced(sleep_until(add_saturating(triggered_at, delay)))
            .await?;
        progress.phase(Phase::Delay, started);
        Ok(())
    }

    /// Stops accepting and waits for registered work; `false` if the deadline came first.
    async fn drain(
        &self,
        triggered_at: Instant,
        progress: &mut Progress,
    ) -> Result<bool, Interrupted> {
        let started = Instant::now();
        info!("draining: no longer accepting, waiting for in-flight work");
        self.draining.cancel();
        self.tracker.close();
        self.tasks.close();

        let deadline = add_saturating(triggered_at, self.config.drain_deadline);
        let all_done = async {
            tokio::join!(self.tracker.wait(), self.tasks.wait());
        };
        let drained = self
            .unless_forced(timeout_at(deadline, all_done))
            .await?
            .is_ok();
        progress.phase(Phase::Drain, started);
        Ok(drained)
    }

    /// Aborts what is still running at the deadline.
    async fn cancel(&self, progress: &mut Progress) {
        let started = Instant::now();
        let cut = self.abort_running();
        let names: Vec<&str> = cut.iter().map(|record| record.name.as_str()).collect();
        warn!(still_running = ?names, "drain deadline reached; aborting what is left");
        progress.records.extend(cut);

        // Let the aborts land before teardown takes resources away from those tasks.
        if timeout(ABORT_GRACE, self.tasks.wait()).await.is_err() {
            warn!("aborted tasks are still running; they may be stuck in blocking code");
        }
        progress.phase(Phase::Cancel, started);
    }

    /// Stops stages and runs hooks, last registered first.
    async fn teardown(&self, progress: &mut Progress) -> Result<(), Interrupted> {
        let started = Instant::now();
        let mut steps = Vec::new();
        loop {
            // A step may register another one (a hook adding a hook); being the latest
            // registered, it runs next instead of being dropped unrun.
            steps.extend(self.take_steps());
            let Some(step) = steps.pop() else { break };
            let (name, kind) = (step.name.clone(), step.kind());
            let step_started = Instant::now();
            let Ok(end) = self.unless_forced(step.run()).await else {
                progress.records.push(Record {
                    name,
                    kind,
                    end: End::Forced,
                });
                return Err(Interrupted { steps });
            };

            let took = step_started.elapsed();
            if end == End::Completed {
                info!(step = %name, %kind, ?took, "teardown step done");
            } else {
                warn!(step = %name, %kind, ?took, %end, "teardown step did not finish cleanly");
            }
            progress.records.push(Record { name, kind, end });
        }
        progress.phase(Phase::Teardown, started);
        Ok(())
    }

    /// Runs `future` unless a second signal forces exit first.
    async fn unless_forced<T>(&self, future: impl Future<Output = T>) -> Result<T, Interrupted> {
        tokio::select! {
            biased;
            () = self.forced.cancelled() => Err(Interrupted { steps: Vec::new() }),
            value = future => Ok(value),
        }
    }

    fn take_steps(&self) -> Vec<Step> {
        std::mem::take(&mut self.lock().steps)
    }

    /// The report of a shutdown cut short by a second signal: aborts everything left.
    fn interrupted(
        &self,
        trigger: Trigger,
        mut progress: Progress,
        mut steps: Vec<Step>,
    ) -> Report {
        let records = &mut progress.records;
        records.extend(self.abort_running());
        steps.extend(self.take_steps());
        for step in steps.into_iter().rev() {
            let kind = step.kind();
            let end = match step.body {
                StepBody::Stage(control) if control.done.is_cancelled() => {
                    lock(&control.end).take().unwrap_or(End::Completed)
                }
                StepBody::Stage(control) => {
                    control.abort.abort();
                    End::Forced
                }
                StepBody::Hook(_) => End::Skipped,
            };
            records.push(Record {
                name: step.name,
                kind,
                end,
            });
        }

        let not_stopped: Vec<&str> = records
            .iter()
            .filter(|record| record.end.is_forced())
            .map(|record| record.name.as_str())
            .collect();
        warn!(?not_stopped, "exiting at once; these had not stopped");
        self.report(trigger, progress)
    }

    fn report(&self, trigger: Trigger, progress: Progress) -> Report {
        let (mut all, forced_by) = {
            let mut state = self.lock();
            (std::mem::take(&mut state.ended), state.forced_by)
        };
        all.extend(progress.records);
        let outcome = outcome_of(forced_by, &trigger, &all);

        Report {
            trigger,
            outcome,
            phases: progress.phases,
            records: all,
            exit_codes: self.config.exit_codes,
        }
    }
}

fn add_saturating(instant: Instant, duration: Duration) -> Instant {
    // Far enough to never fire, close enough not to overflow the clock.
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    instant
        .checked_add(duration.min(FAR))
        .unwrap_or_else(|| instant + Duration::from_secs(86_400))
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state stays consistent across a panic: every update is a single insert or take.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturating_deadline_does_not_overflow() {
        let now = Instant::now();
        assert!(add_saturating(now, Duration::MAX) > now);
    }
}
