//! Shared helpers for the integration tests: a server on 127.0.0.1:0 over a temporary
//! file store, and a raw HTTP/1.1 client for requests reqwest will not send.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use sha2::Digest as _;
use steadfast_chunk_upload::server::{ServerConfig, TusServer, TusServerBuilder};
use steadfast_chunk_upload::store::{FileStore, Store, UploadInfo};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

pub struct TestServer<S = FileStore> {
    pub addr: SocketAddr,
    pub server: TusServer<S>,
    pub dir: tempfile::TempDir,
    pub completed: Arc<Mutex<Vec<UploadInfo>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<S> Drop for TestServer<S> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<S: Store> TestServer<S> {
    pub fn endpoint(&self) -> String {
        format!("http://{}{}", self.addr, self.server.config().base_path)
    }

    pub fn url(&self, location: &str) -> String {
        format!("http://{}{}", self.addr, location)
    }

    pub fn completions(&self) -> usize {
        self.completed.lock().unwrap().len()
    }
}

pub async fn start(config: ServerConfig) -> TestServer {
    start_with(config, |b| b).await
}

pub async fn start_with(
    config: ServerConfig,
    customize: impl FnOnce(TusServerBuilder<FileStore>) -> TusServerBuilder<FileStore>,
) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path().join("store")).await.unwrap();
    start_store(dir, store, config, customize).await
}

pub async fn start_store<S: Store>(
    dir: tempfile::TempDir,
    store: S,
    config: ServerConfig,
    customize: impl FnOnce(TusServerBuilder<S>) -> TusServerBuilder<S>,
) -> TestServer<S> {
    let completed = Arc::new(Mutex::new(Vec::new()));
    let sink = completed.clone();
    let builder = TusServer::builder(store)
        .config(config)
        .on_complete(move |info| sink.lock().unwrap().push(info.clone()));
    let server = customize(builder).build().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = server.router();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    TestServer {
        addr,
        server,
        dir,
        completed,
        task,
    }
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    sha2::Sha256::digest(data).to_vec()
}

/// Deterministic pseudo-random bytes (xorshift, eight bytes per step).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn client() -> reqwest::Client {
    reqwest::Client::new()
}

/// A parsed raw response.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (request line and headers, without the blank line) plus `body`, and reads
/// the response until the server closes.
pub async fn raw(addr: SocketAddr, head: &str, body: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    read_response(&mut stream).await
}

pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> RawResponse {
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no response head");
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    RawResponse {
        status,
        headers,
        body: buf[end + 4..].to_vec(),
    }
}

/// Creates an upload of `length` bytes and returns its location path.
pub async fn create(server: &TestServer<impl Store>, length: u64) -> String {
    let response = client()
        .post(server.endpoint())
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", length.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.headers()["location"].to_str().unwrap().to_owned()
}

pub async fn head_offset(server: &TestServer<impl Store>, location: &str) -> (u16, Option<u64>) {
    let response = client()
        .head(server.url(location))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    let offset = response
        .headers()
        .get("upload-offset")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (response.status().as_u16(), offset)
}

pub async fn patch(
    server: &TestServer<impl Store>,
    location: &str,
    offset: u64,
    body: Vec<u8>,
) -> reqwest::Response {
    client()
        .patch(server.url(location))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}
