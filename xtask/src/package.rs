//! `cargo xtask package`: build the `.crate` file of every publishable member.
//!
//! Members that depend on `steadfast-backoff` cannot be packaged alone before it is
//! published: cargo looks the dependency up on crates.io. Packaged in one invocation,
//! cargo resolves it from the local package instead, which proves every member is
//! publishable as it stands.

use std::process::Command;

/// Publishable members, in the order they would be published.
const MEMBERS: &[&str] = &[
    "steadfast-backoff",
    "steadfast-shutdown",
    "steadfast-batch",
    "steadfast-jobqueue",
    "steadfast-ws-resilient",
    "steadfast-chunk-upload",
];

/// Packages every publishable member without verifying builds of the packages.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.args(["package", "--no-verify"]).args(args);
    for member in MEMBERS {
        command.args(["--package", member]);
    }

    let status = command
        .status()
        .map_err(|error| format!("could not run cargo: {error}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("packaging failed ({status})"))
    }
}
