//! Resumable uploads over HTTP, speaking the [tus 1.0](https://tus.io) protocol: an axum
//! server and a reqwest client.
//!
//! Large uploads fail in the middle: a phone changes networks, a proxy times out, a
//! server restarts. With tus, the client asks the server how many bytes it holds and
//! sends only the rest. This crate implements both halves so that they can be used with
//! each other or with any other tus implementation (tus-js-client, Uppy, tusd,
//! @tus/server):
//!
//! - [`server::TusServer`]: core protocol plus creation, creation-with-upload,
//!   creation-defer-length, termination, expiration, checksum (sha1, sha256, crc32;
//!   header and trailer) and concatenation. One writer per upload with takeover of a
//!   stalled one, size limits applied while reading, random 128-bit ids, a completion
//!   hook and an authorisation hook. Storage sits behind the [`store::Store`] trait, with
//!   [`store::FileStore`] as the default.
//! - [`client::Uploader`]: streams a file or any `AsyncRead` in bounded memory, backs off
//!   and resumes from the server's offset after any failure (never from zero on a 5xx or
//!   a network error), remembers upload URLs so a rerun resumes, sends checksums and
//!   parallel parts when the server offers them, reports progress on a watch channel and
//!   stops on a `CancellationToken`.
//! - [`protocol`]: strict parsing and formatting of every tus header, shared by both.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadfast_chunk_upload::client::Uploader;
//! use steadfast_chunk_upload::server::TusServer;
//! use steadfast_chunk_upload::store::FileStore;
//!
//! // A server on a loopback port, storing into a temporary directory.
//! let dir = tempfile::tempdir()?;
//! let server = TusServer::builder(FileStore::open(dir.path()).await?)
//!     .on_complete(|info| tracing::info!(upload = %info.id, "complete"))
//!     .build()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let endpoint = format!("http://{}/files", listener.local_addr()?);
//! tokio::spawn(axum::serve(listener, server.router()).into_future());
//!
//! // Upload a stream of unknown length; the client declares it when the stream ends.
//! let uploader = Uploader::builder(endpoint).build()?;
//! let source = std::io::Cursor::new(vec![7u8; 100_000]);
//! let done = uploader.upload_reader(source, None).run().await?;
//! assert_eq!(done.length, 100_000);
//!
//! let id = done.url.rsplit('/').next().unwrap().parse()?;
//! assert_eq!(std::fs::read(server.store().data_path(&id))?, vec![7u8; 100_000]);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! - `server` (default): the axum server and the file-system store.
//! - `client` (default): the reqwest uploader (plain HTTP).
//! - `rustls`: HTTPS for the client through rustls.

#[cfg(feature = "client")]
pub mod client;
pub mod id;
pub mod protocol;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;

pub use id::{InvalidUploadId, UploadId};
