//! Which links could carry the tunnel right now, kept current from netlink
//! notifications.
//!
//! [`UplinkTable`] is the sans-IO model: feed it every link and address
//! message and it says whether the table changed. [`watch_uplinks`] is the
//! tokio shell that feeds it from a dump and then from multicast events.
//! Events are only a trigger: after a lost event (socket overflow) the whole
//! table is dumped again rather than patched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::pin::pin;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::Handle;
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
}

impl Uplink {
    /// Up, with carrier and at least one address to send from.
    pub fn usable(&self) -> bool {
        self.admin_up && self.lower_up && !self.addresses.is_empty()
    }
}

/// The kernel's links and their addresses, rebuilt from rtnetlink messages.
///
/// Addresses are keyed by interface index, so a renamed link keeps them, and
/// an address heard of before its link is kept until the link shows up.
#[derive(Debug, Clone, Default)]
pub struct UplinkTable {
    links: BTreeMap<u32, LinkState>,
    /// (address, prefix length): the same address may be configured twice
    /// with different prefixes, and deleting one must not hide the other.
    addresses: BTreeMap<u32, BTreeSet<(IpAddr, u8)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LinkState {
    name: String,
    admin_up: bool,
    lower_up: bool,
}

impl UplinkTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one `RTM_NEWLINK`/`RTM_DELLINK`/`RTM_NEWADDR`/`RTM_DELADDR`
    /// (other messages are ignored) and returns whether the
    /// [`snapshot`](Self::snapshot) changed; the kernel repeats unchanged
    /// state often, and that is not a change.
    pub fn apply(&mut self, message: &RouteNetlinkMessage) -> bool {
        let index = match message {
            RouteNetlinkMessage::NewLink(link) | RouteNetlinkMessage::DelLink(link) => link.header.index,
            RouteNetlinkMessage::NewAddress(address) | RouteNetlinkMessage::DelAddress(address) => address.header.index,
            _ => return false,
        };
        let before = self.uplink(index);
        match message {
            RouteNetlinkMessage::NewLink(link) => self.new_link(link),
            RouteNetlinkMessage::DelLink(link) => self.del_link(link),
            RouteNetlinkMessage::NewAddress(address) => self.new_address(address),
            RouteNetlinkMessage::DelAddress(address) => self.del_address(address),
            _ => {}
        }
        self.uplink(index) != before
    }

    /// Every known link by name.
    pub fn snapshot(&self) -> BTreeMap<String, Uplink> {
        self.links.keys().filter_map(|&index| self.uplink(index)).map(|uplink| (uplink.name.clone(), uplink)).collect()
    }

    fn uplink(&self, index: u32) -> Option<Uplink> {
        let link = self.links.get(&index)?;
        let mut addresses: Vec<IpAddr> =
            self.addresses.get(&index).into_iter().flatten().map(|&(addr, _)| addr).collect();
        // Sorted by address first, so equal addresses are adjacent.
        addresses.dedup();
        Some(Uplink { index, name: link.name.clone(), admin_up: link.admin_up, lower_up: link.lower_up, addresses })
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
        let state =
            LinkState { name, admin_up: flags.contains(LinkFlags::Up), lower_up: flags.contains(LinkFlags::LowerUp) };
        self.links.insert(index, state);
    }

    fn del_link(&mut self, link: &LinkMessage) {
        if !is_plain_link(link) {
            return;
        }
        self.links.remove(&link.header.index);
        self.addresses.remove(&link.header.index);
    }

    fn new_address(&mut self, address: &AddressMessage) {
        let Some(key) = address_key(address) else { return };
        if is_bindable(address, key.0) {
            self.addresses.entry(address.header.index).or_default().insert(key);
        } else {
            // A known address can become unusable (e.g. DAD failed).
            self.remove_address(address.header.index, key);
        }
    }

    fn del_address(&mut self, address: &AddressMessage) {
        if let Some(key) = address_key(address) {
            self.remove_address(address.header.index, key);
        }
    }

    fn remove_address(&mut self, index: u32, key: (IpAddr, u8)) {
        if let Some(set) = self.addresses.get_mut(&index) {
            set.remove(&key);
            if set.is_empty() {
                self.addresses.remove(&index);
            }
        }
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

/// Legacy `RTMGRP_*` bitmask for `bind`: link changes and both address
/// families.
const UPLINK_GROUPS: u32 = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;

/// Starts watching the links and addresses of the calling thread's network
/// namespace.
///
/// Returns once the first full snapshot is in the receiver. The task
/// publishes a new snapshot on every real change; it ends when every
/// receiver is dropped or the netlink socket fails (logged), and aborting it
/// closes the socket.
pub async fn watch_uplinks() -> Result<(watch::Receiver<BTreeMap<String, Uplink>>, JoinHandle<()>), NetlinkError> {
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
    let task = runtime.spawn(run(table, handle, events, updates, connection));
    Ok((receiver, task))
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
) {
    loop {
        let event = tokio::select! {
            () = updates.closed() => {
                debug!("no uplink watchers left; monitor stops");
                return;
            }
            event = events.next() => event,
        };
        let Some((message, _)) = event else {
            error!("netlink event socket failed; uplink monitor stops");
            return;
        };
        let changed = match message.payload {
            NetlinkPayload::InnerMessage(message) => table.apply(&message),
            // ENOBUFS: the kernel dropped events, so the table may be wrong
            // in ways no later event will fix.
            NetlinkPayload::Overrun(_) => {
                warn!("netlink event socket overflowed; dumping links and addresses again");
                let mut fresh = UplinkTable::new();
                if let Err(e) = dump(&handle, &mut fresh).await {
                    error!(error = %e, "re-dump after overflow failed; uplink monitor stops");
                    return;
                }
                table = fresh;
                *updates.borrow() != table.snapshot()
            }
            _ => false,
        };
        if changed {
            let snapshot = table.snapshot();
            debug!(uplinks = ?summary(&snapshot), "uplinks changed");
            updates.send_replace(snapshot);
        }
    }
}

/// Usable uplink names, for logs.
fn summary(snapshot: &BTreeMap<String, Uplink>) -> Vec<&str> {
    snapshot.values().filter(|uplink| uplink.usable()).map(|uplink| uplink.name.as_str()).collect()
}

/// Feeds every link, then every address (both families), into `table`.
async fn dump(handle: &Handle, table: &mut UplinkTable) -> Result<(), NetlinkError> {
    let mut links = pin!(handle.link().get().execute());
    while let Some(link) = links.try_next().await.map_err(|source| NetlinkError::DumpLinks { source })? {
        table.apply(&RouteNetlinkMessage::NewLink(link));
    }
    let mut addresses = pin!(handle.address().get().execute());
    while let Some(address) = addresses.try_next().await.map_err(|source| NetlinkError::DumpAddresses { source })? {
        table.apply(&RouteNetlinkMessage::NewAddress(address));
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
    use rtnetlink::LinkUnspec;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const ETH0: u32 = 2;

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
                addresses: vec![v4(198, 18, 0, 2)]
            }
        );
        assert!(uplink.usable());

        // Cable pulled: still up, no carrier.
        assert!(table.apply(&new_link(ETH0, "eth0", LinkFlags::Up)));
        let uplink = eth0(&table);
        assert!(uplink.admin_up && !uplink.lower_up && !uplink.usable());

        assert!(table.apply(&new_link(ETH0, "eth0", LinkFlags::empty())));
        assert!(!eth0(&table).admin_up);

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
        assert!(!table.apply(&new_address(ETH0, v4(198, 18, 0, 2), 32)), "same address, shown once");
        assert_eq!(eth0(&table).addresses, vec![v4(198, 18, 0, 2)]);
        assert!(!table.apply(&del_address(ETH0, v4(198, 18, 0, 2), 24)));
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
        let route = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build();
        assert!(!table.apply(&RouteNetlinkMessage::NewRoute(route)));
        assert!(!table.apply(&RouteNetlinkMessage::GetLink(link(ETH0, "eth0", LinkFlags::empty()))));
        assert!(eth0(&table).usable());
    }
}
