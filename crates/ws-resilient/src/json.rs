//! The typed JSON layer: serde types in, serde types out.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{Client, Incoming};
use crate::error::SendError;
use crate::message::Message;
use crate::outbox::Sent;
use crate::state::{Counters, Event};

/// Received messages parsed as `T`. A message that does not parse is reported as
/// [`Event::ParseFailed`] and counted in [`Metrics::parse_failures`](crate::Metrics), and
/// the connection goes on.
///
/// Not yet: a message read after the client has closed that does not parse is only
/// counted, as the event streams have ended by then.
#[derive(Debug)]
pub struct JsonIncoming<T> {
    inner: Incoming,
    _type: PhantomData<fn() -> T>,
}

/// Why a JSON message was not queued.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JsonSendError {
    /// The value could not be serialized.
    #[error("could not serialize the message")]
    Serialize(#[source] serde_json::Error),
    /// The serialized message was not queued.
    #[error("could not queue the message: {0}")]
    Send(SendError),
}

impl Incoming {
    /// Turns the raw receiver into one of `T` values.
    pub fn json<T: DeserializeOwned>(self) -> JsonIncoming<T> {
        JsonIncoming {
            inner: self,
            _type: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> JsonIncoming<T> {
    /// The next message that parses as `T`, or `None` once the client is closed and every
    /// message was read.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is only consumed when it is parsed or reported.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let message = self.inner.recv().await?;
            match serde_json::from_slice(message.as_bytes()) {
                Ok(value) => return Some(value),
                Err(error) => {
                    let shared = &self.inner.shared;
                    Counters::add(&shared.counters.parse_failures, 1);
                    tracing::debug!(%error, "received message does not parse");
                    shared.emit(Event::ParseFailed {
                        error: error.to_string(),
                        message,
                    });
                }
            }
        }
    }

    /// Back to raw messages.
    pub fn into_raw(self) -> Incoming {
        self.inner
    }
}

impl Client {
    /// Serializes `value` as JSON and sends it as a text message, like [`Client::send`].
    ///
    /// # Errors
    ///
    /// [`JsonSendError::Serialize`] if serde fails, [`JsonSendError::Send`] as for
    /// [`Client::send`].
    ///
    /// # Cancel safety
    ///
    /// As [`Client::send`].
    pub async fn send_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<Sent, JsonSendError> {
        let text = serde_json::to_string(value).map_err(JsonSendError::Serialize)?;
        self.send(Message::text(text))
            .await
            .map_err(JsonSendError::Send)
    }
}
