//! The server daemon's configuration file.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::control_group::ControlGroup;
use super::de::{optional_from_str, socket_addrs, vec_from_str};
use super::error::{invalid, invalid_at, or_mistake, parse, ConfigError};
use super::lan::overlap;
use super::peers::{read_peers_dir, PeerConfig};
use super::prefix::{prefix_contains, Prefix};
use super::private_key::{private_key, read, resolve_key};
use super::tun::{check_tun, default_mtu, TunConfig};
use super::tuning::{check_tuning, Tuning, MAX_TCP_FLOWS};
use crate::config_shape::Step;
use crate::keys::{PrivateKey, PublicKey};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Inline; exactly one of this and `private_key_file` (use [`ServerConfig::private_key`]).
    #[serde(default, deserialize_with = "private_key")]
    private_key: Option<PrivateKey>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// One address or several (e.g. one IPv4 and one IPv6 address) the relay listener binds.
    #[serde(deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_server_tun")]
    pub tun: TunConfig,
    /// The server's own addresses on its TUN (what client apps reach it at, e.g. `100.64.0.1`).
    pub virtual_ips: Vec<IpAddr>,
    /// Prefixes routed into the server TUN: where the clients' virtual IPs live.
    #[serde(deserialize_with = "vec_from_str")]
    pub client_prefixes: Vec<Prefix>,
    /// Let clients reach destinations beyond this host (turns on IP forwarding; see docs/config.md for
    /// the masquerade rule).
    #[serde(default)]
    pub exit: bool,
    /// Exit mode's way out (e.g. `eth0`): the clients' traffic leaves through it masqueraded, by
    /// rules the server installs in an nftables table of its own (and removes at stop); on it IPv6
    /// keeps accepting router advertisements while forwarding. Implies `exit`.
    #[serde(default)]
    pub exit_interface: Option<String>,
    /// Without `exit`: what clients may reach beyond the server's virtual IPs (also turns on IP
    /// forwarding). Other clients' virtual IPs stay behind `client_to_client`.
    #[serde(default, deserialize_with = "vec_from_str")]
    pub allowed_destinations: Vec<Prefix>,
    /// Clients may reach each other's virtual IPs (in exit mode too).
    #[serde(default)]
    pub client_to_client: bool,
    #[serde(default = "default_server_socket")]
    pub control_socket: PathBuf,
    #[serde(default, deserialize_with = "optional_from_str")]
    pub control_group: Option<ControlGroup>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tuning: Tuning,
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
    /// A directory of one file per peer (`NAME.toml` holding `public_key`, `virtual_ips` and
    /// optionally `name`), read after the `[[peer]]` tables and again at every reload.
    #[serde(default)]
    pub peers_dir: Option<PathBuf>,
    /// Where each peer came from: `None` for a `[[peer]]` table, else its file in `peers_dir`.
    #[serde(skip)]
    pub peer_files: Vec<Option<PathBuf>>,
}

fn default_server_tun() -> TunConfig {
    TunConfig { name: String::new(), mtu: default_mtu() }
}

fn default_server_socket() -> PathBuf {
    PathBuf::from("/run/roamtun/server.sock")
}

impl ServerConfig {
    /// Reads and checks `path`; refuses a private key that other users could read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, mode) = read(path)?;
        Self::parse(path, &text, Some(mode))
    }

    /// As [`ServerConfig::load`] for text that did not come from a file.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse(path, text, None)
    }

    /// The daemon's private key, from `private_key` or `private_key_file`.
    pub fn private_key(&self) -> &PrivateKey {
        // Cannot fail: `parse` refuses a config that ends up without a key.
        self.private_key.as_ref().expect("config has a private key")
    }

    fn parse(path: &Path, text: &str, mode: Option<u32>) -> Result<Self, ConfigError> {
        let mut c: ServerConfig =
            parse(path, text).map_err(|e| or_mistake(path, text, e, crate::config_shape::server_mistake))?;
        resolve_key(path, mode, &mut c.private_key, &mut c.private_key_file)?;
        check_tun(path, &mut c.tun, "roamsrv0")?;
        if let Some(name) = &c.exit_interface {
            if name.is_empty() || name.len() > 15 || name.contains('/') || name == &c.tun.name {
                let message = if name == &c.tun.name {
                    format!("exit_interface {name:?} is the server's own TUN: name the interface towards the internet")
                } else {
                    format!("exit_interface {name:?} is not a Linux interface name")
                };
                return Err(invalid_at(path, text, &[Step::Key("exit_interface")], message));
            }
            c.exit = true;
        }
        check_tuning(path, &c.tuning)?;
        if c.listen.is_empty() {
            return Err(invalid_at(path, text, &[Step::Key("listen")], "listen must name at least one address".into()));
        }
        if let Some(i) = c.listen.iter().enumerate().position(|(i, a)| c.listen[..i].contains(a)) {
            let key = [Step::Key("listen"), Step::Index(i)];
            return Err(invalid_at(path, text, &key, format!("listen: {} is named twice", c.listen[i])));
        }
        c.peer_files = vec![None; c.peers.len()];
        if let Some(dir) = c.peers_dir.clone() {
            // Relative to the config file, like a path in any other key would be read by a person.
            let dir = path.parent().map_or(dir.clone(), |base| base.join(&dir));
            for (peer, file) in read_peers_dir(&dir)? {
                c.peers.push(peer);
                c.peer_files.push(Some(file));
            }
        }
        if c.peers.is_empty() {
            return Err(invalid(
                path,
                "no [[peer]] is configured (and peers_dir holds none): add one per client (name, public_key, virtual_ips)"
                    .into(),
            ));
        }
        let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
        let mut keys: BTreeMap<PublicKey, &str> = BTreeMap::new();
        for ip in &c.virtual_ips {
            owners.insert(*ip, "the server itself (virtual_ips)");
        }
        for (n, peer) in c.peers.iter().enumerate() {
            let at = |key: &'static str| [Step::Key("peer"), Step::Index(n), Step::Key(key)];
            // A peer from peers_dir: its errors name its file.
            let invalid_at = |path: &Path, text: &str, key: &[Step], message: String| match &c.peer_files[n] {
                Some(file) => invalid(file, message),
                None => invalid_at(path, text, key, message),
            };
            if let Some(other) = keys.insert(peer.public_key, &peer.name) {
                let message = format!("peer {:?} has the same public key as peer {other:?}", peer.name);
                return Err(invalid_at(path, text, &at("public_key"), message));
            }
            if peer.switch_timeout_secs == Some(0) {
                let message = format!("peer {:?}: switch_timeout_secs = 0 is below the minimum 1", peer.name);
                return Err(invalid_at(path, text, &at("switch_timeout_secs"), message));
            }
            // The bounds of `[tuning]`'s keys of the same names (check_tuning).
            let bounds = [
                ("max_flows_per_session", peer.max_flows_per_session, 1, MAX_TCP_FLOWS),
                ("max_udp_flows_per_session", peer.max_udp_flows_per_session, 1, usize::MAX),
                ("max_paths_per_session", peer.max_paths_per_session, 2, usize::MAX),
            ];
            for (key, value, min, max) in bounds {
                let Some(value) = value else { continue };
                let message = if value < min {
                    format!("peer {:?}: {key} = {value} is below the minimum {min}", peer.name)
                } else if value > max {
                    format!("peer {:?}: {key} = {value} is above the maximum {max}", peer.name)
                } else {
                    continue;
                };
                return Err(invalid_at(path, text, &at(key), message));
            }
            if peer.virtual_ips.is_empty() {
                let message = format!("peer {:?} has no virtual_ips", peer.name);
                return Err(invalid_at(path, text, &at("virtual_ips"), message));
            }
            for (i, ip) in peer.virtual_ips.iter().enumerate() {
                let [peer_key, index, ips] = at("virtual_ips");
                let key = [peer_key, index, ips, Step::Index(i)];
                if let Some(other) = owners.insert(*ip, &peer.name) {
                    let message = format!("virtual IP {ip} of peer {:?} is already given to {other}", peer.name);
                    return Err(invalid_at(path, text, &key, message));
                }
                if !c.client_prefixes.iter().any(|p| prefix_contains(p, *ip)) {
                    let message =
                        format!("virtual IP {ip} of peer {:?} is outside every client_prefixes entry", peer.name);
                    return Err(invalid_at(path, text, &key, message));
                }
            }
        }
        // A LAN's addresses belong to its peer alone: none of them anybody's virtual IP, no two LANs
        // sharing one (the engine could not tell whose a packet is).
        let mut lans: Vec<(&Prefix, &str)> = Vec::new();
        for (n, peer) in c.peers.iter().enumerate() {
            for (i, lan) in peer.lan_prefixes.iter().enumerate() {
                let key = [Step::Key("peer"), Step::Index(n), Step::Key("lan_prefixes"), Step::Index(i)];
                let invalid_at = |message: String| match &c.peer_files[n] {
                    Some(file) => invalid(file, message),
                    None => invalid_at(path, text, &key, message),
                };
                if lan.len == 0 {
                    return Err(invalid_at(format!(
                        "lan_prefixes of peer {:?}: {lan} is everything; name the LAN's own prefixes",
                        peer.name
                    )));
                }
                if let Some((ip, owner)) = owners.iter().find(|(ip, _)| prefix_contains(lan, **ip)) {
                    return Err(invalid_at(format!(
                        "lan_prefixes of peer {:?}: {lan} holds the virtual IP {ip} of {owner}",
                        peer.name
                    )));
                }
                if let Some((other, owner)) = lans.iter().find(|(o, _)| overlap(o, lan)) {
                    return Err(invalid_at(format!(
                        "lan_prefixes of peer {:?}: {lan} overlaps {other} of peer {owner:?}",
                        peer.name
                    )));
                }
                lans.push((lan, &peer.name));
            }
        }
        Ok(c)
    }

    /// What the server TUN routes: the clients' prefixes and every peer's LAN.
    pub fn tun_routes(&self) -> Vec<Prefix> {
        self.client_prefixes.iter().copied().chain(self.lan_routes()).collect()
    }

    /// The peers' LANs, as routed into the server TUN.
    pub fn lan_routes(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.peers.iter().flat_map(|p| p.lan_prefixes.iter().copied())
    }

    pub fn peer_by_key(&self, key: &PublicKey) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.public_key == *key)
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::path::Path;

    use super::*;
    use crate::config::test_support::server_toml;
    use crate::keys::PrivateKey;
    use roamtun_proto::relay::engine::PeerLimits;

    #[test]
    fn a_valid_server_config_parses_with_defaults() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap();
        assert_eq!(c.tun.name, "roamsrv0");
        assert_eq!(c.tun.mtu, 65535);
        assert_eq!(c.peers[0].virtual_ips, vec!["100.64.0.2".parse::<IpAddr>().unwrap()]);
        assert!(!c.exit);
        assert_eq!(c.exit_interface, None);
    }

    #[test]
    fn an_exit_interface_turns_exit_mode_on_and_is_checked() {
        let parse = |line: &str| ServerConfig::from_toml(Path::new("s.toml"), &format!("{line}\n{}", server_toml("")));
        let c = parse("exit_interface = \"eth0\"").unwrap();
        assert!(c.exit);
        assert_eq!(c.exit_interface.as_deref(), Some("eth0"));
        let err = parse("exit_interface = \"roamsrv0\"").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("is the server's own TUN"), "{err}");
        let err = parse("exit_interface = \"a/b\"").unwrap_err().to_string();
        assert!(err.contains("\"a/b\" is not a Linux interface name"), "{err}");
    }

    #[test]
    fn a_bad_value_is_reported_with_its_line() {
        let text =
            server_toml("").replace("client_prefixes = [\"100.64.0.0/10\"]", "client_prefixes = [\"100.64.0.0\"]");
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("s.toml") && err.contains("line 4") && err.contains("needs a length"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err =
            ServerConfig::from_toml(Path::new("s.toml"), &server_toml("colour = \"blue\"")).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("line"), "{err}");
    }

    #[test]
    fn a_virtual_ip_given_twice_is_refused() {
        let pk = PrivateKey::generate().unwrap().public_key();
        let extra = format!("\n[[peer]]\nname = \"phone\"\npublic_key = \"{pk}\"\nvirtual_ips = [\"100.64.0.2\"]\n");
        let err = ServerConfig::from_toml(Path::new("s.toml"), &server_toml(&extra)).unwrap_err().to_string();
        assert!(err.contains("100.64.0.2") && err.contains("laptop"), "{err}");
    }
    #[test]
    fn destination_policy_and_per_peer_limits_parse_and_are_checked() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap();
        assert!(c.allowed_destinations.is_empty() && !c.client_to_client);
        let t = &c.tuning;
        assert_eq!((t.max_flows_per_session, t.max_udp_flows_per_session, t.max_paths_per_session), (1024, 1024, 8));
        let text = format!(
            "allowed_destinations = [\"198.18.9.0/24\", \"fd00:9::/64\"]\nclient_to_client = true\n{}\n[tuning]\n\
             max_flows_per_session = 20\nmax_udp_flows_per_session = 30\nmax_paths_per_session = 3\n",
            server_toml("")
        );
        let c = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap();
        assert_eq!(c.allowed_destinations, vec!["198.18.9.0/24".parse().unwrap(), "fd00:9::/64".parse().unwrap()]);
        assert!(c.client_to_client);
        let t = &c.tuning;
        assert_eq!((t.max_flows_per_session, t.max_udp_flows_per_session, t.max_paths_per_session), (20, 30, 3));
        let bad = format!("allowed_destinations = [\"198.18.9.1/24\"]\n{}", server_toml(""));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &bad).unwrap_err().to_string();
        assert!(err.contains("did you mean 198.18.9.0/24"), "{err}");
        for (key, value, says) in [
            ("max_paths_per_session", 1, "tuning.max_paths_per_session = 1 is below the minimum 2"),
            ("max_flows_per_session", 0, "below the minimum 1"),
            ("max_flows_per_session", 5001, "tuning.max_flows_per_session = 5001 is above the maximum 5000"),
            ("max_udp_flows_per_session", 0, "below the minimum 1"),
        ] {
            let text = server_toml(&format!("\n[tuning]\n{key} = {value}\n"));
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            assert!(err.contains(says), "{key} = {value}: {err}");
        }
    }

    #[test]
    fn a_peers_own_limits_parse_and_are_checked_with_its_line() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap();
        assert_eq!(c.peers[0].limits(), PeerLimits::default());
        let own = "max_flows_per_session = 20\nmax_udp_flows_per_session = 30\nmax_paths_per_session = 3\n";
        let c = ServerConfig::from_toml(Path::new("s.toml"), &server_toml(own)).unwrap();
        assert_eq!(c.peers[0].limits(), PeerLimits { streams: Some(20), udp_flows: Some(30), paths: Some(3) });
        assert_eq!(c.tuning.max_flows_per_session, 1024, "a peer's limit changed the server's");
        for (key, value, says) in [
            ("max_paths_per_session", 1, "peer \"laptop\": max_paths_per_session = 1 is below the minimum 2"),
            ("max_flows_per_session", 0, "max_flows_per_session = 0 is below the minimum 1"),
            ("max_flows_per_session", 5001, "max_flows_per_session = 5001 is above the maximum 5000"),
            ("max_udp_flows_per_session", 0, "max_udp_flows_per_session = 0 is below the minimum 1"),
        ] {
            let text = server_toml(&format!("{key} = {value}\n"));
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains("line 10"), "{key} = {value}: {err}");
        }
    }

    #[test]
    fn lan_prefixes_belong_to_one_peer_and_hold_no_virtual_ip() {
        let other = PrivateKey::generate().unwrap().public_key();
        let with = |first: &str, second: &str| {
            let extra = format!(
                "lan_prefixes = [{first}]\n\n[[peer]]\nname = \"router2\"\npublic_key = \"{other}\"\n\
                 virtual_ips = [\"100.64.0.3\"]\nlan_prefixes = [{second}]\n"
            );
            ServerConfig::from_toml(Path::new("s.toml"), &server_toml(&extra))
        };
        let c = with("\"198.19.50.0/24\"", "\"198.19.51.0/24\"").unwrap();
        let routes: Vec<String> = c.tun_routes().iter().map(ToString::to_string).collect();
        assert_eq!(routes, ["100.64.0.0/10", "198.19.50.0/24", "198.19.51.0/24"], "every LAN is routed into the TUN");
        let err = with("\"198.19.50.0/24\"", "\"198.19.50.128/25\"").unwrap_err().to_string();
        assert!(
            err.contains(
                "lan_prefixes of peer \"router2\": 198.19.50.128/25 overlaps 198.19.50.0/24 of peer \"laptop\""
            ),
            "{err}"
        );
        let err = with("\"100.64.0.0/30\"", "\"198.19.51.0/24\"").unwrap_err().to_string();
        assert!(
            err.contains("lan_prefixes of peer \"laptop\": 100.64.0.0/30 holds the virtual IP 100.64.0.1"),
            "{err}"
        );
        let err = with("\"0.0.0.0/0\"", "\"198.19.51.0/24\"").unwrap_err().to_string();
        assert!(err.contains("is everything"), "{err}");
    }
}
