//! Keys for tokens: the private key Berth's token issuer signs with, and the public keys
//! tokens are verified against (the issuer's own, PEM public keys or certificates of an
//! external token service, or a JWKS file).
//!
//! Supported: ECDSA P-256 (`ES256`) and P-384 (`ES384`), RSA (`RS256`/`RS384`/`RS512`,
//! `PS256`/…), and Ed25519 (`EdDSA`). A key only ever verifies algorithms of its own family, and
//! `none` and HMAC are never accepted.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use sha2::{Digest as _, Sha256};

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read.
    #[error("reading key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no usable key.
    #[error("key file {path}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Families of signature algorithms; a key verifies only its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyFamily {
    /// ECDSA.
    Ec,
    /// RSA.
    Rsa,
    /// Ed25519.
    Ed,
}

impl KeyFamily {
    /// The JWS algorithms a key of this family verifies.
    pub fn algorithms(self) -> Vec<Algorithm> {
        match self {
            KeyFamily::Ec => vec![Algorithm::ES256, Algorithm::ES384],
            KeyFamily::Rsa => vec![
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            KeyFamily::Ed => vec![Algorithm::EdDSA],
        }
    }
}

/// A public key tokens are verified against.
#[derive(Clone)]
pub struct VerifyingKey {
    /// Key id (`kid`): tokens naming another id are not tried with this key. `None` for keys
    /// read from PEM files, which verify tokens whatever their `kid`.
    pub kid: Option<String>,
    /// Its algorithm family.
    pub family: KeyFamily,
    /// Whether it is the key of Berth's own issuer.
    pub own: bool,
    pub(crate) key: DecodingKey,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("own", &self.own)
            .finish()
    }
}

enum Pair {
    Ec(EcdsaKeyPair, Algorithm),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// The private key Berth's token issuer signs with.
pub struct SigningKey {
    pair: Pair,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm())
            .field("kid", &self.kid)
            .finish()
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn invalid(path: &Path, message: impl Into<String>) -> KeyError {
    KeyError::Invalid {
        path: path.display().to_string(),
        message: message.into(),
    }
}

fn kid_of(public: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(public)[..18])
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`) of any supported type, SEC1 (`EC PRIVATE
    /// KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let text = read(path)?;
        let block = pem::parse(&text).map_err(|e| invalid(path, format!("not PEM: {e}")))?;
        let der = block.contents();
        let pair = match block.tag() {
            "PRIVATE KEY" => {
                if let Ok(k) = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der) {
                    Pair::Ec(k, Algorithm::ES256)
                } else if let Ok(k) =
                    EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
                {
                    Pair::Ec(k, Algorithm::ES384)
                } else if let Ok(k) = RsaKeyPair::from_pkcs8(der) {
                    Pair::Rsa(k)
                } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                    Pair::Ed(k)
                } else {
                    return Err(invalid(
                        path,
                        "the private key is not ECDSA P-256/P-384, RSA or Ed25519",
                    ));
                }
            }
            "EC PRIVATE KEY" => {
                if let Ok(k) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                {
                    Pair::Ec(k, Algorithm::ES256)
                } else if let Ok(k) =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P384_SHA384_FIXED_SIGNING, der)
                {
                    Pair::Ec(k, Algorithm::ES384)
                } else {
                    return Err(invalid(path, "the EC key is not on P-256 or P-384"));
                }
            }
            "RSA PRIVATE KEY" => Pair::Rsa(
                RsaKeyPair::from_der(der).map_err(|e| invalid(path, format!("RSA key: {e}")))?,
            ),
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "expected a PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY block, found {other}"
                    ),
                ));
            }
        };
        if let Pair::Rsa(k) = &pair
            && k.public_modulus_len() < 256
        {
            return Err(invalid(path, "RSA keys must have at least 2048 bits"));
        }
        let public = match &pair {
            Pair::Ec(k, _) => k.public_key().as_ref().to_vec(),
            Pair::Rsa(k) => k.public_key().as_ref().to_vec(),
            Pair::Ed(k) => k.public_key().as_ref().to_vec(),
        };
        Ok(SigningKey {
            kid: kid_of(&public),
            pair,
            rng: SystemRandom::new(),
        })
    }

    /// The JWS algorithm of the key.
    pub fn algorithm(&self) -> Algorithm {
        match &self.pair {
            Pair::Ec(_, alg) => *alg,
            Pair::Rsa(_) => Algorithm::RS256,
            Pair::Ed(_) => Algorithm::EdDSA,
        }
    }

    /// The key id put in tokens' headers.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `message` (a JWS signing input).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        match &self.pair {
            Pair::Ec(k, _) => k
                .sign(&self.rng, message)
                .map(|s| s.as_ref().to_vec())
                .map_err(|e| e.to_string()),
            Pair::Rsa(k) => {
                let mut signature = vec![0u8; k.public_modulus_len()];
                k.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
                    .map_err(|e| e.to_string())?;
                Ok(signature)
            }
            Pair::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }

    /// The public half, to verify the tokens this key signs.
    pub fn verifying_key(&self) -> Result<VerifyingKey, String> {
        let (family, key) = match &self.pair {
            Pair::Ec(k, _) => {
                // An uncompressed point: 0x04, then x and y of equal length.
                let point = k.public_key().as_ref();
                let half = (point.len() - 1) / 2;
                let x = URL_SAFE_NO_PAD.encode(&point[1..1 + half]);
                let y = URL_SAFE_NO_PAD.encode(&point[1 + half..]);
                (
                    KeyFamily::Ec,
                    DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?,
                )
            }
            Pair::Rsa(k) => {
                // PKCS#1 RSAPublicKey DER.
                (
                    KeyFamily::Rsa,
                    DecodingKey::from_rsa_der(k.public_key().as_ref()),
                )
            }
            Pair::Ed(k) => (
                KeyFamily::Ed,
                DecodingKey::from_ed_der(k.public_key().as_ref()),
            ),
        };
        Ok(VerifyingKey {
            kid: Some(self.kid.clone()),
            family,
            own: true,
            key,
        })
    }
}

/// One DER element read from the front of some input.
struct Der<'a> {
    /// The whole element: tag, length and content.
    element: &'a [u8],
    content: &'a [u8],
    tag: u8,
    /// The input after the element.
    rest: &'a [u8],
}

/// Reads one DER element (tag, length, content).
fn der_element(input: &[u8]) -> Option<Der<'_>> {
    let tag = *input.first()?;
    let first = *input.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some(Der {
        element: input.get(..end)?,
        content: &input[header..end],
        tag,
        rest: &input[end..],
    })
}

/// The `SubjectPublicKeyInfo` of an X.509 certificate, as DER.
fn certificate_spki(der: &[u8]) -> Option<Vec<u8>> {
    let certificate = der_element(der)?.content;
    let mut rest = der_element(certificate)?.content;
    // [0] version (optional), serial, signature, issuer, validity, subject, then the key.
    let first = der_element(rest)?;
    if first.tag == 0xA0 {
        rest = first.rest;
    }
    for _ in 0..5 {
        rest = der_element(rest)?.rest;
    }
    let spki = der_element(rest)?;
    (spki.tag == 0x30).then(|| spki.element.to_vec())
}

/// The algorithm family of a `SubjectPublicKeyInfo`, from its algorithm OID.
fn spki_family(spki: &[u8]) -> Option<KeyFamily> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    let content = der_element(spki)?.content;
    let algorithm = der_element(content)?.content;
    let oid = der_element(algorithm)?;
    if oid.tag != 0x06 {
        return None;
    }
    match oid.content {
        RSA => Some(KeyFamily::Rsa),
        EC => Some(KeyFamily::Ec),
        ED25519 => Some(KeyFamily::Ed),
        _ => None,
    }
}

fn spki_key(path: &Path, spki: &[u8]) -> Result<VerifyingKey, KeyError> {
    let family = spki_family(spki)
        .ok_or_else(|| invalid(path, "a public key is not RSA, ECDSA or Ed25519"))?;
    let pem = pem::encode(&pem::Pem::new("PUBLIC KEY", spki.to_vec()));
    let key = match family {
        KeyFamily::Ec => DecodingKey::from_ec_pem(pem.as_bytes()),
        KeyFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
        KeyFamily::Ed => DecodingKey::from_ed_pem(pem.as_bytes()),
    }
    .map_err(|e| invalid(path, format!("public key: {e}")))?;
    // The issuer's key ids are its own business: a PEM key verifies whatever `kid` says.
    Ok(VerifyingKey {
        kid: None,
        family,
        own: false,
        key,
    })
}

/// Reads the public keys of an external token service from a PEM file of `PUBLIC KEY`,
/// `RSA PUBLIC KEY` and `CERTIFICATE` blocks.
pub fn load_public_keys(path: &Path) -> Result<Vec<VerifyingKey>, KeyError> {
    let text = read(path)?;
    let blocks = pem::parse_many(&text).map_err(|e| invalid(path, format!("not PEM: {e}")))?;
    let mut keys = Vec::new();
    for block in blocks {
        match block.tag() {
            "PUBLIC KEY" => keys.push(spki_key(path, block.contents())?),
            "CERTIFICATE" => {
                let spki = certificate_spki(block.contents())
                    .ok_or_else(|| invalid(path, "a certificate cannot be read"))?;
                keys.push(spki_key(path, &spki)?);
            }
            "RSA PUBLIC KEY" => keys.push(VerifyingKey {
                kid: None,
                family: KeyFamily::Rsa,
                own: false,
                key: DecodingKey::from_rsa_der(block.contents()),
            }),
            other => return Err(invalid(path, format!("unexpected PEM block {other}"))),
        }
    }
    if keys.is_empty() {
        return Err(invalid(path, "no public key in the file"));
    }
    Ok(keys)
}

/// Reads the public keys of a JWKS file (`{"keys": [...]}`).
pub fn load_jwks(path: &Path) -> Result<Vec<VerifyingKey>, KeyError> {
    use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
    let text = read(path)?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| invalid(path, format!("not a JWKS: {e}")))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
            AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
            AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Ed,
            AlgorithmParameters::OctetKey(_) => {
                return Err(invalid(path, "symmetric (oct) keys are not accepted"));
            }
        };
        keys.push(VerifyingKey {
            kid: jwk.common.key_id.clone(),
            family,
            own: false,
            key: DecodingKey::from_jwk(jwk).map_err(|e| invalid(path, format!("JWK: {e}")))?,
        });
    }
    if keys.is_empty() {
        return Err(invalid(path, "no key in the JWKS"));
    }
    Ok(keys)
}

/// Encodes bytes as unpadded base64url (the JWS encoding).
pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};

    use super::*;
    use crate::auth::bearer::{Audience, Claims, TokenVerifier};

    fn pem_file(tag: &str, der: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(pem::encode(&pem::Pem::new(tag, der.to_vec())).as_bytes())
            .unwrap();
        file
    }

    fn token(key: &SigningKey, aud: &str) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let claims = Claims {
            iss: "berth".into(),
            sub: "u".into(),
            aud: Audience::One(aud.into()),
            exp: now + 60,
            nbf: Some(now),
            iat: Some(now),
            jti: None,
            access: Vec::new(),
            berth_refresh: None,
        };
        let header = serde_json::json!({"alg": format!("{:?}", key.algorithm()), "typ": "JWT", "kid": key.kid()});
        let input = format!(
            "{}.{}",
            b64(&serde_json::to_vec(&header).unwrap()),
            b64(&serde_json::to_vec(&claims).unwrap())
        );
        let signature = key.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    #[test]
    fn every_key_family_signs_tokens_its_public_half_verifies() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec384 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let files = [
            pem_file("PRIVATE KEY", ec.as_ref()),
            pem_file("PRIVATE KEY", ec384.as_ref()),
            pem_file("PRIVATE KEY", ed.as_ref()),
            pem_file("PRIVATE KEY", rsa.as_der().unwrap().as_ref()),
        ];
        let expected = [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::RS256,
        ];
        for (file, alg) in files.iter().zip(expected) {
            let key = SigningKey::load(file.path()).unwrap();
            assert_eq!(key.algorithm(), alg);
            let verifier =
                TokenVerifier::new(vec![key.verifying_key().unwrap()], "berth", "svc", None);
            let (claims, own) = verifier.claims(&token(&key, "svc"), false).unwrap();
            assert!(own);
            assert_eq!(claims.sub, "u");
            assert!(
                verifier.claims(&token(&key, "other"), false).is_err(),
                "{alg:?}: audience"
            );
        }
    }

    #[test]
    fn public_keys_and_certificates_are_read_from_pem() {
        let rng = SystemRandom::new();
        let ec = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, ec.as_ref()).unwrap();
        let spki = pair.public_key().as_der().unwrap();
        let public = pem_file("PUBLIC KEY", spki.as_ref());
        let keys = load_public_keys(public.path()).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].family, KeyFamily::Ec);
        let signing = pem_file("PRIVATE KEY", ec.as_ref());
        let key = SigningKey::load(signing.path()).unwrap();
        let verifier = TokenVerifier::new(keys, "berth", "svc", None);
        let (_, own) = verifier.claims(&token(&key, "svc"), false).unwrap();
        assert!(!own, "a PEM public key is an external issuer's");
        // A minimal certificate around the same key: version, serial, algorithm, issuer,
        // validity, subject, key.
        let seq = |parts: &[&[u8]]| {
            let body: Vec<u8> = parts.concat();
            let mut out = vec![0x30];
            if body.len() < 128 {
                out.push(body.len() as u8);
            } else {
                out.extend([0x82, (body.len() >> 8) as u8, body.len() as u8]);
            }
            out.extend(body);
            out
        };
        let version: &[u8] = &[0xA0, 0x03, 0x02, 0x01, 0x02];
        let serial: &[u8] = &[0x02, 0x01, 0x01];
        let empty = seq(&[]);
        let tbs = seq(&[
            version,
            serial,
            &empty,
            &empty,
            &empty,
            &empty,
            spki.as_ref(),
        ]);
        let certificate = seq(&[&tbs, &empty, &[0x03, 0x01, 0x00]]);
        let cert = pem_file("CERTIFICATE", &certificate);
        let keys = load_public_keys(cert.path()).unwrap();
        let verifier = TokenVerifier::new(keys, "berth", "svc", None);
        assert!(verifier.claims(&token(&key, "svc"), false).is_ok());
    }

    #[test]
    fn unusable_keys_are_refused_clearly() {
        let garbage = pem_file("PRIVATE KEY", b"not a key");
        let message = SigningKey::load(garbage.path()).unwrap_err().to_string();
        assert!(message.contains("not ECDSA"), "{message}");
        let wrong = pem_file("CERTIFICATE REQUEST", b"x");
        assert!(SigningKey::load(wrong.path()).is_err());
        let mut jwks = tempfile::NamedTempFile::new().unwrap();
        jwks.write_all(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#)
            .unwrap();
        let message = load_jwks(jwks.path()).unwrap_err().to_string();
        assert!(message.contains("symmetric"), "{message}");
    }
}
