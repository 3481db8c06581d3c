//! HMAC-SHA256 (RFC 2104): webhook signatures and the web UI's session cookies.

use sha2::{Digest as _, Sha256};

/// HMAC-SHA256 of `body` under `key`.
pub fn hmac_sha256(key: &[u8], body: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(body)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Whether `mac` is the HMAC-SHA256 of `body` under `key`, compared in constant time so that
/// the time taken tells nothing about how much of a forged code was right.
pub fn verify_hmac_sha256(key: &[u8], body: &[u8], mac: &[u8]) -> bool {
    let expected = hmac_sha256(key, body);
    mac.len() == expected.len()
        && expected
            .iter()
            .zip(mac)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 1 and 6 of RFC 4231 (a short key, and a key longer than a block).
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex::encode(hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn only_the_right_code_verifies() {
        let mac = hmac_sha256(b"key", b"body");
        assert!(verify_hmac_sha256(b"key", b"body", &mac));
        assert!(!verify_hmac_sha256(b"other", b"body", &mac));
        assert!(!verify_hmac_sha256(b"key", b"bodies", &mac));
        assert!(!verify_hmac_sha256(b"key", b"body", &mac[..31]));
    }
}
