//! Shared harness: every test runs against the real kernel, inside a fresh
//! private network namespace, so it never touches the host's configuration.
//!
//! Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use roamtun_netlink::{Netlink, Route, Rule};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkDummy, LinkVeth, RouteMessageBuilder};

/// Kernel's main routing table id.
pub const MAIN_TABLE: u32 = RouteHeader::RT_TABLE_MAIN as u32;

pub fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

pub fn v6(text: &str) -> IpAddr {
    let addr: Ipv6Addr = text.parse().expect("test IPv6 literal");
    IpAddr::V6(addr)
}

/// Runs `test` on its own thread, inside a new network namespace, on a
/// current-thread tokio runtime (so every socket is created, and every
/// netlink request is sent, from that one thread and thus that namespace).
pub fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        require_root();
        enter_private_netns();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("build a current-thread tokio runtime");
        runtime.block_on(test());
    });
    // Re-raise the test's own panic so its message is what cargo test shows.
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// These tests need a real kernel and CAP_NET_ADMIN; CI runs them as root.
/// Failing loudly beats silently passing without testing anything.
fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "roamtun-netlink tests must run as root (they create private network \
         namespaces and configure links in them); euid is {euid}"
    );
}

/// Moves the calling thread (only) into a fresh network namespace, which
/// disappears when the thread exits.
fn enter_private_netns() {
    // SAFETY: unshare takes no pointers; CLONE_NEWNET only affects the
    // calling thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare(CLONE_NEWNET) failed: {}", std::io::Error::last_os_error());
}

/// The crate under test plus an independent rtnetlink handle to inspect the
/// kernel state with.
pub struct Env {
    pub nl: Netlink,
    pub inspect: Handle,
}

impl Env {
    pub async fn new() -> Self {
        let nl = Netlink::connect().await.expect("connect roamtun-netlink");
        let (connection, inspect, _) = rtnetlink::new_connection().expect("open inspection socket");
        tokio::spawn(connection);
        Self { nl, inspect }
    }

    /// Creates a scratch link called `name` (at most 14 bytes) and returns
    /// its index.
    ///
    /// A dummy link when the kernel has them; some minimal kernels (e.g. VM
    /// sandboxes without CONFIG_DUMMY) answer EOPNOTSUPP, and then one end
    /// of a veth pair (`{name}p` is the peer, left down) does the same job.
    pub async fn add_dummy(&self, name: &str) -> u32 {
        let dummy = self.inspect.link().add(LinkDummy::new(name).build()).execute().await;
        match dummy {
            Ok(()) => {}
            Err(rtnetlink::Error::NetlinkError(e)) if e.to_io().raw_os_error() == Some(libc::EOPNOTSUPP) => {
                let peer = format!("{name}p");
                self.inspect
                    .link()
                    .add(LinkVeth::new(name, &peer).build())
                    .execute()
                    .await
                    .expect("create veth pair (no dummy link support)");
            }
            Err(e) => panic!("create dummy link {name}: {e}"),
        }
        self.nl.link_index(name).await.expect("index of new scratch link")
    }

    /// Creates a dummy link that is up, as routes need.
    pub async fn add_up_dummy(&self, name: &str) -> u32 {
        let index = self.add_dummy(name).await;
        self.nl.set_link_up(index).await.expect("set dummy link up");
        index
    }

    /// (is administratively up, MTU) of link `index`, from a kernel dump.
    pub async fn link_state(&self, index: u32) -> (bool, u32) {
        let link = self
            .inspect
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_next()
            .await
            .expect("get link")
            .expect("link exists");
        let up = link.header.flags.contains(LinkFlags::Up);
        let mtu = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(mtu) => Some(*mtu),
                _ => None,
            })
            .expect("link dump has an MTU");
        (up, mtu)
    }

    /// Addresses on link `index` as (address, prefix length).
    pub async fn addresses(&self, index: u32) -> Vec<(IpAddr, u8)> {
        let messages: Vec<_> = self
            .inspect
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .expect("dump addresses");
        messages
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(addr) => Some((*addr, m.header.prefix_len)),
                    _ => None,
                })
            })
            .collect()
    }

    /// Every route in every table of both families, as [`Route`]s whose
    /// `table` is always `Some` (the main table is `Some(MAIN_TABLE)`).
    pub async fn routes(&self) -> Vec<Route> {
        let mut routes = Vec::new();
        // Without NETLINK_GET_STRICT_CHK the kernel ignores the table in the
        // request and dumps all tables; we filter on our side.
        let requests = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        for request in requests {
            let messages: Vec<_> =
                self.inspect.route().get(request).execute().try_collect().await.expect("dump routes");
            routes.extend(messages.iter().filter_map(parse_route));
        }
        routes
    }

    pub async fn route_exists(&self, route: &Route) -> bool {
        let wanted = with_explicit_table(route);
        self.routes().await.iter().filter(|r| **r == wanted).count() == 1
    }

    /// Every policy rule of both families.
    pub async fn rules(&self) -> Vec<Rule> {
        let mut rules = Vec::new();
        for version in [IpVersion::V4, IpVersion::V6] {
            let messages: Vec<_> = self.inspect.rule().get(version).execute().try_collect().await.expect("dump rules");
            // Only "lookup TABLE" rules count: a rule left at FR_ACT_UNSPEC
            // (rtnetlink's builder default) shows up in `ip rule` as
            // "lookup N none" and fails every lookup it matches.
            let lookups = messages.iter().filter(|m| m.header.action == RuleAction::ToTable);
            rules.extend(lookups.filter_map(|m| {
                let mut from = None;
                let mut table = None;
                let mut priority = None;
                for attribute in &m.attributes {
                    match attribute {
                        RuleAttribute::Source(addr) => from = Some(*addr),
                        RuleAttribute::Table(t) => table = Some(*t),
                        RuleAttribute::Priority(p) => priority = Some(*p),
                        _ => {}
                    }
                }
                Some(Rule { from: from?, from_prefix_len: m.header.src_len, table: table?, priority: priority? })
            }));
        }
        rules
    }

    /// True when exactly one such rule exists (an idempotent add must not
    /// have created a duplicate).
    pub async fn rule_exists(&self, rule: &Rule) -> bool {
        self.rules().await.iter().filter(|r| *r == rule).count() == 1
    }

    /// The output interface the kernel picks for a packet from `src` to
    /// `dst` (`ip route get DST from SRC`), which exercises rules and tables.
    pub async fn route_get_oif(&self, dst: Ipv4Addr, src: Ipv4Addr) -> u32 {
        let request = RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dst, 32).source_prefix(src, 32).build();
        let reply = self
            .inspect
            .route()
            .get(request)
            .execute()
            .try_next()
            .await
            .expect("route get")
            .expect("route get answers with one route");
        reply
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Oif(index) => Some(*index),
                _ => None,
            })
            .expect("route get reply has an output interface")
    }
}

/// `route` with `table: None` spelled out as the main table, to compare with
/// a kernel dump.
pub fn with_explicit_table(route: &Route) -> Route {
    Route { table: Some(route.table.unwrap_or(MAIN_TABLE)), ..route.clone() }
}

fn parse_route(message: &rtnetlink::packet_route::route::RouteMessage) -> Option<Route> {
    // The kernel leaves RTA_DST out of default (/0) routes.
    let mut dst = match message.header.address_family {
        AddressFamily::Inet => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        AddressFamily::Inet6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
        _ => None,
    };
    let mut oif = None;
    let mut table = u32::from(message.header.table);
    let mut src = None;
    let mut gateway = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Destination(a) => dst = ip_of(a),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::PrefSource(a) => src = ip_of(a),
            _ => {}
        }
    }
    Some(Route {
        dst: dst?,
        prefix_len: message.header.destination_prefix_length,
        oif: oif?,
        table: Some(table),
        src,
        gateway,
    })
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// A second private network namespace, which lives as long as the returned
/// file is open (the kernel deletes it with the last reference, also when a
/// test fails).
pub fn new_netns() -> std::fs::File {
    std::thread::spawn(|| {
        enter_private_netns();
        std::fs::File::open("/proc/thread-self/ns/net").expect("open the new namespace")
    })
    .join()
    .expect("namespace thread")
}

/// Runs `task` to completion on a thread inside namespace `ns`, blocking
/// the caller (and its runtime) meanwhile.
pub fn block_on_in<F, Fut>(ns: &std::fs::File, task: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = ()>,
{
    use std::os::fd::AsRawFd;
    std::thread::scope(|scope| {
        let thread = scope.spawn(|| {
            // SAFETY: setns takes an open namespace fd we own for the call.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns failed: {}", std::io::Error::last_os_error());
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(task());
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    });
}
