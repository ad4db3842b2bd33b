//! The ingest server: a tus endpoint, a job queue that verifies every finished upload, a
//! WebSocket that pushes progress, and health and readiness routes, all under one graceful
//! shutdown.
//!
//! Everything it keeps lives in its state directory: the uploads (`uploads/`), the
//! verification results (`results/`) and, unless the queue is in PostgreSQL, the SQLite
//! job queue (`queue.sqlite3`). Started again on the same directory it picks up where it
//! stopped: half-finished uploads resume, queued jobs run, and an upload that completed
//! just before a crash, whose job was never queued, gets its job at start-up.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use steadfast::backoff::{Backoff, ErrorClass, retry};
use steadfast::chunk_upload::UploadId;
use steadfast::chunk_upload::server::{ServerConfig, TusServer};
use steadfast::chunk_upload::store::{FileStore, Store as _, UploadInfo};
use steadfast::jobqueue::{
    DEFAULT_QUEUE, Event, Job, JobContext, JobError, JobRecord, JobState, ListFilter, NewJob,
    PostgresStore, Queue, SqliteStore, Store,
};
use steadfast::shutdown::axum::{Drain, readiness_route, serve};
use steadfast::shutdown::{Handle, Report as ShutdownReport, Shutdown};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::wire::{
    META_NAME, META_SHA256, MISMATCH, Report, ServerEvent, Totals, UploadState, UploadStatus,
    glob_match, sha256_file,
};

/// Errors of the example programs: each carries a sentence saying what failed.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many times a verification job may run before it becomes a dead letter.
const MAX_ATTEMPTS: u32 = 10;

/// What the server is told to do.
#[derive(Debug, Clone)]
pub(crate) struct ServerOptions {
    /// Where to listen; port 0 picks a free one.
    pub(crate) listen: SocketAddr,
    /// The state directory (created if missing).
    pub(crate) state: PathBuf,
    /// A PostgreSQL URL for the job queue; `None` keeps it in SQLite in the state directory.
    pub(crate) postgres: Option<String>,
    /// The share of verification attempts that fail with a transient error, in `0..=1`.
    pub(crate) transient_rate: f64,
    /// Files whose relative path matches this glob fail verification permanently.
    pub(crate) dead_pattern: String,
    /// Verification jobs run side by side.
    pub(crate) workers: usize,
    /// Whether SIGTERM and SIGINT start the shutdown (off when a test drives it).
    pub(crate) signals: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            state: PathBuf::from("ingest-state/server"),
            postgres: None,
            transient_rate: 0.2,
            dead_pattern: "*.lock".to_owned(),
            workers: 4,
            signals: true,
        }
    }
}

/// A server that is up: its address, a handle to stop it, and its shutdown report to come.
#[derive(Debug)]
pub(crate) struct Running {
    /// The address it listens on.
    pub(crate) addr: SocketAddr,
    /// Triggers the graceful shutdown, as SIGTERM would.
    pub(crate) handle: Handle,
    /// Ends with the shutdown's report once every phase has run.
    pub(crate) finished: JoinHandle<ShutdownReport>,
}

/// Opens the stores, queues what a crash left unqueued, and starts serving.
///
/// # Errors
///
/// Bad options, a state directory or database that cannot be opened, or an address that
/// cannot be bound.
pub(crate) async fn start(options: ServerOptions) -> Result<Running, BoxError> {
    if !(0.0..=1.0).contains(&options.transient_rate) {
        return Err(format!(
            "the transient failure rate must be between 0 and 1, got {}",
            options.transient_rate
        )
        .into());
    }
    let uploads = FileStore::open(options.state.join("uploads"))
        .await
        .map_err(|error| format!("cannot open the upload store: {error}"))?;
    tokio::fs::create_dir_all(options.state.join("results")).await?;

    match options.postgres.clone() {
        Some(url) => {
            let store = PostgresStore::builder(url)
                .schema(postgres_schema(&options.state))
                .connect()
                .await
                .map_err(|error| format!("cannot open the PostgreSQL job queue: {error}"))?;
            let closing = store.clone();
            start_with(Queue::new(store), uploads, options, move || async move {
                closing.close().await;
            })
            .await
        }
        None => {
            let store = SqliteStore::open(options.state.join("queue.sqlite3"))
                .await
                .map_err(|error| format!("cannot open the SQLite job queue: {error}"))?;
            let closing = store.clone();
            start_with(Queue::new(store), uploads, options, move || async move {
                closing.close().await;
            })
            .await
        }
    }
}

/// The verification job queued for every finished upload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct VerifyUpload {
    upload: String,
    name: String,
    sha256: String,
}

impl Job for VerifyUpload {
    const KIND: &'static str = "verify-upload";
}

/// Shared by the routes.
struct App<S> {
    queue: Queue<S>,
    uploads: FileStore,
    events: broadcast::Sender<ServerEvent>,
}

async fn start_with<S, C, F>(
    queue: Queue<S>,
    uploads: FileStore,
    options: ServerOptions,
    close_store: C,
) -> Result<Running, BoxError>
where
    S: Store,
    C: FnOnce() -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_secs(15))
        .step_timeout(Duration::from_secs(10))
        .signals(options.signals)
        .starts_ready(false)
        .build()?;
    let (events, _) = broadcast::channel(4096);

    // Teardown runs in reverse order of registration: the store closes last.
    shutdown.hook("close the job store", close_store);

    let queued = queue_missing_jobs(&queue, &uploads).await?;
    if queued > 0 {
        info!(
            queued,
            "queued verification for uploads that completed before the last stop"
        );
    }

    let worker = verify_worker(&queue, &uploads, &options)?;
    shutdown.stage("job worker", move |token| async move {
        let report = worker.run(token).await;
        info!(
            released = report.released,
            unstarted = report.unstarted,
            "job worker stopped"
        );
    });

    let (complete_tx, complete_rx) = mpsc::unbounded_channel();
    let tus = TusServer::builder(uploads.clone())
        .config(ServerConfig {
            idle_timeout: Duration::from_secs(10),
            takeover_after: Duration::from_millis(500),
            ..ServerConfig::default()
        })
        .on_complete(move |info: &UploadInfo| {
            // The receiver lives until teardown; a send after it is gone is caught by the
            // start-up scan of the next run.
            let _ = complete_tx.send(info.clone());
        })
        .build()?;

    let expiry = tus.clone();
    shutdown.stage("upload expiry", move |token| async move {
        expiry.run_expiry(Duration::from_secs(60), token).await;
    });
    shutdown.stage(
        "progress events",
        progress_events(queue.clone(), events.clone()),
    );
    shutdown.stage(
        "job enqueuer",
        enqueuer(queue.clone(), events.clone(), complete_rx),
    );

    let app = Arc::new(App {
        queue,
        uploads,
        events,
    });
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", readiness_route(shutdown.readiness()))
        .route("/events", get(progress_socket::<S>))
        .route("/report", get(report::<S>))
        .with_state(app)
        .merge(tus.router());

    let listener = TcpListener::bind(options.listen)
        .await
        .map_err(|error| format!("cannot listen on {}: {error}", options.listen))?;
    let addr = listener.local_addr()?;
    shutdown.spawn_critical("http", serve(&shutdown, listener, router));
    shutdown.mark_ready();
    info!(%addr, state = %options.state.display(), "ingest server ready");

    let handle = shutdown.handle();
    let finished = tokio::spawn(async move {
        // The coordinator logs each phase and teardown step as it runs.
        let report = shutdown.run().await;
        info!(%report, "ingest server stopped");
        report
    });
    Ok(Running {
        addr,
        handle,
        finished,
    })
}

/// A schema of its own per state directory, so two demos never run each other's jobs.
// Not yet: nothing drops the schema when a temporary state directory is removed.
fn postgres_schema(state: &std::path::Path) -> String {
    let path = state.to_string_lossy();
    let digest = crate::wire::hex(&<sha2::Sha256 as sha2::Digest>::digest(path.as_bytes()));
    format!("steadfast_demo_{}", &digest[..12])
}

fn verify_worker<S: Store>(
    queue: &Queue<S>,
    uploads: &FileStore,
    options: &ServerOptions,
) -> Result<steadfast::jobqueue::Worker<S>, BoxError> {
    let verifier = Verifier {
        uploads: uploads.clone(),
        results: options.state.join("results"),
        transient_rate: options.transient_rate,
        dead_pattern: Arc::from(options.dead_pattern.as_str()),
    };
    let worker = queue
        .worker()
        .queue(DEFAULT_QUEUE, options.workers.max(1))
        .lease(Duration::from_secs(10))
        .heartbeat(Duration::from_secs(3))
        .poll_interval(Duration::from_millis(200))
        .sweep_interval(Duration::from_secs(2))
        .drain_timeout(Duration::from_secs(5))
        .backoff(
            Backoff::exponential(Duration::from_millis(50))
                .max_delay(Duration::from_secs(1))
                .unlimited_attempts(),
        )
        .handle(move |job: VerifyUpload, cx: JobContext| {
            let verifier = verifier.clone();
            async move { verifier.verify(job, cx).await }
        })
        .build()?;
    Ok(worker)
}

/// The handler of verification jobs.
#[derive(Clone)]
struct Verifier {
    uploads: FileStore,
    results: PathBuf,
    transient_rate: f64,
    dead_pattern: Arc<str>,
}

/// What a verification found, kept in `results/<upload>.json`.
#[derive(Serialize)]
struct Verdict<'a> {
    name: &'a str,
    declared: &'a str,
    stored: &'a str,
    matches: bool,
}

impl Verifier {
    async fn verify(self, job: VerifyUpload, cx: JobContext) -> Result<(), JobError> {
        if rand::random_bool(self.transient_rate) {
            return Err(JobError::retryable(format!(
                "simulated transient failure on attempt {}",
                cx.attempt()
            )));
        }
        if glob_match(&self.dead_pattern, &job.name) {
            return Err(JobError::permanent(format!(
                "{} matches the dead-letter pattern {:?}",
                job.name, self.dead_pattern
            )));
        }

        let id: UploadId = job.upload.parse().map_err(JobError::permanent)?;
        let path = self.uploads.data_path(&id);
        let stored = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .map_err(JobError::retryable)?
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::NotFound => {
                    JobError::permanent(format!("the data of upload {id} is gone"))
                }
                _ => JobError::classify(error),
            })?;

        let matches = stored == job.sha256;
        let verdict = Verdict {
            name: &job.name,
            declared: &job.sha256,
            stored: &stored,
            matches,
        };
        let json = serde_json::to_vec_pretty(&verdict).map_err(JobError::permanent)?;
        tokio::fs::write(self.results.join(format!("{id}.json")), json)
            .await
            .map_err(JobError::classify)?;

        if !matches {
            return Err(JobError::permanent(format!(
                "{MISMATCH}: {} declared {} but {} is stored",
                job.name, job.sha256, stored
            )));
        }
        debug!(upload = %id, name = %job.name, "upload verified");
        Ok(())
    }
}

/// Queues the verification of each finished upload, as the tus server reports them.
fn enqueuer<S: Store>(
    queue: Queue<S>,
    events: broadcast::Sender<ServerEvent>,
    mut finished: mpsc::UnboundedReceiver<UploadInfo>,
) -> impl FnOnce(tokio_util::sync::CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
{
    move |token| {
        Box::pin(async move {
            loop {
                tokio::select! {
                    biased;
                    info = finished.recv() => match info {
                        Some(info) => enqueue(&queue, &events, &info).await,
                        None => return,
                    },
                    () = token.cancelled() => break,
                }
            }
            // Uploads that finished during the drain still get their job.
            while let Ok(info) = finished.try_recv() {
                enqueue(&queue, &events, &info).await;
            }
        })
    }
}

/// Queues one verification job, keyed by the upload id so that it is never queued twice
/// while it is pending. Store errors are retried on a short backoff.
async fn enqueue<S: Store>(
    queue: &Queue<S>,
    events: &broadcast::Sender<ServerEvent>,
    info: &UploadInfo,
) {
    let text = |key: &str| {
        info.metadata
            .get(key)
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default()
    };
    let job = VerifyUpload {
        upload: info.id.to_string(),
        name: text(META_NAME),
        sha256: text(META_SHA256),
    };
    let policy = Backoff::exponential(Duration::from_millis(100))
        .max_delay(Duration::from_secs(2))
        .max_attempts(8);
    let queued = retry(&policy, || async {
        let new = NewJob::new(&job)?
            .unique_key(job.upload.clone())
            .max_attempts(MAX_ATTEMPTS);
        queue.enqueue_new(new).await
    })
    .classify_with(|_: &steadfast::jobqueue::EnqueueError| ErrorClass::Transient)
    .await;

    match queued {
        Ok(_) => {
            let _ = events.send(ServerEvent::Uploaded {
                upload: job.upload,
                name: job.name,
            });
        }
        // Not lost: the start-up scan queues it on the next run.
        Err(error) => warn!(upload = %info.id, %error, "could not queue the verification job"),
    }
}

/// Queues a job for every complete upload that has none (it finished just before a
/// crash, between its last byte and its job).
async fn queue_missing_jobs<S: Store>(
    queue: &Queue<S>,
    uploads: &FileStore,
) -> Result<usize, BoxError> {
    let known: HashSet<String> = all_jobs(queue)
        .await?
        .into_iter()
        .filter_map(|job| job.unique_key)
        .collect();

    let (events, _) = broadcast::channel(1);
    let mut queued = 0;
    for id in uploads.list().await? {
        let Ok(info) = uploads.info(&id).await else {
            continue;
        };
        if info.is_complete() && !known.contains(&id.to_string()) {
            enqueue(queue, &events, &info).await;
            queued += 1;
        }
    }
    Ok(queued)
}

/// Every job in the store, page by page.
async fn all_jobs<S: Store>(queue: &Queue<S>) -> Result<Vec<JobRecord>, BoxError> {
    let mut jobs = Vec::new();
    let mut filter = ListFilter::default().limit(500);
    loop {
        let page = queue.list(&filter).await?;
        let Some(last) = page.last().map(|job| job.id) else {
            return Ok(jobs);
        };
        jobs.extend(page);
        filter = filter.after(last);
    }
}

/// Forwards the queue's events to WebSocket sessions, with fresh totals twice a second.
fn progress_events<S: Store>(
    queue: Queue<S>,
    events: broadcast::Sender<ServerEvent>,
) -> impl FnOnce(tokio_util::sync::CancellationToken) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
{
    move |token| {
        let mut jobs = queue.subscribe();
        Box::pin(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    () = token.cancelled() => return,
                    event = jobs.recv() => match event {
                        Ok(event) => {
                            if let Some(event) = progress_event(event) {
                                let _ = events.send(event);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            token.cancelled().await;
                            return;
                        }
                    },
                    _ = tick.tick() => {
                        if events.receiver_count() > 0 {
                            if let Ok(totals) = totals(&queue).await {
                                let _ = events.send(ServerEvent::Totals(totals));
                            }
                        }
                    }
                }
            }
        })
    }
}

fn progress_event(event: Event) -> Option<ServerEvent> {
    Some(match event {
        Event::Started { id, attempt, .. } => ServerEvent::Attempt {
            job: id.get(),
            attempt,
        },
        Event::RetryScheduled { id, attempt, .. } => ServerEvent::Retry {
            job: id.get(),
            attempt,
        },
        Event::Completed { id, .. } => ServerEvent::Verified { job: id.get() },
        Event::DeadLettered { id, .. } => ServerEvent::Dead { job: id.get() },
        _ => return None,
    })
}

async fn totals<S: Store>(queue: &Queue<S>) -> Result<Totals, BoxError> {
    let stats = queue.stats().await?;
    Ok(Totals {
        verified: stats.count(JobState::Completed),
        dead: stats.count(JobState::Dead),
        active: JobState::ALL
            .into_iter()
            .filter(|state| state.is_active())
            .map(|state| stats.count(state))
            .sum(),
    })
}

/// `GET /events`: a WebSocket of [`ServerEvent`]s, held open until the server drains.
async fn progress_socket<S: Store>(
    upgrade: WebSocketUpgrade,
    drain: Drain,
    State(app): State<Arc<App<S>>>,
) -> Response {
    upgrade.on_upgrade(move |socket| progress_session(socket, drain, app))
}

async fn progress_session<S: Store>(mut socket: WebSocket, drain: Drain, app: Arc<App<S>>) {
    let _session = drain.track("progress session");
    let mut events = app.events.subscribe();
    if let Ok(totals) = totals(&app.queue).await {
        if send(&mut socket, &ServerEvent::Totals(totals))
            .await
            .is_err()
        {
            return;
        }
    }

    loop {
        tokio::select! {
            () = drain.cancelled() => {
                let close = CloseFrame { code: 1001, reason: "server shutting down".into() };
                let _ = socket.send(Message::Close(Some(close))).await;
                return;
            }
            event = events.recv() => match event {
                Ok(event) => {
                    if send(&mut socket, &event).await.is_err() {
                        return;
                    }
                }
                // The next totals bring a slow client up to date.
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

async fn send(socket: &mut WebSocket, event: &ServerEvent) -> Result<(), axum::Error> {
    let json = serde_json::to_string(event).unwrap_or_default();
    socket.send(Message::Text(json.into())).await
}

/// `GET /report`: where every upload stands, with attempt and retry counts.
async fn report<S: Store>(State(app): State<Arc<App<S>>>) -> Response {
    match build_report(&app.queue, &app.uploads).await {
        Ok(mut report) => {
            report.sessions = app.events.receiver_count() as u64;
            (
                [(CONTENT_TYPE, "application/json")],
                serde_json::to_string(&report).unwrap_or_default(),
            )
                .into_response()
        }
        Err(error) => (StatusCode::SERVICE_UNAVAILABLE, error.to_string()).into_response(),
    }
}

async fn build_report<S: Store>(queue: &Queue<S>, uploads: &FileStore) -> Result<Report, BoxError> {
    let ids = uploads.list().await?;
    let known: HashSet<String> = ids.iter().map(ToString::to_string).collect();
    let mut latest: HashMap<String, JobRecord> = HashMap::new();
    let mut report = Report::default();
    for job in all_jobs(queue).await? {
        // Jobs of other stores sharing a PostgreSQL queue are not ours to count.
        let Some(key) = job.unique_key.clone().filter(|key| known.contains(key)) else {
            continue;
        };
        report.attempts += u64::from(job.attempt);
        let final_error = usize::from(job.state == JobState::Dead);
        report.retries += job.errors.len().saturating_sub(final_error) as u64;
        if latest
            .get(&key)
            .is_none_or(|seen| seen.id.get() < job.id.get())
        {
            latest.insert(key, job);
        }
    }

    for id in ids {
        let Ok(info) = uploads.info(&id).await else {
            continue;
        };
        let name = info
            .metadata
            .get(META_NAME)
            .map(|value| String::from_utf8_lossy(value).into_owned())
            .unwrap_or_default();
        let job = latest.get(&id.to_string());
        let reason = job
            .filter(|job| job.state == JobState::Dead)
            .and_then(JobRecord::last_error)
            .map(|error| error.message.clone());
        let state = match job.map(|job| job.state) {
            _ if !info.is_complete() => UploadState::Receiving,
            Some(JobState::Completed) => UploadState::Verified,
            Some(JobState::Dead) if reason.as_deref().is_some_and(|r| r.starts_with(MISMATCH)) => {
                UploadState::Mismatch
            }
            Some(JobState::Dead) => UploadState::Dead,
            _ => UploadState::Pending,
        };
        report.uploads.push(UploadStatus {
            id: id.to_string(),
            name,
            state,
            reason,
        });
    }
    Ok(report)
}
