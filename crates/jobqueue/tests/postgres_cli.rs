//! The `steadfast-queue` admin command line against a PostgreSQL queue in a
//! schema of its own.

#![cfg(all(feature = "postgres", feature = "cli"))]

mod postgres_support;

use std::process::Command;
use std::time::Duration;

use steadfast_jobqueue::{
    ClaimRequest, Completion, FailureKind, Finish, JobId, JobState, LeaseRef, Store,
};

const CLI: &str = env!("CARGO_BIN_EXE_steadfast-queue");

fn cli(db: &postgres_support::TestDb, args: &[&str]) -> (bool, String, String) {
    cli_in(db, &db.schema, args)
}

fn cli_in(db: &postgres_support::TestDb, schema: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(CLI)
        .args(["--db", &db.url, "--schema", schema])
        .args(args)
        .output()
        .expect("run steadfast-queue");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), stdout, stderr)
}

fn ok(db: &postgres_support::TestDb, args: &[&str]) -> String {
    let (success, stdout, stderr) = cli(db, args);
    assert!(success, "steadfast-queue {args:?} failed: {stderr}");
    stdout
}

fn id_of(line: &str) -> i64 {
    line.trim()
        .trim_start_matches("enqueued job ")
        .parse()
        .unwrap_or_else(|_| panic!("not an enqueue line: {line:?}"))
}

#[tokio::test]
async fn cli_administers_a_postgres_queue() {
    let Some(db) = postgres_support::database("cli") else {
        return;
    };

    let charge = id_of(&ok(
        &db,
        &[
            "enqueue",
            "charge",
            r#"{"cents": 500}"#,
            "--unique-key",
            "order-1",
        ],
    ));
    let again = ok(
        &db,
        &[
            "enqueue",
            "charge",
            r#"{"cents": 500}"#,
            "--unique-key",
            "order-1",
        ],
    );
    assert_eq!(again.trim(), format!("duplicate of job {charge}"));
    let email = id_of(&ok(
        &db,
        &[
            "enqueue",
            "email",
            r#"{"to": "ada"}"#,
            "--delay-ms",
            "60000",
        ],
    ));
    assert!(ok(&db, &["list", "--state", "scheduled"]).contains("1 job(s)"));

    // A worker fails the charge for good.
    let store = db.store().await;
    let claimed = store
        .claim(&ClaimRequest {
            queue: "default".into(),
            kinds: vec!["charge".into()],
            limit: 10,
            worker: "test".into(),
            lease: Duration::from_secs(60),
        })
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let lease = LeaseRef {
        id: claimed[0].id,
        lease: claimed[0].lease_number,
    };
    store
        .finish(vec![Completion {
            lease,
            finish: Finish::Dead {
                kind: FailureKind::Permanent,
                message: "card declined".into(),
            },
        }])
        .await
        .unwrap();

    let dead = ok(&db, &["list", "--state", "dead"]);
    assert!(dead.contains("card declined"), "{dead}");
    let inspected: serde_json::Value =
        serde_json::from_str(&ok(&db, &["inspect", &charge.to_string()])).unwrap();
    assert_eq!(inspected["state"], "dead");
    assert_eq!(inspected["errors"][0]["message"], "card declined");

    assert_eq!(
        ok(&db, &["redrive", &charge.to_string()]).trim(),
        format!("job {charge}: re-driven")
    );
    assert_eq!(
        store.get(JobId::new(charge)).await.unwrap().unwrap().state,
        JobState::Available
    );
    assert_eq!(
        ok(&db, &["cancel", &email.to_string()]).trim(),
        format!("job {email}: cancelled")
    );
    let stats = ok(&db, &["stats"]);
    assert!(
        stats.contains("available  1") && stats.contains("cancelled  1"),
        "{stats}"
    );

    let (success, _, stderr) = cli_in(&db, "Bad Name", &["stats"]);
    assert!(
        !success && stderr.contains("schema must be"),
        "a bad schema name is refused: {stderr}"
    );

    store.close().await;
    db.cleanup();
}
