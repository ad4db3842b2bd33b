//! The ingest client: walks a directory and uploads every file through a fault-injecting
//! proxy, follows the server's progress over a reconnecting WebSocket, then waits for every
//! verification and reports.
//!
//! Its state directory remembers upload URLs of unfinished files and the files already
//! done, so a rerun after Ctrl-C resumes where the last run stopped.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use steadfast::backoff::{Backoff, ErrorClass, retry};
use steadfast::batch::{Batch, CancelMode, CancellationToken, Outcome};
use steadfast::chunk_upload::client::{
    ClientConfig, FileUrlStore, Progress, StoredUpload, Uploader, UrlStore,
};
use steadfast::chunk_upload::protocol::Metadata;
use steadfast::ws_resilient::{self as ws, State as WsState};
use steadfast_testkit::{Direction, Fault, FaultProxy};
use tracing::{debug, info, warn};

use crate::server::BoxError;
use crate::wire::{META_NAME, META_SHA256, Report, ServerEvent, UploadState, sha256_file};

/// What the client is told to do.
#[derive(Debug, Clone)]
pub(crate) struct ClientOptions {
    /// The directory to ingest.
    pub(crate) dir: PathBuf,
    /// The server, reached through the fault proxy.
    pub(crate) server: SocketAddr,
    /// The client's state directory (created if missing).
    pub(crate) state: PathBuf,
    /// Files uploaded side by side.
    pub(crate) concurrency: usize,
    /// Chance, every 100 ms, that the proxy cuts the live connections after a few more
    /// kilobytes.
    pub(crate) cut_rate: f64,
    /// Chance, every 100 ms, that the proxy answers new connections with 503 for the next
    /// 100 ms.
    pub(crate) status_rate: f64,
    /// The largest PATCH the uploader sends.
    pub(crate) chunk_size: u64,
    /// Seed for the proxy's dice, for a reproducible fault schedule.
    pub(crate) seed: u64,
    /// Draw progress bars on stderr (when it is a terminal).
    pub(crate) progress: bool,
    /// How long to wait for the verifications after the last upload.
    pub(crate) verify_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("."),
            server: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state: PathBuf::from("ingest-state/client"),
            concurrency: 4,
            cut_rate: 0.1,
            status_rate: 0.05,
            chunk_size: 256 << 10,
            seed: 7,
            progress: true,
            verify_timeout: Duration::from_secs(120),
        }
    }
}

/// The run's outcome, as printed at the end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DemoReport {
    /// Files found in the directory.
    pub(crate) files: u64,
    /// Their total size.
    pub(crate) bytes: u64,
    /// Files uploaded by this run.
    pub(crate) uploaded: u64,
    /// Files an earlier run had already uploaded.
    pub(crate) skipped: u64,
    /// Uploads that continued from a stored offset after a failure or an earlier run.
    pub(crate) resumed: u64,
    /// Bytes put on the wire more than once.
    pub(crate) resent: u64,
    /// Verification attempts on the server.
    pub(crate) attempts: u64,
    /// Verification attempts that failed and were retried.
    pub(crate) retries: u64,
    /// Files verified.
    pub(crate) verified: u64,
    /// Files whose verification failed permanently (dead letters).
    pub(crate) dead: u64,
    /// Files whose stored bytes differ from what was sent.
    pub(crate) mismatches: u64,
    /// Files that could not be uploaded.
    pub(crate) failed: u64,
    /// Files whose verification had not finished when the client stopped waiting.
    pub(crate) pending: u64,
    /// WebSocket reconnects.
    pub(crate) reconnects: u64,
    /// Wall-clock time of the run, in milliseconds.
    pub(crate) elapsed_ms: u64,
    /// Whether Ctrl-C stopped the run early.
    pub(crate) interrupted: bool,
    /// Every file that did not end verified, with the reason.
    pub(crate) problems: Vec<(String, String)>,
}

impl DemoReport {
    /// The one-line summary that ends the demo's output.
    pub(crate) fn summary(&self) -> String {
        format!(
            "demo: files={} bytes={} resumed={} retries={} dead={} mismatches={} \
             resent={} attempts={} verified={} failed={} pending={} reconnects={} \
             skipped={} elapsed={:.1}s{}",
            self.files,
            self.bytes,
            self.resumed,
            self.retries,
            self.dead,
            self.mismatches,
            self.resent,
            self.attempts,
            self.verified,
            self.failed,
            self.pending,
            self.reconnects,
            self.skipped,
            self.elapsed_ms as f64 / 1000.0,
            if self.interrupted { " interrupted" } else { "" },
        )
    }

    /// Whether every file is accounted for: verified, dead or failed with a reason.
    pub(crate) fn accounted(&self) -> bool {
        self.verified + self.dead + self.mismatches + self.failed + self.pending == self.files
    }

    /// Whether the run ended as the demo must: nothing corrupted, nothing left pending,
    /// every file accounted for.
    pub(crate) fn is_success(&self) -> bool {
        !self.interrupted && self.mismatches == 0 && self.pending == 0 && self.accounted()
    }

    /// The report as lines for a terminal.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!(
                "files       {} ({} bytes): {} uploaded now, {} in an earlier run",
                self.files, self.bytes, self.uploaded, self.skipped
            ),
            format!(
                "uploads     {} resumed, {} bytes re-sent, {} failed",
                self.resumed, self.resent, self.failed
            ),
            format!(
                "jobs        {} attempts, {} retries, {} verified, {} dead letters, {} pending",
                self.attempts, self.retries, self.verified, self.dead, self.pending
            ),
            format!("integrity   {} mismatches", self.mismatches),
            format!("websocket   {} reconnects", self.reconnects),
        ];
        for (name, reason) in &self.problems {
            lines.push(format!("  {name}: {reason}"));
        }
        if self.interrupted {
            lines.push("interrupted: a rerun with the same state directory resumes".to_owned());
        }
        lines
    }
}

/// Runs the client until every file is uploaded and verified, or `cancel` fires.
/// `midway` is called once, when half the bytes are uploaded.
///
/// # Errors
///
/// Bad options, an unreadable directory or state directory. Failures of single files are
/// not errors: they are in the report.
pub(crate) async fn run(
    options: ClientOptions,
    cancel: CancellationToken,
    midway: Option<Box<dyn FnOnce() + Send>>,
) -> Result<DemoReport, BoxError> {
    let started = Instant::now();
    for (name, rate) in [("cut", options.cut_rate), ("503", options.status_rate)] {
        if !(0.0..=1.0).contains(&rate) {
            return Err(format!("the {name} rate must be between 0 and 1, got {rate}").into());
        }
    }
    let concurrency =
        NonZeroUsize::new(options.concurrency).ok_or("the concurrency must be at least 1")?;
    tokio::fs::create_dir_all(&options.state).await?;

    let files = walk(&options.dir, &options.state)?;
    let total_bytes = files.iter().map(|file| file.len).sum();
    let done = Done::load(options.state.join("done.json"))?;
    let (earlier, todo): (Vec<Entry>, Vec<Entry>) = files
        .into_iter()
        .partition(|file| done.get(&file.fingerprint).is_some());
    let todo_bytes = todo.iter().map(|file| file.len).sum();
    info!(
        files = earlier.len() + todo.len(),
        bytes = total_bytes,
        earlier = earlier.len(),
        dir = %options.dir.display(),
        "ingesting"
    );

    let proxy = Arc::new(FaultProxy::start(options.server).await?);
    let chaos_stop = cancel.child_token();
    let chaos = tokio::spawn(chaos(
        Arc::clone(&proxy),
        options.cut_rate,
        options.status_rate,
        options.seed,
        chaos_stop.clone(),
    ));
    let base = format!("http://{}", proxy.local_addr());

    let bars = Bars::new(options.progress, todo.len() as u64, todo_bytes);
    let (totals_tx, mut totals_seen) = tokio::sync::watch::channel(0_u64);
    let (socket, follower) = follow_progress(&proxy, &bars, totals_tx, &cancel)?;

    let urls = PathUrlStore {
        inner: FileUrlStore::new(options.state.join("uploads.json")),
        origin: base.clone(),
    };
    let ctx = Arc::new(Ctx {
        uploader: Uploader::builder(format!("{base}/files"))
            .config(ClientConfig {
                chunk_size: options.chunk_size,
                request_timeout: Some(Duration::from_secs(15)),
                // The proxy's 503 bursts fail a few requests in a row by design.
                zero_progress_warning: 10,
                ..ClientConfig::default()
            })
            .backoff(
                Backoff::exponential(Duration::from_millis(100))
                    .max_delay(Duration::from_secs(2))
                    .max_attempts(30),
            )
            .url_store(urls.clone())
            .build()?,
        urls,
        done,
        cancel: cancel.clone(),
        bars: bars.clone(),
        todo_bytes,
        done_bytes: AtomicU64::new(0),
        midway: Mutex::new(midway),
    });

    let mut report = DemoReport {
        files: (earlier.len() + todo.len()) as u64,
        bytes: total_bytes,
        skipped: earlier.len() as u64,
        ..DemoReport::default()
    };
    let mut ids: HashMap<String, String> = earlier
        .into_iter()
        .filter_map(|file| Some((file.name, ctx.done.get(&file.fingerprint)?)))
        .collect();
    ids.extend(upload_all(&ctx, todo, concurrency, &mut report).await?);
    bars.uploads_done();

    if !cancel.is_cancelled() {
        wait_for_verification(&base, &ids, options.verify_timeout, &cancel, &mut report).await;

        // Let the progress feed show the final totals; after a server restart this waits
        // for the socket to be back.
        totals_seen.mark_unchanged();
        let caught_up = tokio::time::timeout(Duration::from_secs(5), totals_seen.changed());
        if caught_up.await.is_err() {
            warn!("the progress feed did not deliver the final totals within 5 s");
        }
    }
    report.interrupted = cancel.is_cancelled();
    if report.interrupted {
        // Nothing was waited for: every file not known to have failed is unfinished.
        report.pending = report.files.saturating_sub(report.failed);
    }

    chaos_stop.cancel();
    let _ = chaos.await;
    report.reconnects = socket.metrics().connects.saturating_sub(1);
    let unsent = socket.close().await;
    debug!(unsent = unsent.len(), "progress socket closed");
    follower.abort();
    bars.finish();
    report.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// One file to upload.
#[derive(Debug, Clone)]
struct Entry {
    /// Its path relative to the directory, with `/` separators.
    name: String,
    path: PathBuf,
    len: u64,
    /// Name, size and modification time: the key of its upload URL and of the record of
    /// files done, so a changed file is uploaded again.
    fingerprint: String,
}

/// Every regular file under `dir`, sorted, skipping build output, VCS data, dependencies
/// and the client's own state.
fn walk(dir: &Path, state: &Path) -> Result<Vec<Entry>, BoxError> {
    const SKIP: [&str; 3] = ["target", ".git", "node_modules"];

    let state = state.canonicalize().ok();
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(|error| format!("cannot read {}: {error}", current.display()))?;
        for entry in entries {
            let entry = entry?;
            let path = entry.path();
            let kind = entry.file_type()?;
            if kind.is_dir() {
                let skipped = SKIP.iter().any(|name| entry.file_name() == *name)
                    || state.as_deref() == path.canonicalize().ok().as_deref();
                if !skipped {
                    pending.push(path);
                }
            } else if kind.is_file() {
                let name = path
                    .strip_prefix(dir)
                    .unwrap_or(&path)
                    .components()
                    .map(|part| part.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/");
                let metadata = entry.metadata()?;
                let len = metadata.len();
                let modified = metadata
                    .modified()
                    .ok()
                    .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |since| since.as_nanos());
                let fingerprint = format!("{name}:{len}:{modified}");
                files.push(Entry {
                    name,
                    path,
                    len,
                    fingerprint,
                });
            }
        }
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(files)
}

/// Flips the proxy's faults every 100 ms: with `cut_rate` the live connections are cut
/// after a few more kilobytes, with `status_rate` new connections get a bare 503.
async fn chaos(
    proxy: Arc<FaultProxy>,
    cut_rate: f64,
    status_rate: f64,
    seed: u64,
    stop: CancellationToken,
) {
    // Not yet: testkit's proxy applies one fault to all connections; a per-connection
    // probability would model a flaky network more closely (see demo-requests.md).
    let mut dice = SmallRng::seed_from_u64(seed);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if dice.random_bool(cut_rate) {
            let bytes = dice.random_range(1..=32 * 1024);
            proxy.set_fault_for_live(Fault::CutAfter {
                direction: Direction::ToTarget,
                bytes,
            });
        }
        let next = if dice.random_bool(status_rate) {
            Fault::status(503)
        } else {
            Fault::PassThrough
        };
        proxy.set_fault_for_new(next);
    }
    proxy.set_fault(Fault::PassThrough);
}

/// Connects the progress WebSocket through the proxy and feeds its events to the bars.
fn follow_progress(
    proxy: &FaultProxy,
    bars: &Bars,
    totals_seen: tokio::sync::watch::Sender<u64>,
    cancel: &CancellationToken,
) -> Result<(ws::Client, tokio::task::JoinHandle<()>), BoxError> {
    let config = ws::Config {
        backoff: Backoff::exponential(Duration::from_millis(100))
            .max_delay(Duration::from_secs(2))
            .unlimited_attempts(),
        stable_after: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(5),
        ping_interval: Some(Duration::from_secs(5)),
        pong_timeout: Duration::from_secs(5),
        ..ws::Config::default()
    };
    let (socket, incoming) = ws::Client::builder(format!("ws://{}/events", proxy.local_addr()))
        .config(config)
        .cancel_token(cancel.child_token())
        .build()?;

    let mut incoming = incoming.json::<ServerEvent>();
    let mut state = socket.state();
    let bars = bars.clone();
    let follower = tokio::spawn(async move {
        let mut socket_state = "progress socket connecting".to_owned();
        let (mut retries, mut dead) = (0_u64, 0_u64);
        loop {
            tokio::select! {
                event = incoming.recv() => match event {
                    Some(ServerEvent::Totals(totals)) => {
                        bars.verified(totals.verified + totals.dead);
                        totals_seen.send_modify(|seen| *seen += 1);
                        continue;
                    }
                    Some(ServerEvent::Retry { .. }) => retries += 1,
                    Some(ServerEvent::Dead { .. }) => dead += 1,
                    Some(_) => continue,
                    None => return,
                },
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    socket_state = match &*state.borrow_and_update() {
                        WsState::Open => "progress socket open".to_owned(),
                        WsState::Reconnecting { attempt, .. } => {
                            format!("progress socket reconnecting (attempt {attempt})")
                        }
                        WsState::Connecting { .. } => "progress socket connecting".to_owned(),
                        _ => "progress socket closed".to_owned(),
                    };
                }
            }
            bars.socket(format!(
                "{socket_state}; seen {retries} job retries and {dead} dead letters"
            ));
        }
    });
    Ok((socket, follower))
}

/// What every upload task shares.
struct Ctx {
    uploader: Uploader<PathUrlStore>,
    urls: PathUrlStore,
    done: Done,
    cancel: CancellationToken,
    bars: Bars,
    todo_bytes: u64,
    done_bytes: AtomicU64,
    midway: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// How one file's upload went.
#[derive(Debug)]
struct Sent {
    id: String,
    resumed: bool,
    resent: u64,
}

/// Uploads every file with bounded concurrency and returns the upload id of each file
/// that is on the server, by name.
async fn upload_all(
    ctx: &Arc<Ctx>,
    files: Vec<Entry>,
    concurrency: NonZeroUsize,
    report: &mut DemoReport,
) -> Result<HashMap<String, String>, BoxError> {
    let batch = Batch::builder()
        .concurrency(concurrency)
        .cancel(ctx.cancel.clone())
        .cancel_mode(CancelMode::Graceful {
            grace: Duration::from_secs(5),
        })
        .build()?;
    let work_ctx = Arc::clone(ctx);
    let mut run = batch.run_keyed(
        files,
        |file: &Entry| file.name.clone(),
        move |file| upload_one(Arc::clone(&work_ctx), file),
    );

    let mut ids = HashMap::new();
    while let Some(result) = run.next().await {
        let name = result.key.unwrap_or_default();
        match result.outcome {
            Outcome::Succeeded(sent) => {
                report.uploaded += 1;
                report.resumed += u64::from(sent.resumed);
                report.resent += sent.resent;
                ids.insert(name, sent.id);
            }
            Outcome::Failed(_) | Outcome::Cancelled if ctx.cancel.is_cancelled() => {}
            Outcome::Failed(reason) => {
                warn!(file = %name, %reason, "upload failed");
                report.failed += 1;
                report
                    .problems
                    .push((name, format!("upload failed: {reason}")));
            }
            other => {
                report.failed += 1;
                report
                    .problems
                    .push((name, format!("upload ended: {:?}", other.kind())));
            }
        }
    }
    let finished = run.finish().await.map_err(|error| error.to_string())?;
    debug!(counts = ?finished.report().counts(), "upload batch finished");
    Ok(ids)
}

async fn upload_one(ctx: Arc<Ctx>, file: Entry) -> Result<Sent, String> {
    let path = file.path.clone();
    let sha256 = tokio::task::spawn_blocking(move || sha256_file(&path))
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| format!("cannot read the file: {error}"))?;
    let fingerprint = file.fingerprint.clone();
    let earlier_url = ctx.urls.get(&fingerprint).await.ok().flatten().is_some();

    let mut metadata = Metadata::new();
    metadata
        .insert(META_NAME, file.name.as_bytes())
        .and_then(|()| metadata.insert(META_SHA256, sha256.as_bytes()))
        .map_err(|error| error.to_string())?;
    let upload = ctx
        .uploader
        .upload_file(&file.path)
        .metadata(metadata)
        .fingerprint(fingerprint.clone())
        .cancel(ctx.cancel.clone());
    let watcher = tokio::spawn(watch_upload(upload.progress(), ctx.bars.clone()));

    let uploaded = upload.run().await.map_err(|error| error.to_string())?;
    let seen = watcher.await.unwrap_or_default();
    let id = uploaded
        .url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    ctx.done
        .insert(&fingerprint, &id)
        .map_err(|error| format!("cannot record the upload: {error}"))?;
    ctx.finished(file.len);

    // Not yet: a failure that lost no byte and cost no retry without progress (a cut
    // after the server stored the whole chunk) is not seen as a resume; the uploader's
    // progress has no counter of recoveries (see demo-requests.md).
    let resent = seen.sent.saturating_sub(file.len);
    Ok(Sent {
        id,
        resumed: earlier_url || seen.retried || resent > 0,
        resent,
    })
}

/// What the progress of one upload showed.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    retried: bool,
}

/// Follows one upload's progress into the bytes bar until the upload ends.
async fn watch_upload(mut progress: tokio::sync::watch::Receiver<Progress>, bars: Bars) -> Seen {
    let mut seen = Seen::default();
    let mut acked = 0;
    while progress.changed().await.is_ok() {
        let now = *progress.borrow_and_update();
        bars.bytes(now.acked.saturating_sub(acked));
        acked = acked.max(now.acked);
        seen.sent = now.sent;
        seen.retried |= now.zero_progress_retries > 0;
    }
    seen
}

impl Ctx {
    /// Counts a file as uploaded and fires the midway hook once half the bytes this run
    /// has to send are in.
    fn finished(&self, len: u64) {
        self.bars.file_done();
        let done = self.done_bytes.fetch_add(len, Ordering::SeqCst) + len;
        if done.saturating_mul(2) >= self.todo_bytes {
            let hook = self
                .midway
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(hook) = hook {
                info!(bytes = done, "half the bytes are uploaded");
                hook();
            }
        }
    }
}

/// Waits until the server has a final verdict for every uploaded file, then fills in the
/// job figures and the per-file outcome.
async fn wait_for_verification(
    base: &str,
    ids: &HashMap<String, String>,
    timeout: Duration,
    cancel: &CancellationToken,
    report: &mut DemoReport,
) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + timeout;
    let mut server = Report::default();
    loop {
        match fetch_report(&http, base, cancel).await {
            Ok(fresh) => server = fresh,
            Err(error) => warn!(%error, "cannot read the server's report"),
        }
        let states: HashMap<&str, UploadState> = server
            .uploads
            .iter()
            .map(|upload| (upload.id.as_str(), upload.state))
            .collect();
        let all_final = ids.values().all(|id| {
            states
                .get(id.as_str())
                .is_some_and(|state| state.is_final())
        });
        if all_final || Instant::now() >= deadline || cancel.is_cancelled() {
            break;
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(300)) => {}
        }
    }

    report.attempts = server.attempts;
    report.retries = server.retries;
    let by_id: HashMap<&str, _> = server
        .uploads
        .iter()
        .map(|upload| (upload.id.as_str(), upload))
        .collect();
    let mut names: Vec<(&String, &String)> = ids.iter().collect();
    names.sort();
    for (name, id) in names {
        let status = by_id.get(id.as_str());
        let reason = status.and_then(|status| status.reason.clone());
        match status.map(|status| status.state) {
            Some(UploadState::Verified) => report.verified += 1,
            Some(UploadState::Dead) => {
                report.dead += 1;
                let reason = reason.unwrap_or_default();
                report
                    .problems
                    .push((name.clone(), format!("dead letter: {reason}")));
            }
            Some(UploadState::Mismatch) => {
                report.mismatches += 1;
                let reason = reason.unwrap_or_default();
                report.problems.push((name.clone(), reason));
            }
            _ => {
                report.pending += 1;
                report.problems.push((
                    name.clone(),
                    "verification did not finish in time".to_owned(),
                ));
            }
        }
    }
}

/// `GET /report` through the proxy, retried on a short backoff.
async fn fetch_report(
    http: &reqwest::Client,
    base: &str,
    cancel: &CancellationToken,
) -> Result<Report, String> {
    let policy = Backoff::exponential(Duration::from_millis(100))
        .max_delay(Duration::from_secs(2))
        .max_elapsed(Duration::from_secs(60));
    let url = format!("{base}/report");
    retry(&policy, || async {
        let response = http
            .get(&url)
            .send()
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("the server answered {}", response.status()));
        }
        let body = response.bytes().await.map_err(|error| error.to_string())?;
        serde_json::from_slice::<Report>(&body).map_err(|error| error.to_string())
    })
    .classify_with(|_: &String| ErrorClass::Transient)
    .cancel(cancel.clone())
    .await
    .map_err(|error| error.to_string())
}

/// Remembers upload URLs without their origin, so that a rerun, whose proxy listens on
/// another port, still finds its uploads.
#[derive(Debug, Clone)]
struct PathUrlStore {
    inner: FileUrlStore,
    /// `http://host:port` of this run's proxy.
    origin: String,
}

/// The same upload with `rebase` applied to each of its URLs.
fn rebase(upload: StoredUpload, rebase: impl Fn(&str) -> String) -> StoredUpload {
    StoredUpload {
        url: upload.url.as_deref().map(&rebase),
        parts: upload.parts.iter().map(|part| rebase(part)).collect(),
    }
}

/// The path (and query) of an absolute URL; other text unchanged.
pub(crate) fn path_of(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|slash| rest[slash..].to_owned()))
        .unwrap_or_else(|| url.to_owned())
}

impl UrlStore for PathUrlStore {
    async fn get(&self, fingerprint: &str) -> std::io::Result<Option<StoredUpload>> {
        let stored = self.inner.get(fingerprint).await?;
        Ok(stored.map(|upload| {
            rebase(upload, |url| {
                if url.starts_with('/') {
                    format!("{}{url}", self.origin)
                } else {
                    url.to_owned()
                }
            })
        }))
    }

    async fn put(&self, fingerprint: &str, upload: StoredUpload) -> std::io::Result<()> {
        self.inner.put(fingerprint, rebase(upload, path_of)).await
    }

    async fn remove(&self, fingerprint: &str) -> std::io::Result<()> {
        self.inner.remove(fingerprint).await
    }
}

/// Files finished in earlier runs, by fingerprint, kept in a JSON file rewritten
/// atomically after each file.
struct Done {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, String>>,
}

impl Done {
    fn load(path: PathBuf) -> Result<Self, BoxError> {
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|error| format!("{} is damaged: {error}", path.display()))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(error.into()),
        };
        Ok(Self {
            path,
            entries: Mutex::new(entries),
        })
    }

    fn get(&self, fingerprint: &str) -> Option<String> {
        self.lock().get(fingerprint).cloned()
    }

    fn insert(&self, fingerprint: &str, id: &str) -> std::io::Result<()> {
        let mut entries = self.lock();
        entries.insert(fingerprint.to_owned(), id.to_owned());
        let json = serde_json::to_vec_pretty(&*entries).map_err(std::io::Error::other)?;
        let temporary = self.path.with_extension("tmp");
        std::fs::write(&temporary, json)?;
        std::fs::rename(&temporary, &self.path)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The progress bars: bytes acknowledged, files uploaded, files verified, and a status
/// line for the WebSocket. Hidden when stderr is not a terminal or bars are off.
#[derive(Clone)]
struct Bars {
    bytes: ProgressBar,
    files: ProgressBar,
    verified: ProgressBar,
    socket: ProgressBar,
    shown: Arc<AtomicBool>,
}

impl Bars {
    fn new(show: bool, files: u64, bytes: u64) -> Self {
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let multi = MultiProgress::with_draw_target(target);
        let style = |template: &str| {
            ProgressStyle::with_template(template)
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ")
        };
        let bar =
            |len: u64, template: &str| multi.add(ProgressBar::new(len).with_style(style(template)));
        Self {
            bytes: bar(
                bytes,
                "upload   [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}",
            ),
            files: bar(files, "files    [{bar:40}] {pos}/{len}"),
            verified: bar(files, "verified [{bar:40}] {pos}/{len} (verified or dead)"),
            socket: multi.add(ProgressBar::new_spinner().with_style(style("{spinner} {msg}"))),
            shown: Arc::new(AtomicBool::new(show)),
        }
    }

    fn bytes(&self, delta: u64) {
        self.bytes.inc(delta);
    }

    fn file_done(&self) {
        self.files.inc(1);
    }

    fn uploads_done(&self) {
        self.bytes.finish();
        self.files.finish();
    }

    fn verified(&self, count: u64) {
        self.verified
            .set_position(count.min(self.verified.length().unwrap_or(count)));
    }

    fn socket(&self, text: String) {
        if self.shown.load(Ordering::Relaxed) {
            self.socket.set_message(text);
            self.socket.tick();
        }
    }

    fn finish(&self) {
        self.verified.finish();
        self.socket.finish_and_clear();
    }
}
