//! Per-uplink policy routing: each configured uplink gets a routing table of its own and, for each of
//! its addresses, a rule `from ADDRESS lookup TABLE`. A socket whose source is an uplink's address
//! then leaves through that uplink, via its gateway, whatever the main table says (its default route
//! may point into the TUN or at another uplink). This is what lets the relay use an uplink's gateway
//! with only its source address bound ([`source_address`]), and it follows DHCP renumbering: the
//! rule and the table change with the uplink's addresses and gateways.
//!
//! [`plan`] is sans-IO: from an uplink snapshot (rtnetlink's view) it computes the rules and routes
//! wanted; [`diff`] compares that with what is installed. [`Reconciler`] is the thin shell that
//! applies the difference over rtnetlink and records it in an [`Installed`], so that
//! [`Reconciler::remove_all`] takes everything away again; [`start`] runs it on every snapshot.
//!
//! Per table (`table_base` + the uplink's place in `uplinks`), for each family the uplink has an
//! address of, while it is administratively up:
//!
//! * the connected network of each address (`198.18.1.0/24 dev wlan0`), so that the gateway and
//!   the neighbours are on-link in this table too;
//! * `default via GATEWAY dev UPLINK` when the main table has a default route via a gateway through
//!   this uplink (the first gateway, if it has several), else `default dev UPLINK` when the main table
//!   has a device default route through it (point-to-point links), else nothing (rules to an empty
//!   table fall through to the main table).
//!
//! What it deliberately does not do: it touches no uplink that is not configured, no main-table
//! route and no rule or route it did not add; it does not read the kernel's routes back. The kernel
//! silently drops an uplink's IPv4 routes (ours included) when the link goes down or loses its last
//! IPv4 address; the plan drops them in exactly those cases too, so they are added again when the
//! link comes back instead of being believed present.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use roamtun_netlink::{error_chain, Installed, Netlink, NetlinkError, Route, Rule, Uplink};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::RoutingConfig;

/// Every interface rtnetlink reports, by name (the monitor's snapshot).
pub type Uplinks = BTreeMap<String, Uplink>;

/// The rules and routes the uplinks should have, in the order they are to be added (connected
/// networks before the default routes that need them on-link).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    pub rules: Vec<Rule>,
    pub routes: Vec<Route>,
}

/// What to change to get from what is installed to a [`Plan`], in the order to apply it: rules
/// out first (nothing is steered to a table while it is being emptied), routes out, routes in,
/// rules in last (nothing is steered to a table before it is filled).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub del_rules: Vec<Rule>,
    pub del_routes: Vec<Route>,
    pub add_routes: Vec<Route>,
    pub add_rules: Vec<Rule>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.del_rules.is_empty()
            && self.del_routes.is_empty()
            && self.add_routes.is_empty()
            && self.add_rules.is_empty()
    }
}

/// The table of the uplink at `position` in the configured `uplinks`. Config validation keeps
/// `table_base + position` from overflowing and from hitting the kernel's reserved tables.
pub fn table_of(config: &RoutingConfig, position: usize) -> u32 {
    config.table_base.saturating_add(u32::try_from(position).unwrap_or(u32::MAX))
}

/// The rules and routes the `configured` uplinks (names, in `uplinks` order) should have, given
/// rtnetlink's `snapshot`. Uplinks that are absent from the snapshot, and every interface not
/// configured, get nothing.
pub fn plan(snapshot: &Uplinks, configured: &[String], config: &RoutingConfig) -> Plan {
    let mut plan = Plan::default();
    for (position, name) in configured.iter().enumerate() {
        let Some(uplink) = snapshot.get(name) else { continue };
        let table = table_of(config, position);
        for &addr in &uplink.addresses {
            let rule = Rule { from: addr, from_prefix_len: host_len(addr), table, priority: config.rule_priority };
            push_new(&mut plan.rules, rule);
        }
        // A link that is down has no routes: the kernel flushed them (IPv4 silently).
        if !uplink.admin_up {
            continue;
        }
        for v4 in [true, false] {
            plan_family(&mut plan.routes, uplink, table, v4);
        }
    }
    plan
}

/// One family's routes of `uplink` in `table`; none without an address of that family (the kernel
/// flushes an uplink's IPv4 routes with its last IPv4 address).
fn plan_family(routes: &mut Vec<Route>, uplink: &Uplink, table: u32, v4: bool) {
    let prefixes: Vec<(IpAddr, u8)> = uplink.prefixes.iter().copied().filter(|(a, _)| a.is_ipv4() == v4).collect();
    if prefixes.is_empty() {
        return;
    }
    let route = |dst: IpAddr, prefix_len: u8, gateway: Option<IpAddr>| Route {
        dst,
        prefix_len,
        oif: uplink.index,
        table: Some(table),
        src: None,
        gateway,
    };
    for (addr, len) in prefixes {
        if len < host_len(addr) {
            push_new(routes, route(network(addr, len), len, None));
        }
    }
    let any = if v4 { IpAddr::V4(Ipv4Addr::UNSPECIFIED) } else { IpAddr::V6(Ipv6Addr::UNSPECIFIED) };
    let device_default = if v4 { uplink.device_default_v4 } else { uplink.device_default_v6 };
    // One default route per table and family: a second one with the same metric would be refused
    // (IPv4) or merged into a multipath route (IPv6). Gateways are sorted; the first is as good a
    // choice as any, the main table's metrics are not in the snapshot.
    if let Some(&gateway) = uplink.gateways.iter().find(|g| g.is_ipv4() == v4) {
        push_new(routes, route(any, 0, Some(gateway)));
    } else if device_default {
        push_new(routes, route(any, 0, None));
    }
}

/// What must change so that `installed` (rules and routes, as an [`Installed`] records them)
/// becomes `plan`.
pub fn diff(plan: &Plan, installed_rules: &[Rule], installed_routes: &[Route]) -> Changes {
    Changes {
        del_rules: installed_rules.iter().rev().filter(|r| !plan.rules.contains(r)).cloned().collect(),
        // Newest first: a default route goes before the connected route that made it on-link.
        del_routes: installed_routes.iter().rev().filter(|r| !plan.routes.contains(r)).cloned().collect(),
        add_routes: plan.routes.iter().filter(|r| !installed_routes.contains(r)).cloned().collect(),
        add_rules: plan.rules.iter().filter(|r| !installed_rules.contains(r)).cloned().collect(),
    }
}

/// [`diff`], believing only the recorded routes the kernel still has (`present`, a dump of our
/// tables): a route it dropped silently is added again, and one that is no longer planned is
/// deleted anyway (the kernel says "no such route", which counts as done) so it is forgotten.
pub fn diff_with_kernel(
    plan: &Plan,
    installed_rules: &[Rule],
    installed_routes: &[Route],
    present: &[Route],
) -> Changes {
    let believed: Vec<Route> = installed_routes.iter().filter(|r| present.contains(r)).cloned().collect();
    let mut changes = diff(plan, installed_rules, &believed);
    let gone = installed_routes.iter().rev().filter(|r| !present.contains(r) && !plan.routes.contains(r));
    changes.del_routes.extend(gone.cloned());
    changes
}

/// The source address a relay socket on `uplink` should bind to reach `server`, so that the
/// uplink's `from` rule routes it through the uplink's own table and gateway: the uplink's first
/// usable address of the server's family. `None` when the uplink is unknown or has none.
pub fn source_address(snapshot: &Uplinks, uplink: &str, server: IpAddr) -> Option<IpAddr> {
    snapshot.get(uplink)?.addresses.iter().copied().find(|a| a.is_ipv4() == server.is_ipv4())
}

fn host_len(addr: IpAddr) -> u8 {
    if addr.is_ipv4() {
        32
    } else {
        128
    }
}

/// `addr` with the host bits cleared.
fn network(addr: IpAddr, len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

fn push_new<T: PartialEq>(list: &mut Vec<T>, item: T) {
    if !list.contains(&item) {
        list.push(item);
    }
}

/// Applies plans over rtnetlink and remembers what it added.
pub struct Reconciler {
    netlink: Netlink,
    installed: Installed,
    configured: Vec<String>,
    config: RoutingConfig,
}

impl Reconciler {
    /// Opens a netlink socket (in the calling thread's namespace) for the `configured` uplinks.
    /// Rules and routes in our tables that a daemon killed before it could remove them left behind
    /// are removed first: they would steer the uplinks' addresses by stale gateways.
    pub async fn new(config: RoutingConfig, configured: Vec<String>) -> Result<Self, NetlinkError> {
        let reconciler =
            Reconciler { netlink: Netlink::connect().await?, installed: Installed::new(), configured, config };
        reconciler.clear_leftovers().await?;
        Ok(reconciler)
    }

    async fn clear_leftovers(&self) -> Result<(), NetlinkError> {
        let tables = self.tables();
        let mut removed = 0;
        for rule in self.netlink.rules().await? {
            if tables.contains(&rule.table) && rule.priority == self.config.rule_priority {
                self.netlink.del_rule(&rule).await?;
                removed += 1;
            }
        }
        for table in tables {
            for route in self.netlink.table_routes(table).await? {
                self.netlink.del_route(&route).await?;
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(removed, "per-uplink routing: removed the rules and routes a previous daemon left behind");
        }
        Ok(())
    }

    /// Brings the kernel in line with the plan for `snapshot`. Every change is tried; the ones the
    /// kernel refused are returned (and, not being recorded as done, tried again next time).
    pub async fn reconcile(&mut self, snapshot: &Uplinks) -> Vec<NetlinkError> {
        let plan = plan(snapshot, &self.configured, &self.config);
        let mut failures = Vec::new();
        // Our records are not the truth: the kernel drops an uplink's IPv4 routes silently when it
        // goes down, and a quick down-and-up can be one snapshot (the monitor coalesces bursts and
        // publishes only changes). So only routes still in the kernel count as installed; the
        // others are added again.
        let mut present = Vec::new();
        for table in self.tables() {
            match self.netlink.table_routes(table).await {
                Ok(routes) => present.extend(routes),
                Err(e) => {
                    failures.push(e);
                    return failures;
                }
            }
        }
        let changes = diff_with_kernel(&plan, self.installed.rules(), self.installed.routes(), &present);
        if changes.is_empty() {
            return failures;
        }
        let nl = &self.netlink;
        for rule in &changes.del_rules {
            failures.extend(self.installed.del_rule(nl, rule).await.err());
        }
        for route in &changes.del_routes {
            failures.extend(self.installed.del_route(nl, route).await.err());
        }
        for route in changes.add_routes {
            failures.extend(self.installed.add_route(nl, route).await.err());
        }
        for rule in changes.add_rules {
            failures.extend(self.installed.add_rule(nl, rule).await.err());
        }
        tracing::debug!(
            rules = self.installed.rules().len(),
            routes = self.installed.routes().len(),
            failures = failures.len(),
            "per-uplink routing updated"
        );
        failures
    }

    /// Our tables, one per configured uplink.
    fn tables(&self) -> Vec<u32> {
        (0..self.configured.len()).map(|position| table_of(&self.config, position)).collect()
    }

    /// Removes every rule and route added (best effort; failures are logged).
    pub async fn remove_all(&mut self) {
        self.installed.remove_all(&self.netlink).await;
    }

    /// What is installed now: (rules, routes).
    pub fn installed(&self) -> (&[Rule], &[Route]) {
        (self.installed.rules(), self.installed.routes())
    }
}

/// The running per-uplink routing; [`RoutingTask::stop`] removes what it installed.
pub struct RoutingTask {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts keeping the configured uplinks' tables and rules in line with every snapshot of
/// `uplinks` (the current one first).
pub async fn start(
    config: RoutingConfig,
    configured: Vec<String>,
    mut uplinks: watch::Receiver<Uplinks>,
) -> Result<RoutingTask, NetlinkError> {
    let mut reconciler = Reconciler::new(config, configured).await?;
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut watching = true;
        loop {
            if watching {
                let snapshot = uplinks.borrow_and_update().clone();
                for failure in reconciler.reconcile(&snapshot).await {
                    tracing::warn!(error = %error_chain(&failure), "per-uplink routing: a change failed; retried at the next uplink change");
                }
            }
            tokio::select! {
                _ = &mut stopped => break,
                changed = uplinks.changed(), if watching => {
                    if changed.is_err() {
                        tracing::warn!("the uplink monitor stopped; per-uplink routing is no longer updated");
                        watching = false;
                    }
                }
            }
        }
        reconciler.remove_all().await;
    });
    Ok(RoutingTask { stop, task })
}

/// [`start`] when `[routing] per_uplink_tables` is on; problems are logged, not fatal: without its
/// own tables an uplink is still used through the main table, as before.
pub async fn start_if_enabled(
    config: &crate::config::ClientConfig,
    uplinks: Option<watch::Receiver<Uplinks>>,
) -> Option<RoutingTask> {
    if !config.routing.per_uplink_tables {
        return None;
    }
    let Some(uplinks) = uplinks else {
        tracing::warn!("per-uplink routing needs the uplink monitor, which is not running; no tables or rules");
        return None;
    };
    match start(config.routing.clone(), config.uplink_names(), uplinks).await {
        Ok(task) => {
            tracing::info!(
                table_base = config.routing.table_base,
                rule_priority = config.routing.rule_priority,
                "per-uplink routing tables on"
            );
            Some(task)
        }
        Err(err) => {
            tracing::warn!(error = %error_chain(&err), "cannot start per-uplink routing; no tables or rules");
            None
        }
    }
}

impl RoutingTask {
    /// Stops following the uplinks and removes every rule and route added; returns when done.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(err) = self.task.await {
            tracing::warn!(%err, "per-uplink routing task failed; its rules and routes may remain");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WLAN0: u32 = 3;
    const WWAN0: u32 = 4;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test IP literal")
    }

    fn config() -> RoutingConfig {
        RoutingConfig { per_uplink_tables: true, table_base: 52000, rule_priority: 5200, ..RoutingConfig::default() }
    }

    fn configured() -> Vec<String> {
        vec!["wlan0".into(), "wwan0".into()]
    }

    /// An uplink that is up with `prefixes` and default routes via `gateways`.
    fn uplink(index: u32, name: &str, prefixes: &[(&str, u8)], gateways: &[&str]) -> Uplink {
        let mut prefixes: Vec<(IpAddr, u8)> = prefixes.iter().map(|&(a, l)| (ip(a), l)).collect();
        prefixes.sort();
        let mut addresses: Vec<IpAddr> = prefixes.iter().map(|&(a, _)| a).collect();
        addresses.dedup();
        Uplink {
            index,
            name: name.into(),
            admin_up: true,
            lower_up: true,
            addresses,
            prefixes,
            gateways: gateways.iter().map(|g| ip(g)).collect(),
            has_default_route: !gateways.is_empty(),
            device_default_v4: false,
            device_default_v6: false,
            route_flushes: 0,
        }
    }

    fn snapshot(uplinks: Vec<Uplink>) -> Uplinks {
        uplinks.into_iter().map(|u| (u.name.clone(), u)).collect()
    }

    fn rule(from: &str, table: u32) -> Rule {
        let from = ip(from);
        Rule { from, from_prefix_len: host_len(from), table, priority: 5200 }
    }

    fn route(dst: &str, len: u8, gateway: Option<&str>, oif: u32, table: u32) -> Route {
        Route { dst: ip(dst), prefix_len: len, oif, table: Some(table), src: None, gateway: gateway.map(ip) }
    }

    /// Plans for `snapshot` and applies the diff to a model of the installed state.
    fn step(installed: &mut (Vec<Rule>, Vec<Route>), snapshot: &Uplinks) {
        let changes = diff(&plan(snapshot, &configured(), &config()), &installed.0, &installed.1);
        apply(installed, changes);
    }

    /// Applies `changes` to a model of the installed state, as the reconciler does.
    fn apply(installed: &mut (Vec<Rule>, Vec<Route>), changes: Changes) {
        installed.0.retain(|r| !changes.del_rules.contains(r));
        installed.1.retain(|r| !changes.del_routes.contains(r));
        installed.1.extend(changes.add_routes);
        installed.0.extend(changes.add_rules);
    }

    #[test]
    fn each_configured_uplink_gets_its_table_and_rules_for_both_families() {
        let wlan0 = uplink(WLAN0, "wlan0", &[("198.18.1.2", 24), ("fd00:1::2", 64)], &["198.18.1.1", "fe80::1"]);
        let wwan0 = uplink(WWAN0, "wwan0", &[("198.18.2.2", 24)], &["198.18.2.1"]);
        let eth9 = uplink(9, "eth9", &[("198.18.9.2", 24)], &["198.18.9.1"]);
        let plan = plan(&snapshot(vec![wlan0, wwan0, eth9]), &configured(), &config());
        assert_eq!(plan.rules, [rule("198.18.1.2", 52000), rule("fd00:1::2", 52000), rule("198.18.2.2", 52001)]);
        assert_eq!(plan.rules[1].from_prefix_len, 128);
        assert_eq!(
            plan.routes,
            [
                route("198.18.1.0", 24, None, WLAN0, 52000),
                route("0.0.0.0", 0, Some("198.18.1.1"), WLAN0, 52000),
                route("fd00:1::", 64, None, WLAN0, 52000),
                route("::", 0, Some("fe80::1"), WLAN0, 52000),
                route("198.18.2.0", 24, None, WWAN0, 52001),
                route("0.0.0.0", 0, Some("198.18.2.1"), WWAN0, 52001),
            ],
            "connected networks first, so each gateway is on-link in its table; eth9 is not configured"
        );
    }

    #[test]
    fn device_default_route_without_gateway_and_host_addresses() {
        let mut wwan0 = uplink(WWAN0, "wwan0", &[("198.18.2.2", 32)], &[]);
        wwan0.device_default_v4 = true;
        let plan = plan(&snapshot(vec![wwan0]), &configured(), &config());
        assert_eq!(plan.rules, [rule("198.18.2.2", 52001)]);
        // A /32 has no network to add.
        assert_eq!(plan.routes, [route("0.0.0.0", 0, None, WWAN0, 52001)]);
    }

    #[test]
    fn an_address_without_a_default_route_gets_its_rule_and_network_only() {
        let plan = plan(&snapshot(vec![uplink(WLAN0, "wlan0", &[("198.18.1.2", 24)], &[])]), &configured(), &config());
        assert_eq!(plan.rules, [rule("198.18.1.2", 52000)]);
        assert_eq!(plan.routes, [route("198.18.1.0", 24, None, WLAN0, 52000)]);
    }

    #[test]
    fn renumbering_moves_the_rule_and_the_routes() {
        let mut installed = (Vec::new(), Vec::new());
        let before = snapshot(vec![uplink(WLAN0, "wlan0", &[("198.18.1.2", 24)], &["198.18.1.1"])]);
        step(&mut installed, &before);
        assert_eq!(installed.0, [rule("198.18.1.2", 52000)]);

        // DHCP hands out an address in another network, with another gateway.
        let after = snapshot(vec![uplink(WLAN0, "wlan0", &[("198.18.3.7", 24)], &["198.18.3.1"])]);
        let changes = diff(&plan(&after, &configured(), &config()), &installed.0, &installed.1);
        assert_eq!(changes.del_rules, [rule("198.18.1.2", 52000)]);
        assert_eq!(changes.add_rules, [rule("198.18.3.7", 52000)]);
        assert_eq!(
            changes.del_routes,
            [route("0.0.0.0", 0, Some("198.18.1.1"), WLAN0, 52000), route("198.18.1.0", 24, None, WLAN0, 52000)],
            "the default route goes before the network that made its gateway on-link"
        );
        assert_eq!(
            changes.add_routes,
            [route("198.18.3.0", 24, None, WLAN0, 52000), route("0.0.0.0", 0, Some("198.18.3.1"), WLAN0, 52000)]
        );
        apply(&mut installed, changes);
        assert!(diff(&plan(&after, &configured(), &config()), &installed.0, &installed.1).is_empty(), "converged");
    }

    #[test]
    fn same_network_new_address_changes_only_the_rule() {
        let mut installed = (Vec::new(), Vec::new());
        let before = snapshot(vec![uplink(WLAN0, "wlan0", &[("198.18.1.2", 24)], &["198.18.1.1"])]);
        step(&mut installed, &before);
        let after = snapshot(vec![uplink(WLAN0, "wlan0", &[("198.18.1.9", 24)], &["198.18.1.1"])]);
        let changes = diff(&plan(&after, &configured(), &config()), &installed.0, &installed.1);
        assert_eq!(
            changes,
            Changes {
                del_rules: vec![rule("198.18.1.2", 52000)],
                add_rules: vec![rule("198.18.1.9", 52000)],
                ..Changes::default()
            }
        );
    }

    #[test]
    fn uplink_gone_removes_everything_of_it() {
        let mut installed = (Vec::new(), Vec::new());
        let both = snapshot(vec![
            uplink(WLAN0, "wlan0", &[("198.18.1.2", 24), ("fd00:1::2", 64)], &["198.18.1.1", "fd00:1::1"]),
            uplink(WWAN0, "wwan0", &[("198.18.2.2", 24)], &["198.18.2.1"]),
        ]);
        step(&mut installed, &both);
        assert_eq!((installed.0.len(), installed.1.len()), (3, 6));

        let mut only_wwan0 = both.clone();
        only_wwan0.remove("wlan0");
        let changes = diff(&plan(&only_wwan0, &configured(), &config()), &installed.0, &installed.1);
        assert_eq!(changes.del_rules.len(), 2);
        assert_eq!(changes.del_routes.len(), 4);
        assert!(
            changes.del_rules.iter().all(|r| r.table == 52000) && changes.del_routes.iter().all(|r| r.oif == WLAN0)
        );
        assert!(changes.add_rules.is_empty() && changes.add_routes.is_empty());

        // And with no uplink at all, nothing of ours is wanted.
        let changes = diff(&plan(&Uplinks::new(), &configured(), &config()), &installed.0, &installed.1);
        assert_eq!((changes.del_rules.len(), changes.del_routes.len()), (3, 6));
    }

    #[test]
    fn link_down_drops_the_routes_but_keeps_the_rules() {
        let mut wlan0 = uplink(WLAN0, "wlan0", &[("198.18.1.2", 24)], &["198.18.1.1"]);
        let mut installed = (Vec::new(), Vec::new());
        step(&mut installed, &snapshot(vec![wlan0.clone()]));
        wlan0.admin_up = false;
        wlan0.gateways.clear();
        let changes = diff(&plan(&snapshot(vec![wlan0.clone()]), &configured(), &config()), &installed.0, &installed.1);
        assert!(changes.del_rules.is_empty() && changes.del_routes.len() == 2, "{changes:?}");
        apply(&mut installed, changes);

        // Back up: the routes the kernel flushed are added again, not believed present.
        wlan0.admin_up = true;
        wlan0.gateways = vec![ip("198.18.1.1")];
        let changes = diff(&plan(&snapshot(vec![wlan0]), &configured(), &config()), &installed.0, &installed.1);
        assert_eq!(changes.add_routes.len(), 2);
    }

    /// Down and up again in one snapshot: the plan is the same, but the kernel flushed the IPv4
    /// routes; the dump of our tables shows it, and they are added again.
    #[test]
    fn routes_the_kernel_dropped_silently_are_added_again() {
        let snapshot = snapshot(vec![uplink(WLAN0, "wlan0", &[("198.18.1.2", 24)], &["198.18.1.1"])]);
        let plan = plan(&snapshot, &configured(), &config());
        let installed_rules = plan.rules.clone();
        let installed_routes = plan.routes.clone();
        assert!(diff_with_kernel(&plan, &installed_rules, &installed_routes, &installed_routes).is_empty());

        let changes = diff_with_kernel(&plan, &installed_rules, &installed_routes, &[]);
        assert_eq!(changes.add_routes, plan.routes, "in order: connected network, then default");
        assert!(changes.del_routes.is_empty() && changes.add_rules.is_empty() && changes.del_rules.is_empty());

        // Gone from the kernel and no longer wanted: deleted (a no-op) so the record goes too.
        let changes = diff_with_kernel(&Plan::default(), &installed_rules, &installed_routes, &[]);
        assert_eq!(changes.del_routes.len(), 2);
    }

    #[test]
    fn last_ipv4_address_gone_drops_ipv4_routes_only() {
        let wlan0 = uplink(WLAN0, "wlan0", &[("fd00:1::2", 64)], &["fd00:1::1"]);
        let plan = plan(&snapshot(vec![wlan0]), &configured(), &config());
        assert!(plan.routes.iter().all(|r| r.dst.is_ipv6()), "{plan:?}");
        assert_eq!(plan.rules, [rule("fd00:1::2", 52000)]);
    }

    #[test]
    fn source_address_is_of_the_servers_family() {
        let wlan0 = uplink(WLAN0, "wlan0", &[("198.18.1.2", 24), ("fd00:1::2", 64)], &[]);
        let uplinks = snapshot(vec![wlan0]);
        assert_eq!(source_address(&uplinks, "wlan0", ip("198.18.0.1")), Some(ip("198.18.1.2")));
        assert_eq!(source_address(&uplinks, "wlan0", ip("fd00:9::1")), Some(ip("fd00:1::2")));
        assert_eq!(source_address(&uplinks, "wwan0", ip("198.18.0.1")), None);
    }
}
