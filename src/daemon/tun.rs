//! The TUN device and what we install around it (addresses, routes), removed again on shutdown.

use std::net::IpAddr;
use std::ops::Deref;

use roamtun_netlink::{Installed, Netlink, NetlinkError, Route};

use crate::config::Prefix;

/// Why the TUN could not be set up; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("roamtun needs CAP_NET_ADMIN to create TUN device {name}: run it as root")]
    Permission { name: String },
    #[error("/dev/net/tun is missing: load the tun kernel module (modprobe tun)")]
    NoTunDevice,
    #[error("cannot create TUN device {name}")]
    Create {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("roamtun needs CAP_NET_ADMIN to configure {name}: run it as root")]
    NetlinkPermission {
        name: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot configure TUN device {name}")]
    Netlink {
        name: String,
        #[source]
        source: NetlinkError,
    },
}

/// A TUN device with its addresses and routes; [`Tun::remove`] undoes what we installed.
pub struct Tun {
    device: tun_rs::AsyncDevice,
    name: String,
    netlink: Netlink,
    installed: tokio::sync::Mutex<Installed>,
}

impl Deref for Tun {
    type Target = tun_rs::AsyncDevice;
    fn deref(&self) -> &Self::Target {
        &self.device
    }
}

impl Tun {
    /// Creates `name`, gives it `addresses` (host addresses, /32 or /128) and routes `routes` into it.
    pub async fn create(name: &str, mtu: u16, addresses: &[IpAddr], routes: &[Prefix]) -> Result<Tun, TunError> {
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTunDevice);
        }
        let device = tun_rs::DeviceBuilder::new().name(name).mtu(mtu).build_async().map_err(|source| {
            if source.kind() == std::io::ErrorKind::PermissionDenied {
                TunError::Permission { name: name.into() }
            } else {
                TunError::Create { name: name.into(), source }
            }
        })?;
        let nl_err = |source: NetlinkError| {
            if source.is_permission_denied() {
                TunError::NetlinkPermission { name: name.into(), source }
            } else {
                TunError::Netlink { name: name.into(), source }
            }
        };
        let netlink = Netlink::connect().await.map_err(nl_err)?;
        let tun = Tun { device, name: name.into(), netlink, installed: tokio::sync::Mutex::new(Installed::new()) };
        if let Err(err) = tun.configure(mtu, addresses, routes).await {
            tun.remove().await;
            return Err(nl_err(err));
        }
        Ok(tun)
    }

    async fn configure(&self, mtu: u16, addresses: &[IpAddr], routes: &[Prefix]) -> Result<(), NetlinkError> {
        let index = self.netlink.link_index(&self.name).await?;
        let mut installed = self.installed.lock().await;
        self.netlink.set_mtu(index, u32::from(mtu)).await?;
        self.netlink.set_link_up(index).await?;
        for addr in addresses {
            let len = if addr.is_ipv4() { 32 } else { 128 };
            installed.add_address(&self.netlink, index, *addr, len).await?;
        }
        for prefix in routes {
            // Prefer our own virtual IP of the same family as the source, so apps that did not bind
            // use the stable address.
            let src = addresses.iter().find(|a| a.is_ipv4() == prefix.addr.is_ipv4()).copied();
            let route = Route { dst: prefix.addr, prefix_len: prefix.len, oif: index, table: None, src, gateway: None };
            installed.add_route(&self.netlink, route).await?;
            tracing::debug!(tun = %self.name, %prefix, "route installed");
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Removes the routes and addresses we installed. The device itself goes when its last fd closes.
    pub async fn remove(&self) {
        self.installed.lock().await.remove_all(&self.netlink).await;
    }
}

/// The interface that holds `ip`, for showing which uplink carries the relay.
pub fn interface_of(ip: IpAddr) -> Option<String> {
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free below with freeifaddrs; we only read it between.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return None;
    }
    let mut found = None;
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
            let addr = unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        Some(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()))
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                    }
                    _ => None,
                }
            };
            if addr == Some(ip) {
                // SAFETY: ifa_name is a NUL-terminated string owned by the list.
                found = Some(unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned());
                break;
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: frees the list getifaddrs allocated; no reference into it outlives this call.
    unsafe { libc::freeifaddrs(ifap) };
    found
}
