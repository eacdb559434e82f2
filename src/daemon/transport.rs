//! One relay connection (TLS over TCP on an uplink): its handshake frames and its reader and writer
//! tasks. The frames of established sessions are the engine's business; here they are opaque bytes.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::AbortHandle;

use super::relay_socket::SocketHandle;
use super::EngineMsg;
pub use roamtun_proto::relay::core::PathSample;
use roamtun_proto::transition::PathId;
use roamtun_proto::wire::{self, Frame, FrameType, WireError};

pub use roamtun_proto::relay::core::close_code;

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
/// trip, and a path that receives nothing at all (data, PING or PONG) for `dead_after` is dead. Under
/// traffic there is a quicker sign: bytes sent and not acknowledged by the peer's kernel for
/// `stall_after`, and for longer than the kernel's retransmission timer takes to repair a lost
/// segment (`AckStall`), so that neither a slow link nor a lossy one is mistaken for a dead one.
///
/// A standby path (warm, carrying no stream) is probed every `standby_probe_interval` instead, so that
/// a metered uplink pays little for being ready, and is declared dead by silence only after three of
/// those; the stall check still catches a black hole at its next PING.
#[derive(Debug, Clone, Copy)]
pub struct Liveness {
    pub dead_after: Duration,
    pub probe_interval: Duration,
    pub stall_after: Duration,
    pub standby_probe_interval: Duration,
}

impl Liveness {
    pub fn from_tuning(t: &crate::config::Tuning) -> Self {
        Liveness {
            dead_after: Duration::from_millis(t.dead_after_ms),
            probe_interval: Duration::from_millis(t.probe_interval_ms),
            stall_after: Duration::from_millis(t.stall_after_ms),
            standby_probe_interval: Duration::from_millis(t.standby_probe_interval_ms.max(t.probe_interval_ms)),
        }
    }
}

/// The tasks of one established path.
pub struct PathIo {
    /// The writer's queue: encoded frames, written in order.
    pub out: mpsc::Sender<Bytes>,
    /// Stops the reader (the writer ends when `out` is dropped).
    pub reader: AbortHandle,
    /// Set by the engine task while the path is a standby one: both tasks then probe and judge it
    /// at the standby pace.
    pub standby: Arc<AtomicBool>,
}

/// Starts the reader and writer of an established path. `early` holds bytes that arrived behind the
/// handshake. Both tasks report the end of the path to the engine task as [`EngineMsg::PathDown`].
pub fn spawn_path_io<S>(
    stream: S,
    socket: SocketHandle,
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
    // Up to 8 chunks wait for the writer, on top of the engine's session_out_budget. Chunks are sized
    // to the path's rate, so on a slow path that is a few milliseconds (relay::outqueue).
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(8);
    // PING nonces are microseconds since this instant, so a PONG tells its round trip by itself.
    let epoch = tokio::time::Instant::now();
    let standby = Arc::new(AtomicBool::new(false));
    let pace = Pace { liveness, standby: standby.clone() };
    tokio::spawn(writer(w, path, out_rx, engine.clone(), room, pace.clone(), epoch));
    let pongs = out_tx.clone();
    let watch = Watch {
        socket,
        pace,
        stall_after: liveness.stall_after,
        every: liveness.probe_interval.min(liveness.dead_after / 4),
    };
    let reader = tokio::spawn(reader(r, path, early, engine, pongs, watch, epoch));
    PathIo { out: out_tx, reader: reader.abort_handle(), standby }
}

/// The probing pace of one path: the configured one, or the standby one while the engine task says
/// the path is a standby.
#[derive(Clone)]
struct Pace {
    liveness: Liveness,
    standby: Arc<AtomicBool>,
}

impl Pace {
    fn standby(&self) -> bool {
        self.standby.load(Ordering::Relaxed)
    }

    /// A PING goes out after this long without writing.
    fn probe_interval(&self) -> Duration {
        if self.standby() {
            self.liveness.standby_probe_interval
        } else {
            self.liveness.probe_interval
        }
    }

    /// Silence this long and the path is dead.
    fn dead_after(&self) -> Duration {
        if self.standby() {
            self.liveness.dead_after.max(3 * self.liveness.standby_probe_interval)
        } else {
            self.liveness.dead_after
        }
    }
}

/// What the reader makes of the byte stream: whole stream frames for the engine, a transition
/// message, or a probe of this path (answered or timed here: a probe belongs to the path it came on,
/// whichever path the session's stream frames use).
#[derive(Debug, PartialEq, Eq)]
enum Piece {
    Frames(Bytes),
    Control(Vec<u8>),
    Ping(u64),
    Pong(u64),
    Report(u32),
}

/// Cuts the whole frames off the front of `buf` (a partial frame stays), taking each CONTROL frame
/// out as its own piece so that the daemon acts on it exactly between the frames around it: an
/// ALL_REDIRECTED must take effect before the stream bytes that follow it on the new path.
///
/// The frames are split off the buffer, not copied: the pieces share its allocation, and the partial
/// frame behind them stays where it is and grows in place as the next reads arrive.
fn take_frames(buf: &mut BytesMut, pieces: &mut Vec<Piece>) {
    let mut pos = 0;
    while let Some(len) = wire::frame_len(&buf[pos..]) {
        let body = &buf[pos + wire::HEADER_LEN..pos + len];
        let nonce = || u64::from_be_bytes(body.try_into().expect("an 8-byte body"));
        let piece = match FrameType::from_u8(buf[pos]) {
            Some(FrameType::Control) => Some(Piece::Control(body.to_vec())),
            // A probe with a malformed body stays in the stream: the engine counts it.
            Some(FrameType::Ping) if body.len() == 8 && buf[pos + 1] == 0 => Some(Piece::Ping(nonce())),
            Some(FrameType::Pong) if body.len() == 8 && buf[pos + 1] == 0 => Some(Piece::Pong(nonce())),
            Some(FrameType::Report) if body.len() == 4 && buf[pos + 1] == 0 => {
                Some(Piece::Report(u32::from_be_bytes(body.try_into().expect("a 4-byte body"))))
            }
            _ => None,
        };
        match piece {
            Some(piece) => {
                if pos > 0 {
                    pieces.push(Piece::Frames(buf.split_to(pos).freeze()));
                }
                pieces.push(piece);
                let _ = buf.split_to(len);
                pos = 0;
            }
            None => pos += len,
        }
    }
    if pos > 0 {
        pieces.push(Piece::Frames(buf.split_to(pos).freeze()));
    }
}

/// Makes room in the reader's buffer for the next read: at least a quarter of `READ_SIZE`, and room
/// for the whole of a partial frame, so that it is never moved while it arrives. A new allocation
/// (the old one is still shared with frames the engine has not processed) copies only the partial
/// frame, once per `READ_SIZE` bytes read, and is always `READ_SIZE` bytes: the buffer holds at most
/// a partial frame when it is renewed, and blocks of one size leave no holes a later one cannot use.
fn make_room(buf: &mut BytesMut) {
    let frame = wire::announced_len(buf).unwrap_or(0);
    let want = (READ_SIZE / 4).max(frame.saturating_sub(buf.len()));
    if buf.capacity() - buf.len() < want {
        buf.reserve(READ_SIZE.saturating_sub(buf.len()).max(want));
    }
}

/// The reader's buffer: many frames (64 KiB each at most) are read into one allocation, split off
/// as they complete, so a partial frame is copied once per buffer, not once per read.
const READ_SIZE: usize = 512 * 1024;

/// What the reader watches besides the bytes: silence, and the relay socket's own TCP counters (the
/// kernel's RTT, and retransmissions per segment sent: the path's loss, which TCP hides from us).
struct Watch {
    /// The relay connection's socket: its counters read, its retransmission timeout known, its
    /// unsent bytes bounded.
    socket: SocketHandle,
    pace: Pace,
    stall_after: Duration,
    /// How often the path's statistics (RTT, loss) go to the engine task.
    every: Duration,
}

/// How often the reader looks at the relay socket's acknowledgements: small against `stall_after`,
/// so a stall is decided within a tick of it; one getsockopt per tick.
const STALL_TICK: Duration = Duration::from_millis(10);

async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    path: PathId,
    early: Vec<u8>,
    engine: mpsc::Sender<EngineMsg>,
    pongs: mpsc::Sender<Bytes>,
    mut watch: Watch,
    epoch: tokio::time::Instant,
) {
    let mut buf = BytesMut::with_capacity(READ_SIZE.max(early.len()));
    buf.extend_from_slice(&early);
    let mut pieces = Vec::new();
    let tick =
        if watch.stall_after < watch.pace.liveness.dead_after { STALL_TICK.min(watch.every) } else { watch.every };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_rx = tokio::time::Instant::now();
    let mut last_stats = last_rx;
    // Whether bytes were arriving back to back before the current silence, and whether that silence
    // has had its PING.
    let (mut busy, mut probed) = (false, false);
    let mut was_standby = false;
    let mut loss = LossMeter::default();
    let mut rate_window = RateWindow::default();
    let mut stall = AckStall::new(last_rx.into_std(), watch.socket.rto_min());
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
                Piece::Report(ppm) => EngineMsg::PathPeerLoss { path, loss: f64::from(ppm.min(1_000_000)) / 1e6 },
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
        make_room(&mut buf);
        // read_buf is cancel safe: a tick loses no byte.
        tokio::select! {
            read = r.read_buf(&mut buf) => match read {
                Err(err) => break format!("read failed: {err}"),
                Ok(0) => break "the peer closed the connection".to_string(),
                Ok(_) => {
                    let now = tokio::time::Instant::now();
                    busy = now - last_rx < watch.stall_after / 3;
                    last_rx = now;
                    probed = false;
                }
            },
            _ = ticker.tick() => {
                let standby = watch.pace.standby();
                if was_standby && !standby {
                    // Called to work (a switch, a resumption): judge it by the busy pace from now
                    // on, not by the standby pace's silence behind it, and show the peer at once
                    // that it lives (the PING also gives the stall check something to time).
                    last_rx = tokio::time::Instant::now();
                    let _ = pongs.try_send(encode(&Frame::Ping { nonce: epoch.elapsed().as_micros() as u64 }));
                }
                was_standby = standby;
                let dead_after = watch.pace.dead_after();
                if last_rx.elapsed() >= dead_after {
                    break format!("nothing received for {} ms", dead_after.as_millis());
                }
                if busy && !probed && last_rx.elapsed() >= watch.stall_after / 3 {
                    // Bytes were pouring in and have stopped. A receiver has nothing in flight for
                    // the stall check to time, so put a PING in flight now instead of waiting for
                    // the writer's next probe: a black hole is then decided at about a third of
                    // stall_after plus the wait of a lone segment (LONE_SEGMENT_WAIT), not at
                    // probe_interval plus that.
                    probed = pongs.try_send(encode(&Frame::Ping { nonce: epoch.elapsed().as_micros() as u64 })).is_ok();
                }
                let Some(info) = tcp_info(watch.socket.fd()) else { continue };
                let now = tokio::time::Instant::now();
                if let Some(waited) = stall.dead(&info, watch.stall_after.min(dead_after), now.into_std()) {
                    break format!("{} bytes unacknowledged for {} ms", info.unacked_bytes(), waited.as_millis());
                }
                if now - last_stats >= watch.every {
                    last_stats = now;
                    let pace = rate_window.update(info.delivery_rate);
                    watch.socket.bound_unsent(pace);
                    let loss = loss.update(&info);
                    let sample = PathSample {
                        tcp_rtt: info.rtt,
                        jitter: info.rttvar,
                        loss,
                        bytes: info.bytes_acked.saturating_add(info.bytes_received),
                        delivery_rate: info.delivery_rate,
                        pace,
                    };
                    if engine.send(EngineMsg::PathStats { path, sample }).await.is_err() {
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
    mut out: mpsc::Receiver<Bytes>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    pace: Pace,
    epoch: tokio::time::Instant,
) {
    let failed = |err: std::io::Error| EngineMsg::PathDown { path, reason: format!("write failed: {err}") };
    loop {
        let chunk = match tokio::time::timeout(pace.probe_interval(), out.recv()).await {
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

/// [`PathSample::pace`]: the largest of the last [`PACE_SAMPLES`] delivery-rate samples the kernel
/// took while the socket was not application-limited. A window, not a decaying peak: the first
/// round trips of a connection, and a slow link's shaper letting a burst through, give samples far
/// above what the link carries, and chunks sized by those would wait in the queues for minutes.
#[derive(Default, Debug)]
struct RateWindow {
    samples: VecDeque<u64>,
}

/// One sample per stats tick (`probe_interval_ms`, 500 ms by default): a burst is forgotten in 4 s.
const PACE_SAMPLES: usize = 8;

impl RateWindow {
    fn update(&mut self, delivery_rate: Option<u64>) -> Option<u64> {
        if let Some(rate) = delivery_rate {
            if self.samples.len() == PACE_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(rate);
        }
        self.samples.iter().copied().max()
    }
}

/// The fields of the kernel's `struct tcp_info` the Check activity uses.
#[derive(Debug, Clone, Copy)]
struct TcpInfo {
    /// Segments sent and not yet acknowledged (`tcpi_unacked`).
    unacked: u32,
    snd_mss: u32,
    /// Since the last acknowledgement arrived (`tcpi_last_ack_recv`, jiffies-coarse).
    last_ack_recv: Duration,
    rtt: Duration,
    rttvar: Duration,
    total_retrans: u32,
    /// Bytes the peer has acknowledged so far (`tcpi_bytes_acked`).
    bytes_acked: u64,
    /// Bytes received so far (`tcpi_bytes_received`).
    bytes_received: u64,
    /// Segments sent that carried data (`tcpi_data_segs_out`, Linux 4.6; before it, all segments).
    /// Pure ACKs must not count: a relay socket that mostly receives sends an ACK for every other
    /// segment, and they would dilute its retransmission rate towards zero on a lossy path.
    data_segs_out: u32,
    /// The kernel's latest delivery-rate sample, bytes/s (`tcpi_delivery_rate`), unless the sender
    /// was application-limited when it was taken (then it says nothing of the link's capacity).
    delivery_rate: Option<u64>,
}

impl TcpInfo {
    fn unacked_bytes(&self) -> u64 {
        u64::from(self.unacked) * u64::from(self.snd_mss)
    }
}

/// Reads TCP_INFO of a TCP socket (Linux ≥ 4.9 layout: tcpi_delivery_rate_app_limited is bit 0 of
/// byte 7, tcpi_snd_mss at 16, tcpi_unacked at 24, tcpi_last_ack_recv at 56, tcpi_rtt at 68,
/// tcpi_rttvar at 72, tcpi_total_retrans at 100, tcpi_bytes_acked at 120, tcpi_bytes_received at 128,
/// tcpi_segs_out at 136, tcpi_data_segs_out at 156, tcpi_delivery_rate at 160).
fn tcp_info(fd: std::os::fd::RawFd) -> Option<TcpInfo> {
    let mut raw = [0u8; 168];
    let mut len = raw.len() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `raw`, which we own; `fd` is the relay
    // socket, kept open by the read half the caller holds.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, raw.as_mut_ptr().cast(), &mut len) };
    // Up to tcpi_segs_out is needed (Linux 4.2); the delivery rate (4.9) is optional.
    if rc != 0 || (len as usize) < 144 {
        return None;
    }
    let has_data_segs = len as usize >= 160;
    let has_rate = len as usize >= raw.len();
    let u32_at = |at: usize| u32::from_ne_bytes(raw[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_ne_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    Some(TcpInfo {
        unacked: u32_at(24),
        snd_mss: u32_at(16),
        last_ack_recv: Duration::from_millis(u64::from(u32_at(56))),
        rtt: Duration::from_micros(u64::from(u32_at(68))),
        rttvar: Duration::from_micros(u64::from(u32_at(72))),
        total_retrans: u32_at(100),
        bytes_acked: u64_at(120),
        bytes_received: u64_at(128),
        data_segs_out: if has_data_segs { u32_at(156) } else { u32_at(136) },
        delivery_rate: (has_rate && raw[7] & 1 == 0).then(|| u64_at(160)).filter(|r| *r > 0),
    })
}

/// How long the bytes in flight on the relay socket have waited for an acknowledgement: the quickest
/// sign that a busy path has died (a black hole acknowledges nothing), long before silence would say
/// so. Sans-IO: fed with TCP_INFO samples and the time they were taken.
#[derive(Debug)]
struct AckStall {
    bytes_acked: u64,
    /// Since when the bytes in flight have waited: the last sample that saw the acknowledged count
    /// move or nothing in flight. An upper bound on the real wait, by one sampling tick.
    waiting_since: std::time::Instant,
    /// The relay socket's minimum retransmission timeout (relay_socket::RTO_MIN).
    rto_min: Duration,
}

impl AckStall {
    fn new(now: std::time::Instant, rto_min: Duration) -> Self {
        AckStall { bytes_acked: 0, waiting_since: now, rto_min }
    }

    /// Whether the path is dead: bytes in flight that have waited at least `floor`, and longer than
    /// a lost segment takes to be repaired by the retransmission timer (the kernel's own last
    /// acknowledgement agreeing); a lone segment in flight at least [`LONE_SEGMENT_WAIT`] and a
    /// round trip. Returns the wait.
    ///
    /// A path that loses packets is not dead: seen with 1 % loss at 10 Mbit/s, "14480 bytes
    /// unacknowledged for 129 ms" under an upload, a tail loss that the kernel would have repaired
    /// by its timer. That repair takes the timeout as Linux computes it, srtt + max(4 rttvar,
    /// rto_min), and a round trip (with its deviation) for the acknowledgement.
    fn dead(&mut self, info: &TcpInfo, floor: Duration, now: std::time::Instant) -> Option<Duration> {
        if info.unacked == 0 || info.bytes_acked != self.bytes_acked {
            self.bytes_acked = info.bytes_acked;
            self.waiting_since = now;
            return None;
        }
        let waited = now.saturating_duration_since(self.waiting_since);
        let rto = info.rtt + (4 * info.rttvar).max(self.rto_min);
        let mut limit = floor.max(rto + info.rtt + 4 * info.rttvar);
        if info.unacked <= 1 {
            limit = limit.max(LONE_SEGMENT_WAIT + info.rtt);
        }
        // The kernel's clock of the last acknowledgement guards against a reader that was not
        // scheduled for a while and so saw no progress it would otherwise have seen.
        (waited >= limit && info.last_ack_recv >= limit).then_some(waited)
    }
}

/// How long a healthy peer may leave a lone segment unacknowledged: its kernel holds the ACK of a
/// segment that does not complete two full ones for up to 200 ms (Linux's TCP_DELACK_MAX) when it
/// has nothing to send back. Seen on CI: a healthy path declared dead after "1448 bytes
/// unacknowledged for 160 ms". Two or more full segments in flight are acknowledged at once, so a
/// busy path is still judged by `stall_after` alone.
const LONE_SEGMENT_WAIT: Duration = Duration::from_millis(200);

/// Retransmitted segments per data segment sent, smoothed; a sample needs enough segments to mean
/// much.
#[derive(Default)]
struct LossMeter {
    last: Option<(u32, u32)>,
    loss: f64,
}

impl LossMeter {
    fn update(&mut self, info: &TcpInfo) -> f64 {
        let (retrans, segs) = self.last.unwrap_or((info.total_retrans, info.data_segs_out));
        let sent = info.data_segs_out.wrapping_sub(segs);
        if sent >= 20 {
            let sample = f64::from(info.total_retrans.wrapping_sub(retrans)) / f64::from(sent);
            self.loss = 0.8 * self.loss + 0.2 * sample.min(1.0);
            self.last = Some((info.total_retrans, info.data_segs_out));
        } else if self.last.is_none() {
            self.last = Some((info.total_retrans, info.data_segs_out));
        }
        self.loss
    }
}

fn encode(frame: &Frame<'_>) -> Bytes {
    let mut out = Vec::with_capacity(frame.encoded_len());
    // Cannot fail: PING, PONG and REPORT have a fixed, small body (and a loss of at most 1).
    frame.encode(&mut out).expect("probe encodes");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(unacked: u32, bytes_acked: u64, last_ack_ms: u64, rtt_ms: u64) -> TcpInfo {
        TcpInfo {
            unacked,
            snd_mss: 1448,
            last_ack_recv: Duration::from_millis(last_ack_ms),
            rtt: Duration::from_millis(rtt_ms),
            rttvar: Duration::from_millis(rtt_ms / 4),
            total_retrans: 0,
            bytes_acked,
            bytes_received: 0,
            data_segs_out: 0,
            delivery_rate: None,
        }
    }

    #[test]
    fn a_busy_path_is_dead_when_its_bytes_go_unacknowledged() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let floor = Duration::from_millis(100);
        let mut stall = AckStall::new(t0, RTO_MIN);
        // Acknowledgements keep coming: never dead, however long it runs.
        for i in 0..100u64 {
            assert_eq!(stall.dead(&info(10, i * 1000, 0, 1), floor, ms(i * 10)), None);
        }
        // They stop (a black hole) at 990 ms; dead once 100 ms have passed, not before.
        assert_eq!(stall.dead(&info(10, 99_000, 50, 1), floor, ms(1080)), None);
        assert_eq!(stall.dead(&info(10, 99_000, 100, 1), floor, ms(1090)), Some(Duration::from_millis(100)));
    }

    /// The relay socket's minimum retransmission timeout in these tests, as relay_socket sets it.
    const RTO_MIN: Duration = Duration::from_millis(50);

    #[test]
    fn a_loss_the_retransmission_timer_repairs_is_not_a_stall() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let floor = Duration::from_millis(100);
        // A slow link under an upload: 25 ms round trip, 6 ms deviation. The tail of a burst is
        // lost and nothing is acknowledged until the timer resends it: after 25 + 50 ms, and its
        // acknowledgement a round trip later, at about 100 ms.
        let mut stall = AckStall::new(t0, RTO_MIN);
        assert_eq!(stall.dead(&info(10, 0, 0, 25), floor, ms(0)), None);
        assert_eq!(stall.dead(&info(10, 0, 120, 25), floor, ms(120)), None);
        assert!(stall.dead(&info(10, 0, 124, 25), floor, ms(124)).is_some(), "a black hole, past the repair");
        // Where the kernel keeps its 200 ms minimum, the repair takes 225 ms and its
        // acknowledgement: the 129 ms seen on such a link were no stall.
        let mut stall = AckStall::new(t0, Duration::from_millis(200));
        assert_eq!(stall.dead(&info(10, 0, 0, 25), floor, ms(0)), None);
        assert_eq!(stall.dead(&info(10, 0, 129, 25), floor, ms(129)), None);
        assert_eq!(stall.dead(&info(10, 0, 270, 25), floor, ms(270)), None);
        assert!(stall.dead(&info(10, 0, 274, 25), floor, ms(274)).is_some());
    }

    #[test]
    fn a_lone_segment_may_wait_for_a_delayed_ack() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let floor = Duration::from_millis(100);
        let mut stall = AckStall::new(t0, RTO_MIN);
        assert_eq!(stall.dead(&info(1, 0, 0, 1), floor, ms(0)), None);
        assert_eq!(stall.dead(&info(1, 0, 160, 1), floor, ms(160)), None, "a delayed ACK, not a stall");
        assert_eq!(stall.dead(&info(1, 0, 200, 1), floor, ms(200)), None);
        assert_eq!(stall.dead(&info(1, 0, 201, 1), floor, ms(201)), Some(Duration::from_millis(201)));
    }

    #[test]
    fn an_idle_path_or_a_slow_one_is_not_stalled() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let floor = Duration::from_millis(100);
        let mut stall = AckStall::new(t0, RTO_MIN);
        // Nothing in flight for 5 s, then a burst: the wait starts with the burst, although the
        // kernel's last acknowledgement is 5 s old.
        assert_eq!(stall.dead(&info(0, 500, 5000, 1), floor, ms(5000)), None);
        assert_eq!(stall.dead(&info(4, 500, 5010, 1), floor, ms(5010)), None);
        assert_eq!(stall.dead(&info(4, 500, 5090, 1), floor, ms(5090)), None);
        assert!(stall.dead(&info(4, 500, 5100, 1), floor, ms(5100)).is_some());
        // A 200 ms round trip (deviation 50 ms): the retransmission timer (200 + 4 x 50 ms) and a
        // round trip with four deviations (200 + 200 ms) before a stall counts.
        let mut stall = AckStall::new(t0, RTO_MIN);
        assert_eq!(stall.dead(&info(4, 0, 0, 200), floor, ms(0)), None);
        assert_eq!(stall.dead(&info(4, 0, 790, 200), floor, ms(790)), None);
        assert!(stall.dead(&info(4, 0, 800, 200), floor, ms(800)).is_some());
        // The reader was not scheduled and saw no progress, but the kernel got an ACK 5 ms ago.
        let mut stall = AckStall::new(t0, RTO_MIN);
        assert_eq!(stall.dead(&info(4, 0, 0, 1), floor, ms(0)), None);
        assert_eq!(stall.dead(&info(4, 0, 5, 1), floor, ms(300)), None);
    }

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
        let report = frame(&Frame::Report { loss_ppm: 250_000 });
        let mut buf = BytesMut::from(
            &[credit.clone(), ping, control, pong, report, data.clone(), data[..5].to_vec()].concat()[..],
        );
        let mut pieces = Vec::new();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(
            pieces,
            vec![
                Piece::Frames(credit.into()),
                Piece::Ping(1),
                Piece::Control(vec![9, 9]),
                Piece::Pong(7),
                Piece::Report(250_000),
                Piece::Frames(data.clone().into())
            ]
        );
        assert_eq!(buf, data[..5]);
        buf.extend_from_slice(&data[5..]);
        pieces.clear();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(pieces, vec![Piece::Frames(data.into())]);
        assert!(buf.is_empty());
        pieces.clear();
        take_frames(&mut buf, &mut pieces);
        assert!(pieces.is_empty());
    }

    #[test]
    fn frames_share_the_read_buffer_and_a_partial_frame_grows_in_place() {
        let data = frame(&Frame::Data { stream_id: 1, offset: 0, data: &[7; 1000] });
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        buf.extend_from_slice(&data);
        buf.extend_from_slice(&data[..500]);
        let at = buf.as_ptr();
        let mut pieces = Vec::new();
        take_frames(&mut buf, &mut pieces);
        let Some(Piece::Frames(whole)) = pieces.pop() else { panic!("one whole frame") };
        assert_eq!(whole, data);
        assert_eq!(whole.as_ptr(), at, "the whole frame was copied");
        assert_eq!(buf.as_ptr(), at.wrapping_add(data.len()), "the partial frame was moved");
        make_room(&mut buf);
        assert_eq!(buf.as_ptr(), at.wrapping_add(data.len()), "room was made by moving the partial frame");
        buf.extend_from_slice(&data[500..]);
        take_frames(&mut buf, &mut pieces);
        assert_eq!(pieces, vec![Piece::Frames(data.into())]);
    }

    #[test]
    fn room_is_made_for_the_whole_of_a_partial_frame() {
        let data = frame(&Frame::Data { stream_id: 1, offset: 0, data: &[7; 60_000] });
        let mut buf = BytesMut::with_capacity(READ_SIZE);
        buf.resize(READ_SIZE - 30_000, 0);
        let _shared = buf.split().freeze();
        buf.extend_from_slice(&data[..100]);
        make_room(&mut buf);
        assert!(buf.capacity() >= data.len(), "capacity {} for a frame of {}", buf.capacity(), data.len());
        let at = buf.as_ptr();
        buf.extend_from_slice(&data[100..]);
        assert_eq!(buf.as_ptr(), at);
        let mut pieces = Vec::new();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(pieces, vec![Piece::Frames(data.into())]);
    }

    #[test]
    fn the_pace_forgets_a_burst_within_a_window() {
        let mut w = RateWindow::default();
        assert_eq!(w.update(None), None, "nothing known yet");
        // A connection's first round trips, through a shaper's burst allowance: far above the link.
        assert_eq!(w.update(Some(500_000_000)), Some(500_000_000));
        for _ in 1..PACE_SAMPLES {
            assert_eq!(w.update(Some(6_000_000)), Some(500_000_000));
        }
        assert_eq!(w.update(Some(6_000_000)), Some(6_000_000), "the burst has left the window");
        // Application-limited ticks say nothing: the estimate stays.
        assert_eq!(w.update(None), Some(6_000_000));
    }

    #[test]
    fn loss_is_retransmissions_per_data_segment() {
        let counters =
            |retrans, data_segs| TcpInfo { total_retrans: retrans, data_segs_out: data_segs, ..info(0, 0, 0, 1) };
        let mut meter = LossMeter::default();
        assert_eq!(meter.update(&counters(0, 0)), 0.0);
        // Fewer than 20 data segments say nothing yet, whatever their fate.
        assert_eq!(meter.update(&counters(5, 10)), 0.0);
        // 30 of 100 data segments resent, each round: the estimate climbs towards 30 %.
        let mut last = 0.0;
        for round in 1..=20 {
            let now = meter.update(&counters(30 * round, 100 * round));
            assert!(now > last && now <= 0.3, "round {round}: {now} after {last}");
            last = now;
        }
        assert!(last > 0.29, "{last}");
        // A clean path brings it back down.
        for round in 1..=20 {
            last = meter.update(&counters(600, 2000 + 100 * round));
        }
        assert!(last < 0.01, "{last}");
    }

    /// The offsets `tcp_info` reads, on real sockets: a receiver that sends only ACKs has sent no
    /// data segment, so its loss estimate cannot be diluted by them. Runs in a private network
    /// namespace of its own thread (root, as the other kernel tests), so nothing leaves it.
    #[test]
    fn tcp_info_counts_data_segments_apart_from_acks() {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET) (run as root): {}", std::io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let nl = roamtun_netlink::Netlink::connect().await.unwrap();
                nl.set_link_up(nl.link_index("lo").await.unwrap()).await.unwrap();
            });
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let mut sender = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut receiver, _) = listener.accept().unwrap();
            let data = vec![7u8; 1 << 20];
            let writing = std::thread::spawn(move || {
                sender.write_all(&data).unwrap();
                sender
            });
            let mut got = vec![0u8; 1 << 20];
            receiver.read_exact(&mut got).unwrap();
            let sender = writing.join().unwrap();
            let sent = tcp_info(sender.as_raw_fd()).expect("tcp_info of the sender");
            let received = tcp_info(receiver.as_raw_fd()).expect("tcp_info of the receiver");
            assert!(sent.data_segs_out >= 16, "1 MiB in {} data segments", sent.data_segs_out);
            assert_eq!(received.bytes_received, 1 << 20, "{received:?}");
            assert_eq!(received.data_segs_out, 0, "the receiver sent only ACKs: {received:?}");
        })
        .join()
        .unwrap();
    }
}
