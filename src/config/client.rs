//! The client daemon's configuration file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::control_group::ControlGroup;
use super::de::{from_str, optional_from_str, socket_addrs, vec_from_str};
use super::error::{invalid_at, or_mistake, parse, ConfigError};
use super::lan::{check_lan, LanConfig};
use super::prefix::{prefix_contains, Prefix};
use super::private_key::{private_key, read, resolve_key};
use super::routing::{check_routing, RoutingConfig};
use super::tun::{check_tun, default_mtu, TunConfig};
use super::tuning::{check_tuning, Tuning};
use super::uplinks::{UplinkConfig, UPLINK_KINDS};
use crate::config_shape::Step;
use crate::keys::{PrivateKey, PublicKey};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPeer {
    /// Where the server daemon listens, e.g. `198.18.1.1:7700`, or several addresses of it (one per
    /// family, so that an IPv4-only and an IPv6-only uplink can both reach it), in order of preference.
    #[serde(rename = "address", deserialize_with = "socket_addrs")]
    pub addresses: Vec<SocketAddr>,
    #[serde(deserialize_with = "from_str")]
    pub public_key: PublicKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Inline; exactly one of this and `private_key_file` (use [`ClientConfig::private_key`]).
    #[serde(default, deserialize_with = "private_key")]
    private_key: Option<PrivateKey>,
    /// A file holding the key as `roamtun genkey` prints it; relative paths are from the config
    /// file's directory.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    pub server: ServerPeer,
    #[serde(default = "default_client_tun")]
    pub tun: TunConfig,
    /// The stable addresses the apps use; the server must give the same ones to this client's key.
    pub virtual_ips: Vec<IpAddr>,
    /// Prefixes routed into the TUN (e.g. the server's virtual IP, a server-side network, or
    /// `0.0.0.0/0` for everything).
    #[serde(deserialize_with = "vec_from_str")]
    pub routes: Vec<Prefix>,
    /// The interfaces the relay may use, in order of preference (e.g. `["wlan0", "wwan0"]`, or
    /// `{ name = "wwan0", metered = true }` for an entry the decision task should spare). The relay is
    /// bound to one of them (SO_BINDTODEVICE), so it never follows a route into the TUN. Empty: the
    /// kernel's routing picks, and a route covering the server is refused.
    #[serde(default)]
    pub uplinks: Vec<UplinkConfig>,
    #[serde(default = "default_client_socket")]
    pub control_socket: PathBuf,
    /// Besides root, members of this group may use the control socket.
    #[serde(default, deserialize_with = "optional_from_str")]
    pub control_group: Option<ControlGroup>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tuning: Tuning,
    #[serde(default)]
    pub decision: DecisionConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    /// DNS servers for this host while the tunnel is up (e.g. a resolver on the server's virtual IP):
    /// given to systemd-resolved for the TUN, or written to /etc/resolv.conf (src/dns/). Empty: the
    /// host's DNS is left alone.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    /// A network behind this host whose hosts use the tunnel too (the client on a router).
    #[serde(default)]
    pub lan: Option<LanConfig>,
    /// Where state that outlives a restart is kept (each uplink's volume this period); by default
    /// the service's state directory (`$STATE_DIRECTORY`), else `/var/lib/roamtun`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
}

/// The decision task's hysteresis (src/link/policy.rs has the rules).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Score points an uplink must gain over the active one before the session moves to it.
    pub min_gain: f64,
    /// No automatic switch sooner than this after the last one.
    pub dwell_secs: u64,
    /// An uplink that came back must stay healthy this long before the session moves back to it.
    pub fail_back_after_secs: u64,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig { min_gain: 5.0, dwell_secs: 10, fail_back_after_secs: 30 }
    }
}

impl ClientConfig {
    /// `state_dir`, or the service's state directory, or `/var/lib/roamtun`.
    pub fn state_directory(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        // systemd's StateDirectory= (a colon-separated list when it names several).
        match std::env::var_os("STATE_DIRECTORY") {
            Some(dirs) => std::env::split_paths(&dirs).next().unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            None => PathBuf::from(DEFAULT_STATE_DIR),
        }
    }

    /// Whether `routes` has a default route (`0.0.0.0/0` or `::/0`): a full tunnel of both families,
    /// by policy routing (src/full_tunnel.rs).
    pub fn full_tunnel(&self) -> bool {
        self.routes.iter().any(|p| p.len == 0)
    }

    /// The uplinks' names, in order of preference.
    pub fn uplink_names(&self) -> Vec<String> {
        self.uplinks.iter().map(|u| u.name.clone()).collect()
    }
}

const DEFAULT_STATE_DIR: &str = "/var/lib/roamtun";

fn default_client_tun() -> TunConfig {
    TunConfig { name: String::new(), mtu: default_mtu() }
}

fn default_client_socket() -> PathBuf {
    PathBuf::from("/run/roamtun/client.sock")
}

impl ClientConfig {
    /// Reads and checks `path`; refuses a private key that other users could read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, mode) = read(path)?;
        Self::parse(path, &text, Some(mode))
    }

    /// As [`ClientConfig::load`] for text that did not come from a file (the permission of the
    /// config file is not checked; `private_key_file` is).
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse(path, text, None)
    }

    /// The daemon's private key, from `private_key` or `private_key_file`.
    pub fn private_key(&self) -> &PrivateKey {
        // Cannot fail: `parse` refuses a config that ends up without a key.
        self.private_key.as_ref().expect("config has a private key")
    }

    fn parse(path: &Path, text: &str, mode: Option<u32>) -> Result<Self, ConfigError> {
        let mut c: ClientConfig =
            parse(path, text).map_err(|e| or_mistake(path, text, e, crate::config_shape::client_mistake))?;
        resolve_key(path, mode, &mut c.private_key, &mut c.private_key_file)?;
        check_tun(path, &mut c.tun, "roam0")?;
        check_tuning(path, &c.tuning)?;
        if let Some(dir) = c.state_dir.as_mut().filter(|d| d.is_relative()) {
            // Relative to the config file, as a person reading it would take it.
            *dir = path.parent().map_or(dir.clone(), |base| base.join(&*dir));
        }
        let names = c.uplink_names();
        let uplink = |i: usize| [Step::Key("uplinks"), Step::Index(i)];
        if let Some(i) = names.iter().position(|n| n.is_empty() || n.len() > 15 || n.contains('/')) {
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: {:?} is not a Linux interface name", names[i]),
            ));
        }
        if let Some(i) = names.iter().enumerate().position(|(i, n)| names[..i].contains(n)) {
            return Err(invalid_at(path, text, &uplink(i), format!("uplinks: {:?} is named twice", names[i])));
        }
        if let Some(i) = names.iter().position(|n| *n == c.tun.name) {
            // The relay would try to carry itself through its own tunnel.
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: {:?} is this client's own TUN, not an uplink", c.tun.name),
            ));
        }
        if let Some(i) = c.uplinks.iter().position(|u| u.kind.as_deref().is_some_and(|k| !UPLINK_KINDS.contains(&k))) {
            let u = &c.uplinks[i];
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!(
                    "uplinks: kind {:?} of {:?} is not one of {UPLINK_KINDS:?}",
                    u.kind.as_deref().unwrap_or(""),
                    u.name
                ),
            ));
        }
        if let Some(i) = c.uplinks.iter().position(|u| u.cost_per_gib.is_nan() || u.cost_per_gib < 0.0) {
            let name = &c.uplinks[i].name;
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: cost_per_gib of {name:?} must be 0 or more"),
            ));
        }
        if let Some(i) = c.uplinks.iter().position(|u| u.cap_gib.is_some_and(|g| g.is_nan() || g <= 0.0)) {
            let name = &c.uplinks[i].name;
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: cap_gib of {name:?} must be more than 0"),
            ));
        }
        let max_day = roamtun_proto::link::volume::MAX_RESET_DAY;
        if let Some(i) = c.uplinks.iter().position(|u| !(1..=max_day).contains(&u.cap_reset_day)) {
            let u = &c.uplinks[i];
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!(
                    "uplinks: cap_reset_day of {:?} is {}; it must be a day from 1 to {max_day} (one that every month has)",
                    u.name, u.cap_reset_day
                ),
            ));
        }
        let address = [Step::Key("server"), Step::Key("address")];
        if c.server.addresses.is_empty() {
            return Err(invalid_at(path, text, &address, "[server] address must name at least one address".into()));
        }
        if let Some(i) = c.server.addresses.iter().enumerate().position(|(i, a)| c.server.addresses[..i].contains(a)) {
            let key = [address[0], address[1], Step::Index(i)];
            return Err(invalid_at(
                path,
                text,
                &key,
                format!("[server] address: {} is named twice", c.server.addresses[i]),
            ));
        }
        let unbound = c.uplinks.is_empty();
        for server in &c.server.addresses {
            // A default route (/0) is a full tunnel's, in a table the relay's marked sockets skip.
            let loops = |p: &Prefix| unbound && p.len > 0 && prefix_contains(p, server.ip());
            if let Some(i) = c.routes.iter().position(loops) {
                let p = &c.routes[i];
                // The relay's own packets would enter the TUN they are meant to carry.
                return Err(invalid_at(
                    path,
                    text,
                    &[Step::Key("routes"), Step::Index(i)],
                    format!(
                        "the server address {} lies inside the routed prefix {p}: the relay connection would loop \
                         into the TUN. Name the uplinks (uplinks = [\"eth0\", …]): the relay is then bound to them \
                         and never follows a route into the TUN",
                        server.ip()
                    ),
                ));
            }
        }
        check_routing(path, &c.routing, c.uplinks.len())?;
        if c.virtual_ips.is_empty() {
            return Err(invalid_at(
                path,
                text,
                &[Step::Key("virtual_ips")],
                "virtual_ips must name at least one address".into(),
            ));
        }
        if c.routes.is_empty() {
            return Err(invalid_at(
                path,
                text,
                &[Step::Key("routes")],
                "routes must name at least one prefix to send through the tunnel".into(),
            ));
        }
        check_dns(path, text, &c.dns)?;
        if let Some(lan) = &c.lan {
            check_lan(path, text, lan, &c.virtual_ips)?;
        }
        Ok(c)
    }
}

/// `dns`: addresses a resolver can be asked at (not unspecified, not multicast), each once.
fn check_dns(path: &Path, text: &str, dns: &[IpAddr]) -> Result<(), ConfigError> {
    for (i, ip) in dns.iter().enumerate() {
        let at = [Step::Key("dns"), Step::Index(i)];
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid_at(path, text, &at, format!("dns: {ip} is not the address of a DNS server")));
        }
        if dns[..i].contains(ip) {
            return Err(invalid_at(path, text, &at, format!("dns: {ip} is named twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::test_support::{key, server_toml};
    use crate::config::ServerConfig;
    use crate::keys::PrivateKey;

    #[test]
    fn a_lan_names_its_own_prefixes_and_a_mode() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n\
             [server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let load = |lan: &str| ClientConfig::from_toml(Path::new("c.toml"), &format!("{text}[lan]\n{lan}\n"));
        let c = load("prefixes = [\"198.19.50.0/24\"]").unwrap();
        let lan = c.lan.expect("[lan] parsed");
        assert_eq!(lan.mode, crate::config::LanMode::Masquerade, "masquerade works with any server: the default");
        assert_eq!(lan.prefixes, ["198.19.50.0/24".parse::<Prefix>().unwrap()]);
        let c = load("prefixes = [\"198.19.50.0/24\", \"fd00:50::/64\"]\nmode = \"routed\"").unwrap();
        assert_eq!(c.lan.unwrap().mode, crate::config::LanMode::Routed);
        let err = load("prefixes = []").unwrap_err().to_string();
        assert!(err.contains("[lan] prefixes must name the LAN's prefixes"), "{err}");
        let err = load("prefixes = [\"100.64.0.0/24\"]").unwrap_err().to_string();
        assert!(err.contains("[lan] prefix 100.64.0.0/24 holds the virtual IP 100.64.0.2"), "{err}");
        let err = load("prefixes = [\"198.19.0.0/16\", \"198.19.50.0/24\"]").unwrap_err().to_string();
        assert!(err.contains("[lan] prefix 198.19.50.0/24 overlaps 198.19.0.0/16"), "{err}");
        let err = load("prefixes = [\"0.0.0.0/0\"]").unwrap_err().to_string();
        assert!(err.contains("is everything"), "{err}");
        let err = load("prefixes = [\"198.19.50.0/24\"]\nmode = \"bridged\"").unwrap_err().to_string();
        assert!(err.contains("bridged") && err.contains("masquerade") && err.contains("routed"), "{err}");
    }

    #[test]
    fn dns_servers_are_addresses_named_once() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\nDNS\n\
             [server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let load = |dns: &str| ClientConfig::from_toml(Path::new("c.toml"), &text.replace("DNS", dns));
        assert_eq!(load("").unwrap().dns, Vec::<IpAddr>::new(), "DNS is left alone by default");
        let c = load("dns = [\"100.64.0.1\", \"fd64::1\"]").unwrap();
        assert_eq!(c.dns, ["100.64.0.1".parse::<IpAddr>().unwrap(), "fd64::1".parse().unwrap()]);
        let err = load("dns = [\"100.64.0.1\", \"100.64.0.1\"]").unwrap_err().to_string();
        assert!(err.contains("line 4: dns: 100.64.0.1 is named twice"), "{err}");
        let err = load("dns = [\"0.0.0.0\"]").unwrap_err().to_string();
        assert!(err.contains("dns: 0.0.0.0 is not the address of a DNS server"), "{err}");
        let err = load("dns = [\"ff02::fb\"]").unwrap_err().to_string();
        assert!(err.contains("ff02::fb is not the address"), "{err}");
        assert!(load("dns = [\"resolver.example\"]").is_err(), "a name is not an address");
    }

    #[test]
    fn a_route_that_would_carry_the_relay_itself_is_refused() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"198.18.0.0/15\"]\n\
             [server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let err = ClientConfig::from_toml(Path::new("c.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("198.18.1.1") && err.contains("loop"), "{err}");
        // A default route is a full tunnel's: the relay's marked sockets skip its table.
        let full = ClientConfig::from_toml(Path::new("c.toml"), &text.replace("198.18.0.0/15", "0.0.0.0/0")).unwrap();
        assert!(full.full_tunnel());
        let ok = text.replace("198.18.0.0/15", "100.64.0.0/10");
        let c = ClientConfig::from_toml(Path::new("c.toml"), &ok).unwrap();
        assert_eq!(c.tun.name, "roam0");
        // Bound to named uplinks, the relay cannot follow the route into the TUN: system-wide is fine.
        let bound = text.replace("routes =", "uplinks = [\"wlan0\", \"wwan0\"]\nroutes =");
        let c = ClientConfig::from_toml(Path::new("c.toml"), &bound).unwrap();
        assert_eq!(c.uplink_names(), ["wlan0", "wwan0"]);
        // An entry may be a table with what the decision task needs.
        let tables = text.replace(
            "routes =",
            "uplinks = [\"eth0\", { name = \"wwan0\", metered = true, cost_per_gib = 2.5 }]\nroutes =",
        );
        let c = ClientConfig::from_toml(Path::new("c.toml"), &tables).unwrap();
        assert_eq!(
            c.uplinks[1],
            UplinkConfig {
                name: "wwan0".into(),
                metered: true,
                cost_per_gib: 2.5,
                kind: None,
                cap_gib: None,
                cap_reset_day: 1
            }
        );
        let capped = tables.replace("cost_per_gib = 2.5", "cap_gib = 2");
        assert_eq!(ClientConfig::from_toml(Path::new("c.toml"), &capped).unwrap().uplinks[1].cap_gib, Some(2.0));
        let err = ClientConfig::from_toml(Path::new("c.toml"), &tables.replace("cost_per_gib = 2.5", "cap_gib = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cap_gib of \"wwan0\" must be more than 0"), "{err}");
        let day = tables.replace("cost_per_gib = 2.5", "cap_gib = 2, cap_reset_day = 15");
        assert_eq!(ClientConfig::from_toml(Path::new("c.toml"), &day).unwrap().uplinks[1].cap_reset_day, 15);
        for bad in [0, 29] {
            let text = tables.replace("cost_per_gib = 2.5", &format!("cap_gib = 2, cap_reset_day = {bad}"));
            let err = ClientConfig::from_toml(Path::new("c.toml"), &text).unwrap_err().to_string();
            assert!(
                err.contains(&format!("cap_reset_day of \"wwan0\" is {bad}; it must be a day from 1 to 28")),
                "{err}"
            );
        }
        let kind = tables.replace("cost_per_gib = 2.5", "kind = \"lte\"");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &kind).unwrap_err().to_string();
        assert!(err.contains("kind \"lte\" of \"wwan0\" is not one of"), "{err}");
        let typo = tables.replace("metered =", "metred =");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &typo).unwrap_err().to_string();
        assert!(err.contains("an interface name, or a table") && err.contains("line"), "{err}");
        let own = text.replace("routes =", "uplinks = [\"eth0\", \"roam0\"]\nroutes =");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &own).unwrap_err().to_string();
        assert!(err.contains("\"roam0\" is this client's own TUN"), "{err}");
        let bad = text.replace("routes =", "uplinks = [\"a/b\"]\nroutes =");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &bad).unwrap_err().to_string();
        assert!(err.contains("\"a/b\" is not a Linux interface name"), "{err}");
    }

    #[test]
    fn the_server_may_be_reached_at_one_address_per_family() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n\
             [server]\naddress = [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]\npublic_key = \"{sk}\"\n",
            key()
        );
        let c = ClientConfig::from_toml(Path::new("c.toml"), &text).unwrap();
        let want: Vec<SocketAddr> = vec!["198.18.1.1:7700".parse().unwrap(), "[2001:2::1]:7700".parse().unwrap()];
        assert_eq!(c.server.addresses, want);
        let twice = text.replace("[2001:2::1]", "198.18.1.1");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &twice).unwrap_err().to_string();
        assert!(err.contains("198.18.1.1:7700 is named twice"), "{err}");
        let none = text.replace("[\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]", "[]");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &none).unwrap_err().to_string();
        assert!(err.contains("at least one address"), "{err}");
        let host = text.replace("[\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]", "\"server.example:7700\"");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &host).unwrap_err().to_string();
        assert!(err.contains("expected \"ip:port\"") && err.contains("line 5"), "{err}");
        // Unbound, the second address inside a routed prefix is refused like the first.
        let looped = text.replace("100.64.0.0/10", "2001:2::/48");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &looped).unwrap_err().to_string();
        assert!(err.contains("2001:2::1") && err.contains("loop"), "{err}");
        let server = server_toml("")
            .replace("listen = \"198.18.1.1:7700\"", "listen = [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]");
        assert_eq!(ServerConfig::from_toml(Path::new("s.toml"), &server).unwrap().listen, want);
    }
}
