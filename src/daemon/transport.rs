//! One relay connection (TLS over TCP on an uplink): its handshake frames and its reader and writer
//! tasks. The frames of established sessions are the engine's business; here they are opaque bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use super::EngineMsg;
use crate::relay::engine::SessionId;
use crate::wire::{self, Frame, WireError};

/// CLOSE codes of the handshake (docs/protocol.md).
pub mod close_code {
    /// The peer speaks another protocol version.
    pub const VERSION: u16 = 1;
    /// The client claimed virtual IPs the server does not give to its key.
    pub const VIRTUAL_IPS: u16 = 2;
    /// The peer sent something other than the expected handshake frame.
    pub const PROTOCOL: u16 = 3;
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("relay connection failed during the handshake")]
    Io(#[from] std::io::Error),
    #[error("the peer sent no handshake frame within {0:?}")]
    Timeout(Duration),
    #[error("the peer sent a malformed handshake frame")]
    Wire(#[from] WireError),
    #[error("the peer closed the connection during the handshake")]
    Eof,
    #[error("the peer refused the session (code {code}): {reason}")]
    Refused { code: u16, reason: String },
    #[error("expected {expected} but the peer sent {got}")]
    Unexpected { expected: &'static str, got: String },
}

/// A handshake frame, owned.
#[derive(Debug)]
pub enum Handshake {
    Hello { version: u16, virtual_ips: Vec<IpAddr> },
    Welcome { version: u16, session_id: u64 },
}

/// Reads one handshake frame; returns it with any bytes that arrived behind it. A CLOSE becomes
/// [`HandshakeError::Refused`] with the peer's reason.
pub async fn read_handshake<S: AsyncRead + Unpin>(
    stream: &mut S,
    timeout: Duration,
) -> Result<(Handshake, Vec<u8>), HandshakeError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some((frame, used)) = Frame::decode(&buf)? {
                let hs = match frame {
                    Frame::Hello { version, virtual_ips } => Handshake::Hello { version, virtual_ips },
                    Frame::Welcome { version, session_id } => Handshake::Welcome { version, session_id },
                    Frame::Close { code, reason } => {
                        return Err(HandshakeError::Refused { code, reason: reason.to_string() })
                    }
                    other => {
                        return Err(HandshakeError::Unexpected {
                            expected: "HELLO or WELCOME",
                            got: other.frame_type().to_string(),
                        })
                    }
                };
                return Ok((hs, buf[used..].to_vec()));
            }
            if buf.len() > wire::MAX_FRAME {
                return Err(HandshakeError::Unexpected { expected: "a handshake frame", got: "too many bytes".into() });
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HandshakeError::Eof);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| HandshakeError::Timeout(timeout))?
}

pub async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &Frame<'_>) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(frame.encoded_len());
    frame.encode(&mut out).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    stream.flush().await
}

/// How the session tasks watch the connection.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    /// Nothing received for this long: the connection is dead.
    pub idle_timeout: Duration,
    /// Nothing sent for this long: send a PING so the peer's idle timer does not fire.
    pub ping_interval: Duration,
}

impl Liveness {
    pub fn from_idle_timeout(idle_timeout: Duration) -> Self {
        Liveness { idle_timeout, ping_interval: idle_timeout / 3 }
    }
}

/// Starts the reader and writer of an established session. Returns the writer's queue, a handle that
/// stops the reader, and the writer task, which ends when the session does.
pub fn spawn_session_io<S>(
    stream: S,
    id: SessionId,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    liveness: Liveness,
) -> (mpsc::Sender<Vec<u8>>, AbortHandle, tokio::task::JoinHandle<()>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    // Up to 32 chunks of 64 KiB wait for the writer, on top of the engine's session_out_budget.
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(32);
    let writer = tokio::spawn(writer(w, out_rx, room, liveness.ping_interval));
    let reader = tokio::spawn(reader(r, id, engine, liveness.idle_timeout));
    (out_tx, reader.abort_handle(), writer)
}

async fn reader<R: AsyncRead + Unpin>(mut r: R, id: SessionId, engine: mpsc::Sender<EngineMsg>, idle: Duration) {
    let reason = loop {
        // A fresh buffer per read, handed over whole: no copy. 64 KiB stays below malloc's mmap threshold.
        let mut buf = Vec::with_capacity(64 * 1024);
        match tokio::time::timeout(idle, r.read_buf(&mut buf)).await {
            Err(_) => break format!("nothing received for {}s", idle.as_secs()),
            Ok(Err(err)) => break format!("read failed: {err}"),
            Ok(Ok(0)) => break "the peer closed the connection".to_string(),
            Ok(Ok(_)) => {
                // A bounded queue: when the engine is behind, we stop reading and TCP slows the peer.
                if engine.send(EngineMsg::SessionBytes { id, bytes: buf }).await.is_err() {
                    return;
                }
            }
        }
    };
    let _ = engine.send(EngineMsg::SessionDown { id, reason }).await;
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut out: mpsc::Receiver<Vec<u8>>, room: Arc<Notify>, ping: Duration) {
    let mut nonce = 0u64;
    loop {
        let chunk = match tokio::time::timeout(ping, out.recv()).await {
            Ok(Some(chunk)) => chunk,
            // The engine ended the session: say goodbye at the TLS level.
            Ok(None) => break,
            Err(_) => {
                nonce += 1;
                let mut ping = Vec::new();
                // Cannot fail: a PING has a fixed, small body.
                Frame::Ping { nonce }.encode(&mut ping).expect("PING encodes");
                ping
            }
        };
        room.notify_one();
        if w.write_all(&chunk).await.is_err() {
            return;
        }
        // Write what else is queued before flushing, so TLS records stay large.
        while let Ok(chunk) = out.try_recv() {
            room.notify_one();
            if w.write_all(&chunk).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}
