//! What handlers receive and return.
//!
//! A handler for job kind `J` is any [`tower::Service`] taking a
//! [`JobRequest<J>`] and answering with an [`Outcome`], so tower middleware
//! (timeouts, concurrency limits, rate limits) wraps it unchanged. Plain
//! async closures work through [`crate::WorkerBuilder::handle`].

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use steadfast_backoff::{Backoff, Classify, ErrorClass};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tower::{Service, ServiceExt};

use crate::clock::Timestamp;
use crate::error::BoxError;
use crate::job::{FailureKind, JSON_CODEC, Job, JobId};

/// A decoded job and the context of its attempt.
#[derive(Debug)]
#[non_exhaustive]
pub struct JobRequest<J> {
    /// The decoded payload.
    pub job: J,
    /// The attempt's context: ids, counters and the cancellation signal.
    pub context: JobContext,
}

/// The context of one attempt.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) kind: Arc<str>,
    pub(crate) queue: Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) lease: i64,
    pub(crate) worker: Arc<str>,
    pub(crate) created_at: Timestamp,
    pub(crate) cancel: CancellationToken,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The job's queue.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempts the job is allowed.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The lease number of this attempt.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The id of the worker running this attempt.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// When the job was enqueued.
    pub fn created_at(&self) -> Timestamp {
        self.created_at
    }

    /// Resolves when the attempt should stop: its lease was lost, it timed
    /// out, or the worker is shutting down past its drain deadline.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; awaiting it again later resolves as well.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Whether [`JobContext::cancelled`] has fired.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// A clone of the attempt's cancellation token, to hand to other tasks.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

/// How a successful attempt ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The job is done.
    #[default]
    Complete,
    /// Run the job again after this delay without spending an attempt.
    Snooze(Duration),
}

impl From<()> for Outcome {
    fn from((): ()) -> Self {
        Outcome::Complete
    }
}

/// A failed attempt, with how it should be retried.
///
/// Build it with [`JobError::retryable`], [`JobError::permanent`],
/// [`JobError::retry_after`], or [`JobError::classify`] for errors that
/// know their [`ErrorClass`].
#[derive(Debug)]
pub struct JobError {
    class: ErrorClass,
    source: BoxError,
}

impl JobError {
    /// A failure worth retrying on the job's backoff schedule.
    pub fn retryable(source: impl Into<BoxError>) -> Self {
        Self {
            class: ErrorClass::Transient,
            source: source.into(),
        }
    }

    /// A failure no retry will fix: the job goes straight to dead letters.
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            source: source.into(),
        }
    }

    /// A failure to retry after exactly `delay` (a server's `Retry-After`).
    pub fn retry_after(source: impl Into<BoxError>, delay: Duration) -> Self {
        Self {
            class: ErrorClass::RetryAfter(delay),
            source: source.into(),
        }
    }

    /// A failure classed by the error itself.
    pub fn classify<E>(error: E) -> Self
    where
        E: Classify + std::error::Error + Send + Sync + 'static,
    {
        Self {
            class: error.classify(),
            source: Box::new(error),
        }
    }

    /// The failure's class.
    pub fn class(&self) -> &ErrorClass {
        &self.class
    }

    /// The underlying error.
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class {
            ErrorClass::Permanent => f.write_str("job failed permanently"),
            _ => f.write_str("job attempt failed"),
        }
    }
}

impl std::error::Error for JobError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Per-kind settings given at registration.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct KindOptions {
    /// The retry policy for this kind (the worker's default if `None`); a
    /// job's own policy wins over it.
    pub backoff: Option<Backoff>,
    /// A hard limit on one attempt (none if `None`); a job's own wins.
    pub timeout: Option<Duration>,
    /// Retry jobs whose payload fails to decode (off: they are dead at once,
    /// since the same bytes will not decode next time either).
    pub retry_decode_failures: bool,
}

impl KindOptions {
    /// Sets the kind's retry policy.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = Some(backoff);
        self
    }

    /// Sets the kind's hard timeout per attempt.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Retries jobs whose payload fails to decode.
    pub fn retry_decode_failures(mut self, retry: bool) -> Self {
        self.retry_decode_failures = retry;
        self
    }
}

/// An attempt's failure as the worker records it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: FailureKind,
    pub(crate) message: String,
    pub(crate) class: ErrorClass,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, class: ErrorClass, message: String) -> Self {
        Self {
            kind,
            message,
            class,
        }
    }

    fn from_box(error: BoxError) -> Self {
        match error.downcast::<JobError>() {
            Ok(job_error) => {
                let kind = match job_error.class {
                    ErrorClass::Permanent => FailureKind::Permanent,
                    _ => FailureKind::Failed,
                };
                Failure::new(kind, job_error.class, chain(&*job_error.source))
            }
            Err(other) => Failure::new(FailureKind::Failed, ErrorClass::Transient, chain(&*other)),
        }
    }

    /// The failure of an attempt that was cancelled because its lease ran out.
    pub(crate) fn after_lease_lost(self) -> Self {
        Failure::new(
            FailureKind::WorkerLost,
            ErrorClass::Transient,
            format!(
                "the lease ran out and the attempt was cancelled: {}",
                self.message
            ),
        )
    }

    pub(crate) fn panicked(payload: &(dyn Any + Send)) -> Self {
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        Failure::new(
            FailureKind::Panicked,
            ErrorClass::Transient,
            format!("handler panicked: {text}"),
        )
    }
}

/// An error's text followed by its sources, joined by ": ".
pub(crate) fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<Outcome, Failure>> + Send>>;

/// A handler with its job type erased: bytes in, outcome out.
pub(crate) trait ErasedHandler: Send + Sync {
    /// Decodes the payload and starts the handler.
    fn call(
        &self,
        codec: &str,
        payload: &[u8],
        context: JobContext,
    ) -> Result<HandlerFuture, Failure>;
}

pub(crate) struct TypedHandler<J, S> {
    service: S,
    options: KindOptions,
    _job: PhantomData<fn() -> J>,
}

impl<J, S> TypedHandler<J, S> {
    pub(crate) fn new(service: S, options: KindOptions) -> Self {
        Self {
            service,
            options,
            _job: PhantomData,
        }
    }
}

impl<J, S> ErasedHandler for TypedHandler<J, S>
where
    J: Job,
    S: Service<JobRequest<J>> + Clone + Send + Sync + 'static,
    S::Response: Into<Outcome>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn call(
        &self,
        codec: &str,
        payload: &[u8],
        context: JobContext,
    ) -> Result<HandlerFuture, Failure> {
        let job = decode::<J>(codec, payload, self.options.retry_decode_failures)?;
        let call = self.service.clone().oneshot(JobRequest { job, context });
        Ok(Box::pin(async move {
            match call.await {
                Ok(response) => Ok(response.into()),
                Err(error) => Err(Failure::from_box(error.into())),
            }
        }))
    }
}

fn decode<J: Job>(codec: &str, payload: &[u8], retry: bool) -> Result<J, Failure> {
    let class = if retry {
        ErrorClass::Transient
    } else {
        ErrorClass::Permanent
    };
    // Not yet: codecs other than JSON (a codec per registered kind).
    if codec != JSON_CODEC {
        let message =
            format!("payload has unknown codec {codec:?} (this worker decodes {JSON_CODEC:?})");
        return Err(Failure::new(FailureKind::Decode, class, message));
    }
    serde_json::from_slice(payload).map_err(|e| {
        let message = format!("payload does not decode as a {} job: {e}", J::KIND);
        Failure::new(FailureKind::Decode, class, message)
    })
}

/// A registered kind: its handler and options.
pub(crate) struct Registered {
    pub(crate) handler: Box<dyn ErasedHandler>,
    pub(crate) options: KindOptions,
}

pub(crate) type Registry = HashMap<String, Registered>;
