//! Resumable uploads over HTTP, speaking the tus 1.0 protocol.
//!
//! Not yet: the server and client halves are still being written.
//!
//! ```
//! use steadfast_chunk_upload::protocol::parse_offset;
//!
//! assert_eq!(parse_offset("42").unwrap(), 42);
//! ```

#[cfg(feature = "client")]
pub mod client;
pub mod id;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;

pub use id::{InvalidUploadId, UploadId};
