//! A worker process for the crash tests of `steadfast-jobqueue`.
//!
//! It runs a worker on a SQLite queue file so that a test can kill it with
//! SIGKILL mid-job (or let its handler abort the process) and check that a
//! new process recovers every job. Not meant for production use.
//!
//! Usage: `steadfast-queue-crash-worker <db> <marker-file> <mode> <lease-ms>`
//! where mode is `sleep` (each job sleeps its `ms`, then completes) or
//! `abort` (the handler aborts the process). Every attempt appends a line
//! `start <id> <attempt>` to the marker file before its work, and `done <id>`
//! after it. The process exits once no job is waiting or running.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use steadfast_jobqueue::{Job, JobContext, JobError, Queue, SqliteStore, Store};
use tokio_util::sync::CancellationToken;

/// The job the crash tests enqueue.
#[derive(Serialize, Deserialize)]
struct CrashJob {
    ms: u64,
}

impl Job for CrashJob {
    const KIND: &'static str = "crash_test";
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, db, marker, mode, lease_ms] = args.as_slice() else {
        eprintln!(
            "usage: steadfast-queue-crash-worker <db> <marker-file> <sleep|abort> <lease-ms>"
        );
        return ExitCode::from(2);
    };
    let Ok(lease_ms) = lease_ms.parse::<u64>() else {
        eprintln!("lease-ms must be a number of milliseconds");
        return ExitCode::from(2);
    };
    let abort = match mode.as_str() {
        "sleep" => false,
        "abort" => true,
        other => {
            eprintln!("unknown mode {other:?}");
            return ExitCode::from(2);
        }
    };

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(
        PathBuf::from(db),
        PathBuf::from(marker),
        abort,
        lease_ms,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(
    db: PathBuf,
    marker: PathBuf,
    abort: bool,
    lease_ms: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let queue = Queue::new(SqliteStore::open(&db).await?);
    let lease = Duration::from_millis(lease_ms);
    let handler = move |job: CrashJob, cx: JobContext| {
        let marker = marker.clone();
        async move {
            append(&marker, &format!("start {} {}", cx.id(), cx.attempt()));
            if abort {
                std::process::abort();
            }
            tokio::time::sleep(Duration::from_millis(job.ms)).await;
            append(&marker, &format!("done {}", cx.id()));
            Ok::<_, JobError>(())
        }
    };
    let worker = queue
        .worker()
        .queue("default", 4)
        .lease(lease)
        .heartbeat(lease / 4)
        .sweep_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .handle(handler)
        .build()?;

    let stop = CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = queue.store().stats().await?;
        let active = stats.active();
        if active == 0 {
            break;
        }
    }
    stop.cancel();
    running.await?;
    Ok(())
}

/// Appends a line and syncs it, so the test sees it even after a SIGKILL.
fn append(path: &PathBuf, line: &str) {
    let written = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| {
            // One write per line: with O_APPEND it cannot interleave with the
            // lines of another worker process.
            file.write_all(format!("{line}\n").as_bytes())?;
            file.sync_all()
        });
    if let Err(e) = written {
        eprintln!("cannot write marker {}: {e}", path.display());
    }
}
