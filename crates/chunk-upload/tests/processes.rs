//! Client and server as separate processes (the `steadfast-tus` binary): UP-08's memory
//! bounds, and uploads that survive killing the client or the server mid-way.

mod common;

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{data, sha256};

const BIN: &str = env!("CARGO_BIN_EXE_steadfast-tus");
const MIB: u64 = 1 << 20;

struct Server {
    child: Child,
    endpoint: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(store: &Path, addr: &str) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", store.to_str().unwrap(), "--addr", addr])
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
        .expect("no listening line")
        .to_owned();
    Server { child, endpoint }
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Runs an upload process to the end and returns (url, its VmHWM in kB).
fn upload(args: &[&str]) -> (String, u64) {
    let output = Command::new(BIN).arg("upload").args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "upload failed: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .unwrap();
    let hwm = stdout
        .lines()
        .find_map(|l| l.strip_prefix("vmhwm "))
        .unwrap()
        .parse()
        .unwrap();
    (url.split(' ').next().unwrap().to_owned(), hwm)
}

fn stored_file(store: &Path, url: &str) -> std::path::PathBuf {
    store.join(format!("{}.bin", url.rsplit('/').next().unwrap()))
}

/// Peaks (client chunked stream, server for it, server for one unchunked PATCH) in kB.
fn memory_run(size: u64) -> (u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let size_text = size.to_string();
    let chunk = (8 * MIB).to_string();

    let chunked_store = dir.path().join("chunked");
    let server = serve(&chunked_store, "127.0.0.1:0");
    let url_store = dir.path().join("urls.json");
    let (url, client_kb) = upload(&[
        &server.endpoint,
        "--generate",
        &size_text,
        "--chunk",
        &chunk,
        "--checksum",
        "none",
        "--url-store",
        url_store.to_str().unwrap(),
    ]);
    let chunked_server_kb = vm_hwm_kb(server.child.id());
    let stored = stored_file(&chunked_store, &url);
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), size);
    // The binary generates the same bytes as `data(size, 1)`. Hashing 2 GiB twice in an
    // unoptimised test build takes over a minute, so the large run is checked by length.
    if size <= 256 * MIB {
        let source = data(size as usize, 1);
        assert_eq!(sha256(&std::fs::read(&stored).unwrap()), sha256(&source));
    }
    drop(server);

    let single_store = dir.path().join("single");
    let server = serve(&single_store, "127.0.0.1:0");
    let (url, _) = upload(&[&server.endpoint, "--generate", &size_text, "--single-patch"]);
    let single_server_kb = vm_hwm_kb(server.child.id());
    assert_eq!(
        std::fs::metadata(stored_file(&single_store, &url))
            .unwrap()
            .len(),
        size
    );
    (
        client_kb,
        chunked_server_kb,
        single_server_kb.max(chunked_server_kb),
    )
}

#[test]
fn up_08_memory_does_not_grow_with_file_size() {
    let small = memory_run(256 * MIB);
    let large = memory_run(2048 * MIB);
    let limit = 64 * 1024;
    for (name, s, l) in [("client", small.0, large.0), ("server", small.2, large.2)] {
        eprintln!("{name}: peak {s} kB at 256 MiB, {l} kB at 2 GiB");
        assert!(
            s < limit && l < limit,
            "{name} peak over 64 MiB: {s} / {l} kB"
        );
        assert!(
            s.abs_diff(l) < 8 * 1024,
            "{name} peak grew with size: {s} -> {l} kB"
        );
    }
}

fn wait_for_bytes(store: &Path, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored: u64 = std::fs::read_dir(store)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".bin"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        if stored >= at_least {
            return;
        }
        assert!(Instant::now() < deadline, "the upload made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn killing_the_client_mid_upload_then_rerunning_resumes_to_an_identical_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = data((48 * MIB) as usize, 81);
    let file = dir.path().join("source.bin");
    std::fs::write(&file, &source).unwrap();
    let store = dir.path().join("store");
    let server = serve(&store, "127.0.0.1:0");
    let url_store = dir.path().join("urls.json");
    let args = [
        server.endpoint.as_str(),
        "--file",
        file.to_str().unwrap(),
        "--chunk",
        "1048576",
        "--url-store",
        url_store.to_str().unwrap(),
        "--checksum",
        "crc32",
    ];

    let mut client = Command::new(BIN)
        .arg("upload")
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_bytes(&store, 8 * MIB);
    client.kill().unwrap();
    client.wait().unwrap();

    let (url, _) = upload(&args);
    let uploads = std::fs::read_dir(&store)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".info")
        })
        .count();
    assert_eq!(
        uploads, 1,
        "the rerun created a new upload instead of resuming"
    );
    assert_eq!(
        sha256(&std::fs::read(stored_file(&store, &url)).unwrap()),
        sha256(&source)
    );
}

#[test]
fn killing_the_server_mid_upload_then_restarting_it_completes_an_identical_file() {
    let dir = tempfile::tempdir().unwrap();
    let source = data((48 * MIB) as usize, 82);
    let file = dir.path().join("source.bin");
    std::fs::write(&file, &source).unwrap();
    let store = dir.path().join("store");
    let mut server = serve(&store, "127.0.0.1:0");
    let addr = server
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches("/files")
        .to_owned();
    let url_store = dir.path().join("urls.json");

    let client = Command::new(BIN)
        .arg("upload")
        .args([
            &server.endpoint,
            "--file",
            file.to_str().unwrap(),
            "--chunk",
            "1048576",
        ])
        .args([
            "--url-store",
            url_store.to_str().unwrap(),
            "--checksum",
            "sha256",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_bytes(&store, 8 * MIB);
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    server = serve(&store, &addr);

    let output = client.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "client failed: {stdout}");
    let url = stdout
        .lines()
        .find_map(|l| l.strip_prefix("done "))
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(
        sha256(&std::fs::read(stored_file(&store, url)).unwrap()),
        sha256(&source)
    );
    drop(server);
}
