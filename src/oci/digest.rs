//! Content digests (`sha256:<64 hex>`): parsing against the image-spec
//! grammar, and incremental hashing in large blocks.

use std::fmt;

use sha2::{Digest as _, Sha256};

/// A validated sha256 digest. Other algorithms that match the grammar are
/// recognised (so the error can say "unsupported") but cannot be stored.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    Invalid(String),
    #[error("unsupported digest algorithm {0:?}: only sha256 is supported")]
    Unsupported(String),
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((algorithm, encoded)) = s.split_once(':') else {
            return Err(DigestError::Invalid(truncate(s)));
        };
        if !valid_algorithm(algorithm) || !valid_encoded(encoded) {
            return Err(DigestError::Invalid(truncate(s)));
        }
        if algorithm != "sha256" {
            return Err(DigestError::Unsupported(algorithm.to_string()));
        }
        if encoded.len() != 64
            || !encoded
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::Invalid(truncate(s)));
        }
        Ok(Digest {
            hex: encoded.to_string(),
        })
    }

    /// Builds a digest from a 64-char lowercase hex string (e.g. a file name).
    pub fn from_hex(hex: &str) -> Option<Self> {
        Self::parse(&format!("sha256:{hex}")).ok()
    }

    pub fn of(bytes: &[u8]) -> Self {
        let mut h = Sha256Hasher::new();
        h.update(bytes);
        h.finish()
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// algorithm ::= algorithm-component (algorithm-separator algorithm-component)*
/// algorithm-component ::= [a-z0-9]+ ; algorithm-separator ::= [+._-]
fn valid_algorithm(a: &str) -> bool {
    !a.is_empty()
        && a.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
}

/// encoded ::= [a-zA-Z0-9=_-]+
fn valid_encoded(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 256
        && e.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

fn truncate(s: &str) -> String {
    s.chars().take(100).collect()
}

/// Incremental sha256, fed in large blocks by the blob writers.
#[derive(Clone, Default)]
pub struct Sha256Hasher {
    inner: Sha256,
}

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
    }
    pub fn finish(self) -> Digest {
        Digest {
            hex: hex::encode(self.inner.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sha256() {
        let d = Digest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        assert_eq!(d, Digest::of(b""));
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "sha256",
            "sha256:",
            ":abc",
            "sha256:abc",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../etc/passwd",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn other_algorithms_are_unsupported_not_invalid() {
        assert!(matches!(
            Digest::parse("sha512:abcd"),
            Err(DigestError::Unsupported(_))
        ));
    }
}
