//! Addresses in frame bodies (HELLO, OPEN): an IP address is `family: u8` (4 or 6) and 4 or 16
//! address bytes; a socket address adds `port: u16`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use super::reader::Reader;
use super::WireError;

/// Address family byte for IPv4 addresses (followed by 4 address bytes).
pub const FAMILY_V4: u8 = 4;

/// Address family byte for IPv6 addresses (followed by 16 address bytes).
pub const FAMILY_V6: u8 = 6;

/// Length of an encoded IPv4 socket address, the shortest one.
pub(super) const SOCKET_ADDR_V4_LEN: usize = 1 + 4 + 2;

pub(super) fn ip_len(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 1 + 4,
        IpAddr::V6(_) => 1 + 16,
    }
}

pub(super) fn socket_addr_len(addr: &SocketAddr) -> usize {
    ip_len(&addr.ip()) + 2
}

pub(super) fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

pub(super) fn put_socket_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    put_ip(out, &addr.ip());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

impl Reader<'_> {
    pub(super) fn ip(&mut self) -> Result<IpAddr, WireError> {
        match self.u8()? {
            FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            family => Err(WireError::UnknownAddressFamily { frame_type: self.frame_type(), family }),
        }
    }

    /// IPv6 flow info and scope id are not carried: they decode as 0.
    pub(super) fn socket_addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = self.ip()?;
        let port = self.u16()?;
        Ok(match ip {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), port),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
        })
    }
}
