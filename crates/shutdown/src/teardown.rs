//! Teardown steps: stages stopped and hooks run after the drain, each within a timeout.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::coordinator::lock;
use crate::report::{End, Kind};
use crate::task::{BoxError, end_of};

/// How long to wait for an aborted task or stage to actually stop before moving on. An
/// abort only lands when the task next yields; one stuck in blocking code never does.
pub(crate) const ABORT_GRACE: Duration = Duration::from_millis(100);

/// One registered teardown step, with the timeout it gets.
pub(crate) struct Step {
    pub(crate) name: String,
    pub(crate) timeout: Duration,
    pub(crate) body: StepBody,
}

/// A hook as registered: called once, at its turn in the teardown.
pub(crate) type HookFn =
    Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>> + Send>;

/// What a step does when its turn comes.
pub(crate) enum StepBody {
    Stage(StageControl),
    Hook(HookFn),
}

/// How the teardown reaches a running stage.
#[derive(Clone)]
pub(crate) struct StageControl {
    /// The stage's own token, cancelled at its turn.
    pub(crate) token: CancellationToken,
    /// Aborts the stage's task once its timeout has passed.
    pub(crate) abort: AbortHandle,
    /// Cancelled by the stage's monitor once the task has ended, however it ended.
    pub(crate) done: CancellationToken,
    /// How the task ended, set just before `done`.
    pub(crate) end: Arc<Mutex<Option<End>>>,
}

/// Aborts a task when dropped, so that a step cut short by a second signal stops too.
struct AbortOnDrop(AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Step {
    pub(crate) fn kind(&self) -> Kind {
        match self.body {
            StepBody::Stage(_) => Kind::Stage,
            StepBody::Hook(_) => Kind::Hook,
        }
    }

    pub(crate) async fn run(self) -> End {
        match self.body {
            StepBody::Stage(control) => stop_stage(control, self.timeout).await,
            StepBody::Hook(hook) => run_hook(hook, self.timeout).await,
        }
    }
}

async fn stop_stage(control: StageControl, limit: Duration) -> End {
    let _abort = AbortOnDrop(control.abort.clone());
    if !control.done.is_cancelled() {
        control.token.cancel();
        if timeout(limit, control.done.cancelled()).await.is_err() {
            control.abort.abort();

            // Wait for the abort to land, so the next stage never goes away under this one.
            if timeout(ABORT_GRACE, control.done.cancelled())
                .await
                .is_err()
            {
                warn!("an aborted stage is still running; it may be stuck in blocking code");
            }
            return End::Forced;
        }
    }
    lock(&control.end).take().unwrap_or(End::Completed)
}

async fn run_hook(hook: HookFn, limit: Duration) -> End {
    // The hook is called inside the task, so that a panic while it builds its future is
    // caught and reported like one while the future runs, not unwound through `run`.
    let task = tokio::spawn(async move { hook().await });
    let _abort = AbortOnDrop(task.abort_handle());
    match timeout(limit, task).await {
        Ok(result) => end_of(result).unwrap_or(End::Forced),
        Err(_) => End::Forced,
    }
}
