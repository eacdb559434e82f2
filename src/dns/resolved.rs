//! The systemd-resolved backend: the tunnel's servers set on the TUN's link through resolved's
//! D-Bus API (org.freedesktop.resolve1.Manager, as `resolvectl dns` and NetworkManager do), over
//! zbus. A full tunnel also gets the routing domain `~.` and the default route for DNS, so every name
//! is asked through the tunnel; otherwise the link just has the servers, beside the other links'.
//!
//! Nothing to put back after a crash: resolved drops a link's settings when the link disappears,
//! and the TUN disappears with the client's process.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt as _;
use std::time::Duration;

use zbus::names::BusName;

use super::DnsError;
use crate::control::DnsStatus;

const SERVICE: &str = "org.freedesktop.resolve1";
/// Its runtime directory: resolved is installed and has run since boot (systemd's own
/// `resolvconf` and wg-quick's helpers look here first).
const RUNTIME_DIR: &str = "/run/systemd/resolve";
/// How long the bus may take to answer the detection; a hung bus means "not usable".
const DETECT_TIMEOUT: Duration = Duration::from_secs(3);

#[zbus::proxy(
    interface = "org.freedesktop.resolve1.Manager",
    default_service = "org.freedesktop.resolve1",
    default_path = "/org/freedesktop/resolve1",
    gen_blocking = false
)]
trait Manager {
    #[zbus(name = "SetLinkDNS")]
    fn set_link_dns(&self, ifindex: i32, addresses: &[(i32, Vec<u8>)]) -> zbus::Result<()>;

    /// Each domain with whether it is routing-only (`~`).
    fn set_link_domains(&self, ifindex: i32, domains: &[(&str, bool)]) -> zbus::Result<()>;

    fn set_link_default_route(&self, ifindex: i32, enable: bool) -> zbus::Result<()>;

    fn revert_link(&self, ifindex: i32) -> zbus::Result<()>;

    /// "stub", "static", "uplink", "foreign" or "missing": how /etc/resolv.conf relates to resolved.
    #[zbus(property)]
    fn resolv_conf_mode(&self) -> zbus::Result<String>;
}

/// `Ok`: resolved runs and serves this network namespace. `Err`: why the resolv.conf backend is
/// used instead.
pub async fn detect() -> Result<(), String> {
    if !std::path::Path::new(RUNTIME_DIR).is_dir() {
        return Err(format!("systemd-resolved is not running: no {RUNTIME_DIR}"));
    }
    match tokio::time::timeout(DETECT_TIMEOUT, ask_bus()).await {
        Ok(answer) => answer,
        Err(_) => Err(format!("the system bus did not answer within {DETECT_TIMEOUT:?}")),
    }
}

async fn ask_bus() -> Result<(), String> {
    let conn = zbus::Connection::system().await.map_err(|e| format!("cannot reach the system bus: {e}"))?;
    let bus = zbus::fdo::DBusProxy::new(&conn).await.map_err(|e| format!("the system bus: {e}"))?;
    let name = BusName::try_from(SERVICE).expect("a valid bus name");
    if !bus.name_has_owner(name.clone()).await.map_err(|e| format!("the system bus: {e}"))? {
        return Err(format!("systemd-resolved is not running: nobody owns {SERVICE} on the system bus"));
    }
    // resolved configures the links of its own network namespace only: a client started in another
    // one (`ip netns exec`, a container sharing the host's bus) must write its own resolv.conf.
    if let Ok(pid) = bus.get_connection_unix_process_id(name).await {
        let ns = |pid: &str| std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| (m.dev(), m.ino()));
        // Unreadable (resolved runs as another user; reading its namespace needs CAP_SYS_PTRACE):
        // assume the common case, one namespace.
        if let (Ok(ours), Ok(theirs)) = (ns("self"), ns(&pid.to_string())) {
            if ours != theirs {
                return Err("systemd-resolved serves another network namespace than this client's".into());
            }
        }
    }
    Ok(())
}

/// The TUN's link while resolved holds the tunnel's servers for it.
pub struct Link {
    conn: zbus::Connection,
    ifindex: i32,
    tun: String,
    servers: Vec<IpAddr>,
    domains: Vec<String>,
}

fn bus(action: impl Into<String>) -> impl FnOnce(zbus::Error) -> DnsError {
    let action = action.into();
    move |source| DnsError::Bus { action, source: Box::new(source) }
}

fn no_such_link(err: &zbus::Error) -> bool {
    matches!(err, zbus::Error::MethodError(name, _, _) if name.as_str() == "org.freedesktop.resolve1.NoSuchLink")
}

impl Link {
    pub async fn apply(tun: &str, servers: &[IpAddr], full_tunnel: bool) -> Result<Self, DnsError> {
        let ifindex = ifindex(tun).ok_or_else(|| DnsError::NoLink { tun: tun.into() })?;
        let conn = zbus::Connection::system().await.map_err(bus("connect to the system bus"))?;
        let manager = ManagerProxy::new(&conn).await.map_err(bus("reach org.freedesktop.resolve1"))?;
        let addresses: Vec<(i32, Vec<u8>)> = servers
            .iter()
            .map(|ip| match ip {
                IpAddr::V4(v4) => (libc::AF_INET, v4.octets().to_vec()),
                IpAddr::V6(v6) => (libc::AF_INET6, v6.octets().to_vec()),
            })
            .collect();
        // resolved learns of the new TUN over rtnetlink, a moment after it appeared: until then it
        // answers NoSuchLink. Bounded: 2 s.
        let mut tries = 0;
        loop {
            match manager.set_link_dns(ifindex, &addresses).await {
                Ok(()) => break,
                Err(err) if no_such_link(&err) && tries < 40 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => return Err(bus(format!("set the DNS servers of {tun}"))(err)),
            }
        }
        let link = Link {
            conn: conn.clone(),
            ifindex,
            tun: tun.into(),
            servers: servers.to_vec(),
            domains: if full_tunnel { vec!["~.".into()] } else { Vec::new() },
        };
        let domains: Vec<(&str, bool)> = link.domains.iter().map(|d| (d.as_str(), true)).collect();
        let configured = async {
            manager
                .set_link_domains(ifindex, &domains)
                .await
                .map_err(bus(format!("set the routing domains of {tun}")))?;
            if full_tunnel {
                manager
                    .set_link_default_route(ifindex, true)
                    .await
                    .map_err(bus(format!("make {tun} the default route for DNS")))?;
            }
            Ok::<(), DnsError>(())
        }
        .await;
        if let Err(err) = configured {
            link.revert().await;
            return Err(err);
        }
        if let Ok(mode) = manager.resolv_conf_mode().await {
            if mode == "foreign" || mode == "missing" {
                tracing::warn!(mode, "dns: /etc/resolv.conf is not systemd-resolved's: programs that read it (rather than asking resolved through nss-resolve) do not see the tunnel's DNS");
            }
        }
        tracing::info!(tun, ifindex, servers = ?servers, domains = ?link.domains, "dns: set on the TUN's link in systemd-resolved");
        Ok(link)
    }

    pub fn status(&self) -> DnsStatus {
        DnsStatus {
            backend: "systemd-resolved".into(),
            servers: self.servers.clone(),
            file: None,
            domains: self.domains.clone(),
        }
    }

    /// Drops the link's settings (also done by resolved itself once the TUN is gone).
    pub async fn revert(self) {
        let reverted = match ManagerProxy::new(&self.conn).await {
            Ok(manager) => manager.revert_link(self.ifindex).await,
            Err(err) => Err(err),
        };
        match reverted {
            Ok(()) => tracing::info!(tun = %self.tun, "dns: the TUN's link settings in systemd-resolved reverted"),
            Err(err) if no_such_link(&err) => {
                tracing::debug!(tun = %self.tun, "dns: the TUN is gone; resolved forgot its link")
            }
            Err(err) => tracing::warn!(tun = %self.tun, %err, "dns: cannot revert the TUN's link in systemd-resolved"),
        }
    }
}

/// The interface index of `name`, if this namespace has such an interface.
fn ifindex(name: &str) -> Option<i32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: if_nametoindex reads the NUL-terminated string we own and keeps no pointer to it.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    i32::try_from(index).ok().filter(|i| *i != 0)
}
