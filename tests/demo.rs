//! The ingest demo end to end, in one process and on loopback: the same server and client
//! modules `cargo xtask demo` runs as programs, on a small generated directory.
//!
//! The first client run is interrupted (as Ctrl-C would) once half the bytes are in; the
//! second run, on the same state directories, resumes, and the server is restarted
//! under it midway. The report must account for every file with no integrity mismatch.

#[path = "../examples/ingest/client.rs"]
mod client;
#[path = "../examples/ingest/server.rs"]
mod server;
#[path = "../examples/ingest/wire.rs"]
mod wire;

use std::path::Path;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};
use steadfast::batch::CancellationToken;
use steadfast::shutdown::{Outcome, Phase};
use tokio::sync::mpsc;

use crate::client::{ClientOptions, DemoReport};
use crate::server::{Running, ServerOptions};

/// Files in the generated directory that the client must upload (the skipped `target/`
/// and `.git/` entries are not counted).
const FILES: u64 = 36;

/// Generous: the scenario takes a few seconds on loopback.
const LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_run_resumes_and_survives_a_server_restart() {
    steadfast_testkit::init_tracing();
    tokio::time::timeout(LIMIT, scenario(None))
        .await
        .expect("the demo scenario finished in time");
}

/// The same scenario with the job queue in PostgreSQL (`--queue postgres://...`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_queue_gives_the_same_report() {
    steadfast_testkit::init_tracing();
    let Ok(url) = std::env::var("STEADFAST_TEST_POSTGRES_URL") else {
        assert!(
            !std::env::var("STEADFAST_REQUIRE_SERVICES").is_ok_and(|value| value == "1"),
            "STEADFAST_REQUIRE_SERVICES is set but STEADFAST_TEST_POSTGRES_URL is not"
        );
        eprintln!("skipped: set STEADFAST_TEST_POSTGRES_URL to run the demo on PostgreSQL");
        return;
    };
    tokio::time::timeout(LIMIT, scenario(Some(url)))
        .await
        .expect("the demo scenario finished in time");
}

async fn scenario(postgres: Option<String>) {
    let root = tempfile::tempdir().expect("temporary directory");
    let dir = root.path().join("input");
    let bytes = generate(&dir, 7);
    let server_options = ServerOptions {
        state: root.path().join("server"),
        postgres,
        transient_rate: 0.3,
        dead_pattern: "*.bad".to_owned(),
        signals: false,
        ..ServerOptions::default()
    };
    let mut server = server::start(server_options.clone())
        .await
        .expect("the server starts");
    let client_options = ClientOptions {
        dir: dir.clone(),
        server: server.addr,
        state: root.path().join("client"),
        concurrency: 4,
        cut_rate: 0.2,
        status_rate: 0.1,
        chunk_size: 64 << 10,
        progress: false,
        verify_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };

    // Run 1: interrupted as Ctrl-C would, once half the bytes are in.
    let cancel = CancellationToken::new();
    let interrupt = cancel.clone();
    let first = client::run(
        client_options.clone(),
        cancel,
        Some(Box::new(move || interrupt.cancel())),
    )
    .await
    .expect("the first run reports");
    assert!(first.interrupted, "{}", first.summary());
    assert!(!first.is_success(), "{}", first.summary());
    assert_eq!(first.files, FILES, "{}", first.summary());
    assert!(
        first.uploaded >= 1 && first.uploaded < FILES,
        "{}",
        first.summary()
    );

    // Run 2: same state; the server is restarted under it midway.
    let (midway_tx, mut midway_rx) = mpsc::unbounded_channel();
    let second = client::run(
        client_options,
        CancellationToken::new(),
        Some(Box::new(move || {
            let _ = midway_tx.send(());
        })),
    );
    let restart = async {
        if midway_rx.recv().await.is_some() {
            // Restart under an open progress socket, so that it has to reconnect.
            wait_for_session(server.addr).await;
            server = restart_server(server, &server_options).await;
        }
        server
    };
    let (second, server) = tokio::join!(second, restart);
    let second = second.expect("the second run reports");
    assert_resumed_and_complete(&second, &first, bytes);

    // A graceful stop of the restarted server, through every phase.
    server.handle.trigger();
    let stopped = server.finished.await.expect("the server's shutdown task");
    assert_eq!(stopped.outcome(), Outcome::Clean, "{stopped}");
    let phases: Vec<Phase> = stopped.phases().iter().map(|(phase, _)| *phase).collect();
    assert_eq!(phases, [Phase::Drain, Phase::Teardown], "{stopped}");
}

fn assert_resumed_and_complete(second: &DemoReport, first: &DemoReport, bytes: u64) {
    let shown = format!("{}\n{}", second.lines().join("\n"), second.summary());
    assert!(second.is_success(), "{shown}");
    assert!(second.accounted(), "{shown}");
    assert_eq!((second.files, second.bytes), (FILES, bytes), "{shown}");
    assert_eq!(second.mismatches, 0, "{shown}");
    assert_eq!(second.dead, 1, "exactly the file matching *.bad: {shown}");
    assert_eq!(second.verified, FILES - 1, "{shown}");
    assert_eq!((second.failed, second.pending), (0, 0), "{shown}");
    assert_eq!(
        second.skipped, first.uploaded,
        "files done in the first run are not sent again: {shown}"
    );
    assert_eq!(second.skipped + second.uploaded, FILES, "{shown}");
    assert!(second.resumed >= 1, "{shown}");
    assert!(
        second.reconnects >= 1,
        "the restart reconnects the socket: {shown}"
    );
    assert!(
        second.retries >= 1,
        "a 30 % transient rate retries: {shown}"
    );
    assert!(
        second.attempts > second.verified + second.dead,
        "retried attempts are counted: {shown}"
    );
    assert_eq!(
        second.problems.len(),
        1,
        "only the dead letter is a problem: {shown}"
    );
    assert!(
        second.problems[0].0.ends_with("poison.bad")
            && second.problems[0].1.contains("dead-letter pattern"),
        "{shown}"
    );
    assert!(second.summary().starts_with(&format!(
        "demo: files={FILES} bytes={bytes} resumed={} retries={} dead=1 mismatches=0 ",
        second.resumed, second.retries
    )));
}

/// Waits until the server has a progress WebSocket session open.
async fn wait_for_session(addr: std::net::SocketAddr) {
    let http = reqwest::Client::new();
    loop {
        let report = match http.get(format!("http://{addr}/report")).send().await {
            Ok(response) => response.bytes().await.ok(),
            Err(_) => None,
        };
        let sessions = report
            .and_then(|body| serde_json::from_slice::<wire::Report>(&body).ok())
            .map_or(0, |report| report.sessions);
        if sessions > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops the server gracefully and starts it again on the same port and state.
async fn restart_server(server: Running, options: &ServerOptions) -> Running {
    server.handle.trigger();
    let stopped = server.finished.await.expect("the server's shutdown task");
    assert_eq!(stopped.outcome(), Outcome::Clean, "{stopped}");

    let options = ServerOptions {
        listen: server.addr,
        ..options.clone()
    };
    let restarted = server::start(options).await.expect("the server restarts");
    assert_eq!(restarted.addr, server.addr);
    restarted
}

/// Writes the input directory: small and medium files in nested folders, one file that
/// the server dead-letters, and folders the client must skip. Returns the bytes to upload.
fn generate(dir: &Path, seed: u64) -> u64 {
    let mut dice = SmallRng::seed_from_u64(seed);
    let mut total = 0;
    let mut write = |path: &Path, len: usize, counted: bool| {
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        let content: Vec<u8> = (0..len).map(|_| dice.random()).collect();
        std::fs::write(path, content).expect("write");
        if counted {
            total += len as u64;
        }
    };

    for index in 0..30 {
        let len = 1_000 + index * 997;
        write(
            &dir.join(format!("docs/part-{}/note-{index}.txt", index % 3)),
            len,
            true,
        );
    }
    for index in 0..4 {
        write(
            &dir.join(format!("media/clip-{index}.bin")),
            300_000 + index * 50_000,
            true,
        );
    }
    write(&dir.join("empty.txt"), 0, true);
    write(&dir.join("inbox/poison.bad"), 2_000, true);
    write(&dir.join("target/debug/skipped.o"), 5_000, false);
    write(&dir.join(".git/objects/skipped"), 5_000, false);
    total
}

#[test]
fn dead_letter_patterns_match_whole_relative_paths() {
    use crate::wire::glob_match;

    assert!(glob_match("*.lock", "Cargo.lock"));
    assert!(
        glob_match("*.lock", "crates/a/Cargo.lock"),
        "* spans slashes"
    );
    assert!(
        !glob_match("*.lock", "Cargo.lock.bak"),
        "the whole path must match"
    );
    assert!(glob_match("inbox/?oison.*", "inbox/poison.bad"));
    assert!(
        !glob_match("inbox/?oison.*", "inbox/oison.bad"),
        "? is exactly one"
    );
    assert!(
        glob_match("*a*b*", "xxaxxbxx"),
        "backtracking over several stars"
    );
    assert!(!glob_match("*a*b", "xxbxxa"));
    assert!(glob_match("", ""));
    assert!(!glob_match("", "x"));
}

#[test]
fn upload_urls_are_kept_without_their_origin() {
    use crate::client::path_of;

    assert_eq!(path_of("http://127.0.0.1:4000/files/ab12"), "/files/ab12");
    assert_eq!(path_of("https://host/files/ab12?x=1"), "/files/ab12?x=1");
    assert_eq!(path_of("http://host"), "http://host", "no path: kept as is");
    assert_eq!(path_of("/files/ab12"), "/files/ab12");
}
