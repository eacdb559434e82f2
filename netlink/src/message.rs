//! Builds the rtnetlink messages for our objects.
//!
//! Add and delete use the very same message so that a delete matches exactly
//! what we added (the kernel compares e.g. route scope, protocol and
//! preferred source when deleting) and nothing an administrator added by
//! hand with other attributes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, RouteMessageBuilder};

use crate::error::NetlinkError;
use crate::types::{Route, Rule};

/// Rejects prefix lengths longer than the address; the kernel would say
/// only "Invalid argument", which does not tell which object was wrong.
pub(crate) fn check_prefix_len(addr: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    if prefix_len > max {
        return Err(NetlinkError::InvalidPrefixLen { addr, prefix_len, max });
    }
    Ok(())
}

/// The `RTM_DELADDR` message for `addr/prefix_len` on link `index`.
pub(crate) fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    match addr {
        IpAddr::V4(v4) => AddressMessageBuilder::<Ipv4Addr>::new().index(index).address(v4, prefix_len).build(),
        IpAddr::V6(v6) => AddressMessageBuilder::<Ipv6Addr>::new().index(index).address(v6, prefix_len).build(),
    }
}

/// Marks an IPv6 address "no duplicate address detection".
///
/// DAD is meaningless on a point-to-point tunnel (there is no neighbour to
/// collide with) and, while it runs, the address is "tentative" and the
/// kernel refuses it as a route's preferred source. IPv4 has no DAD.
pub(crate) fn skip_dad(message: &mut AddressMessage) {
    if message.header.family == AddressFamily::Inet6 {
        message.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
}

/// The `RTM_NEWROUTE`/`RTM_DELROUTE` message for `route`.
pub(crate) fn route_message(route: &Route) -> Result<RouteMessage, NetlinkError> {
    check_prefix_len(route.dst, route.prefix_len)?;
    let mixed = || NetlinkError::MixedFamilies { route: Box::new(route.clone()) };
    let message = match route.dst {
        IpAddr::V4(dst) => {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, route.prefix_len);
            match route.src {
                Some(IpAddr::V4(src)) => builder = builder.pref_source(src),
                Some(IpAddr::V6(_)) => return Err(mixed()),
                None => {}
            }
            match route.gateway {
                // Scope universe, the builder's default: the kernel checks
                // that the gateway itself is on-link.
                Some(IpAddr::V4(gateway)) => builder = builder.gateway(gateway),
                Some(IpAddr::V6(_)) => return Err(mixed()),
                // A gatewayless IPv4 route is on-link; `ip route add ... dev
                // X` gives it scope link too, so it looks the same in `ip
                // route`.
                None => builder = builder.scope(RouteScope::Link),
            }
            with_common(builder, route).build()
        }
        IpAddr::V6(dst) => {
            let mut builder = RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(dst, route.prefix_len);
            match route.src {
                Some(IpAddr::V6(src)) => builder = builder.pref_source(src),
                Some(IpAddr::V4(_)) => return Err(mixed()),
                None => {}
            }
            match route.gateway {
                Some(IpAddr::V6(gateway)) => builder = builder.gateway(gateway),
                Some(IpAddr::V4(_)) => return Err(mixed()),
                None => {}
            }
            with_common(builder, route).build()
        }
    };
    Ok(message)
}

/// A kernel route message as a [`Route`] (table always `Some`), when it is
/// a plain unicast route with one output interface.
pub(crate) fn parse_route(message: &RouteMessage) -> Option<Route> {
    if message.header.kind != RouteType::Unicast {
        return None;
    }
    // The kernel leaves RTA_DST out of default (/0) routes.
    let mut dst = match message.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut oif = None;
    let mut table = u32::from(message.header.table);
    let mut src = None;
    let mut gateway = None;
    let ip = |address: &RouteAddress| match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst = ip(a)?,
            RouteAttribute::Oif(index) => oif = Some(*index),
            // The 32-bit RTA_TABLE supersedes the 8-bit header field.
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::PrefSource(a) => src = ip(a),
            RouteAttribute::Gateway(a) => gateway = ip(a),
            _ => {}
        }
    }
    Some(Route {
        dst,
        prefix_len: message.header.destination_prefix_length,
        oif: oif?,
        table: Some(table),
        src,
        gateway,
    })
}

/// A `from PREFIX lookup TABLE priority N` rule as [`Rule`]; other rules (no source, other actions)
/// are not ours and are left out.
pub(crate) fn parse_rule(message: &RuleMessage) -> Option<Rule> {
    if message.header.action != RuleAction::ToTable {
        return None;
    }
    let mut table = u32::from(message.header.table);
    let mut priority = 0;
    let mut from = None;
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Table(t) => table = *t,
            RuleAttribute::Priority(p) => priority = *p,
            RuleAttribute::Source(a) => from = Some(*a),
            _ => {}
        }
    }
    Some(Rule { from: from?, from_prefix_len: message.header.src_len, table, priority })
}

/// Output interface and table, which do not depend on the address family.
fn with_common<T>(builder: RouteMessageBuilder<T>, route: &Route) -> RouteMessageBuilder<T> {
    let builder = builder.output_interface(route.oif);
    match route.table {
        Some(table) => builder.table_id(table),
        // The builder already defaults to the main table.
        None => builder,
    }
}

/// The `RTM_NEWRULE`/`RTM_DELRULE` message for `rule`.
///
/// Built by hand rather than with `RuleAddRequest`'s builder because the
/// delete side has no builder, and the builder leaves the action at
/// `FR_ACT_UNSPEC`, which is not a "lookup table" rule.
pub(crate) fn rule_message(rule: &Rule) -> Result<RuleMessage, NetlinkError> {
    check_prefix_len(rule.from, rule.from_prefix_len)?;
    let mut message = RuleMessage::default();
    message.header.family = match rule.from {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.src_len = rule.from_prefix_len;
    message.header.action = RuleAction::ToTable;
    // Like iproute2: the 8-bit header field when the id fits, and always the
    // 32-bit FRA_TABLE attribute (which the kernel prefers when present).
    message.header.table = u8::try_from(rule.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.attributes = vec![
        RuleAttribute::Table(rule.table),
        RuleAttribute::Priority(rule.priority),
        RuleAttribute::Source(rule.from),
    ];
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn prefix_longer_than_address_is_rejected() {
        assert!(check_prefix_len(v4(198, 18, 0, 0), 32).is_ok());
        assert!(matches!(check_prefix_len(v4(198, 18, 0, 0), 33), Err(NetlinkError::InvalidPrefixLen { max: 32, .. })));
        assert!(check_prefix_len(IpAddr::V6(Ipv6Addr::LOCALHOST), 128).is_ok());
        assert!(check_prefix_len(IpAddr::V6(Ipv6Addr::LOCALHOST), 129).is_err());
    }

    #[test]
    fn route_with_mixed_families_is_rejected() {
        let route = Route {
            dst: v4(198, 18, 0, 0),
            prefix_len: 24,
            oif: 1,
            table: None,
            src: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            gateway: None,
        };
        assert!(matches!(route_message(&route), Err(NetlinkError::MixedFamilies { .. })));
        let v6_gateway = Route { src: None, gateway: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)), ..route };
        assert!(matches!(route_message(&v6_gateway), Err(NetlinkError::MixedFamilies { .. })));
    }

    #[test]
    fn large_route_table_goes_in_attribute() {
        let route =
            Route { dst: v4(198, 18, 0, 0), prefix_len: 24, oif: 1, table: Some(1000), src: None, gateway: None };
        let message = route_message(&route).expect("valid route");
        assert!(message.attributes.contains(&RouteAttribute::Table(1000)));
    }

    #[test]
    fn parsed_route_is_what_was_built() {
        let via = Route {
            dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            prefix_len: 0,
            oif: 7,
            table: Some(52000),
            src: None,
            gateway: Some(IpAddr::V6("fd00:1::1".parse().expect("literal"))),
        };
        assert_eq!(parse_route(&route_message(&via).expect("valid")), Some(via.clone()));
        let device =
            Route { dst: v4(198, 18, 1, 0), prefix_len: 24, gateway: None, src: Some(v4(198, 18, 1, 2)), ..via };
        assert_eq!(parse_route(&route_message(&device).expect("valid")), Some(device));
    }

    #[test]
    fn rule_is_a_lookup_rule() {
        let rule = Rule { from: v4(100, 64, 0, 0), from_prefix_len: 10, table: 1000, priority: 100 };
        let message = rule_message(&rule).expect("valid rule");
        assert_eq!(message.header.action, RuleAction::ToTable);
        assert_eq!(message.header.table, RouteHeader::RT_TABLE_UNSPEC);
        assert!(message.attributes.contains(&RuleAttribute::Table(1000)));
    }
}
