//! TLS 1.3 between roamtun daemons, authenticated by pinned Ed25519 keys.
//!
//! Identity is an RFC 7250 raw public key on both sides: each daemon sends
//! its Ed25519 SubjectPublicKeyInfo instead of a certificate, and signs the
//! handshake with its private key. There is no CA, no certificate and no
//! host name check: the peer is accepted if and only if
//! 1. its key is the pinned one (client side) or in the allowed list
//!    (server side), and
//! 2. its CertificateVerify signature over the handshake verifies under that
//!    key (done by rustls's ring provider,
//!    [`rustls::crypto::verify_tls13_signature_with_raw_key`]).
//!
//! Only TLS 1.3 is enabled; cipher suites in order of preference are
//! AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305, and the server enforces
//! that order. Session resumption is off.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{AlwaysResolvesClientRawPublicKeys, Resumption};
use rustls::crypto::{verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::AlwaysResolvesServerRawPublicKeys;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName, OtherError, PeerMisbehaved,
    ServerConfig, SignatureScheme,
};

use crate::keys::{self, KeyError, PrivateKey, PublicKey};

/// The fixed name given to `TlsConnector::connect`. It is not sent (SNI is
/// off) and not checked.
const SERVER_NAME: &str = "roamtun";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot load the private key: {0}")]
    Key(#[from] KeyError),
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("no allowed client public keys are configured")]
    NoAllowedClients,
}

/// Why a peer's key was refused during the handshake.
///
/// Reaches the caller inside
/// `rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(..)))`
/// (wrapped in an `io::Error` by tokio-rustls); it can be recovered with
/// `downcast_ref` on the `OtherError`'s inner error. rustls formats that
/// variant with `Debug`, so `Debug` here prints the same text as `Display`.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRefused {
    #[error("unknown client public key {0}")]
    UnknownClient(PublicKey),
    #[error("server public key {presented} does not match the pinned key {pinned}")]
    ServerMismatch { presented: PublicKey, pinned: PublicKey },
    #[error("peer did not present a single Ed25519 raw public key")]
    NotEd25519,
}

impl fmt::Debug for KeyRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl KeyRefused {
    fn into_rustls(self) -> rustls::Error {
        CertificateError::Other(OtherError(Arc::new(self))).into()
    }
}

/// Finds the [`KeyRefused`] behind a handshake error, e.g. the `io::Error`
/// returned by `TlsAcceptor::accept` / `TlsConnector::connect`, so a caller
/// can log or act on the refused key without parsing text.
pub fn key_refusal<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a KeyRefused> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<KeyRefused>() {
            return Some(refused);
        }
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
            e.downcast_ref::<rustls::Error>()
        {
            return inner.downcast_ref::<KeyRefused>();
        }
        // `io::Error::source` skips the wrapped error itself; look inside.
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// TLS configuration for the relay server: presents `key`, and accepts only
/// clients whose public key is in `allowed_clients`.
pub fn server_config(key: &PrivateKey, allowed_clients: Vec<PublicKey>) -> Result<Arc<ServerConfig>, TlsError> {
    if allowed_clients.is_empty() {
        return Err(TlsError::NoAllowedClients);
    }
    let provider = Arc::new(tls_provider());
    let verifier = Arc::new(ClientKeyVerifier {
        allowed: allowed_clients.into_iter().collect(),
        algorithms: provider.signature_verification_algorithms,
    });
    let identity = Arc::new(certified_key(key)?);
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(AlwaysResolvesServerRawPublicKeys::new(identity)));
    config.send_tls13_tickets = 0;
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// TLS configuration for a client: presents `key`, and accepts only a
/// server whose public key is `server_key`.
pub fn client_config(key: &PrivateKey, server_key: PublicKey) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(tls_provider());
    let verifier =
        Arc::new(ServerKeyVerifier { pinned: server_key, algorithms: provider.signature_verification_algorithms });
    let identity = Arc::new(certified_key(key)?);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(AlwaysResolvesClientRawPublicKeys::new(identity)));
    config.resumption = Resumption::disabled();
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The authenticated peer's public key after the handshake (None before).
///
/// rustls records the peer's key only once its handshake signature has
/// been verified, so a `Some` here is an authenticated, pinned key.
pub fn peer_public_key(conn: &CommonState) -> Option<PublicKey> {
    match conn.peer_certificates()? {
        [only] => PublicKey::from_spki_der(only.as_ref()),
        _ => None,
    }
}

/// The server name to pass to `TlsConnector::connect` (any fixed name; it
/// is not checked).
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from(SERVER_NAME).expect("SERVER_NAME is a valid DNS name")
}

/// rustls's ring provider restricted to the TLS 1.3 suites, in our order
/// of preference.
fn tls_provider() -> CryptoProvider {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    CryptoProvider {
        cipher_suites: vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256],
        ..keys::provider()
    }
}

/// Our identity as an RFC 7250 raw public key: the "certificate" is the
/// SubjectPublicKeyInfo itself.
fn certified_key(key: &PrivateKey) -> Result<CertifiedKey, TlsError> {
    let spki = CertificateDer::from(key.public_key().to_spki_der());
    Ok(CertifiedKey::new(vec![spki], key.signing_key()?))
}

/// Reads the peer's single raw public key.
fn presented_key(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<PublicKey, rustls::Error> {
    if !intermediates.is_empty() {
        return Err(KeyRefused::NotEd25519.into_rustls());
    }
    PublicKey::from_spki_der(end_entity.as_ref()).ok_or_else(|| KeyRefused::NotEd25519.into_rustls())
}

/// Verifies a TLS 1.3 CertificateVerify signature made with a raw Ed25519 key.
fn verify_signature(
    message: &[u8],
    key: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    if dss.scheme != SignatureScheme::ED25519 {
        return Err(PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme.into());
    }
    let spki = SubjectPublicKeyInfoDer::from(key.as_ref());
    verify_tls13_signature_with_raw_key(message, &spki, dss, algorithms)
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::General("TLS 1.2 is disabled".into())
}

/// Client side: accepts exactly the pinned server key.
#[derive(Debug)]
struct ServerKeyVerifier {
    pinned: PublicKey,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerKeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = presented_key(end_entity, intermediates)?;
        if presented == self.pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(KeyRefused::ServerMismatch { presented, pinned: self.pinned }.into_rustls())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Server side: accepts any key in the allowed set; client auth is mandatory.
#[derive(Debug)]
struct ClientKeyVerifier {
    allowed: BTreeSet<PublicKey>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for ClientKeyVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = presented_key(end_entity, intermediates)?;
        if self.allowed.contains(&presented) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(KeyRefused::UnknownClient(presented).into_rustls())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PrivateKey {
        PrivateKey::generate().unwrap()
    }

    #[test]
    fn refusal_messages_name_the_key() {
        let a = key().public_key();
        let b = key().public_key();
        let err = KeyRefused::UnknownClient(a).into_rustls().to_string();
        assert!(err.contains(&format!("unknown client public key {a}")), "{err}");
        let err = KeyRefused::ServerMismatch { presented: a, pinned: b }.into_rustls().to_string();
        assert!(err.contains(&format!("server public key {a} does not match the pinned key {b}")), "{err}");
    }

    #[test]
    fn server_verifier_checks_the_allowed_list() {
        let allowed = key().public_key();
        let other = key().public_key();
        let v = ClientKeyVerifier {
            allowed: [allowed].into_iter().collect(),
            algorithms: keys::provider().signature_verification_algorithms,
        };
        let now = UnixTime::now();
        let cert = |k: PublicKey| CertificateDer::from(k.to_spki_der());
        assert!(v.verify_client_cert(&cert(allowed), &[], now).is_ok());
        assert!(v.verify_client_cert(&cert(other), &[], now).is_err());
        // A chain is not a raw public key.
        assert!(v.verify_client_cert(&cert(allowed), &[cert(allowed)], now).is_err());
        assert!(v.verify_client_cert(&CertificateDer::from(vec![0u8; 44]), &[], now).is_err());
    }

    #[test]
    fn empty_allowed_list_is_an_error() {
        assert!(matches!(server_config(&key(), Vec::new()), Err(TlsError::NoAllowedClients)));
    }

    #[test]
    fn configs_build_and_server_name_is_fixed() {
        let server = key();
        let client = key();
        server_config(&server, vec![client.public_key()]).unwrap();
        let config = client_config(&client, server.public_key()).unwrap();
        assert!(!config.enable_sni);
        assert_eq!(server_name(), ServerName::try_from("roamtun").unwrap());
    }
}
