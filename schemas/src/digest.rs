//! `sha256:<64 lowercase hex>` content digests over exact bytes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// Why a digest string was rejected, or why bytes did not match it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("digest {0:?} has no algorithm prefix (expected sha256:<64 hex>)")]
    MissingAlgorithm(String),
    #[error("digest algorithm {0:?} is not supported (only sha256)")]
    UnsupportedAlgorithm(String),
    #[error("digest value must be 64 lowercase hex characters, got {0:?}")]
    BadHex(String),
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    Mismatch { expected: Digest, actual: Digest },
}

/// A SHA-256 digest, written `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest of `bytes` exactly as given (no re-serialisation).
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// Parses `sha256:<64 lowercase hex>`; anything else is an error.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let short = || text.chars().take(100).collect::<String>();
        let (algorithm, value) = text
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(short()))?;
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(
                algorithm.chars().take(40).collect(),
            ));
        }
        if value.len() != 64
            || !value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(DigestError::BadHex(value.chars().take(100).collect()));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(value, &mut out).map_err(|_| DigestError::BadHex(short()))?;
        Ok(Self(out))
    }

    /// Checks that `bytes` hash to this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), DigestError> {
        let actual = Self::of(bytes);
        if actual == *self {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: *self,
                actual,
            })
        }
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The bare hex value, for file names and cache keys.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_vector() {
        assert_eq!(
            Digest::of(b"abc").to_string(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn rejects_other_forms() {
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert!(matches!(
            Digest::parse(&format!("sha512:{hex}")),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            Digest::parse(hex),
            Err(DigestError::MissingAlgorithm(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", hex.to_uppercase())),
            Err(DigestError::BadHex(_))
        ));
        assert!(matches!(
            Digest::parse(&format!("sha256:{}", &hex[1..])),
            Err(DigestError::BadHex(_))
        ));
    }

    #[test]
    fn verify_detects_tampering() {
        let d = Digest::of(b"apiVersion: x");
        assert!(d.verify(b"apiVersion: x").is_ok());
        assert!(matches!(
            d.verify(b"apiVersion: y"),
            Err(DigestError::Mismatch { .. })
        ));
    }

    proptest! {
        #[test]
        fn display_parse_roundtrip(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let d = Digest::of(&bytes);
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        }

        #[test]
        fn parse_never_panics(s in ".{0,120}") {
            let _ = Digest::parse(&s);
        }
    }
}
