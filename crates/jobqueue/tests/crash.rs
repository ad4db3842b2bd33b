//! Real crash tests: worker processes on a SQLite file killed with SIGKILL
//! or aborting themselves mid-job, and new processes recovering every job.
//! These run in real time with short leases.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use steadfast_jobqueue::{FailureKind, Job, JobId, JobState, NewJob, Queue, SqliteStore, Store};

const WORKER: &str = env!("CARGO_BIN_EXE_steadfast-queue-crash-worker");

#[derive(serde::Serialize, serde::Deserialize)]
struct CrashJob {
    ms: u64,
}

impl Job for CrashJob {
    const KIND: &'static str = "crash_test";
}

fn spawn_worker(db: &Path, marker: &Path, mode: &str, lease_ms: u64) -> Child {
    Command::new(WORKER)
        .arg(db)
        .arg(marker)
        .arg(mode)
        .arg(lease_ms.to_string())
        .spawn()
        .expect("start the worker process")
}

fn markers(marker: &Path) -> Vec<String> {
    std::fs::read_to_string(marker)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn wait_for(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success() || status.code().is_none(),
                "worker failed: {status}"
            );
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("worker process did not finish in {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn enqueue(db: &Path, jobs: Vec<NewJob>) -> Vec<JobId> {
    let queue = Queue::new(SqliteStore::open(db).await.unwrap());
    let ids = queue
        .enqueue_many(jobs)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    queue.store().close().await;
    ids
}

#[tokio::test]
async fn jq_01_sigkilled_worker_process_jobs_are_recovered_by_a_new_process() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let marker = dir.path().join("marker");
    let jobs = (0..12)
        .map(|_| NewJob::new(&CrashJob { ms: 400 }).unwrap())
        .collect();
    let ids = enqueue(&db, jobs).await;

    let mut first = spawn_worker(&db, &marker, "sleep", 2000);
    wait_for("the first jobs to start", Duration::from_secs(10), || {
        markers(&marker).iter().any(|l| l.starts_with("start"))
    });
    std::thread::sleep(Duration::from_millis(150));
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    let store = SqliteStore::open(&db).await.unwrap();
    let running = store
        .list(&steadfast_jobqueue::ListFilter::state(JobState::Running))
        .await
        .unwrap();
    assert!(
        !running.is_empty(),
        "jobs were running when the worker died"
    );
    assert_eq!(
        store.list(&Default::default()).await.unwrap().len(),
        12,
        "no job missing"
    );

    let mut second = spawn_worker(&db, &marker, "sleep", 2000);
    wait_exit(&mut second, Duration::from_secs(30));

    for id in &ids {
        let job = store.get(*id).await.unwrap().expect("job kept");
        assert_eq!(job.state, JobState::Completed, "job {id}");
    }
    for job in running {
        let after = store.get(job.id).await.unwrap().unwrap();
        assert_eq!(
            after.attempt, 2,
            "the interrupted job ran again as attempt 2"
        );
        assert_eq!(after.errors[0].kind, FailureKind::WorkerLost);
    }
    let lines = markers(&marker);
    let done = lines.iter().filter(|l| l.starts_with("done")).count();
    assert_eq!(done, 12, "every job finished once: {lines:?}");
}

#[tokio::test]
async fn jq_06_job_aborting_its_worker_process_runs_exactly_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let marker = dir.path().join("marker");
    let id = enqueue(
        &db,
        vec![NewJob::new(&CrashJob { ms: 0 }).unwrap().max_attempts(2)],
    )
    .await[0];

    let mut starts_with_runs = Vec::new();
    for start in 1..=5 {
        let before = markers(&marker).len();
        let mut worker = spawn_worker(&db, &marker, "abort", 1000);
        wait_exit(&mut worker, Duration::from_secs(20));
        starts_with_runs.push((start, markers(&marker).len() - before));
    }

    let runs = markers(&marker);
    assert_eq!(
        runs,
        vec![format!("start {id} 1"), format!("start {id} 2")],
        "exactly two executions"
    );
    assert_eq!(
        starts_with_runs[2..],
        [(3, 0), (4, 0), (5, 0)],
        "starts 3 to 5 run no handler"
    );
    let store = SqliteStore::open(&db).await.unwrap();
    let job = store.get(id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Dead);
    assert_eq!(job.attempt, 2);
    let last = job.last_error().unwrap();
    assert_eq!(last.kind, FailureKind::WorkerLost);
    assert!(last.message.contains("worker lost"), "{}", last.message);
}

#[tokio::test]
async fn jq_09_variant_sigkilled_worker_job_restarts_within_lease_and_a_poll() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let marker = dir.path().join("marker");
    let id = enqueue(&db, vec![NewJob::new(&CrashJob { ms: 60_000 }).unwrap()]).await[0];

    let mut first = spawn_worker(&db, &marker, "sleep", 5000);
    wait_for("the job to start", Duration::from_secs(10), || {
        markers(&marker).len() == 1
    });
    first.kill().unwrap();
    first.wait().unwrap();
    let killed_at = Instant::now();

    let mut second = spawn_worker(&db, &marker, "sleep", 5000);
    wait_for("the second start", Duration::from_secs(10), || {
        markers(&marker).len() == 2
    });
    let restarted = killed_at.elapsed();
    second.kill().unwrap();
    second.wait().unwrap();
    // Lease 5 s, plus the sweep (100 ms) and poll (50 ms) intervals and
    // process start-up.
    assert!(
        restarted <= Duration::from_millis(5000 + 100 + 50 + 1000),
        "restarted after {restarted:?}"
    );
    assert_eq!(markers(&marker)[1], format!("start {id} 2"));
}

#[tokio::test]
async fn two_worker_processes_on_one_file_never_run_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    let marker = dir.path().join("marker");
    let ids = enqueue(
        &db,
        (0..200)
            .map(|_| NewJob::new(&CrashJob { ms: 5 }).unwrap())
            .collect(),
    )
    .await;

    let mut workers = [
        spawn_worker(&db, &marker, "sleep", 2000),
        spawn_worker(&db, &marker, "sleep", 2000),
    ];
    for worker in &mut workers {
        wait_exit(worker, Duration::from_secs(60));
    }

    let lines = markers(&marker);
    let mut started: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("start"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        started.len(),
        200,
        "each job started once across both processes"
    );
    started.sort_unstable();
    started.dedup();
    assert_eq!(started.len(), 200);
    let store = SqliteStore::open(&db).await.unwrap();
    for id in ids {
        let job = store.get(id).await.unwrap().unwrap();
        assert_eq!(
            (job.state, job.attempt),
            (JobState::Completed, 1),
            "job {id}"
        );
    }
}
