//! What can go wrong in an upload, and which of it is worth retrying.

use steadfast_backoff::{Classify, ErrorClass};

use crate::protocol::HeaderError;

/// Why an upload (or one request of it) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UploadError {
    /// The server answered with a status the client cannot act on.
    #[error("the server answered {status} to {request}: {message}")]
    Status {
        /// Which request.
        request: &'static str,
        /// The HTTP status.
        status: u16,
        /// The response body, shortened.
        message: String,
        /// A `Retry-After` hint, if the server gave one.
        retry_after: Option<std::time::Duration>,
    },
    /// A response lacked a header the protocol requires; nothing is assumed in its place.
    #[error("the response to {request} lacks the {header} header")]
    MissingHeader {
        /// Which request.
        request: &'static str,
        /// The missing header.
        header: &'static str,
    },
    /// A response header could not be understood.
    #[error("the response to {request} has an invalid header")]
    InvalidHeader {
        /// Which request.
        request: &'static str,
        /// What is wrong with it.
        #[source]
        source: HeaderError,
    },
    /// The server reported an offset outside what this request could have produced.
    #[error("the server reported offset {reported}, expected between {low} and {high}")]
    OffsetOutOfRange {
        /// The reported offset.
        reported: u64,
        /// Lowest plausible value.
        low: u64,
        /// Highest plausible value.
        high: u64,
    },
    /// The request could not be sent or its answer not received.
    #[error("the {request} request failed in transit")]
    Transport {
        /// Which request.
        request: &'static str,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// The data source could not be read.
    #[error("could not {op} the upload source")]
    Source {
        /// What was being done.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The source ended before the declared length, or changed size.
    #[error("the source has {actual} bytes where {expected} were expected")]
    SourceLength {
        /// Length the upload was created with.
        expected: u64,
        /// Bytes the source actually has (or had when it ended).
        actual: u64,
    },
    /// A non-seekable source would have to be read again from before what it still holds.
    #[error(
        "the server needs bytes from offset {needed}, but the stream source is already at {held}"
    )]
    SourceNotRewindable {
        /// Offset the server asked for.
        needed: u64,
        /// Oldest offset still held.
        held: u64,
    },
    /// The server kept rejecting a chunk's checksum.
    #[error("the server rejected the checksum of the chunk at offset {offset} {attempts} times")]
    Checksum {
        /// Start of the chunk.
        offset: u64,
        /// How many times it was sent.
        attempts: u32,
    },
    /// The upload no longer exists on the server (404/410) and restarting was not allowed.
    #[error("the upload at {url} is gone (status {status}) and restarting is not allowed")]
    Gone {
        /// The upload URL.
        url: String,
        /// 404 or 410.
        status: u16,
    },
    /// The file is bigger than the server accepts.
    #[error("the upload has {length} bytes; the server accepts at most {max}")]
    TooLarge {
        /// Upload length.
        length: u64,
        /// The server's `Tus-Max-Size`.
        max: u64,
    },
    /// Too many failures in a row without progress.
    #[error("gave up after {attempts} attempts without progress")]
    RetriesExhausted {
        /// Attempts made since the last progress.
        attempts: u32,
        /// The last failure.
        #[source]
        last: Box<UploadError>,
    },
    /// The upload URL store failed.
    #[error("the upload URL store failed")]
    UrlStore(#[source] std::io::Error),
    /// The cancellation token fired.
    #[error("the upload was cancelled")]
    Cancelled,
}

impl UploadError {
    /// Whether the error came from the cancellation token.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Self::Cancelled)
    }

    /// The HTTP status, when the server answered with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } | Self::Gone { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether this names a missing or invalid response header.
    pub fn is_protocol(&self) -> bool {
        matches!(
            self,
            Self::MissingHeader { .. } | Self::InvalidHeader { .. } | Self::OffsetOutOfRange { .. }
        )
    }
}

impl Classify for UploadError {
    /// Network failures, 5xx, 408/423/429, conflicts and garbled answers are resolved by
    /// asking the server for its offset and resuming; everything else stops the upload.
    fn classify(&self) -> ErrorClass {
        match self {
            Self::Status {
                status: 409 | 423, ..
            } => ErrorClass::Transient,
            Self::Status {
                status,
                retry_after,
                ..
            } => ErrorClass::from_http_status(*status).with_hint(*retry_after),
            Self::Transport { .. }
            | Self::MissingHeader { .. }
            | Self::InvalidHeader { .. }
            | Self::OffsetOutOfRange { .. } => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        }
    }
}
