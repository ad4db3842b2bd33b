//! Repository automation, run through the cargo alias `cargo xtask <command>`.
//!
//! It links none of the steadfast crates: it only drives cargo and the tools
//! the tests need, so that a fresh clone needs one command per job.

mod bench;
mod demo;
mod package;
mod test;

use std::env;
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  test            fmt, clippy, docs, every test of the workspace, service-backed runs
  bench [MEMBER]  release-mode benchmarks; MEMBER is one of: backoff, shutdown, batch,
                  jobqueue, ws, upload (all when omitted)
  demo [DIR]      the end-to-end ingest demo (`cargo xtask demo --help` for options)
  package         the .crate file of every publishable member (extra args go to cargo)";

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };

    let result = match command.as_str() {
        "test" => test::run(rest),
        "bench" => bench::run(rest),
        "demo" => demo::run(rest),
        "package" => package::run(rest),
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            Ok(())
        }
        other => Err(format!("unknown command `{other}`\n\n{USAGE}")),
    };

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
