//! The uplink table's unit tests: messages built as the kernel sends them, applied one by one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rtnetlink::packet_core::NLM_F_REPLACE;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressMessage, AddressScope};
use rtnetlink::packet_route::link::{LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{RouteAttribute, RouteHeader, RouteMessage, RouteNextHopFlags, RouteType};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::RouteMessageBuilder;

use super::parse::{replaces_a_default_route, MAIN_TABLE};
use super::{Uplink, UplinkTable};
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
    assert!(!replaces_a_default_route(NLM_F_REPLACE, &del_route(&default_via(ETH0, Ipv4Addr::new(198, 18, 0, 1), 0))));
}
