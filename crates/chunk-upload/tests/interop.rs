//! Interoperability with the tus reference implementations, run through node:
//! tus-js-client 4.3 uploads to our server, and our client uploads to @tus/server 2.4
//! with @tus/file-store, each including an interrupted and resumed upload. The npm
//! packages are pinned by `interop/package-lock.json` and installed with `npm ci` when
//! `interop/node_modules` is missing.
//!
//! Without node and npm these tests say that they skipped, unless
//! `STEADFAST_REQUIRE_SERVICES=1` is set, in which case they fail.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{data, sha256, start};
use steadfast_backoff::Backoff;
use steadfast_chunk_upload::client::{ClientConfig, Uploader};
use steadfast_chunk_upload::server::ServerConfig;
use steadfast_testkit::{Direction, Fault, FaultProxy};
use tokio_util::sync::CancellationToken;

fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("interop")
}

/// Whether node is usable, installing the pinned packages first if needed.
fn node_ready() -> bool {
    let has = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !has("node") || !has("npm") {
        let required = std::env::var("STEADFAST_REQUIRE_SERVICES").is_ok_and(|v| v == "1");
        assert!(
            !required,
            "node and npm are required (STEADFAST_REQUIRE_SERVICES=1) but not installed"
        );
        eprintln!("skipped: node and npm are not installed, so the tus interop tests cannot run");
        return false;
    }

    // Tests run as parallel processes. Each that finds no packages installs into a private
    // directory and renames the result into place; the first rename wins.
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = IN_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let target = interop_dir().join("node_modules");
    if !target.join("tus-js-client").exists() {
        let staging = interop_dir().join(format!(".install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        for name in ["package.json", "package-lock.json"] {
            std::fs::copy(interop_dir().join(name), staging.join(name)).unwrap();
        }
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&staging)
            .status()
            .unwrap();
        assert!(status.success(), "npm ci failed in {}", staging.display());
        let _ = std::fs::rename(staging.join("node_modules"), &target);
        let _ = std::fs::remove_dir_all(&staging);
        assert!(
            target.join("tus-js-client").exists(),
            "the npm packages are not in place"
        );
    }
    true
}

fn backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(10))
        .max_delay(Duration::from_millis(200))
        .max_attempts(10)
}

/// Runs tus-js-client to the end; returns its stdout.
async fn tus_js_client(endpoint: &str, file: &Path, chunk: u64, mode: &str) -> String {
    let output = tokio::process::Command::new("node")
        .arg(interop_dir().join("tus-client.mjs"))
        .args([endpoint, file.to_str().unwrap(), &chunk.to_string(), mode])
        .current_dir(interop_dir())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        output.status.success(),
        "tus-js-client failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn stored_on_ours(server: &common::TestServer, stdout: &str) -> Vec<u8> {
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("url "))
        .expect("no url line");
    let id = url.rsplit('/').next().unwrap().parse().unwrap();
    std::fs::read(server.server.store().data_path(&id)).unwrap()
}

#[tokio::test]
async fn interop_tus_js_client_uploads_to_our_server() {
    if !node_ready() {
        return;
    }
    let server = start(ServerConfig::default()).await;
    let source = data(3 << 20, 61);
    let file = server.dir.path().join("js.bin");
    std::fs::write(&file, &source).unwrap();
    let stdout = tus_js_client(&server.endpoint(), &file, 1 << 20, "plain").await;
    assert_eq!(sha256(&stored_on_ours(&server, &stdout)), sha256(&source));
    let info = &server.completed.lock().unwrap()[0];
    assert_eq!(info.metadata.get_str("filename"), Some("interop.bin"));
}

#[tokio::test]
async fn interop_tus_js_client_resumes_an_aborted_upload_on_our_server() {
    if !node_ready() {
        return;
    }
    let server = start(ServerConfig::default()).await;
    let source = data(4 << 20, 62);
    let file = server.dir.path().join("js.bin");
    std::fs::write(&file, &source).unwrap();
    let stdout = tus_js_client(&server.endpoint(), &file, 512 << 10, "abort-resume").await;
    let resumed_at: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("resumed-at "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (2 << 20..4 << 20).contains(&resumed_at),
        "resumed at {resumed_at}"
    );
    assert_eq!(sha256(&stored_on_ours(&server, &stdout)), sha256(&source));
}

#[tokio::test]
async fn interop_tus_js_client_recovers_from_a_cut_connection_to_our_server() {
    if !node_ready() {
        return;
    }
    let server = start(ServerConfig::default()).await;
    let source = data(4 << 20, 63);
    let file = server.dir.path().join("js.bin");
    std::fs::write(&file, &source).unwrap();

    // The first connection dies after 2.5 MiB; later ones pass.
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    proxy.set_fault(Fault::CutAfter {
        direction: Direction::ToTarget,
        bytes: 5 << 19,
    });
    let endpoint = format!("http://{}/files", proxy.local_addr());
    let client =
        tokio::spawn(async move { tus_js_client(&endpoint, &file, 1 << 20, "plain").await });
    proxy.wait_for_accepts(1).await;
    proxy.set_fault_for_new(Fault::PassThrough);
    let stdout = client.await.unwrap();

    assert!(
        proxy.stats().connections_accepted >= 2,
        "the connection was never cut"
    );
    assert_eq!(sha256(&stored_on_ours(&server, &stdout)), sha256(&source));
}

struct NodeServer {
    child: Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tus_node_server() -> NodeServer {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new("node")
        .arg(interop_dir().join("tus-server.mjs"))
        .arg(dir.path())
        .current_dir(interop_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("listening ")
        .expect("@tus/server did not start")
        .to_owned();
    NodeServer {
        child,
        endpoint,
        dir,
    }
}

fn stored_on_node(server: &NodeServer, url: &str) -> Vec<u8> {
    std::fs::read(server.dir.path().join(url.rsplit('/').next().unwrap())).unwrap()
}

#[tokio::test]
async fn interop_our_client_uploads_to_tus_node_server() {
    if !node_ready() {
        return;
    }
    let node = tus_node_server();
    let source = data(3 << 20, 64);
    let file = node.dir.path().join("ours.src");
    std::fs::write(&file, &source).unwrap();
    let uploader = Uploader::builder(node.endpoint.clone())
        .config(ClientConfig {
            chunk_size: 1 << 20,
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();
    let done = uploader.upload_file(&file).run().await.unwrap();
    assert_eq!(sha256(&stored_on_node(&node, &done.url)), sha256(&source));
}

#[tokio::test]
async fn interop_our_client_resumes_on_tus_node_server() {
    if !node_ready() {
        return;
    }
    let node = tus_node_server();
    let source = data(6 << 20, 65);
    let file = node.dir.path().join("ours.src");
    std::fs::write(&file, &source).unwrap();

    // Behind a proxy that cuts the first connection after 1.5 MiB.
    let addr: std::net::SocketAddr = node
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches("/files")
        .parse()
        .unwrap();
    let proxy = FaultProxy::start(addr).await.unwrap();
    proxy.set_fault(Fault::CutAfter {
        direction: Direction::ToTarget,
        bytes: 3 << 19,
    });
    let uploader = Uploader::builder(format!("http://{}/files", proxy.local_addr()))
        .config(ClientConfig {
            chunk_size: 1 << 20,
            ..ClientConfig::default()
        })
        .backoff(backoff())
        .build()
        .unwrap();

    // First run: cut by the proxy, recovered through HEAD; cancelled half-way.
    let cancel = CancellationToken::new();
    let upload = uploader.upload_file(&file).cancel(cancel.clone());
    let mut progress = upload.progress();
    let run = tokio::spawn(upload.run());
    proxy.wait_for_accepts(1).await;
    proxy.set_fault_for_new(Fault::PassThrough);
    while progress.borrow_and_update().acked < 3 << 20 {
        progress.changed().await.unwrap();
    }
    cancel.cancel();
    assert!(run.await.unwrap().unwrap_err().is_cancelled());

    // Second run with the same uploader (same URL store): resumes, does not start over.
    let upload = uploader.upload_file(&file);
    let progress = upload.progress();
    let done = upload.run().await.unwrap();
    assert!(
        progress.borrow().sent <= 4 << 20,
        "resent {} bytes",
        progress.borrow().sent
    );
    assert!(proxy.stats().connections_accepted >= 2);
    let uploads = std::fs::read_dir(node.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".json")
        })
        .count();
    assert_eq!(uploads, 1, "the second run created a new upload");
    assert_eq!(sha256(&stored_on_node(&node, &done.url)), sha256(&source));
}
