//! Which links could carry the tunnel right now, kept current from netlink
//! notifications.
//!
//! [`UplinkTable`] is the sans-IO model: feed it every link, address and
//! route message and it says whether the table changed. [`watch_uplinks`] is
//! the tokio shell that feeds it from a dump and then from multicast events.
//! Events are only a trigger: after a lost event (socket overflow), and after
//! a default route was replaced in place (the event names the new route, not
//! the one it replaced), the whole table is dumped again rather than patched.
//!
//! Bursts are coalesced without a timer: one kernel operation (a link taken
//! down drops its IPv6 addresses and routes with it) queues all its
//! messages before it returns, so the monitor applies every message already
//! read before it publishes, and publishes only a snapshot that differs from
//! the last one. A link-down is thus one snapshot, out within a millisecond
//! of the event, not one per message.
//!
//! Of the routes, only the main table's default routes are modelled: through
//! which links, and via which gateways, a host without a more specific route
//! reaches anything. They usually come back a moment after a link's address
//! (DHCP, a script), so a dialer that failed in between is woken by the
//! snapshot in which the route appears. The kernel deletes some IPv4 routes
//! without any notification — every route through a link that is taken
//! down or loses its last IPv4 address, and every route whose preferred
//! source address is deleted — so the table forgets those itself; otherwise
//! the route added again afterwards would look like no change.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::channel::mpsc::TryRecvError;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REPLACE};
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteNextHop, RouteNextHopFlags, RouteType, RouteVia,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use crate::error::NetlinkError;

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

/// A main-table default route as seen from one of its output interfaces.
///
/// Together with that interface, this is what tells two default routes
/// apart: one link may have several (say one per family, or a fallback with
/// a higher metric), and deleting one must keep the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct DefaultRoute {
    family: Family,
    /// `RTA_PRIORITY`, the metric of `ip route`.
    metric: u32,
    /// `None` for a device route.
    gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

/// One output interface of a default route: a plain route has one, a
/// multipath route one per live nexthop.
#[derive(Debug, Clone, Copy)]
struct DefaultRouteHop {
    oif: u32,
    route: DefaultRoute,
    prefsrc: Option<IpAddr>,
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

/// Kernel's main routing table id.
const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

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

/// A link message about the device itself. A bridge also sends
/// `AF_BRIDGE` link messages about its ports, and `RTM_DELLINK` among them
/// only means "left the bridge", not "gone".
fn is_plain_link(link: &LinkMessage) -> bool {
    link.header.interface_family == AddressFamily::Unspec
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|attribute| match attribute {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

/// (our address, prefix length). `IFA_LOCAL` is our side; `IFA_ADDRESS` is
/// the peer on point-to-point IPv4 links, and the only one IPv6 sends.
fn address_key(address: &AddressMessage) -> Option<(IpAddr, u8)> {
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

fn is_bindable(address: &AddressMessage, addr: IpAddr) -> bool {
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
fn main_default_routes(route: &RouteMessage) -> Vec<DefaultRouteHop> {
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
fn replaces_a_default_route(netlink_flags: u16, message: &RouteNetlinkMessage) -> bool {
    let RouteNetlinkMessage::NewRoute(route) = message else { return false };
    netlink_flags & NLM_F_REPLACE != 0 && !main_default_routes(route).is_empty()
}

/// Legacy `RTMGRP_*` bitmask for `bind`: link changes, and addresses and
/// routes of both families.
const UPLINK_GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;

/// Starts watching the links, addresses and default routes of the calling
/// thread's network namespace.
///
/// Returns once the first full snapshot is in the receiver. The task
/// publishes a new snapshot on every real change; it ends when every
/// receiver is dropped or the netlink socket fails (logged), and aborting it
/// closes the socket.
pub async fn watch_uplinks() -> Result<(watch::Receiver<BTreeMap<String, Uplink>>, JoinHandle<()>), NetlinkError> {
    let (receiver, task, _) = watch_uplinks_counted().await?;
    Ok((receiver, task))
}

/// Counters of a running uplink monitor, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct MonitorStats {
    events: AtomicU64,
    published: AtomicU64,
}

impl MonitorStats {
    /// Netlink messages received since the first dump.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Snapshots published after the first one.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// [`watch_uplinks`], plus the monitor's counters.
pub async fn watch_uplinks_counted(
) -> Result<(watch::Receiver<BTreeMap<String, Uplink>>, JoinHandle<()>, Arc<MonitorStats>), NetlinkError> {
    // Checked first: creating the socket registers it with the tokio
    // reactor, which panics outside a runtime.
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
    let (mut connection, handle, events) =
        rtnetlink::new_connection().map_err(|source| NetlinkError::Connect { source })?;
    // Subscribe before dumping: an event racing the dump is then queued and
    // applied after it, never lost. Binding must also precede the first send,
    // which would auto-bind the socket without groups.
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, UPLINK_GROUPS))
        .map_err(|source| NetlinkError::Subscribe { source })?;
    let connection = AbortOnDrop(runtime.spawn(connection));

    let mut table = UplinkTable::new();
    dump(&handle, &mut table).await?;
    let (updates, receiver) = watch::channel(table.snapshot());
    debug!(uplinks = ?summary(&updates.borrow()), "uplink monitor started");
    let stats = Arc::new(MonitorStats::default());
    let task = runtime.spawn(run(table, handle, events, updates, connection, stats.clone()));
    Ok((receiver, task, stats))
}

type Events = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<RouteNetlinkMessage>,
    SocketAddr,
)>;

async fn run(
    mut table: UplinkTable,
    handle: Handle,
    mut events: Events,
    updates: watch::Sender<BTreeMap<String, Uplink>>,
    // Held so the connection stops with this task, however it ends.
    _connection: AbortOnDrop,
    stats: Arc<MonitorStats>,
) {
    loop {
        let first = tokio::select! {
            () = updates.closed() => {
                debug!("no uplink watchers left; monitor stops");
                return;
            }
            event = events.next() => event,
        };
        let Some(first) = first else {
            error!("netlink event socket failed; uplink monitor stops");
            return;
        };
        let batch = next_batch(first, &mut events, &mut table).await;
        stats.events.fetch_add(batch.events, Ordering::Relaxed);
        if let Some(reason) = batch.needs_dump {
            debug!(reason, "dumping links, addresses and routes again");
            if reason == "overflow" {
                warn!("netlink event socket overflowed; dumping links, addresses and routes again");
            }
            let mut fresh = UplinkTable::new();
            if let Err(e) = dump(&handle, &mut fresh).await {
                error!(error = %e, reason, "re-dump failed; uplink monitor stops");
                return;
            }
            table = fresh;
        }
        // Also after a change that a later message of the burst undid (an
        // address deleted and added again): equal snapshots are not news.
        if publish(&updates, table.snapshot()) {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        if batch.socket_closed {
            error!("netlink event socket failed; uplink monitor stops");
            return;
        }
    }
}

/// At most this many messages are coalesced into one snapshot, so that a
/// storm of events cannot delay the snapshot without bound.
const MAX_BATCH: u64 = 1024;

/// What a burst of events did to the table.
struct Batch {
    events: u64,
    needs_dump: Option<&'static str>,
    /// The event stream ended (after the messages of this batch).
    socket_closed: bool,
}

/// Applies `first` and every message already read from the socket, so that
/// one kernel operation (a link going down takes its IPv6 addresses and
/// routes with it, all queued before the operation returns) becomes one
/// snapshot.
///
/// There is no timer: waiting for more would delay a link-down, which must
/// be acted on within milliseconds. Instead, after the channel is empty, the
/// task yields once so the connection task can read whatever else the
/// socket already holds (it reads until the socket would block), and stops
/// at the first yield that brings nothing new.
async fn next_batch(
    first: (NetlinkMessage<RouteNetlinkMessage>, SocketAddr),
    events: &mut Events,
    table: &mut UplinkTable,
) -> Batch {
    let mut batch = Batch { events: 0, needs_dump: None, socket_closed: false };
    let mut apply = |batch: &mut Batch, (message, _): (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)| {
        batch.events += 1;
        // Once a dump is due, the dump will say everything; later messages
        // need not be applied.
        if batch.needs_dump.is_none() {
            if let EventOutcome::NeedsDump(reason) = table.apply_event(&message) {
                batch.needs_dump = Some(reason);
            }
        }
    };
    apply(&mut batch, first);
    let mut yielded = false;
    loop {
        let before = batch.events;
        while batch.events < MAX_BATCH {
            match events.try_recv() {
                Ok(event) => apply(&mut batch, event),
                Err(TryRecvError::Closed) => {
                    batch.socket_closed = true;
                    return batch;
                }
                // Nothing more read yet.
                Err(TryRecvError::Empty) => break,
            }
        }
        if batch.events >= MAX_BATCH || (yielded && batch.events == before) {
            return batch;
        }
        tokio::task::yield_now().await;
        yielded = true;
    }
}

/// Publishes `snapshot` unless it equals the current one; says whether it
/// did.
fn publish(updates: &watch::Sender<BTreeMap<String, Uplink>>, snapshot: BTreeMap<String, Uplink>) -> bool {
    updates.send_if_modified(|current| {
        if *current == snapshot {
            return false;
        }
        debug!(uplinks = ?summary(&snapshot), "uplinks changed");
        *current = snapshot;
        true
    })
}

/// Usable uplink names, for logs.
fn summary(snapshot: &BTreeMap<String, Uplink>) -> Vec<&str> {
    snapshot.values().filter(|uplink| uplink.usable()).map(|uplink| uplink.name.as_str()).collect()
}

/// Feeds every link, then every address, then every route (addresses and
/// routes of both families) into `table`.
async fn dump(handle: &Handle, table: &mut UplinkTable) -> Result<(), NetlinkError> {
    let mut links = pin!(handle.link().get().execute());
    while let Some(link) = links.try_next().await.map_err(|source| NetlinkError::DumpLinks { source })? {
        table.apply(&RouteNetlinkMessage::NewLink(link));
    }
    let mut addresses = pin!(handle.address().get().execute());
    while let Some(address) = addresses.try_next().await.map_err(|source| NetlinkError::DumpAddresses { source })? {
        table.apply(&RouteNetlinkMessage::NewAddress(address));
    }
    // One dump per family; each covers every table (the kernel ignores the
    // table in a dump request unless strict checking is on), and the table
    // keeps only the main one.
    let requests = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
    for request in requests {
        let mut routes = pin!(handle.route().get(request).execute());
        while let Some(route) = routes.try_next().await.map_err(|source| NetlinkError::DumpRoutes { source })? {
            table.apply(&RouteNetlinkMessage::NewRoute(route));
        }
    }
    Ok(())
}

/// netlink-proto's connection task can idle forever after its users are
/// gone (see `Netlink`'s `Drop`), so it is stopped explicitly.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::address_message;
    use rtnetlink::packet_route::address::AddressHeaderFlags;
    use rtnetlink::packet_route::route::RouteScope;
    use rtnetlink::{LinkUnspec, RouteNextHopBuilder};

    const ETH0: u32 = 2;
    const WLAN0: u32 = 3;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    /// Global IPv6 examples come from 2001:2::/48, the IPv6 benchmarking
    /// range, like IPv4 ones from 198.18.0.0/15.
    fn v6(text: &str) -> IpAddr {
        IpAddr::V6(text.parse::<Ipv6Addr>().expect("test IPv6 literal"))
    }

    fn link(index: u32, name: &str, flags: LinkFlags) -> LinkMessage {
        let mut message = LinkUnspec::new_with_index(index).name(name).build();
        message.header.flags = flags;
        message
    }

    fn new_link(index: u32, name: &str, flags: LinkFlags) -> RouteNetlinkMessage {
        RouteNetlinkMessage::NewLink(link(index, name, flags))
    }

    fn new_address(index: u32, addr: IpAddr, prefix_len: u8) -> RouteNetlinkMessage {
        RouteNetlinkMessage::NewAddress(address_message(index, addr, prefix_len))
    }

    fn del_address(index: u32, addr: IpAddr, prefix_len: u8) -> RouteNetlinkMessage {
        RouteNetlinkMessage::DelAddress(address_message(index, addr, prefix_len))
    }

    /// `default via GATEWAY dev OIF metric METRIC` in the main table.
    fn default_via(oif: u32, gateway: Ipv4Addr, metric: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().output_interface(oif).gateway(gateway).priority(metric).build()
    }

    /// `default dev OIF metric METRIC`: a device route, no gateway.
    fn default_dev(oif: u32, metric: u32) -> RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().output_interface(oif).scope(RouteScope::Link).priority(metric).build()
    }

    fn new_route(route: &RouteMessage) -> RouteNetlinkMessage {
        RouteNetlinkMessage::NewRoute(route.clone())
    }

    fn del_route(route: &RouteMessage) -> RouteNetlinkMessage {
        RouteNetlinkMessage::DelRoute(route.clone())
    }

    fn running() -> LinkFlags {
        LinkFlags::Up | LinkFlags::LowerUp
    }

    /// eth0 up with carrier and 198.18.0.2/24.
    fn table_with_eth0() -> UplinkTable {
        let mut table = UplinkTable::new();
        assert!(table.apply(&new_link(ETH0, "eth0", running())));
        assert!(table.apply(&new_address(ETH0, v4(198, 18, 0, 2), 24)));
        table
    }

    fn eth0(table: &UplinkTable) -> Uplink {
        table.snapshot().remove("eth0").expect("eth0 in snapshot")
    }

    #[test]
    fn link_flags_track_admin_state_and_carrier() {
        let mut table = table_with_eth0();
        let uplink = eth0(&table);
        assert_eq!(
            uplink,
            Uplink {
                index: ETH0,
                name: "eth0".into(),
                admin_up: true,
                lower_up: true,
                addresses: vec![v4(198, 18, 0, 2)],
                prefixes: vec![(v4(198, 18, 0, 2), 24)],
                gateways: vec![],
                has_default_route: false,
                device_default_v4: false,
                device_default_v6: false,
                route_flushes: 0,
            }
        );
        assert!(uplink.usable());

        // Cable pulled: still up, no carrier.
        assert!(table.apply(&new_link(ETH0, "eth0", LinkFlags::Up)));
        let uplink = eth0(&table);
        assert!(uplink.admin_up && !uplink.lower_up && !uplink.usable());

        assert!(table.apply(&new_link(ETH0, "eth0", LinkFlags::empty())));
        assert!(!eth0(&table).admin_up);
        assert_eq!(eth0(&table).route_flushes, 1, "taking it down flushed its IPv4 routes");
        assert!(!table.apply(&new_link(ETH0, "eth0", LinkFlags::empty())), "still down: no second flush");

        assert!(table.apply(&new_link(ETH0, "eth0", running())));
        assert!(eth0(&table).usable());
    }

    #[test]
    fn repeated_state_is_no_change() {
        let mut table = table_with_eth0();
        assert!(!table.apply(&new_link(ETH0, "eth0", running())));
        assert!(!table.apply(&new_address(ETH0, v4(198, 18, 0, 2), 24)));
        // Flags that are not part of the model change nothing either.
        assert!(!table.apply(&new_link(ETH0, "eth0", running() | LinkFlags::Promisc)));
        assert!(!table.apply(&del_address(ETH0, v4(198, 18, 0, 99), 24)));
    }

    #[test]
    fn addresses_come_and_go() {
        let mut table = table_with_eth0();
        assert!(table.apply(&new_address(ETH0, v6("2001:2::2"), 64)));
        assert_eq!(eth0(&table).addresses, vec![v4(198, 18, 0, 2), v6("2001:2::2")]);

        assert!(table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 24)));
        assert_eq!(eth0(&table).addresses, vec![v6("2001:2::2")]);

        assert!(table.apply(&del_address(ETH0, v6("2001:2::2"), 64)));
        let uplink = eth0(&table);
        assert!(uplink.addresses.is_empty() && !uplink.usable());
    }

    #[test]
    fn same_address_with_two_prefixes_stays_until_both_are_gone() {
        let mut table = table_with_eth0();
        // A second network is a change (routing cares), the address is still shown once.
        assert!(table.apply(&new_address(ETH0, v4(198, 18, 0, 2), 32)));
        assert_eq!(eth0(&table).addresses, vec![v4(198, 18, 0, 2)]);
        assert_eq!(eth0(&table).prefixes, vec![(v4(198, 18, 0, 2), 24), (v4(198, 18, 0, 2), 32)]);
        assert!(table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 24)));
        assert_eq!(eth0(&table).addresses, vec![v4(198, 18, 0, 2)]);
        assert!(table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 32)));
        assert!(eth0(&table).addresses.is_empty());
    }

    #[test]
    fn link_local_host_scope_and_tentative_addresses_are_ignored() {
        let mut table = UplinkTable::new();
        table.apply(&new_link(ETH0, "eth0", running()));

        assert!(!table.apply(&new_address(ETH0, v6("fe80::1"), 64)));

        let mut host = address_message(ETH0, v4(198, 18, 0, 3), 32);
        host.header.scope = AddressScope::Host;
        assert!(!table.apply(&RouteNetlinkMessage::NewAddress(host)));

        let mut link_scope = address_message(ETH0, v4(198, 18, 0, 9), 24);
        link_scope.header.scope = AddressScope::Link;
        assert!(!table.apply(&RouteNetlinkMessage::NewAddress(link_scope)));

        // DAD still running, then done (the kernel re-sends without the flag).
        let mut tentative = address_message(ETH0, v6("2001:2::2"), 64);
        tentative.header.flags = AddressHeaderFlags::Tentative;
        tentative.attributes.push(AddressAttribute::Flags(AddressFlags::Tentative));
        assert!(!table.apply(&RouteNetlinkMessage::NewAddress(tentative.clone())));
        assert!(table.apply(&new_address(ETH0, v6("2001:2::2"), 64)));

        // Duplicate detected later: the address is gone for our purposes.
        let mut failed = tentative;
        failed.attributes = address_message(ETH0, v6("2001:2::2"), 64).attributes;
        failed.attributes.push(AddressAttribute::Flags(AddressFlags::Dadfailed | AddressFlags::Tentative));
        assert!(table.apply(&RouteNetlinkMessage::NewAddress(failed)));
        assert!(eth0(&table).addresses.is_empty());
    }

    #[test]
    fn del_link_removes_the_link_and_its_addresses() {
        let mut table = table_with_eth0();
        assert!(table.apply(&RouteNetlinkMessage::DelLink(link(ETH0, "eth0", LinkFlags::empty()))));
        assert!(table.snapshot().is_empty());
        assert!(!table.apply(&RouteNetlinkMessage::DelLink(link(ETH0, "eth0", LinkFlags::empty()))));

        // A new link that reuses the index starts without the old addresses.
        assert!(table.apply(&new_link(ETH0, "eth1", running())));
        assert!(table.snapshot()["eth1"].addresses.is_empty());
    }

    #[test]
    fn bridge_port_messages_do_not_delete_the_link() {
        let mut table = table_with_eth0();
        let mut left_bridge = link(ETH0, "eth0", running());
        left_bridge.header.interface_family = AddressFamily::Bridge;
        assert!(!table.apply(&RouteNetlinkMessage::DelLink(left_bridge)));
        assert!(eth0(&table).usable());
    }

    #[test]
    fn renamed_link_keeps_its_addresses() {
        let mut table = table_with_eth0();
        assert!(table.apply(&new_link(ETH0, "wan0", running())));
        let snapshot = table.snapshot();
        assert!(!snapshot.contains_key("eth0"));
        assert_eq!(snapshot["wan0"].addresses, vec![v4(198, 18, 0, 2)]);
    }

    #[test]
    fn address_before_its_link_is_kept() {
        let mut table = UplinkTable::new();
        assert!(!table.apply(&new_address(ETH0, v4(198, 18, 0, 2), 24)), "no link to show it on yet");
        assert!(table.apply(&new_link(ETH0, "eth0", running())));
        assert!(eth0(&table).usable());
    }

    #[test]
    fn point_to_point_address_is_the_local_side() {
        let mut table = UplinkTable::new();
        table.apply(&new_link(ETH0, "ppp0", running()));
        let mut ptp = AddressMessage::default();
        ptp.header.family = AddressFamily::Inet;
        ptp.header.index = ETH0;
        ptp.header.prefix_len = 32;
        ptp.attributes = vec![AddressAttribute::Local(v4(198, 18, 0, 2)), AddressAttribute::Address(v4(198, 19, 0, 1))];
        assert!(table.apply(&RouteNetlinkMessage::NewAddress(ptp)));
        assert_eq!(table.snapshot()["ppp0"].addresses, vec![v4(198, 18, 0, 2)]);
    }

    #[test]
    fn other_messages_are_ignored() {
        let mut table = table_with_eth0();
        assert!(!table.apply(&RouteNetlinkMessage::GetLink(link(ETH0, "eth0", LinkFlags::empty()))));
        assert!(!table.apply(&RouteNetlinkMessage::GetRoute(default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0))));
        // A default route that names no output interface leaves through no
        // link we know of.
        assert!(!table.apply(&new_route(&RouteMessageBuilder::<Ipv4Addr>::new().build())));
        assert!(eth0(&table).usable());
    }

    #[test]
    fn default_route_via_a_gateway_is_published() {
        let mut table = table_with_eth0();
        let route = default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0);
        assert!(table.apply(&new_route(&route)));
        let uplink = eth0(&table);
        assert_eq!(uplink.gateways, vec![v4(198, 18, 0, 1)]);
        assert!(uplink.has_default_route && uplink.usable());
        assert!(!table.apply(&new_route(&route)), "the same route again is no change");

        // An IPv6 router is announced by its link-local address.
        let router = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
        let v6_route = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(ETH0).gateway(router).build();
        assert!(table.apply(&new_route(&v6_route)));
        assert_eq!(eth0(&table).gateways, vec![v4(198, 18, 0, 1), v6("fe80::1")]);

        assert!(table.apply(&del_route(&route)));
        assert!(table.apply(&del_route(&v6_route)));
        let uplink = eth0(&table);
        assert!(uplink.gateways.is_empty() && !uplink.has_default_route);
        assert!(uplink.usable(), "a link without a default route may still reach the server");
    }

    #[test]
    fn device_default_route_counts_without_a_gateway() {
        let mut table = table_with_eth0();
        assert!(table.apply(&new_route(&default_dev(ETH0, 0))));
        let uplink = eth0(&table);
        assert!(uplink.has_default_route && uplink.gateways.is_empty());
        assert!(uplink.device_default_v4 && !uplink.device_default_v6);
    }

    #[test]
    fn only_the_main_table_counts() {
        let mut table = table_with_eth0();
        let gateway = Ipv4Addr::new(198, 18, 0, 1);
        let custom = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(ETH0).gateway(gateway).table_id(100);
        assert!(!table.apply(&new_route(&custom.build())));
        // Above 255: in the RTA_TABLE attribute, which overrides the header.
        let large = RouteMessageBuilder::<Ipv4Addr>::new().output_interface(ETH0).gateway(gateway).table_id(51820);
        assert!(!table.apply(&new_route(&large.build())));
        assert!(!eth0(&table).has_default_route);

        // The main table given by attribute only, as the kernel may.
        let mut main = default_via(ETH0, gateway, 0);
        main.header.table = RouteHeader::RT_TABLE_UNSPEC;
        main.attributes.push(RouteAttribute::Table(MAIN_TABLE));
        assert!(table.apply(&new_route(&main)));
        assert_eq!(eth0(&table).gateways, vec![v4(198, 18, 0, 1)]);
    }

    #[test]
    fn only_unicast_default_routes_count() {
        let mut table = table_with_eth0();
        let gateway = Ipv4Addr::new(198, 18, 0, 1);
        let subnet = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(198, 19, 0, 0), 16)
            .output_interface(ETH0)
            .gateway(gateway);
        assert!(!table.apply(&new_route(&subnet.build())));
        let mut host = default_via(ETH0, gateway, 0);
        host.header.destination_prefix_length = 32;
        assert!(!table.apply(&new_route(&host)));
        let mut unreachable = default_dev(ETH0, 0);
        unreachable.header.kind = RouteType::Unreachable;
        assert!(!table.apply(&new_route(&unreachable)));
        assert!(!eth0(&table).has_default_route);
    }

    #[test]
    fn deleting_one_of_two_metrics_keeps_the_other() {
        let mut table = table_with_eth0();
        let gateway = Ipv4Addr::new(198, 18, 0, 1);
        assert!(table.apply(&new_route(&default_via(ETH0, gateway, 100))));
        assert!(!table.apply(&new_route(&default_via(ETH0, gateway, 200))), "same gateway, shown once");
        assert!(!table.apply(&del_route(&default_via(ETH0, gateway, 100))));
        assert_eq!(eth0(&table).gateways, vec![v4(198, 18, 0, 1)]);
        assert!(table.apply(&del_route(&default_via(ETH0, gateway, 200))));
        assert!(!eth0(&table).has_default_route);

        // Different gateways: each goes with its own route.
        assert!(table.apply(&new_route(&default_via(ETH0, gateway, 100))));
        assert!(table.apply(&new_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 254), 200))));
        assert_eq!(eth0(&table).gateways, vec![v4(198, 18, 0, 1), v4(198, 18, 0, 254)]);
        assert!(table.apply(&del_route(&default_via(ETH0, gateway, 100))));
        assert_eq!(eth0(&table).gateways, vec![v4(198, 18, 0, 254)]);

        // A device route stays when the gateway route beside it goes.
        assert!(table.apply(&new_route(&default_dev(ETH0, 300))), "a device default route is new");
        assert!(table.apply(&del_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 254), 200))));
        let uplink = eth0(&table);
        assert!(uplink.has_default_route && uplink.gateways.is_empty());
    }

    #[test]
    fn del_link_removes_its_routes() {
        let mut table = table_with_eth0();
        assert!(table.apply(&new_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0))));
        assert!(table.apply(&RouteNetlinkMessage::DelLink(link(ETH0, "eth0", LinkFlags::empty()))));
        assert!(table.apply(&new_link(ETH0, "eth1", running())));
        let uplink = &table.snapshot()["eth1"];
        assert!(!uplink.has_default_route && uplink.gateways.is_empty());
    }

    #[test]
    fn route_before_its_link_is_kept() {
        let mut table = UplinkTable::new();
        assert!(!table.apply(&new_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0))));
        assert!(table.apply(&new_link(ETH0, "eth0", running())));
        assert_eq!(eth0(&table).gateways, vec![v4(198, 18, 0, 1)]);
    }

    #[test]
    fn multipath_route_counts_for_each_live_nexthop() {
        let mut table = table_with_eth0();
        table.apply(&new_link(WLAN0, "wlan0", running()));
        let nexthop = |oif, gateway| RouteNextHopBuilder::new_ipv4().interface(oif).via(gateway).unwrap().build();
        let multipath = |hops| RouteMessageBuilder::<Ipv4Addr>::new().multipath(hops).build();
        let both = multipath(vec![nexthop(ETH0, v4(198, 18, 0, 1)), nexthop(WLAN0, v4(198, 18, 1, 1))]);
        assert!(table.apply(&new_route(&both)));
        let snapshot = table.snapshot();
        assert_eq!(snapshot["eth0"].gateways, vec![v4(198, 18, 0, 1)]);
        assert_eq!(snapshot["wlan0"].gateways, vec![v4(198, 18, 1, 1)]);
        assert!(table.apply(&del_route(&both)));
        assert!(table.snapshot().values().all(|uplink| !uplink.has_default_route));

        let mut dead = nexthop(WLAN0, v4(198, 18, 1, 1));
        dead.flags = RouteNextHopFlags::Dead | RouteNextHopFlags::Linkdown;
        assert!(table.apply(&new_route(&multipath(vec![nexthop(ETH0, v4(198, 18, 0, 1)), dead]))));
        let snapshot = table.snapshot();
        assert!(snapshot["eth0"].has_default_route && !snapshot["wlan0"].has_default_route);
    }

    /// The kernel flushes these IPv4 routes without an `RTM_DELROUTE`; the
    /// same route added again must then be a change, or a dialer waiting for
    /// it would never wake.
    #[test]
    fn routes_flushed_without_notice_are_forgotten() {
        let via_gateway = default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0);

        // Link taken down.
        let mut table = table_with_eth0();
        table.apply(&new_route(&via_gateway));
        assert!(table.apply(&new_link(ETH0, "eth0", LinkFlags::empty())));
        assert!(!eth0(&table).has_default_route);
        assert!(table.apply(&new_link(ETH0, "eth0", running())));
        assert!(table.apply(&new_route(&via_gateway)), "the route coming back is a change");

        // Carrier lost: the kernel keeps the routes ("linkdown").
        assert!(table.apply(&new_link(ETH0, "eth0", LinkFlags::Up)));
        assert!(eth0(&table).has_default_route);

        // Last IPv4 address deleted: IPv4 routes go, IPv6 ones stay.
        let mut table = table_with_eth0();
        table.apply(&new_route(&via_gateway));
        let v6_device = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(ETH0).build();
        table.apply(&new_route(&v6_device));
        assert!(table.apply(&new_address(ETH0, v6("2001:2::2"), 64)));
        assert!(table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 24)));
        let uplink = eth0(&table);
        assert!(uplink.has_default_route && uplink.gateways.is_empty(), "{uplink:?}");
        assert!(table.apply(&new_route(&via_gateway)));

        // An IPv4 address that cannot be bound still keeps the kernel's
        // routes, and deleting an address that was never there flushes
        // nothing.
        let mut table = table_with_eth0();
        table.apply(&new_route(&via_gateway));
        let mut link_scope = address_message(ETH0, v4(198, 18, 0, 9), 24);
        link_scope.header.scope = AddressScope::Link;
        table.apply(&RouteNetlinkMessage::NewAddress(link_scope));
        assert!(!table.apply(&del_address(ETH0, v4(198, 18, 0, 77), 24)));
        assert!(table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 24)));
        assert!(eth0(&table).has_default_route);
    }

    #[test]
    fn routes_go_with_their_preferred_source() {
        let mut table = table_with_eth0();
        table.apply(&new_link(WLAN0, "wlan0", running()));
        table.apply(&new_address(ETH0, v4(198, 18, 0, 3), 24));
        table.apply(&new_address(WLAN0, v4(198, 18, 1, 2), 24));
        let with_source = |oif, gateway, src| {
            RouteMessageBuilder::<Ipv4Addr>::new().output_interface(oif).gateway(gateway).pref_source(src).build()
        };
        table.apply(&new_route(&with_source(ETH0, Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2))));
        // Preferring another link's address is allowed.
        table.apply(&new_route(&with_source(WLAN0, Ipv4Addr::new(198, 18, 1, 1), Ipv4Addr::new(198, 18, 0, 2))));
        table.apply(&new_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 254), 100)));

        // Still configured with another prefix: no route goes.
        table.apply(&new_address(ETH0, v4(198, 18, 0, 2), 32));
        let gateways = eth0(&table).gateways;
        table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 32));
        assert_eq!(eth0(&table).gateways, gateways);

        assert!(table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 24)));
        let snapshot = table.snapshot();
        assert_eq!(snapshot["eth0"].gateways, vec![v4(198, 18, 0, 254)], "only routes preferring 198.18.0.2 go");
        assert!(!snapshot["wlan0"].has_default_route, "on every link");
    }

    #[test]
    fn only_a_replaced_default_route_needs_a_dump() {
        let default = new_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0));
        assert!(replaces_a_default_route(NLM_F_REPLACE, &default));
        assert!(!replaces_a_default_route(0, &default));
        let subnet = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::new(198, 19, 0, 0), 16)
            .output_interface(ETH0)
            .build();
        assert!(!replaces_a_default_route(NLM_F_REPLACE, &new_route(&subnet)));
        assert!(!replaces_a_default_route(
            NLM_F_REPLACE,
            &del_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0))
        ));
    }
}
