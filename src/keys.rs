//! Ed25519 identity keys, WireGuard style.
//!
//! A private key is the 32-byte Ed25519 seed, a public key the 32-byte
//! Ed25519 public key; both travel as one line of standard base64 with
//! padding (44 characters), like `wg genkey` / `wg pubkey`.
//!
//! No cryptography is done here: randomness, key expansion and signing all
//! come from rustls's *ring* crypto provider. This module only moves the
//! 32 bytes in and out of their fixed DER wrappers (PKCS#8 v1 for the
//! seed, SubjectPublicKeyInfo for the public key, RFC 8410).
//!
//! The seed, the base64 text it was read from and the PKCS#8 wrapper handed to rustls are wiped
//! when dropped ([`zeroize`]), so a key does not linger in freed memory after its last use. The
//! copy that *ring* expands it into is outside our reach.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

/// Length in bytes of an Ed25519 seed and of an Ed25519 public key.
pub const KEY_LEN: usize = 32;

/// DER prefix of an RFC 8410 PKCS#8 v1 `OneAsymmetricKey` holding an
/// Ed25519 seed: SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 },
/// OCTET STRING { OCTET STRING (32 bytes) } }. The seed follows.
const ED25519_PKCS8_V1_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// DER prefix of an RFC 8410 Ed25519 SubjectPublicKeyInfo:
/// SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }.
/// The 32-byte public key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// Why a key could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is not valid base64")]
    InvalidBase64,
    #[error("key must be {KEY_LEN} bytes, got {0}")]
    WrongLength(usize),
    #[error("failed to get random bytes from the system")]
    Random,
    #[error("the crypto provider rejected the Ed25519 key: {0}")]
    Rejected(String),
}

/// An Ed25519 public key: the identity of a roamtun daemon.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    /// Wraps 32 raw Ed25519 public-key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The 32 raw Ed25519 public-key bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses standard base64 (with padding); surrounding whitespace is ignored.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        decode_32(s).map(|key| Self(*key))
    }

    /// Standard base64 with padding (44 characters).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// The DER SubjectPublicKeyInfo of this key (what RFC 7250 raw public
    /// key TLS puts on the wire).
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + KEY_LEN);
        der.extend_from_slice(&ED25519_SPKI_PREFIX);
        der.extend_from_slice(&self.0);
        der
    }

    /// Reads an Ed25519 SubjectPublicKeyInfo; `None` for anything else
    /// (other algorithms, trailing bytes, wrong lengths).
    pub fn from_spki_der(der: &[u8]) -> Option<Self> {
        let key = der.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
        <[u8; KEY_LEN]>::try_from(key).ok().map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// An Ed25519 private key (the 32-byte seed). `Debug` shows only the
/// public half.
#[derive(Clone)]
pub struct PrivateKey {
    seed: Zeroizing<[u8; KEY_LEN]>,
    public: PublicKey,
}

impl PrivateKey {
    /// A fresh key from the operating system's random generator.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        provider().secure_random.fill(seed.as_mut()).map_err(|_| KeyError::Random)?;
        Self::from_secret(seed)
    }

    /// Uses 32 bytes as the Ed25519 seed. Every 32-byte string is a valid seed. The caller's copy
    /// is its own to wipe.
    pub fn from_seed(seed: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        Self::from_secret(Zeroizing::new(seed))
    }

    fn from_secret(seed: Zeroizing<[u8; KEY_LEN]>) -> Result<Self, KeyError> {
        let signing_key = load_signing_key(&seed)?;
        let spki = signing_key.public_key().ok_or_else(|| KeyError::Rejected("no public key available".into()))?;
        let public = PublicKey::from_spki_der(spki.as_ref())
            .ok_or_else(|| KeyError::Rejected("public key is not an Ed25519 SubjectPublicKeyInfo".into()))?;
        Ok(Self { seed, public })
    }

    /// Parses standard base64 (with padding); surrounding whitespace is ignored.
    pub fn from_base64(s: &str) -> Result<Self, KeyError> {
        Self::from_secret(decode_32(s)?)
    }

    /// Standard base64 with padding (44 characters). This is the secret.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.seed.as_ref()))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// A rustls signing key for this private key (ring provider, scheme ED25519).
    pub(crate) fn signing_key(&self) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, KeyError> {
        load_signing_key(&self.seed)
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").field("public", &self.public).finish_non_exhaustive()
    }
}

impl FromStr for PrivateKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_base64(s)
    }
}

/// The crypto provider used for keys and TLS: rustls's *ring* provider,
/// chosen explicitly rather than through a process-wide default.
pub(crate) fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn load_signing_key(seed: &[u8; KEY_LEN]) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, KeyError> {
    // Sized exactly, so that no reallocation leaves a copy of the seed behind; rustls wipes this
    // buffer once ring has read it (its ring key provider holds the DER in a `Zeroizing`).
    let mut pkcs8 = Vec::with_capacity(ED25519_PKCS8_V1_PREFIX.len() + KEY_LEN);
    pkcs8.extend_from_slice(&ED25519_PKCS8_V1_PREFIX);
    pkcs8.extend_from_slice(seed);
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8));
    provider().key_provider.load_private_key(der).map_err(|e| KeyError::Rejected(e.to_string()))
}

fn decode_32(s: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, KeyError> {
    let bytes = Zeroizing::new(STANDARD.decode(s.trim()).map_err(|_| KeyError::InvalidBase64)?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        return Err(KeyError::WrongLength(bytes.len()));
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::alg_id;

    #[test]
    fn spki_prefix_matches_rustls_encoding() {
        let key = [7u8; KEY_LEN];
        let spki = rustls::sign::public_key_to_spki(&alg_id::ED25519, key);
        assert_eq!(spki.as_ref(), PublicKey(key).to_spki_der().as_slice());
        assert_eq!(PublicKey::from_spki_der(spki.as_ref()), Some(PublicKey(key)));
    }

    #[test]
    fn spki_parse_rejects_other_shapes() {
        let good = PublicKey([1; KEY_LEN]).to_spki_der();
        assert!(PublicKey::from_spki_der(&good[..good.len() - 1]).is_none());
        let mut long = good.clone();
        long.push(0);
        assert!(PublicKey::from_spki_der(&long).is_none());
        let mut other_oid = good.clone();
        other_oid[8] = 0x71; // 1.3.101.113 = Ed448
        assert!(PublicKey::from_spki_der(&other_oid).is_none());
    }

    /// RFC 8032 section 7.1, test 1: seed -> public key.
    #[test]
    fn rfc8032_test_vector() {
        let seed: [u8; 32] = [
            0x9d, 0x61, 0xb1, 0x9d, 0xef, 0xfd, 0x5a, 0x60, 0xba, 0x84, 0x4a, 0xf4, 0x92, 0xec, 0x2c, 0xc4, 0x44, 0x49,
            0xc5, 0x69, 0x7b, 0x32, 0x69, 0x19, 0x70, 0x3b, 0xac, 0x03, 0x1c, 0xae, 0x7f, 0x60,
        ];
        let public: [u8; 32] = [
            0xd7, 0x5a, 0x98, 0x01, 0x82, 0xb1, 0x0a, 0xb7, 0xd5, 0x4b, 0xfe, 0xd3, 0xc9, 0x64, 0x07, 0x3a, 0x0e, 0xe1,
            0x72, 0xf3, 0xda, 0xa6, 0x23, 0x25, 0xaf, 0x02, 0x1a, 0x68, 0xf7, 0x07, 0x51, 0x1a,
        ];
        let key = PrivateKey::from_seed(seed).unwrap();
        assert_eq!(key.public_key(), PublicKey(public));
    }

    #[test]
    fn from_str_trims() {
        let key = PrivateKey::generate().unwrap();
        let text = format!("  {}\n", key.to_base64().as_str());
        let parsed: PrivateKey = text.parse().unwrap();
        assert_eq!(parsed.public_key(), key.public_key());
        let public: PublicKey = format!("{}\r\n", key.public_key()).parse().unwrap();
        assert_eq!(public, key.public_key());
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(PublicKey::from_base64("not base64!").unwrap_err().to_string(), "key is not valid base64");
        assert_eq!(
            PrivateKey::from_base64(&STANDARD.encode([0u8; 31])).unwrap_err().to_string(),
            "key must be 32 bytes, got 31"
        );
    }
}
