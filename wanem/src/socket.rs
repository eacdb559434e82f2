//! An AF_PACKET raw socket bound to one interface: whole Ethernet frames in and out, many per system
//! call (recvmmsg / sendmmsg). It sees every frame the interface receives (promiscuous), never the
//! ones sent through it (PACKET_IGNORE_OUTGOING), so two of them make a bridge without loops.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Not in the libc crate yet (linux/if_packet.h, Linux 4.20).
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
/// linux/sockios.h.
const SIOCGIFMTU: libc::c_ulong = 0x8921;
/// Socket buffers: a few ms of frames at line rate, so a slow wake-up does not drop.
const SOCKET_BUFFER_BYTES: libc::c_int = 8 << 20;

/// What could not be done with the packet socket of an interface.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("no interface named {iface:?} in this network namespace")]
    NoInterface {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to open a packet socket for {iface} (needs CAP_NET_RAW)")]
    Open {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to set {option} on the packet socket of {iface}")]
    Option {
        iface: String,
        option: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to bind the packet socket to {iface}")]
    Bind {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to read the MTU of {iface}")]
    Mtu {
        iface: String,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    iface: String,
    mtu: usize,
}

impl PacketSocket {
    pub fn bind(iface: &str) -> Result<Self, SocketError> {
        let name = CString::new(iface).map_err(|e| SocketError::NoInterface {
            iface: iface.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        })?;
        // SAFETY: a plain call on a NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(SocketError::NoInterface { iface: iface.to_owned(), source: io::Error::last_os_error() });
        }
        // Protocol 0: the socket receives nothing until bound, so no frame of another interface
        // slips in between socket() and bind().
        // SAFETY: socket() has no memory arguments; the fd is owned at once.
        let raw =
            unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(SocketError::Open { iface: iface.to_owned(), source: io::Error::last_os_error() });
        }
        // SAFETY: raw is a new, valid fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let option = |level, name, value: &[u8], what| -> Result<(), SocketError> {
            // SAFETY: value points at value.len() readable bytes.
            let rc = unsafe {
                libc::setsockopt(fd.as_raw_fd(), level, name, value.as_ptr().cast(), value.len() as libc::socklen_t)
            };
            if rc < 0 {
                return Err(SocketError::Option {
                    iface: iface.to_owned(),
                    option: what,
                    source: io::Error::last_os_error(),
                });
            }
            Ok(())
        };
        let one: libc::c_int = 1;
        option(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, as_bytes(&one), "PACKET_IGNORE_OUTGOING")?;
        // FORCE (root) goes beyond net.core.rmem_max; fall back to the capped one.
        let size = SOCKET_BUFFER_BYTES;
        option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, as_bytes(&size), "SO_RCVBUFFORCE")
            .or_else(|_| option(libc::SOL_SOCKET, libc::SO_RCVBUF, as_bytes(&size), "SO_RCVBUF"))?;
        option(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, as_bytes(&size), "SO_SNDBUFFORCE")
            .or_else(|_| option(libc::SOL_SOCKET, libc::SO_SNDBUF, as_bytes(&size), "SO_SNDBUF"))?;

        // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        // SAFETY: addr is a sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(SocketError::Bind { iface: iface.to_owned(), source: io::Error::last_os_error() });
        }
        // SAFETY: packet_mreq is plain data; all-zero is a valid value.
        let mut mreq: libc::packet_mreq = unsafe { std::mem::zeroed() };
        mreq.mr_ifindex = index as i32;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        option(libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, as_bytes(&mreq), "PACKET_MR_PROMISC")?;

        let mtu = interface_mtu(&fd, iface)?;
        Ok(PacketSocket { fd, iface: iface.to_owned(), mtu })
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// The largest frame the interface sends: its MTU plus an Ethernet header and one VLAN tag.
    pub fn max_frame(&self) -> usize {
        self.mtu + 14 + 4
    }

    /// Waits until a frame can be read or `timeout` passes (or a signal arrives); returns true if
    /// readable. Nanosecond timeout: the pacing needs better than poll()'s milliseconds.
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: one valid pollfd, a valid timespec, no signal mask.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                return Ok(false);
            }
            return Err(err);
        }
        Ok(rc > 0 && pfd.revents & libc::POLLIN != 0)
    }

    /// Reads up to `bufs.len()` frames without blocking; `lens[i]` is the full length of frame i on
    /// the wire, which is more than `bufs[i].len()` if it did not fit (truncated). Returns how many.
    pub fn recv_batch(&self, bufs: &mut [Vec<u8>], lens: &mut [usize]) -> io::Result<usize> {
        let n = bufs.len().min(lens.len());
        let mut iovs: Vec<libc::iovec> =
            bufs[..n].iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut msgs: Vec<libc::mmsghdr> = (0..n).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // MSG_TRUNC: msg_len is the frame's real length even when the buffer was shorter.
        // SAFETY: msgs[..n] point at iovecs that point at live buffers of the lengths given.
        let rc = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::WouldBlock {
                return Ok(0);
            }
            return Err(err);
        }
        let got = rc as usize;
        for (len, m) in lens.iter_mut().zip(&msgs[..got]) {
            *len = m.msg_len as usize;
        }
        Ok(got)
    }

    /// Sends the frames in one call (as many as the kernel takes); returns how many were sent.
    /// An error is returned only if the first frame could not be sent.
    pub fn send_batch(&self, frames: &[Vec<u8>]) -> io::Result<usize> {
        if frames.is_empty() {
            return Ok(0);
        }
        let mut iovs: Vec<libc::iovec> = frames
            .iter()
            .map(|f| libc::iovec { iov_base: f.as_ptr() as *mut libc::c_void, iov_len: f.len() })
            .collect();
        // SAFETY: mmsghdr is plain data; all-zero is a valid value.
        let mut msgs: Vec<libc::mmsghdr> = (0..frames.len()).map(|_| unsafe { std::mem::zeroed() }).collect();
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: msgs point at iovecs that point at live frames; the kernel only reads them. The
        // socket is bound, so no destination address is needed.
        let rc = unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), msgs.len() as libc::c_uint, libc::MSG_DONTWAIT)
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn as_bytes<T>(value: &T) -> &[u8] {
    // SAFETY: any initialised T is readable as size_of::<T>() bytes; only used on plain C structs
    // and integers without padding that matters to the kernel.
    unsafe { std::slice::from_raw_parts((value as *const T).cast(), std::mem::size_of::<T>()) }
}

fn interface_mtu(fd: &OwnedFd, iface: &str) -> Result<usize, SocketError> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(iface.bytes().take(libc::IFNAMSIZ - 1)) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads the name from and writes the MTU into the ifreq passed.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGIFMTU as _, &mut req) };
    if rc < 0 {
        return Err(SocketError::Mtu { iface: iface.to_owned(), source: io::Error::last_os_error() });
    }
    // SAFETY: SIOCGIFMTU filled the ifru_mtu member.
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as usize)
}
