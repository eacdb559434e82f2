//! One relay connection (TLS over TCP on an uplink): its handshake frames and its reader and writer
//! tasks. The frames of established sessions are the engine's business; here they are opaque bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use super::EngineMsg;
use crate::transition::PathId;
use crate::wire::{self, Frame, FrameType, WireError};

pub use crate::relay::core::close_code;

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
    Hello { version: u16, resume: u64, virtual_ips: Vec<IpAddr> },
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
                    Frame::Hello { version, resume, virtual_ips } => Handshake::Hello { version, resume, virtual_ips },
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

/// How a path's tasks watch it (the spec's Check activity on the path in use, and on any other open
/// path): each side PINGs when it has sent nothing for `probe_interval`, the PONG gives the round
/// trip, and a path that receives nothing at all (data, PING or PONG) for `dead_after` is dead.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub dead_after: Duration,
    pub probe_interval: Duration,
}

impl Liveness {
    pub fn from_tuning(t: &crate::config::Tuning) -> Self {
        Liveness {
            dead_after: Duration::from_millis(t.dead_after_ms),
            probe_interval: Duration::from_millis(t.probe_interval_ms),
        }
    }
}

/// The tasks of one established path.
pub struct PathIo {
    /// The writer's queue: encoded frames, written in order.
    pub out: mpsc::Sender<Vec<u8>>,
    /// Stops the reader (the writer ends when `out` is dropped).
    pub reader: AbortHandle,
}

/// Starts the reader and writer of an established path. `early` holds bytes that arrived behind the
/// handshake. Both tasks report the end of the path to the engine task as [`EngineMsg::PathDown`].
pub fn spawn_path_io<S>(
    stream: S,
    tcp_fd: std::os::fd::RawFd,
    path: PathId,
    early: Vec<u8>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    liveness: Liveness,
) -> PathIo
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (r, w) = tokio::io::split(stream);
    // Up to 8 chunks of 256 KiB (the engine's CHUNK) wait for the writer, on top of the engine's
    // session_out_budget.
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(8);
    // PING nonces are microseconds since this instant, so a PONG tells its round trip by itself.
    let epoch = tokio::time::Instant::now();
    tokio::spawn(writer(w, path, out_rx, engine.clone(), room, liveness.probe_interval, epoch));
    let pongs = out_tx.clone();
    let watch =
        Watch { tcp_fd, dead_after: liveness.dead_after, every: liveness.probe_interval.min(liveness.dead_after / 4) };
    let reader = tokio::spawn(reader(r, path, early, engine, pongs, watch, epoch));
    PathIo { out: out_tx, reader: reader.abort_handle() }
}

/// What the reader makes of the byte stream: whole stream frames for the engine, a transition
/// message, or a probe of this path (answered or timed here: a probe belongs to the path it came on,
/// whichever path the session's stream frames use).
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Frames(Vec<u8>),
    Control(Vec<u8>),
    Ping(u64),
    Pong(u64),
}

/// Cuts the whole frames off the front of `buf` (a partial frame stays), taking each CONTROL frame
/// out as its own piece so that the daemon acts on it exactly between the frames around it: an
/// ALL_REDIRECTED must take effect before the stream bytes that follow it on the new path.
fn take_frames(buf: &mut Vec<u8>, pieces: &mut Vec<Piece>) {
    let (mut start, mut pos) = (0, 0);
    while let Some(len) = wire::frame_len(&buf[pos..]) {
        let body = &buf[pos + wire::HEADER_LEN..pos + len];
        let nonce = || u64::from_be_bytes(body.try_into().expect("an 8-byte body"));
        let piece = match FrameType::from_u8(buf[pos]) {
            Some(FrameType::Control) => Some(Piece::Control(body.to_vec())),
            // A probe with a malformed body stays in the stream: the engine counts it.
            Some(FrameType::Ping) if body.len() == 8 && buf[pos + 1] == 0 => Some(Piece::Ping(nonce())),
            Some(FrameType::Pong) if body.len() == 8 && buf[pos + 1] == 0 => Some(Piece::Pong(nonce())),
            _ => None,
        };
        if let Some(piece) = piece {
            if pos > start {
                pieces.push(Piece::Frames(buf[start..pos].to_vec()));
            }
            pieces.push(piece);
            start = pos + len;
        }
        pos += len;
    }
    if pos == 0 {
        // Nothing whole yet: the frame grows in place (the reader keeps room for all of it), rather
        // than being copied to a new buffer after every read of a TLS record.
        return;
    }
    if start == 0 && pos == buf.len() {
        // The usual case: the read ended on a frame boundary; hand the buffer over without a copy.
        pieces.push(Piece::Frames(std::mem::replace(buf, Vec::with_capacity(READ_SIZE))));
        return;
    }
    let mut rest = Vec::with_capacity(READ_SIZE.max(buf.len() - pos));
    rest.extend_from_slice(&buf[pos..]);
    if pos > start {
        buf.truncate(pos);
        buf.drain(..start);
        pieces.push(Piece::Frames(std::mem::take(buf)));
    }
    *buf = rest;
}

/// The reader's buffer: holds a whole frame (64 KiB) and the start of the next, so a frame is never
/// moved while it arrives, and stays below malloc's mmap threshold (128 KiB).
const READ_SIZE: usize = 96 * 1024;

/// What a relay connection's TCP socket is read through. rustls reads the socket 4 KiB at a time
/// (and shrinks its buffer whenever it is empty), so a 64 KiB frame costs 16 or more `recv` calls;
/// from a user-space buffer those reads are plain copies, and the socket is read once per
/// `RELAY_READ_BUFFER` bytes.
pub type RelaySocket = tokio::io::BufReader<tokio::net::TcpStream>;

/// Bytes read from the relay socket per `recv`.
const RELAY_READ_BUFFER: usize = 256 * 1024;

pub fn relay_socket(tcp: tokio::net::TcpStream) -> RelaySocket {
    tokio::io::BufReader::with_capacity(RELAY_READ_BUFFER, tcp)
}

/// What the reader watches besides the bytes: silence, and the relay socket's own TCP counters (the
/// kernel's RTT, and retransmissions per segment sent: the path's loss, which TCP hides from us).
struct Watch {
    /// The relay connection's socket; valid while the reader holds its read half.
    tcp_fd: std::os::fd::RawFd,
    dead_after: Duration,
    every: Duration,
}

async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    path: PathId,
    early: Vec<u8>,
    engine: mpsc::Sender<EngineMsg>,
    pongs: mpsc::Sender<Vec<u8>>,
    watch: Watch,
    epoch: tokio::time::Instant,
) {
    let mut buf = early;
    buf.reserve(READ_SIZE);
    let mut pieces = Vec::new();
    let mut ticker = tokio::time::interval(watch.every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_rx = tokio::time::Instant::now();
    let mut loss = LossMeter::default();
    let reason = loop {
        take_frames(&mut buf, &mut pieces);
        let delivered = !pieces.is_empty();
        for piece in pieces.drain(..) {
            let msg = match piece {
                Piece::Frames(bytes) => EngineMsg::PathBytes { path, bytes },
                Piece::Control(body) => EngineMsg::PathControl { path, body },
                Piece::Ping(nonce) => {
                    // No room: the writer is busy, and its bytes tell the peer the path lives anyway.
                    let _ = pongs.try_send(encode(&Frame::Pong { nonce }));
                    continue;
                }
                Piece::Pong(nonce) => {
                    let now = epoch.elapsed().as_micros() as u64;
                    let Some(rtt) = now.checked_sub(nonce) else { continue };
                    EngineMsg::PathRtt { path, rtt: Duration::from_micros(rtt) }
                }
            };
            // A bounded queue: when the engine is behind, we stop reading and TCP slows the peer.
            if engine.send(msg).await.is_err() {
                return;
            }
        }
        if delivered {
            // Time spent waiting for the engine above is not silence on the path.
            last_rx = tokio::time::Instant::now();
        }
        if buf.capacity() - buf.len() < READ_SIZE / 4 {
            buf.reserve(READ_SIZE);
        }
        // read_buf is cancel safe: a tick loses no byte.
        tokio::select! {
            read = r.read_buf(&mut buf) => match read {
                Err(err) => break format!("read failed: {err}"),
                Ok(0) => break "the peer closed the connection".to_string(),
                Ok(_) => last_rx = tokio::time::Instant::now(),
            },
            _ = ticker.tick() => {
                if last_rx.elapsed() >= watch.dead_after {
                    break format!("nothing received for {} ms", watch.dead_after.as_millis());
                }
                if let Some(info) = tcp_info(watch.tcp_fd) {
                    let stats = EngineMsg::PathStats { path, tcp_rtt: info.rtt, loss: loss.update(&info) };
                    if engine.send(stats).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let _ = engine.send(EngineMsg::PathDown { path, reason }).await;
}

async fn writer<W: AsyncWrite + Unpin>(
    mut w: W,
    path: PathId,
    mut out: mpsc::Receiver<Vec<u8>>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    ping: Duration,
    epoch: tokio::time::Instant,
) {
    let failed = |err: std::io::Error| EngineMsg::PathDown { path, reason: format!("write failed: {err}") };
    loop {
        let chunk = match tokio::time::timeout(ping, out.recv()).await {
            Ok(Some(chunk)) => chunk,
            // The daemon closed the path: say goodbye at the TLS level.
            Ok(None) => break,
            Err(_) => encode(&Frame::Ping { nonce: epoch.elapsed().as_micros() as u64 }),
        };
        room.notify_one();
        if let Err(err) = w.write_all(&chunk).await {
            let _ = engine.send(failed(err)).await;
            return;
        }
        // Write what else is queued before flushing, so TLS records stay large.
        while let Ok(chunk) = out.try_recv() {
            room.notify_one();
            if let Err(err) = w.write_all(&chunk).await {
                let _ = engine.send(failed(err)).await;
                return;
            }
        }
        if let Err(err) = w.flush().await {
            let _ = engine.send(failed(err)).await;
            return;
        }
    }
    let _ = w.shutdown().await;
}

/// The fields of the kernel's `struct tcp_info` the Check activity uses.
struct TcpInfo {
    rtt: Duration,
    total_retrans: u32,
    segs_out: u32,
}

/// Reads TCP_INFO of a TCP socket (Linux ≥ 4.2 layout: tcpi_rtt at byte 68, tcpi_total_retrans at
/// 100, tcpi_segs_out at 136).
fn tcp_info(fd: std::os::fd::RawFd) -> Option<TcpInfo> {
    let mut raw = [0u8; 144];
    let mut len = raw.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `raw`, which we own; `fd` is the relay
    // socket, kept open by the read half the caller holds.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, raw.as_mut_ptr().cast(), &mut len) };
    if rc != 0 || (len as usize) < raw.len() {
        return None;
    }
    let u32_at = |at: usize| u32::from_ne_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    Some(TcpInfo {
        rtt: Duration::from_micros(u64::from(u32_at(68))),
        total_retrans: u32_at(100),
        segs_out: u32_at(136),
    })
}

/// Retransmitted segments per segment sent, smoothed; a sample needs enough segments to mean much.
#[derive(Default)]
struct LossMeter {
    last: Option<(u32, u32)>,
    loss: f64,
}

impl LossMeter {
    fn update(&mut self, info: &TcpInfo) -> f64 {
        let (retrans, segs) = self.last.unwrap_or((info.total_retrans, info.segs_out));
        let sent = info.segs_out.wrapping_sub(segs);
        if sent >= 20 {
            let sample = f64::from(info.total_retrans.wrapping_sub(retrans)) / f64::from(sent);
            self.loss = 0.8 * self.loss + 0.2 * sample.min(1.0);
            self.last = Some((info.total_retrans, info.segs_out));
        } else if self.last.is_none() {
            self.last = Some((info.total_retrans, info.segs_out));
        }
        self.loss
    }
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.encoded_len());
    // Cannot fail: PING and PONG have a fixed, small body.
    frame.encode(&mut out).expect("probe encodes");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(f: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        f.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn whole_frames_pass_and_control_frames_are_taken_out_in_place() {
        let ping = frame(&Frame::Ping { nonce: 1 });
        let pong = frame(&Frame::Pong { nonce: 7 });
        let credit = frame(&Frame::Credit { stream_id: 1, received: 0, max_offset: 9 });
        let control = frame(&Frame::Control { body: &[9, 9] });
        let data = frame(&Frame::Data { stream_id: 1, offset: 0, data: b"abc" });
        let mut buf = [credit.clone(), ping, control, pong, data.clone(), data[..5].to_vec()].concat();
        let mut pieces = Vec::new();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(
            pieces,
            vec![
                Piece::Frames(credit),
                Piece::Ping(1),
                Piece::Control(vec![9, 9]),
                Piece::Pong(7),
                Piece::Frames(data.clone())
            ]
        );
        assert_eq!(buf, data[..5]);
        buf.extend_from_slice(&data[5..]);
        pieces.clear();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(pieces, vec![Piece::Frames(data)]);
        assert!(buf.is_empty());
        pieces.clear();
        take_frames(&mut buf, &mut pieces);
        assert!(pieces.is_empty());
    }

    #[test]
    fn a_partial_frame_grows_in_place_until_it_is_whole() {
        let data = frame(&Frame::Data { stream_id: 1, offset: 0, data: &[7; 1000] });
        let mut buf = Vec::with_capacity(READ_SIZE);
        buf.extend_from_slice(&data[..500]);
        let at = buf.as_ptr();
        let mut pieces = Vec::new();
        take_frames(&mut buf, &mut pieces);
        assert!(pieces.is_empty());
        assert_eq!(buf.as_ptr(), at, "the partial frame was not moved");
        buf.extend_from_slice(&data[500..]);
        take_frames(&mut buf, &mut pieces);
        assert_eq!(pieces, vec![Piece::Frames(data)]);
    }
}
