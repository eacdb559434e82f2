//! The TCP socket under a relay connection's TLS: read through a buffer, and on a slow path written
//! so that few bytes wait unsent in the kernel, where nothing can pass them.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the relay socket per `recv` once the peer is authenticated.
const READ_BUFFER: usize = 256 * 1024;
/// The read buffer before that: enough for a ClientHello and HELLO, so that a connection from a
/// stranger costs little memory (a flood of them must not grow the server).
const HANDSHAKE_READ_BUFFER: usize = 4 * 1024;

/// The relay socket's minimum retransmission timeout (`TCP_RTO_MIN_US`, Linux 6.15), against the
/// kernel's 200 ms. A lost segment that nothing after it reveals (the last of a burst, a keystroke)
/// is sent again after srtt + max(4 rttvar, this): every stream of the session waits for it. Then
/// a path that lost a segment also looks dead for less time, so the stall check (`AckStall` in
/// `transport.rs`) can tell them apart within about `stall_after_ms`. Half its default: well above
/// the round trip of a LAN or Wi-Fi hop, and a delay spike beyond it costs one spurious
/// retransmission, which the kernel detects and undoes (F-RTO).
const RTO_MIN: Duration = Duration::from_millis(50);

/// `TCP_USER_TIMEOUT` of every relay socket.
const USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Linux's own minimum, where `TCP_RTO_MIN_US` is not known (before 6.15).
const LINUX_RTO_MIN: Duration = Duration::from_millis(200);

/// `TCP_RTO_MIN_US` from linux/tcp.h (not in the libc crate yet).
const TCP_RTO_MIN_US: libc::c_int = 45;

/// The longest congestion control name the kernel takes (`TCP_CA_NAME_MAX`, with its NUL).
pub const CONGESTION_CONTROL_NAME_MAX: usize = 16;

/// Why the configured congestion control cannot be used on the relay sockets (they then keep the
/// host's default, `net.ipv4.tcp_congestion_control`).
#[derive(Debug, thiserror::Error)]
pub enum CongestionControlError {
    /// ENOENT: neither built in nor loaded, and the kernel did not load it (it tries only for a
    /// process with CAP_NET_ADMIN).
    #[error(
        "tuning.congestion_control = {name:?} is not available in this kernel (available: {available}): \
         load it with `modprobe tcp_{name}`, or choose one of those"
    )]
    NotAvailable { name: String, available: String },
    /// EPERM: loaded, but not in the list an unprivileged process may choose from.
    #[error(
        "tuning.congestion_control = {name:?} is not allowed for this process (net.ipv4.tcp_allowed_congestion_control: \
         {allowed}): give the daemon CAP_NET_ADMIN or add it to that list"
    )]
    NotAllowed { name: String, allowed: String },
    #[error("failed to set TCP_CONGESTION {name:?} on a relay socket")]
    Set {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to open a TCP socket to try TCP_CONGESTION {name:?} on")]
    Probe {
        name: String,
        #[source]
        source: io::Error,
    },
}

/// Sets the congestion control of the socket `fd` (`TCP_CONGESTION`), naming the fix if the kernel
/// refuses.
pub fn set_congestion_control(fd: RawFd, name: &str) -> Result<(), CongestionControlError> {
    // SAFETY: fd is an open TCP socket; the value is name's bytes, of the length given (no NUL needed).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let sysctl = |file| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{file}")).map_or_else(|_| "?".into(), |s| s.trim().into())
    };
    Err(match source.raw_os_error() {
        Some(libc::ENOENT) => CongestionControlError::NotAvailable {
            name: name.into(),
            available: sysctl("tcp_available_congestion_control"),
        },
        Some(libc::EPERM) => {
            CongestionControlError::NotAllowed { name: name.into(), allowed: sysctl("tcp_allowed_congestion_control") }
        }
        _ => CongestionControlError::Set { name: name.into(), source },
    })
}

/// The congestion control the socket `fd` uses (`TCP_CONGESTION` read back).
pub fn congestion_control(fd: RawFd) -> io::Result<String> {
    let mut name = [0u8; CONGESTION_CONTROL_NAME_MAX];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: fd is an open TCP socket; name and len describe a buffer the kernel fills.
    let rc =
        unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_CONGESTION, name.as_mut_ptr().cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = &name[..(len as usize).min(name.len())];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Tries `name` on a fresh TCP socket, as every relay socket will: at start-up, so that a daemon
/// whose kernel lacks it says so once, in words, instead of on every connection.
pub fn check_congestion_control(name: &str) -> Result<(), CongestionControlError> {
    // SAFETY: socket() has no memory arguments; the fd is owned at once.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(CongestionControlError::Probe { name: name.into(), source: io::Error::last_os_error() });
    }
    // SAFETY: raw is a new, valid fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    set_congestion_control(fd.as_raw_fd(), name)
}

/// A relay connection's TCP socket.
///
/// It is read through a buffer: rustls reads the socket 4 KiB at a time (and shrinks its buffer
/// whenever it is empty), so a 64 KiB frame would cost 16 or more `recv` calls; from a user-space
/// buffer those reads are plain copies, and the socket is read once per [`READ_BUFFER`] bytes. The
/// buffer is that big only after [`RelaySocket::grow_read_buffer`], once the peer is authenticated.
///
/// While [`UnsentBound`] bounds the socket's unsent bytes, every write ends with `MSG_EOR`. The bound
/// (`TCP_NOTSENT_LOWAT`) is checked by the kernel only when a write needs a new buffer (skb); until
/// then it appends to the last unsent one, up to 64 KiB, whatever the bound. Seen at 10 Mbit/s: up
/// to 64 KiB unsent against a bound of 8 KiB, 50 ms that a keystroke waited behind. `MSG_EOR` closes
/// the last buffer, so the next write meets the check.
///
/// Its minimum retransmission timeout is [`RTO_MIN`], its congestion control the configured one
/// (`tuning.congestion_control`): every stream of the session shares this one connection, so its
/// congestion control is the product's choice, not the host's default (bbr's ProbeRTT, every 10 s,
/// shrinks it to four segments for 200 ms: a stall of every app at once).
pub struct RelaySocket {
    inner: TcpStream,
    /// Bytes read from the socket; `read_buf[pos..filled]` are not yet handed to rustls.
    read_buf: Vec<u8>,
    pos: usize,
    filled: usize,
    eor: Arc<AtomicBool>,
    rto_min: Duration,
    /// The congestion control in effect, read back (None: the kernel did not say).
    congestion_control: Option<String>,
}

impl RelaySocket {
    /// Wraps `tcp`, giving it its socket options; `congestion_control` is the configured algorithm
    /// (the daemon checked it at start-up with [`check_congestion_control`] and warned if refused:
    /// then the socket keeps the host's default, and says so in [`RelaySocket::congestion_control`]).
    pub fn new(tcp: TcpStream, congestion_control: &str) -> Self {
        // Read back: the kernel keeps it in clock ticks (52 ms for 50 at 250 Hz).
        let fd = tcp.as_raw_fd();
        let rto_min = set_int(fd, TCP_RTO_MIN_US, RTO_MIN.as_micros() as usize)
            .and_then(|()| get_int(fd, TCP_RTO_MIN_US))
            .map(|us| Duration::from_micros(us.unsigned_abs().into()))
            .unwrap_or_else(|err| {
                tracing::debug!(%err, "setting TCP_RTO_MIN_US failed; the relay socket keeps Linux's 200 ms");
                LINUX_RTO_MIN
            });
        // The kernel's backstop: unacknowledged data this old aborts the connection (ETIMEDOUT), so
        // a socket towards a peer that vanished cannot hold its memory and descriptor for the
        // kernel's default of about 15 minutes of retransmissions.
        if let Err(err) = set_int(fd, libc::TCP_USER_TIMEOUT, USER_TIMEOUT.as_millis() as usize) {
            tracing::debug!(%err, "setting TCP_USER_TIMEOUT failed");
        }
        if let Err(err) = set_congestion_control(fd, congestion_control) {
            tracing::debug!(%err, "the relay socket keeps the host's congestion control");
        }
        let congestion_control = self::congestion_control(fd).ok();
        RelaySocket {
            inner: tcp,
            read_buf: vec![0; HANDSHAKE_READ_BUFFER],
            pos: 0,
            filled: 0,
            eor: Arc::new(AtomicBool::new(false)),
            rto_min,
            congestion_control,
        }
    }

    /// The congestion control the socket uses (read back after setting it).
    pub fn congestion_control(&self) -> Option<&str> {
        self.congestion_control.as_deref()
    }

    /// Gives the socket its full read buffer: the peer is authenticated and its path will carry bulk.
    pub fn grow_read_buffer(&mut self) {
        if self.read_buf.len() < READ_BUFFER {
            self.read_buf.resize(READ_BUFFER, 0);
        }
    }

    /// The path reader's handle on the socket, which the TLS stream owns.
    pub fn handle(&self) -> SocketHandle {
        SocketHandle { fd: self.inner.as_raw_fd(), rto_min: self.rto_min, eor: self.eor.clone(), lowat: 0 }
    }

    /// Writes `bufs` with `MSG_EOR`, waiting for the socket to be writable.
    fn poll_send_eor(&self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let tcp = &self.inner;
        loop {
            ready!(tcp.poll_write_ready(cx))?;
            match tcp.try_io(Interest::WRITABLE, || send_eor(tcp.as_raw_fd(), bufs)) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                done => return Poll::Ready(done),
            }
        }
    }
}

/// One `sendmsg` of `bufs` with `MSG_EOR`.
fn send_eor(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid value (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (std's documented guarantee); the kernel only
    // reads through msg_iov.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len().min(1024) as _;
    // SAFETY: fd is the open socket of a live TcpStream; msg points at bufs, valid for the call.
    let sent = unsafe { libc::sendmsg(fd, &msg, libc::MSG_EOR | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

impl AsyncRead for RelaySocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.filled {
            // Nothing buffered: a read as large as our buffer goes straight to the caller.
            if buf.remaining() >= this.read_buf.len() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut fill = ReadBuf::new(&mut this.read_buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut fill))?;
            this.filled = fill.filled().len();
            this.pos = 0;
        }
        let n = buf.remaining().min(this.filled - this.pos);
        buf.put_slice(&this.read_buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for RelaySocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.eor.load(Ordering::Relaxed) {
            self.poll_send_eor(cx, &[IoSlice::new(buf)])
        } else {
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.eor.load(Ordering::Relaxed) {
            self.poll_send_eor(cx, bufs)
        } else {
            Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The path reader's handle on the relay socket: its descriptor (for TCP_INFO), its minimum
/// retransmission timeout, and the bound on its unsent bytes.
pub struct SocketHandle {
    /// Valid while the reader holds the TLS stream's read half.
    fd: RawFd,
    rto_min: Duration,
    eor: Arc<AtomicBool>,
    /// The bound set, 0 before the first.
    lowat: usize,
}

impl SocketHandle {
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn rto_min(&self) -> Duration {
        self.rto_min
    }

    /// Bounds the socket's unsent bytes (`TCP_NOTSENT_LOWAT`, and `MSG_EOR` on each write, see
    /// [`RelaySocket`]) to two of the engine's bulk chunks at the path's rate, `pace` bytes per
    /// second (None: not known yet, nothing changes): beyond that, bytes wait in the engine's lanes,
    /// where urgent frames pass them (relay::outqueue). Only on a path too slow for whole chunks: on
    /// a faster one the unsent bytes drain within a millisecond anyway, and a bound would only wake
    /// the writer more often. The bytes in flight (sent, not yet acknowledged) stay the congestion
    /// control's business.
    pub fn bound_unsent(&mut self, pace: Option<u64>) {
        let Some(rate) = pace else { return };
        let slot = roamtun_proto::relay::outqueue::slot(Some(rate));
        let bounded = slot < roamtun_proto::relay::outqueue::CHUNK;
        let want = if bounded { 2 * slot } else { libc::c_int::MAX as usize };
        if want == self.lowat {
            return;
        }
        self.lowat = want;
        match set_int(self.fd, libc::TCP_NOTSENT_LOWAT, want) {
            Ok(()) => self.eor.store(bounded, Ordering::Relaxed),
            // Then the socket keeps more unsent, as before; not tried again on every tick.
            Err(err) => tracing::debug!(%err, "setting TCP_NOTSENT_LOWAT failed"),
        }
    }
}

/// Reads a TCP socket option of type int.
fn get_int(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: fd is an open TCP socket; value and len describe a c_int the kernel fills.
    let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, option, (&raw mut value).cast(), &mut len) };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets a TCP socket option of type int (saturated).
fn set_int(fd: RawFd, option: libc::c_int, value: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: fd is an open TCP socket; the option value is a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            option,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The unsent bytes of a socket whose peer reads nothing, after writing 4 KiB at a time until the
    /// kernel takes no more (bounded: at most 4 MiB), with `TCP_NOTSENT_LOWAT` at 8 KiB, with and
    /// without `MSG_EOR`.
    async fn unsent_after_filling(eor: bool) -> u32 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (_peer, _) = listener.accept().await.unwrap();
        let mut socket = RelaySocket::new(tcp, "cubic");
        set_int(socket.handle().fd(), libc::TCP_NOTSENT_LOWAT, LOWAT).unwrap();
        socket.eor.store(eor, Ordering::Relaxed);
        let chunk = [7u8; WRITE];
        for _ in 0..1024 {
            // The peer's window closes, then the kernel queues up to the bound and refuses more:
            // the write is pending.
            let write = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut socket).poll_write(cx, &chunk))).await;
            match write {
                Poll::Ready(written) => assert!(written.unwrap() > 0),
                Poll::Pending => break,
            }
        }
        notsent_bytes(socket.handle().fd())
    }

    const LOWAT: usize = 8192;
    const WRITE: usize = 4096;

    fn notsent_bytes(fd: RawFd) -> u32 {
        let mut info = [0u8; 232];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: fd is an open TCP socket; info and len describe a buffer the kernel fills.
        let rc = unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, info.as_mut_ptr().cast(), &mut len) };
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        // tcpi_notsent_bytes (Linux 4.6).
        u32::from_ne_bytes(info[144..148].try_into().unwrap())
    }

    /// Runs `test` on real sockets, in a private network namespace of its own thread (root, as the
    /// other kernel tests), so nothing leaves it.
    fn on_private_loopback<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F + Send + 'static) {
        std::thread::spawn(|| {
            // SAFETY: unshare takes no pointers; CLONE_NEWNET moves only this thread.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare(CLONE_NEWNET) (run as root): {}", io::Error::last_os_error());
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let nl = roamtun_netlink::Netlink::connect().await.unwrap();
                nl.set_link_up(nl.link_index("lo").await.unwrap()).await.unwrap();
                test().await;
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn each_write_ending_its_buffer_keeps_the_unsent_bytes_near_the_bound() {
        on_private_loopback(|| async {
            let plain = unsent_after_filling(false).await;
            let eor = unsent_after_filling(true).await;
            // The kernel may take one write when the unsent bytes are just below the bound.
            assert!(eor as usize <= LOWAT + WRITE, "{eor} bytes unsent with MSG_EOR");
            // Without it the last buffer keeps growing past the bound: what MSG_EOR is for.
            assert!(plain as usize > LOWAT + WRITE, "only {plain} bytes unsent without MSG_EOR");
        });
    }

    /// Both ends of a relay connection use the configured algorithm whatever the host's default
    /// (read back from the kernel), and a name the kernel lacks is refused with the fix in words.
    #[test]
    fn the_socket_uses_the_configured_congestion_control() {
        on_private_loopback(|| async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            // reno is always built in; cubic and bbr where the kernel has them.
            for name in ["reno", "cubic", "bbr"] {
                if name != "reno" && check_congestion_control(name).is_err() {
                    continue;
                }
                let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
                let (accepted, _) = listener.accept().await.unwrap();
                let client = RelaySocket::new(tcp, name);
                let server = RelaySocket::new(accepted, name);
                assert_eq!(client.congestion_control(), Some(name));
                assert_eq!(server.congestion_control(), Some(name));
                assert_eq!(congestion_control(server.handle().fd()).unwrap(), name);
            }
            let err = check_congestion_control("no_such_cc").unwrap_err();
            assert!(matches!(err, CongestionControlError::NotAvailable { .. }), "{err:?}");
            assert!(err.to_string().contains("modprobe tcp_no_such_cc"), "{err}");
        });
    }

    /// The stall check relies on the minimum the handle reports: the socket's own, or Linux's
    /// 200 ms where the kernel does not know the option.
    #[test]
    fn the_handle_reports_the_sockets_minimum_retransmission_timeout() {
        on_private_loopback(|| async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let tcp = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let socket = RelaySocket::new(tcp, "cubic");
            let handle = socket.handle();
            match get_int(handle.fd(), TCP_RTO_MIN_US) {
                Ok(us) => {
                    assert_eq!(Duration::from_micros(us as u64), handle.rto_min());
                    // Rounded to the kernel's clock tick, 10 ms at most.
                    let off = handle.rto_min().abs_diff(RTO_MIN);
                    assert!(off <= Duration::from_millis(10), "{:?} for {RTO_MIN:?}", handle.rto_min());
                }
                Err(err) => assert_eq!(handle.rto_min(), LINUX_RTO_MIN, "{err}"),
            }
        });
    }
}
