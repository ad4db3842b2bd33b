//! Plain settings of a shutdown: how long each phase may take and which exit codes mean what.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The timing and exit-code settings of a [`Shutdown`](crate::Shutdown).
///
/// Every field has a default chosen for a service behind a load balancer; the
/// [`Builder`](crate::Builder) checks the combination when it builds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// How long to keep serving after readiness turns false, so that load balancers
    /// notice and stop routing before the listener closes. Default: zero.
    pub drain_delay: Duration,
    /// How long after the trigger in-flight work may take before it is aborted. The drain
    /// delay counts against it, the way a Kubernetes grace period includes a `preStop`
    /// hook. Default: 30 s.
    pub drain_deadline: Duration,
    /// How long each teardown stage or hook may take before it is aborted, unless it was
    /// registered with its own timeout. Default: 5 s.
    pub step_timeout: Duration,
    /// A signal arriving this soon after the first one counts as a duplicate of it, not as
    /// a second signal that forces exit (some process managers deliver one Ctrl-C twice).
    /// Default: 250 ms.
    pub debounce: Duration,
    /// Whether to listen for SIGTERM and SIGINT. Turn it off when something else owns the
    /// signals, or in tests that inject them with [`Handle::signal`](crate::Handle::signal).
    /// Default: `true`.
    pub signals: bool,
    /// Whether readiness reports ready from the start. Set it to `false` to report ready
    /// only after [`Handle::mark_ready`](crate::Handle::mark_ready). Default: `true`.
    pub starts_ready: bool,
    /// The process exit code for each way a shutdown can end.
    pub exit_codes: ExitCodes,
}

impl Default for Config {
    /// Zero drain delay, 30 s drain deadline, 5 s per teardown step, 250 ms debounce,
    /// signals on, ready from the start, and the conventional exit codes of [`ExitCodes`].
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            drain_deadline: Duration::from_secs(30),
            step_timeout: Duration::from_secs(5),
            debounce: Duration::from_millis(250),
            signals: true,
            starts_ready: true,
            exit_codes: ExitCodes::default(),
        }
    }
}

/// The process exit code for each [`Outcome`](crate::Outcome) other than a clean stop,
/// which is always 0.
///
/// Every code here must lie in `1..=255`: a supervisor has to be able to tell a failure
/// from a clean stop, and a Unix exit status keeps only the low 8 bits, so 256 would read
/// as 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExitCodes {
    /// A critical task or stage returned an error or ended although nothing asked it to,
    /// or a hook returned an error. Default: 1.
    pub error: i32,
    /// A critical task, stage or hook panicked. Default: 70 (`EX_SOFTWARE` of
    /// `sysexits.h`).
    pub panic: i32,
    /// Work was still running at the deadline, or a teardown step overran its timeout, and
    /// was aborted. Default: 1.
    pub forced: i32,
    /// A second SIGINT forced an immediate exit. Default: 130 (128 + 2, as shells report).
    pub interrupt: i32,
    /// A second SIGTERM forced an immediate exit. Default: 143 (128 + 15).
    pub terminate: i32,
}

impl Default for ExitCodes {
    /// 1 for an error, 70 for a panic, 1 for work aborted at a deadline, 130 and 143 for a
    /// stop forced by a second SIGINT or SIGTERM.
    fn default() -> Self {
        Self {
            error: 1,
            panic: 70,
            forced: 1,
            interrupt: 130,
            terminate: 143,
        }
    }
}

impl ExitCodes {
    /// The name and value of the first code outside `1..=255`, if any.
    pub(crate) fn first_invalid(&self) -> Option<(&'static str, i32)> {
        [
            ("error", self.error),
            ("panic", self.panic),
            ("forced", self.forced),
            ("interrupt", self.interrupt),
            ("terminate", self.terminate),
        ]
        .into_iter()
        .find(|(_, code)| !(1..=255).contains(code))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_codes_are_non_zero_and_conventional() {
        let codes = ExitCodes::default();
        assert_eq!(codes.first_invalid(), None);
        assert_eq!(
            (codes.interrupt, codes.terminate, codes.panic),
            (130, 143, 70)
        );
    }

    #[test]
    fn settings_from_a_file_fill_in_the_defaults() {
        let json = r#"{ "drain_delay": { "secs": 5, "nanos": 0 }, "exit_codes": { "panic": 3 } }"#;
        let config: Config = serde_json::from_str(json).expect("valid settings");

        assert_eq!(config.drain_delay, Duration::from_secs(5));
        assert_eq!(config.drain_deadline, Config::default().drain_deadline);
        assert_eq!(config.exit_codes.panic, 3);
        assert_eq!(config.exit_codes.error, 1);

        let text = serde_json::to_string(&config).expect("serializes");
        assert_eq!(
            serde_json::from_str::<Config>(&text).expect("round trip"),
            config
        );
    }

    #[test]
    fn first_invalid_names_the_offending_code() {
        let codes = ExitCodes {
            panic: 0,
            ..ExitCodes::default()
        };
        assert_eq!(codes.first_invalid(), Some(("panic", 0)));
    }
}
