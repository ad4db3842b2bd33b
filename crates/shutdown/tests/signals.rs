//! Real signals on a child process, on the wall clock (SD-03, SD-04). The child is the
//! `steadfast-shutdown-fixture` program of this crate (feature `fixture`).

#![cfg(all(unix, feature = "fixture"))]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

struct Fixture {
    child: Child,
}

impl Fixture {
    /// Starts the fixture and waits until its signal handlers are in place.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_steadfast-shutdown-fixture"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fixture starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("read");
        assert_eq!(line.trim(), "ready", "the fixture came up");
        Self { child }
    }

    fn signal(&self, name: &str) -> Instant {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
        Instant::now()
    }

    /// Waits for the child to exit, killing it after `limit`; returns its status and logs.
    fn wait(mut self, limit: Duration) -> (ExitStatus, Instant, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!("the fixture still ran {limit:?} after the signal");
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let exited = Instant::now();
        let mut logs = String::new();
        if let Some(mut stderr) = self.child.stderr.take() {
            stderr.read_to_string(&mut logs).expect("logs");
        }
        (status, exited, logs)
    }
}

/// SD-03: blocking work on the runtime's pool (30 s) cannot keep the process alive past
/// its 1 s deadline, and the log names what was abandoned.
#[test]
fn sd_03_leftover_blocking_work_cannot_keep_the_process_alive() {
    let fixture = Fixture::start(&["blocking"]);
    let signalled = fixture.signal("TERM");
    let (status, exited, logs) = fixture.wait(Duration::from_secs(10));

    let took = exited - signalled;
    assert!(
        took < Duration::from_secs(3),
        "gone {took:?} after the signal"
    );
    assert!(
        took >= Duration::from_secs(1),
        "the 1 s drain deadline was honoured"
    );
    assert_eq!(status.code(), Some(1), "work was cut short: forced");
    assert!(
        logs.contains("dns lookup"),
        "the log names the abandoned work:\n{logs}"
    );
    assert!(logs.contains("abandoned"), "{logs}");
}

/// SD-04 (a): a second SIGINT a second after the first ends the process at once with 130,
/// naming the subsystem that had not stopped.
#[test]
fn sd_04_a_second_sigint_forces_exit_with_130() {
    let fixture = Fixture::start(&["stubborn"]);
    fixture.signal("INT");
    std::thread::sleep(Duration::from_secs(1));
    let second = fixture.signal("INT");
    let (status, exited, logs) = fixture.wait(Duration::from_secs(10));

    let took = exited - second;
    assert!(
        took < Duration::from_millis(200),
        "ended {took:?} after the second signal"
    );
    assert_eq!(status.code(), Some(130));
    assert!(
        logs.contains("stubborn worker"),
        "the log names what had not stopped:\n{logs}"
    );
}

/// SD-04 (b): two SIGINTs 5 ms apart count as one; draining finishes, the close hook
/// writes its marker, exit code 0.
#[test]
fn sd_04_b_a_duplicated_first_signal_does_not_force() {
    let dir = tempfile::tempdir().expect("temp dir");
    let marker = dir.path().join("closed");
    let fixture = Fixture::start(&["marker", marker.to_str().expect("utf-8 path")]);
    fixture.signal("INT");
    std::thread::sleep(Duration::from_millis(5));
    fixture.signal("INT");
    let (status, _, logs) = fixture.wait(Duration::from_secs(10));

    assert_eq!(status.code(), Some(0), "{logs}");
    let written = std::fs::read_to_string(&marker).expect("the close hook ran");
    assert_eq!(written, "closed");
}

/// SD-04 (c): like (a) with SIGTERM: forced exit, code 143.
#[test]
fn sd_04_c_a_second_sigterm_forces_exit_with_143() {
    let fixture = Fixture::start(&["stubborn"]);
    fixture.signal("TERM");
    std::thread::sleep(Duration::from_secs(1));
    let second = fixture.signal("TERM");
    let (status, exited, logs) = fixture.wait(Duration::from_secs(10));

    let took = exited - second;
    assert!(
        took < Duration::from_millis(200),
        "ended {took:?} after the second signal"
    );
    assert_eq!(status.code(), Some(143), "{logs}");
}
