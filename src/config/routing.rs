//! `[routing]`: the client's per-uplink tables and rules (src/routing.rs installs them), and where a
//! full tunnel's table, rules and mark go (src/full_tunnel.rs).

use std::path::Path;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// Per-uplink policy routing (src/routing.rs): a routing table per configured uplink and a `from
/// ADDRESS lookup TABLE` rule per address of it. A full tunnel (src/full_tunnel.rs) takes the table
/// `tunnel_table`, the mark `fwmark` and the three rule priorities after `rule_priority`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Off by default: it adds rules and tables to the host's routing.
    pub per_uplink_tables: bool,
    /// The table of the first uplink in `uplinks`; the next ones follow.
    pub table_base: u32,
    /// Priority of the `from` rules; below the main table's rule (32766), so they are consulted first.
    /// A full tunnel's rules take the next three.
    pub rule_priority: u32,
    /// A full tunnel's table: its default routes into the TUN (or unreachable), consulted for every
    /// packet without `fwmark`.
    pub tunnel_table: u32,
    /// The mark (SO_MARK) of the relay's sockets in a full tunnel: marked packets skip
    /// `tunnel_table`, so the relay never follows a default route into its own TUN.
    pub fwmark: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            per_uplink_tables: false,
            table_base: 52000,
            rule_priority: 5200,
            tunnel_table: DEFAULT_TUNNEL_TABLE,
            fwmark: DEFAULT_FWMARK,
        }
    }
}

/// `tunnel_table` unless configured: clear of the per-uplink tables' default range.
pub const DEFAULT_TUNNEL_TABLE: u32 = 52100;
/// `fwmark` unless configured: "RT" in ASCII, clear of the marks wg-quick (0xca6c), Tailscale
/// (0x40000, 0x80000) and Kubernetes (0x4000, 0x8000) use.
pub const DEFAULT_FWMARK: u32 = 0x5254;
/// How many rule priorities after `rule_priority` a full tunnel takes.
pub const TUNNEL_RULES: u32 = 3;

/// The kernel's own tables: unspec (0), default (253), main (254), local (255).
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// The rule priority of the kernel's `lookup main` rule.
const MAIN_RULE_PRIORITY: u32 = 32766;

/// `[routing]` against the number of configured uplinks (one table each).
pub(super) fn check_routing(path: &Path, r: &RoutingConfig, uplinks: usize) -> Result<(), ConfigError> {
    if r.per_uplink_tables && uplinks == 0 {
        return Err(invalid(
            path,
            "routing.per_uplink_tables needs uplinks: the tables are per configured uplink".into(),
        ));
    }
    let count = u32::try_from(uplinks.max(1)).unwrap_or(u32::MAX);
    let Some(last) = r.table_base.checked_add(count - 1) else {
        return Err(invalid(path, format!("routing.table_base = {} leaves no room for {count} tables", r.table_base)));
    };
    if let Some(reserved) = RESERVED_TABLES.iter().find(|t| (r.table_base..=last).contains(t)) {
        return Err(invalid(
            path,
            format!(
                "routing.table_base = {}: the uplinks' tables {}..={last} include the kernel's table {reserved} \
                 (0, 253 default, 254 main, 255 local are reserved)",
                r.table_base, r.table_base
            ),
        ));
    }
    if r.rule_priority == 0 || r.rule_priority + TUNNEL_RULES >= MAIN_RULE_PRIORITY {
        return Err(invalid(
            path,
            format!(
                "routing.rule_priority = {} must be 1 to {}: 0 is the local table's rule, and the rules (a full \
                 tunnel's at the next {TUNNEL_RULES}) must come before the main table's ({MAIN_RULE_PRIORITY})",
                r.rule_priority,
                MAIN_RULE_PRIORITY - 1 - TUNNEL_RULES
            ),
        ));
    }
    if RESERVED_TABLES.contains(&r.tunnel_table) {
        return Err(invalid(
            path,
            format!(
                "routing.tunnel_table = {} is one of the kernel's tables (0, 253 default, 254 main, 255 local)",
                r.tunnel_table
            ),
        ));
    }
    if r.per_uplink_tables && (r.table_base..=last).contains(&r.tunnel_table) {
        return Err(invalid(
            path,
            format!(
                "routing.tunnel_table = {} is one of the uplinks' tables {}..={last}: give it a table of its own",
                r.tunnel_table, r.table_base
            ),
        ));
    }
    if r.fwmark == 0 {
        return Err(invalid(path, "routing.fwmark = 0 is every unmarked packet's mark: choose another".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::test_support::key;
    use crate::config::ClientConfig;
    use crate::keys::PrivateKey;

    #[test]
    fn routing_is_off_by_default_and_checked() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let base = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n\
             uplinks = [\"wlan0\", \"wwan0\"]\n[server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let load = |extra: &str| ClientConfig::from_toml(Path::new("c.toml"), &format!("{base}{extra}"));
        assert_eq!(load("").unwrap().routing, RoutingConfig::default());
        assert!(!RoutingConfig::default().per_uplink_tables);
        let on = load("[routing]\nper_uplink_tables = true\ntable_base = 100\nrule_priority = 900\n").unwrap();
        assert_eq!(
            on.routing,
            RoutingConfig { per_uplink_tables: true, table_base: 100, rule_priority: 900, ..RoutingConfig::default() }
        );

        let err = load("[routing]\ntable_base = 252\n").unwrap_err().to_string();
        assert!(err.contains("tables 252..=253 include the kernel's table 253"), "{err}");
        let err = load("[routing]\ntable_base = 4294967295\n").unwrap_err().to_string();
        assert!(err.contains("leaves no room for 2 tables"), "{err}");
        for priority in [0, 32763, 32766] {
            let err = load(&format!("[routing]\nrule_priority = {priority}\n")).unwrap_err().to_string();
            assert!(err.contains("must be 1 to 32762"), "{err}");
        }
        let marked = load("[routing]\ntunnel_table = 200\nfwmark = 0xca6d\n").unwrap().routing;
        assert_eq!((marked.tunnel_table, marked.fwmark), (200, 0xca6d));
        let err = load("[routing]\ntunnel_table = 254\n").unwrap_err().to_string();
        assert!(err.contains("routing.tunnel_table = 254 is one of the kernel's tables"), "{err}");
        let err = load("[routing]\nper_uplink_tables = true\ntunnel_table = 52001\n").unwrap_err().to_string();
        assert!(err.contains("one of the uplinks' tables 52000..=52001"), "{err}");
        let err = load("[routing]\nfwmark = 0\n").unwrap_err().to_string();
        assert!(err.contains("routing.fwmark = 0"), "{err}");
        let err = load("[routing]\ntable = 5\n").unwrap_err().to_string();
        assert!(err.contains("table") && err.contains("line"), "{err}");
        let unbound = base.replace("uplinks = [\"wlan0\", \"wwan0\"]\n", "");
        let err =
            ClientConfig::from_toml(Path::new("c.toml"), &format!("{unbound}[routing]\nper_uplink_tables = true\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("per_uplink_tables needs uplinks"), "{err}");
    }
}
