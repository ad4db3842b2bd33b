//! Upload identifiers: random, 128 bits, and validated before they name anything.

use std::fmt;
use std::str::FromStr;

use rand::RngCore as _;

/// Identifier of one upload: 128 random bits written as 32 lower-case hex digits.
///
/// The server generates every id; a client never chooses one. Because an `UploadId` can
/// only be built by [`UploadId::random`] or by parsing exactly 32 hex digits, a value of
/// this type can be joined onto a directory without any chance of naming a path outside
/// it (no `/`, `.`, `\`, `%` or NUL can get in).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UploadId(String);

/// A string that is not a valid [`UploadId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an upload id is 32 lower-case hex digits")]
#[non_exhaustive]
pub struct InvalidUploadId;

impl UploadId {
    /// Number of hex digits in an id.
    pub const LEN: usize = 32;

    /// A fresh id from a cryptographically secure generator seeded by the operating system.
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Validates `text` as an id.
    ///
    /// # Errors
    ///
    /// [`InvalidUploadId`] unless `text` is exactly 32 characters from `0-9a-f`.
    pub fn parse(text: &str) -> Result<Self, InvalidUploadId> {
        let valid = text.len() == Self::LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidUploadId)
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UploadId({})", self.0)
    }
}

impl FromStr for UploadId {
    type Err = InvalidUploadId;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl TryFrom<String> for UploadId {
    type Error = InvalidUploadId;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        Self::parse(&text)
    }
}

impl From<UploadId> for String {
    fn from(id: UploadId) -> Self {
        id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_are_valid_and_distinct() {
        let a = UploadId::random();
        let b = UploadId::random();
        assert_ne!(a, b);
        assert_eq!(UploadId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn hostile_strings_are_rejected() {
        let long = "x".repeat(10_000);
        for bad in [
            "",
            "..",
            "../victim",
            "..%2Fvictim",
            "a\0b",
            "/etc/passwd",
            &long,
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcde/",
        ] {
            assert!(UploadId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
