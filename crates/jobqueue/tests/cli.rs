//! The `steadfast-queue` admin command line against a SQLite queue file.

use std::path::Path;
use std::process::Command;

use steadfast_jobqueue::{
    ClaimRequest, Completion, FailureKind, Finish, JobId, JobState, LeaseRef, SqliteStore, Store,
};

const CLI: &str = env!("CARGO_BIN_EXE_steadfast-queue");

fn cli(db: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLI)
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .expect("run steadfast-queue");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stdout, stderr)
}

fn ok(db: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(db, args);
    assert!(success, "steadfast-queue {args:?} failed: {stderr}");
    stdout
}

/// Claims every job of `kind` and fails it for good, as a worker would.
async fn kill_all(db: &Path, kind: &str) {
    let store = SqliteStore::open(db).await.unwrap();
    let req = ClaimRequest {
        queue: "default".into(),
        kinds: vec![kind.into()],
        limit: 100,
        worker: "test".into(),
        lease: std::time::Duration::from_secs(60),
    };
    let claimed = store.claim(&req).await.unwrap();
    let dead = claimed
        .iter()
        .map(|j| Completion {
            lease: LeaseRef {
                id: j.id,
                lease: j.lease_number,
            },
            finish: Finish::Dead {
                kind: FailureKind::Permanent,
                message: "card declined".into(),
            },
        })
        .collect();
    store.finish(dead).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn cli_enqueues_lists_inspects_redrives_and_purges() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");

    let out = ok(
        &db,
        &[
            "enqueue",
            "charge",
            r#"{"cents": 500}"#,
            "--max-attempts",
            "3",
            "--unique-key",
            "order-1",
        ],
    );
    assert_eq!(out.trim(), "enqueued job 1");
    let out = ok(
        &db,
        &[
            "enqueue",
            "charge",
            r#"{"cents": 500}"#,
            "--unique-key",
            "order-1",
        ],
    );
    assert_eq!(out.trim(), "duplicate of job 1");
    let email = ok(
        &db,
        &[
            "enqueue",
            "email",
            r#"{"to": "ada"}"#,
            "--delay-ms",
            "60000",
        ],
    );
    let email: i64 = email
        .trim()
        .trim_start_matches("enqueued job ")
        .parse()
        .unwrap();

    let (success, _, stderr) = cli(&db, &["enqueue", "charge", "{not json"]);
    assert!(!success);
    assert!(stderr.contains("not valid JSON"), "{stderr}");

    let listing = ok(&db, &["list"]);
    assert!(
        listing.contains("charge") && listing.contains("available"),
        "{listing}"
    );
    assert!(listing.contains("scheduled"), "{listing}");
    assert!(ok(&db, &["list", "--state", "scheduled"]).contains("1 job(s)"));
    let (success, _, stderr) = cli(&db, &["list", "--state", "bogus"]);
    assert!(!success && stderr.contains("unknown job state"), "{stderr}");

    kill_all(&db, "charge").await;
    let dead = ok(&db, &["list", "--state", "dead"]);
    assert!(
        dead.contains("card declined") && dead.contains("1 job(s)"),
        "{dead}"
    );

    let inspected: serde_json::Value = serde_json::from_str(&ok(&db, &["inspect", "1"])).unwrap();
    assert_eq!(inspected["state"], "dead");
    assert_eq!(inspected["payload"], r#"{"cents":500}"#);
    assert_eq!(inspected["errors"][0]["message"], "card declined");
    let (success, _, stderr) = cli(&db, &["inspect", "99"]);
    assert!(!success && stderr.contains("no job 99"), "{stderr}");

    assert_eq!(ok(&db, &["redrive", "1"]).trim(), "job 1: re-driven");
    assert_eq!(
        ok(&db, &["redrive", "1"]).trim(),
        "job 1: already queued; nothing changed"
    );
    let stats = ok(&db, &["stats"]);
    assert!(
        stats.contains("available  1") && stats.contains("scheduled  1"),
        "{stats}"
    );

    kill_all(&db, "charge").await;
    assert_eq!(ok(&db, &["purge", "--all"]).trim(), "purged 1 dead job(s)");
    let store = SqliteStore::open(&db).await.unwrap();
    assert!(store.get(JobId::new(1)).await.unwrap().is_none());
    assert_eq!(
        store.get(JobId::new(email)).await.unwrap().unwrap().state,
        JobState::Scheduled
    );

    assert_eq!(
        ok(&db, &["cancel", &email.to_string()]).trim(),
        format!("job {email}: cancelled")
    );
    assert!(ok(&db, &["stats"]).contains("cancelled  1"));
}
