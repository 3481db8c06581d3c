//! `Digest::parse`: accepts exactly the OCI grammar (registered algorithms with lowercase hex
//! of their length), and a parsed digest is its input, whole and in parts.

use berth::oci::digest::MAX_DIGEST_LENGTH;
use berth::oci::{Digest, DigestAlgorithm};

use crate::reference;

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = Digest::parse(input);
    let (alg, enc) = input.split_once(':').unwrap_or(("", ""));
    let registered_ok = match DigestAlgorithm::from_name(alg) {
        Some(known) => {
            enc.len() == known.hex_len()
                && enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        }
        None => true,
    };
    let expected =
        input.len() <= MAX_DIGEST_LENGTH && reference::digest_grammar(input) && registered_ok;
    assert_eq!(parsed.is_ok(), expected, "{input:?}: {parsed:?}");
    let Ok(digest) = parsed else { return };
    assert_eq!(digest.as_str(), input);
    assert_eq!(digest.to_string(), input);
    assert_eq!(digest.algorithm_name(), alg);
    assert_eq!(digest.encoded(), enc);
    assert_eq!(digest.algorithm(), DigestAlgorithm::from_name(alg));
    assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(&digest));
    assert_eq!(input.parse::<Digest>().as_ref(), Ok(&digest));
    let json = serde_json::to_string(&digest).unwrap();
    assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), digest);
    if let Some(algorithm) = digest.algorithm() {
        // A digest Berth computes has the same shape as one it accepts.
        let computed = algorithm.digest(data);
        assert_eq!(computed.encoded().len(), digest.encoded().len());
        assert!(Digest::parse(computed.as_str()).is_ok());
    }
}
