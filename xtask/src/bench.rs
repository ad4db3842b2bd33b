//! `cargo xtask bench [MEMBER]`: release-mode benchmarks of one member or all.
//!
//! Each member's benches print `bench <name>: <value> <unit>` lines; they pass
//! through untouched, so the output of this command is the figures themselves.

use std::process::Command;

/// Short names accepted on the command line and the package each one benchmarks.
const MEMBERS: &[(&str, &str)] = &[
    ("backoff", "steadfast-backoff"),
    ("shutdown", "steadfast-shutdown"),
    ("batch", "steadfast-batch"),
    ("jobqueue", "steadfast-jobqueue"),
    ("ws", "steadfast-ws-resilient"),
    ("upload", "steadfast-chunk-upload"),
];

/// Runs the benches of the named member, or of every member when none is named.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    let packages: Vec<&str> = match args {
        [] => MEMBERS.iter().map(|(_, package)| *package).collect(),
        [name] => vec![package_of(name)?],
        _ => return Err("`cargo xtask bench` takes at most one member name".to_owned()),
    };

    for package in packages {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let status = Command::new(cargo)
            .args([
                "bench",
                "--quiet",
                "--package",
                package,
                "--all-features",
                "--benches",
            ])
            .status()
            .map_err(|error| format!("could not run cargo: {error}"))?;
        if !status.success() {
            return Err(format!("benchmarks of {package} failed ({status})"));
        }
    }
    Ok(())
}

fn package_of(name: &str) -> Result<&'static str, String> {
    MEMBERS
        .iter()
        .find(|(short, package)| *short == name || *package == name)
        .map(|(_, package)| *package)
        .ok_or_else(|| {
            let known: Vec<&str> = MEMBERS.iter().map(|(short, _)| *short).collect();
            format!(
                "unknown member `{name}`; expected one of: {}",
                known.join(", ")
            )
        })
}
