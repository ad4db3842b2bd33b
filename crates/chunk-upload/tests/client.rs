//! The client against our own server: files, streams, deferred lengths, resume across
//! runs, parallel parts, progress and cancellation.

mod common;

use std::time::Duration;

use common::{data, sha256, start};
use steadfast_backoff::Backoff;
use steadfast_chunk_upload::client::{ClientConfig, FileUrlStore, UploadError, Uploader};
use steadfast_chunk_upload::protocol::{ChecksumAlgorithm, Metadata};
use steadfast_chunk_upload::server::ServerConfig;
use steadfast_chunk_upload::store::FileStore;
use tokio_util::sync::CancellationToken;

fn fast_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(10))
        .max_delay(Duration::from_millis(50))
        .max_attempts(8)
}

fn stored(store: &FileStore, url: &str) -> Vec<u8> {
    let id = url.rsplit('/').next().unwrap().parse().unwrap();
    std::fs::read(store.data_path(&id)).unwrap()
}

fn config(chunk: u64) -> ClientConfig {
    ClientConfig {
        chunk_size: chunk,
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn a_file_is_uploaded_in_chunks_with_checksums_and_progress() {
    let server = start(ServerConfig::default()).await;
    let source = data(1_000_000, 1);
    let path = server.dir.path().join("source.bin");
    std::fs::write(&path, &source).unwrap();

    let uploader = Uploader::builder(server.endpoint())
        .config(ClientConfig {
            checksum: Some(ChecksumAlgorithm::Sha1),
            ..config(300_000)
        })
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let mut meta = Metadata::new();
    meta.insert("filename", "source.bin").unwrap();
    let upload = uploader.upload_file(&path).metadata(meta);
    let progress = upload.progress();
    let done = upload.run().await.unwrap();

    assert_eq!(done.length, 1_000_000);
    assert_eq!(
        sha256(&stored(server.server.store(), &done.url)),
        sha256(&source)
    );
    let last = *progress.borrow();
    assert_eq!(
        (last.acked, last.sent, last.total),
        (1_000_000, 1_000_000, Some(1_000_000))
    );
    assert_eq!(server.completions(), 1);
    assert_eq!(
        server.completed.lock().unwrap()[0]
            .metadata
            .get_str("filename"),
        Some("source.bin")
    );
}

#[tokio::test]
async fn a_stream_of_unknown_length_declares_it_at_the_end() {
    let server = start(ServerConfig::default()).await;
    let source = data(700_000, 2);
    let uploader = Uploader::builder(server.endpoint())
        .config(config(256 << 10))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let done = uploader
        .upload_reader(std::io::Cursor::new(source.clone()), None)
        .run()
        .await
        .unwrap();
    assert_eq!(done.length, 700_000);
    assert_eq!(stored(server.server.store(), &done.url), source);
    assert_eq!(server.completions(), 1);
}

#[tokio::test]
async fn a_stream_whose_length_is_a_multiple_of_the_chunk_ends_with_an_empty_patch() {
    let server = start(ServerConfig::default()).await;
    let source = data(512 << 10, 3);
    let uploader = Uploader::builder(server.endpoint())
        .config(config(256 << 10))
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let done = uploader
        .upload_reader(std::io::Cursor::new(source.clone()), None)
        .run()
        .await
        .unwrap();
    assert_eq!(stored(server.server.store(), &done.url), source);
}

#[tokio::test]
async fn a_short_stream_is_a_typed_error() {
    let server = start(ServerConfig::default()).await;
    let uploader = Uploader::builder(server.endpoint())
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let result = uploader
        .upload_reader(std::io::Cursor::new(vec![1u8; 10]), Some(20))
        .run()
        .await;
    assert!(
        matches!(
            result,
            Err(UploadError::SourceLength {
                expected: 20,
                actual: 10
            })
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn parallel_parts_are_joined_by_concatenation() {
    let server = start(ServerConfig::default()).await;
    let source = data(1_000_003, 4);
    let path = server.dir.path().join("parallel.bin");
    std::fs::write(&path, &source).unwrap();
    let uploader = Uploader::builder(server.endpoint())
        .config(ClientConfig {
            parallel_parts: 4,
            ..config(100_000)
        })
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let upload = uploader.upload_file(&path);
    let progress = upload.progress();
    let done = upload.run().await.unwrap();
    assert_eq!(stored(server.server.store(), &done.url), source);
    assert_eq!(progress.borrow().acked, 1_000_003);
    // Four parts and the final upload.
    assert_eq!(server.completions(), 5);
}

#[tokio::test]
async fn a_cancelled_upload_resumes_from_the_url_store_on_the_next_run() {
    let server = start(ServerConfig::default()).await;
    let source = data(2_000_000, 5);
    let path = server.dir.path().join("resume.bin");
    std::fs::write(&path, &source).unwrap();
    let urls = server.dir.path().join("urls.json");
    let uploader = Uploader::builder(server.endpoint())
        .config(config(100_000))
        .backoff(fast_backoff())
        .url_store(FileUrlStore::new(&urls))
        .build()
        .unwrap();

    let cancel = CancellationToken::new();
    let upload = uploader.upload_file(&path).cancel(cancel.clone());
    let mut progress = upload.progress();
    let run = tokio::spawn(upload.run());
    while progress.borrow_and_update().acked < 500_000 {
        progress.changed().await.unwrap();
    }
    cancel.cancel();
    assert!(run.await.unwrap().unwrap_err().is_cancelled());
    let first_acked = progress.borrow().acked;

    // A new uploader (as in a new process) with the same URL store continues.
    let again = Uploader::builder(server.endpoint())
        .config(config(100_000))
        .backoff(fast_backoff())
        .url_store(FileUrlStore::new(&urls))
        .build()
        .unwrap();
    let upload = again.upload_file(&path);
    let progress = upload.progress();
    let done = upload.run().await.unwrap();
    assert_eq!(stored(server.server.store(), &done.url), source);
    let sent = progress.borrow().sent;
    assert!(
        sent <= 2_000_000 - first_acked + 100_000,
        "resent too much: {sent}"
    );
    assert!(
        !std::fs::read_to_string(&urls).unwrap().contains("http"),
        "entry not removed"
    );
}

#[tokio::test]
async fn a_missing_upload_fails_unless_restart_is_allowed() {
    let server = start(ServerConfig::default()).await;
    let source = data(300_000, 6);
    let path = server.dir.path().join("gone.bin");
    std::fs::write(&path, &source).unwrap();

    // Delete the upload on the server after the first chunk.
    for allow in [false, true] {
        let uploader = Uploader::builder(server.endpoint())
            .config(ClientConfig {
                restart_if_gone: allow,
                ..config(100_000)
            })
            .backoff(fast_backoff())
            .build()
            .unwrap();
        let upload = uploader
            .upload_file(&path)
            .fingerprint(format!("gone-{allow}"));
        let mut progress = upload.progress();
        let run = tokio::spawn(upload.run());
        while progress.borrow_and_update().acked == 0 {
            progress.changed().await.unwrap();
        }
        for id in server.server.store().root().read_dir().unwrap() {
            let name = id.unwrap().file_name().into_string().unwrap();
            if let Some(stem) = name.strip_suffix(".info") {
                common::client()
                    .delete(server.url(&format!("/files/{stem}")))
                    .header("Tus-Resumable", "1.0.0")
                    .send()
                    .await
                    .unwrap();
            }
        }
        let result = run.await.unwrap();
        if allow {
            let done = result.unwrap();
            assert_eq!(stored(server.server.store(), &done.url), source);
        } else {
            assert!(
                matches!(result, Err(UploadError::Gone { .. })),
                "{result:?}"
            );
        }
    }
}

#[tokio::test]
async fn bad_settings_are_refused_at_build() {
    assert!(Uploader::builder("not a url").build().is_err());
    assert!(Uploader::builder("ftp://h/files").build().is_err());
    assert!(
        Uploader::builder("http://h/files")
            .config(config(0))
            .build()
            .is_err()
    );
    let parts = ClientConfig {
        parallel_parts: 0,
        ..ClientConfig::default()
    };
    assert!(
        Uploader::builder("http://h/files")
            .config(parts)
            .build()
            .is_err()
    );
}
