//! The uplink monitor against the real kernel, in a private namespace.
//!
//! ```text
//!   private network namespace (one per test)
//!   ┌──────────────────────────────────────────────────────────────┐
//!   │  lo                                                          │
//!   │  rt-mon0      dummy (or a veth whose peer stays down)        │
//!   │  rt-mon-a ════ veth ════ rt-mon-b                            │
//!   │  rt-burst0 … rt-burstN   created while the monitor is stalled│
//!   │  rt-burst-a 198.18.7.2/24 fd00:7::2/64 ═ veth ═ rt-burst-b   │
//!   │     (default via 198.18.7.1, fd00:7::1)   (peer namespace)   │
//!   │  rt-gw0  198.18.5.2/24   default via 198.18.5.1 (main table) │
//!   │  rt-gw1  198.18.6.2/24   default via 198.18.6.1 (replace)    │
//!   │                                                              │
//!   │  watch_uplinks() ◄── RTMGRP_LINK | IPV4_IFADDR | IPV6_IFADDR │
//!   │                      | IPV4_ROUTE | IPV6_ROUTE               │
//!   └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! Changes are made with rtnetlink, never `ip`, and every assertion waits
//! (bounded) for the monitor to publish the expected state. Route tests also
//! check the kernel's own route dump where the kernel changes routes without
//! a notification, so the monitor is compared with the truth, not with an
//! assumption about the kernel.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{block_on_in, in_netns, new_netns, v4, v6, Env};
use roamtun_netlink::{watch_uplinks, watch_uplinks_counted, Uplink};
use rtnetlink::constants::RTMGRP_LINK;
use rtnetlink::packet_route::route::{RouteMessage, RouteScope};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};
use rtnetlink::{LinkUnspec, LinkVeth, RouteMessageBuilder};
use tokio::sync::watch;
use tokio::time::Instant;

type Uplinks = BTreeMap<String, Uplink>;

/// How long any single expected change may take to be published.
const WAIT: Duration = Duration::from_secs(5);

/// Waits until the published snapshot satisfies `condition` and returns it.
async fn wait_for(uplinks: &mut watch::Receiver<Uplinks>, what: &str, condition: impl Fn(&Uplinks) -> bool) -> Uplinks {
    let deadline = Instant::now() + WAIT;
    loop {
        {
            let current = uplinks.borrow_and_update();
            if condition(&current) {
                return current.clone();
            }
        }
        match tokio::time::timeout_at(deadline, uplinks.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => panic!("uplink monitor stopped while waiting for {what}"),
            Err(_) => panic!("no snapshot with {what} within {WAIT:?}; last one: {:#?}", *uplinks.borrow()),
        }
    }
}

async fn set_link_down(env: &Env, index: u32) {
    let message = LinkUnspec::new_with_index(index).down().build();
    env.inspect.link().change(message).execute().await.expect("set link down");
}

/// `default via GATEWAY dev OIF` in the main table, for add and delete.
fn default_via(oif: u32, gateway: Ipv4Addr) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new().output_interface(oif).gateway(gateway).build()
}

/// An up scratch link with `addr/24`, so a gateway in that subnet is
/// reachable.
async fn link_with_subnet(env: &Env, name: &str, addr: Ipv4Addr) -> u32 {
    let index = env.add_up_dummy(name).await;
    env.nl.add_address(index, addr.into(), 24).await.expect("add address");
    index
}

/// Whether the kernel's own dump has a default route through `oif`.
async fn kernel_has_default_route(env: &Env, oif: u32) -> bool {
    env.routes().await.iter().any(|route| route.oif == oif && route.prefix_len == 0)
}

#[test]
fn address_and_admin_state_changes_are_published() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_up_dummy("rt-mon0").await;
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");

        // The first snapshot is a full dump, available at once.
        let initial = uplinks.borrow().clone();
        assert!(initial["lo"].addresses.is_empty(), "loopback addresses are host scope: {:?}", initial["lo"]);
        let link = &initial["rt-mon0"];
        assert_eq!((link.index, link.admin_up), (index, true));
        assert!(link.addresses.is_empty() && !link.usable());

        let addr = v4(198, 18, 0, 1);
        env.nl.add_address(index, addr, 24).await.expect("add address");
        let now = wait_for(&mut uplinks, "198.18.0.1 on rt-mon0", |u| u["rt-mon0"].addresses == [addr]).await;
        // A dummy has carrier as soon as it is up; the veth fallback does not.
        assert_eq!(now["rt-mon0"].usable(), now["rt-mon0"].lower_up);

        set_link_down(&env, index).await;
        let now = wait_for(&mut uplinks, "rt-mon0 down", |u| !u["rt-mon0"].admin_up).await;
        assert!(!now["rt-mon0"].usable());
        assert_eq!(now["rt-mon0"].addresses, [addr], "an IPv4 address stays on a link that is down");

        env.nl.del_address(index, addr, 24).await.expect("delete address");
        wait_for(&mut uplinks, "no address on rt-mon0", |u| u["rt-mon0"].addresses.is_empty()).await;
    });
}

#[test]
fn carrier_follows_the_veth_peer() {
    in_netns(|| async {
        let env = Env::new().await;
        env.inspect.link().add(LinkVeth::new("rt-mon-a", "rt-mon-b").build()).execute().await.expect("create veth");
        let a = env.nl.link_index("rt-mon-a").await.expect("index of rt-mon-a");
        let b = env.nl.link_index("rt-mon-b").await.expect("index of rt-mon-b");
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");
        env.nl.add_address(a, v4(198, 18, 1, 1), 24).await.expect("add address");

        env.nl.set_link_up(a).await.expect("set rt-mon-a up");
        let now = wait_for(&mut uplinks, "rt-mon-a up", |u| u["rt-mon-a"].admin_up).await;
        assert!(!now["rt-mon-a"].lower_up, "no carrier while the peer is down");
        assert!(!now["rt-mon-a"].usable());

        env.nl.set_link_up(b).await.expect("set rt-mon-b up");
        let now = wait_for(&mut uplinks, "carrier on rt-mon-a", |u| u["rt-mon-a"].lower_up).await;
        assert!(now["rt-mon-a"].usable());

        set_link_down(&env, b).await;
        let now = wait_for(&mut uplinks, "carrier lost on rt-mon-a", |u| !u["rt-mon-a"].lower_up).await;
        assert!(now["rt-mon-a"].admin_up && !now["rt-mon-a"].usable());
    });
}

#[test]
fn renamed_link_keeps_its_addresses_and_deleted_link_disappears() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_dummy("rt-mon0").await;
        let addr = v4(198, 18, 2, 1);
        env.nl.add_address(index, addr, 24).await.expect("add address");
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");
        assert_eq!(uplinks.borrow()["rt-mon0"].addresses, [addr], "the first dump includes addresses");

        // Renaming needs the link down, which add_dummy leaves it.
        let rename = LinkUnspec::new_with_index(index).name("rt-mon1").build();
        env.inspect.link().change(rename).execute().await.expect("rename link");
        let now = wait_for(&mut uplinks, "rt-mon1", |u| u.contains_key("rt-mon1")).await;
        assert!(!now.contains_key("rt-mon0"));
        assert_eq!((now["rt-mon1"].index, &now["rt-mon1"].addresses[..]), (index, &[addr][..]));

        env.inspect.link().del(index).execute().await.expect("delete link");
        wait_for(&mut uplinks, "rt-mon1 gone", |u| !u.contains_key("rt-mon1")).await;
    });
}

#[test]
fn default_routes_of_the_main_table_are_published() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = link_with_subnet(&env, "rt-gw0", Ipv4Addr::new(198, 18, 5, 2)).await;
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");
        let initial = uplinks.borrow()["rt-gw0"].clone();
        assert!(!initial.has_default_route && initial.gateways.is_empty(), "{initial:?}");

        // Another table's default route comes first and is ignored: had it
        // counted, 198.18.5.254 would be published with (or before) .1.
        let mut other_table = default_via(index, Ipv4Addr::new(198, 18, 5, 254));
        other_table.header.table = 100;
        env.inspect.route().add(other_table).execute().await.expect("add default route to table 100");
        let gateway = Ipv4Addr::new(198, 18, 5, 1);
        env.inspect.route().add(default_via(index, gateway)).execute().await.expect("add default route");
        let now = wait_for(&mut uplinks, "a default route on rt-gw0", |u| u["rt-gw0"].has_default_route).await;
        assert_eq!(now["rt-gw0"].gateways, [v4(198, 18, 5, 1)]);

        // A device route with a higher metric, as a fallback.
        let device = || {
            RouteMessageBuilder::<Ipv4Addr>::new().output_interface(index).scope(RouteScope::Link).priority(100).build()
        };
        env.inspect.route().add(device()).execute().await.expect("add device default route");
        env.inspect.route().del(default_via(index, gateway)).execute().await.expect("delete default route");
        let now = wait_for(&mut uplinks, "no gateway on rt-gw0", |u| u["rt-gw0"].gateways.is_empty()).await;
        assert!(now["rt-gw0"].has_default_route, "the device route is still there: {:?}", now["rt-gw0"]);

        env.inspect.route().del(device()).execute().await.expect("delete device default route");
        wait_for(&mut uplinks, "no default route on rt-gw0", |u| !u["rt-gw0"].has_default_route).await;
    });
}

/// The kernel flushes IPv4 routes when their link goes down or loses its
/// last IPv4 address, without telling anyone; the route coming back must
/// still be published, since that is what wakes a waiting dialer.
#[test]
fn default_route_flushed_without_notification_is_forgotten() {
    in_netns(|| async {
        let env = Env::new().await;
        let addr = Ipv4Addr::new(198, 18, 5, 2);
        let index = link_with_subnet(&env, "rt-gw0", addr).await;
        let gateway = Ipv4Addr::new(198, 18, 5, 1);
        env.inspect.route().add(default_via(index, gateway)).execute().await.expect("add default route");
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");
        assert_eq!(uplinks.borrow()["rt-gw0"].gateways, [v4(198, 18, 5, 1)], "the first dump includes routes");

        set_link_down(&env, index).await;
        let now = wait_for(&mut uplinks, "rt-gw0 down", |u| !u["rt-gw0"].admin_up).await;
        assert!(!kernel_has_default_route(&env, index).await, "the kernel kept the route after link down");
        assert!(!now["rt-gw0"].has_default_route, "{:?}", now["rt-gw0"]);

        // Address first, route a moment later, as after DHCP.
        env.nl.set_link_up(index).await.expect("set rt-gw0 up");
        wait_for(&mut uplinks, "rt-gw0 up", |u| u["rt-gw0"].admin_up).await;
        env.inspect.route().add(default_via(index, gateway)).execute().await.expect("add default route again");
        wait_for(&mut uplinks, "the default route back", |u| u["rt-gw0"].gateways == [v4(198, 18, 5, 1)]).await;

        env.nl.del_address(index, addr.into(), 24).await.expect("delete address");
        let now = wait_for(&mut uplinks, "no address on rt-gw0", |u| u["rt-gw0"].addresses.is_empty()).await;
        assert!(!kernel_has_default_route(&env, index).await, "the kernel kept the route without an address");
        assert!(!now["rt-gw0"].has_default_route, "{:?}", now["rt-gw0"]);
    });
}

#[test]
fn replaced_default_route_moves_to_the_new_link() {
    in_netns(|| async {
        let env = Env::new().await;
        let first = link_with_subnet(&env, "rt-gw0", Ipv4Addr::new(198, 18, 5, 2)).await;
        let second = link_with_subnet(&env, "rt-gw1", Ipv4Addr::new(198, 18, 6, 2)).await;
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");
        let old = default_via(first, Ipv4Addr::new(198, 18, 5, 1));
        env.inspect.route().add(old).execute().await.expect("add default route");
        wait_for(&mut uplinks, "a default route on rt-gw0", |u| u["rt-gw0"].has_default_route).await;

        // Same metric: the kernel swaps the routes and announces only the
        // new one.
        let new = default_via(second, Ipv4Addr::new(198, 18, 6, 1));
        env.inspect.route().add(new).replace().execute().await.expect("replace default route");
        let now = wait_for(&mut uplinks, "the default route on rt-gw1", |u| u["rt-gw1"].has_default_route).await;
        assert_eq!(now["rt-gw1"].gateways, [v4(198, 18, 6, 1)]);
        assert!(!now["rt-gw0"].has_default_route, "the replaced route lingers: {:?}", now["rt-gw0"]);
    });
}

/// More links than a default-sized netlink receive buffer holds
/// notifications for.
const BURST: usize = 300;

#[test]
fn overflowed_event_socket_is_recovered_by_a_fresh_dump() {
    in_netns(|| async {
        let (mut uplinks, _monitor) = watch_uplinks().await.expect("start uplink monitor");
        // A second subscriber with the default buffer, never read during the
        // burst, proves the burst really overflows such a socket.
        let mut probe = Socket::new(NETLINK_ROUTE).expect("open probe socket");
        probe.bind(&SocketAddr::new(0, RTMGRP_LINK)).expect("subscribe probe socket");

        // Blocking this thread stalls its current-thread runtime and so the
        // monitor, while another thread (which inherits this thread's
        // namespace) creates links.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("burst runtime");
            runtime.block_on(async {
                let env = Env::new().await;
                for i in 0..BURST {
                    env.add_dummy(&format!("rt-burst{i}")).await;
                }
            });
        })
        .join()
        .expect("burst thread");

        let mut buffer = Vec::with_capacity(64 * 1024);
        let overflow = probe.recv(&mut buffer, 0).expect_err("burst did not overflow the probe socket; raise BURST");
        assert_eq!(overflow.raw_os_error(), Some(libc::ENOBUFS), "{overflow}");

        let names: Vec<String> = (0..BURST).map(|i| format!("rt-burst{i}")).collect();
        wait_for(&mut uplinks, "every burst link", |u| names.iter().all(|name| u.contains_key(name))).await;
    });
}

/// Taking a link with addresses and default routes of both families down
/// makes the kernel send a burst (the link, its IPv6 addresses, its IPv6
/// routes, …). A watcher should see one new snapshot, published at once,
/// and a message that changes nothing should publish nothing.
#[test]
fn a_link_down_burst_is_published_once_and_at_once() {
    in_netns(|| async {
        let env = Env::new().await;
        // The peer lives in another namespace: it loses carrier too when
        // rt-burst-a goes down, which the kernel announces later (from its
        // link-watch work), a second, genuine change this test is not about.
        env.inspect.link().add(LinkVeth::new("rt-burst-a", "rt-burst-b").build()).execute().await.expect("veth");
        let a = env.nl.link_index("rt-burst-a").await.expect("index of rt-burst-a");
        let b = env.nl.link_index("rt-burst-b").await.expect("index of rt-burst-b");
        let peer_ns = new_netns();
        let move_peer = LinkUnspec::new_with_index(b).setns_by_fd(peer_ns.as_raw_fd()).build();
        env.inspect.link().change(move_peer).execute().await.expect("move rt-burst-b to the peer namespace");
        block_on_in(&peer_ns, || async {
            let peer = Env::new().await;
            let b = peer.nl.link_index("rt-burst-b").await.expect("rt-burst-b in the peer namespace");
            peer.nl.set_link_up(b).await.expect("set rt-burst-b up");
        });
        env.nl.set_link_up(a).await.expect("set rt-burst-a up");
        env.nl.add_address(a, v4(198, 18, 7, 2), 24).await.expect("add IPv4 address");
        env.nl.add_address(a, v6("fd00:7::2"), 64).await.expect("add IPv6 address");
        env.inspect.route().add(default_via(a, Ipv4Addr::new(198, 18, 7, 1))).execute().await.expect("v4 default");
        let gateway: Ipv6Addr = "fd00:7::1".parse().expect("IPv6 literal");
        let v6_default = RouteMessageBuilder::<Ipv6Addr>::new().output_interface(a).gateway(gateway).build();
        env.inspect.route().add(v6_default).execute().await.expect("v6 default");

        let (mut uplinks, _monitor, stats) = watch_uplinks_counted().await.expect("start uplink monitor");
        wait_for(&mut uplinks, "rt-burst-a usable with two gateways", |u| {
            u["rt-burst-a"].usable() && u["rt-burst-a"].gateways.len() == 2
        })
        .await;
        let (events_before, published_before) = (stats.events(), stats.published());

        let started = Instant::now();
        set_link_down(&env, a).await;
        let now = wait_for(&mut uplinks, "rt-burst-a down", |u| !u["rt-burst-a"].admin_up).await;
        let latency = started.elapsed();
        // Everything the link-down caused is already in that one snapshot.
        assert_eq!(now["rt-burst-a"].addresses, [v4(198, 18, 7, 2)], "IPv6 addresses go with the link");
        assert!(!now["rt-burst-a"].has_default_route, "{:?}", now["rt-burst-a"]);
        // Stragglers would arrive within microseconds; leave them plenty.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (events, published) = (stats.events() - events_before, stats.published() - published_before);
        eprintln!("link down: {events} netlink messages, {published} snapshots published, seen after {latency:?}");
        assert!(events >= 3, "the link-down was a burst of {events} messages");
        assert_eq!(published, 1, "one burst, one snapshot ({events} messages)");

        // A change outside the model (the MTU) is an event and no snapshot.
        let mtu = LinkUnspec::new_with_index(a).mtu(1400).build();
        env.inspect.link().change(mtu).execute().await.expect("set MTU");
        let deadline = Instant::now() + WAIT;
        while stats.events() == events_before + events && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(stats.events() > events_before + events, "the MTU change was heard");
        assert_eq!(stats.published() - published_before, 1, "an unchanged table publishes nothing");
        assert!(!uplinks.has_changed().expect("monitor alive"));
    });
}

#[test]
fn monitor_stops_when_every_receiver_is_dropped() {
    in_netns(|| async {
        let (uplinks, monitor) = watch_uplinks().await.expect("start uplink monitor");
        drop(uplinks);
        tokio::time::timeout(WAIT, monitor).await.expect("monitor stops in time").expect("monitor did not panic");
    });
}
