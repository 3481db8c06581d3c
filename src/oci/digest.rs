//! Content digests (`<algorithm>:<encoded>`) and resumable hashing.

use std::fmt;
use std::str::FromStr;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256, Sha512};

/// Longest digest string accepted anywhere (algorithm, colon and encoded part).
pub const MAX_DIGEST_LENGTH: usize = 256;

/// A digest string validated against the OCI descriptor grammar.
///
/// Digests of a registered algorithm (`sha256`, `sha512`) must also use lowercase hex of the
/// right length. Unregistered algorithms pass validation if they follow the grammar, as the
/// image spec asks, but content can only be verified for the registered ones.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    value: String,
    colon: usize,
}

/// The hash functions Berth can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    /// SHA-256, the canonical algorithm.
    Sha256,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's identifier in digest strings.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Number of hex characters in an encoded digest of this algorithm.
    pub fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha512 => 128,
        }
    }

    /// Looks an algorithm up by its identifier.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestAlgorithm::Sha256),
            "sha512" => Some(DigestAlgorithm::Sha512),
            _ => None,
        }
    }

    /// Digest of `bytes` in one pass.
    pub fn digest(self, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(self);
        hasher.update(bytes);
        hasher.finish()
    }
}

/// Why a string is not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string does not follow `algorithm ":" encoded`.
    #[error("digest {0:?} does not match the grammar algorithm:encoded")]
    Malformed(String),
    /// A registered algorithm with an encoded part of the wrong form.
    #[error("digest {value:?}: {algorithm} digests are {len} lowercase hex characters")]
    BadEncoding {
        /// The rejected value.
        value: String,
        /// The algorithm named by the digest.
        algorithm: &'static str,
        /// Expected number of hex characters.
        len: usize,
    },
    /// Longer than [`MAX_DIGEST_LENGTH`].
    #[error("digest is longer than {MAX_DIGEST_LENGTH} characters")]
    TooLong,
}

fn is_algorithm_component(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn is_valid_algorithm(alg: &str) -> bool {
    alg.split(['+', '.', '_', '-']).all(is_algorithm_component)
}

fn is_valid_encoded(enc: &str) -> bool {
    !enc.is_empty()
        && enc
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(value: &str) -> Result<Digest, DigestError> {
        if value.len() > MAX_DIGEST_LENGTH {
            return Err(DigestError::TooLong);
        }
        let colon = value
            .find(':')
            .ok_or_else(|| DigestError::Malformed(value.to_owned()))?;
        let (alg, enc) = (&value[..colon], &value[colon + 1..]);
        if !is_valid_algorithm(alg) || !is_valid_encoded(enc) {
            return Err(DigestError::Malformed(value.to_owned()));
        }
        if let Some(known) = DigestAlgorithm::from_name(alg) {
            let hex_ok = enc.len() == known.hex_len()
                && enc
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !hex_ok {
                return Err(DigestError::BadEncoding {
                    value: value.to_owned(),
                    algorithm: known.name(),
                    len: known.hex_len(),
                });
            }
        }
        Ok(Digest {
            value: value.to_owned(),
            colon,
        })
    }

    fn from_parts(algorithm: DigestAlgorithm, hex: &str) -> Digest {
        let alg = algorithm.name();
        Digest {
            value: format!("{alg}:{hex}"),
            colon: alg.len(),
        }
    }

    /// The algorithm part, as written.
    pub fn algorithm_name(&self) -> &str {
        &self.value[..self.colon]
    }

    /// The algorithm, if it is one Berth can compute.
    pub fn algorithm(&self) -> Option<DigestAlgorithm> {
        DigestAlgorithm::from_name(self.algorithm_name())
    }

    /// The encoded part (lowercase hex for registered algorithms).
    pub fn encoded(&self) -> &str {
        &self.value[self.colon + 1..]
    }

    /// The whole digest string.
    pub fn as_str(&self) -> &str {
        &self.value
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.value)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An incremental hash whose state can be saved between requests and restored by any
/// process, so an upload continues without re-reading the bytes already received.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

/// A saved hash state does not belong to the algorithm or is corrupt.
#[derive(Debug, thiserror::Error)]
#[error("saved {algorithm} hash state is invalid ({len} bytes)")]
pub struct HashStateError {
    algorithm: &'static str,
    len: usize,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algorithm: DigestAlgorithm) -> Hasher {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// The algorithm this hasher computes.
    pub fn algorithm(&self) -> DigestAlgorithm {
        match self {
            Hasher::Sha256(_) => DigestAlgorithm::Sha256,
            Hasher::Sha512(_) => DigestAlgorithm::Sha512,
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The state after every byte fed so far, partial block included.
    pub fn save(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// Restores a state produced by [`Hasher::save`].
    pub fn restore(algorithm: DigestAlgorithm, state: &[u8]) -> Result<Hasher, HashStateError> {
        let err = || HashStateError {
            algorithm: algorithm.name(),
            len: state.len(),
        };
        Ok(match algorithm {
            DigestAlgorithm::Sha256 => {
                let arr = state.try_into().map_err(|_| err())?;
                Hasher::Sha256(Sha256::deserialize(arr).map_err(|_| err())?)
            }
            DigestAlgorithm::Sha512 => {
                let arr = state.try_into().map_err(|_| err())?;
                Hasher::Sha512(Sha512::deserialize(arr).map_err(|_| err())?)
            }
        })
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => {
                Digest::from_parts(DigestAlgorithm::Sha256, &hex::encode(h.finalize()))
            }
            Hasher::Sha512(h) => {
                Digest::from_parts(DigestAlgorithm::Sha512, &hex::encode(h.finalize()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str =
        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_registered_and_unregistered_digests() {
        assert_eq!(
            Digest::parse(EMPTY_SHA256).unwrap().algorithm(),
            Some(DigestAlgorithm::Sha256)
        );
        let other =
            Digest::parse("multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8")
                .unwrap();
        assert_eq!(other.algorithm(), None);
        assert_eq!(other.algorithm_name(), "multihash+base58");
    }

    #[test]
    fn rejects_malformed_digests() {
        for bad in [
            "",
            "sha256",
            ":abc",
            "sha256:",
            "SHA256:abc",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256+:abc",
            "a..b:abc",
            "sha256:abc def",
            "sha256:ab/cd",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Digest::parse(&format!("x:{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn hash_state_survives_save_and_restore() {
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for alg in [DigestAlgorithm::Sha256, DigestAlgorithm::Sha512] {
            let whole = alg.digest(&data);
            for split in [0, 1, 63, 64, 65, 127, 128, 129, 500_000, data.len()] {
                let mut first = Hasher::new(alg);
                first.update(&data[..split]);
                let mut resumed = Hasher::restore(alg, &first.save()).unwrap();
                resumed.update(&data[split..]);
                assert_eq!(resumed.finish(), whole, "{alg:?} split at {split}");
            }
        }
        assert_eq!(DigestAlgorithm::Sha256.digest(b"").as_str(), EMPTY_SHA256);
    }

    #[test]
    fn restore_rejects_foreign_state() {
        let state = Hasher::new(DigestAlgorithm::Sha256).save();
        assert!(Hasher::restore(DigestAlgorithm::Sha512, &state).is_err());
        assert!(Hasher::restore(DigestAlgorithm::Sha256, &state[1..]).is_err());
    }
}
