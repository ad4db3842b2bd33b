//! Retrying a flaky call with `steadfast::backoff`: a schedule with jitter, a hook that
//! reports each retry, a server hint, and a budget shared by concurrent callers.
//!
//! Run with `cargo run --example retry`.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use steadfast::backoff::{Backoff, ErrorClass, RetryBudget, retry, retry_after};

/// Fails with a reset connection until it has been called `failures` times.
async fn flaky(calls: &AtomicU32, failures: u32) -> Result<&'static str, io::Error> {
    if calls.fetch_add(1, Ordering::SeqCst) < failures {
        return Err(io::Error::from(io::ErrorKind::ConnectionReset));
    }
    Ok("done")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let policy = Backoff::exponential(Duration::from_millis(50))
        .max_delay(Duration::from_secs(1))
        .max_attempts(5);

    println!(
        "delays of this policy (seed 7): {:?}",
        policy.schedule().with_seed(7).collect::<Vec<_>>()
    );

    let calls = AtomicU32::new(0);
    let answer = retry(&policy, || flaky(&calls, 2))
        .notify(|error: &io::Error, attempt, delay| {
            println!("attempt {attempt} failed ({error}); next try in {delay:?}");
        })
        .await?;
    println!(
        "answer after {} calls: {answer}",
        calls.load(Ordering::SeqCst)
    );

    // A server that asks for an hour is not waited for: the error says so.
    let hint = retry_after::parse_now("3600").ok();
    let error = retry(&policy, || async {
        Err::<(), _>(io::Error::other("503 Service Unavailable"))
    })
    .classify_with(|_: &io::Error| ErrorClass::from_http_status(503).with_hint(hint))
    .await
    .unwrap_err();
    println!("server hint: {error}");

    // Ten callers share one budget against a dependency that is down.
    let budget = RetryBudget::new(Duration::from_secs(10), 1, 0.2)?;
    let down = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (budget, down) = (budget.clone(), down.clone());
        tasks.push(tokio::spawn(async move {
            retry(
                &Backoff::exponential(Duration::from_millis(20)).max_attempts(4),
                || flaky(&down, u32::MAX),
            )
            .budget(budget)
            .await
            .map_err(|error| error.reason())
        }));
    }
    for task in tasks {
        let _ = task.await?;
    }
    println!(
        "10 callers x 4 attempts made {} calls instead of 40 thanks to the budget",
        down.load(Ordering::SeqCst)
    );
    Ok(())
}
