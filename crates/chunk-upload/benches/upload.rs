//! Upload throughput, memory and re-sent bytes over loopback.
//!
//! One file (1 GiB unless `STEADFAST_BENCH_SIZE_MIB` says otherwise) is sent:
//!
//! - as one plain streaming HTTP PUT to a server that streams it to disk (the baseline),
//! - by our client to our server, without and with SHA-256 checksums,
//! - by tus-js-client to @tus/server (when node and the interop packages are present),
//! - by our client through a proxy that cuts the connection at 50 %.
//!
//! Every client and server runs as a process of its own (this binary, re-executed with a
//! role), so that the peak resident memory of each role can be read from
//! `/proc/<pid>/status`. Results are printed as `bench <name>: <value> <unit>` lines.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use steadfast_chunk_upload::client::{ClientConfig, Uploader};
use steadfast_chunk_upload::protocol::ChecksumAlgorithm;
use steadfast_chunk_upload::server::{ServerConfig, TusServer};
use steadfast_chunk_upload::store::FileStore;
use steadfast_testkit::{Direction, Fault, FaultProxy};

const ROLE: &str = "STEADFAST_BENCH_ROLE";
const MIB: u64 = 1 << 20;

fn main() {
    if let Ok(role) = std::env::var(ROLE) {
        let args: Vec<String> = std::env::args()
            .skip(1)
            .filter(|a| a != "--bench")
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(run_role(&role, &args));
        return;
    }

    let size_mib: u64 = std::env::var("STEADFAST_BENCH_SIZE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let size = size_mib * MIB;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("source.bin");
    write_source(&file, size);
    let mib = size as f64 / MIB as f64;

    // Baseline: one plain streaming PUT, measured twice (first and last) and the faster
    // run kept, so that warm-up effects never flatter the tus figures.
    let put_rate = || {
        let put_server = spawn_server("put-server", &dir.path().join("put"));
        let put = run_client(&["put-client", &put_server.endpoint, file.to_str().unwrap()]);
        mib / put.elapsed.as_secs_f64()
    };
    let first_put_rate = put_rate();

    // Ours, without and with checksums.
    let ours_server = spawn_server("tus-server", &dir.path().join("ours"));
    let ours = run_client(&[
        "tus-client",
        &ours_server.endpoint,
        file.to_str().unwrap(),
        "none",
    ]);
    let server_kb = vm_hwm_kb(ours_server.child.id());
    drop(ours_server);
    let ours_rate = mib / ours.elapsed.as_secs_f64();

    let sha_server = spawn_server("tus-server", &dir.path().join("ours-sha"));
    let sha = run_client(&[
        "tus-client",
        &sha_server.endpoint,
        file.to_str().unwrap(),
        "sha256",
    ]);
    let sha_server_kb = vm_hwm_kb(sha_server.child.id());
    drop(sha_server);
    let sha_rate = mib / sha.elapsed.as_secs_f64();

    let put_rate = first_put_rate.max(put_rate());
    println!("bench put_baseline_throughput: {put_rate:.1} MiB/s");
    println!("bench tus_ours_throughput: {ours_rate:.1} MiB/s");
    println!(
        "bench tus_ours_vs_plain_put: {:.3} ratio",
        ours_rate / put_rate
    );
    println!("bench tus_ours_sha256_throughput: {sha_rate:.1} MiB/s");
    println!(
        "bench tus_ours_sha256_vs_plain_put: {:.3} ratio",
        sha_rate / put_rate
    );
    let client_mib = ours.hwm_kb.max(sha.hwm_kb) as f64 / 1024.0;
    println!("bench client_peak_rss: {client_mib:.1} MiB");
    let server_mib = server_kb.max(sha_server_kb) as f64 / 1024.0;
    println!("bench server_peak_rss: {server_mib:.1} MiB");

    // The reference implementations, when node is there.
    match tus_js_to_tus_node(&file, dir.path()) {
        Some(elapsed) => {
            let rate = mib / elapsed.as_secs_f64();
            println!("bench tus_js_client_to_tus_node_server_throughput: {rate:.1} MiB/s");
            println!(
                "bench tus_ours_vs_tus_js_node: {:.3} ratio",
                ours_rate / rate
            );
        }
        None => eprintln!(
            "tus-js-client -> @tus/server skipped: node or crates/chunk-upload/interop/node_modules missing"
        ),
    }

    // Re-sent bytes when the connection is cut at 50 %.
    let cut_server = spawn_server("tus-server", &dir.path().join("cut"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let target = cut_server
        .endpoint
        .trim_start_matches("http://")
        .trim_end_matches("/files")
        .parse()
        .unwrap();
    let proxy = runtime.block_on(FaultProxy::start(target)).unwrap();
    proxy.set_fault(Fault::CutAfter {
        direction: Direction::ToTarget,
        bytes: size / 2,
    });
    let endpoint = format!("http://{}/files", proxy.local_addr());
    let watcher = runtime.spawn(async move {
        proxy.wait_for_accepts(1).await;
        proxy.set_fault_for_new(Fault::PassThrough);
        proxy
    });
    let cut = run_client(&["tus-client", &endpoint, file.to_str().unwrap(), "none"]);
    let _proxy = runtime.block_on(watcher).unwrap();
    drop(cut_server);
    let resent_kib = cut.sent.saturating_sub(size) as f64 / 1024.0;
    println!("bench resent_after_cut_at_50pct: {resent_kib:.1} KiB");
}

fn write_source(path: &Path, size: u64) {
    let mut file = std::io::BufWriter::with_capacity(4 << 20, std::fs::File::create(path).unwrap());
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; MIB as usize];
    for _ in 0..size / MIB {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        file.write_all(&block).unwrap();
    }
    file.flush().unwrap();
}

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

fn spawn_server(role: &str, dir: &Path) -> Server {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, role)
        .arg(dir)
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
        .expect("server did not start")
        .to_owned();
    Server { child, endpoint }
}

struct ClientRun {
    elapsed: Duration,
    hwm_kb: u64,
    sent: u64,
}

fn run_client(args: &[&str]) -> ClientRun {
    let output = Command::new(std::env::current_exe().unwrap())
        .env(ROLE, args[0])
        .args(&args[1..])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{} failed: {stdout} {}",
        args[0],
        String::from_utf8_lossy(&output.stderr)
    );
    let field = |name: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    ClientRun {
        elapsed: Duration::from_micros(field("elapsed-us ")),
        hwm_kb: field("vmhwm "),
        sent: field("sent "),
    }
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(str::to_owned)
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn self_hwm_kb() -> u64 {
    vm_hwm_kb(std::process::id())
}

fn tus_js_to_tus_node(file: &Path, dir: &Path) -> Option<Duration> {
    let interop = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop");
    if !interop.join("node_modules").join("@tus").exists() {
        return None;
    }
    let store = dir.join("tus-node");
    std::fs::create_dir_all(&store).ok()?;
    let mut server = Command::new("node")
        .arg(interop.join("tus-server.mjs"))
        .arg(&store)
        .current_dir(&interop)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take()?)
        .read_line(&mut line)
        .ok()?;
    let endpoint = line.trim().strip_prefix("listening ")?.to_owned();
    let output = Command::new("node")
        .arg(interop.join("tus-client.mjs"))
        .args([&endpoint, file.to_str()?, &(64 * MIB).to_string(), "plain"])
        .current_dir(&interop)
        .output()
        .ok()?;
    let _ = server.kill();
    let _ = server.wait();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let ms: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("elapsed-ms "))?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_millis(ms))
}

async fn run_role(role: &str, args: &[String]) {
    match role {
        "tus-server" => {
            let store = FileStore::open(&args[0]).await.unwrap();
            let config = ServerConfig {
                max_size: None,
                ..ServerConfig::default()
            };
            let server = TusServer::builder(store).config(config).build().unwrap();
            serve(server.router()).await;
        }
        "put-server" => {
            let dir = PathBuf::from(&args[0]);
            std::fs::create_dir_all(&dir).unwrap();
            let app = axum::Router::new().route(
                "/upload",
                axum::routing::put(move |body: axum::body::Body| {
                    let path = dir.join("put.bin");
                    async move { put_to_file(&path, body).await }
                }),
            );
            serve(app).await;
        }
        "tus-client" => {
            let checksum = match args[2].as_str() {
                "none" => None,
                name => Some(name.parse::<ChecksumAlgorithm>().unwrap()),
            };
            let config = ClientConfig {
                chunk_size: 64 * MIB,
                checksum,
                ..ClientConfig::default()
            };
            let uploader = Uploader::builder(args[0].clone())
                .config(config)
                .build()
                .unwrap();
            let began = Instant::now();
            let upload = uploader.upload_file(&args[1]);
            let progress = upload.progress();
            upload.run().await.unwrap();
            report(began, progress.borrow().sent);
        }
        "put-client" => {
            let began = Instant::now();
            let file = tokio::fs::File::open(&args[1]).await.unwrap();
            let length = file.metadata().await.unwrap().len();
            let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                file,
                256 << 10,
            ));
            let url = args[0].replace("/files", "/upload");
            let response = reqwest::Client::new()
                .put(url)
                .header("content-length", length)
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "PUT answered {}",
                response.status()
            );
            report(began, length);
        }
        other => panic!("unknown bench role {other}"),
    }
}

fn report(began: Instant, sent: u64) {
    println!("elapsed-us {}", began.elapsed().as_micros());
    println!("sent {sent}");
    println!("vmhwm {}", self_hwm_kb());
}

/// Both servers announce the same shape of endpoint; the PUT client maps it to `/upload`.
async fn serve(app: axum::Router) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("listening http://{}/files", listener.local_addr().unwrap());
    axum::serve(listener, app).await.unwrap();
}

async fn put_to_file(path: &Path, body: axum::body::Body) -> http::StatusCode {
    use http_body_util::BodyExt as _;
    use tokio::io::AsyncWriteExt as _;

    let mut file = tokio::fs::File::create(path).await.unwrap();
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return http::StatusCode::BAD_REQUEST;
        };
        if let Ok(data) = frame.into_data() {
            file.write_all(&data).await.unwrap();
        }
    }
    file.flush().await.unwrap();
    file.sync_data().await.unwrap();
    http::StatusCode::NO_CONTENT
}
