//! The tus 1.0 server, as an axum [`Router`](axum::Router) (and so a tower service).
//!
//! It implements the core protocol and the extensions creation, creation-with-upload,
//! creation-defer-length, termination, expiration, checksum (header and trailer forms;
//! sha1, sha256 and crc32) and concatenation, and advertises them on OPTIONS.
//!
//! What it guarantees, whatever the client sends:
//!
//! - The offset never goes down and always equals the bytes the [`Store`] holds. A PATCH
//!   that is cut off keeps what arrived, unless it carried a checksum, in which case the
//!   unverified bytes are discarded.
//! - One writer per upload. A second PATCH is refused with 423 while the first is
//!   receiving bytes, and takes over once the first has stalled for
//!   [`ServerConfig::takeover_after`]. A HEAD stops a running writer and reports the
//!   offset it committed.
//! - Size limits are applied while the body is read, not only from headers.
//! - Upload ids are server-generated 128-bit random values, validated before any store
//!   path is built; anything else in the URL is a 404.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadfast_chunk_upload::server::{ServerConfig, TusServer};
//! use steadfast_chunk_upload::store::FileStore;
//!
//! let dir = tempfile::tempdir()?;
//! let store = FileStore::open(dir.path()).await?;
//! let server = TusServer::builder(store)
//!     .config(ServerConfig { max_size: Some(1 << 30), ..ServerConfig::default() })
//!     .on_complete(|info| println!("upload {} finished", info.id))
//!     .build()?;
//!
//! let app: axum::Router = server.router();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let _ = (app, listener);
//! // axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

mod handlers;
mod locks;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::id::UploadId;
use crate::store::{Store, StoreError, UploadInfo};

/// Plain settings of a [`TusServer`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Path the router is mounted at; uploads live at `{base_path}/{id}`.
    /// Default `/files`. Must start with `/` and not end with one.
    pub base_path: String,
    /// Largest upload accepted, advertised as `Tus-Max-Size`. Default 100 GiB.
    pub max_size: Option<u64>,
    /// How long an unfinished upload lives after creation; `None` disables expiration.
    /// Default 24 hours.
    pub expiration: Option<Duration>,
    /// A PATCH that receives no byte for this long is ended, keeping what arrived.
    /// Default 30 s.
    pub idle_timeout: Duration,
    /// A writer that received nothing for this long may be taken over by a new PATCH.
    /// Default 2 s.
    pub takeover_after: Duration,
    /// How long a request waits for a running writer to stop. Default 5 s.
    pub lock_wait: Duration,
    /// Answer CORS preflights and expose tus headers to browsers. Default on.
    pub cors: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            base_path: "/files".to_owned(),
            max_size: Some(100 << 30),
            expiration: Some(Duration::from_secs(24 * 3600)),
            idle_timeout: Duration::from_secs(30),
            takeover_after: Duration::from_secs(2),
            lock_wait: Duration::from_secs(5),
            cors: true,
        }
    }
}

/// A configuration the server refuses to run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `base_path` must start with `/`, must not end with `/`, and must be plain ASCII.
    #[error(
        "base_path {0:?} must start with '/', not end with '/', and contain no '%', '?' or '#'"
    )]
    BasePath(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

/// Wall-clock source for expiration, injectable so tests can move time.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> SystemTime;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to; for tests of expiration.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<SystemTime>>,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: SystemTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// Moves the clock forward by `by` (saturating at the far future).
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
        *now = now.checked_add(by).unwrap_or(*now);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a request wants to do, as shown to the authorisation hook.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// `OPTIONS`: discover capabilities.
    Discover,
    /// `POST`: create an upload.
    Create,
    /// `HEAD`: read an upload's offset.
    Status(UploadId),
    /// `PATCH`: append bytes.
    Append(UploadId),
    /// `DELETE`: terminate an upload.
    Terminate(UploadId),
}

/// A refusal from the authorisation hook: sent to the client as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Status to answer with, typically 401 or 403.
    pub status: StatusCode,
    /// Explanation for the client.
    pub message: String,
}

impl Rejection {
    /// A refusal with `status` and `message`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// Boxed future returned by an authorisation hook.
pub type AuthFuture = Pin<Box<dyn Future<Output = Result<(), Rejection>> + Send>>;

type AuthHook = Arc<dyn Fn(&http::request::Parts, &Operation) -> AuthFuture + Send + Sync>;
type CompleteHook = Arc<dyn Fn(&UploadInfo) + Send + Sync>;

/// Builds a [`TusServer`].
pub struct TusServerBuilder<S> {
    store: S,
    config: ServerConfig,
    clock: Arc<dyn Clock>,
    on_complete: Option<CompleteHook>,
    authorize: Option<AuthHook>,
}

impl<S: Store> TusServerBuilder<S> {
    /// Replaces the plain settings (default: [`ServerConfig::default`]).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the clock used for expiration (default: [`SystemClock`]).
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Called exactly once per upload, right after its last byte is durable (for an
    /// empty upload: at creation; for a final concatenation: when it is assembled).
    /// This is where an application enqueues its processing job. Keep it quick; it runs
    /// on the request's task.
    pub fn on_complete(mut self, hook: impl Fn(&UploadInfo) + Send + Sync + 'static) -> Self {
        self.on_complete = Some(Arc::new(hook));
        self
    }

    /// Called before every request is served; a [`Rejection`] is sent to the client
    /// and nothing else happens.
    pub fn authorize(
        mut self,
        hook: impl Fn(&http::request::Parts, &Operation) -> AuthFuture + Send + Sync + 'static,
    ) -> Self {
        self.authorize = Some(Arc::new(hook));
        self
    }

    /// Checks the configuration and builds the server.
    ///
    /// # Errors
    ///
    /// [`BuildError`] naming the setting that is invalid.
    pub fn build(self) -> Result<TusServer<S>, BuildError> {
        let config = self.config;
        let base = &config.base_path;
        let base_ok = base.starts_with('/')
            && !base.ends_with('/')
            && base
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#'));
        if !base_ok {
            return Err(BuildError::BasePath(base.clone()));
        }
        for (name, value) in [
            ("idle_timeout", config.idle_timeout),
            ("takeover_after", config.takeover_after),
            ("lock_wait", config.lock_wait),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration(name));
            }
        }
        if config.expiration.is_some_and(|e| e.is_zero()) {
            return Err(BuildError::ZeroDuration("expiration"));
        }

        Ok(TusServer {
            inner: Arc::new(Inner {
                store: self.store,
                config,
                clock: self.clock,
                on_complete: self.on_complete,
                authorize: self.authorize,
                locks: Arc::default(),
            }),
        })
    }
}

impl<S> fmt::Debug for TusServerBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TusServerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A tus 1.0 server over a [`Store`]. Cheap to clone; clones share state.
pub struct TusServer<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for TusServer<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S> fmt::Debug for TusServer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TusServer")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner<S> {
    pub(crate) store: S,
    pub(crate) config: ServerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) on_complete: Option<CompleteHook>,
    pub(crate) authorize: Option<AuthHook>,
    pub(crate) locks: Arc<locks::Locks>,
}

impl<S: Store> TusServer<S> {
    /// Starts building a server over `store`.
    pub fn builder(store: S) -> TusServerBuilder<S> {
        TusServerBuilder {
            store,
            config: ServerConfig::default(),
            clock: Arc::new(SystemClock),
            on_complete: None,
            authorize: None,
        }
    }

    /// The store uploads are kept in.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The settings in force.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// An axum router serving `{base_path}` and `{base_path}/{id}`; merge it into an
    /// application or serve it as is.
    pub fn router(&self) -> axum::Router {
        handlers::router(self.inner.clone())
    }

    /// Removes every unfinished upload whose expiry time has passed, and returns how many
    /// were removed. Uploads with a running writer are left for the next sweep.
    ///
    /// # Errors
    ///
    /// The store's error when it cannot be listed; failures on single uploads are logged
    /// and skipped.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = self.inner.clock.now();
        let mut removed = 0;
        for id in self.inner.store.list().await? {
            let info = match self.inner.store.info(&id).await {
                Ok(info) => info,
                Err(StoreError::NotFound(_)) => continue,
                Err(error) => {
                    warn!(upload = %id, %error, "cannot read upload during expiry sweep");
                    continue;
                }
            };
            if !handlers::is_expired(&info, now) {
                continue;
            }
            let Ok(guard) = self
                .inner
                .locks
                .acquire(&id, false, Duration::MAX, Duration::ZERO)
                .await
            else {
                continue;
            };
            match self.inner.store.delete(&id).await {
                Ok(()) => removed += 1,
                Err(error) => warn!(upload = %id, %error, "cannot remove expired upload"),
            }
            drop(guard);
        }
        debug!(removed, "expiry sweep done");
        Ok(removed)
    }

    /// Runs [`TusServer::purge_expired`] every `every` until `cancel` fires.
    ///
    /// # Cancel safety
    ///
    /// Stops between sweeps or in the middle of one; an interrupted sweep leaves every
    /// upload either removed or untouched.
    pub async fn run_expiry(&self, every: Duration, cancel: CancellationToken) {
        let mut interval = tokio::time::interval(every.max(Duration::from_millis(1)));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = interval.tick() => {
                    if let Err(error) = self.purge_expired().await {
                        warn!(%error, "expiry sweep failed");
                    }
                }
            }
        }
    }
}
