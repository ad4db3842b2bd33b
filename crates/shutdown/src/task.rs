//! What a registered task returns, and how its end is described in the report.

use std::any::Any;
use std::error::Error as StdError;

use tokio::task::JoinError;

use crate::report::End;

/// A boxed error, the form in which task errors reach the [`Report`](crate::Report).
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What a registered task may return: `()`, or a `Result<(), E>` whose error is reported.
pub trait TaskOutput: Send + 'static {
    /// Turns the output into a plain result.
    ///
    /// # Errors
    ///
    /// The task's own error, boxed.
    fn into_result(self) -> Result<(), BoxError>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E> TaskOutput for Result<(), E>
where
    E: Into<BoxError> + Send + 'static,
{
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// How a spawned task ended, or `None` if it was aborted (whoever aborted it records that).
pub(crate) fn end_of(result: Result<Result<(), BoxError>, JoinError>) -> Option<End> {
    match result {
        Ok(Ok(())) => Some(End::Completed),
        Ok(Err(error)) => Some(End::Failed(error_chain(error.as_ref()))),
        Err(error) if error.is_panic() => Some(End::Panicked(panic_message(error.into_panic()))),
        Err(_) => None,
    }
}

fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(message) => *message,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(message) => (*message).to_owned(),
            Err(_) => "a panic without a message".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("query failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chain_joins_sources() {
        let error = Outer(std::io::Error::other("connection reset"));
        assert_eq!(error_chain(&error), "query failed: connection reset");
    }

    #[test]
    fn panic_messages_of_both_payload_kinds() {
        assert_eq!(panic_message(Box::new("static")), "static");
        assert_eq!(panic_message(Box::new(String::from("owned"))), "owned");
        assert_eq!(panic_message(Box::new(7_u8)), "a panic without a message");
    }
}
