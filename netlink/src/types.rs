//! Plain descriptions of the objects this crate installs.

use std::fmt;
use std::net::IpAddr;

/// A device route: traffic to `dst/prefix_len` leaves through link `oif`.
///
/// There is no gateway on purpose: roamtun only routes into its own
/// point-to-point TUN device.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Destination network address (IPv4 or IPv6).
    pub dst: IpAddr,
    /// Destination prefix length (0..=32 for IPv4, 0..=128 for IPv6).
    pub prefix_len: u8,
    /// Output interface index.
    pub oif: u32,
    /// Routing table; `None` is the main table.
    pub table: Option<u32>,
    /// Preferred source address (`RTA_PREFSRC`); must be the same family as
    /// `dst` and already configured on this host.
    pub src: Option<IpAddr>,
}

/// A policy rule: packets from `from/from_prefix_len` look up `table`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// Source network address (IPv4 or IPv6).
    pub from: IpAddr,
    /// Source prefix length.
    pub from_prefix_len: u8,
    /// Routing table to look up.
    pub table: u32,
    /// Rule priority (lower is evaluated first).
    pub priority: u32,
}

impl fmt::Display for Route {
    /// Formats like `ip route`: `198.18.0.0/24 dev index 3 table 100 src 198.18.0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} dev index {}", self.dst, self.prefix_len, self.oif)?;
        if let Some(table) = self.table {
            write!(f, " table {table}")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Rule {
    /// Formats like `ip rule`: `from 198.18.0.0/24 lookup 100 priority 1000`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "from {}/{} lookup {} priority {}", self.from, self.from_prefix_len, self.table, self.priority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn route_display_includes_optional_parts() {
        let route = Route {
            dst: IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)),
            prefix_len: 24,
            oif: 3,
            table: Some(100),
            src: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
        };
        assert_eq!(route.to_string(), "198.18.0.0/24 dev index 3 table 100 src 198.18.0.1");
        let plain = Route { table: None, src: None, ..route };
        assert_eq!(plain.to_string(), "198.18.0.0/24 dev index 3");
    }

    #[test]
    fn rule_display() {
        let rule =
            Rule { from: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), from_prefix_len: 10, table: 100, priority: 1000 };
        assert_eq!(rule.to_string(), "from 100.64.0.0/10 lookup 100 priority 1000");
    }
}
