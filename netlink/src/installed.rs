//! Bookkeeping of what the daemon installed, for cleanup on shutdown.

use std::error::Error;
use std::net::IpAddr;

use tracing::warn;

use crate::error::NetlinkError;
use crate::netlink::Netlink;
use crate::types::{Route, Rule, TableRule, UnreachableRoute};

/// An address added to a link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Address {
    index: u32,
    addr: IpAddr,
    prefix_len: u8,
}

/// Addresses, routes and rules the daemon added, so that
/// [`Installed::remove_all`] can take them away again on SIGINT/SIGTERM.
///
/// Adding through this type records the object once the kernel has it,
/// including when it was already there (an add is idempotent): the daemon
/// asked for it, and a leftover from a crashed previous run is exactly what
/// should be cleaned up.
#[derive(Debug, Default)]
pub struct Installed {
    addresses: Vec<Address>,
    routes: Vec<Route>,
    rules: Vec<Rule>,
    table_rules: Vec<TableRule>,
    unreachable: Vec<UnreachableRoute>,
}

impl Installed {
    pub fn new() -> Self {
        Self::default()
    }

    /// The routes recorded, oldest first (for diffing against a plan).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The rules recorded, oldest first.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
            && self.routes.is_empty()
            && self.rules.is_empty()
            && self.table_rules.is_empty()
            && self.unreachable.is_empty()
    }

    /// [`Netlink::add_address`], recorded on success.
    pub async fn add_address(
        &mut self,
        nl: &Netlink,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        nl.add_address(index, addr, prefix_len).await?;
        record(&mut self.addresses, Address { index, addr, prefix_len });
        Ok(())
    }

    /// [`Netlink::add_route`], recorded on success.
    pub async fn add_route(&mut self, nl: &Netlink, route: Route) -> Result<(), NetlinkError> {
        nl.add_route(&route).await?;
        record(&mut self.routes, route);
        Ok(())
    }

    /// [`Netlink::add_rule`], recorded on success.
    pub async fn add_rule(&mut self, nl: &Netlink, rule: Rule) -> Result<(), NetlinkError> {
        nl.add_rule(&rule).await?;
        record(&mut self.rules, rule);
        Ok(())
    }

    /// The [`TableRule`]s recorded, oldest first.
    pub fn table_rules(&self) -> &[TableRule] {
        &self.table_rules
    }

    /// The [`UnreachableRoute`]s recorded, oldest first.
    pub fn unreachable(&self) -> &[UnreachableRoute] {
        &self.unreachable
    }

    /// [`Netlink::add_table_rule`], recorded on success.
    pub async fn add_table_rule(&mut self, nl: &Netlink, rule: TableRule) -> Result<(), NetlinkError> {
        nl.add_table_rule(&rule).await?;
        record(&mut self.table_rules, rule);
        Ok(())
    }

    /// [`Netlink::add_unreachable`], recorded on success.
    pub async fn add_unreachable(&mut self, nl: &Netlink, route: UnreachableRoute) -> Result<(), NetlinkError> {
        nl.add_unreachable(&route).await?;
        record(&mut self.unreachable, route);
        Ok(())
    }

    /// [`Netlink::del_address`], forgotten on success (e.g. after an uplink
    /// change made it obsolete).
    pub async fn del_address(
        &mut self,
        nl: &Netlink,
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        nl.del_address(index, addr, prefix_len).await?;
        let address = Address { index, addr, prefix_len };
        self.addresses.retain(|a| *a != address);
        Ok(())
    }

    /// [`Netlink::del_route`], forgotten on success.
    pub async fn del_route(&mut self, nl: &Netlink, route: &Route) -> Result<(), NetlinkError> {
        nl.del_route(route).await?;
        self.routes.retain(|r| r != route);
        Ok(())
    }

    /// [`Netlink::del_rule`], forgotten on success.
    pub async fn del_rule(&mut self, nl: &Netlink, rule: &Rule) -> Result<(), NetlinkError> {
        nl.del_rule(rule).await?;
        self.rules.retain(|r| r != rule);
        Ok(())
    }

    /// Removes everything recorded, best-effort: a failure is logged with
    /// `tracing::warn!` and the rest is still removed. Afterwards nothing is
    /// recorded (a failed removal is not retried).
    ///
    /// Order: rules, then routes, then addresses (each newest first), so that
    /// traffic stops being steered before its routes and source addresses
    /// disappear.
    pub async fn remove_all(&mut self, nl: &Netlink) {
        for rule in std::mem::take(&mut self.table_rules).iter().rev() {
            warn_on_error(nl.del_table_rule(rule).await);
        }
        for rule in std::mem::take(&mut self.rules).iter().rev() {
            warn_on_error(nl.del_rule(rule).await);
        }
        for route in std::mem::take(&mut self.unreachable).iter().rev() {
            warn_on_error(nl.del_unreachable(route).await);
        }
        for route in std::mem::take(&mut self.routes).iter().rev() {
            warn_on_error(nl.del_route(route).await);
        }
        for a in std::mem::take(&mut self.addresses).iter().rev() {
            warn_on_error(nl.del_address(a.index, a.addr, a.prefix_len).await);
        }
    }
}

/// Appends `item` unless it is already recorded, so that adding twice does
/// not delete twice.
fn record<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

fn warn_on_error(result: Result<(), NetlinkError>) {
    if let Err(e) = result {
        warn!(error = %error_chain(&e), "cleanup left an object behind");
    }
}

/// "outer: inner: innermost", since our errors name the object and the
/// source names the kernel's reason.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
