//! Plain descriptions of the objects this crate installs.

use std::fmt;
use std::net::IpAddr;

/// A route: traffic to `dst/prefix_len` leaves through link `oif`, to
/// `gateway` when there is one (a device route otherwise).
///
/// Routes into roamtun's own point-to-point TUN have no gateway; the
/// per-uplink tables copy an uplink's default gateway.
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
    /// Next hop (`RTA_GATEWAY`), same family as `dst` and reachable on
    /// `oif`; `None` for a device route.
    pub gateway: Option<IpAddr>,
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

/// A rule for every source of one family, in the shape a full tunnel needs (as wg-quick installs
/// it): `[not fwmark MARK] [to DST/LEN] lookup TABLE [suppress_prefixlength N] priority P`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableRule {
    /// The family the rule applies to (a rule exists per family).
    pub v6: bool,
    /// Only packets to this prefix (`to`); `None`: every destination.
    pub to: Option<(IpAddr, u8)>,
    /// Only packets that do *not* carry exactly this mark (`not fwmark MARK`).
    pub unless_mark: Option<u32>,
    /// Ignore what `table` answers with a route of this prefix length or shorter
    /// (`suppress_prefixlength`): 0 skips only default routes.
    pub suppress_prefix_len: Option<u8>,
    pub table: u32,
    pub priority: u32,
}

/// An `unreachable` route: the kernel answers a packet to `dst/prefix_len` with "network is
/// unreachable" at once (a local app's `connect` fails) instead of sending it anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnreachableRoute {
    pub dst: IpAddr,
    pub prefix_len: u8,
    pub table: u32,
}

impl fmt::Display for Route {
    /// Formats like `ip route`: `198.18.0.0/24 dev index 3 table 100 src 198.18.0.1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.dst, self.prefix_len)?;
        if let Some(gateway) = self.gateway {
            write!(f, " via {gateway}")?;
        }
        write!(f, " dev index {}", self.oif)?;
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

impl fmt::Display for TableRule {
    /// Formats like `ip rule`: `ipv6 not fwmark 0x5254 lookup 52100 priority 5203`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.v6 { "ipv6" } else { "ipv4" })?;
        if let Some(mark) = self.unless_mark {
            write!(f, " not fwmark {mark:#x}")?;
        }
        if let Some((dst, len)) = self.to {
            write!(f, " to {dst}/{len}")?;
        }
        write!(f, " lookup {}", self.table)?;
        if let Some(len) = self.suppress_prefix_len {
            write!(f, " suppress_prefixlength {len}")?;
        }
        write!(f, " priority {}", self.priority)
    }
}

impl fmt::Display for UnreachableRoute {
    /// Formats like `ip route`: `unreachable ::/0 table 52100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unreachable {}/{} table {}", self.dst, self.prefix_len, self.table)
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
            gateway: None,
        };
        assert_eq!(route.to_string(), "198.18.0.0/24 dev index 3 table 100 src 198.18.0.1");
        let plain = Route { table: None, src: None, ..route.clone() };
        assert_eq!(plain.to_string(), "198.18.0.0/24 dev index 3");
        let via = Route { gateway: Some(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 254))), ..plain };
        assert_eq!(via.to_string(), "198.18.0.0/24 via 198.18.0.254 dev index 3");
    }

    #[test]
    fn rule_display() {
        let rule =
            Rule { from: IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), from_prefix_len: 10, table: 100, priority: 1000 };
        assert_eq!(rule.to_string(), "from 100.64.0.0/10 lookup 100 priority 1000");
        let tunnel = TableRule {
            v6: true,
            to: None,
            unless_mark: Some(0x5254),
            suppress_prefix_len: None,
            table: 52100,
            priority: 5203,
        };
        assert_eq!(tunnel.to_string(), "ipv6 not fwmark 0x5254 lookup 52100 priority 5203");
        let main = TableRule { v6: false, unless_mark: None, suppress_prefix_len: Some(0), table: 254, ..tunnel };
        assert_eq!(main.to_string(), "ipv4 lookup 254 suppress_prefixlength 0 priority 5203");
    }
}
