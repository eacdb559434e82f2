//! Pinned-key mutual TLS between a real client and server over 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use roamtun::keys::{KeyError, PrivateKey, PublicKey};
use roamtun::tls::{client_config, key_refusal, peer_public_key, server_config, server_name, KeyRefused};
use rustls::{CipherSuite, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Outcome of one server-side accept: the client key it authenticated and
/// the suite/version, or the accept error's text and the refused key found
/// in it.
type ServerOutcome = Result<(Option<PublicKey>, CipherSuite, ProtocolVersion), (String, Option<KeyRefused>)>;

/// Binds an ephemeral port and serves one connection: handshake, then echo
/// one message back.
async fn spawn_server(
    key: &PrivateKey,
    allowed: Vec<PublicKey>,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<ServerOutcome>) {
    let acceptor = TlsAcceptor::from(server_config(key, allowed).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| (e.to_string(), key_refusal(&e).cloned()))?;
        let (_, conn) = tls.get_ref();
        let peer = peer_public_key(conn);
        let suite = conn.negotiated_cipher_suite().unwrap().suite();
        let version = conn.protocol_version().unwrap();
        let mut buf = [0u8; 64];
        let io_err = |e: std::io::Error| (e.to_string(), None);
        let n = tls.read(&mut buf).await.map_err(io_err)?;
        tls.write_all(&buf[..n]).await.map_err(io_err)?;
        tls.flush().await.map_err(io_err)?;
        tls.shutdown().await.ok();
        Ok((peer, suite, version))
    });
    (addr, task)
}

async fn connect(
    addr: std::net::SocketAddr,
    key: &PrivateKey,
    server_key: PublicKey,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = TlsConnector::from(client_config(key, server_key).unwrap());
    let tcp = TcpStream::connect(addr).await?;
    connector.connect(server_name(), tcp).await
}

#[tokio::test]
async fn matching_keys_handshake_and_round_trip() {
    let server_key = PrivateKey::generate().unwrap();
    let client_key = PrivateKey::generate().unwrap();
    let other_client = PrivateKey::generate().unwrap().public_key();
    let (addr, server) = spawn_server(&server_key, vec![other_client, client_key.public_key()]).await;

    let mut tls =
        tokio::time::timeout(TIMEOUT, connect(addr, &client_key, server_key.public_key())).await.unwrap().unwrap();
    {
        let (_, conn) = tls.get_ref();
        assert_eq!(peer_public_key(conn), Some(server_key.public_key()));
        assert_eq!(conn.negotiated_cipher_suite().unwrap().suite(), CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert_eq!(conn.protocol_version(), Some(ProtocolVersion::TLSv1_3));
    }

    tls.write_all(b"hello through the pinned tunnel").await.unwrap();
    tls.flush().await.unwrap();
    let mut echoed = Vec::new();
    tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut echoed)).await.unwrap().unwrap();
    assert_eq!(echoed, b"hello through the pinned tunnel");

    let (peer, suite, version) = tokio::time::timeout(TIMEOUT, server).await.unwrap().unwrap().unwrap();
    assert_eq!(peer, Some(client_key.public_key()));
    assert_eq!(suite, CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(version, ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn unknown_client_key_is_refused_by_the_server() {
    let server_key = PrivateKey::generate().unwrap();
    let allowed = PrivateKey::generate().unwrap();
    let intruder = PrivateKey::generate().unwrap();
    let (addr, server) = spawn_server(&server_key, vec![allowed.public_key()]).await;

    // In TLS 1.3 the client finishes its side of the handshake before the
    // server has judged its key, so the refusal may surface on the first read.
    let client_result = tokio::time::timeout(TIMEOUT, async {
        let mut tls = connect(addr, &intruder, server_key.public_key()).await?;
        tls.write_all(b"let me in").await?;
        tls.flush().await?;
        let mut buf = [0u8; 16];
        tls.read(&mut buf).await
    })
    .await
    .unwrap();
    let client_err = client_result.expect_err("refused client must not read data");
    eprintln!("client error: {client_err}");

    let (server_err, refused) =
        tokio::time::timeout(TIMEOUT, server).await.unwrap().unwrap().expect_err("server must refuse the unknown key");
    assert_eq!(refused, Some(KeyRefused::UnknownClient(intruder.public_key())));
    eprintln!("server error: {server_err}");
    assert!(server_err.contains("unknown client public key"), "{server_err}");
    assert!(server_err.contains(&intruder.public_key().to_base64()), "{server_err}");
}

#[tokio::test]
async fn wrong_pinned_server_key_is_refused_by_the_client() {
    let server_key = PrivateKey::generate().unwrap();
    let client_key = PrivateKey::generate().unwrap();
    let wrong_pin = PrivateKey::generate().unwrap().public_key();
    let (addr, server) = spawn_server(&server_key, vec![client_key.public_key()]).await;

    let io_err = tokio::time::timeout(TIMEOUT, connect(addr, &client_key, wrong_pin))
        .await
        .unwrap()
        .expect_err("client must refuse a server with another key");
    assert_eq!(
        key_refusal(&io_err),
        Some(&KeyRefused::ServerMismatch { presented: server_key.public_key(), pinned: wrong_pin })
    );
    let err = io_err.to_string();
    eprintln!("client error: {err}");
    assert!(err.contains("does not match"), "{err}");
    assert!(err.contains(&server_key.public_key().to_base64()), "{err}");
    assert!(err.contains(&wrong_pin.to_base64()), "{err}");

    let server_result = tokio::time::timeout(TIMEOUT, server).await.unwrap().unwrap();
    assert!(server_result.is_err(), "server handshake must fail too");
}

#[tokio::test]
async fn plain_tcp_garbage_is_refused() {
    let server_key = PrivateKey::generate().unwrap();
    let client_key = PrivateKey::generate().unwrap();
    let (addr, server) = spawn_server(&server_key, vec![client_key.public_key()]).await;
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let result = tokio::time::timeout(TIMEOUT, server).await.unwrap().unwrap();
    assert!(result.is_err());
}

#[test]
fn key_base64_round_trip() {
    let key = PrivateKey::generate().unwrap();
    let text = key.to_base64();
    assert_eq!(text.len(), 44);
    assert!(text.ends_with('='));
    let again = PrivateKey::from_base64(&text).unwrap();
    assert_eq!(again.to_base64(), text);
    assert_eq!(again.public_key(), key.public_key());

    let public = key.public_key();
    let public_text = public.to_base64();
    assert_eq!(public_text.len(), 44);
    assert_eq!(PublicKey::from_base64(&public_text).unwrap(), public);
    assert_eq!(public.to_string(), public_text);
    assert_eq!(format!("{public:?}"), public_text);
    assert_eq!(format!("{public_text}\n").parse::<PublicKey>().unwrap(), public);
    assert_eq!(format!(" {}\n", text.as_str()).parse::<PrivateKey>().unwrap().to_base64(), text);
}

#[test]
fn public_key_derivation_is_deterministic() {
    let key = PrivateKey::generate().unwrap();
    let a = PrivateKey::from_base64(&key.to_base64()).unwrap();
    let b = PrivateKey::from_base64(&key.to_base64()).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    assert_eq!(a.public_key(), key.public_key());
    // Different keys, different public keys.
    let other = PrivateKey::generate().unwrap();
    assert_ne!(other.public_key(), key.public_key());
    assert_ne!(other.to_base64(), key.to_base64());
}

#[test]
fn bad_keys_give_clear_errors() {
    let err = PrivateKey::from_base64("this is not base64!!").unwrap_err();
    assert!(matches!(err, KeyError::InvalidBase64));
    assert_eq!(err.to_string(), "key is not valid base64");

    let err = PublicKey::from_base64("AAAA").unwrap_err();
    assert!(matches!(err, KeyError::WrongLength(3)));
    assert_eq!(err.to_string(), "key must be 32 bytes, got 3");

    // 33 bytes.
    let err = PrivateKey::from_base64("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").unwrap_err();
    assert_eq!(err.to_string(), "key must be 32 bytes, got 33");

    assert!(matches!("".parse::<PublicKey>().unwrap_err(), KeyError::WrongLength(0)));
}

#[test]
fn private_key_debug_hides_the_secret() {
    let key = PrivateKey::generate().unwrap();
    let debug = format!("{key:?}");
    assert!(!debug.contains(key.to_base64().as_str()), "{debug}");
    assert!(debug.contains(&key.public_key().to_base64()), "{debug}");
}

#[test]
fn public_keys_are_ordered_and_hashable() {
    let mut keys: Vec<PublicKey> = (0..4).map(|_| PrivateKey::generate().unwrap().public_key()).collect();
    keys.sort();
    let set: std::collections::HashSet<PublicKey> = keys.iter().copied().collect();
    assert_eq!(set.len(), 4);
    let _: Arc<rustls::ClientConfig> = client_config(&PrivateKey::generate().unwrap(), keys[0]).unwrap();
}

/// A verifier that accepts anything, so only the server's version policy
/// can stop the TLS 1.2 client below.
#[derive(Debug)]
struct AcceptAnything;

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &rustls::pki_types::CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ED25519]
    }
}

#[tokio::test]
async fn tls12_client_is_refused() {
    let server_key = PrivateKey::generate().unwrap();
    let client_key = PrivateKey::generate().unwrap();
    let (addr, server) = spawn_server(&server_key, vec![client_key.public_key()]).await;

    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything))
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let client =
        tokio::time::timeout(TIMEOUT, TlsConnector::from(Arc::new(config)).connect(server_name(), tcp)).await.unwrap();
    assert!(client.is_err(), "a TLS 1.2-only client must not connect");
    let server_result = tokio::time::timeout(TIMEOUT, server).await.unwrap().unwrap();
    let (server_err, _) = server_result.expect_err("server must refuse TLS 1.2");
    eprintln!("server error: {server_err}");
}
