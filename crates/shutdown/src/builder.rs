//! The consuming builder that checks settings and starts listening for signals.

use std::io;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ExitCodes};
use crate::coordinator::{Handle, Inner, Shutdown};
use crate::report::Signal;

/// Why a [`Builder`] refused to build.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The drain deadline was zero, which would abort all work the moment a shutdown
    /// starts.
    #[error("drain_deadline must be greater than zero")]
    ZeroDeadline,
    /// The drain delay was not shorter than the drain deadline, which would leave no time
    /// to drain.
    #[error("drain_delay ({delay:?}) must be shorter than drain_deadline ({deadline:?})")]
    DelayNotBelowDeadline {
        /// The configured drain delay.
        delay: Duration,
        /// The configured drain deadline.
        deadline: Duration,
    },
    /// The default teardown step timeout was zero, which would abort every step at once.
    #[error("step_timeout must be greater than zero")]
    ZeroStepTimeout,
    /// A failure exit code was zero, which a supervisor would read as success.
    #[error("exit code `{which}` must be non-zero, or a failure would look like success")]
    ZeroExitCode {
        /// Which field of [`ExitCodes`] was zero.
        which: &'static str,
    },
    /// A failure exit code was outside `1..=255`. A Unix exit status keeps only the low 8
    /// bits, so 256 would read as success and -1 as 255.
    #[error("exit code `{which}` must lie between 1 and 255, got {code}")]
    ExitCodeOutOfRange {
        /// Which field of [`ExitCodes`] was out of range.
        which: &'static str,
        /// The rejected code.
        code: i32,
    },
    /// `build` was called outside a tokio runtime, where no signal can be received.
    #[error("build() must be called from within a tokio runtime")]
    NoRuntime,
    /// Registering for a signal failed.
    #[error("could not listen for {signal}")]
    Signals {
        /// The signal that could not be registered.
        signal: Signal,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}

/// Configures and builds a [`Shutdown`].
///
/// Each setter overrides one field of [`Config`]; see there for what it means and its
/// default.
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Starts from the defaults of [`Config`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every setting at once, for settings loaded from a file.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets [`Config::drain_delay`].
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.config.drain_delay = delay;
        self
    }

    /// Sets [`Config::drain_deadline`].
    pub fn drain_deadline(mut self, deadline: Duration) -> Self {
        self.config.drain_deadline = deadline;
        self
    }

    /// Sets [`Config::step_timeout`].
    pub fn step_timeout(mut self, timeout: Duration) -> Self {
        self.config.step_timeout = timeout;
        self
    }

    /// Sets [`Config::debounce`].
    pub fn debounce(mut self, window: Duration) -> Self {
        self.config.debounce = window;
        self
    }

    /// Sets [`Config::signals`].
    pub fn signals(mut self, listen: bool) -> Self {
        self.config.signals = listen;
        self
    }

    /// Sets [`Config::starts_ready`].
    pub fn starts_ready(mut self, ready: bool) -> Self {
        self.config.starts_ready = ready;
        self
    }

    /// Sets [`Config::exit_codes`].
    pub fn exit_codes(mut self, codes: ExitCodes) -> Self {
        self.config.exit_codes = codes;
        self
    }

    /// Checks the settings and, if [`Config::signals`] is on, starts listening for SIGTERM
    /// and SIGINT.
    ///
    /// From then on those signals no longer end the process by themselves: they trigger
    /// the shutdown instead, for as long as the process lives. Once the [`Shutdown`] is
    /// dropped (at the end of [`Shutdown::run`], or unused) nothing listens any more and
    /// further SIGTERM and SIGINT are ignored, so end `main` with
    /// [`Report::exit`](crate::Report::exit) rather than carrying on.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] naming the rule a setting broke, [`BuildError::NoRuntime`] outside
    /// a tokio runtime, or [`BuildError::Signals`] if the operating system refused a
    /// signal handler.
    pub fn build(self) -> Result<Shutdown, BuildError> {
        let config = self.config;
        validate(&config)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;

        let listen = config.signals;
        let inner = Arc::new(Inner::new(config));
        let stop_listening = CancellationToken::new();
        if listen {
            listen_for_signals(&runtime, Arc::downgrade(&inner), stop_listening.clone())?;
        }

        Ok(Shutdown::new(Handle::new(inner), stop_listening))
    }
}

fn validate(config: &Config) -> Result<(), BuildError> {
    if config.drain_deadline.is_zero() {
        return Err(BuildError::ZeroDeadline);
    }
    if config.drain_delay >= config.drain_deadline {
        return Err(BuildError::DelayNotBelowDeadline {
            delay: config.drain_delay,
            deadline: config.drain_deadline,
        });
    }
    if config.step_timeout.is_zero() {
        return Err(BuildError::ZeroStepTimeout);
    }
    match config.exit_codes.first_invalid() {
        Some((which, 0)) => return Err(BuildError::ZeroExitCode { which }),
        Some((which, code)) => return Err(BuildError::ExitCodeOutOfRange { which, code }),
        None => {}
    }
    Ok(())
}

#[cfg(unix)]
fn listen_for_signals(
    runtime: &tokio::runtime::Handle,
    inner: Weak<Inner>,
    stop: CancellationToken,
) -> Result<(), BuildError> {
    use tokio::signal::unix::{SignalKind, signal};

    let _entered = runtime.enter();
    let register = |kind: SignalKind, signal_name: Signal| {
        signal(kind).map_err(|source| BuildError::Signals {
            signal: signal_name,
            source,
        })
    };
    let mut terminate = register(SignalKind::terminate(), Signal::Terminate)?;
    let mut interrupt = register(SignalKind::interrupt(), Signal::Interrupt)?;

    runtime.spawn(async move {
        loop {
            let received = tokio::select! {
                () = stop.cancelled() => return,
                Some(()) = terminate.recv() => Signal::Terminate,
                Some(()) = interrupt.recv() => Signal::Interrupt,
                else => return,
            };
            let Some(inner) = inner.upgrade() else { return };
            inner.on_signal(received);
        }
    });
    Ok(())
}

#[cfg(not(unix))]
fn listen_for_signals(
    runtime: &tokio::runtime::Handle,
    inner: Weak<Inner>,
    stop: CancellationToken,
) -> Result<(), BuildError> {
    // Not yet: SIGTERM has no equivalent here; only Ctrl-C is heard.
    runtime.spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                result = tokio::signal::ctrl_c() => if result.is_err() { return },
            }
            let Some(inner) = inner.upgrade() else { return };
            inner.on_signal(Signal::Interrupt);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_outside_a_runtime_is_a_typed_error() {
        let error = Builder::new().build().expect_err("no runtime here");
        assert!(matches!(error, BuildError::NoRuntime), "{error}");
    }

    #[tokio::test]
    async fn exit_codes_outside_1_to_255_are_rejected() {
        for (code, expected_zero) in [(256, false), (512, false), (-1, false), (0, true)] {
            let codes = ExitCodes {
                terminate: code,
                ..ExitCodes::default()
            };
            let error = Builder::new()
                .signals(false)
                .exit_codes(codes)
                .build()
                .expect_err("out of range");
            match error {
                BuildError::ZeroExitCode { which } => {
                    assert!(expected_zero, "{code}");
                    assert_eq!(which, "terminate");
                }
                BuildError::ExitCodeOutOfRange { which, code: got } => {
                    assert!(!expected_zero, "{code}");
                    assert_eq!((which, got), ("terminate", code));
                }
                other => panic!("{code}: {other}"),
            }
        }
        let highest = ExitCodes {
            error: 255,
            ..ExitCodes::default()
        };
        assert!(
            Builder::new()
                .signals(false)
                .exit_codes(highest)
                .build()
                .is_ok()
        );
    }

    #[tokio::test]
    async fn bad_settings_name_the_rule() {
        let cases = [
            (
                Builder::new().drain_deadline(Duration::ZERO),
                "drain_deadline must be greater than zero",
            ),
            (
                Builder::new()
                    .drain_delay(Duration::from_secs(2))
                    .drain_deadline(Duration::from_secs(1)),
                "drain_delay (2s) must be shorter than drain_deadline (1s)",
            ),
            (
                Builder::new().step_timeout(Duration::ZERO),
                "step_timeout must be greater than zero",
            ),
            (
                Builder::new().exit_codes(ExitCodes {
                    error: 0,
                    ..ExitCodes::default()
                }),
                "exit code `error` must be non-zero, or a failure would look like success",
            ),
            (
                Builder::new().exit_codes(ExitCodes {
                    forced: 256,
                    ..ExitCodes::default()
                }),
                "exit code `forced` must lie between 1 and 255, got 256",
            ),
        ];
        for (builder, message) in cases {
            let error = builder.signals(false).build().expect_err(message);
            assert_eq!(error.to_string(), message);
        }
    }
}
