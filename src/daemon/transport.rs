//! One relay connection (TLS over TCP on an uplink): its handshake frames and its reader and writer
//! tasks. The frames of established sessions are the engine's business; here they are opaque bytes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::AbortHandle;

use roamtun_proto::path::{take_frames, Liveness, PathEvent, PathLoss, PathMonitor, Piece, TcpSample};
use roamtun_proto::transition::PathId;

use super::relay_socket::SocketHandle;
use super::tls_split::{RefreshKeys, WriteHalf};
use super::EngineMsg;
use crate::clock::Clock;
use roamtun_proto::wire::{self, Frame, WireError};

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

/// The Check activity's timers from the configuration.
pub fn liveness(t: &crate::config::Tuning) -> Liveness {
    Liveness {
        dead_after: roamtun_proto::time::Duration::from_millis(t.dead_after_ms),
        probe_interval: roamtun_proto::time::Duration::from_millis(t.probe_interval_ms),
        stall_after: roamtun_proto::time::Duration::from_millis(t.stall_after_ms),
        standby_probe_interval: roamtun_proto::time::Duration::from_millis(
            t.standby_probe_interval_ms.max(t.probe_interval_ms),
        ),
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
    /// Set by the engine task while the reader is to leave the connection's bytes unread (a planned
    /// switch's new path whose frames wait for the old path: its TCP window then slows the peer).
    pub paused: watch::Sender<bool>,
    /// Lets the reader start, once the engine task has the path: bytes that came behind the
    /// handshake (a SWITCH_UNEXPECTED written behind HELLO, the server's answer behind WELCOME) must
    /// not reach it before the path does.
    pub start: oneshot::Sender<()>,
}

/// How often a path's writer refreshes the TLS traffic keys (both directions: the `key_update` asks
/// the peer to update its own), and where it counts them for the status.
#[derive(Clone)]
pub struct Rekey {
    pub every: std::time::Duration,
    pub done: Arc<std::sync::atomic::AtomicU64>,
}

impl Rekey {
    pub fn new(tuning: &crate::config::Tuning, shared: &super::SharedCounters) -> Self {
        Rekey { every: std::time::Duration::from_secs(tuning.rekey_interval_secs), done: shared.key_updates.clone() }
    }
}

/// Starts the reader and writer of an established path. `early` holds bytes that arrived behind the
/// handshake. Both tasks report the end of the path to the engine task as [`EngineMsg::PathDown`].
#[allow(clippy::too_many_arguments)]
pub fn spawn_path_io<S>(
    stream: S,
    socket: SocketHandle,
    path: PathId,
    early: Vec<u8>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    liveness: Liveness,
    rekey: Rekey,
    clock: Clock,
) -> PathIo
where
    S: AsyncRead + AsyncWrite + RefreshKeys + Unpin + Send + 'static,
{
    let (r, w) = super::tls_split::split(stream);
    // Up to 8 chunks wait for the writer, on top of the engine's session_out_budget. Chunks are sized
    // to the path's rate, so on a slow path that is a few milliseconds (relay::outqueue).
    let (out_tx, out_rx) = mpsc::channel::<Bytes>(8);
    let standby = Arc::new(AtomicBool::new(false));
    let pace = Pace { liveness, standby: standby.clone() };
    tokio::spawn(writer(w, path, out_rx, engine.clone(), room, pace.clone(), rekey, clock));
    let pongs = out_tx.clone();
    let monitor = PathMonitor::new(liveness, socket.rto_min().into(), clock.now());
    let (paused, paused_rx) = watch::channel(false);
    let watch = Watch { socket, standby: standby.clone(), monitor, clock, paused: paused_rx };
    let (start, started) = oneshot::channel();
    let reader = tokio::spawn(async move {
        if started.await.is_ok() {
            reader(r, path, early, engine, pongs, watch).await;
        }
    });
    PathIo { out: out_tx, reader: reader.abort_handle(), standby, paused, start }
}

/// The probing pace of one path's writer: the configured one, or the standby one while the engine
/// task says the path is a standby.
#[derive(Clone)]
struct Pace {
    liveness: Liveness,
    standby: Arc<AtomicBool>,
}

impl Pace {
    /// A PING goes out after this long without writing.
    fn probe_interval(&self) -> Duration {
        self.liveness.probe_interval(self.standby.load(Ordering::Relaxed)).into()
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

/// What the reader watches besides the bytes: the path's Check activity, and what it needs to
/// judge (the relay socket's TCP counters, whether the path is a standby one, the time).
struct Watch {
    /// The relay connection's socket: its counters read, its unsent bytes bounded.
    socket: SocketHandle,
    standby: Arc<AtomicBool>,
    monitor: PathMonitor,
    clock: Clock,
    /// The engine task's word that the reader is to read nothing for now.
    paused: watch::Receiver<bool>,
}

async fn reader<R: AsyncRead + Unpin>(
    mut r: R,
    path: PathId,
    early: Vec<u8>,
    engine: mpsc::Sender<EngineMsg>,
    pongs: mpsc::Sender<Bytes>,
    mut watch: Watch,
) {
    let mut buf = BytesMut::with_capacity(READ_SIZE.max(early.len()));
    buf.extend_from_slice(&early);
    let mut pieces = Vec::new();
    let next_tick = |w: &Watch| w.monitor.poll_timeout().map_or(Duration::from_secs(3600), |at| w.clock.until(at));
    let tick = tokio::time::sleep(next_tick(&watch));
    tokio::pin!(tick);
    let reason = 'path: loop {
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
                    watch.monitor.on_pong(nonce, watch.clock.now());
                    continue;
                }
                Piece::Report(ppm) => EngineMsg::PathPeerLoss { path, loss: f64::from(ppm.min(1_000_000)) / 1e6 },
            };
            // A bounded queue: when the engine is behind, we stop reading and TCP slows the peer.
            if engine.send(msg).await.is_err() {
                return;
            }
        }
        if delivered {
            watch.monitor.on_delivered(watch.clock.now());
        }
        // What the monitor asks for: probes, round trips, statistics, or the end of the path.
        while let Some(event) = watch.monitor.poll_event() {
            let msg = match event {
                PathEvent::SendPing { nonce } => {
                    let queued = pongs.try_send(encode(&Frame::Ping { nonce })).is_ok();
                    watch.monitor.ping_queued(queued, watch.clock.now());
                    continue;
                }
                PathEvent::Rtt(rtt) => EngineMsg::PathRtt { path, rtt },
                PathEvent::Stats(sample) => {
                    watch.socket.bound_unsent(sample.pace);
                    EngineMsg::PathStats { path, sample }
                }
                PathEvent::Lost(why) => break 'path why,
            };
            if engine.send(msg).await.is_err() {
                return;
            }
        }
        make_room(&mut buf);
        let paused = *watch.paused.borrow_and_update();
        // read_buf is cancel safe: a tick loses no byte.
        tokio::select! {
            read = r.read_buf(&mut buf), if !paused => match read {
                Err(err) => break PathLoss::ReadFailed(err.to_string()),
                Ok(0) => break PathLoss::PeerClosed,
                Ok(_) => watch.monitor.on_bytes(watch.clock.now()),
            },
            changed = watch.paused.changed(), if paused => {
                // The engine task drops the sender only with the path, whose reader it aborts then.
                if changed.is_err() {
                    return;
                }
            }
            _ = &mut tick => {
                let now = watch.clock.now();
                watch.monitor.set_standby(watch.standby.load(Ordering::Relaxed), now);
                let sample = tcp_info(watch.socket.fd());
                watch.monitor.handle_tick(sample.as_ref(), now);
                let next = tokio::time::Instant::now() + next_tick(&watch);
                tick.as_mut().reset(next);
            }
        }
    };
    let _ = engine.send(EngineMsg::PathDown { path, reason }).await;
}

#[allow(clippy::too_many_arguments)]
async fn writer<S: AsyncWrite + RefreshKeys + Unpin>(
    mut w: WriteHalf<S>,
    path: PathId,
    mut out: mpsc::Receiver<Bytes>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    pace: Pace,
    rekey: Rekey,
    clock: Clock,
) {
    let failed = |err: std::io::Error| EngineMsg::PathDown { path, reason: PathLoss::WriteFailed(err.to_string()) };
    let stuck = EngineMsg::PathDown { path, reason: PathLoss::Unwritable { after: UNWRITABLE_AFTER.into() } };
    let mut next_rekey = tokio::time::Instant::now() + rekey.every;
    loop {
        let idle = pace.probe_interval().min(next_rekey.saturating_duration_since(tokio::time::Instant::now()));
        let chunk = match tokio::time::timeout(idle, out.recv()).await {
            Ok(Some(chunk)) => chunk,
            // The daemon closed the path: say goodbye at the TLS level, if the peer still reads.
            Ok(None) => break,
            // PING nonces are the time they left, so a PONG tells its round trip by itself.
            Err(_) => encode(&Frame::Ping { nonce: clock.now().total_micros() }),
        };
        // Like WireGuard's rekey: a path that lives for days does not keep one key for all of it.
        // The key_update leaves with the flush below, ahead of nothing it could reorder.
        if tokio::time::Instant::now() >= next_rekey {
            next_rekey += rekey.every;
            match w.refresh_keys() {
                Ok(()) => {
                    rekey.done.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?path, "TLS traffic keys refreshed");
                }
                Err(err) => {
                    let _ = engine.send(failed(std::io::Error::other(format!("refreshing the TLS keys: {err}")))).await;
                    return;
                }
            }
        }
        room.notify_one();
        let written = tokio::time::timeout(UNWRITABLE_AFTER, async {
            w.write_all(&chunk).await?;
            // Write what else is queued before flushing, so TLS records stay large.
            while let Ok(chunk) = out.try_recv() {
                room.notify_one();
                w.write_all(&chunk).await?;
            }
            w.flush().await
        });
        match written.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                let _ = engine.send(failed(err)).await;
                return;
            }
            // The task ends and drops its half of the socket: a peer that never reads holds no
            // task and, once the reader is stopped too, no descriptor.
            Err(_) => {
                let _ = engine.send(stuck).await;
                return;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSE_NOTIFY_WAIT, w.shutdown()).await;
}

/// A relay socket that accepts no byte for this long belongs to a peer that does not read (or to a
/// way that is gone): its writer gives up. A healthy path frees room at every acknowledgement, so
/// this is only the backstop behind the path monitor, which calls a stalled path dead much sooner.
const UNWRITABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a closed path's writer tries to say goodbye (TLS close_notify) to a peer.
const CLOSE_NOTIFY_WAIT: Duration = Duration::from_secs(1);

/// Reads TCP_INFO of a TCP socket (Linux ≥ 4.9 layout: tcpi_delivery_rate_app_limited is bit 0 of
/// byte 7, tcpi_snd_mss at 16, tcpi_unacked at 24, tcpi_last_ack_recv at 56, tcpi_rtt at 68,
/// tcpi_rttvar at 72, tcpi_total_retrans at 100, tcpi_bytes_acked at 120, tcpi_bytes_received at 128,
/// tcpi_segs_out at 136, tcpi_data_segs_out at 156, tcpi_delivery_rate at 160).
fn tcp_info(fd: std::os::fd::RawFd) -> Option<TcpSample> {
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
    use roamtun_proto::time::Duration;
    Some(TcpSample {
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

fn encode(frame: &Frame<'_>) -> Bytes {
    let mut out = Vec::with_capacity(frame.encoded_len());
    // Cannot fail: PING, PONG and REPORT have a fixed, small body (and a loss of at most 1).
    frame.encode(&mut out).expect("probe encodes");
    out.into()
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
