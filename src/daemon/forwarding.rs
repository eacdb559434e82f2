//! Forwarding for packets that only pass through this host, and the NAT that goes with it: a server
//! in exit mode (clients out of its exit interface), a client on a router (its LAN into the tunnel).
//! Both put back exactly what they changed.

use anyhow::Context as _;

/// Lets the kernel forward packets that pass through this host (a server's clients to beyond it, a
/// router's LAN hosts into its TUN), and puts the previous settings back when dropped. The previous
/// settings are also written to `state` first, so that the next start can put them back after a
/// daemon that was killed (SIGKILL) could not.
///
/// With forwarding on, the kernel ignores router advertisements on an interface whose `accept_ra`
/// is 1, and turning forwarding on drops the default routes they gave: on each interface towards the
/// internet (a server's exit interface, a router's uplinks), `accept_ra` 1 becomes 2 (accept them
/// while forwarding) first, so its IPv6 address and default route stay.
pub(super) struct Forwarding {
    /// In the order they were changed.
    previous: Vec<(String, String)>,
    state: std::path::PathBuf,
}

impl Forwarding {
    const SYSCTLS: [&'static str; 2] = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

    /// The `accept_ra` setting of `interface`.
    fn accept_ra(interface: &str) -> String {
        format!("/proc/sys/net/ipv6/conf/{interface}/accept_ra")
    }

    /// Whether a line of a state file names a setting this type changes (and nothing else).
    fn ours(path: &str) -> bool {
        Self::SYSCTLS.contains(&path)
            || path
                .strip_prefix("/proc/sys/net/ipv6/conf/")
                .and_then(|rest| rest.strip_suffix("/accept_ra"))
                .is_some_and(|name| !name.is_empty() && !name.contains('/') && name != "." && name != "..")
    }

    /// `purpose` starts every error and log line ("exit mode", "lan").
    pub(super) fn enable(
        state: std::path::PathBuf,
        upstream: &[String],
        purpose: &'static str,
    ) -> anyhow::Result<Self> {
        if let Ok(left) = std::fs::read_to_string(&state) {
            // A daemon before us changed them and was killed before it could restore them; put
            // them back last change first.
            for (path, value) in left.lines().filter_map(|l| l.split_once(' ')).collect::<Vec<_>>().into_iter().rev() {
                if Self::ours(path) && std::fs::write(path, value).is_ok() {
                    tracing::info!(%path, %value, "restored the forwarding setting a killed daemon left changed");
                }
            }
        }
        if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("{purpose}: cannot create {}", dir.display()))?;
        }
        let mut changes: Vec<(String, &str)> = Vec::new();
        for interface in upstream {
            let path = Self::accept_ra(interface);
            match std::fs::read_to_string(&path) {
                Ok(value) if value.trim() == "1" => changes.push((path, "2")),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%interface, %err, "{purpose}: cannot read the accept_ra of {interface}; is it there (and IPv6 on)?")
                }
            }
        }
        changes.extend(Self::SYSCTLS.iter().map(|p| (p.to_string(), "1")));
        let mut fwd = Forwarding { previous: Vec::new(), state };
        for (path, _) in &changes {
            let before = std::fs::read_to_string(path).with_context(|| format!("{purpose}: cannot read {path}"))?;
            fwd.previous.push((path.clone(), before.trim().to_string()));
        }
        let record: String = fwd.previous.iter().map(|(path, before)| format!("{path} {before}\n")).collect();
        std::fs::write(&fwd.state, record)
            .with_context(|| format!("{purpose}: cannot record the forwarding settings in {}", fwd.state.display()))?;
        for (path, value) in &changes {
            std::fs::write(path, value).with_context(|| format!("{purpose}: cannot write {value} to {path}"))?;
        }
        Ok(fwd)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (path, before) in self.previous.iter().rev() {
            if let Err(err) = std::fs::write(path, before) {
                tracing::warn!(%path, %err, "cannot restore the forwarding setting");
            }
        }
        let _ = std::fs::remove_file(&self.state);
    }
}

/// A masquerade's nftables table of our own ([`roamtun_netlink::Masquerade`]), deleted when dropped.
/// The kernel deletes the table by itself if the daemon dies without that (the table is owned by
/// our netlink socket).
pub(super) struct NatRules {
    nft: roamtun_netlink::Nftables,
    table: String,
}

impl NatRules {
    /// `purpose` and `what` make the log lines ("exit mode", "clients masqueraded out of eth0").
    pub(super) fn install(
        nat: &roamtun_netlink::Masquerade,
        purpose: &'static str,
        what: &str,
    ) -> anyhow::Result<Self> {
        let table = nat.table();
        let mut nft =
            roamtun_netlink::Nftables::connect().with_context(|| format!("{purpose}: cannot reach nftables"))?;
        let leftover = nft.install(nat).with_context(|| {
            format!("{purpose}: cannot install the masquerade and forward rules in nftables table inet {table}")
        })?;
        if leftover {
            tracing::info!(%table, "{purpose}: removed the nftables table a previous daemon left behind");
        }
        let prefixes: Vec<String> = nat.prefixes.iter().map(|(addr, len)| format!("{addr}/{len}")).collect();
        tracing::info!(%table, ?prefixes, "{purpose}: {what}");
        Ok(NatRules { nft, table })
    }
}

impl Drop for NatRules {
    fn drop(&mut self) {
        if let Err(err) = self.nft.delete(&self.table) {
            tracing::warn!(table = %self.table, error = %format!("{:#}", anyhow::Error::new(err)), "cannot delete the masquerade's nftables table");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_names_only_the_forwarding_settings() {
        assert!(Forwarding::ours("/proc/sys/net/ipv4/ip_forward"));
        assert!(Forwarding::ours("/proc/sys/net/ipv6/conf/all/forwarding"));
        assert!(Forwarding::ours(&Forwarding::accept_ra("eth0")));
        // Whatever else a damaged or forged file says is not written.
        for other in [
            "/proc/sys/net/ipv6/conf/eth0/forwarding",
            "/proc/sys/net/ipv6/conf/../accept_ra",
            "/proc/sys/net/ipv6/conf//accept_ra",
            "/proc/sys/net/ipv6/conf/a/b/accept_ra",
            "/etc/passwd",
        ] {
            assert!(!Forwarding::ours(other), "{other}");
        }
    }
}
