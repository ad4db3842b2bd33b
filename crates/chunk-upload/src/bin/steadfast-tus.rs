//! `steadfast-tus`: a small command-line tus server and uploader.
//!
//! It exists so that the server and the client can each run as a process of its own:
//! the memory tests and the benchmark measure the peak resident memory of each role, and
//! a process can be killed in the middle of an upload.
//!
//! ```text
//! steadfast-tus serve <store-dir> [--addr 127.0.0.1:0]
//!     prints "listening http://<addr>/files", serves until killed
//! steadfast-tus upload <endpoint> (--file <path> | --generate <bytes>)
//!     [--chunk <bytes>] [--url-store <path>] [--checksum none|sha1|sha256|crc32]
//!     [--single-patch] [--seed <n>]
//!     prints "done <url> <bytes>" and "vmhwm <kB>"
//! ```

use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};

use steadfast_chunk_upload::client::{ClientConfig, FileUrlStore, Uploader};
use steadfast_chunk_upload::protocol::ChecksumAlgorithm;
use steadfast_chunk_upload::server::{ServerConfig, TusServer};
use steadfast_chunk_upload::store::FileStore;
use tokio::io::{AsyncRead, ReadBuf};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.first().map(String::as_str) {
        Some("serve") => runtime.block_on(serve(&args[1..])),
        Some("upload") => runtime.block_on(upload(&args[1..])),
        _ => Err("usage: steadfast-tus serve <dir> | upload <endpoint> ...".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("steadfast-tus: {message}");
            ExitCode::FAILURE
        }
    }
}

fn option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn number(args: &[String], name: &str) -> Result<Option<u64>, String> {
    option(args, name)
        .map(|v| v.parse().map_err(|_| format!("{name} needs a number")))
        .transpose()
}

async fn serve(args: &[String]) -> Result<(), String> {
    let dir = args.first().ok_or("serve needs a store directory")?;
    let addr = option(args, "--addr").unwrap_or("127.0.0.1:0");
    let store = FileStore::open(dir)
        .await
        .map_err(|e| format!("cannot open the store: {e}"))?;
    let server = TusServer::builder(store)
        .config(ServerConfig {
            max_size: None,
            ..ServerConfig::default()
        })
        .build()
        .map_err(|e| e.to_string())?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening http://{local}/files");
    axum::serve(listener, server.router())
        .await
        .map_err(|e| e.to_string())
}

async fn upload(args: &[String]) -> Result<(), String> {
    let endpoint = args.first().ok_or("upload needs an endpoint")?;
    let checksum = match option(args, "--checksum") {
        None | Some("none") => None,
        Some(name) => Some(
            name.parse::<ChecksumAlgorithm>()
                .map_err(|e| e.to_string())?,
        ),
    };
    let mut config = ClientConfig {
        checksum,
        ..ClientConfig::default()
    };
    if let Some(chunk) = number(args, "--chunk")? {
        config.chunk_size = chunk;
    }
    let seed = number(args, "--seed")?.unwrap_or(1);
    let url_store = FileUrlStore::new(option(args, "--url-store").map_or_else(
        || std::env::temp_dir().join(format!("steadfast-tus-{}.json", std::process::id())),
        PathBuf::from,
    ));
    let uploader = Uploader::builder(endpoint.clone())
        .config(config)
        .url_store(url_store)
        .build()
        .map_err(|e| e.to_string())?;

    if args.iter().any(|a| a == "--single-patch") {
        let length = number(args, "--generate")?.ok_or("--single-patch needs --generate")?;
        return single_patch(endpoint, length, seed).await;
    }
    let upload = match (option(args, "--file"), number(args, "--generate")?) {
        (Some(path), _) => uploader.upload_file(path),
        (None, Some(length)) => uploader
            .upload_reader(Generated::new(length, seed), None)
            .fingerprint(format!("generated-{seed}-{length}")),
        (None, None) => return Err("upload needs --file or --generate".into()),
    };
    let done = upload.run().await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(inner) = source {
            text.push_str(&format!(": {inner}"));
            source = inner.source();
        }
        text
    })?;
    println!("done {} {}", done.url, done.length);
    println!("vmhwm {}", vm_hwm_kb().unwrap_or(0));
    Ok(())
}

/// Creates an upload and sends all of it in one streamed PATCH, without the uploader's
/// chunking: the server's side of an unchunked transfer.
async fn single_patch(endpoint: &str, length: u64, seed: u64) -> Result<(), String> {
    let http = reqwest::Client::new();
    let created = http
        .post(endpoint)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", length)
        .send()
        .await
        .map_err(|e| format!("POST failed: {e}"))?;
    let location = created
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .ok_or("the POST answer has no Location")?
        .to_owned();
    let url = reqwest::Url::parse(endpoint)
        .and_then(|u| u.join(&location))
        .map_err(|e| e.to_string())?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        Generated::new(length, seed),
        256 << 10,
    ));
    let response = http
        .patch(url.clone())
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Content-Length", length)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("PATCH failed: {e}"))?;
    if response.status().as_u16() != 204 {
        return Err(format!("PATCH answered {}", response.status()));
    }
    println!("done {url} {length}");
    println!("vmhwm {}", vm_hwm_kb().unwrap_or(0));
    Ok(())
}

/// Peak resident set size of this process, from `/proc/self/status`.
fn vm_hwm_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A deterministic pseudo-random stream of `remaining` bytes (xorshift), never held whole.
struct Generated {
    remaining: u64,
    state: u64,
    /// The current eight-byte word and how much of it was handed out, so that the stream
    /// is the same whatever sizes the reader asks for.
    word: [u8; 8],
    used: usize,
}

impl Generated {
    fn new(length: u64, seed: u64) -> Self {
        Self {
            remaining: length,
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            word: [0; 8],
            used: 8,
        }
    }
}

impl AsyncRead for Generated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let room = (buf.remaining() as u64).min(self.remaining) as usize;
        let mut written = 0;
        while written < room {
            if self.used == 8 {
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                self.word = self.state.to_le_bytes();
                self.used = 0;
            }
            let take = (8 - self.used).min(room - written);
            let from = self.used;
            buf.put_slice(&self.word[from..from + take]);
            self.used += take;
            written += take;
        }
        self.remaining -= written as u64;
        Poll::Ready(Ok(()))
    }
}
