//! `cargo xtask test`: every check CI runs, in order, with a summary line per step.

use std::process::Command;
use std::time::Instant;

/// One step of the test command: a name for the summary and the command to run.
struct Step {
    name: &'static str,
    command: Command,
}

/// Runs every step, even after a failure, and fails if any step failed.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "`cargo xtask test` takes no arguments, got `{extra}`"
        ));
    }

    let mut summary = Vec::new();
    for mut step in steps() {
        eprintln!("xtask test: running {}", step.name);
        let started = Instant::now();
        let passed = step.command.status().is_ok_and(|status| status.success());
        summary.push((step.name, passed, started.elapsed().as_secs_f64()));
    }

    eprintln!();
    for (name, passed, seconds) in &summary {
        let verdict = if *passed { "ok" } else { "FAILED" };
        eprintln!("xtask test: {name:<12} {verdict:<6} ({seconds:.1} s)");
    }

    if std::env::var_os("STEADFAST_TEST_POSTGRES_URL").is_none() {
        eprintln!(
            "xtask test: STEADFAST_TEST_POSTGRES_URL is not set: the PostgreSQL tests returned \
             early and show as passed without having run (`.ci/run` sets it)"
        );
    }

    let failed: Vec<&str> = summary.iter().filter(|s| !s.1).map(|s| s.0).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed steps: {}", failed.join(", ")))
    }
}

fn steps() -> Vec<Step> {
    let clippy = [
        "clippy",
        "--workspace",
        "--all-targets",
        "--all-features",
        "--",
        "-D",
        "warnings",
    ];
    let doctests = ["test", "--workspace", "--all-features", "--doc"];

    vec![
        step("fmt", cargo(&["fmt", "--all", "--check"])),
        step("clippy", cargo(&clippy)),
        step("doc", doc()),
        step("tests", tests()),
        step("doctests", cargo(&doctests)),
    ]
}

fn step(name: &'static str, command: Command) -> Step {
    Step { name, command }
}

fn cargo(args: &[&str]) -> Command {
    let mut command = Command::new(env_cargo());
    command.args(args);
    command
}

fn env_cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn doc() -> Command {
    let mut command = cargo(&["doc", "--workspace", "--no-deps", "--all-features"]);
    command.env("RUSTDOCFLAGS", "-D warnings");
    command
}

/// Unit and integration tests through nextest when it is installed, else `cargo test`.
fn tests() -> Command {
    let has_nextest = cargo(&["nextest", "--version"])
        .output()
        .is_ok_and(|output| output.status.success());

    if has_nextest {
        cargo(&[
            "nextest",
            "run",
            "--workspace",
            "--all-features",
            "--no-fail-fast",
        ])
    } else {
        eprintln!("xtask test: cargo-nextest not found, falling back to `cargo test`");
        cargo(&[
            "test",
            "--workspace",
            "--all-features",
            "--all-targets",
            "--no-fail-fast",
        ])
    }
}
