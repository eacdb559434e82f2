//! Builds the rtnetlink messages for our objects.
//!
//! Add and delete use the very same message so that a delete matches exactly
//! what we added (the kernel compares e.g. route scope, protocol and
//! preferred source when deleting) and nothing an administrator added by
//! hand with other attributes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{AddressMessageBuilder, RouteMessageBuilder};

use crate::error::NetlinkError;
use crate::types::{Route, Rule, TableRule, UnreachableRoute};

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

/// The `RTM_NEWRULE`/`RTM_DELRULE` message for `rule` (built like [`rule_message`]).
pub(crate) fn table_rule_message(rule: &TableRule) -> Result<RuleMessage, NetlinkError> {
    let mut message = RuleMessage::default();
    message.header.family = if rule.v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    message.header.action = RuleAction::ToTable;
    message.header.table = u8::try_from(rule.table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    message.attributes = vec![RuleAttribute::Table(rule.table), RuleAttribute::Priority(rule.priority)];
    if let Some((dst, len)) = rule.to {
        check_prefix_len(dst, len)?;
        if dst.is_ipv6() != rule.v6 {
            return Err(NetlinkError::MixedRuleFamilies { rule: Box::new(rule.clone()) });
        }
        message.header.dst_len = len;
        message.attributes.push(RuleAttribute::Destination(dst));
    }
    if let Some(mark) = rule.unless_mark {
        message.header.flags = RuleFlags::Invert;
        // The whole mark must match: the kernel's default mask when none is given.
        message.attributes.push(RuleAttribute::FwMark(mark));
        message.attributes.push(RuleAttribute::FwMask(u32::MAX));
    }
    if let Some(len) = rule.suppress_prefix_len {
        message.attributes.push(RuleAttribute::SuppressPrefixLen(u32::from(len)));
    }
    Ok(message)
}

/// A kernel rule message as a [`TableRule`], when it has that shape: a lookup for every source,
/// with at most a destination, an inverted whole-mark match and a suppressed prefix length.
pub(crate) fn parse_table_rule(message: &RuleMessage) -> Option<TableRule> {
    if message.header.action != RuleAction::ToTable || message.header.src_len != 0 {
        return None;
    }
    let v6 = match message.header.family {
        AddressFamily::Inet => false,
        AddressFamily::Inet6 => true,
        _ => return None,
    };
    let mut rule = TableRule {
        v6,
        to: None,
        unless_mark: None,
        suppress_prefix_len: None,
        table: u32::from(message.header.table),
        priority: 0,
    };
    let mut mark = None;
    for attribute in &message.attributes {
        match attribute {
            RuleAttribute::Table(t) => rule.table = *t,
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Destination(a) => rule.to = Some((*a, message.header.dst_len)),
            RuleAttribute::FwMark(m) => mark = Some(*m),
            // Another mask is another rule than any we make.
            RuleAttribute::FwMask(m) if *m != u32::MAX => return None,
            RuleAttribute::SuppressPrefixLen(len) => rule.suppress_prefix_len = u8::try_from(*len).ok(),
            // Rules with more selectors than ours (interfaces, ports, uid ranges, a source) are not ours.
            RuleAttribute::Source(_)
            | RuleAttribute::Iifname(_)
            | RuleAttribute::Oifname(_)
            | RuleAttribute::UidRange(_)
            | RuleAttribute::IpProtocol(_)
            | RuleAttribute::SourcePortRange(_)
            | RuleAttribute::DestinationPortRange(_) => return None,
            _ => {}
        }
    }
    let inverted = message.header.flags.contains(RuleFlags::Invert);
    match (mark, inverted) {
        (Some(m), true) => rule.unless_mark = Some(m),
        (None, false) => {}
        // `fwmark X` without `not`, or `not` without a mark: not a shape we make.
        _ => return None,
    }
    Some(rule)
}

/// The `RTM_NEWROUTE`/`RTM_DELROUTE` message for an `unreachable` route.
pub(crate) fn unreachable_message(route: &UnreachableRoute) -> Result<RouteMessage, NetlinkError> {
    check_prefix_len(route.dst, route.prefix_len)?;
    let message = match route.dst {
        IpAddr::V4(dst) => RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst, route.prefix_len)
            .kind(RouteType::Unreachable)
            .table_id(route.table)
            .build(),
        IpAddr::V6(dst) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(dst, route.prefix_len)
            .kind(RouteType::Unreachable)
            .table_id(route.table)
            .build(),
    };
    Ok(message)
}

/// The table a dumped route is in (the 32-bit attribute supersedes the header's byte).
pub(crate) fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
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

    #[test]
    fn table_rules_round_trip_and_foreign_shapes_are_not_ours() {
        let unless = TableRule {
            v6: false,
            to: None,
            unless_mark: Some(0x5254),
            suppress_prefix_len: None,
            table: 52100,
            priority: 5203,
        };
        let message = table_rule_message(&unless).expect("valid rule");
        assert!(message.header.flags.contains(RuleFlags::Invert));
        assert_eq!(parse_table_rule(&message), Some(unless.clone()));
        let suppress = TableRule { unless_mark: None, suppress_prefix_len: Some(0), table: 254, ..unless.clone() };
        assert_eq!(parse_table_rule(&table_rule_message(&suppress).expect("valid")), Some(suppress));
        let to = TableRule {
            v6: true,
            to: Some((IpAddr::V6("2001:2::1".parse().expect("literal")), 128)),
            unless_mark: None,
            table: 254,
            ..unless.clone()
        };
        assert_eq!(parse_table_rule(&table_rule_message(&to).expect("valid")), Some(to.clone()));
        let mixed = TableRule { v6: false, ..to };
        assert!(matches!(table_rule_message(&mixed), Err(NetlinkError::MixedRuleFamilies { .. })));

        // A per-uplink `from` rule, or a mark match without `not`, is another kind of rule.
        let from = rule_message(&Rule { from: v4(198, 18, 1, 2), from_prefix_len: 32, table: 52000, priority: 5200 })
            .expect("valid");
        assert_eq!(parse_table_rule(&from), None);
        let mut marked = table_rule_message(&unless).expect("valid");
        marked.header.flags = RuleFlags::empty();
        assert_eq!(parse_table_rule(&marked), None);
    }

    #[test]
    fn unreachable_route_is_of_its_type_and_table() {
        let route = UnreachableRoute { dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED), prefix_len: 0, table: 52100 };
        let message = unreachable_message(&route).expect("valid");
        assert_eq!(message.header.kind, RouteType::Unreachable);
        assert_eq!(route_table(&message), 52100);
        assert_eq!(parse_route(&message), None, "not a unicast route");
    }
}
