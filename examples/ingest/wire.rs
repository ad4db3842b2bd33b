//! What the ingest server and client say to each other besides tus: the progress events
//! pushed over the WebSocket, the final report served at `/report`, and the metadata keys
//! an upload carries.

use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The upload metadata key holding the file's path relative to the ingested directory.
pub(crate) const META_NAME: &str = "filename";

/// The upload metadata key holding the SHA-256 the client computed, as lowercase hex.
pub(crate) const META_SHA256: &str = "sha256";

/// The prefix of the error a verification job fails with when the stored bytes do not
/// match the declared checksum; the report counts these as integrity mismatches.
pub(crate) const MISMATCH: &str = "checksum mismatch";

/// One progress event, sent as a JSON text message on `/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerEvent {
    /// Counts read from the job store; sent on connect and then every half second, so a
    /// client that reconnects is current again at once.
    Totals(Totals),
    /// An upload's last byte arrived and its verification job was queued.
    Uploaded {
        /// The upload id.
        upload: String,
        /// The file's relative path.
        name: String,
    },
    /// A verification attempt started.
    Attempt {
        /// The job id.
        job: i64,
        /// The attempt number, from 1.
        attempt: u32,
    },
    /// An attempt failed and the job will run again.
    Retry {
        /// The job id.
        job: i64,
        /// The attempt that failed.
        attempt: u32,
    },
    /// A file was verified.
    Verified {
        /// The job id.
        job: i64,
    },
    /// A job became a dead letter.
    Dead {
        /// The job id.
        job: i64,
    },
}

/// Job counts by state, as the store has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Totals {
    /// Jobs verified.
    pub(crate) verified: u64,
    /// Dead letters.
    pub(crate) dead: u64,
    /// Jobs waiting or running.
    pub(crate) active: u64,
}

/// What the server knows about every upload it holds, served as JSON at `/report`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// One entry per upload in the store.
    pub(crate) uploads: Vec<UploadStatus>,
    /// Verification attempts, over every job of these uploads.
    pub(crate) attempts: u64,
    /// Attempts that failed and were tried again.
    pub(crate) retries: u64,
    /// Progress WebSocket sessions open right now.
    pub(crate) sessions: u64,
}

/// Where one upload stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct UploadStatus {
    /// The upload id.
    pub(crate) id: String,
    /// The file's relative path, from the metadata.
    pub(crate) name: String,
    /// How far it got.
    pub(crate) state: UploadState,
    /// Why it failed, for dead letters and mismatches.
    pub(crate) reason: Option<String>,
}

/// The life of an upload on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum UploadState {
    /// Bytes are still missing.
    Receiving,
    /// Complete; its verification job has not finished yet.
    Pending,
    /// Complete and its checksum matched.
    Verified,
    /// Its verification failed permanently (a dead letter).
    Dead,
    /// The stored bytes do not match the declared checksum.
    Mismatch,
}

impl UploadState {
    /// Whether nothing more will happen to the upload.
    pub(crate) fn is_final(self) -> bool {
        matches!(self, Self::Verified | Self::Dead | Self::Mismatch)
    }
}

/// The SHA-256 of the file at `path`, as lowercase hex. Blocking: call it from a blocking
/// thread.
///
/// # Errors
///
/// The I/O error from reading the file.
pub(crate) fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex(&hasher.finalize()))
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;

    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// Whether `name` matches the glob `pattern`, where `*` stands for any run of characters
/// (slashes included) and `?` for exactly one.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (pattern, name): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), name.chars().collect());
    let (mut p, mut n) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;

    while n < name.len() {
        match pattern.get(p) {
            Some('*') => {
                backtrack = Some((p, n));
                p += 1;
            }
            Some(&c) if c == '?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((star, matched)) => {
                    p = star + 1;
                    n = matched + 1;
                    backtrack = Some((star, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}
