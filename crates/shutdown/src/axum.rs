//! Serving an axum [`Router`] whose connections drain with the coordinator.
//!
//! [`serve`] runs an HTTP/1.1 accept loop wired to a [`Handle`]:
//!
//! - From the trigger on, every response carries `Connection: close`, so clients that
//!   reuse a connection open a fresh one next time, while the drain delay still serves it.
//! - When draining starts the listener closes, so new connects are refused; connections
//!   resting between requests, and connections that never sent one, are closed at once;
//!   requests in flight finish and their connections close after the response.
//! - Each request is counted in the drain by a [`WorkGuard`] named after
//!   its method and path, held until its response body has been sent, so a request still
//!   running at the deadline is named in the report when it is aborted.
//! - Long-lived responses (server-sent events, streams) take the [`Drain`] extractor and
//!   end their stream when [`Drain::cancelled`] fires. A WebSocket handler, whose session
//!   axum runs in a task of its own after the upgrade, holds [`Drain::track`] for as long
//!   as the session lasts.
//!
//! ```no_run
//! use axum::Router;
//! use axum::routing::get;
//! use steadfast_shutdown::Shutdown;
//! use steadfast_shutdown::axum::{readiness_route, serve};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::builder().build()?;
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .route("/ready", readiness_route(shutdown.readiness()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! shutdown.spawn_critical("http", serve(&shutdown, listener, app));
//!
//! shutdown.run().await.exit();
//! # }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::header::{CONNECTION, HeaderValue};
use axum::http::request::Parts;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::Service;
use tracing::{debug, info, warn};

use crate::coordinator::{Handle, WorkGuard};

/// Serves `router` on `listener` until the shutdown drains, then closes the listener and
/// waits for the open connections to finish.
///
/// Spawn it with [`Handle::spawn_critical`] so the drain waits for it, the deadline can
/// abort it, and a server that dies by itself brings the service down. Dropping the future
/// closes every connection at once.
///
/// # Errors
///
/// Never at present; the `io::Result` leaves room for listener failures that cannot be
/// retried. Accept errors are logged and accepting goes on.
///
/// # Cancel safety
///
/// Dropping the future drops the listener and every connection with it.
pub fn serve(
    handle: &Handle,
    listener: TcpListener,
    router: Router,
) -> impl Future<Output = io::Result<()>> + Send + 'static {
    let handle = handle.clone();
    async move {
        let draining = handle.draining_token().clone();
        let service = DrainService { router, handle };
        let mut connections = JoinSet::new();

        loop {
            tokio::select! {
                biased;
                () = draining.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        debug!(%peer, "connection accepted");
                        let service = service.clone();
                        connections.spawn(serve_connection(stream, service, draining.clone()));
                    }
                    Err(error) => accept_failed(&error).await,
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }

        drop(listener);
        info!(
            connections = connections.len(),
            "listener closed; draining connections"
        );
        while connections.join_next().await.is_some() {}
        Ok(())
    }
}

/// A route answering 200 while ready and 503 once the shutdown has been triggered, for the
/// load balancer's health check.
pub fn readiness_route<S>(readiness: crate::Readiness) -> MethodRouter<S>
where
    S: Clone + Send + Sync + 'static,
{
    get(move || {
        let ready = readiness.is_ready();
        async move {
            if ready {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
            }
        }
    })
}

/// An extractor for handlers that produce long-lived responses: tells them when to wind
/// down.
///
/// Available in every request served by [`serve`]. Server-sent events and other endless
/// streams should end when [`cancelled`](Self::cancelled) fires, so that the drain does
/// not wait for them until the deadline.
#[derive(Debug, Clone)]
pub struct Drain {
    token: CancellationToken,
    handle: Handle,
}

impl Drain {
    /// Waits until draining starts.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        self.token.is_cancelled()
    }

    /// A token cancelled when draining starts, to move into a stream or a task.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Counts work that outlives the response, such as a WebSocket session, in the drain.
    pub fn track(&self, name: impl Into<String>) -> WorkGuard {
        self.handle.track(name)
    }
}

impl<S> FromRequestParts<S> for Drain
where
    S: Send + Sync,
{
    type Rejection = MissingDrain;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts.extensions.get::<Drain>().cloned().ok_or(MissingDrain)
    }
}

/// The rejection of [`Drain`] in a router not served by [`serve`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("the Drain extractor needs the router to be served by steadfast_shutdown::axum::serve")]
#[non_exhaustive]
pub struct MissingDrain;

impl IntoResponse for MissingDrain {
    fn into_response(self) -> axum::response::Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// Wraps the router: names each request in the drain, hands handlers a [`Drain`], and asks
/// clients to close once the shutdown has been triggered.
#[derive(Clone)]
struct DrainService {
    router: Router,
    handle: Handle,
}

impl hyper::service::Service<Request<Incoming>> for DrainService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let name = format!("{} {}", request.method(), request.uri().path());
        let guard = self.handle.track(name);
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(Drain {
            token: self.handle.token(),
            handle: self.handle.clone(),
        });
        let mut router = self.router.clone();
        let handle = self.handle.clone();

        Box::pin(async move {
            let Ok(mut response) = router.call(request).await;
            let upgrading = response.status() == StatusCode::SWITCHING_PROTOCOLS;
            if handle.is_triggered() && !upgrading {
                let headers = response.headers_mut();
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|body| {
                Body::new(GuardedBody {
                    body,
                    _guard: guard,
                })
            }))
        })
    }
}

/// A response body that keeps its request counted in the drain until it has been sent.
struct GuardedBody {
    body: Body,
    _guard: WorkGuard,
}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

// Not yet: HTTP/2; connections speak HTTP/1.1 only, where `Connection: close` and
// hyper's graceful close do the draining.
async fn serve_connection(stream: TcpStream, service: DrainService, draining: CancellationToken) {
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);

    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = draining.cancelled() => {
            // Closes at once if idle or if no request ever came; otherwise after the
            // response in progress.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection ended with an error");
    }
}

async fn accept_failed(error: &io::Error) {
    let per_connection = matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    );
    if per_connection {
        debug!(%error, "a connection failed before it was accepted");
        return;
    }

    // Running out of file descriptors and the like: back off instead of spinning.
    warn!(%error, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
