//! tus 1.0 conformance of the server: one test per protocol rule.

mod common;

use std::time::{Duration, SystemTime};

use common::{client, create, head_offset, patch, raw, start, start_with};
use steadfast_chunk_upload::protocol::{Checksum, ChecksumAlgorithm, Metadata};
use steadfast_chunk_upload::server::{ManualClock, Operation, Rejection, ServerConfig};

fn tus(builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    builder.header("Tus-Resumable", "1.0.0")
}

#[tokio::test]
async fn options_advertises_version_extensions_max_size_and_checksums() {
    let server = start(ServerConfig {
        max_size: Some(1000),
        ..ServerConfig::default()
    })
    .await;
    let response = client()
        .request(reqwest::Method::OPTIONS, server.endpoint())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let h = response.headers();
    assert_eq!(h["tus-version"], "1.0.0");
    assert_eq!(h["tus-max-size"], "1000");
    let extensions = h["tus-extension"].to_str().unwrap();
    for ext in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "termination",
        "expiration",
        "checksum",
        "checksum-trailer",
        "concatenation",
    ] {
        assert!(
            extensions.split(',').any(|e| e == ext),
            "{ext} missing from {extensions}"
        );
    }
    assert_eq!(h["tus-checksum-algorithm"], "sha1,sha256,crc32");
}

#[tokio::test]
async fn missing_or_wrong_tus_resumable_is_412_with_tus_version() {
    let server = start(ServerConfig::default()).await;
    for version in [None, Some("0.2.2")] {
        let mut request = client()
            .post(server.endpoint())
            .header("Upload-Length", "5");
        if let Some(v) = version {
            request = request.header("Tus-Resumable", v);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 412);
        assert_eq!(response.headers()["tus-resumable"], "1.0.0");
    }
    assert!(
        server
            .server
            .store()
            .root()
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn post_creates_an_upload_with_location_and_expiry() {
    let server = start(ServerConfig::default()).await;
    let mut meta = Metadata::new();
    meta.insert("filename", "a b.txt").unwrap();
    let response = tus(client().post(server.endpoint()))
        .header("Upload-Length", "11")
        .header("Upload-Metadata", meta.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with("/files/") && location.len() == "/files/".len() + 32);
    assert!(response.headers().contains_key("upload-expires"));

    let head = tus(client().head(server.url(&location)))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    let h = head.headers();
    assert_eq!(h["upload-offset"], "0");
    assert_eq!(h["upload-length"], "11");
    assert_eq!(h["cache-control"], "no-store");
    let echoed = Metadata::parse(h["upload-metadata"].to_str().unwrap()).unwrap();
    assert_eq!(echoed.get_str("filename"), Some("a b.txt"));
}

#[tokio::test]
async fn post_needs_exactly_one_of_length_and_defer_length() {
    let server = start(ServerConfig::default()).await;
    let neither = tus(client().post(server.endpoint())).send().await.unwrap();
    assert_eq!(neither.status(), 400);
    let both = tus(client().post(server.endpoint()))
        .header("Upload-Length", "3")
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);
    let bad_defer = tus(client().post(server.endpoint()))
        .header("Upload-Defer-Length", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_defer.status(), 400);
    let negative = tus(client().post(server.endpoint()))
        .header("Upload-Length", "-3")
        .send()
        .await
        .unwrap();
    assert_eq!(negative.status(), 400);
    assert!(negative.text().await.unwrap().contains("upload-length"));
}

#[tokio::test]
async fn post_over_max_size_is_413() {
    let server = start(ServerConfig {
        max_size: Some(100),
        ..ServerConfig::default()
    })
    .await;
    let response = tus(client().post(server.endpoint()))
        .header("Upload-Length", "101")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn malformed_metadata_is_400() {
    let server = start(ServerConfig::default()).await;
    for bad in ["key not-base64!", "k dg==,k dg==", "a b c"] {
        let response = tus(client().post(server.endpoint()))
            .header("Upload-Length", "1")
            .header("Upload-Metadata", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
}

#[tokio::test]
async fn patch_appends_and_answers_204_with_the_new_offset() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 10).await;
    let first = patch(&server, &location, 0, b"hello".to_vec()).await;
    assert_eq!(first.status(), 204);
    assert_eq!(first.headers()["upload-offset"], "5");
    assert!(first.headers().contains_key("upload-expires"));
    let second = patch(&server, &location, 5, b"world".to_vec()).await;
    assert_eq!(second.headers()["upload-offset"], "10");
    assert_eq!(head_offset(&server, &location).await, (200, Some(10)));
    assert_eq!(server.completions(), 1);
}

#[tokio::test]
async fn patch_with_the_wrong_content_type_is_415() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 10).await;
    let response = tus(client().patch(server.url(&location)))
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/octet-stream")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
}

#[tokio::test]
async fn patch_without_or_with_a_bad_offset_is_400() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 10).await;
    for offset in [None, Some("abc"), Some("1e3")] {
        let mut request = tus(client().patch(server.url(&location)))
            .header("Content-Type", "application/offset+octet-stream")
            .body("x");
        if let Some(o) = offset {
            request = request.header("Upload-Offset", o);
        }
        assert_eq!(request.send().await.unwrap().status(), 400, "{offset:?}");
    }
}

#[tokio::test]
async fn patch_at_the_wrong_offset_is_409_and_stores_nothing() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 10).await;
    let response = patch(&server, &location, 3, b"abc".to_vec()).await;
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["upload-offset"], "0");
    assert_eq!(head_offset(&server, &location).await, (200, Some(0)));
}

#[tokio::test]
async fn patch_past_the_length_is_413_whether_announced_or_streamed() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 4).await;
    assert_eq!(
        patch(&server, &location, 0, b"12345".to_vec())
            .await
            .status(),
        413
    );

    // Chunked body without a length: the limit applies while reading.
    let stream = futures_util::stream::iter(
        [&b"12"[..], b"345"].map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from_static(c))),
    );
    let response = tus(client().patch(server.url(&location)))
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(head_offset(&server, &location).await, (200, Some(0)));
}

#[tokio::test]
async fn unknown_uploads_are_404() {
    let server = start(ServerConfig::default()).await;
    let missing = format!("/files/{}", steadfast_chunk_upload::UploadId::random());
    assert_eq!(head_offset(&server, &missing).await.0, 404);
    assert_eq!(
        patch(&server, &missing, 0, b"x".to_vec()).await.status(),
        404
    );
    let delete = tus(client().delete(server.url(&missing)))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 404);
}

#[tokio::test]
async fn other_methods_are_405() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 1).await;
    let get = tus(client().get(server.url(&location)))
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 405);
    let put = tus(client().put(server.endpoint())).send().await.unwrap();
    assert_eq!(put.status(), 405);
}

#[tokio::test]
async fn method_override_turns_post_into_patch_and_delete() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 3).await;
    let response = tus(client().post(server.url(&location)))
        .header("X-HTTP-Method-Override", "PATCH")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let delete = tus(client().post(server.url(&location)))
        .header("X-HTTP-Method-Override", "DELETE")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
}

#[tokio::test]
async fn creation_with_upload_stores_the_first_bytes() {
    let server = start(ServerConfig::default()).await;
    let response = tus(client().post(server.endpoint()))
        .header("Upload-Length", "6")
        .header("Content-Type", "application/offset+octet-stream")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["upload-offset"], "3");
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(
        patch(&server, &location, 3, b"def".to_vec()).await.status(),
        204
    );
    assert_eq!(server.completions(), 1);
}

#[tokio::test]
async fn deferred_length_is_declared_once_by_a_patch() {
    let server = start(ServerConfig::default()).await;
    let response = tus(client().post(server.endpoint()))
        .header("Upload-Defer-Length", "1")
        .send()
        .await
        .unwrap();
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let head = tus(client().head(server.url(&location)))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-defer-length"], "1");
    assert!(!head.headers().contains_key("upload-length"));

    assert_eq!(
        patch(&server, &location, 0, b"ab".to_vec()).await.status(),
        204
    );
    let declare = tus(client().patch(server.url(&location)))
        .header("Upload-Offset", "2")
        .header("Upload-Length", "4")
        .header("Content-Type", "application/offset+octet-stream")
        .body("cd")
        .send()
        .await
        .unwrap();
    assert_eq!(declare.status(), 204);
    assert_eq!(server.completions(), 1);

    let change = tus(client().patch(server.url(&location)))
        .header("Upload-Offset", "4")
        .header("Upload-Length", "9")
        .header("Content-Type", "application/offset+octet-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(change.status(), 400);
}

#[tokio::test]
async fn delete_terminates_and_later_requests_are_404() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 3).await;
    let delete = tus(client().delete(server.url(&location)))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 204);
    assert_eq!(head_offset(&server, &location).await.0, 404);
    assert!(
        server
            .server
            .store()
            .root()
            .read_dir()
            .unwrap()
            .next()
            .is_none()
    );
}

#[tokio::test]
async fn expired_uploads_are_410_and_removed() {
    let clock = ManualClock::new(SystemTime::now());
    let config = ServerConfig {
        expiration: Some(Duration::from_secs(60)),
        ..ServerConfig::default()
    };
    let server = start_with(config, |b| b.with_clock(clock.clone())).await;
    let unfinished = create(&server, 3).await;
    let finished = create(&server, 1).await;
    patch(&server, &finished, 0, b"x".to_vec()).await;
    let swept = create(&server, 3).await;

    clock.advance(Duration::from_secs(61));
    assert_eq!(head_offset(&server, &unfinished).await.0, 410);
    assert_eq!(
        patch(&server, &unfinished, 0, b"x".to_vec()).await.status(),
        404
    );
    assert_eq!(server.server.purge_expired().await.unwrap(), 1);
    assert_eq!(head_offset(&server, &swept).await.0, 404);
    assert_eq!(head_offset(&server, &finished).await, (200, Some(1)));
}

#[tokio::test]
async fn checksum_mismatch_is_460_and_appends_nothing() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 4).await;
    for (algorithm, ok) in [
        (ChecksumAlgorithm::Sha1, false),
        (ChecksumAlgorithm::Crc32, true),
    ] {
        let digest_of: &[u8] = if ok { b"abcd" } else { b"abce" };
        let response = tus(client().patch(server.url(&location)))
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .header(
                "Upload-Checksum",
                Checksum::compute(algorithm, digest_of).to_string(),
            )
            .body("abcd")
            .send()
            .await
            .unwrap();
        let expected = if ok { 204 } else { 460 };
        assert_eq!(response.status(), expected, "{algorithm}");
        let offset = if ok { 4 } else { 0 };
        assert_eq!(head_offset(&server, &location).await, (200, Some(offset)));
    }
}

#[tokio::test]
async fn unsupported_checksum_algorithm_is_400() {
    let server = start(ServerConfig::default()).await;
    let location = create(&server, 4).await;
    let response = tus(client().patch(server.url(&location)))
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Checksum", "md5 AAAAAAAAAAAAAAAAAAAAAA==")
        .body("abcd")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("md5"));
}

#[tokio::test]
async fn concatenation_joins_partial_uploads_into_a_final_one() {
    let server = start(ServerConfig::default()).await;
    let mut locations = Vec::new();
    for part in ["hello ", "world"] {
        let response = tus(client().post(server.endpoint()))
            .header("Upload-Concat", "partial")
            .header("Upload-Length", part.len().to_string())
            .send()
            .await
            .unwrap();
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(
            patch(&server, &location, 0, part.as_bytes().to_vec())
                .await
                .status(),
            204
        );
        let head = tus(client().head(server.url(&location)))
            .send()
            .await
            .unwrap();
        assert_eq!(head.headers()["upload-concat"], "partial");
        locations.push(location);
    }
    let absolute_second = server.url(&locations[1]);
    let response = tus(client().post(server.endpoint()))
        .header(
            "Upload-Concat",
            format!("final;{} {absolute_second}", locations[0]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let head = tus(client().head(server.url(&location)))
        .send()
        .await
        .unwrap();
    assert_eq!(head.headers()["upload-length"], "11");
    assert_eq!(head.headers()["upload-offset"], "11");
    assert!(
        head.headers()["upload-concat"]
            .to_str()
            .unwrap()
            .starts_with("final;/files/")
    );

    let id = location.rsplit('/').next().unwrap().parse().unwrap();
    let stored = std::fs::read(server.server.store().data_path(&id)).unwrap();
    assert_eq!(stored, b"hello world");
    assert_eq!(
        patch(&server, &location, 11, b"x".to_vec()).await.status(),
        403
    );
}

#[tokio::test]
async fn concatenation_refuses_unfinished_or_non_partial_parts() {
    let server = start(ServerConfig::default()).await;
    let plain = create(&server, 0).await;
    let response = tus(client().post(server.endpoint()))
        .header("Upload-Concat", "partial")
        .header("Upload-Length", "5")
        .send()
        .await
        .unwrap();
    let unfinished = response.headers()["location"].to_str().unwrap().to_owned();
    for parts in [plain, unfinished] {
        let response = tus(client().post(server.endpoint()))
            .header("Upload-Concat", format!("final;{parts}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
    }
}

#[tokio::test]
async fn the_authorisation_hook_can_refuse_any_request() {
    let config = ServerConfig::default();
    let server = start_with(config, |b| {
        b.authorize(|parts, operation| {
            let allowed = parts
                .headers
                .get("authorization")
                .is_some_and(|v| v == "Bearer ok")
                || matches!(operation, Operation::Discover);
            Box::pin(async move {
                if allowed {
                    Ok(())
                } else {
                    Err(Rejection::new(
                        http::StatusCode::UNAUTHORIZED,
                        "who are you",
                    ))
                }
            })
        })
    })
    .await;
    let refused = tus(client().post(server.endpoint()))
        .header("Upload-Length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.text().await.unwrap(), "who are you");
    let allowed = tus(client().post(server.endpoint()))
        .header("Upload-Length", "1")
        .header("Authorization", "Bearer ok")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 201);
}

#[tokio::test]
async fn an_idle_patch_is_ended_keeping_what_arrived() {
    let config = ServerConfig {
        idle_timeout: Duration::from_millis(200),
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let location = create(&server, 100).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: 100\r\n\r\n0123456789"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes())
        .await
        .unwrap();
    let response = common::read_response(&mut stream).await;
    assert_eq!(response.status, 408);
    assert_eq!(response.header("upload-offset"), Some("10"));
    assert_eq!(head_offset(&server, &location).await, (200, Some(10)));
}

#[tokio::test]
async fn bad_base_paths_are_refused_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let store = steadfast_chunk_upload::store::FileStore::open(dir.path())
        .await
        .unwrap();
    for base in ["files", "/files/", "/fi%6ces"] {
        let config = ServerConfig {
            base_path: base.into(),
            ..ServerConfig::default()
        };
        let built = steadfast_chunk_upload::server::TusServer::builder(store.clone())
            .config(config)
            .build();
        assert!(built.is_err(), "{base}");
    }
}

#[tokio::test]
async fn raw_requests_with_garbage_headers_get_400_not_a_crash() {
    let server = start(ServerConfig::default()).await;
    let response = raw(
        server.addr,
        "POST /files HTTP/1.1\r\nTus-Resumable: 1.0.0\r\nUpload-Length: 1\r\nUpload-Metadata: k é",
        b"",
    )
    .await;
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn a_stalled_writer_is_taken_over_by_a_new_patch() {
    let config = ServerConfig {
        takeover_after: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    let server = start(config).await;
    let location = create(&server, 20).await;

    // A client that sent 10 of 20 bytes and went silent without closing.
    let mut stalled = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: 20\r\n\r\n0123456789"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stalled, head.as_bytes())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Too early: the writer is not stalled yet.
    assert_eq!(
        patch(&server, &location, 10, b"abcdefghij".to_vec())
            .await
            .status(),
        423
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let started = std::time::Instant::now();
    let response = patch(&server, &location, 10, b"abcdefghij".to_vec()).await;
    assert_eq!(response.status(), 204);
    assert!(started.elapsed() < Duration::from_secs(2));
    let stored = std::fs::read(
        server
            .server
            .store()
            .data_path(&location[7..].parse().unwrap()),
    )
    .unwrap();
    assert_eq!(stored, b"0123456789abcdefghij");
}
