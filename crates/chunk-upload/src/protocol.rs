//! The tus 1.0 wire vocabulary: header names, and strict parsing and formatting of their
//! values.
//!
//! Both halves of the crate go through this module, so a value the server accepts is
//! exactly a value the client can produce. Parsing is strict on purpose: a number with a
//! sign, blanks or more digits than fit in a `u64` is an error, not a best guess, because
//! an offset that is "probably right" is how uploads get corrupted.
//!
//! ```
//! use steadfast_chunk_upload::protocol::{Metadata, parse_offset};
//!
//! assert_eq!(parse_offset("1024").unwrap(), 1024);
//! assert!(parse_offset("-1").is_err());
//!
//! let meta = Metadata::parse("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential").unwrap();
//! assert_eq!(meta.get("filename"), Some(&b"world_domination_plan.pdf"[..]));
//! assert_eq!(meta.get("is_confidential"), Some(&b""[..]));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The only protocol version this crate speaks; sent as `Tus-Resumable` and `Tus-Version`.
pub const TUS_VERSION: &str = "1.0.0";

/// The media type every PATCH body (and a creation-with-upload body) must declare.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

/// Header names used by tus 1.0 and its extensions, lower-case as `http` wants them.
pub mod header {
    /// Protocol version of the message; on every request and response but OPTIONS.
    pub const TUS_RESUMABLE: &str = "tus-resumable";
    /// Versions the server supports, on OPTIONS and on a 412.
    pub const TUS_VERSION: &str = "tus-version";
    /// Extensions the server supports, on OPTIONS.
    pub const TUS_EXTENSION: &str = "tus-extension";
    /// Largest upload the server accepts, on OPTIONS.
    pub const TUS_MAX_SIZE: &str = "tus-max-size";
    /// Checksum algorithms the server accepts, on OPTIONS.
    pub const TUS_CHECKSUM_ALGORITHM: &str = "tus-checksum-algorithm";
    /// Byte position the server has durably stored.
    pub const UPLOAD_OFFSET: &str = "upload-offset";
    /// Total size of the upload.
    pub const UPLOAD_LENGTH: &str = "upload-length";
    /// `1` when the size is declared later.
    pub const UPLOAD_DEFER_LENGTH: &str = "upload-defer-length";
    /// Comma-separated `key base64` pairs.
    pub const UPLOAD_METADATA: &str = "upload-metadata";
    /// `algorithm base64-digest` of one request's body.
    pub const UPLOAD_CHECKSUM: &str = "upload-checksum";
    /// `partial` or `final;url url ...`.
    pub const UPLOAD_CONCAT: &str = "upload-concat";
    /// HTTP date after which an unfinished upload may be removed.
    pub const UPLOAD_EXPIRES: &str = "upload-expires";
    /// Lets clients behind restrictive proxies tunnel PATCH and DELETE through POST.
    pub const X_HTTP_METHOD_OVERRIDE: &str = "x-http-method-override";
}

/// Extension names advertised in `Tus-Extension`.
pub mod extension {
    /// POST creates an upload.
    pub const CREATION: &str = "creation";
    /// POST may carry the first bytes.
    pub const CREATION_WITH_UPLOAD: &str = "creation-with-upload";
    /// The length may be declared after creation.
    pub const CREATION_DEFER_LENGTH: &str = "creation-defer-length";
    /// DELETE removes an upload.
    pub const TERMINATION: &str = "termination";
    /// Unfinished uploads expire.
    pub const EXPIRATION: &str = "expiration";
    /// Per-request checksums in a header.
    pub const CHECKSUM: &str = "checksum";
    /// Per-request checksums in a trailer.
    pub const CHECKSUM_TRAILER: &str = "checksum-trailer";
    /// Partial uploads joined into a final one.
    pub const CONCATENATION: &str = "concatenation";
}

/// Status code tus defines for a body whose checksum does not match.
pub const STATUS_CHECKSUM_MISMATCH: u16 = 460;

/// Why a tus header value could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The value is not a plain non-negative decimal number that fits in 64 bits.
    #[error("{header} must be a non-negative decimal integer, got {value:?}")]
    InvalidNumber {
        /// Header name.
        header: &'static str,
        /// The offending value, shortened.
        value: String,
    },
    /// `Upload-Defer-Length` was present with a value other than `1`.
    #[error("upload-defer-length must be 1, got {value:?}")]
    InvalidDeferLength {
        /// The offending value, shortened.
        value: String,
    },
    /// `Upload-Metadata` is malformed.
    #[error("upload-metadata is malformed: {reason}")]
    InvalidMetadata {
        /// What rule the value broke.
        reason: String,
    },
    /// `Upload-Checksum` is not `algorithm base64-digest`.
    #[error("upload-checksum must be \"<algorithm> <base64 digest>\": {reason}")]
    InvalidChecksum {
        /// What rule the value broke.
        reason: String,
    },
    /// The checksum names an algorithm this crate does not implement.
    #[error("checksum algorithm {name:?} is not supported (sha1, sha256, crc32 are)")]
    UnsupportedAlgorithm {
        /// The algorithm as sent, shortened.
        name: String,
    },
    /// `Upload-Concat` is neither `partial` nor `final;urls`.
    #[error("upload-concat must be \"partial\" or \"final;<url> <url> ...\": {reason}")]
    InvalidConcat {
        /// What rule the value broke.
        reason: String,
    },
    /// `Upload-Expires` is not an HTTP date.
    #[error("upload-expires is not an HTTP date: {value:?}")]
    InvalidExpires {
        /// The offending value, shortened.
        value: String,
    },
    /// A header value contains bytes that are not visible ASCII.
    #[error("{header} contains characters that are not visible ASCII")]
    NotAscii {
        /// Header name.
        header: &'static str,
    },
}

/// Shortens a hostile value before it is echoed in an error message.
fn clip(value: &str) -> String {
    const MAX: usize = 64;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &value[..end])
}

fn parse_u64(header: &'static str, value: &str) -> Result<u64, HeaderError> {
    let invalid = || HeaderError::InvalidNumber {
        header,
        value: clip(value),
    };
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    value.parse::<u64>().map_err(|_| invalid())
}

/// Parses an `Upload-Offset` value.
///
/// # Errors
///
/// [`HeaderError::InvalidNumber`] unless the value is only ASCII digits and fits in a `u64`.
pub fn parse_offset(value: &str) -> Result<u64, HeaderError> {
    parse_u64(header::UPLOAD_OFFSET, value)
}

/// Parses an `Upload-Length` value.
///
/// # Errors
///
/// [`HeaderError::InvalidNumber`] unless the value is only ASCII digits and fits in a `u64`.
pub fn parse_length(value: &str) -> Result<u64, HeaderError> {
    parse_u64(header::UPLOAD_LENGTH, value)
}

/// Parses a `Tus-Max-Size` value.
///
/// # Errors
///
/// [`HeaderError::InvalidNumber`] unless the value is only ASCII digits and fits in a `u64`.
pub fn parse_max_size(value: &str) -> Result<u64, HeaderError> {
    parse_u64(header::TUS_MAX_SIZE, value)
}

/// Checks an `Upload-Defer-Length` value, which tus allows only as `1`.
///
/// # Errors
///
/// [`HeaderError::InvalidDeferLength`] for anything but `1`.
pub fn parse_defer_length(value: &str) -> Result<(), HeaderError> {
    if value == "1" {
        Ok(())
    } else {
        Err(HeaderError::InvalidDeferLength { value: clip(value) })
    }
}

/// Parses an `Upload-Expires` value (an IMF-fixdate, as HTTP uses).
///
/// # Errors
///
/// [`HeaderError::InvalidExpires`] when the value is not an HTTP date.
pub fn parse_expires(value: &str) -> Result<SystemTime, HeaderError> {
    httpdate::parse_http_date(value).map_err(|_| HeaderError::InvalidExpires { value: clip(value) })
}

/// Formats a time as an `Upload-Expires` value.
pub fn format_expires(at: SystemTime) -> String {
    httpdate::fmt_http_date(at)
}

/// Splits a comma-separated header list (`Tus-Extension`, `Tus-Version`, ...) into trimmed,
/// non-empty items.
pub fn parse_list(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

/// Upload metadata: keys with binary values, sent base64-encoded in `Upload-Metadata`.
///
/// Keys are unique, non-empty, printable ASCII without spaces or commas. Iteration and
/// formatting are in key order, so a formatted header is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    entries: BTreeMap<String, Vec<u8>>,
}

impl Metadata {
    /// Upper bound on the number of pairs, so a hostile header cannot make a huge map.
    pub const MAX_ENTRIES: usize = 128;

    /// An empty set of metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses an `Upload-Metadata` header value.
    ///
    /// # Errors
    ///
    /// [`HeaderError::InvalidMetadata`] for an empty or malformed key, a duplicate key,
    /// a value that is not standard base64, or more than [`Metadata::MAX_ENTRIES`] pairs.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let invalid = |reason: String| HeaderError::InvalidMetadata { reason };
        let mut entries = BTreeMap::new();
        if value.trim().is_empty() {
            return Ok(Self { entries });
        }

        for pair in value.split(',') {
            let pair = pair.trim();
            let mut parts = pair.splitn(2, ' ');
            let key = parts.next().unwrap_or_default();
            let encoded = parts.next().unwrap_or_default().trim();
            validate_key(key).map_err(invalid)?;
            let decoded = STANDARD
                .decode(encoded)
                .map_err(|_| invalid(format!("value of key {:?} is not base64", clip(key))))?;
            if entries.insert(key.to_owned(), decoded).is_some() {
                return Err(invalid(format!("key {:?} appears twice", clip(key))));
            }
            if entries.len() > Self::MAX_ENTRIES {
                return Err(invalid(format!("more than {} pairs", Self::MAX_ENTRIES)));
            }
        }
        Ok(Self { entries })
    }

    /// Adds or replaces a pair.
    ///
    /// # Errors
    ///
    /// [`HeaderError::InvalidMetadata`] when the key is empty, contains a space, a comma or
    /// a character that is not printable ASCII.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), HeaderError> {
        let key = key.into();
        validate_key(&key).map_err(|reason| HeaderError::InvalidMetadata { reason })?;
        self.entries.insert(key, value.into());
        Ok(())
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.entries.get(key).map(Vec::as_slice)
    }

    /// The value under `key` as UTF-8 text, when it is valid UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
}

impl fmt::Display for Metadata {
    /// Formats the pairs as an `Upload-Metadata` value; an empty value is written as the
    /// bare key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (key, value)) in self.entries.iter().enumerate() {
            if index > 0 {
                f.write_str(",")?;
            }
            f.write_str(key)?;
            if !value.is_empty() {
                write!(f, " {}", STANDARD.encode(value))?;
            }
        }
        Ok(())
    }
}

fn validate_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("a key is empty".to_owned());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
        return Err(format!(
            "key {:?} contains a space, comma or non-ASCII character",
            clip(key)
        ));
    }
    Ok(())
}

/// A checksum algorithm usable in `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ChecksumAlgorithm {
    /// SHA-1 (20-byte digest); the one every tus server supports.
    Sha1,
    /// SHA-256 (32-byte digest).
    Sha256,
    /// CRC-32 (IEEE), a 4-byte big-endian digest; cheap, detects accidents only.
    Crc32,
}

impl ChecksumAlgorithm {
    /// Every algorithm this crate implements, strongest first.
    pub const ALL: [ChecksumAlgorithm; 3] = [Self::Sha256, Self::Sha1, Self::Crc32];

    /// The name used on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Crc32 => "crc32",
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Crc32 => 4,
        }
    }

    /// A fresh incremental hasher.
    pub fn hasher(self) -> ChecksumHasher {
        use sha2::Digest as _;
        let state = match self {
            Self::Sha1 => HasherState::Sha1(sha1::Sha1::new()),
            Self::Sha256 => HasherState::Sha256(sha2::Sha256::new()),
            Self::Crc32 => HasherState::Crc32(crc32fast::Hasher::new()),
        };
        ChecksumHasher { state }
    }
}

impl fmt::Display for ChecksumAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ChecksumAlgorithm {
    type Err = HeaderError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Self::Sha1),
            "sha256" => Ok(Self::Sha256),
            "crc32" => Ok(Self::Crc32),
            _ => Err(HeaderError::UnsupportedAlgorithm { name: clip(name) }),
        }
    }
}

/// Incremental digest of a request body, for any [`ChecksumAlgorithm`].
#[derive(Clone)]
pub struct ChecksumHasher {
    state: HasherState,
}

#[derive(Clone)]
enum HasherState {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Crc32(crc32fast::Hasher),
}

impl fmt::Debug for ChecksumHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.state {
            HasherState::Sha1(_) => "sha1",
            HasherState::Sha256(_) => "sha256",
            HasherState::Crc32(_) => "crc32",
        };
        f.debug_struct("ChecksumHasher")
            .field("algorithm", &name)
            .finish()
    }
}

impl ChecksumHasher {
    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match &mut self.state {
            HasherState::Sha1(h) => h.update(data),
            HasherState::Sha256(h) => h.update(data),
            HasherState::Crc32(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Vec<u8> {
        use sha2::Digest as _;
        match self.state {
            HasherState::Sha1(h) => h.finalize().to_vec(),
            HasherState::Sha256(h) => h.finalize().to_vec(),
            HasherState::Crc32(h) => h.finalize().to_be_bytes().to_vec(),
        }
    }
}

/// A parsed `Upload-Checksum`: the algorithm and the expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// Algorithm the digest was computed with.
    pub algorithm: ChecksumAlgorithm,
    /// Raw digest bytes (already base64-decoded).
    pub digest: Vec<u8>,
}

impl Checksum {
    /// Computes the checksum of `data`.
    pub fn compute(algorithm: ChecksumAlgorithm, data: &[u8]) -> Self {
        let mut hasher = algorithm.hasher();
        hasher.update(data);
        Self {
            algorithm,
            digest: hasher.finish(),
        }
    }

    /// Parses an `Upload-Checksum` value.
    ///
    /// # Errors
    ///
    /// [`HeaderError::UnsupportedAlgorithm`] for an algorithm other than sha1, sha256 and
    /// crc32 (a server answers that with 400); [`HeaderError::InvalidChecksum`] for a value
    /// that is not `algorithm base64` or a digest of the wrong length.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let invalid = |reason: &str| HeaderError::InvalidChecksum {
            reason: reason.to_owned(),
        };
        let (name, encoded) = value
            .trim()
            .split_once(' ')
            .ok_or_else(|| invalid("no space"))?;
        let algorithm: ChecksumAlgorithm = name.parse()?;
        let digest = STANDARD
            .decode(encoded.trim())
            .map_err(|_| invalid("digest is not base64"))?;
        if digest.len() != algorithm.digest_len() {
            return Err(invalid("digest has the wrong length for its algorithm"));
        }
        Ok(Self { algorithm, digest })
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.algorithm, STANDARD.encode(&self.digest))
    }
}

/// A parsed `Upload-Concat`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Concat {
    /// This upload is one part of a later final upload.
    Partial,
    /// This upload is the concatenation of the listed partial uploads, in order.
    Final(Vec<String>),
}

impl Concat {
    /// Upper bound on the number of parts a final upload may name.
    pub const MAX_PARTS: usize = 1000;

    /// Parses an `Upload-Concat` value. The URLs of a final upload are returned as sent;
    /// resolving them is the server's job.
    ///
    /// # Errors
    ///
    /// [`HeaderError::InvalidConcat`] for anything but `partial` or `final;` followed by
    /// one to [`Concat::MAX_PARTS`] space-separated URLs.
    pub fn parse(value: &str) -> Result<Self, HeaderError> {
        let invalid = |reason: &str| HeaderError::InvalidConcat {
            reason: reason.to_owned(),
        };
        let value = value.trim();
        if value == "partial" {
            return Ok(Self::Partial);
        }
        let urls = value
            .strip_prefix("final;")
            .ok_or_else(|| invalid("unknown form"))?;
        let parts: Vec<String> = urls.split_ascii_whitespace().map(str::to_owned).collect();
        if parts.is_empty() {
            return Err(invalid("a final upload names no partial upload"));
        }
        if parts.len() > Self::MAX_PARTS {
            return Err(invalid("too many partial uploads"));
        }
        Ok(Self::Final(parts))
    }
}

impl fmt::Display for Concat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partial => f.write_str("partial"),
            Self::Final(parts) => write!(f, "final;{}", parts.join(" ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn offsets_accept_plain_digits_only() {
        assert_eq!(parse_offset("0").unwrap(), 0);
        assert_eq!(parse_offset("18446744073709551615").unwrap(), u64::MAX);
        for bad in [
            "",
            "-1",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "0x10",
            "18446744073709551616",
            "１",
        ] {
            assert!(
                matches!(parse_offset(bad), Err(HeaderError::InvalidNumber { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn number_errors_name_the_header_and_clip_the_value() {
        let err = parse_length(&"9".repeat(500)).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("upload-length"), "{text}");
        assert!(text.len() < 160, "{text}");
    }

    #[test]
    fn defer_length_must_be_one() {
        assert!(parse_defer_length("1").is_ok());
        assert!(parse_defer_length("0").is_err());
        assert!(parse_defer_length("true").is_err());
    }

    #[test]
    fn metadata_round_trips_with_empty_values() {
        let parsed = Metadata::parse("filename d29ybGQ=, empty,type dGV4dC9wbGFpbg==").unwrap();
        assert_eq!(parsed.get_str("filename"), Some("world"));
        assert_eq!(parsed.get("empty"), Some(&b""[..]));
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed.to_string(),
            "empty,filename d29ybGQ=,type dGV4dC9wbGFpbg=="
        );
        assert_eq!(Metadata::parse(&parsed.to_string()).unwrap(), parsed);
    }

    #[test]
    fn metadata_rejects_bad_keys_values_and_duplicates() {
        for bad in ["a b c", "k !!!", "k d29ybGQ=,k d29ybGQ=", ",", "é d29ybGQ="] {
            assert!(Metadata::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let many: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
        assert!(Metadata::parse(&many.join(",")).is_err());
        assert!(Metadata::parse("").unwrap().is_empty());

        let mut meta = Metadata::new();
        assert!(meta.insert("has space", "x").is_err());
        assert!(meta.insert("name", "x").is_ok());
    }

    #[test]
    fn checksums_parse_compute_and_format() {
        let sum = Checksum::compute(ChecksumAlgorithm::Sha1, b"hello");
        let text = sum.to_string();
        assert_eq!(text, "sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=");
        assert_eq!(Checksum::parse(&text).unwrap(), sum);

        let crc = Checksum::compute(ChecksumAlgorithm::Crc32, b"123456789");
        assert_eq!(crc.digest, 0xCBF4_3926_u32.to_be_bytes());
        let sha256 = Checksum::compute(ChecksumAlgorithm::Sha256, b"");
        assert_eq!(sha256.digest[..4], [0xe3, 0xb0, 0xc4, 0x42]);
    }

    #[test]
    fn checksum_errors_distinguish_unknown_algorithms() {
        assert!(matches!(
            Checksum::parse("md4 AAAA"),
            Err(HeaderError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            Checksum::parse("sha1"),
            Err(HeaderError::InvalidChecksum { .. })
        ));
        assert!(matches!(
            Checksum::parse("sha1 !!"),
            Err(HeaderError::InvalidChecksum { .. })
        ));
        assert!(matches!(
            Checksum::parse("sha1 AAAA"),
            Err(HeaderError::InvalidChecksum { .. })
        ));
    }

    #[test]
    fn concat_parses_both_forms() {
        assert_eq!(Concat::parse("partial").unwrap(), Concat::Partial);
        let fin = Concat::parse("final;/files/a http://x/files/b").unwrap();
        assert_eq!(
            fin,
            Concat::Final(vec!["/files/a".into(), "http://x/files/b".into()])
        );
        assert_eq!(fin.to_string(), "final;/files/a http://x/files/b");
        for bad in ["final;", "final", "full", ""] {
            assert!(Concat::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn expires_round_trips() {
        let at = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let text = format_expires(at);
        assert_eq!(text, "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(parse_expires(&text).unwrap(), at);
        assert!(parse_expires("tomorrow").is_err());
    }

    #[test]
    fn lists_split_and_trim() {
        let items: Vec<_> = parse_list(" creation, ,termination,").collect();
        assert_eq!(items, ["creation", "termination"]);
    }
}
