//! A resumable upload with `steadfast::chunk_upload`: a tus server on loopback, and a
//! client that sends a 4 MiB file in 256 KiB requests through a proxy that cuts the
//! connection twice. The client asks the server for its offset and goes on from there;
//! the server's completion hook sees the whole file once.
//!
//! Run with `cargo run --example upload`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use steadfast::backoff::Backoff;
use steadfast::chunk_upload::client::{ClientConfig, Uploader};
use steadfast::chunk_upload::server::TusServer;
use steadfast::chunk_upload::store::FileStore;
use steadfast_testkit::{Direction, Fault, FaultProxy};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let source = dir.path().join("video.bin");
    let content: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&source, &content)?;

    // The server: uploads in a directory, a hook that runs once per finished upload.
    let completed = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&completed);
    let store = FileStore::open(dir.path().join("uploads")).await?;
    let server = TusServer::builder(store)
        .on_complete(move |info| {
            seen.store(info.offset, Ordering::SeqCst);
            println!(
                "server: upload {} complete ({} bytes)",
                info.id, info.offset
            );
        })
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let target = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, server.router()).await });

    // A proxy that cuts the first two connections after 300 KiB of request bytes.
    let proxy = Arc::new(FaultProxy::start(target).await?);
    proxy.set_fault(Fault::CutAfter {
        direction: Direction::ToTarget,
        bytes: 300 << 10,
    });
    let healer = Arc::clone(&proxy);
    tokio::spawn(async move {
        healer.wait_for_accepts(3).await;
        healer.set_fault_for_new(Fault::PassThrough);
    });

    let uploader = Uploader::builder(format!("http://{}/files", proxy.local_addr()))
        .config(ClientConfig {
            chunk_size: 256 << 10,
            ..ClientConfig::default()
        })
        .backoff(Backoff::exponential(Duration::from_millis(50)).max_attempts(10))
        .build()?;
    let upload = uploader.upload_file(&source);
    let progress = upload.progress();
    let uploaded = upload.run().await?;

    let last = *progress.borrow();
    println!(
        "client: {} bytes stored at {}; {} bytes sent in all ({} re-sent after cuts)",
        uploaded.length,
        uploaded.url,
        last.sent,
        last.sent.saturating_sub(uploaded.length)
    );
    assert_eq!(completed.load(Ordering::SeqCst), content.len() as u64);
    Ok(())
}
