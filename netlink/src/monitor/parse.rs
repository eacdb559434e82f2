//! What the uplink table reads out of rtnetlink messages: which link a message is about, our side
//! of an address and whether a socket can bind it, and the main table's default routes.

use std::net::IpAddr;

use rtnetlink::packet_core::NLM_F_REPLACE;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteNextHopFlags, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};

/// A main-table default route as seen from one of its output interfaces.
///
/// Together with that interface, this is what tells two default routes
/// apart: one link may have several (say one per family, or a fallback with
/// a higher metric), and deleting one must keep the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct DefaultRoute {
    pub(super) family: Family,
    /// `RTA_PRIORITY`, the metric of `ip route`.
    pub(super) metric: u32,
    /// `None` for a device route.
    pub(super) gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Family {
    V4,
    V6,
}

/// One output interface of a default route: a plain route has one, a
/// multipath route one per live nexthop.
#[derive(Debug, Clone, Copy)]
pub(super) struct DefaultRouteHop {
    pub(super) oif: u32,
    pub(super) route: DefaultRoute,
    pub(super) prefsrc: Option<IpAddr>,
}

/// Kernel's main routing table id.
pub(super) const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

/// A link message about the device itself. A bridge also sends
/// `AF_BRIDGE` link messages about its ports, and `RTM_DELLINK` among them
/// only means "left the bridge", not "gone".
pub(super) fn is_plain_link(link: &LinkMessage) -> bool {
    link.header.interface_family == AddressFamily::Unspec
}

pub(super) fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// (our address, prefix length). `IFA_LOCAL` is our side; `IFA_ADDRESS` is
/// the peer on point-to-point IPv4 links, and the only one IPv6 sends.
pub(super) fn address_key(address: &AddressMessage) -> Option<(IpAddr, u8)> {
    let mut local = None;
    let mut other = None;
    for attribute in &address.attributes {
        match attribute {
            AddressAttribute::Local(addr) => local = Some(*addr),
            AddressAttribute::Address(addr) => other = Some(*addr),
            _ => {}
        }
    }
    Some((local.or(other)?, address.header.prefix_len))
}

pub(super) fn is_bindable(address: &AddressMessage, addr: IpAddr) -> bool {
    if address.header.scope != AddressScope::Universe {
        return false;
    }
    if let IpAddr::V6(v6) = addr {
        // Normally scope link already, but never a way out of the segment.
        if v6.is_unicast_link_local() {
            return false;
        }
    }
    // IFA_FLAGS (32 bits) supersedes the 8-bit header field when present.
    let flags = address
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            AddressAttribute::Flags(flags) => Some(*flags),
            _ => None,
        })
        .unwrap_or_else(|| AddressFlags::from_bits_retain(u32::from(address.header.flags.bits())));
    let tentative = flags.contains(AddressFlags::Tentative) && !flags.contains(AddressFlags::Optimistic);
    !tentative && !flags.contains(AddressFlags::Dadfailed)
}

/// The main-table default routes `route` is about, one per output
/// interface; none for any other route.
pub(super) fn main_default_routes(route: &RouteMessage) -> Vec<DefaultRouteHop> {
    let header = &route.header;
    let family = match header.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        _ => return Vec::new(),
    };
    // Blackhole, unreachable, prohibit… default routes lead nowhere.
    if header.destination_prefix_length != 0 || header.kind != RouteType::Unicast {
        return Vec::new();
    }
    let mut table = u32::from(header.table);
    let mut metric = 0;
    let mut oif = None;
    let mut prefsrc = None;
    let mut nexthops: &[RouteNextHop] = &[];
    for attribute in &route.attributes {
        match attribute {
            // The 32-bit RTA_TABLE supersedes the 8-bit header field.
            RouteAttribute::Table(id) => table = *id,
            RouteAttribute::Priority(priority) => metric = *priority,
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::PrefSource(addr) => prefsrc = route_ip(addr),
            RouteAttribute::MultiPath(hops) => nexthops = hops.as_slice(),
            _ => {}
        }
    }
    if table != MAIN_TABLE {
        return Vec::new();
    }
    let hop = |oif, attributes: &[RouteAttribute]| DefaultRouteHop {
        oif,
        route: DefaultRoute { family, metric, gateway: gateway(attributes) },
        prefsrc,
    };
    // The kernel describes a single nexthop with RTA_OIF and RTA_GATEWAY,
    // several with RTA_MULTIPATH. A dead nexthop (its link went down) is
    // not a way out.
    let single = oif.map(|oif| hop(oif, &route.attributes));
    let live = nexthops.iter().filter(|nexthop| !nexthop.flags.contains(RouteNextHopFlags::Dead));
    single.into_iter().chain(live.map(|nexthop| hop(nexthop.interface_index, &nexthop.attributes))).collect()
}

/// `RTA_GATEWAY`, or `RTA_VIA` (an IPv4 route via an IPv6 gateway).
fn gateway(attributes: &[RouteAttribute]) -> Option<IpAddr> {
    attributes.iter().find_map(|attribute| match attribute {
        RouteAttribute::Gateway(addr) => route_ip(addr),
        RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// An `RTM_NEWROUTE` event that replaced a main-table default route in
/// place: it names the new route only, and the one it replaced (same metric,
/// perhaps another link and gateway) is gone without an event of its own.
pub(super) fn replaces_a_default_route(netlink_flags: u16, message: &RouteNetlinkMessage) -> bool {
    let RouteNetlinkMessage::NewRoute(route) = message else { return false };
    netlink_flags & NLM_F_REPLACE != 0 && !main_default_routes(route).is_empty()
}
