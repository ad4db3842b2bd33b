//! Where upload bytes and their bookkeeping live, behind the [`Store`] trait.
//!
//! The server keeps every protocol rule (locking, offsets, checksums, limits, expiry) and
//! asks a store only to keep bytes durably. The contract a store must keep:
//!
//! - [`Store::info`] reports as `offset` exactly the bytes that are stored, never more
//!   (that would make the client skip data) and never less than what a committed writer
//!   acknowledged (that would make the offset go backwards). A store that has lost
//!   acknowledged bytes answers [`StoreError::Gone`] instead of a smaller offset.
//! - [`UploadWriter::commit`] returns only once the bytes written are durable; the server
//!   acknowledges them to the client after that.
//! - [`UploadWriter::abort`] removes every byte this writer added, so a request whose
//!   checksum failed leaves no trace.
//!
//! [`FileStore`] is the default, one data file and one small JSON file per upload.

mod fs;

use std::future::Future;
use std::time::SystemTime;

pub use self::fs::FileStore;
use crate::id::UploadId;
use crate::protocol::Metadata;

/// What is known about one upload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct UploadInfo {
    /// The upload's id.
    pub id: UploadId,
    /// Total size, or `None` while the length is deferred.
    pub length: Option<u64>,
    /// Bytes durably stored. Ignored by [`Store::create`] (a new upload starts at 0).
    #[serde(skip)]
    pub offset: u64,
    /// Metadata given at creation.
    pub metadata: Metadata,
    /// Role in concatenation, if any.
    pub concat: Option<ConcatRole>,
    /// When the upload was created.
    pub created_at: SystemTime,
    /// After this time an unfinished upload may be removed.
    pub expires_at: Option<SystemTime>,
}

impl UploadInfo {
    /// A new, empty upload description; the server fills in the rest before
    /// [`Store::create`].
    pub fn new(id: UploadId, length: Option<u64>, created_at: SystemTime) -> Self {
        Self {
            id,
            length,
            offset: 0,
            metadata: Metadata::new(),
            concat: None,
            created_at,
            expires_at: None,
        }
    }

    /// Whether every byte has arrived.
    pub fn is_complete(&self) -> bool {
        self.length == Some(self.offset)
    }
}

/// How an upload takes part in the concatenation extension.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ConcatRole {
    /// A part, to be joined into a final upload later.
    Partial,
    /// The join of these parts, in order.
    Final(Vec<UploadId>),
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No upload has this id.
    #[error("upload {0} does not exist")]
    NotFound(UploadId),
    /// The upload existed but is gone (removed, expired, or its stored bytes were lost).
    #[error("upload {0} is gone")]
    Gone(UploadId),
    /// The store cannot hold an upload of this size.
    #[error("the store cannot hold {length} bytes in one upload: {reason}")]
    TooLarge {
        /// The declared length.
        length: u64,
        /// The store's rule.
        reason: String,
    },
    /// The store's own files disagree with each other.
    #[error("stored state of upload {id} is inconsistent: {reason}")]
    Corrupt {
        /// Affected upload.
        id: UploadId,
        /// What does not add up.
        reason: String,
    },
    /// An I/O operation failed.
    #[error("could not {op} for upload {id}")]
    Io {
        /// What the store was doing.
        op: &'static str,
        /// Affected upload.
        id: UploadId,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store's directory could not be listed.
    #[error("could not list the store")]
    List {
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Wraps an I/O error with what was being done.
    pub fn io(op: &'static str, id: &UploadId, source: std::io::Error) -> Self {
        Self::Io {
            op,
            id: id.clone(),
            source,
        }
    }
}

/// Durable storage for uploads. The server serialises writers per upload, so a store
/// never sees two writers for one id at once.
pub trait Store: Send + Sync + 'static {
    /// Appends bytes for one request.
    type Writer: UploadWriter;

    /// Records a new, empty upload.
    ///
    /// # Errors
    ///
    /// [`StoreError::TooLarge`] when the store cannot hold the declared length; I/O errors.
    fn create(&self, info: UploadInfo) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Current state of an upload, with `offset` equal to the bytes stored.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`], [`StoreError::Gone`], or I/O errors.
    fn info(&self, id: &UploadId) -> impl Future<Output = Result<UploadInfo, StoreError>> + Send;

    /// Opens a writer that appends at the current offset.
    ///
    /// # Errors
    ///
    /// As for [`Store::info`].
    fn writer(
        &self,
        id: &UploadId,
    ) -> impl Future<Output = Result<Self::Writer, StoreError>> + Send;

    /// Sets the length of an upload created with a deferred length.
    ///
    /// # Errors
    ///
    /// As for [`Store::info`].
    fn declare_length(
        &self,
        id: &UploadId,
        length: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Called once when the last byte of an upload is committed (part-based stores
    /// assemble here).
    ///
    /// # Errors
    ///
    /// As for [`Store::info`].
    fn finish(&self, id: &UploadId) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = id;
        async { Ok(()) }
    }

    /// Fills the (empty) upload `target` with the bytes of `parts`, in order.
    ///
    /// # Errors
    ///
    /// As for [`Store::info`], for the target or any part.
    fn concatenate(
        &self,
        target: &UploadId,
        parts: &[UploadId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes an upload and its bytes. Removing a missing upload is not an error.
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn delete(&self, id: &UploadId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every upload id in the store, for expiry sweeps.
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn list(&self) -> impl Future<Output = Result<Vec<UploadId>, StoreError>> + Send;
}

/// Appends one request's bytes to an upload.
pub trait UploadWriter: Send + 'static {
    /// Appends bytes. They need not be durable yet, but [`Store::info`] may already count
    /// them.
    ///
    /// # Errors
    ///
    /// I/O errors; the server then commits what it can.
    fn write(&mut self, data: &[u8]) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Makes everything written durable and returns the new offset.
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn commit(self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes everything this writer added and returns the offset it started from.
    ///
    /// # Errors
    ///
    /// I/O errors.
    fn abort(self) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// Limits of a store that keeps an upload as numbered parts (S3-style multipart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartLimits {
    /// Smallest part allowed, except for the last one.
    pub min_part: u64,
    /// Largest part allowed.
    pub max_part: u64,
    /// Most parts one upload may have.
    pub max_parts: u32,
}

impl PartLimits {
    /// The limits of Amazon S3 multipart uploads: 5 MiB to 5 GiB per part, 10,000 parts.
    pub const S3: PartLimits = PartLimits {
        min_part: 5 << 20,
        max_part: 5 << 30,
        max_parts: 10_000,
    };

    /// The part size for an upload of `length` bytes: the minimum part size, raised (in
    /// whole MiB) just enough that `length` fits in `max_parts` parts. `None` when even
    /// parts of `max_part` bytes cannot hold it. A deferred length should be planned with
    /// the largest length the server accepts.
    pub fn part_size(&self, length: u64) -> Option<u64> {
        const MIB: u64 = 1 << 20;
        let needed = length.div_ceil(u64::from(self.max_parts.max(1)));
        let size = needed.max(self.min_part).div_ceil(MIB).saturating_mul(MIB);
        let size = size.max(self.min_part);
        (size <= self.max_part).then_some(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_keep_the_count_within_the_limit() {
        let s3 = PartLimits::S3;
        assert_eq!(s3.part_size(60 << 20), Some(5 << 20));
        assert_eq!(s3.part_size(0), Some(5 << 20));
        let size = s3.part_size(60 << 30).unwrap();
        assert!((60u64 << 30).div_ceil(size) <= 10_000, "{size}");
        assert!(size > 5 << 20);
        assert_eq!(s3.part_size(60 << 40), None);
        let exact = s3.part_size(50_000 << 20).unwrap();
        assert_eq!(exact, 5 << 20);
    }
}
