//! `cargo xtask demo [DIR]`: builds the `ingest` example of the umbrella crate, runs its
//! server and its client on loopback, restarts the server once midway, and ends with the
//! client's one-line summary.
//!
//! The server and the client are separate processes, so the restart is a real one: the
//! server drains and exits on SIGTERM, a new one starts on the same port and state
//! directory, and the client's uploads and WebSocket have to find their way back.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cargo xtask demo [DIR] [options]

Uploads every file of DIR (default: this repository, without target/, .git/ and
node_modules/) to a loopback ingest server through a fault-injecting proxy, verifies
each file on the server, restarts the server once midway, and reports.

options:
  --state DIR            keep state here, to resume with a rerun (default: a temporary
                         directory, removed after a successful run)
  --queue URL            put the job queue in PostgreSQL (postgres://...); default SQLite
  --concurrency N        files uploaded side by side (default 4)
  --cut-rate R           chance per 100 ms that the proxy cuts live connections (default 0.1)
  --status-rate R        chance per 100 ms that the proxy answers 503 (default 0.05)
  --transient-rate R     share of verification attempts that fail and are retried (default 0.2)
  --dead-pattern GLOB    files that fail verification for good (default *.lock)
  --chunk-size BYTES     largest upload request (default 262144)
  --seed N               seed of the proxy's fault schedule (default 7)
  --release              build the example in release mode";

/// Flags handed to the server, with a value each.
const SERVER_FLAGS: [&str; 3] = ["--queue", "--transient-rate", "--dead-pattern"];

/// Flags handed to the client, with a value each.
const CLIENT_FLAGS: [&str; 5] = [
    "--concurrency",
    "--cut-rate",
    "--status-rate",
    "--chunk-size",
    "--seed",
];

/// How long a server may take to start or to stop.
const SERVER_WAIT: Duration = Duration::from_secs(60);

/// Runs the demo.
pub(crate) fn run(args: &[String]) -> Result<(), String> {
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        println!("{USAGE}");
        return Ok(());
    }
    let options = Options::parse(args)?;
    let root = workspace_root();
    let binary = build(&root, options.release)?;

    let (state, temporary) = match &options.state {
        Some(state) => (state.clone(), false),
        None => (
            env::temp_dir().join(format!("steadfast-demo-{}", std::process::id())),
            true,
        ),
    };
    fs::create_dir_all(&state)
        .map_err(|error| format!("cannot create {}: {error}", state.display()))?;
    for stale in ["addr", "midway", "summary"] {
        let _ = fs::remove_file(state.join(stale));
    }
    let dir = options.dir.clone().unwrap_or_else(|| root.clone());
    eprintln!(
        "demo: ingesting {} with state in {}{}",
        dir.display(),
        state.display(),
        if temporary {
            " (pass --state DIR to keep it and resume after Ctrl-C)"
        } else {
            ""
        }
    );

    let mut server = Server::start(&binary, &state, &options.server_args, None)?;
    eprintln!("demo: server listening on {}", server.addr);
    let mut client = spawn_client(&binary, &dir, &state, &server.addr, &options.client_args)?;

    // Not yet: std cannot catch SIGINT, so Ctrl-C ends this driver at once; the server and
    // the client get the same signal from the terminal and shut down gracefully by
    // themselves, but the summary line is theirs, not the driver's.
    let mut restarted = false;
    let client_status = loop {
        if let Some(status) = client.try_wait().map_err(|error| error.to_string())? {
            break status;
        }
        if !restarted && state.join("midway").exists() {
            restarted = true;
            eprintln!("demo: half the bytes are in; restarting the server");
            let status = server.stop()?;
            eprintln!("demo: server stopped ({status}); starting it again");
            let addr = server.addr.clone();
            server = Server::start(&binary, &state, &options.server_args, Some(&addr))?;
        }
        if let Some(status) = server.child.try_wait().map_err(|error| error.to_string())? {
            let _ = client.kill();
            return Err(format!("the server stopped by itself ({status})"));
        }
        thread::sleep(Duration::from_millis(100));
    };

    eprintln!("demo: client done ({client_status}); shutting the server down");
    let server_status = server.stop()?;
    eprintln!("demo: server stopped ({server_status})");

    let summary = fs::read_to_string(state.join("summary")).unwrap_or_default();
    if !summary.is_empty() {
        print!("{summary}");
    }
    if client_status.code() == Some(130) {
        return Err(format!(
            "interrupted; `cargo xtask demo --state {}` resumes where it stopped",
            state.display()
        ));
    }
    if !client_status.success() {
        return Err(format!(
            "the client failed ({client_status}); state kept in {}",
            state.display()
        ));
    }
    if !server_status.success() {
        return Err(format!("the server did not stop cleanly ({server_status})"));
    }
    if temporary {
        let _ = fs::remove_dir_all(&state);
    }
    Ok(())
}

/// The command line, split into what the driver, the server and the client get.
#[derive(Debug, Default)]
struct Options {
    dir: Option<PathBuf>,
    state: Option<PathBuf>,
    release: bool,
    server_args: Vec<String>,
    client_args: Vec<String>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let flag = arg.as_str();
            let mut value = || {
                args.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value\n\n{USAGE}"))
            };
            match flag {
                "--release" => options.release = true,
                "--state" => options.state = Some(absolute(Path::new(&value()?))),
                _ if SERVER_FLAGS.contains(&flag) => {
                    options.server_args.extend([flag.to_owned(), value()?]);
                }
                _ if CLIENT_FLAGS.contains(&flag) => {
                    options.client_args.extend([flag.to_owned(), value()?]);
                }
                _ if flag.starts_with('-') => {
                    return Err(format!("unknown option `{flag}`\n\n{USAGE}"));
                }
                _ if options.dir.is_none() => options.dir = Some(absolute(Path::new(flag))),
                _ => return Err(format!("more than one directory given\n\n{USAGE}")),
            }
        }
        if let Some(dir) = &options.dir {
            if !dir.is_dir() {
                return Err(format!("{} is not a directory", dir.display()));
            }
        }
        Ok(options)
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
    }
}

/// The root of the checkout `cargo xtask` runs in. Cargo sets `CARGO_MANIFEST_DIR` for the
/// program it runs; the value compiled in is only a fallback, since clones sharing one
/// target directory share one xtask binary.
fn workspace_root() -> PathBuf {
    let xtask = env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    xtask
        .parent()
        .map_or_else(|| xtask.clone(), Path::to_path_buf)
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

/// Builds the example and returns the path of its executable, as cargo reports it.
fn build(root: &Path, release: bool) -> Result<PathBuf, String> {
    eprintln!("demo: building the ingest example (the first build compiles every dependency)");
    let mut command = cargo();
    command
        .current_dir(root)
        .args([
            "build",
            "--package",
            "steadfast",
            "--example",
            "ingest",
            "--message-format",
            "json-render-diagnostics",
        ])
        .stderr(std::process::Stdio::inherit());
    if release {
        command.arg("--release");
    }
    let output = command
        .output()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !output.status.success() {
        return Err("building the ingest example failed (see the errors above)".to_owned());
    }

    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter(|line| line.contains("\"compiler-artifact\"") && line.contains("\"ingest\""))
        .find_map(|line| {
            let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
            let end = start + line[start..].find('"')?;
            // JSON escapes the backslashes of Windows paths.
            Some(PathBuf::from(line[start..end].replace("\\\\", "\\")))
        })
        .ok_or_else(|| "cargo did not say where it put the ingest example".to_owned())
}

/// A running server process and the address it listens on.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    /// Starts a server on `state` (on `addr`, or a free port) and waits until it is ready.
    fn start(
        binary: &Path,
        state: &Path,
        extra: &[String],
        addr: Option<&str>,
    ) -> Result<Self, String> {
        let addr_file = state.join("addr");
        let _ = fs::remove_file(&addr_file);
        let mut child = Command::new(binary)
            .arg("server")
            .arg("--state")
            .arg(state.join("server"))
            .arg("--listen")
            .arg(addr.unwrap_or("127.0.0.1:0"))
            .arg("--addr-file")
            .arg(&addr_file)
            .args(extra)
            .spawn()
            .map_err(|error| format!("cannot start the server: {error}"))?;

        let started = Instant::now();
        loop {
            if let Ok(addr) = fs::read_to_string(&addr_file) {
                return Ok(Self { child, addr });
            }
            if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
                return Err(format!("the server exited before it was ready ({status})"));
            }
            if started.elapsed() > SERVER_WAIT {
                let _ = child.kill();
                return Err("the server did not get ready within a minute".to_owned());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks the server to shut down gracefully and waits for it; kills it if it is still
    /// running after a minute.
    fn stop(&mut self) -> Result<ExitStatus, String> {
        terminate(&mut self.child);
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|error| error.to_string())? {
                return Ok(status);
            }
            if started.elapsed() > SERVER_WAIT {
                let _ = self.child.kill();
                return self.child.wait().map_err(|error| error.to_string());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGTERM, through the shell's `kill` built-in since std cannot send signals.
#[cfg(unix)]
fn terminate(child: &mut Child) {
    let sent = Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .is_ok_and(|status| status.success());
    if !sent {
        let _ = child.kill();
    }
}

/// Other platforms have no SIGTERM to send: the server is stopped at once.
#[cfg(not(unix))]
fn terminate(child: &mut Child) {
    let _ = child.kill();
}

fn spawn_client(
    binary: &Path,
    dir: &Path,
    state: &Path,
    addr: &str,
    extra: &[String],
) -> Result<Child, String> {
    Command::new(binary)
        .arg("client")
        .arg(dir)
        .arg("--server")
        .arg(addr)
        .arg("--state")
        .arg(state.join("client"))
        .arg("--midway-file")
        .arg(state.join("midway"))
        .arg("--summary-file")
        .arg(state.join("summary"))
        .args(extra)
        .spawn()
        .map_err(|error| format!("cannot start the client: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
        Options::parse(&args)
    }

    #[test]
    fn flags_go_to_the_program_that_understands_them() {
        let options = parse(&[
            "--cut-rate",
            "0.3",
            "--queue",
            "postgres://localhost/test",
            "--concurrency",
            "8",
            "--release",
        ])
        .expect("valid flags");

        assert!(options.release);
        assert_eq!(options.dir, None);
        assert_eq!(
            options.server_args,
            ["--queue", "postgres://localhost/test"]
        );
        assert_eq!(
            options.client_args,
            ["--cut-rate", "0.3", "--concurrency", "8"]
        );
    }

    #[test]
    fn directory_and_state_are_made_absolute() {
        let options = parse(&["src", "--state", "demo-state"]).expect("valid arguments");
        let cwd = env::current_dir().expect("a working directory");

        assert_eq!(options.dir, Some(cwd.join("src")));
        assert_eq!(options.state, Some(cwd.join("demo-state")));
    }

    #[test]
    fn bad_arguments_are_named() {
        let unknown = parse(&["--fast"]).expect_err("unknown flag");
        assert!(unknown.starts_with("unknown option `--fast`"), "{unknown}");

        let missing = parse(&["--seed"]).expect_err("no value");
        assert!(missing.starts_with("--seed needs a value"), "{missing}");

        let two = parse(&["src", "src"]).expect_err("two directories");
        assert!(two.starts_with("more than one directory"), "{two}");

        let absent = parse(&["no-such-directory"]).expect_err("missing directory");
        assert!(absent.ends_with("is not a directory"), "{absent}");
    }
}
