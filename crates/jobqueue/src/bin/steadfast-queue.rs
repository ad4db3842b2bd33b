//! `steadfast-queue`: the admin command line of `steadfast-jobqueue`.
//!
//! Enqueue a JSON job, list and inspect jobs by state, re-drive and purge
//! dead letters, cancel waiting jobs and show statistics, against a SQLite
//! queue file (or, with the `postgres` feature, a `postgres://` URL).
//!
//! ```text
//! steadfast-queue --db jobs.db enqueue send_email '{"to":"ada@example.com"}'
//! steadfast-queue --db jobs.db list --state dead
//! steadfast-queue --db jobs.db inspect 42
//! steadfast-queue --db jobs.db redrive 42 43
//! steadfast-queue --db jobs.db purge --all
//! steadfast-queue --db jobs.db stats
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use steadfast_jobqueue::{
    Cancel, JSON_CODEC, JobId, JobRecord, JobState, ListFilter, NewJob, Purge, Queue, Redrive,
    SqliteStore, Store, Timestamp,
};

/// Administer a steadfast job queue.
#[derive(Debug, Parser)]
#[command(name = "steadfast-queue", version, about)]
struct Cli {
    /// The queue database: a SQLite file path, or a postgres:// URL when
    /// built with the `postgres` feature.
    #[arg(long, env = "STEADFAST_QUEUE_DB")]
    db: String,

    /// The PostgreSQL schema holding the queue (default `public`); only
    /// with a postgres:// URL.
    #[arg(long, env = "STEADFAST_QUEUE_SCHEMA")]
    schema: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enqueue a job with a JSON payload.
    Enqueue(EnqueueArgs),
    /// List jobs, optionally in one state.
    List(ListArgs),
    /// Show one job with its payload and full error history, as JSON.
    Inspect {
        /// The job id.
        id: i64,
    },
    /// Make dead jobs available again with a full attempt budget.
    Redrive(RedriveArgs),
    /// Delete dead jobs.
    Purge(PurgeArgs),
    /// Cancel waiting jobs.
    Cancel {
        /// The job ids.
        #[arg(required = true)]
        ids: Vec<i64>,
    },
    /// Show the number of jobs per state and the age of the oldest
    /// available job.
    Stats,
}

#[derive(Debug, Args)]
struct EnqueueArgs {
    /// The job kind (the handler's `Job::KIND`).
    kind: String,
    /// The payload, as JSON text.
    payload: String,
    /// The queue.
    #[arg(long, default_value = steadfast_jobqueue::DEFAULT_QUEUE)]
    queue: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Run no earlier than this many milliseconds from now.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Attempts allowed.
    #[arg(long, default_value_t = steadfast_jobqueue::DEFAULT_MAX_ATTEMPTS)]
    max_attempts: u32,
    /// At most one active job holds this key.
    #[arg(long)]
    unique_key: Option<String>,
}

#[derive(Debug, Args)]
struct ListArgs {
    /// Only jobs in this state (scheduled, available, running, retryable,
    /// completed, dead, cancelled).
    #[arg(long)]
    state: Option<JobState>,
    /// Only jobs in this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only jobs with a greater id (paging).
    #[arg(long)]
    after: Option<i64>,
    /// At most this many jobs.
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

#[derive(Debug, Args)]
struct RedriveArgs {
    /// The dead jobs to re-drive.
    ids: Vec<i64>,
    /// Re-drive every dead job (up to 10,000 per run).
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct PurgeArgs {
    /// These dead jobs.
    #[arg(long, num_args = 1..)]
    ids: Vec<i64>,
    /// Every dead job.
    #[arg(long)]
    all: bool,
    /// Dead jobs that died more than this many seconds ago.
    #[arg(long)]
    older_than_secs: Option<u64>,
}

/// What went wrong, for the exit message.
type CliError = Box<dyn std::error::Error>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", chain(&*e));
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), CliError> {
    if cli.db.starts_with("postgres://") || cli.db.starts_with("postgresql://") {
        return open_postgres(cli).await;
    }
    if cli.schema.is_some() {
        return Err("--schema applies only to a postgres:// queue".into());
    }
    let store = SqliteStore::open(&cli.db).await?;
    let result = run(Queue::new(store.clone()), cli.command).await;
    store.close().await;
    result
}

#[cfg(feature = "postgres")]
async fn open_postgres(cli: Cli) -> Result<(), CliError> {
    let mut builder = steadfast_jobqueue::PostgresStore::builder(cli.db.as_str());
    if let Some(schema) = &cli.schema {
        builder = builder.schema(schema.as_str());
    }
    let store = builder.connect().await?;
    run(Queue::new(store), cli.command).await
}

#[cfg(not(feature = "postgres"))]
async fn open_postgres(_cli: Cli) -> Result<(), CliError> {
    Err("this build has no PostgreSQL support (enable the `postgres` feature)".into())
}

async fn run<S: Store>(queue: Queue<S>, command: Command) -> Result<(), CliError> {
    match command {
        Command::Enqueue(args) => enqueue(&queue, args).await,
        Command::List(args) => list(&queue, args).await,
        Command::Inspect { id } => inspect(&queue, id).await,
        Command::Redrive(args) => redrive(&queue, args).await,
        Command::Purge(args) => purge(&queue, args).await,
        Command::Cancel { ids } => cancel(&queue, ids).await,
        Command::Stats => stats(&queue).await,
    }
}

async fn enqueue<S: Store>(queue: &Queue<S>, args: EnqueueArgs) -> Result<(), CliError> {
    let payload: serde_json::Value = serde_json::from_str(&args.payload)
        .map_err(|e| format!("the payload is not valid JSON: {e}"))?;
    let mut job = NewJob::raw(args.kind, JSON_CODEC, serde_json::to_vec(&payload)?)
        .queue(args.queue)
        .priority(args.priority)
        .delay(Duration::from_millis(args.delay_ms))
        .max_attempts(args.max_attempts);
    if let Some(key) = args.unique_key {
        job = job.unique_key(key);
    }

    let outcome = queue.enqueue_new(job).await?;
    if outcome.is_duplicate() {
        println!("duplicate of job {}", outcome.id());
    } else {
        println!("enqueued job {}", outcome.id());
    }
    Ok(())
}

async fn list<S: Store>(queue: &Queue<S>, args: ListArgs) -> Result<(), CliError> {
    let mut filter = ListFilter::default().limit(args.limit);
    filter.state = args.state;
    filter.queue = args.queue;
    filter.after = args.after.map(JobId::new);
    let jobs = queue.list(&filter).await?;

    let now = queue.store().now();
    println!(
        "{:>8}  {:<10}  {:<20}  {:<12}  {:>7}  {:>9}  last error",
        "id", "state", "kind", "queue", "attempt", "run in"
    );
    for job in &jobs {
        println!(
            "{:>8}  {:<10}  {:<20}  {:<12}  {:>3}/{:<3}  {:>9}  {}",
            job.id,
            job.state,
            job.kind,
            job.queue,
            job.attempt,
            job.max_attempts,
            run_in(job.run_at, now),
            job.last_error()
                .map_or(String::new(), |e| format!("{}: {}", e.kind, e.message)),
        );
    }
    println!("{} job(s)", jobs.len());
    Ok(())
}

fn run_in(at: Timestamp, now: Timestamp) -> String {
    let wait = at.saturating_duration_since(now);
    if wait.is_zero() {
        "-".to_owned()
    } else {
        format!("{:.1}s", wait.as_secs_f64())
    }
}

async fn inspect<S: Store>(queue: &Queue<S>, id: i64) -> Result<(), CliError> {
    let job = queue
        .get(JobId::new(id))
        .await?
        .ok_or_else(|| format!("there is no job {id}"))?;
    println!("{}", serde_json::to_string_pretty(&describe(&job)?)?);
    Ok(())
}

/// The record as JSON, with the payload shown as text when it is UTF-8.
fn describe(job: &JobRecord) -> Result<serde_json::Value, CliError> {
    let mut value = serde_json::to_value(job)?;
    if let (Ok(text), Some(object)) = (std::str::from_utf8(&job.payload), value.as_object_mut()) {
        object.insert(
            "payload".to_owned(),
            serde_json::Value::String(text.to_owned()),
        );
    }
    Ok(value)
}

async fn redrive<S: Store>(queue: &Queue<S>, args: RedriveArgs) -> Result<(), CliError> {
    let ids: Vec<JobId> = if args.all {
        queue
            .dead_letters(10_000)
            .await?
            .iter()
            .map(|j| j.id)
            .collect()
    } else {
        args.ids.into_iter().map(JobId::new).collect()
    };
    if ids.is_empty() {
        return Err("name the jobs to re-drive, or pass --all".into());
    }

    let outcomes = queue.redrive(&ids).await?;
    for (id, outcome) in ids.iter().zip(outcomes) {
        let text = match outcome {
            Redrive::Redriven => "re-driven".to_owned(),
            Redrive::AlreadyQueued => "already queued; nothing changed".to_owned(),
            Redrive::NotDead(state) => format!("not dead ({state}); nothing changed"),
            Redrive::Duplicate(other) => {
                format!("job {other} holds its unique key; nothing changed")
            }
            Redrive::NotFound => "no such job".to_owned(),
            _ => format!("{outcome:?}"),
        };
        println!("job {id}: {text}");
    }
    Ok(())
}

async fn purge<S: Store>(queue: &Queue<S>, args: PurgeArgs) -> Result<(), CliError> {
    let which = if args.all {
        Purge::All
    } else if let Some(secs) = args.older_than_secs {
        let now = queue.store().now();
        Purge::DiedBefore(Timestamp::from_millis(now.as_millis().saturating_sub(
            i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        )))
    } else {
        Purge::Ids(args.ids.into_iter().map(JobId::new).collect())
    };
    let count = queue.purge_dead(&which).await?;
    println!("purged {count} dead job(s)");
    Ok(())
}

async fn cancel<S: Store>(queue: &Queue<S>, ids: Vec<i64>) -> Result<(), CliError> {
    let ids: Vec<JobId> = ids.into_iter().map(JobId::new).collect();
    for (id, outcome) in ids.iter().zip(queue.cancel(&ids).await?) {
        let text = match outcome {
            Cancel::Cancelled => "cancelled".to_owned(),
            Cancel::NotCancellable(state) => format!("{state}; not cancelled"),
            Cancel::NotFound => "no such job".to_owned(),
            _ => format!("{outcome:?}"),
        };
        println!("job {id}: {text}");
    }
    Ok(())
}

async fn stats<S: Store>(queue: &Queue<S>) -> Result<(), CliError> {
    let stats = queue.stats().await?;
    for state in JobState::ALL {
        println!("{:<10} {}", state.as_str(), stats.count(state));
    }
    match stats.oldest_available_age {
        Some(age) => println!("oldest available job waiting {:.1}s", age.as_secs_f64()),
        None => println!("no job waiting"),
    }
    for (worker, running) in &stats.running_by_worker {
        println!("running on {worker}: {running}");
    }
    Ok(())
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}
