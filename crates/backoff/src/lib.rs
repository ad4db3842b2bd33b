//! Not yet: this crate is reserved in the workspace and has no API so far.
//!
//! ```
//! extern crate steadfast_backoff;
//! ```
