//! The [`Netlink`] handle and its operations.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use tokio::task::JoinHandle;

use crate::error::{kernel_errno, NetlinkError};
use crate::message::{
    address_message, check_prefix_len, parse_route, parse_rule, parse_table_rule, route_message, route_table,
    rule_message, skip_dad, table_rule_message, unreachable_message,
};
use crate::types::{Route, Rule, TableRule, UnreachableRoute};

/// A `NETLINK_ROUTE` socket bound to one network namespace.
///
/// Methods take `&self`; share it between tasks with an `Arc`. Dropping it
/// stops its background connection task.
#[derive(Debug)]
pub struct Netlink {
    handle: Handle,
    connection: JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        // netlink-proto's connection only finishes once every handle *and*
        // the unsolicited-message receiver are gone and a message arrives,
        // so it could idle forever; stop it explicitly.
        self.connection.abort();
    }
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace and spawns its
    /// connection task on the current tokio runtime.
    ///
    /// The socket lives in the namespace of the *calling thread*, which
    /// matters for callers that `unshare`/`setns` one thread.
    pub async fn connect() -> Result<Self, NetlinkError> {
        // Checked first: creating the socket registers it with the tokio
        // reactor, which panics outside a runtime.
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        // The third value receives multicast notifications; we subscribe to
        // none, so it is dropped.
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| NetlinkError::Connect { source })?;
        let connection = runtime.spawn(connection);
        Ok(Self { handle, connection })
    }

    /// The interface index of the link called `name`.
    ///
    /// A missing link is [`NetlinkError::LinkNotFound`].
    pub async fn link_index(&self, name: &str) -> Result<u32, NetlinkError> {
        let lookup_failed = |source| NetlinkError::LinkLookup { name: name.to_owned(), source };
        let not_found = || NetlinkError::LinkNotFound { name: name.to_owned() };
        let mut links = self.handle.link().get().match_name(name).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(link.header.index),
            // A by-name RTM_GETLINK is answered with ENODEV, not an empty reply.
            Ok(None) => Err(not_found()),
            Err(e) if kernel_errno(&e) == Some(libc::ENODEV) => Err(not_found()),
            Err(e) => Err(lookup_failed(e)),
        }
    }

    /// Sets the link administratively up (`ip link set dev X up`).
    pub async fn set_link_up(&self, index: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).up().build();
        self.handle.link().change(message).execute().await.map_err(|source| NetlinkError::SetLinkUp { index, source })
    }

    /// Sets the link MTU (`ip link set dev X mtu N`).
    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).mtu(mtu).build();
        self.handle.link().change(message).execute().await.map_err(|source| NetlinkError::SetMtu { index, mtu, source })
    }

    /// Sets the transmit queue length of link `index`: for a TUN device, how many packets the kernel
    /// holds for the reader before it drops the next one.
    pub async fn set_tx_queue_len(&self, index: u32, len: u32) -> Result<(), NetlinkError> {
        let message = LinkUnspec::new_with_index(index).txqueuelen(len).build();
        self.handle.link().change(message).execute().await.map_err(|source| NetlinkError::SetTxQueueLen {
            index,
            len,
            source,
        })
    }

    /// Adds `addr/prefix_len` to link `index`.
    ///
    /// Idempotent: an address that is already there is success. IPv6
    /// addresses skip duplicate address detection so they are usable (e.g.
    /// as a route's preferred source) immediately.
    pub async fn add_address(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        check_prefix_len(addr, prefix_len)?;
        let mut request = self.handle.address().add(index, addr, prefix_len);
        skip_dad(request.message_mut());
        let result = request.execute().await;
        ignore_errnos(result, &[libc::EEXIST]).map_err(|source| NetlinkError::AddAddress {
            index,
            addr,
            prefix_len,
            source,
        })
    }

    /// Removes `addr/prefix_len` from link `index`.
    ///
    /// An address that is not there, or a link that no longer exists (so
    /// cannot carry the address), is success.
    pub async fn del_address(&self, index: u32, addr: IpAddr, prefix_len: u8) -> Result<(), NetlinkError> {
        check_prefix_len(addr, prefix_len)?;
        let message = address_message(index, addr, prefix_len);
        let result = self.handle.address().del(message).execute().await;
        ignore_errnos(result, &[libc::EADDRNOTAVAIL, libc::ENODEV]).map_err(|source| NetlinkError::DelAddress {
            index,
            addr,
            prefix_len,
            source,
        })
    }

    /// Adds a device route (IPv4 or IPv6).
    ///
    /// Idempotent: `EEXIST` is success. Note that the kernel reports
    /// `EEXIST` for any route with the same destination, table and metric,
    /// even through another device; such a route is left alone, not replaced.
    /// IPv4 routes need the link to be up (`ENETDOWN` otherwise), and a
    /// preferred source must already be configured on the host.
    pub async fn add_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let message = route_message(route)?;
        let result = self.handle.route().add(message).execute().await;
        ignore_errnos(result, &[libc::EEXIST])
            .map_err(|source| NetlinkError::AddRoute { route: Box::new(route.clone()), source })
    }

    /// Deletes a route added by [`Netlink::add_route`]. An absent route is
    /// success.
    pub async fn del_route(&self, route: &Route) -> Result<(), NetlinkError> {
        let message = route_message(route)?;
        let result = self.handle.route().del(message).execute().await;
        // ESRCH: no such route (or no such table); ENODEV: the device, and
        // with it all its routes, is gone.
        ignore_errnos(result, &[libc::ESRCH, libc::ENODEV])
            .map_err(|source| NetlinkError::DelRoute { route: Box::new(route.clone()), source })
    }

    /// Every route of routing table `table` (both families), as [`Route`]s
    /// with `table: Some(table)`. Routes the kernel decorates beyond what a
    /// [`Route`] says (multipath, other route types) are left out.
    ///
    /// For callers that must not trust their own records: the kernel deletes
    /// some routes without a notification (see the monitor's documentation).
    pub async fn table_routes(&self, table: u32) -> Result<Vec<Route>, NetlinkError> {
        let mut routes = Vec::new();
        // Without strict checking the kernel ignores the table in a dump
        // request and sends every table; filter here.
        let requests = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        for request in requests {
            let mut dump = self.handle.route().get(request).execute();
            while let Some(message) = dump.try_next().await.map_err(|source| NetlinkError::DumpRoutes { source })? {
                routes.extend(parse_route(&message).filter(|route| route.table == Some(table)));
            }
        }
        Ok(routes)
    }

    /// Adds a `from PREFIX lookup TABLE priority N` rule. Idempotent.
    pub async fn add_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        let message = rule_message(rule)?;
        let mut request = self.handle.rule().add();
        *request.message_mut() = message;
        let result = request.execute().await;
        ignore_errnos(result, &[libc::EEXIST]).map_err(|source| NetlinkError::AddRule { rule: rule.clone(), source })
    }

    /// Every `from PREFIX lookup TABLE` rule of both families, as [`Rule`]s.
    pub async fn rules(&self) -> Result<Vec<Rule>, NetlinkError> {
        let mut rules = Vec::new();
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let mut dump = self.handle.rule().get(version).execute();
            while let Some(message) = dump.try_next().await.map_err(|source| NetlinkError::DumpRules { source })? {
                rules.extend(parse_rule(&message));
            }
        }
        Ok(rules)
    }

    /// Deletes a rule added by [`Netlink::add_rule`]. An absent rule is
    /// success.
    pub async fn del_rule(&self, rule: &Rule) -> Result<(), NetlinkError> {
        let message = rule_message(rule)?;
        let result = self.handle.rule().del(message).execute().await;
        ignore_errnos(result, &[libc::ENOENT]).map_err(|source| NetlinkError::DelRule { rule: rule.clone(), source })
    }
}

impl Netlink {
    /// Adds a [`TableRule`]. Idempotent.
    pub async fn add_table_rule(&self, rule: &TableRule) -> Result<(), NetlinkError> {
        let failed = |source| NetlinkError::AddTableRule { rule: Box::new(rule.clone()), source };
        let mut request = self.handle.rule().add();
        *request.message_mut() = table_rule_message(rule)?;
        ignore_errnos(request.execute().await, &[libc::EEXIST]).map_err(failed)
    }

    /// Deletes a [`TableRule`]; an absent one is success.
    pub async fn del_table_rule(&self, rule: &TableRule) -> Result<(), NetlinkError> {
        let failed = |source| NetlinkError::DelTableRule { rule: Box::new(rule.clone()), source };
        let result = self.handle.rule().del(table_rule_message(rule)?).execute().await;
        ignore_errnos(result, &[libc::ENOENT]).map_err(failed)
    }

    /// Every rule of both families that has the shape of a [`TableRule`].
    pub async fn table_rules(&self) -> Result<Vec<TableRule>, NetlinkError> {
        let mut rules = Vec::new();
        for version in [rtnetlink::IpVersion::V4, rtnetlink::IpVersion::V6] {
            let mut dump = self.handle.rule().get(version).execute();
            while let Some(message) = dump.try_next().await.map_err(|source| NetlinkError::DumpRules { source })? {
                rules.extend(parse_table_rule(&message));
            }
        }
        Ok(rules)
    }

    /// Adds an [`UnreachableRoute`]. Idempotent (`EEXIST` is success, as for [`Netlink::add_route`]).
    pub async fn add_unreachable(&self, route: &UnreachableRoute) -> Result<(), NetlinkError> {
        let result = self.handle.route().add(unreachable_message(route)?).execute().await;
        ignore_errnos(result, &[libc::EEXIST])
            .map_err(|source| NetlinkError::AddUnreachable { route: route.clone(), source })
    }

    /// Deletes an [`UnreachableRoute`]; an absent one is success.
    pub async fn del_unreachable(&self, route: &UnreachableRoute) -> Result<(), NetlinkError> {
        let result = self.handle.route().del(unreachable_message(route)?).execute().await;
        ignore_errnos(result, &[libc::ESRCH])
            .map_err(|source| NetlinkError::DelUnreachable { route: route.clone(), source })
    }

    /// Deletes every route of routing table `table` (both families, of any type), each with the
    /// very message the kernel dumped, so that nothing else is touched. Returns how many it deleted.
    ///
    /// For a table that is only ever ours: what a daemon killed before its cleanup left there.
    pub async fn flush_table(&self, table: u32) -> Result<usize, NetlinkError> {
        let requests = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
        let mut found = Vec::new();
        for request in requests {
            let mut dump = self.handle.route().get(request).execute();
            while let Some(message) = dump.try_next().await.map_err(|source| NetlinkError::DumpRoutes { source })? {
                if route_table(&message) == table {
                    found.push(message);
                }
            }
        }
        let count = found.len();
        for message in found {
            let result = self.handle.route().del(message).execute().await;
            ignore_errnos(result, &[libc::ESRCH, libc::ENODEV])
                .map_err(|source| NetlinkError::FlushTable { table, source })?;
        }
        Ok(count)
    }
}

/// Turns the kernel errnos that mean "already in the desired state" into
/// success.
fn ignore_errnos(result: Result<(), rtnetlink::Error>, benign: &[i32]) -> Result<(), rtnetlink::Error> {
    match result {
        Err(e) if kernel_errno(&e).is_some_and(|errno| benign.contains(&errno)) => Ok(()),
        other => other,
    }
}
