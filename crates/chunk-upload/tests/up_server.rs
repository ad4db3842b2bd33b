//! Failure cases UP-02 S, UP-03, UP-04 S, UP-05, UP-07 S, UP-09 S, UP-10 S, UP-12 and
//! UP-13 against the real server on loopback.

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, client, create, data, head_offset, patch, raw, sha256, start};
use rand::{Rng as _, SeedableRng as _};
use steadfast_chunk_upload::UploadId;
use steadfast_chunk_upload::protocol::{Checksum, ChecksumAlgorithm};
use steadfast_chunk_upload::server::ServerConfig;
use steadfast_testkit::{Direction, Fault, FaultProxy};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn stored_len(server: &TestServer, location: &str) -> u64 {
    std::fs::metadata(server.server.store().data_path(&id_of(location)))
        .unwrap()
        .len()
}

fn stored(server: &TestServer, location: &str) -> Vec<u8> {
    std::fs::read(server.server.store().data_path(&id_of(location))).unwrap()
}

fn id_of(location: &str) -> UploadId {
    location.rsplit('/').next().unwrap().parse().unwrap()
}

fn patch_head(location: &str, offset: u64, length: u64, extra: &str) -> String {
    format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\nConnection: close\r\n{extra}\r\n"
    )
}

/// Opens a PATCH and writes its head plus `body`, leaving the connection open.
async fn open_patch(
    server: &TestServer,
    location: &str,
    offset: u64,
    length: u64,
    body: &[u8],
) -> TcpStream {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(patch_head(location, offset, length, "").as_bytes())
        .await
        .unwrap();
    stream.write_all(body).await.unwrap();
    stream
}

/// Reads whatever answer comes: `Some(status)` or `None` for a reset/closed connection.
async fn answer(mut stream: TcpStream) -> Option<u16> {
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok())
}

#[tokio::test]
async fn up_02_s_two_simultaneous_patches_one_wins_the_other_gets_409_or_423() {
    let server = start(ServerConfig::default()).await;
    let source = data(1 << 20, 21);
    let location = create(&server, source.len() as u64).await;

    // Both connections are open and sending at once; the second request arrives while the
    // first is still receiving its body.
    let mut first = open_patch(&server, &location, 0, source.len() as u64, &source[..4096]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn({
        let (url, body) = (server.url(&location), source.clone());
        async move {
            client()
                .patch(url)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Offset", "0")
                .header("Content-Type", "application/offset+octet-stream")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let second_status = second.await.unwrap();
    first.write_all(&source[4096..]).await.unwrap();
    let first_status = answer(first).await;

    assert_eq!(first_status, Some(204));
    assert!(
        matches!(second_status, 409 | 423),
        "second got {second_status}"
    );
    assert_eq!(sha256(&stored(&server, &location)), sha256(&source));
}

#[tokio::test]
async fn up_02_s_two_patches_released_together_never_write_a_byte_twice() {
    let server = start(ServerConfig::default()).await;
    let source = data(256 << 10, 22);
    let location = create(&server, source.len() as u64).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (url, body, barrier) = (server.url(&location), source.clone(), barrier.clone());
            tokio::spawn(async move {
                let request = client()
                    .patch(url)
                    .header("Tus-Resumable", "1.0.0")
                    .header("Upload-Offset", "0")
                    .header("Content-Type", "application/offset+octet-stream")
                    .body(body);
                barrier.wait().await;
                request.send().await.unwrap().status().as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    statuses.sort_unstable();
    assert!(
        statuses == [204, 409] || statuses == [204, 423],
        "{statuses:?}"
    );
    assert_eq!(stored(&server, &location), source);
}

#[tokio::test]
async fn up_03_head_during_a_slow_patch_answers_promptly_with_what_is_stored() {
    let server = start(ServerConfig::default()).await;
    let source = data(1 << 20, 3);
    let location = create(&server, source.len() as u64).await;

    // 64 KiB/s in 8 KiB slices; the whole body would take about 16 s.
    let mut stream = open_patch(&server, &location, 0, source.len() as u64, &[]).await;
    let trickle = tokio::spawn({
        let source = source.clone();
        async move {
            for slice in source.chunks(8 << 10) {
                if stream.write_all(slice).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(125)).await;
            }
            answer(stream).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let asked = Instant::now();
    let (status, offset) = head_offset(&server, &location).await;
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "HEAD took {:?}",
        asked.elapsed()
    );
    assert_eq!(status, 200);
    let offset = offset.unwrap();
    assert_eq!(
        offset,
        stored_len(&server, &location),
        "HEAD must report what is stored"
    );
    assert!(
        (8 << 10..=64 << 10).contains(&offset),
        "offset {offset} is not about 32 KiB"
    );

    // The slow PATCH was stopped: a 4xx or a dropped connection.
    let slow = tokio::time::timeout(Duration::from_secs(5), trickle)
        .await
        .unwrap()
        .unwrap();
    assert!(
        slow.is_none_or(|s| (400..500).contains(&s)),
        "slow PATCH got {slow:?}"
    );

    let rest = patch(
        &server,
        &location,
        offset,
        source[offset as usize..].to_vec(),
    )
    .await;
    assert_eq!(rest.status(), 204);
    assert_eq!(sha256(&stored(&server, &location)), sha256(&source));
}

#[tokio::test]
async fn up_04_s_an_interrupted_patch_keeps_exactly_what_arrived() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 8 << 20).await;
    let source = data(8 << 20, 4);
    let head = patch_head(&location, 0, 8 << 20, "");

    let proxy = FaultProxy::start(server.addr).await.unwrap();
    proxy.set_fault(Fault::CutAfter {
        direction: Direction::ToTarget,
        bytes: head.len() as u64 + (3 << 20),
    });
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&source).await;
    drop(stream);

    // Wait until the server has seen the disconnect and committed.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_len(&server, &location) < 3 << 20 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(head_offset(&server, &location).await, (200, Some(3 << 20)));
    let rest = patch(&server, &location, 3 << 20, source[3 << 20..].to_vec()).await;
    assert_eq!(rest.status(), 204);
    assert_eq!(sha256(&stored(&server, &location)), sha256(&source));
}

/// 200 seeded runs of upload, interruptions at random positions, HEAD and resume. Runs
/// go eight at a time (each on its own upload, each seeded by its index) so that the
/// fsync latency of one overlaps the work of the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_05_the_offset_counts_bytes_written_not_bytes_announced() {
    let server = std::sync::Arc::new(start(ServerConfig::default()).await);
    let runs: Vec<u64> = (0..200).collect();
    for batch in runs.chunks(8) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|&run| tokio::spawn(up_05_run(server.clone(), run)))
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    }
}

async fn up_05_run(server: std::sync::Arc<TestServer>, run: u64) {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x5eed_0005 ^ run);
    let size = rng.random_range(0..=4u64 << 20);
    let source = data(size as usize, run);
    let location = create(&server, size).await;
    let cuts = rng.random_range(1..=5);
    let mut positions: Vec<u64> = (0..cuts).map(|_| rng.random_range(0..=size)).collect();
    positions.sort_unstable();

    let mut offset = 0;
    for cut in positions {
        if cut <= offset {
            continue;
        }
        let body = &source[offset as usize..cut as usize];
        let mut stream = open_patch(&server, &location, offset, size - offset, body).await;
        stream.shutdown().await.unwrap();
        let _ = answer(stream).await;

        let (status, reported) = head_offset(&server, &location).await;
        assert_eq!(status, 200);
        let reported = reported.unwrap();
        assert_eq!(reported, stored_len(&server, &location), "run {run}");
        assert!(
            reported >= offset && reported <= cut,
            "run {run}: {reported} outside {offset}..={cut}"
        );
        offset = reported;
    }
    let last = patch(
        &server,
        &location,
        offset,
        source[offset as usize..].to_vec(),
    )
    .await;
    assert_eq!(last.status(), 204, "run {run}");
    assert_eq!(
        last.headers()["upload-offset"].to_str().unwrap(),
        size.to_string()
    );
    assert_eq!(stored_len(&server, &location), size);
    assert_eq!(
        sha256(&stored(&server, &location)),
        sha256(&source),
        "run {run}"
    );
}

#[tokio::test]
async fn up_07_s_a_zero_byte_upload_completes_once_at_creation() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 0).await;
    assert_eq!(server.completions(), 1);

    let head = client()
        .head(server.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-offset"], "0");
    assert_eq!(head.headers()["upload-length"], "0");

    let empty = patch(&server, &location, 0, Vec::new()).await;
    assert_eq!(empty.status(), 204);
    assert_eq!(empty.headers()["upload-offset"], "0");
    assert_eq!(server.completions(), 1);

    let one = patch(&server, &location, 0, vec![7]).await;
    assert!(
        matches!(one.status().as_u16(), 400 | 413),
        "{}",
        one.status()
    );
    assert_eq!(stored_len(&server, &location), 0);
    assert_eq!(server.completions(), 1);
}

#[tokio::test]
async fn up_09_s_cors_preflight_covers_every_tus_header() {
    let server = start(ServerConfig::default()).await;
    let response = client()
        .request(reqwest::Method::OPTIONS, server.endpoint())
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "PATCH")
        .send()
        .await
        .unwrap();
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let list = |name: &str| -> Vec<String> {
        h[name]
            .to_str()
            .unwrap()
            .split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .collect()
    };
    let methods = list("access-control-allow-methods");
    for m in ["patch", "head", "delete", "post"] {
        assert!(methods.contains(&m.to_owned()), "{m} not allowed");
    }
    let allowed = list("access-control-allow-headers");
    for name in [
        "tus-resumable",
        "upload-offset",
        "upload-length",
        "upload-defer-length",
        "upload-metadata",
        "upload-checksum",
        "upload-concat",
        "content-type",
        "x-http-method-override",
    ] {
        assert!(allowed.contains(&name.to_owned()), "{name} not allowed");
    }

    // Actual responses expose the tus headers, HEAD's Upload-Offset above all.
    let location = create(&server, 1).await;
    let head = client()
        .head(server.url(&location))
        .header("Tus-Resumable", "1.0.0")
        .header("Origin", "https://app.example")
        .send()
        .await
        .unwrap();
    let exposed: Vec<String> = head.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .collect();
    for name in [
        "upload-offset",
        "upload-length",
        "upload-defer-length",
        "upload-metadata",
        "upload-concat",
        "upload-expires",
        "location",
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "tus-checksum-algorithm",
    ] {
        assert!(exposed.contains(&name.to_owned()), "{name} not exposed");
    }
}

fn sha1_header(data: &[u8]) -> String {
    Checksum::compute(ChecksumAlgorithm::Sha1, data).to_string()
}

#[tokio::test]
async fn up_10_s_checksum_mismatch_unknown_algorithm_and_interruption() {
    let server = start(ServerConfig::default()).await;
    let source = data(3 << 20, 10);
    let location = create(&server, source.len() as u64).await;
    let chunk = |i: usize| source[i << 20..(i + 1) << 20].to_vec();
    let send = |offset: u64, body: Vec<u8>, checksum: String| {
        client()
            .patch(server.url(&location))
            .header("Tus-Resumable", "1.0.0")
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", checksum)
            .body(body)
            .send()
    };

    let wrong = send(0, chunk(0), sha1_header(b"something else"))
        .await
        .unwrap();
    assert_eq!(wrong.status(), 460);
    assert_eq!(head_offset(&server, &location).await, (200, Some(0)));

    let md4 = send(0, chunk(0), "md4 AAAAAAAAAAAAAAAAAAAAAA==".into())
        .await
        .unwrap();
    assert_eq!(md4.status(), 400);

    let right = send(0, chunk(0), sha1_header(&chunk(0))).await.unwrap();
    assert_eq!(right.status(), 204);

    // Correct checksum, but the connection is cut halfway: nothing unverified is kept.
    let extra = format!("Upload-Checksum: {}\r\n", sha1_header(&chunk(1)));
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(patch_head(&location, 1 << 20, 1 << 20, &extra).as_bytes())
        .await
        .unwrap();
    stream.write_all(&chunk(1)[..512 << 10]).await.unwrap();
    stream.shutdown().await.unwrap();
    let _ = answer(stream).await;
    assert_eq!(head_offset(&server, &location).await, (200, Some(1 << 20)));
    assert_eq!(stored_len(&server, &location), 1 << 20);

    let again = send(1 << 20, chunk(1), sha1_header(&chunk(1)))
        .await
        .unwrap();
    assert_eq!(again.status(), 204);

    // Trailer form: chunked body, digest after it.
    for (digest_of, expected) in [(chunk(0), 460u16), (chunk(2), 204)] {
        let mut body = Vec::new();
        for piece in chunk(2).chunks(300_000) {
            body.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            body.extend_from_slice(piece);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(
            format!("0\r\nUpload-Checksum: {}\r\n\r\n", sha1_header(&digest_of)).as_bytes(),
        );
        let response = raw(
            server.addr,
            &format!(
                "PATCH {location} HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {}\r\n\
                 Content-Type: application/offset+octet-stream\r\nTransfer-Encoding: chunked\r\n\
                 Trailer: Upload-Checksum",
                2 << 20
            ),
            &body,
        )
        .await;
        assert_eq!(response.status, expected);
    }
    assert_eq!(sha256(&stored(&server, &location)), sha256(&source));
}

#[tokio::test]
async fn up_12_hostile_upload_ids_never_reach_outside_the_store() {
    let server = start(ServerConfig::default()).await;
    let sentinel = server.dir.path().join("victim");
    let secret = b"sentinel-secret-content";
    std::fs::write(&sentinel, secret).unwrap();
    let before = std::fs::metadata(&sentinel).unwrap().modified().unwrap();

    let long = "x".repeat(10_000);
    let ids = [
        "..%2Fvictim",
        "%2e%2e%2fvictim",
        "..%5Cvictim",
        "a%00b",
        "%2Fetc%2Fpasswd",
        long.as_str(),
    ];
    for id in ids {
        for method in ["HEAD", "PATCH", "DELETE", "GET"] {
            let head = format!(
                "{method} /files/{id} HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
                 Content-Type: application/offset+octet-stream\r\nContent-Length: 4"
            );
            let response = raw(server.addr, &head, b"evil").await;
            assert!(
                matches!(response.status, 400 | 404),
                "{method} {id:.20}: {}",
                response.status
            );
            assert!(!response.body.windows(secret.len()).any(|w| w == secret));
        }
    }
    let response = raw(
        server.addr,
        "POST /files HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Concat: final;../victim ../../etc/passwd",
        b"",
    )
    .await;
    assert!(matches!(response.status, 400 | 404), "{}", response.status);
    assert!(!response.body.windows(secret.len()).any(|w| w == secret));

    assert_eq!(std::fs::read(&sentinel).unwrap(), secret);
    assert_eq!(
        std::fs::metadata(&sentinel).unwrap().modified().unwrap(),
        before
    );
}

/// Stored files are compared with their sources byte for byte instead of by SHA-256:
/// hashing the 2 GiB in an unoptimised test build takes about 40 s, and equal bytes imply
/// equal hashes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_13_many_uploads_at_once_and_a_slow_one_is_not_cut_off() {
    let config = ServerConfig {
        idle_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    let server = std::sync::Arc::new(start(config).await);

    // The throttled one: 256 KiB at 64 KiB/s, about 4 s, well past the idle timeout. It
    // writes from its own thread so that the busy test runtime cannot starve it.
    let slow_source = data(256 << 10, 1300);
    let slow_location = create(&server, slow_source.len() as u64).await;
    let slow = std::thread::spawn({
        let (addr, source) = (server.addr, slow_source.clone());
        let head = patch_head(&slow_location, 0, slow_source.len() as u64, "");
        move || {
            use std::io::{Read as _, Write as _};
            let mut stream = std::net::TcpStream::connect(addr).unwrap();
            stream.write_all(head.as_bytes()).unwrap();
            for slice in source.chunks(8 << 10) {
                stream.write_all(slice).unwrap();
                std::thread::sleep(Duration::from_millis(125));
            }
            let mut answer = String::new();
            let _ = stream.read_to_string(&mut answer);
            answer
        }
    });

    let uploads: Vec<_> = (0..32u64)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move {
                let source = tokio::task::spawn_blocking(move || data(32 << 20, 1301 + i))
                    .await
                    .unwrap();
                let location = create(&server, source.len() as u64).await;
                let response = patch(&server, &location, 0, source.clone()).await;
                assert_eq!(response.status(), 204);
                assert!(stored(&server, &location) == source, "upload {i} differs");
            })
        })
        .collect();
    for upload in uploads {
        upload.await.unwrap();
    }
    let answer = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");
    assert_eq!(
        sha256(&stored(&server, &slow_location)),
        sha256(&slow_source)
    );
}
