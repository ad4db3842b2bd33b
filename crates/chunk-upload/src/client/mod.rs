//! The tus 1.0 client: resumable, streaming, bounded in memory.
//!
//! An [`Uploader`] sends a file or any [`AsyncRead`] to a tus server. It reads the
//! server's capabilities with OPTIONS, creates the upload (or finds it again through its
//! [`UrlStore`], keyed by a fingerprint of the file, so that a rerun continues where the
//! last run stopped), then sends PATCH requests of at most
//! [`ClientConfig::chunk_size`] bytes, one at a time.
//!
//! When anything fails (a network error, a 5xx, a timeout, a response without
//! `Upload-Offset`) it waits according to its [`Backoff`] policy, asks the server for the
//! stored offset with HEAD, and resumes from there. It never starts over after a 5xx or a
//! network error; only a 404 or 410 can make it start again, and only when
//! [`ClientConfig::restart_if_gone`] allows it.
//!
//! Memory: a file is streamed from disk for each request, so memory does not depend on
//! the chunk size; a reader's current chunk is held in memory (the server may need any
//! part of it again), so memory is bounded by the chunk size.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use steadfast_chunk_upload::client::{FileUrlStore, Uploader};
//!
//! let uploader = Uploader::builder("http://127.0.0.1:8080/files")
//!     .url_store(FileUrlStore::new("uploads.json"))
//!     .build()?;
//! let upload = uploader.upload_file("video.mp4");
//! let mut progress = upload.progress();
//! tokio::spawn(async move {
//!     while progress.changed().await.is_ok() {
//!         let p = *progress.borrow();
//!         tracing::info!(acked = p.acked, sent = p.sent, "progress");
//!     }
//! });
//! let done = upload.run().await?;
//! println!("stored at {}", done.url);
//! # Ok(())
//! # }
//! ```

mod error;
mod url_store;

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, Response, Url};
use steadfast_backoff::{Backoff, Classify as _, ErrorClass, Schedule};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncSeekExt as _};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, trace, warn};

pub use self::error::UploadError;
pub use self::url_store::{FileUrlStore, MemoryUrlStore, StoredUpload, UrlStore};
use crate::protocol::{
    self, Checksum, ChecksumAlgorithm, Concat, Metadata, OFFSET_OCTET_STREAM, TUS_VERSION,
    extension, header,
};

/// Plain settings of an [`Uploader`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClientConfig {
    /// Most bytes sent in one PATCH. Default 8 MiB. A reader source holds one chunk in
    /// memory.
    pub chunk_size: u64,
    /// Limit on one request, from sending to the end of the answer. Default 60 s.
    pub request_timeout: Option<Duration>,
    /// Preferred checksum algorithm, used when the server advertises it (otherwise any
    /// algorithm the server and this crate share). `None` sends no checksums.
    /// Default sha256.
    pub checksum: Option<ChecksumAlgorithm>,
    /// How often one chunk may be rejected for its checksum (460) before the upload
    /// fails. Default 3.
    pub max_checksum_attempts: u32,
    /// Number of partial uploads sent side by side when the server offers
    /// concatenation and the source is a file. Default 1 (sequential).
    pub parallel_parts: u32,
    /// Start again from byte 0 when the server says the upload is gone (404/410).
    /// Default false: the upload fails with [`UploadError::Gone`].
    pub restart_if_gone: bool,
    /// Failed requests in a row without progress after which a warning is raised
    /// (a buffering proxy in the path shows up this way). Default 2.
    pub zero_progress_warning: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            chunk_size: 8 << 20,
            request_timeout: Some(Duration::from_secs(60)),
            checksum: Some(ChecksumAlgorithm::Sha256),
            max_checksum_attempts: 3,
            parallel_parts: 1,
            restart_if_gone: false,
            zero_progress_warning: 2,
        }
    }
}

/// A configuration the uploader refuses to run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The endpoint is not an absolute http(s) URL.
    #[error("endpoint {0:?} is not an absolute http or https URL")]
    Endpoint(String),
    /// `chunk_size` is zero.
    #[error("chunk_size must be at least 1 byte")]
    ChunkSize,
    /// `parallel_parts` is zero or above 64.
    #[error("parallel_parts must be between 1 and 64")]
    ParallelParts,
    /// The backoff policy is invalid.
    #[error("the backoff policy is invalid")]
    Backoff(#[source] steadfast_backoff::BuildError),
    /// The HTTP client could not be built.
    #[error("the HTTP client could not be built")]
    Http(#[source] reqwest::Error),
}

/// How far an upload has come. Published through [`Upload::progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// Bytes the server has confirmed as stored. Never decreases (after a restart from
    /// zero it holds its value until the new upload passes it).
    pub acked: u64,
    /// Bytes put on the wire so far, re-sent bytes included.
    pub sent: u64,
    /// Total length, once known.
    pub total: Option<u64>,
    /// Failed requests in a row that moved the offset by nothing.
    pub zero_progress_retries: u32,
    /// Set once `zero_progress_retries` reached [`ClientConfig::zero_progress_warning`].
    pub warning: Option<Warning>,
}

/// Something the user should know although the upload goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Warning {
    /// Several requests in a row failed without the server storing a byte of them:
    /// typically a proxy that buffers whole request bodies.
    NoProgress {
        /// How many requests in a row.
        retries: u32,
    },
}

/// A finished upload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Uploaded {
    /// URL of the upload on the server.
    pub url: String,
    /// Its length.
    pub length: u64,
}

/// What the server said on OPTIONS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// Advertised extensions.
    pub extensions: Vec<String>,
    /// Advertised checksum algorithms this crate implements.
    pub checksums: Vec<ChecksumAlgorithm>,
    /// `Tus-Max-Size`, if sent.
    pub max_size: Option<u64>,
}

impl Capabilities {
    /// Whether `name` is advertised.
    pub fn supports(&self, name: &str) -> bool {
        self.extensions.iter().any(|e| e == name)
    }
}

/// Builds an [`Uploader`].
#[derive(Debug)]
pub struct UploaderBuilder<U = MemoryUrlStore> {
    endpoint: String,
    config: ClientConfig,
    backoff: Backoff,
    http: Option<reqwest::Client>,
    headers: HeaderMap,
    url_store: U,
}

impl<U: UrlStore> UploaderBuilder<U> {
    /// Replaces the plain settings.
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the retry policy. Default: exponential from 200 ms to 30 s, full jitter,
    /// 10 attempts without progress. Its attempt limit counts failures since the last
    /// progress, so a long upload survives any number of spread-out failures.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Uses this reqwest client (for TLS settings, proxies, pools).
    pub fn with_http_client(mut self, client: reqwest::Client) -> Self {
        self.http = Some(client);
        self
    }

    /// Adds a header to every request (authorisation, for example).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Replaces where upload URLs are remembered (default: memory).
    pub fn url_store<V: UrlStore>(self, url_store: V) -> UploaderBuilder<V> {
        UploaderBuilder {
            endpoint: self.endpoint,
            config: self.config,
            backoff: self.backoff,
            http: self.http,
            headers: self.headers,
            url_store,
        }
    }

    /// Checks the settings and builds the uploader.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming the invalid setting.
    pub fn build(self) -> Result<Uploader<U>, BuildError> {
        let endpoint = Url::parse(&self.endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| BuildError::Endpoint(self.endpoint.clone()))?;
        if self.config.chunk_size == 0 {
            return Err(BuildError::ChunkSize);
        }
        if !(1..=64).contains(&self.config.parallel_parts) {
            return Err(BuildError::ParallelParts);
        }
        self.backoff.validate().map_err(BuildError::Backoff)?;
        let http = match self.http {
            Some(http) => http,
            None => reqwest::Client::builder()
                .build()
                .map_err(BuildError::Http)?,
        };
        Ok(Uploader {
            inner: Arc::new(Shared {
                endpoint,
                config: self.config,
                backoff: self.backoff,
                http,
                headers: self.headers,
                url_store: self.url_store,
            }),
        })
    }
}

/// Sends files and streams to one tus endpoint. Cheap to clone.
pub struct Uploader<U = MemoryUrlStore> {
    inner: Arc<Shared<U>>,
}

impl<U> Clone for Uploader<U> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<U> fmt::Debug for Uploader<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploader")
            .field("endpoint", &self.inner.endpoint.as_str())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct Shared<U> {
    endpoint: Url,
    config: ClientConfig,
    backoff: Backoff,
    http: reqwest::Client,
    headers: HeaderMap,
    url_store: U,
}

impl Uploader<MemoryUrlStore> {
    /// Starts building an uploader for the creation endpoint `endpoint`
    /// (for example `http://host/files`).
    pub fn builder(endpoint: impl Into<String>) -> UploaderBuilder<MemoryUrlStore> {
        UploaderBuilder {
            endpoint: endpoint.into(),
            config: ClientConfig::default(),
            backoff: Backoff::exponential(Duration::from_millis(200))
                .max_delay(Duration::from_secs(30))
                .max_attempts(10),
            http: None,
            headers: HeaderMap::new(),
            url_store: MemoryUrlStore::default(),
        }
    }
}

impl<U: UrlStore> Uploader<U> {
    /// Prepares the upload of the file at `path`. Its fingerprint (path, size and
    /// modification time) keys the URL store, so running the same upload again resumes.
    pub fn upload_file(&self, path: impl Into<PathBuf>) -> Upload<U> {
        self.prepare(SourceSpec::File(path.into()))
    }

    /// Prepares the upload of a stream. With `length` unknown the upload is created with
    /// a deferred length, declared when the stream ends. Give it a
    /// [`fingerprint`](Upload::fingerprint) to make it resumable across runs.
    pub fn upload_reader(
        &self,
        reader: impl AsyncRead + Send + Unpin + 'static,
        length: Option<u64>,
    ) -> Upload<U> {
        self.prepare(SourceSpec::Reader(Box::new(reader), length))
    }

    fn prepare(&self, source: SourceSpec) -> Upload<U> {
        let (progress, _) = watch::channel(Progress::default());
        Upload {
            shared: self.inner.clone(),
            source,
            metadata: Metadata::new(),
            fingerprint: None,
            cancel: CancellationToken::new(),
            progress: Arc::new(progress),
        }
    }

    /// Asks the server what it supports (OPTIONS).
    ///
    /// # Errors
    ///
    /// [`UploadError::Transport`] or [`UploadError::Status`] when the server cannot be
    /// asked.
    pub async fn capabilities(&self) -> Result<Capabilities, UploadError> {
        let response = self
            .inner
            .send(
                Method::OPTIONS,
                self.inner.endpoint.clone(),
                "OPTIONS",
                HeaderMap::new(),
                None,
            )
            .await?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(status_error("OPTIONS", response).await);
        }
        let headers = response.headers();
        let list = |name: &str| -> Vec<String> {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| protocol::parse_list(v).map(str::to_owned).collect())
                .unwrap_or_default()
        };
        let checksums = list(header::TUS_CHECKSUM_ALGORITHM)
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        let max_size = headers
            .get(header::TUS_MAX_SIZE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| protocol::parse_max_size(v).ok());
        Ok(Capabilities {
            extensions: list(header::TUS_EXTENSION),
            checksums,
            max_size,
        })
    }
}

enum SourceSpec {
    File(PathBuf),
    Reader(Box<dyn AsyncRead + Send + Unpin>, Option<u64>),
}

/// One upload, ready to [`run`](Upload::run).
pub struct Upload<U = MemoryUrlStore> {
    shared: Arc<Shared<U>>,
    source: SourceSpec,
    metadata: Metadata,
    fingerprint: Option<String>,
    cancel: CancellationToken,
    progress: Arc<watch::Sender<Progress>>,
}

impl<U> fmt::Debug for Upload<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl<U: UrlStore> Upload<U> {
    /// Metadata sent on creation (`Upload-Metadata`).
    pub fn metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Key for the URL store; replaces the automatic fingerprint of a file.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Self {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Stops the upload when `token` is cancelled. The URL stays in the store, so a later
    /// run resumes.
    pub fn cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// A receiver of [`Progress`] updates.
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Sends the whole source and returns where it is stored.
    ///
    /// # Errors
    ///
    /// Any [`UploadError`]: permanent server refusals, exhausted retries, source errors,
    /// [`UploadError::Cancelled`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future or cancelling the token stops after at most the request in
    /// flight; the server keeps what it stored, and the URL store keeps the URL.
    pub async fn run(self) -> Result<Uploaded, UploadError> {
        let cancel = self.cancel.clone();
        tokio::select! {
            biased;
            () = cancel.cancelled() => Err(UploadError::Cancelled),
            result = self.run_inner() => result,
        }
    }

    async fn run_inner(self) -> Result<Uploaded, UploadError> {
        let shared = self.shared.clone();
        let caps = shared
            .with_retries("OPTIONS", || async {
                match (Uploader {
                    inner: shared.clone(),
                })
                .capabilities()
                .await
                {
                    Err(UploadError::Status { status, .. }) if status < 500 => {
                        Ok(Capabilities::default())
                    }
                    other => other,
                }
            })
            .await?;
        let checksum = choose_checksum(shared.config.checksum, &caps);

        let (mut source, fingerprint) = match self.source {
            SourceSpec::File(path) => {
                let file = FileSource::open(path).await?;
                let fingerprint = self
                    .fingerprint
                    .clone()
                    .unwrap_or_else(|| file.fingerprint(&shared.endpoint));
                (Source::File(file), Some(fingerprint))
            }
            SourceSpec::Reader(reader, length) => (
                Source::Reader(ReaderSource::new(reader, length)),
                self.fingerprint.clone(),
            ),
        };
        let length = source.length();
        if let (Some(length), Some(max)) = (length, caps.max_size) {
            if length > max {
                return Err(UploadError::TooLarge { length, max });
            }
        }
        self.progress.send_modify(|p| p.total = length);

        let ctx = Ctx {
            shared: shared.clone(),
            progress: self.progress.clone(),
            checksum,
            fingerprint: fingerprint.clone(),
        };
        let parallel = shared.config.parallel_parts > 1
            && caps.supports(extension::CONCATENATION)
            && length.is_some_and(|l| l >= u64::from(shared.config.parallel_parts));
        // Not yet: parallel parts for reader sources; each part would need its own buffer.
        let url = match &source {
            Source::File(file) if parallel => ctx.parallel(file, &self.metadata).await?,
            _ => ctx.sequential(&mut source, &self.metadata).await?,
        };

        if let Some(fingerprint) = &fingerprint {
            shared
                .url_store
                .remove(fingerprint)
                .await
                .map_err(UploadError::UrlStore)?;
        }
        let length = source.length().unwrap_or_default();
        self.progress.send_modify(|p| {
            p.acked = p.acked.max(length);
            p.total = Some(length);
        });
        debug!(%url, length, "upload finished");
        Ok(Uploaded { url, length })
    }
}

fn choose_checksum(
    preferred: Option<ChecksumAlgorithm>,
    caps: &Capabilities,
) -> Option<ChecksumAlgorithm> {
    let preferred = preferred?;
    if !caps.supports(extension::CHECKSUM) {
        return None;
    }
    if caps.checksums.contains(&preferred) {
        return Some(preferred);
    }
    ChecksumAlgorithm::ALL
        .into_iter()
        .find(|a| caps.checksums.contains(a))
}

impl<U: UrlStore> Shared<U> {
    async fn send(
        &self,
        method: Method,
        url: Url,
        request: &'static str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<Response, UploadError> {
        let mut builder = self
            .http
            .request(method, url)
            .headers(self.headers.clone())
            .headers(headers);
        if request != "OPTIONS" {
            builder = builder.header(header::TUS_RESUMABLE, TUS_VERSION);
        }
        if let Some(timeout) = self.config.request_timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(body) = body {
            builder = builder.body(body);
        }
        builder
            .send()
            .await
            .map_err(|source| UploadError::Transport { request, source })
    }

    /// Runs `op` until it succeeds, fails permanently, or the policy gives up.
    async fn with_retries<T, F, Fut>(&self, what: &'static str, op: F) -> Result<T, UploadError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, UploadError>>,
    {
        self.retry_unless(what, |_| false, op).await
    }

    /// As [`Shared::with_retries`], but errors for which `fatal` holds end it at once.
    async fn retry_unless<T, F, Fut>(
        &self,
        what: &'static str,
        fatal: impl Fn(&UploadError) -> bool,
        mut op: F,
    ) -> Result<T, UploadError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, UploadError>>,
    {
        let mut schedule = self.backoff.schedule();
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match op().await {
                Ok(value) => return Ok(value),
                Err(error) if fatal(&error) => return Err(error),
                Err(error) => {
                    let Some(delay) = next_delay(&mut schedule, &error) else {
                        return Err(give_up(attempts, error));
                    };
                    debug!(request = what, %error, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The wait before the next attempt, or `None` to give up.
fn next_delay(schedule: &mut Schedule, error: &UploadError) -> Option<Duration> {
    match error.classify() {
        ErrorClass::Permanent => None,
        ErrorClass::RetryAfter(hint) => schedule.next().map(|d| d.max(hint)),
        _ => schedule.next(),
    }
}

fn give_up(attempts: u32, error: UploadError) -> UploadError {
    if error.classify() == ErrorClass::Permanent {
        error
    } else {
        UploadError::RetriesExhausted {
            attempts,
            last: Box::new(error),
        }
    }
}

async fn status_error(request: &'static str, response: Response) -> UploadError {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| steadfast_backoff::retry_after::parse_now(v).ok());
    let mut message = response.text().await.unwrap_or_default();
    message.truncate(200);
    UploadError::Status {
        request,
        status,
        message,
        retry_after,
    }
}

fn offset_header(request: &'static str, headers: &HeaderMap) -> Result<u64, UploadError> {
    let value = headers
        .get(header::UPLOAD_OFFSET)
        .ok_or(UploadError::MissingHeader {
            request,
            header: "Upload-Offset",
        })?;
    let text = value.to_str().map_err(|_| UploadError::InvalidHeader {
        request,
        source: protocol::HeaderError::NotAscii {
            header: header::UPLOAD_OFFSET,
        },
    })?;
    protocol::parse_offset(text).map_err(|source| UploadError::InvalidHeader { request, source })
}

/// State shared by the parts of one upload.
struct Ctx<U> {
    shared: Arc<Shared<U>>,
    progress: Arc<watch::Sender<Progress>>,
    checksum: Option<ChecksumAlgorithm>,
    fingerprint: Option<String>,
}

/// Where one tus upload (the whole source, or one part) stands.
struct Transfer {
    url: Url,
    /// First source byte of this upload.
    base: u64,
    /// Bytes in this upload, once known.
    length: Option<u64>,
    /// Bytes the server confirmed.
    offset: u64,
    /// Shared counter of confirmed bytes across parts.
    acked: Arc<AtomicU64>,
    /// Whether this is one partial upload of a parallel transfer.
    partial: bool,
}

enum Outcome {
    Advanced(u64),
    Failed(UploadError),
}

impl<U: UrlStore> Ctx<U> {
    // Not yet: creation-with-upload (sending the first chunk in the POST), which would
    // save one round trip per upload.
    async fn create(
        &self,
        length: Option<u64>,
        metadata: &Metadata,
        concat: Option<&Concat>,
    ) -> Result<Url, UploadError> {
        let mut headers = HeaderMap::new();
        match length {
            Some(length) => headers.insert(header::UPLOAD_LENGTH, length.into()),
            None => headers.insert(header::UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
        };
        if !metadata.is_empty() {
            if let Ok(value) = HeaderValue::from_str(&metadata.to_string()) {
                headers.insert(header::UPLOAD_METADATA, value);
            }
        }
        if let Some(concat) = concat {
            if let Ok(value) = HeaderValue::from_str(&concat.to_string()) {
                headers.insert(header::UPLOAD_CONCAT, value);
            }
        }

        // A 201 without Location cannot be resumed, and repeating the POST would create
        // another upload: a missing header ends the creation at once.
        let fatal = |e: &UploadError| matches!(e, UploadError::MissingHeader { .. });
        let shared = &self.shared;
        shared
            .retry_unless("POST", fatal, || {
                let headers = headers.clone();
                async move {
                    let response = shared
                        .send(Method::POST, shared.endpoint.clone(), "POST", headers, None)
                        .await?;
                    if response.status().as_u16() != 201 {
                        return Err(status_error("POST", response).await);
                    }
                    let location = response
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                        .ok_or(UploadError::MissingHeader {
                            request: "POST",
                            header: "Location",
                        })?;
                    shared
                        .endpoint
                        .join(location)
                        .map_err(|_| UploadError::Status {
                            request: "POST",
                            status: 201,
                            message: "the Location header is not a URL".into(),
                            retry_after: None,
                        })
                }
            })
            .await
    }

    /// HEAD: the stored offset, `Err(Gone)` for 404/410.
    async fn head(&self, url: &Url) -> Result<(u64, Option<u64>), UploadError> {
        let response = self
            .shared
            .send(Method::HEAD, url.clone(), "HEAD", HeaderMap::new(), None)
            .await?;
        let status = response.status().as_u16();
        match status {
            200 | 204 => {
                let offset = offset_header("HEAD", response.headers())?;
                let length = response
                    .headers()
                    .get(header::UPLOAD_LENGTH)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| protocol::parse_length(v).ok());
                Ok((offset, length))
            }
            404 | 410 => Err(UploadError::Gone {
                url: url.to_string(),
                status,
            }),
            _ => Err(status_error("HEAD", response).await),
        }
    }

    async fn sequential(
        &self,
        source: &mut Source,
        metadata: &Metadata,
    ) -> Result<String, UploadError> {
        let length = source.length();
        let acked = Arc::new(AtomicU64::new(0));

        // A remembered URL resumes a previous run.
        let stored = match &self.fingerprint {
            Some(fp) => self
                .shared
                .url_store
                .get(fp)
                .await
                .map_err(UploadError::UrlStore)?,
            None => None,
        };
        let resumed = match stored.and_then(|s| s.url).and_then(|u| Url::parse(&u).ok()) {
            Some(url) => match self.shared.with_retries("HEAD", || self.head(&url)).await {
                Ok((offset, server_length))
                    if server_length == length || server_length.is_none() =>
                {
                    debug!(%url, offset, "resuming a previous run");
                    Some((url, offset))
                }
                Ok(_) | Err(UploadError::Gone { .. }) => None,
                Err(other) => return Err(other),
            },
            None => None,
        };
        let (url, offset) = match resumed {
            Some(found) => found,
            None => (self.create_and_remember(length, metadata, None).await?, 0),
        };
        acked.store(offset, Ordering::Relaxed);
        self.publish(&acked);

        let mut transfer = Transfer {
            url,
            base: 0,
            length,
            offset,
            acked,
            partial: false,
        };
        if length == Some(0) {
            return Ok(transfer.url.to_string());
        }
        self.drive(&mut transfer, source, metadata).await?;
        Ok(transfer.url.to_string())
    }

    async fn create_and_remember(
        &self,
        length: Option<u64>,
        metadata: &Metadata,
        concat: Option<&Concat>,
    ) -> Result<Url, UploadError> {
        let url = self.create(length, metadata, concat).await?;
        if let (Some(fp), None) = (&self.fingerprint, concat) {
            let entry = StoredUpload {
                url: Some(url.to_string()),
                parts: Vec::new(),
            };
            self.shared
                .url_store
                .put(fp, entry)
                .await
                .map_err(UploadError::UrlStore)?;
        }
        Ok(url)
    }

    fn publish(&self, acked: &AtomicU64) {
        let value = acked.load(Ordering::Relaxed);
        self.progress.send_if_modified(|p| {
            if value > p.acked {
                p.acked = value;
                true
            } else {
                false
            }
        });
    }

    fn add_acked(&self, transfer: &mut Transfer, new_offset: u64) {
        let gained = new_offset.saturating_sub(transfer.offset);
        transfer.offset = new_offset;
        transfer.acked.fetch_add(gained, Ordering::Relaxed);
        self.publish(&transfer.acked);
    }

    /// Sends PATCHes until the transfer is complete, recovering from failures.
    async fn drive(
        &self,
        transfer: &mut Transfer,
        source: &mut Source,
        metadata: &Metadata,
    ) -> Result<(), UploadError> {
        let config = &self.shared.config;
        let mut schedule = self.shared.backoff.schedule();
        let mut failures = 0u32;
        let mut zero_progress = 0u32;
        let mut checksum_failures = (u64::MAX, 0u32);

        loop {
            if transfer.length.is_none() {
                // A deferred length becomes known once the server accepted it.
                transfer.length = source.length().map(|l| l.saturating_sub(transfer.base));
            }
            if transfer.length.is_some_and(|l| transfer.offset >= l) {
                return Ok(());
            }
            let before = transfer.offset;
            let error = match self.patch(transfer, source).await {
                Ok(Outcome::Advanced(offset)) => {
                    self.add_acked(transfer, offset);
                    schedule = self.shared.backoff.schedule();
                    failures = 0;
                    zero_progress = 0;
                    self.progress.send_modify(|p| p.zero_progress_retries = 0);
                    continue;
                }
                Ok(Outcome::Failed(error)) | Err(error) => error,
            };
            failures += 1;

            match &error {
                UploadError::Status { status: 460, .. } => {
                    if checksum_failures.0 == before {
                        checksum_failures.1 += 1;
                    } else {
                        checksum_failures = (before, 1);
                    }
                    if checksum_failures.1 >= config.max_checksum_attempts {
                        return Err(UploadError::Checksum {
                            offset: before,
                            attempts: checksum_failures.1,
                        });
                    }
                    warn!(
                        offset = before,
                        "checksum rejected; sending the chunk again"
                    );
                    continue;
                }
                UploadError::Gone { .. } => {
                    self.restart(transfer, source, metadata, error).await?;
                    continue;
                }
                _ => {}
            }
            let Some(delay) = next_delay(&mut schedule, &error) else {
                return Err(give_up(failures, error));
            };
            debug!(%error, ?delay, offset = before, "request failed; will ask the server for its offset");
            tokio::time::sleep(delay).await;

            // Ask the server where it stands, retrying the HEAD itself.
            let (offset, _) = loop {
                match self.head(&transfer.url).await {
                    Ok(found) => break found,
                    Err(gone @ UploadError::Gone { .. }) => {
                        self.restart(transfer, source, metadata, gone).await?;
                        break (transfer.offset, None);
                    }
                    Err(error) => {
                        failures += 1;
                        let Some(delay) = next_delay(&mut schedule, &error) else {
                            return Err(give_up(failures, error));
                        };
                        debug!(%error, ?delay, "HEAD failed");
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            if offset < transfer.offset {
                warn!(
                    reported = offset,
                    acked = transfer.offset,
                    "the server reports fewer bytes than it acknowledged"
                );
                transfer.offset = offset;
            } else {
                self.add_acked(transfer, offset);
            }
            if transfer.offset <= before {
                zero_progress += 1;
                let warn_now = zero_progress >= config.zero_progress_warning;
                if warn_now {
                    warn!(
                        retries = zero_progress,
                        "requests keep failing without progress; is a proxy buffering request bodies?"
                    );
                }
                self.progress.send_modify(|p| {
                    p.zero_progress_retries = zero_progress;
                    if warn_now {
                        p.warning = Some(Warning::NoProgress {
                            retries: zero_progress,
                        });
                    }
                });
            } else {
                zero_progress = 0;
            }
        }
    }

    async fn restart(
        &self,
        transfer: &mut Transfer,
        source: &mut Source,
        metadata: &Metadata,
        error: UploadError,
    ) -> Result<(), UploadError> {
        // Not yet: restarting one lost part of a parallel upload; the whole upload fails.
        if !self.shared.config.restart_if_gone || transfer.partial {
            return Err(error);
        }
        source.rewind_check(0)?;
        warn!(url = %transfer.url, "the upload is gone; starting again from byte 0");
        transfer.url = self
            .create_and_remember(transfer.length, metadata, None)
            .await?;
        transfer.offset = 0;
        Ok(())
    }

    /// One PATCH from `transfer.offset`.
    async fn patch(
        &self,
        transfer: &Transfer,
        source: &mut Source,
    ) -> Result<Outcome, UploadError> {
        let chunk = source
            .chunk(
                transfer.base + transfer.offset,
                self.shared.config.chunk_size,
                transfer
                    .base
                    .saturating_add(transfer.length.unwrap_or(u64::MAX)),
            )
            .await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static(OFFSET_OCTET_STREAM),
        );
        headers.insert(header::UPLOAD_OFFSET, transfer.offset.into());
        headers.insert(reqwest::header::CONTENT_LENGTH, chunk.len.into());
        let declares_length = transfer.length.is_none() && chunk.last;
        if declares_length {
            headers.insert(header::UPLOAD_LENGTH, (transfer.offset + chunk.len).into());
        }
        if let Some(algorithm) = self.checksum {
            let digest = Source::digest(source.file(), &chunk, algorithm).await?;
            if let Ok(value) = HeaderValue::from_str(&digest.to_string()) {
                headers.insert(header::UPLOAD_CHECKSUM, value);
            }
        }
        trace!(offset = transfer.offset, len = chunk.len, "PATCH");

        let body = Source::body(source.file(), &chunk, self.progress.clone()).await?;
        let response = match self
            .shared
            .send(
                Method::PATCH,
                transfer.url.clone(),
                "PATCH",
                headers,
                Some(body),
            )
            .await
        {
            Ok(response) => response,
            Err(error) => return Ok(Outcome::Failed(error)),
        };
        let status = response.status().as_u16();
        match status {
            200 | 204 => {
                let offset = match offset_header("PATCH", response.headers()) {
                    Ok(offset) => offset,
                    Err(error) => return Ok(Outcome::Failed(error)),
                };
                let high = transfer.offset + chunk.len;
                if offset < transfer.offset || offset > high {
                    return Ok(Outcome::Failed(UploadError::OffsetOutOfRange {
                        reported: offset,
                        low: transfer.offset,
                        high,
                    }));
                }
                if declares_length {
                    source.set_length(transfer.base + high);
                }
                Ok(Outcome::Advanced(offset))
            }
            404 | 410 => Ok(Outcome::Failed(UploadError::Gone {
                url: transfer.url.to_string(),
                status,
            })),
            _ => Ok(Outcome::Failed(status_error("PATCH", response).await)),
        }
    }

    async fn parallel(
        &self,
        file: &FileSource,
        metadata: &Metadata,
    ) -> Result<String, UploadError> {
        let length = file.length;
        let parts = u64::from(self.shared.config.parallel_parts);
        let size = length.div_ceil(parts);
        let ranges: Vec<(u64, u64)> = (0..parts)
            .map(|i| (i * size, ((i + 1) * size).min(length)))
            .filter(|(a, b)| b > a)
            .collect();

        // Reuse the parts of a previous run when they still exist.
        let stored = match &self.fingerprint {
            Some(fp) => self
                .shared
                .url_store
                .get(fp)
                .await
                .map_err(UploadError::UrlStore)?,
            None => None,
        };
        let mut urls: Vec<Url> = stored
            .map(|s| s.parts.iter().filter_map(|u| Url::parse(u).ok()).collect())
            .unwrap_or_default();
        let mut offsets = vec![0u64; ranges.len()];
        let mut reusable = urls.len() == ranges.len();
        if reusable {
            for (index, url) in urls.iter().enumerate() {
                match self.shared.with_retries("HEAD", || self.head(url)).await {
                    Ok((offset, Some(len))) if len == ranges[index].1 - ranges[index].0 => {
                        offsets[index] = offset
                    }
                    Ok(_) | Err(UploadError::Gone { .. }) => reusable = false,
                    Err(other) => return Err(other),
                }
            }
        }
        if !reusable {
            urls.clear();
            offsets.iter_mut().for_each(|o| *o = 0);
            for (start, end) in &ranges {
                urls.push(
                    self.create(Some(end - start), &Metadata::new(), Some(&Concat::Partial))
                        .await?,
                );
            }
            if let Some(fp) = &self.fingerprint {
                let entry = StoredUpload {
                    url: None,
                    parts: urls.iter().map(Url::to_string).collect(),
                };
                self.shared
                    .url_store
                    .put(fp, entry)
                    .await
                    .map_err(UploadError::UrlStore)?;
            }
        }

        let acked = Arc::new(AtomicU64::new(offsets.iter().sum()));
        self.publish(&acked);
        let tasks = ranges
            .iter()
            .zip(&urls)
            .zip(&offsets)
            .map(|(((start, end), url), offset)| {
                let mut transfer = Transfer {
                    url: url.clone(),
                    base: *start,
                    length: Some(end - start),
                    offset: *offset,
                    acked: acked.clone(),
                    partial: true,
                };
                let mut source = Source::File(file.clone());
                async move { self.drive(&mut transfer, &mut source, metadata).await }
            });
        for result in futures_util::future::join_all(tasks).await {
            result?;
        }

        let concat = Concat::Final(urls.iter().map(Url::to_string).collect());
        let url = self.create(None, metadata, Some(&concat)).await?;
        Ok(url.to_string())
    }
}

/// One planned request body.
#[derive(Debug, Clone)]
struct Chunk {
    /// Absolute source offset.
    start: u64,
    len: u64,
    /// Whether the source ends with this chunk.
    last: bool,
    /// In-memory bytes, for reader sources.
    bytes: Option<Bytes>,
}

enum Source {
    File(FileSource),
    Reader(ReaderSource),
}

#[derive(Debug, Clone)]
struct FileSource {
    path: PathBuf,
    length: u64,
    modified: u128,
}

impl FileSource {
    async fn open(path: PathBuf) -> Result<Self, UploadError> {
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|source| UploadError::Source {
                op: "inspect",
                source,
            })?;
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(Self {
            path,
            length: meta.len(),
            modified,
        })
    }

    fn fingerprint(&self, endpoint: &Url) -> String {
        let path = std::fs::canonicalize(&self.path).unwrap_or_else(|_| self.path.clone());
        format!(
            "{endpoint} {} {} {}",
            path.display(),
            self.length,
            self.modified
        )
    }

    async fn reader_at(&self, start: u64) -> Result<tokio::fs::File, UploadError> {
        let mut file = tokio::fs::File::open(&self.path)
            .await
            .map_err(|source| UploadError::Source { op: "open", source })?;
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|source| UploadError::Source {
                op: "seek in",
                source,
            })?;
        Ok(file)
    }
}

struct ReaderSource {
    reader: Box<dyn AsyncRead + Send + Unpin>,
    length: Option<u64>,
    /// Bytes held, starting at `held_start`.
    held: Bytes,
    held_start: u64,
    eof: bool,
}

impl ReaderSource {
    fn new(reader: Box<dyn AsyncRead + Send + Unpin>, length: Option<u64>) -> Self {
        Self {
            reader,
            length,
            held: Bytes::new(),
            held_start: 0,
            eof: false,
        }
    }
}

const PIECE: usize = 256 << 10;

impl Source {
    fn length(&self) -> Option<u64> {
        match self {
            Self::File(file) => Some(file.length),
            Self::Reader(reader) => reader.length,
        }
    }

    fn file(&self) -> Option<FileSource> {
        match self {
            Self::File(file) => Some(file.clone()),
            Self::Reader(_) => None,
        }
    }

    fn set_length(&mut self, length: u64) {
        if let Self::Reader(reader) = self {
            reader.length = Some(length);
        }
    }

    fn rewind_check(&self, to: u64) -> Result<(), UploadError> {
        match self {
            Self::Reader(r) if to < r.held_start => Err(UploadError::SourceNotRewindable {
                needed: to,
                held: r.held_start,
            }),
            _ => Ok(()),
        }
    }

    /// Plans the request body starting at `start`, at most `max` bytes, not past `end`.
    async fn chunk(&mut self, start: u64, max: u64, end: u64) -> Result<Chunk, UploadError> {
        match self {
            Self::File(file) => {
                let end = end.min(file.length);
                let len = end.saturating_sub(start).min(max);
                Ok(Chunk {
                    start,
                    len,
                    last: start + len >= file.length,
                    bytes: None,
                })
            }
            Self::Reader(r) => {
                if start < r.held_start {
                    return Err(UploadError::SourceNotRewindable {
                        needed: start,
                        held: r.held_start,
                    });
                }
                let held_end = r.held_start + r.held.len() as u64;
                if start > held_end {
                    return Err(UploadError::OffsetOutOfRange {
                        reported: start,
                        low: r.held_start,
                        high: held_end,
                    });
                }
                if start == held_end && !r.eof {
                    let want = usize::try_from(max.min(end - start)).unwrap_or(usize::MAX);
                    let mut buf = BytesMut::with_capacity(want);
                    while buf.len() < want {
                        let mut limited = (&mut r.reader).take((want - buf.len()) as u64);
                        let read = limited
                            .read_buf(&mut buf)
                            .await
                            .map_err(|source| UploadError::Source { op: "read", source })?;
                        if read == 0 {
                            r.eof = true;
                            break;
                        }
                    }
                    // Probe for the end so the last chunk can declare a deferred length.
                    if !r.eof && r.length.is_none() {
                        let mut probe = [0u8; 1];
                        let read = r
                            .reader
                            .read(&mut probe)
                            .await
                            .map_err(|source| UploadError::Source { op: "read", source })?;
                        if read == 0 {
                            r.eof = true;
                        } else {
                            buf.extend_from_slice(&probe);
                        }
                    }
                    r.held = buf.freeze();
                    r.held_start = start;
                }
                let held_end = r.held_start + r.held.len() as u64;
                let from = usize::try_from(start - r.held_start).unwrap_or(usize::MAX);
                let len = (held_end - start).min(max);
                let to = from + usize::try_from(len).unwrap_or(usize::MAX);
                let bytes = r.held.slice(from..to);
                if let Some(expected) = r.length {
                    if r.eof && held_end < expected {
                        return Err(UploadError::SourceLength {
                            expected,
                            actual: held_end,
                        });
                    }
                }
                let last = r.eof && start + len == held_end;
                Ok(Chunk {
                    start,
                    len,
                    last,
                    bytes: Some(bytes),
                })
            }
        }
    }

    async fn digest(
        file: Option<FileSource>,
        chunk: &Chunk,
        algorithm: ChecksumAlgorithm,
    ) -> Result<Checksum, UploadError> {
        if let Some(bytes) = &chunk.bytes {
            return Ok(Checksum::compute(algorithm, bytes));
        }
        let Some(file) = file else {
            return Ok(Checksum::compute(algorithm, b""));
        };
        let mut reader = file.reader_at(chunk.start).await?.take(chunk.len);
        let mut hasher = algorithm.hasher();
        let mut buf = vec![0u8; PIECE];
        loop {
            let read = reader
                .read(&mut buf)
                .await
                .map_err(|source| UploadError::Source { op: "read", source })?;
            if read == 0 {
                break;
            }
            hasher.update(&buf[..read]);
        }
        Ok(Checksum {
            algorithm,
            digest: hasher.finish(),
        })
    }

    async fn body(
        file: Option<FileSource>,
        chunk: &Chunk,
        progress: Arc<watch::Sender<Progress>>,
    ) -> Result<reqwest::Body, UploadError> {
        let count = move |piece: &Result<Bytes, std::io::Error>| {
            if let Ok(piece) = piece {
                let len = piece.len() as u64;
                progress.send_modify(|p| p.sent = p.sent.saturating_add(len));
            }
        };
        let stream: Pin<
            Box<dyn futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send>,
        > = match &chunk.bytes {
            Some(bytes) => {
                let bytes = bytes.clone();
                let pieces = (0..bytes.len())
                    .step_by(PIECE)
                    .map(move |at| Ok(bytes.slice(at..(at + PIECE).min(bytes.len()))));
                Box::pin(futures_util::stream::iter(pieces.collect::<Vec<_>>()).inspect(count))
            }
            None => {
                let Some(file) = file else {
                    return Ok(reqwest::Body::from(Bytes::new()));
                };
                let reader = file.reader_at(chunk.start).await?.take(chunk.len);
                Box::pin(tokio_util::io::ReaderStream::with_capacity(reader, PIECE).inspect(count))
            }
        };
        Ok(reqwest::Body::wrap_stream(stream))
    }
}
