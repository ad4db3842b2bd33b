//! What a shutdown did: why it started, how each phase went, what had to be cut short.

use std::fmt;
use std::io::Write as _;
use std::time::Duration;

use tracing::{info, warn};

use crate::config::ExitCodes;

/// An operating-system signal that asks the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Signal {
    /// SIGINT, what Ctrl-C sends.
    Interrupt,
    /// SIGTERM, what process managers and `kill` send by default.
    Terminate,
}

impl Signal {
    /// The conventional name, such as `SIGTERM`, for logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Interrupt => "SIGINT",
            Self::Terminate => "SIGTERM",
        }
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What started the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Trigger {
    /// The first SIGTERM or SIGINT.
    Signal(Signal),
    /// A call to [`Handle::trigger`](crate::Handle::trigger).
    Requested,
    /// A critical task or stage ended: with an error, a panic, or on its own although
    /// nothing had asked it to stop.
    Task {
        /// The name it was registered under.
        name: String,
        /// How it ended.
        end: End,
    },
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Signal(signal) => write!(f, "{signal}"),
            Self::Requested => f.write_str("a programmatic trigger"),
            Self::Task { name, end } => write!(f, "critical task `{name}` {end}"),
        }
    }
}

/// How a piece of work ended, as far as the shutdown could tell.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum End {
    /// It finished by itself.
    Completed,
    /// It returned an error; the text is the error with its sources, joined by `: `.
    Failed(String),
    /// It panicked; the text is the panic message, if it had one.
    Panicked(String),
    /// It was still running at its deadline or timeout and was aborted.
    Forced,
    /// It was blocking work still running at the deadline. Blocking work cannot be
    /// aborted, so the process leaves it behind when it exits.
    Abandoned,
    /// It was a teardown step that never ran, because a second signal forced exit.
    Skipped,
}

impl End {
    /// Whether it was cut short (forced or abandoned) rather than ending by itself.
    pub fn is_forced(&self) -> bool {
        matches!(self, Self::Forced | Self::Abandoned)
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Completed => f.write_str("ended on its own"),
            Self::Failed(error) => write!(f, "failed: {error}"),
            Self::Panicked(message) => write!(f, "panicked: {message}"),
            Self::Forced => f.write_str("was aborted"),
            Self::Abandoned => f.write_str("was abandoned (blocking work cannot be aborted)"),
            Self::Skipped => f.write_str("was skipped"),
        }
    }
}

/// What kind of work a [`Record`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// A task from [`Handle::spawn`](crate::Handle::spawn).
    Task,
    /// A task from [`Handle::spawn_critical`](crate::Handle::spawn_critical).
    CriticalTask,
    /// In-flight work held by a [`WorkGuard`](crate::WorkGuard), such as an HTTP request.
    Work,
    /// Blocking work from [`Handle::spawn_blocking`](crate::Handle::spawn_blocking).
    Blocking,
    /// A stage from [`Handle::stage`](crate::Handle::stage), stopped during teardown.
    Stage,
    /// A hook from [`Handle::hook`](crate::Handle::hook), run during teardown.
    Hook,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Task => "task",
            Self::CriticalTask => "critical task",
            Self::Work => "work",
            Self::Blocking => "blocking work",
            Self::Stage => "stage",
            Self::Hook => "hook",
        })
    }
}

/// One noteworthy end: a failure, something cut short, or a teardown step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// The name the work was registered under.
    pub name: String,
    /// What kind of work it was.
    pub kind: Kind,
    /// How it ended.
    pub end: End,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} `{}` {}", self.kind, self.name, self.end)
    }
}

/// A phase of the shutdown, for the timings in a [`Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Phase {
    /// Not ready, but still serving, for the configured drain delay.
    Delay,
    /// No longer accepting; waiting for in-flight work until the deadline.
    Drain,
    /// Aborting what was still running at the deadline.
    Cancel,
    /// Stopping stages and running hooks, in reverse order of registration.
    Teardown,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Delay => "delay",
            Self::Drain => "drain",
            Self::Cancel => "cancel",
            Self::Teardown => "teardown",
        })
    }
}

/// How the shutdown ended overall; it decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Everything stopped by itself in time. Exit code 0.
    Clean,
    /// A critical task or stage failed or ended on its own, or a hook failed.
    /// [`ExitCodes::error`].
    Failed,
    /// A critical task, stage or hook panicked. [`ExitCodes::panic`].
    Panicked,
    /// Something had to be aborted at a deadline or timeout. [`ExitCodes::forced`].
    Forced,
    /// A second signal forced an immediate exit; draining and teardown were cut short.
    /// [`ExitCodes::interrupt`] or [`ExitCodes::terminate`].
    Interrupted(Signal),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Clean => f.write_str("clean"),
            Self::Failed => f.write_str("failed"),
            Self::Panicked => f.write_str("panicked"),
            Self::Forced => f.write_str("forced"),
            Self::Interrupted(signal) => write!(f, "interrupted by a second {signal}"),
        }
    }
}

/// What a shutdown did, returned by [`Shutdown::run`](crate::Shutdown::run).
///
/// End `main` with [`Report::exit`], which maps the [`Outcome`] to an exit code and does
/// not wait for blocking work left behind.
#[derive(Debug, Clone)]
pub struct Report {
    pub(crate) trigger: Trigger,
    pub(crate) outcome: Outcome,
    pub(crate) phases: Vec<(Phase, Duration)>,
    pub(crate) records: Vec<Record>,
    pub(crate) exit_codes: ExitCodes,
}

impl Report {
    /// What started the shutdown.
    pub fn trigger(&self) -> &Trigger {
        &self.trigger
    }

    /// How it ended overall.
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// Each phase that ran, in order, with how long it took.
    pub fn phases(&self) -> &[(Phase, Duration)] {
        &self.phases
    }

    /// Every noteworthy end: failed and panicked tasks, work cut short at the deadline,
    /// and each teardown step in the order it ran.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The names of the work that was cut short (aborted or abandoned).
    pub fn forced(&self) -> impl Iterator<Item = &str> {
        self.records
            .iter()
            .filter(|record| record.end.is_forced())
            .map(|record| record.name.as_str())
    }

    /// The teardown steps (stages and hooks) in the order they ran.
    pub fn teardown(&self) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(|record| matches!(record.kind, Kind::Stage | Kind::Hook))
    }

    /// The record for the work registered under `name`, if it has one.
    pub fn record(&self, name: &str) -> Option<&Record> {
        self.records.iter().find(|record| record.name == name)
    }

    /// The process exit code for this outcome: 0 only for [`Outcome::Clean`].
    pub fn exit_code(&self) -> i32 {
        let codes = &self.exit_codes;
        match self.outcome {
            Outcome::Clean => 0,
            Outcome::Failed => codes.error,
            Outcome::Panicked => codes.panic,
            Outcome::Forced => codes.forced,
            Outcome::Interrupted(Signal::Interrupt) => codes.interrupt,
            Outcome::Interrupted(Signal::Terminate) => codes.terminate,
        }
    }

    /// Logs the report, flushes stdout and stderr, and ends the process with
    /// [`exit_code`](Self::exit_code).
    ///
    /// It does not return to the tokio runtime, so blocking work still running on the
    /// runtime's blocking pool (a DNS lookup, a stuck file read) cannot keep the process
    /// alive; each piece abandoned that way is logged by name. Flush any buffered log
    /// writer of your own before calling it.
    pub fn exit(self) -> ! {
        for record in self.records.iter().filter(|r| r.end == End::Abandoned) {
            warn!(name = %record.name, "exiting without waiting for abandoned blocking work");
        }
        if self.outcome == Outcome::Clean {
            info!(code = 0, report = %self, "exiting");
        } else {
            warn!(code = self.exit_code(), report = %self, "exiting");
        }

        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        std::process::exit(self.exit_code())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shutdown after {} was {} (exit code {})",
            self.trigger,
            self.outcome,
            self.exit_code()
        )?;
        for record in self
            .records
            .iter()
            .filter(|record| record.end != End::Completed)
        {
            write!(f, "; {record}")?;
        }
        Ok(())
    }
}

/// The overall outcome: a forcing signal first, then panics, then failures of work that
/// matters (critical tasks, stages, hooks), then anything cut short.
pub(crate) fn outcome_of(
    forced_by: Option<Signal>,
    trigger: &Trigger,
    records: &[Record],
) -> Outcome {
    if let Some(signal) = forced_by {
        return Outcome::Interrupted(signal);
    }

    let counts =
        |record: &&Record| matches!(record.kind, Kind::CriticalTask | Kind::Stage | Kind::Hook);
    let trigger_end = match trigger {
        Trigger::Task { end, .. } => Some(end),
        _ => None,
    };
    let mut ends = records.iter().filter(counts).map(|record| &record.end);
    let panicked = matches!(trigger_end, Some(End::Panicked(_)))
        || ends.clone().any(|end| matches!(end, End::Panicked(_)));
    if panicked {
        return Outcome::Panicked;
    }
    if trigger_end.is_some() || ends.any(|end| matches!(end, End::Failed(_))) {
        return Outcome::Failed;
    }
    if records.iter().any(|record| record.end.is_forced()) {
        return Outcome::Forced;
    }
    Outcome::Clean
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(outcome: Outcome, records: Vec<Record>) -> Report {
        Report {
            trigger: Trigger::Signal(Signal::Terminate),
            outcome,
            phases: Vec::new(),
            records,
            exit_codes: ExitCodes::default(),
        }
    }

    #[test]
    fn exit_codes_follow_the_outcome() {
        let cases = [
            (Outcome::Clean, 0),
            (Outcome::Failed, 1),
            (Outcome::Panicked, 70),
            (Outcome::Forced, 1),
            (Outcome::Interrupted(Signal::Interrupt), 130),
            (Outcome::Interrupted(Signal::Terminate), 143),
        ];
        for (outcome, code) in cases {
            assert_eq!(report(outcome, Vec::new()).exit_code(), code, "{outcome}");
        }
    }

    #[test]
    fn display_names_what_was_cut_short() {
        let records = vec![
            Record {
                name: "GET /slow".to_owned(),
                kind: Kind::Work,
                end: End::Forced,
            },
            Record {
                name: "db".to_owned(),
                kind: Kind::Stage,
                end: End::Completed,
            },
        ];
        let text = report(Outcome::Forced, records).to_string();
        assert_eq!(
            text,
            "shutdown after SIGTERM was forced (exit code 1); work `GET /slow` was aborted"
        );
    }

    #[test]
    fn a_failed_hook_is_a_failure_but_a_failed_plain_task_is_not() {
        let record = |kind, end| Record {
            name: "x".to_owned(),
            kind,
            end,
        };
        let trigger = Trigger::Requested;
        let hook = [record(Kind::Hook, End::Failed("disk full".to_owned()))];
        assert_eq!(outcome_of(None, &trigger, &hook), Outcome::Failed);
        let task = [record(Kind::Task, End::Failed("bad row".to_owned()))];
        assert_eq!(outcome_of(None, &trigger, &task), Outcome::Clean);
        let forced = [record(Kind::Work, End::Forced)];
        assert_eq!(outcome_of(None, &trigger, &forced), Outcome::Forced);
        let interrupted = outcome_of(Some(Signal::Interrupt), &trigger, &hook);
        assert_eq!(interrupted, Outcome::Interrupted(Signal::Interrupt));
    }
}
