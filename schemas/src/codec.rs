//! Bounded CBOR encoding and decoding (ciborium).
//!
//! Every decoder in the project goes through [`decode`], which refuses input
//! over a byte limit before parsing and caps nesting depth, so a hostile
//! payload cannot exhaust memory or the stack.

use serde::{de::DeserializeOwned, Serialize};

/// Default upper bound for one MQTT payload we decode (1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Deepest CBOR nesting we accept.
pub const MAX_DEPTH: usize = 32;

/// Why CBOR could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("payload is {len} bytes, the limit is {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed CBOR: {0}")]
    Malformed(String),
    #[error("could not encode CBOR: {0}")]
    Encode(String),
}

/// Encodes `value` as CBOR.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(128);
    ciborium::ser::into_writer(value, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(out)
}

/// Decodes CBOR of at most `max` bytes into `T`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
        .map_err(|e| CodecError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
        #[serde(with = "serde_bytes")]
        c: Vec<u8>,
    }

    #[test]
    fn roundtrip() {
        let s = Sample {
            a: 7,
            b: "x".into(),
            c: vec![1, 2, 3],
        };
        let bytes = encode(&s).unwrap();
        assert_eq!(decode::<Sample>(&bytes, 1024).unwrap(), s);
    }

    #[test]
    fn refuses_oversize_before_parsing() {
        let bytes = vec![0u8; 2000];
        assert!(matches!(
            decode::<Sample>(&bytes, 1000),
            Err(CodecError::TooLarge {
                len: 2000,
                max: 1000
            })
        ));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        // 10,000 nested one-element arrays.
        let mut bytes = vec![0x81u8; 10_000];
        bytes.push(0x00);
        assert!(decode::<ciborium::Value>(&bytes, 1 << 20).is_err());
    }

    #[test]
    fn huge_declared_length_is_an_error() {
        // A byte string that claims 2^63 bytes.
        let bytes = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert!(decode::<ciborium::Value>(&bytes, 1 << 20).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Sample>(&bytes, 1 << 20);
            let _ = decode::<ciborium::Value>(&bytes, 1 << 20);
        }
    }
}
