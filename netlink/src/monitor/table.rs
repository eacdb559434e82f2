//! The sans-IO model: [`UplinkTable`] applies rtnetlink messages one at a time and says whether
//! its snapshot, one [`Uplink`] per link, changed.

use std::collections::BTreeMap;
use std::net::IpAddr;

use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload};
use rtnetlink::packet_route::address::AddressMessage;
use rtnetlink::packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;

use super::parse::{
    address_key, is_bindable, is_plain_link, link_name, main_default_routes, replaces_a_default_route, DefaultRoute,
    Family,
};
#[cfg(doc)]
use super::watch_uplinks;

/// One network interface as the uplink choice sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub index: u32,
    pub name: String,
    /// Administratively up (`IFF_UP`).
    pub admin_up: bool,
    /// Carrier (`IFF_LOWER_UP`): false for an unplugged cable, or a veth
    /// whose peer is down.
    pub lower_up: bool,
    /// Global-scope IPv4 and IPv6 addresses that can be bound now, sorted
    /// and without duplicates. Link-local, host-scope, tentative (DAD still
    /// running) and DAD-failed addresses are left out: a relay socket cannot
    /// use them to reach the server.
    pub addresses: Vec<IpAddr>,
    /// The same addresses with their prefix lengths (the networks this
    /// link is directly on), sorted; an address configured with two
    /// prefixes is here twice.
    pub prefixes: Vec<(IpAddr, u8)>,
    /// Gateways of the main table's default routes (`0.0.0.0/0`, `::/0`)
    /// that leave through this link, sorted and without duplicates. An IPv6
    /// gateway is usually link-local (a router's `fe80::…`), which only
    /// means something together with this link.
    pub gateways: Vec<IpAddr>,
    /// A default route of the main table leaves through this link, with or
    /// without a gateway: a device route (`default dev wwan0`) counts.
    pub has_default_route: bool,
    /// A main-table IPv4 default route without a gateway leaves through
    /// this link (`default dev wwan0`, typical of point-to-point links).
    pub device_default_v4: bool,
    /// The same for IPv6.
    pub device_default_v6: bool,
    /// How often, since the monitor started, the kernel deleted this link's
    /// IPv4 routes in every table without a notification (the link was taken
    /// down, or lost its last IPv4 address). Whoever installs routes through
    /// the link (per-uplink tables) must install them again when this grows:
    /// a down-and-up within one burst leaves no other trace in the snapshot.
    pub route_flushes: u64,
}

impl Uplink {
    /// Up, with carrier and at least one address to send from.
    ///
    /// A default route is deliberately not required: a host route to the
    /// server, or a policy rule into another table, may be all this link
    /// needs, and neither is modelled here. A dial that fails with "network
    /// unreachable" can wait for the next snapshot instead, which comes when
    /// a default route appears ([`has_default_route`](Self::has_default_route)).
    pub fn usable(&self) -> bool {
        self.admin_up && self.lower_up && !self.addresses.is_empty()
    }
}

/// The kernel's links, their addresses and the main table's default routes,
/// rebuilt from rtnetlink messages.
///
/// Addresses and routes are keyed by interface index, so a renamed link
/// keeps them, and one heard of before its link is kept until the link shows
/// up.
#[derive(Debug, Clone, Default)]
pub struct UplinkTable {
    links: BTreeMap<u32, LinkState>,
    /// Every address by (address, prefix length), with whether a relay
    /// socket can bind it: the same address may be configured twice with
    /// different prefixes, and deleting one must not hide the other.
    /// Unbindable ones are kept because whether a link has any IPv4 address
    /// left decides whether the kernel flushed its IPv4 routes.
    addresses: BTreeMap<u32, BTreeMap<(IpAddr, u8), bool>>,
    /// Default routes of the main table by output interface, with their
    /// preferred source address (`RTA_PREFSRC`); never an empty map.
    routes: BTreeMap<u32, BTreeMap<DefaultRoute, Option<IpAddr>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkState {
    name: String,
    admin_up: bool,
    lower_up: bool,
    route_flushes: u64,
}

/// What one netlink event did to an [`UplinkTable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// The snapshot is what it was (the kernel repeats itself often).
    Unchanged,
    /// The snapshot changed.
    Changed,
    /// The event could not be applied as a patch: rebuild the table from a
    /// dump. The text says why, for logs.
    NeedsDump(&'static str),
}

impl UplinkTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one `RTM_NEWLINK`/`RTM_DELLINK`/`RTM_NEWADDR`/`RTM_DELADDR`/
    /// `RTM_NEWROUTE`/`RTM_DELROUTE` (other messages are ignored) and returns
    /// whether the [`snapshot`](Self::snapshot) changed; the kernel repeats
    /// unchanged state often, and that is not a change.
    ///
    /// Routes other than a default route (`/0`, unicast) of the main table
    /// are ignored. An `RTM_NEWROUTE` that replaced another route
    /// (`NLM_F_REPLACE`, a flag of the netlink header, not of this message)
    /// is applied as a plain add, so the replaced route lingers: re-derive
    /// the table from a dump then, as [`watch_uplinks`] does.
    pub fn apply(&mut self, message: &RouteNetlinkMessage) -> bool {
        match message {
            RouteNetlinkMessage::NewLink(link) => self.update(&[link.header.index], |table| table.new_link(link)),
            RouteNetlinkMessage::DelLink(link) => self.update(&[link.header.index], |table| table.del_link(link)),
            RouteNetlinkMessage::NewAddress(address) => {
                self.update(&[address.header.index], |table| table.new_address(address))
            }
            RouteNetlinkMessage::DelAddress(address) => {
                let mut affected = vec![address.header.index];
                // Routes that prefer this address as source may go with it.
                if let Some((addr, _)) = address_key(address) {
                    affected.extend(self.route_oifs(|_, _, prefsrc| prefsrc == Some(addr)));
                }
                self.update(&affected, |table| table.del_address(address))
            }
            RouteNetlinkMessage::NewRoute(route) => {
                let hops = main_default_routes(route);
                let affected: Vec<u32> = hops.iter().map(|hop| hop.oif).collect();
                self.update(&affected, |table| {
                    for hop in hops {
                        table.routes.entry(hop.oif).or_default().insert(hop.route, hop.prefsrc);
                    }
                })
            }
            RouteNetlinkMessage::DelRoute(route) => {
                let hops = main_default_routes(route);
                let affected: Vec<u32> = hops.iter().map(|hop| hop.oif).collect();
                self.update(&affected, |table| {
                    for hop in hops {
                        table.forget_routes(|oif, stored, _| oif == hop.oif && *stored == hop.route);
                    }
                })
            }
            _ => false,
        }
    }

    /// Applies one netlink event as the kernel delivered it, header and
    /// all: the header says whether a route was replaced in place, and an
    /// overrun means events were lost. Both leave the table unreliable in a
    /// way no later event fixes, so they ask for a fresh dump
    /// ([`EventOutcome::NeedsDump`]) instead of being applied.
    pub fn apply_event(&mut self, event: &NetlinkMessage<RouteNetlinkMessage>) -> EventOutcome {
        match &event.payload {
            NetlinkPayload::InnerMessage(inner) if replaces_a_default_route(event.header.flags, inner) => {
                EventOutcome::NeedsDump("replaced default route")
            }
            NetlinkPayload::InnerMessage(inner) if self.apply(inner) => EventOutcome::Changed,
            // ENOBUFS: the kernel dropped events.
            NetlinkPayload::Overrun(_) => EventOutcome::NeedsDump("overflow"),
            _ => EventOutcome::Unchanged,
        }
    }

    /// Every known link by name.
    pub fn snapshot(&self) -> BTreeMap<String, Uplink> {
        self.links.keys().filter_map(|&index| self.uplink(index)).map(|uplink| (uplink.name.clone(), uplink)).collect()
    }

    /// Runs `change`, which may only touch links `affected`, and says
    /// whether any of them now looks different.
    fn update(&mut self, affected: &[u32], change: impl FnOnce(&mut Self)) -> bool {
        let before: Vec<Option<Uplink>> = affected.iter().map(|&index| self.uplink(index)).collect();
        change(self);
        affected.iter().map(|&index| self.uplink(index)).ne(before)
    }

    fn uplink(&self, index: u32) -> Option<Uplink> {
        let link = self.links.get(&index)?;
        let prefixes: Vec<(IpAddr, u8)> = self
            .addresses
            .get(&index)
            .into_iter()
            .flatten()
            .filter(|(_, &bindable)| bindable)
            .map(|(&key, _)| key)
            .collect();
        let mut addresses: Vec<IpAddr> = prefixes.iter().map(|&(addr, _)| addr).collect();
        // Sorted by address first, so equal addresses are adjacent.
        addresses.dedup();
        let routes = self.routes.get(&index);
        let mut gateways: Vec<IpAddr> = routes.into_iter().flatten().filter_map(|(route, _)| route.gateway).collect();
        gateways.sort_unstable();
        gateways.dedup();
        let device_default =
            |family| routes.into_iter().flatten().any(|(route, _)| route.family == family && route.gateway.is_none());
        Some(Uplink {
            index,
            name: link.name.clone(),
            admin_up: link.admin_up,
            lower_up: link.lower_up,
            addresses,
            prefixes,
            gateways,
            // Empty maps are removed, so any entry is a route.
            has_default_route: routes.is_some(),
            device_default_v4: device_default(Family::V4),
            device_default_v6: device_default(Family::V6),
            route_flushes: link.route_flushes,
        })
    }

    fn new_link(&mut self, link: &LinkMessage) {
        if !is_plain_link(link) {
            return;
        }
        let index = link.header.index;
        // The kernel always names the link; keep the old name rather than
        // invent one if it ever does not.
        let Some(name) = link_name(link).or_else(|| self.links.get(&index).map(|l| l.name.clone())) else {
            return;
        };
        let flags = link.header.flags;
        let admin_up = flags.contains(LinkFlags::Up);
        let route_flushes =
            self.links.get(&index).map_or(0, |old| old.route_flushes + u64::from(old.admin_up && !admin_up));
        let lower_up = flags.contains(LinkFlags::LowerUp);
        self.links.insert(index, LinkState { name, admin_up, lower_up, route_flushes });
        if !admin_up {
            // Taking a link down deletes every route through it; the kernel
            // announces that for IPv6 routes but not for IPv4 ones. (Losing
            // carrier only marks them "linkdown".)
            self.forget_routes(|oif, _, _| oif == index);
        }
    }

    fn del_link(&mut self, link: &LinkMessage) {
        if !is_plain_link(link) {
            return;
        }
        let index = link.header.index;
        self.links.remove(&index);
        self.addresses.remove(&index);
        self.routes.remove(&index);
    }

    fn new_address(&mut self, address: &AddressMessage) {
        let Some(key) = address_key(address) else { return };
        // A known address can become unusable (e.g. DAD failed).
        let bindable = is_bindable(address, key.0);
        self.addresses.entry(address.header.index).or_default().insert(key, bindable);
    }

    fn del_address(&mut self, address: &AddressMessage) {
        let Some(key @ (addr, _)) = address_key(address) else { return };
        let index = address.header.index;
        let Some(addresses) = self.addresses.get_mut(&index) else { return };
        if addresses.remove(&key).is_none() {
            return;
        }
        let ipv4_left = addresses.keys().any(|(other, _)| other.is_ipv4());
        if addresses.is_empty() {
            self.addresses.remove(&index);
        }
        if addr.is_ipv4() {
            // The kernel flushes these IPv4 routes silently (see the module
            // documentation).
            if !ipv4_left {
                if let Some(link) = self.links.get_mut(&index) {
                    link.route_flushes += 1;
                }
                self.forget_routes(|oif, route, _| oif == index && route.family == Family::V4);
            }
            let still_local = self.addresses.values().flat_map(BTreeMap::keys).any(|&(other, _)| other == addr);
            if !still_local {
                self.forget_routes(|_, route, prefsrc| route.family == Family::V4 && prefsrc == Some(addr));
            }
        }
    }

    /// Output interfaces of the routes `selected` picks, given (output
    /// interface, route, preferred source).
    fn route_oifs(&self, selected: impl Fn(u32, &DefaultRoute, Option<IpAddr>) -> bool) -> Vec<u32> {
        self.routes
            .iter()
            .filter(|&(&oif, routes)| routes.iter().any(|(route, &prefsrc)| selected(oif, route, prefsrc)))
            .map(|(&oif, _)| oif)
            .collect()
    }

    /// Drops the routes `forgotten` picks, given (output interface, route,
    /// preferred source).
    fn forget_routes(&mut self, forgotten: impl Fn(u32, &DefaultRoute, Option<IpAddr>) -> bool) {
        self.routes.retain(|&oif, routes| {
            routes.retain(|route, &mut prefsrc| !forgotten(oif, route, prefsrc));
            !routes.is_empty()
        });
    }
}
