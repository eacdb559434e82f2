//! A full tunnel: `routes` with a default route (`0.0.0.0/0` or `::/0`), beside the default route a
//! DHCP client or a network manager keeps in the main table. Done as wg-quick does it, by policy
//! routing, so nothing of ours is in the main table and whoever rewrites it cannot undo it:
//!
//! * the defaults go into a table of their own, `[routing] tunnel_table`;
//! * rule `not fwmark MARK lookup TUNNEL_TABLE` sends every packet without the relay's mark there,
//!   and the relay's sockets carry the mark (SO_MARK), so the relay never follows a default route
//!   into its own TUN;
//! * rule `lookup main suppress_prefixlength 0`, just before it, keeps every main-table route but
//!   the defaults: the LAN, the uplinks' own networks and more specific routes stay reachable;
//! * rule `to SERVER lookup main`, first, for each server address: the server is reached as
//!   before, and the kernel's reverse-path check (strict `rp_filter`) accepts its answers on the
//!   uplink (a lookup of the server's address would otherwise name the TUN).
//!
//! The rules take the three priorities after `[routing] rule_priority`, for both families.
//!
//! A full tunnel is one for both families, so that nothing leaks around it: each family's default
//! goes into the TUN when `virtual_ips` has an address of that family; when it has none, the
//! family's default in the tunnel table is `unreachable`, so apps fail at once (and fall back to
//! the other family) instead of leaving through an uplink beside the tunnel.
//!
//! [`plan`] is sans-IO; [`start`] installs the plan, puts back what went missing at every uplink
//! change (a network manager that flushed rules), and [`FullTunnel::stop`] removes exactly what it
//! added. [`clear_leftovers`] runs at every client start, with or without a full tunnel: a daemon
//! killed by SIGKILL left its rules, and its table's `unreachable` routes would go on blocking.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use roamtun_netlink::{error_chain, Installed, Netlink, NetlinkError, Route, TableRule, UnreachableRoute};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{ClientConfig, RoutingConfig, TUNNEL_RULES};
use crate::routing::Uplinks;

/// The kernel's main table.
pub const MAIN_TABLE: u32 = 254;

/// What a full tunnel installs, in the order to add it (routes before the rules that lead to them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub routes: Vec<Route>,
    pub unreachable: Vec<UnreachableRoute>,
    pub rules: Vec<TableRule>,
}

/// The plan for `config` with the TUN at index `tun`; empty when `config` is no full tunnel.
pub fn plan(config: &ClientConfig, tun: u32) -> Plan {
    let mut plan = Plan::default();
    if !config.full_tunnel() {
        return plan;
    }
    let r = &config.routing;
    let [to_server, suppress, unless_marked] = priorities(r);
    for v6 in [false, true] {
        let any = if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) };
        match config.virtual_ips.iter().find(|a| a.is_ipv6() == v6) {
            Some(&src) => plan.routes.push(Route {
                dst: any,
                prefix_len: 0,
                oif: tun,
                table: Some(r.tunnel_table),
                src: Some(src),
                gateway: None,
            }),
            None => plan.unreachable.push(UnreachableRoute { dst: any, prefix_len: 0, table: r.tunnel_table }),
        }
        let rule = |to, unless_mark, suppress_prefix_len, table, priority| TableRule {
            v6,
            to,
            unless_mark,
            suppress_prefix_len,
            table,
            priority,
        };
        let mut servers: Vec<IpAddr> =
            config.server.addresses.iter().map(|a| a.ip()).filter(|ip| ip.is_ipv6() == v6).collect();
        servers.dedup();
        for server in servers {
            let host = if v6 { 128 } else { 32 };
            plan.rules.push(rule(Some((server, host)), None, None, MAIN_TABLE, to_server));
        }
        plan.rules.push(rule(None, None, Some(0), MAIN_TABLE, suppress));
        plan.rules.push(rule(None, Some(r.fwmark), None, r.tunnel_table, unless_marked));
    }
    plan
}

/// The rule priorities of a full tunnel: `to SERVER`, `suppress_prefixlength 0`, `not fwmark`.
pub fn priorities(r: &RoutingConfig) -> [u32; TUNNEL_RULES as usize] {
    [r.rule_priority + 1, r.rule_priority + 2, r.rule_priority + 3]
}

/// Whether `rule` is one a full tunnel of `r` installs (for removing what a killed daemon left).
pub fn is_ours(r: &RoutingConfig, rule: &TableRule) -> bool {
    priorities(r).contains(&rule.priority) && (rule.table == MAIN_TABLE || rule.table == r.tunnel_table)
}

/// The mark the relay's sockets carry, when `config` is a full tunnel.
pub fn relay_mark(config: &ClientConfig) -> Option<u32> {
    config.full_tunnel().then_some(config.routing.fwmark)
}

/// Removes the rules and the tunnel table's routes that a client killed before its cleanup left.
pub async fn clear_leftovers(r: &RoutingConfig) -> Result<usize, NetlinkError> {
    let netlink = Netlink::connect().await?;
    let mut removed = 0;
    for rule in netlink.table_rules().await? {
        if is_ours(r, &rule) {
            netlink.del_table_rule(&rule).await?;
            removed += 1;
        }
    }
    removed += netlink.flush_table(r.tunnel_table).await?;
    if removed > 0 {
        tracing::info!(
            removed,
            table = r.tunnel_table,
            "full tunnel: removed the rules and routes a previous daemon left behind"
        );
    }
    Ok(removed)
}

/// The installed full tunnel; [`FullTunnel::stop`] removes it.
pub struct FullTunnel {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Installs `plan` and keeps it in place at every change of `uplinks` (the trigger to check that
/// nothing took our rules or routes away). An error at install removes what was added.
pub async fn start(plan: Plan, uplinks: Option<watch::Receiver<Uplinks>>) -> Result<FullTunnel, NetlinkError> {
    let netlink = Netlink::connect().await?;
    let mut installed = Installed::new();
    if let Err(err) = install(&netlink, &mut installed, &plan).await {
        installed.remove_all(&netlink).await;
        return Err(err);
    }
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut uplinks = uplinks;
        loop {
            let changed = async {
                match uplinks.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut stopped => break,
                ok = changed => {
                    if !ok {
                        uplinks = None;
                        continue;
                    }
                    match restore(&netlink, &mut installed, &plan).await {
                        Ok(0) => {}
                        Ok(restored) => tracing::warn!(restored, "full tunnel: put back rules or routes that were removed by someone else"),
                        Err(err) => tracing::warn!(error = %error_chain(&err), "full tunnel: cannot check its rules and routes; tried again at the next uplink change"),
                    }
                }
            }
        }
        installed.remove_all(&netlink).await;
    });
    Ok(FullTunnel { stop, task })
}

async fn install(netlink: &Netlink, installed: &mut Installed, plan: &Plan) -> Result<(), NetlinkError> {
    for route in &plan.routes {
        installed.add_route(netlink, route.clone()).await?;
    }
    for route in &plan.unreachable {
        installed.add_unreachable(netlink, route.clone()).await?;
    }
    for rule in &plan.rules {
        installed.add_table_rule(netlink, rule.clone()).await?;
    }
    Ok(())
}

/// Adds again what the kernel no longer has; returns how many rules and routes that was.
async fn restore(netlink: &Netlink, installed: &mut Installed, plan: &Plan) -> Result<usize, NetlinkError> {
    let rules = netlink.table_rules().await?;
    let mut routes = Vec::new();
    for table in plan.routes.iter().filter_map(|r| r.table).chain(plan.unreachable.first().map(|u| u.table)) {
        if !routes.iter().any(|(t, _)| *t == table) {
            routes.push((table, netlink.table_routes(table).await?));
        }
    }
    let present = |route: &Route| routes.iter().any(|(_, rs)| rs.contains(route));
    let missing =
        plan.routes.iter().filter(|r| !present(r)).count() + plan.rules.iter().filter(|r| !rules.contains(r)).count();
    if missing > 0 {
        // Every add is idempotent, the unreachable routes too (a table dump lists unicast routes only).
        install(netlink, installed, plan).await?;
    }
    Ok(missing)
}

impl FullTunnel {
    /// Removes every rule and route the full tunnel added; returns when done.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(err) = self.task.await {
            tracing::warn!(%err, "full tunnel task failed; its rules and routes may remain");
        }
    }
}

/// What `--check` says a full tunnel of `config` will install (the TUN's index is not known yet).
pub fn describe(config: &ClientConfig) -> Vec<String> {
    if !config.full_tunnel() {
        return Vec::new();
    }
    let r = &config.routing;
    let mut out = Vec::new();
    for (v6, name) in [(false, "IPv4"), (true, "IPv6")] {
        let default = if v6 { "::/0" } else { "0.0.0.0/0" };
        out.push(match config.virtual_ips.iter().find(|a| a.is_ipv6() == v6) {
            Some(src) => format!("full tunnel {name}: {default} into {} (source {src}) in table {}", config.tun.name, r.tunnel_table),
            None => format!(
                "full tunnel {name}: {default} unreachable in table {} (no {name} virtual IP: blocked rather than leaked around the tunnel)",
                r.tunnel_table
            ),
        });
    }
    let [to_server, suppress, unless_marked] = priorities(r);
    out.push(format!(
        "full tunnel rules: {to_server} `to SERVER lookup main` (each server address), {suppress} `lookup main \
         suppress_prefixlength 0`, {unless_marked} `not fwmark {:#x} lookup {}`; the relay's sockets are marked {:#x}, \
         so the server is reached through the uplinks whatever the tunnel routes",
        r.fwmark, r.tunnel_table, r.fwmark
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(virtual_ips: &str, routes: &str) -> ClientConfig {
        let key = crate::keys::PrivateKey::generate().unwrap().to_base64().to_string();
        let server = crate::keys::PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{key}\"\nvirtual_ips = [{virtual_ips}]\nroutes = [{routes}]\n[server]\n\
             address = [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]\npublic_key = \"{server}\"\n"
        );
        ClientConfig::from_toml(Path::new("c.toml"), &text).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn both_families_go_into_the_tunnel_table_with_wg_quicks_rules() {
        let c = config("\"100.64.0.2\", \"fd00:64::2\"", "\"0.0.0.0/0\", \"::/0\"");
        let plan = plan(&c, 7);
        assert!(plan.unreachable.is_empty());
        assert_eq!(plan.routes.len(), 2);
        assert!(plan.routes.iter().all(|r| r.prefix_len == 0 && r.oif == 7 && r.table == Some(52100)));
        assert_eq!(plan.routes[0].src, Some(ip("100.64.0.2")));
        assert_eq!(plan.routes[1].src, Some(ip("fd00:64::2")));
        let shown: Vec<String> = plan.rules.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "ipv4 to 198.18.1.1/32 lookup 254 priority 5201",
                "ipv4 lookup 254 suppress_prefixlength 0 priority 5202",
                "ipv4 not fwmark 0x5254 lookup 52100 priority 5203",
                "ipv6 to 2001:2::1/128 lookup 254 priority 5201",
                "ipv6 lookup 254 suppress_prefixlength 0 priority 5202",
                "ipv6 not fwmark 0x5254 lookup 52100 priority 5203",
            ]
        );
        assert!(plan.rules.iter().all(|r| is_ours(&c.routing, r)));
        assert_eq!(relay_mark(&c), Some(0x5254));
    }

    #[test]
    fn a_family_without_a_virtual_ip_is_unreachable_not_leaked() {
        // IPv4 only, although the host may well have IPv6: IPv6 is blocked, whichever default is named.
        for routes in ["\"0.0.0.0/0\"", "\"0.0.0.0/0\", \"::/0\""] {
            let plan = plan(&config("\"100.64.0.2\"", routes), 7);
            assert_eq!(plan.routes.len(), 1);
            assert!(plan.routes[0].dst.is_ipv4());
            assert_eq!(plan.unreachable, [UnreachableRoute { dst: ip("::"), prefix_len: 0, table: 52100 }]);
            assert_eq!(plan.rules.iter().filter(|r| r.v6).count(), 3, "IPv6 is steered to the table too");
        }
        // An IPv6 virtual IP takes IPv6 into the tunnel even when only 0.0.0.0/0 is named.
        let plan = plan(&config("\"100.64.0.2\", \"fd00:64::2\"", "\"0.0.0.0/0\""), 7);
        assert_eq!(plan.routes.len(), 2);
        assert!(plan.unreachable.is_empty());
    }

    #[test]
    fn no_default_route_no_full_tunnel() {
        let c = config("\"100.64.0.2\"", "\"100.64.0.0/10\"");
        assert_eq!(plan(&c, 7), Plan::default());
        assert_eq!(relay_mark(&c), None);
        assert!(describe(&c).is_empty());
    }

    #[test]
    fn foreign_rules_are_not_ours() {
        let r = RoutingConfig::default();
        let rule = TableRule {
            v6: false,
            to: None,
            unless_mark: None,
            suppress_prefix_len: Some(0),
            table: MAIN_TABLE,
            priority: 5202,
        };
        assert!(is_ours(&r, &rule));
        assert!(!is_ours(&r, &TableRule { priority: 5200, ..rule.clone() }));
        assert!(!is_ours(&r, &TableRule { table: 100, ..rule }));
    }
}
