//! Failure cases UP-01, UP-02 C, UP-04 C, UP-07 C, UP-09 C and UP-10 C: the client against
//! scripted servers, fault layers and proxies on loopback. Client backoff starts at 10 ms.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;
use common::{data, sha256, start};
use http_body_util::BodyExt as _;
use steadfast_backoff::Backoff;
use steadfast_chunk_upload::client::{ClientConfig, UploadError, Uploader, Warning};
use steadfast_chunk_upload::protocol::ChecksumAlgorithm;
use steadfast_chunk_upload::server::ServerConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(10))
        .max_delay(Duration::from_millis(100))
        .max_attempts(10)
}

fn stored(store: &steadfast_chunk_upload::store::FileStore, url: &str) -> Vec<u8> {
    let id = url.rsplit('/').next().unwrap().parse().unwrap();
    std::fs::read(store.data_path(&id)).unwrap()
}

async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Serves our router behind a middleware.
async fn behind<F, Fut>(router: axum::Router, layer: F) -> SocketAddr
where
    F: Fn(Request, Next) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response> + Send + 'static,
{
    serve(router.layer(middleware::from_fn(layer))).await
}

#[derive(Default)]
struct Script {
    stored: Vec<u8>,
    posts: u32,
    patches: u32,
    heads: u32,
    received: u64,
}

#[tokio::test]
async fn up_01_a_failing_head_after_a_failed_patch_resumes_and_never_starts_over() {
    const MIB: usize = 1 << 20;
    let script = Arc::new(Mutex::new(Script::default()));
    let state = script.clone();
    let app = axum::Router::new().fallback(move |request: Request| {
        let state = state.clone();
        async move {
            let method = request.method().clone();
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("tus-resumable", "1.0.0".parse().unwrap());
            match method.as_str() {
                "OPTIONS" => {
                    response
                        .headers_mut()
                        .insert("tus-extension", "creation".parse().unwrap());
                    *response.status_mut() = http::StatusCode::NO_CONTENT;
                }
                "POST" => {
                    state.lock().unwrap().posts += 1;
                    response
                        .headers_mut()
                        .insert("location", "/files/upload".parse().unwrap());
                    *response.status_mut() = http::StatusCode::CREATED;
                }
                "HEAD" => {
                    let mut s = state.lock().unwrap();
                    s.heads += 1;
                    if s.heads <= 2 {
                        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    } else {
                        response
                            .headers_mut()
                            .insert("upload-offset", s.stored.len().into());
                    }
                }
                "PATCH" => {
                    let offset: usize = request.headers()["upload-offset"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let body = request.into_body().collect().await.unwrap().to_bytes();
                    let mut s = state.lock().unwrap();
                    s.patches += 1;
                    s.received += body.len() as u64;
                    if s.patches == 4 {
                        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                    } else {
                        assert_eq!(offset, s.stored.len());
                        s.stored.extend_from_slice(&body);
                        response
                            .headers_mut()
                            .insert("upload-offset", s.stored.len().into());
                        *response.status_mut() = http::StatusCode::NO_CONTENT;
                    }
                }
                _ => *response.status_mut() = http::StatusCode::METHOD_NOT_ALLOWED,
            }
            response
        }
    });
    let addr = serve(app).await;

    let dir = tempfile::tempdir().unwrap();
    let source = data(64 * MIB, 1);
    let path = dir.path().join("big.bin");
    std::fs::write(&path, &source).unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .config(ClientConfig {
            chunk_size: 8 << 20,
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();
    let upload = uploader.upload_file(&path);
    let progress = upload.progress();
    upload.run().await.unwrap();

    let s = script.lock().unwrap();
    assert_eq!(s.posts, 1, "the upload must be created once");
    assert_eq!(s.heads, 3);
    assert!(
        progress.borrow().sent <= 72 * MIB as u64,
        "sent {}",
        progress.borrow().sent
    );
    assert!(s.received <= 72 * MIB as u64);
    assert_eq!(sha256(&s.stored), sha256(&source));
}

#[tokio::test]
async fn up_02_c_never_more_than_one_request_in_flight_per_upload() {
    let server = start(ServerConfig::default()).await;
    let in_flight: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let max_seen = Arc::new(AtomicU32::new(0));
    let counter = Arc::new(AtomicU32::new(0));

    // Seeded fault plan over the requests to the upload URL: 6 answered 500, 4 stalled 1 s.
    let mut plan = vec![None; 40];
    {
        use rand::SeedableRng as _;
        use rand::seq::SliceRandom as _;
        let mut slots: Vec<usize> = (1..26).collect();
        slots.shuffle(&mut rand::rngs::SmallRng::seed_from_u64(2));
        for (i, slot) in slots.into_iter().take(10).enumerate() {
            plan[slot] = Some(if i < 6 { 500u16 } else { 0 });
        }
    }
    let plan = Arc::new(plan);

    struct Guard(Arc<Mutex<HashMap<String, u32>>>, String);
    impl Drop for Guard {
        fn drop(&mut self) {
            *self.0.lock().unwrap().get_mut(&self.1).unwrap() -= 1;
        }
    }

    let layer = {
        let (in_flight, max_seen, counter, plan) = (
            in_flight.clone(),
            max_seen.clone(),
            counter.clone(),
            plan.clone(),
        );
        move |request: Request, next: Next| {
            let (in_flight, max_seen, counter, plan) = (
                in_flight.clone(),
                max_seen.clone(),
                counter.clone(),
                plan.clone(),
            );
            async move {
                let path = request.uri().path().to_owned();
                if path.len() <= "/files/".len() {
                    return next.run(request).await;
                }
                let now = {
                    let mut map = in_flight.lock().unwrap();
                    let entry = map.entry(path.clone()).or_default();
                    *entry += 1;
                    *entry
                };
                let _guard = Guard(in_flight.clone(), path);
                max_seen.fetch_max(now, Ordering::SeqCst);
                let n = counter.fetch_add(1, Ordering::SeqCst) as usize;
                match plan.get(n).copied().flatten() {
                    Some(500) => {
                        let mut response = Response::new(Body::from("injected"));
                        *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        response
                    }
                    Some(_) => {
                        let (parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        next.run(Request::from_parts(parts, Body::from(body))).await
                    }
                    None => next.run(request).await,
                }
            }
        }
    };
    let addr = behind(server.server.router(), layer).await;

    let source = data(16 << 20, 2);
    let path = server.dir.path().join("c.bin");
    std::fs::write(&path, &source).unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .config(ClientConfig {
            chunk_size: 1 << 20,
            request_timeout: Some(Duration::from_millis(200)),
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();
    let done = uploader.upload_file(&path).run().await.unwrap();
    assert_eq!(
        sha256(&stored(server.server.store(), &done.url)),
        sha256(&source)
    );
    // 16 chunks plus at least one HEAD per fault: every planned fault was reached.
    assert!(
        counter.load(Ordering::SeqCst) >= 26,
        "only {counter:?} requests"
    );
    assert_eq!(max_seen.load(Ordering::SeqCst), 1);
}

/// A proxy that holds each request body until it is complete before forwarding it, and
/// kills the connection half-way through the first `kill` PATCH bodies.
async fn buffering_proxy(target: SocketAddr, kill: u32) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let killed = Arc::new(AtomicU32::new(0));
    tokio::spawn(async move {
        while let Ok((mut downstream, _)) = listener.accept().await {
            let killed = killed.clone();
            tokio::spawn(async move {
                loop {
                    // Read one request head.
                    let mut buf = Vec::new();
                    let head_end = loop {
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break p + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match downstream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    let kill_this = head.starts_with("patch")
                        && length > 0
                        && killed.fetch_add(1, Ordering::SeqCst) < kill;
                    while buf.len() < head_end + length {
                        if kill_this && buf.len() >= head_end + length / 2 {
                            return; // Drops the client connection; the server saw nothing.
                        }
                        let mut chunk = vec![0u8; 65536];
                        match downstream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    // Forward the complete request and relay one response.
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let request = String::from_utf8_lossy(&buf[..head_end])
                        .replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
                    if upstream.write_all(request.as_bytes()).await.is_err()
                        || upstream
                            .write_all(&buf[head_end..head_end + length])
                            .await
                            .is_err()
                    {
                        return;
                    }
                    let mut response = Vec::new();
                    let _ = upstream.read_to_end(&mut response).await;
                    let response = String::from_utf8_lossy(&response)
                        .replacen("connection: close\r\n", "", 1)
                        .into_bytes();
                    if downstream.write_all(&response).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn up_04_c_a_client_behind_a_buffering_proxy_still_finishes_and_warns() {
    let server = start(ServerConfig::default()).await;
    let proxy = buffering_proxy(server.addr, 2).await;
    let source = data(3 << 20, 4);
    let path = server.dir.path().join("buffered.bin");
    std::fs::write(&path, &source).unwrap();

    let uploader = Uploader::builder(format!("http://{proxy}/files"))
        .config(ClientConfig {
            chunk_size: 1 << 20,
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();
    let upload = uploader.upload_file(&path);
    let mut progress = upload.progress();
    let warned = tokio::spawn(async move {
        loop {
            if let Some(Warning::NoProgress { retries }) = progress.borrow_and_update().warning {
                return retries;
            }
            if progress.changed().await.is_err() {
                return 0;
            }
        }
    });
    let done = upload.run().await.unwrap();
    assert_eq!(
        sha256(&stored(server.server.store(), &done.url)),
        sha256(&source)
    );
    assert_eq!(warned.await.unwrap(), 2);
}

#[tokio::test]
async fn up_07_c_a_zero_byte_upload_is_one_post_and_no_patch() {
    let server = start(ServerConfig::default()).await;
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = requests.clone();
    let addr = behind(
        server.server.router(),
        move |request: Request, next: Next| {
            seen.lock().unwrap().push(request.method().to_string());
            next.run(request)
        },
    )
    .await;

    let path = server.dir.path().join("empty.bin");
    std::fs::write(&path, b"").unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .backoff(backoff())
        .build()
        .unwrap();
    let done = uploader.upload_file(&path).run().await.unwrap();
    assert_eq!(done.length, 0);
    assert_eq!(*requests.lock().unwrap(), ["OPTIONS", "POST"]);
    assert_eq!(server.completions(), 1);

    // With a deferred length: one empty PATCH declaring Upload-Length: 0.
    requests.lock().unwrap().clear();
    let done = uploader
        .upload_reader(tokio::io::empty(), None)
        .run()
        .await
        .unwrap();
    assert_eq!(done.length, 0);
    assert_eq!(*requests.lock().unwrap(), ["OPTIONS", "POST", "PATCH"]);
    assert_eq!(server.completions(), 2);
}

fn strip_response_header(
    name: &'static str,
    methods: &'static [&'static str],
) -> impl Fn(Request, Next) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |request: Request, next: Next| {
        Box::pin(async move {
            let method = request.method().to_string();
            let mut response = next.run(request).await;
            if methods.contains(&method.as_str()) {
                response.headers_mut().remove(name);
            }
            response
        })
    }
}

#[tokio::test]
async fn up_09_c_a_missing_upload_offset_is_typed_and_recovered_through_head() {
    let server = start(ServerConfig::default()).await;
    let addr = behind(
        server.server.router(),
        strip_response_header("upload-offset", &["PATCH"]),
    )
    .await;
    let source = data(300_000, 9);
    let path = server.dir.path().join("s.bin");
    std::fs::write(&path, &source).unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .config(ClientConfig {
            chunk_size: 100_000,
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();
    let done = uploader.upload_file(&path).run().await.unwrap();
    assert_eq!(
        sha256(&stored(server.server.store(), &done.url)),
        sha256(&source)
    );
}

#[tokio::test]
async fn up_09_c_a_missing_location_fails_after_exactly_one_post() {
    let server = start(ServerConfig::default()).await;
    let posts = Arc::new(AtomicU32::new(0));
    let count = posts.clone();
    let strip = strip_response_header("location", &["POST"]);
    let router = server.server.router().layer(middleware::from_fn(strip));
    let addr = behind(router, move |request: Request, next: Next| {
        if request.method() == http::Method::POST {
            count.fetch_add(1, Ordering::SeqCst);
        }
        next.run(request)
    })
    .await;
    let path = server.dir.path().join("l.bin");
    std::fs::write(&path, b"abc").unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .backoff(backoff())
        .build()
        .unwrap();
    let result = uploader.upload_file(&path).run().await;
    match result {
        Err(UploadError::MissingHeader { header, .. }) => assert_eq!(header, "Location"),
        other => panic!("expected a missing Location, got {other:?}"),
    }
    assert_eq!(posts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn up_09_c_without_any_offset_the_client_stops_at_its_retry_limit() {
    let server = start(ServerConfig::default()).await;
    let addr = behind(
        server.server.router(),
        strip_response_header("upload-offset", &["PATCH", "HEAD"]),
    )
    .await;
    let path = server.dir.path().join("n.bin");
    std::fs::write(&path, data(1000, 9)).unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .backoff(Backoff::exponential(Duration::from_millis(10)).max_attempts(4))
        .build()
        .unwrap();
    match uploader.upload_file(&path).run().await {
        Err(UploadError::RetriesExhausted { last, .. }) => {
            assert!(
                matches!(
                    *last,
                    UploadError::MissingHeader {
                        header: "Upload-Offset",
                        ..
                    }
                ),
                "{last:?}"
            );
        }
        other => panic!("expected the retry limit, got {other:?}"),
    }
}

#[tokio::test]
async fn up_10_c_a_rejected_checksum_is_resent_at_most_three_times() {
    let server = start(ServerConfig::default()).await;
    let patches = Arc::new(AtomicU64::new(0));
    let count = patches.clone();
    let addr = behind(
        server.server.router(),
        move |mut request: Request, next: Next| {
            if request.method() == http::Method::PATCH {
                count.fetch_add(1, Ordering::SeqCst);
                // Corrupt the digest in transit.
                request.headers_mut().insert(
                    "upload-checksum",
                    "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=".parse().unwrap(),
                );
            }
            next.run(request)
        },
    )
    .await;
    let path = server.dir.path().join("c.bin");
    std::fs::write(&path, data(5000, 10)).unwrap();
    let uploader = Uploader::builder(format!("http://{addr}/files"))
        .config(ClientConfig {
            checksum: Some(ChecksumAlgorithm::Sha1),
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();
    let result = uploader.upload_file(&path).run().await;
    assert!(
        matches!(
            result,
            Err(UploadError::Checksum {
                offset: 0,
                attempts: 3
            })
        ),
        "{result:?}"
    );
    assert_eq!(patches.load(Ordering::SeqCst), 3);

    // Untouched, the same upload with checksums goes through.
    let direct = Uploader::builder(server.endpoint())
        .config(ClientConfig {
            checksum: Some(ChecksumAlgorithm::Sha1),
            ..ClientConfig::default()
        })
        .build()
        .unwrap();
    direct.upload_file(&path).run().await.unwrap();
}
