//! The TUN device and what we install around it (addresses, routes), removed again on shutdown.

use std::net::IpAddr;

use roamtun_netlink::{Installed, Netlink, NetlinkError, Route};
use roamtun_stack::coalesce::TxPacket;
use roamtun_stack::vnet;

use crate::config::{Prefix, TunConfig, Tuning};

/// Why the TUN could not be set up; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum TunError {
    #[error("roamtun needs CAP_NET_ADMIN to create TUN device {name}: run it as root")]
    Permission { name: String },
    #[error("/dev/net/tun is missing: load the tun kernel module (modprobe tun)")]
    NoTunDevice,
    #[error("cannot enable checksum and segmentation offload on TUN device {name}")]
    Offload {
        name: String,
        #[source]
        source: std::io::Error,
    },
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
    index: u32,
    netlink: Netlink,
    installed: tokio::sync::Mutex<Installed>,
}

impl Tun {
    /// Creates the device `tun` names, with its MTU and a transmit queue for the flows `tuning` allows
    /// ([`Tuning::tun_queue_len`]), gives it `addresses` (host addresses, /32 or /128) and routes
    /// `routes` into it.
    pub async fn create(
        tun: &TunConfig,
        tuning: &Tuning,
        addresses: &[IpAddr],
        routes: &[Prefix],
    ) -> Result<Tun, TunError> {
        let (name, mtu, queue_len) = (tun.name.as_str(), tun.mtu, tuning.tun_queue_len(tun.mtu));
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Err(TunError::NoTunDevice);
        }
        // offload(true) opens the device with a virtio-net header on every packet (IFF_VNET_HDR) and
        // turns on offloads; we set the ones we handle (see roamtun_stack::vnet).
        let device =
            tun_rs::DeviceBuilder::new().name(name).mtu(mtu).offload(true).build_async().map_err(|source| {
                if source.kind() == std::io::ErrorKind::PermissionDenied {
                    TunError::Permission { name: name.into() }
                } else {
                    TunError::Create { name: name.into(), source }
                }
            })?;
        set_offloads(&device).map_err(|source| TunError::Offload { name: name.into(), source })?;
        let nl_err = |source: NetlinkError| {
            if source.is_permission_denied() {
                TunError::NetlinkPermission { name: name.into(), source }
            } else {
                TunError::Netlink { name: name.into(), source }
            }
        };
        let netlink = Netlink::connect().await.map_err(nl_err)?;
        let index = netlink.link_index(name).await.map_err(nl_err)?;
        let tun =
            Tun { device, name: name.into(), index, netlink, installed: tokio::sync::Mutex::new(Installed::new()) };
        if let Err(err) = tun.configure(mtu, queue_len, addresses, routes).await {
            tun.remove().await;
            return Err(nl_err(err));
        }
        Ok(tun)
    }

    async fn configure(
        &self,
        mtu: u16,
        queue_len: u32,
        addresses: &[IpAddr],
        routes: &[Prefix],
    ) -> Result<(), NetlinkError> {
        let index = self.index;
        let mut installed = self.installed.lock().await;
        self.netlink.set_mtu(index, u32::from(mtu)).await?;
        self.netlink.set_tx_queue_len(index, queue_len).await?;
        self.netlink.set_link_up(index).await?;
        for addr in addresses {
            let len = if addr.is_ipv4() { 32 } else { 128 };
            installed.add_address(&self.netlink, index, *addr, len).await?;
        }
        for prefix in routes {
            installed.add_route(&self.netlink, self.route(addresses, prefix)).await?;
            tracing::debug!(tun = %self.name, %prefix, "route installed");
        }
        Ok(())
    }

    /// The route of `prefix` into the TUN.
    fn route(&self, addresses: &[IpAddr], prefix: &Prefix) -> Route {
        // Prefer our own virtual IP of the same family as the source, so apps that did not bind
        // use the stable address.
        let src = addresses.iter().find(|a| a.is_ipv4() == prefix.addr.is_ipv4()).copied();
        Route { dst: prefix.addr, prefix_len: prefix.len, oif: self.index, table: None, src, gateway: None }
    }

    /// Makes `routes` the routes into the TUN (a reload): installs those it lacks and removes those
    /// no longer named, leaving the others in place. Returns the prefixes added and removed.
    pub async fn set_routes(
        &self,
        addresses: &[IpAddr],
        routes: &[Prefix],
    ) -> Result<(Vec<Prefix>, Vec<Prefix>), NetlinkError> {
        let mut installed = self.installed.lock().await;
        let wanted: Vec<Route> = routes.iter().map(|p| self.route(addresses, p)).collect();
        let ours = |r: &&Route| r.oif == self.index && r.table.is_none();
        let gone: Vec<Route> =
            installed.routes().iter().filter(ours).filter(|r| !wanted.contains(r)).cloned().collect();
        let new: Vec<Route> = wanted.iter().filter(|r| !installed.routes().contains(r)).cloned().collect();
        let prefix = |r: &Route| Prefix { addr: r.dst, len: r.prefix_len };
        for route in &new {
            installed.add_route(&self.netlink, route.clone()).await?;
            tracing::info!(tun = %self.name, prefix = %prefix(route), "route installed");
        }
        for route in &gone {
            installed.del_route(&self.netlink, route).await?;
            tracing::info!(tun = %self.name, prefix = %prefix(route), "route removed");
        }
        Ok((new.iter().map(prefix).collect(), gone.iter().map(prefix).collect()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device's interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Waits for the next packet and reads it into the front of `packet` (which must hold one of
    /// the MTU); returns its length. `Ok(None)`: a packet we cannot use, dropped.
    pub async fn recv_packet(&self, packet: &mut [u8]) -> std::io::Result<Option<usize>> {
        let mut header = [0u8; vnet::HEADER_LEN];
        let mut parts = [std::io::IoSliceMut::new(&mut header), std::io::IoSliceMut::new(packet)];
        let read = self.device.recv_vectored(&mut parts).await?;
        Ok(self.finish_rx(&header, packet, read))
    }

    /// [`Tun::recv_packet`] without waiting: `WouldBlock` when no packet is queued.
    pub fn try_recv_packet(&self, packet: &mut [u8]) -> std::io::Result<Option<usize>> {
        let mut header = [0u8; vnet::HEADER_LEN];
        let mut parts = [std::io::IoSliceMut::new(&mut header), std::io::IoSliceMut::new(packet)];
        let read = self.device.try_recv_vectored(&mut parts)?;
        Ok(self.finish_rx(&header, packet, read))
    }

    fn finish_rx(&self, header: &[u8; vnet::HEADER_LEN], packet: &mut [u8], read: usize) -> Option<usize> {
        let finished = vnet::packet_len(read).and_then(|len| vnet::finish_rx(header, &mut packet[..len]).map(|()| len));
        match finished {
            Ok(len) => Some(len),
            Err(err) => {
                tracing::debug!(tun = %self.name, %err, "dropping a packet read from the TUN");
                None
            }
        }
    }

    /// Writes one IP packet behind its virtio-net header (one writev).
    pub async fn send(&self, write: &TxPacket) -> std::io::Result<()> {
        let parts = [std::io::IoSlice::new(&write.header), std::io::IoSlice::new(&write.packet)];
        self.device.send_vectored(&parts).await.map(|_| ())
    }

    /// Removes the routes and addresses we installed. The device itself goes when its last fd closes.
    pub async fn remove(&self) {
        self.installed.lock().await.remove_all(&self.netlink).await;
    }
}

/// The offloads roamtun_stack::vnet handles: checksums both ways, and TCP super-segments (TSO) from
/// the kernel, which spares splitting forwarded traffic (a LAN's, an exit's) into its links' MTU. Not
/// UDP segmentation (USO): relayed datagrams must stay whole.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;

/// Sets [`OFFLOADS`], in place of the ones `offload(true)` turned on.
fn set_offloads(device: &tun_rs::AsyncDevice) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TUNSETOFFLOAD takes the flag word by value; the fd is the TUN device we own.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), libc::TUNSETOFFLOAD, libc::c_ulong::from(OFFLOADS)) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
