//! A relay connection's TLS stream split into a read half for the path's reader and a write half for
//! its writer, like `tokio::io::split`, except that the write half can also refresh the connection's
//! traffic keys (TLS 1.3 `key_update`), which needs the rustls connection itself.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A TLS stream whose traffic keys can be refreshed.
pub trait RefreshKeys {
    /// Queues a `key_update` that also asks the peer to update its keys; it leaves with the next
    /// flush.
    fn refresh_keys(&mut self) -> Result<(), rustls::Error>;
}

impl<IO> RefreshKeys for tokio_rustls::client::TlsStream<IO> {
    fn refresh_keys(&mut self) -> Result<(), rustls::Error> {
        self.get_mut().1.refresh_traffic_keys()
    }
}

impl<IO> RefreshKeys for tokio_rustls::server::TlsStream<IO> {
    fn refresh_keys(&mut self) -> Result<(), rustls::Error> {
        self.get_mut().1.refresh_traffic_keys()
    }
}

/// Splits `stream`; both halves lock it for the length of one poll only.
pub fn split<S>(stream: S) -> (ReadHalf<S>, WriteHalf<S>) {
    let shared = Arc::new(Mutex::new(stream));
    (ReadHalf(shared.clone()), WriteHalf(shared))
}

pub struct ReadHalf<S>(Arc<Mutex<S>>);
pub struct WriteHalf<S>(Arc<Mutex<S>>);

/// A poisoned lock means the other half panicked mid-poll; the daemon stops on any panic
/// (crash.rs), so the stream is only used to fail cleanly here.
fn lock<S>(shared: &Mutex<S>) -> MutexGuard<'_, S> {
    shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<S: RefreshKeys> WriteHalf<S> {
    pub fn refresh_keys(&self) -> Result<(), rustls::Error> {
        lock(&self.0).refresh_keys()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadHalf<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteHalf<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.0)).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *lock(&self.0)).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        lock(&self.0).is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *lock(&self.0)).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Many key refreshes from both ends, interleaved with data both ways over one connection: every
    /// byte arrives in order, and a refresh never breaks the stream (rustls refuses more than 32
    /// key-update requests in a row without data between, so data goes between them as on a path).
    #[tokio::test]
    async fn data_survives_key_refreshes_from_both_ends() {
        let server_key = PrivateKey::generate().unwrap();
        let client_key = PrivateKey::generate().unwrap();
        let server_cfg = crate::tls::server_config(&server_key, vec![client_key.public_key()]).unwrap();
        let client_cfg = crate::tls::client_config(&client_key, server_key.public_key()).unwrap();
        let (a, b) = tokio::io::duplex(64 * 1024);
        let accept = tokio_rustls::TlsAcceptor::from(server_cfg).accept(b);
        let connect = tokio_rustls::TlsConnector::from(client_cfg).connect(crate::tls::server_name(), a);
        let (server, client) = tokio::join!(accept, connect);
        let (mut sr, mut sw) = split(server.unwrap());
        let (mut cr, mut cw) = split(client.unwrap());
        const ROUNDS: u32 = 100;
        let chunk = |i: u32| -> Vec<u8> { (0..1000u32).map(|j| (i * 7 + j) as u8).collect() };
        let client_side = async {
            for i in 0..ROUNDS {
                cw.refresh_keys().unwrap();
                cw.write_all(&chunk(i)).await.unwrap();
                cw.flush().await.unwrap();
            }
            let mut back = vec![0; 1000 * ROUNDS as usize];
            cr.read_exact(&mut back).await.unwrap();
            back
        };
        let server_side = async {
            let mut got = vec![0; 1000 * ROUNDS as usize];
            sr.read_exact(&mut got).await.unwrap();
            for (i, piece) in got.chunks(1000).enumerate() {
                sw.refresh_keys().unwrap();
                sw.write_all(piece).await.unwrap();
                sw.flush().await.unwrap();
                assert_eq!(piece, &chunk(i as u32)[..], "chunk {i} arrived intact");
            }
            got
        };
        let (back, got) = tokio::join!(client_side, server_side);
        assert_eq!(back, got, "the echo came back intact through the server's refreshes");
    }
}
