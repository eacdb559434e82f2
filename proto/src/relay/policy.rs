//! Where a client may send through the server: the destination policy the server's engine applies to
//! every OPEN and DATAGRAM of a client (SNAPT side; the client engine has its own rule, that the
//! server may only reach the client's own virtual IPs).
//!
//! The rules, first match wins:
//! 1. the server's own virtual IPs: always;
//! 2. loopback and unspecified addresses: never (the server's kernel drops such packets from a TUN as
//!    martians anyway; refusing says so at once instead of after a connect timeout);
//! 3. another client (an address in `client_prefixes`, or one a live session owns): only with
//!    `client_to_client`, also in exit mode;
//! 4. anything else: with `exit`, or inside one of `allowed`.
//!
//! It decides on the destination address alone: ports and protocols are the business of the
//! firewall of the server host. It does not check the source (the engine does: a client speaks only
//! from its own virtual IPs).

use std::net::IpAddr;

/// An IP prefix, e.g. `198.18.9.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl IpPrefix {
    pub fn new(addr: IpAddr, len: u8) -> Self {
        IpPrefix { addr, len }
    }

    /// Whether `ip` is inside the prefix (an IPv4 prefix holds no IPv6 address and the reverse).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len.min(32))).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.len.min(128))).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Why a destination was refused, for the log (the peer gets RESET `NotAllowed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Forbidden {
    #[error("loopback and unspecified addresses are never reachable through the tunnel")]
    Loopback,
    #[error("the destination is another client's virtual IP and client_to_client is off")]
    OtherClient,
    #[error("the destination is outside the server's virtual IPs and allowed_destinations (exit is off)")]
    NotAllowed,
}

/// The server's destination policy (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationPolicy {
    /// The server's own virtual IPs: always reachable.
    pub server_ips: Vec<IpAddr>,
    /// Where the clients' virtual IPs live: a destination inside is another client.
    pub client_prefixes: Vec<IpPrefix>,
    /// Exit mode: every destination that is not another client.
    pub exit: bool,
    /// Beyond the server's virtual IPs, what clients may reach without exit mode.
    pub allowed: Vec<IpPrefix>,
    /// Clients may reach each other's virtual IPs.
    pub client_to_client: bool,
}

impl DestinationPolicy {
    /// Every destination allowed, clients included: what an engine does unless told otherwise (the
    /// client engine, and tests). The server daemon always sets its policy from its configuration.
    pub fn allow_all() -> Self {
        DestinationPolicy {
            server_ips: Vec::new(),
            client_prefixes: Vec::new(),
            exit: true,
            allowed: Vec::new(),
            client_to_client: true,
        }
    }

    /// Whether a client may send to `dst`; `owned_by_a_session` says whether a live session (another
    /// client, or the sender itself) owns it (asked only when the prefixes do not decide).
    pub fn check(&self, dst: IpAddr, owned_by_a_session: impl FnOnce() -> bool) -> Result<(), Forbidden> {
        if self.server_ips.contains(&dst) {
            return Ok(());
        }
        if dst.is_loopback() || dst.is_unspecified() {
            return Err(Forbidden::Loopback);
        }
        if self.client_prefixes.iter().any(|p| p.contains(dst)) || owned_by_a_session() {
            return if self.client_to_client { Ok(()) } else { Err(Forbidden::OtherClient) };
        }
        if self.exit || self.allowed.iter().any(|p| p.contains(dst)) {
            Ok(())
        } else {
            Err(Forbidden::NotAllowed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn isolated() -> DestinationPolicy {
        DestinationPolicy {
            server_ips: vec![ip("100.64.0.1"), ip("fd64::1")],
            client_prefixes: vec![IpPrefix::new(ip("100.64.0.0"), 10), IpPrefix::new(ip("fd64::"), 64)],
            exit: false,
            allowed: Vec::new(),
            client_to_client: false,
        }
    }

    #[test]
    fn without_exit_only_the_servers_virtual_ips_are_reachable() {
        let p = isolated();
        assert_eq!(p.check(ip("100.64.0.1"), || false), Ok(()));
        assert_eq!(p.check(ip("fd64::1"), || false), Ok(()));
        assert_eq!(p.check(ip("198.18.1.1"), || false), Err(Forbidden::NotAllowed));
        assert_eq!(p.check(ip("198.18.9.2"), || false), Err(Forbidden::NotAllowed));
        assert_eq!(p.check(ip("127.0.0.1"), || false), Err(Forbidden::Loopback));
        assert_eq!(p.check(ip("::1"), || false), Err(Forbidden::Loopback));
        assert_eq!(p.check(ip("0.0.0.0"), || false), Err(Forbidden::Loopback));
        assert_eq!(p.check(ip("100.64.0.3"), || false), Err(Forbidden::OtherClient));
        assert_eq!(p.check(ip("fd64::3"), || false), Err(Forbidden::OtherClient));
        // A session's address outside client_prefixes is still a client.
        assert_eq!(p.check(ip("10.1.1.1"), || true), Err(Forbidden::OtherClient));
    }

    #[test]
    fn allowed_destinations_open_prefixes_but_not_other_clients() {
        let mut p = isolated();
        p.allowed = vec![IpPrefix::new(ip("198.18.9.0"), 24), IpPrefix::new(ip("100.64.0.0"), 10)];
        assert_eq!(p.check(ip("198.18.9.2"), || false), Ok(()));
        assert_eq!(p.check(ip("198.18.9.255"), || false), Ok(()));
        assert_eq!(p.check(ip("198.18.10.1"), || false), Err(Forbidden::NotAllowed));
        assert_eq!(p.check(ip("100.64.0.3"), || false), Err(Forbidden::OtherClient), "client_to_client decides");
        p.client_to_client = true;
        assert_eq!(p.check(ip("100.64.0.3"), || false), Ok(()));
    }

    #[test]
    fn exit_mode_reaches_everything_but_other_clients_and_loopback() {
        let mut p = isolated();
        p.exit = true;
        assert_eq!(p.check(ip("198.18.1.1"), || false), Ok(()));
        assert_eq!(p.check(ip("2001:db8::1"), || false), Ok(()));
        assert_eq!(p.check(ip("100.64.0.3"), || false), Err(Forbidden::OtherClient));
        assert_eq!(p.check(ip("127.0.0.1"), || false), Err(Forbidden::Loopback));
        assert_eq!(DestinationPolicy::allow_all().check(ip("100.64.0.3"), || true), Ok(()));
    }

    #[test]
    fn prefixes_match_their_family_and_length() {
        let p = IpPrefix::new(ip("0.0.0.0"), 0);
        assert!(p.contains(ip("1.2.3.4")));
        assert!(!p.contains(ip("::1")));
        let p = IpPrefix::new(ip("198.18.9.0"), 24);
        assert!(p.contains(ip("198.18.9.7")) && !p.contains(ip("198.18.8.7")));
        let p = IpPrefix::new(ip("10.0.0.1"), 32);
        assert!(p.contains(ip("10.0.0.1")) && !p.contains(ip("10.0.0.2")));
    }
}
