//! `roamtun client|server --check`: what a valid configuration says, one fact a line, and the
//! mistakes that parse and pass every rule but will not work as meant (warnings). The config module
//! refuses what cannot work; this module says what is probably not what the user meant. Only the
//! existence of the uplinks and the exit interface is read from the host (through `if_nametoindex`,
//! no shelling out).

use std::net::IpAddr;

use crate::config::{ClientConfig, LanMode, Prefix, ServerConfig};
use crate::keys::{PrivateKey, PublicKey};

/// What `--check` prints: facts on stdout, warnings on stderr.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub facts: Vec<String>,
    pub warnings: Vec<String>,
}

/// Whether this host has an interface `name` now.
pub fn link_exists(name: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(name) else { return false };
    // SAFETY: if_nametoindex reads the NUL-terminated string we own and keeps no pointer to it.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

fn list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

fn key_source(file: Option<&std::path::Path>) -> String {
    file.map_or_else(|| "inline private_key".into(), |p| format!("private_key_file {}", p.display()))
}

/// Whether the private key is, byte for byte, the public key `public` (a public key pasted where the
/// private one belongs: any 32 bytes are a valid Ed25519 seed, so only this comparison can tell).
fn is_pasted(private: &PrivateKey, public: &PublicKey) -> bool {
    private.to_base64().as_str() == public.to_base64()
}

/// Routes of a family the client has no virtual IP of: apps would have no source address for them.
/// (A full tunnel's default of such a family is made unreachable instead; its facts say so.)
fn family_warnings(virtual_ips: &[IpAddr], routes: &[Prefix]) -> Vec<String> {
    let has_v4 = virtual_ips.iter().any(IpAddr::is_ipv4);
    let has_v6 = virtual_ips.iter().any(IpAddr::is_ipv6);
    let mut out = Vec::new();
    let v4: Vec<&Prefix> = routes.iter().filter(|p| p.addr.is_ipv4() && p.len > 0).collect();
    let v6: Vec<&Prefix> = routes.iter().filter(|p| p.addr.is_ipv6() && p.len > 0).collect();
    if !has_v4 && !v4.is_empty() {
        out.push(format!(
            "routes {} are IPv4 but virtual_ips has only IPv6 addresses: apps have no IPv4 source address for them \
             (add an IPv4 virtual IP, as the server gives this peer)",
            list(&v4)
        ));
    }
    if !has_v6 && !v6.is_empty() {
        out.push(format!(
            "routes {} are IPv6 but virtual_ips has only IPv4 addresses: apps have no IPv6 source address for them \
             (add an IPv6 virtual IP, as the server gives this peer)",
            list(&v6)
        ));
    }
    out
}

/// The client's facts and warnings; `link_exists` says whether an uplink is on this host.
pub fn client(c: &ClientConfig, link_exists: impl Fn(&str) -> bool) -> Report {
    let mut r = Report::default();
    let own = c.private_key().public_key();
    r.facts.push(format!(
        "key: {}, public key {own} (give it to the server's [[peer]])",
        key_source(c.private_key_file.as_deref())
    ));
    r.facts.push(format!("server: {}, public key {}", list(&c.server.addresses), c.server.public_key));
    r.facts.push(format!("tun: {} (mtu {}), virtual IPs {}", c.tun.name, c.tun.mtu, list(&c.virtual_ips)));
    r.facts.push(format!("routes into the tunnel: {}", list(&c.routes)));
    if c.uplinks.is_empty() {
        r.facts.push("uplinks: none named (the kernel's routing chooses the relay's interface)".into());
    }
    for u in &c.uplinks {
        let mut notes = vec![u.kind.clone().unwrap_or_else(|| crate::config::uplink_kind(&u.name).to_string())];
        if u.metered {
            notes.push("metered".into());
        }
        if u.cost_per_gib > 0.0 {
            notes.push(format!("cost {} per GiB", u.cost_per_gib));
        }
        if let Some(cap) = u.cap_gib {
            notes.push(format!("cap {cap} GiB"));
        }
        let present = link_exists(&u.name);
        notes.push(if present { "present".into() } else { "not on this host now".into() });
        r.facts.push(format!("uplink {}: {}", u.name, notes.join(", ")));
        if !present {
            r.warnings.push(format!(
                "uplink {:?} does not exist on this host (see `ip link`): the client waits for it to appear; check the \
                 name if it is a typo",
                u.name
            ));
        }
    }
    if c.routing.per_uplink_tables {
        r.facts.push(format!(
            "per-uplink routing: tables from {}, rules at priority {}",
            c.routing.table_base, c.routing.rule_priority
        ));
    }
    r.facts.extend(crate::full_tunnel::describe(c));
    if let Some(lan) = &c.lan {
        r.facts.push(match lan.mode {
            LanMode::Masquerade => format!(
                "lan: {} masqueraded to the virtual IP into {} (nftables table inet {}) while running, IP forwarding on",
                list(&lan.prefixes),
                c.tun.name,
                roamtun_netlink::lan_nat_table(&c.tun.name)
            ),
            LanMode::Routed => format!(
                "lan: {} routed into {} with their own addresses, IP forwarding on while running; the server must list \
                 them as this peer's lan_prefixes",
                list(&lan.prefixes),
                c.tun.name
            ),
        });
        if lan.mode == LanMode::Masquerade {
            for family in [true, false] {
                let lan_has = lan.prefixes.iter().any(|p| p.addr.is_ipv4() == family);
                if lan_has && !c.virtual_ips.iter().any(|ip| ip.is_ipv4() == family) {
                    let name = if family { "IPv4" } else { "IPv6" };
                    r.warnings.push(format!(
                        "[lan] has {name} prefixes but virtual_ips no {name} address: their hosts cannot be \
                         masqueraded into the tunnel (add an {name} virtual IP, or use mode = \"routed\")"
                    ));
                }
            }
        }
    }
    r.facts.push(control_fact(&c.control_socket, c.control_group.as_ref()));
    r.warnings.extend(family_warnings(&c.virtual_ips, &c.routes));
    if is_pasted(c.private_key(), &c.server.public_key) {
        r.warnings.push(
            "private_key is the server's public key, pasted in the wrong place: the client's private_key is its own \
             (roamtun genkey), the server's public key goes in [server] public_key"
                .into(),
        );
    } else if own == c.server.public_key {
        r.warnings.push(
            "the client's key is the server's own key ([server] public_key is this private key's public key): each \
             side needs its own key (roamtun genkey)"
                .into(),
        );
    }
    r
}

/// What the client's `dns` would do on this host: `backend` is what [`crate::dns::detect`] chose
/// (`None` when `dns` is empty, and nothing was asked).
pub fn dns(c: &ClientConfig, backend: Option<&crate::dns::Backend>) -> Report {
    let mut r = Report::default();
    let Some(backend) = backend.filter(|_| !c.dns.is_empty()) else {
        r.facts.push("dns: not set (the host's DNS settings are left alone)".into());
        return r;
    };
    let scope = match backend {
        crate::dns::Backend::Resolved if crate::dns::full_tunnel(&c.routes) => {
            ", routing domain ~. (every name is asked through the tunnel)"
        }
        crate::dns::Backend::Resolved => " (beside the other links' servers)",
        crate::dns::Backend::ResolvConf { .. } => "",
    };
    r.facts.push(format!("dns: {} through {}{scope}", list(&c.dns), backend.describe()));
    for ip in &c.dns {
        if !c.routes.iter().any(|p| crate::config::prefix_contains(p, *ip)) {
            r.warnings.push(format!(
                "dns server {ip} is not inside routes: its queries go around the tunnel (add a route that covers it, \
                 e.g. \"{ip}/{}\")",
                if ip.is_ipv4() { 32 } else { 128 }
            ));
        }
    }
    if matches!(backend, crate::dns::Backend::ResolvConf { .. }) && c.dns.len() > 3 {
        r.warnings.push(format!(
            "dns names {} servers, but the C library's resolver reads only the first 3 nameserver lines of \
             /etc/resolv.conf",
            c.dns.len()
        ));
    }
    r
}

/// The server's facts and warnings; `link_exists` says whether the exit interface is on this host.
pub fn server(c: &ServerConfig, link_exists: impl Fn(&str) -> bool) -> Report {
    let mut r = Report::default();
    let own = c.private_key().public_key();
    r.facts.push(format!(
        "key: {}, public key {own} (give it to the clients' [server])",
        key_source(c.private_key_file.as_deref())
    ));
    r.facts.push(format!("listen: {}", list(&c.listen)));
    r.facts.push(format!("tun: {} (mtu {}), virtual IPs {}", c.tun.name, c.tun.mtu, list(&c.virtual_ips)));
    r.facts.push(format!("client prefixes: {}", list(&c.client_prefixes)));
    for peer in c.peers.iter().filter(|p| !p.lan_prefixes.is_empty()) {
        r.facts.push(format!(
            "peer {}: LAN {} behind it, routed into {} and accepted from it alone",
            peer.name,
            list(&peer.lan_prefixes),
            c.tun.name
        ));
    }
    r.facts.push(format!("exit mode: {}", if c.exit { "on (IP forwarding enabled while running)" } else { "off" }));
    if let Some(exit) = &c.exit_interface {
        r.facts.push(format!(
            "exit NAT: nftables table inet {} while running: {} masqueraded out of {exit}, forwarded from {} and \
             back; IPv6 router advertisements still accepted on {exit} (accept_ra 2)",
            roamtun_netlink::exit_nat_table(&c.tun.name),
            list(&c.client_prefixes),
            c.tun.name
        ));
        if !link_exists(exit) {
            r.warnings.push(format!(
                "exit_interface {exit:?} does not exist on this host (see `ip link`): the clients' traffic leaves \
                 through it only once it appears; check the name if it is a typo"
            ));
        }
    } else if c.exit {
        r.warnings.push(
            "exit = true without exit_interface: forwarding is on, but nothing masquerades the clients' addresses; \
             set exit_interface = \"eth0\" (the interface towards the internet) or add the NAT rule yourself"
                .into(),
        );
    }
    for p in &c.peers {
        r.facts.push(format!("peer {:?}: public key {}, virtual IPs {}", p.name, p.public_key, list(&p.virtual_ips)));
    }
    r.facts.push(control_fact(&c.control_socket, c.control_group.as_ref()));
    for (i, p) in c.peers.iter().enumerate() {
        if c.peers[..i].iter().any(|q| q.name == p.name) {
            r.warnings.push(format!(
                "two peers are named {:?}: `roamtun status` and the logs cannot tell them apart; give each its own name",
                p.name
            ));
        }
        if is_pasted(c.private_key(), &p.public_key) {
            r.warnings.push(format!(
                "private_key is peer {:?}'s public key, pasted in the wrong place: the server's private_key is its own \
                 (roamtun genkey)",
                p.name
            ));
        } else if p.public_key == own {
            r.warnings.push(format!(
                "peer {:?} has the server's own public key: the client needs a key of its own (roamtun genkey on the \
                 client, roamtun pubkey for this [[peer]])",
                p.name
            ));
        }
    }
    r
}

fn control_fact(socket: &std::path::Path, group: Option<&crate::config::ControlGroup>) -> String {
    match group {
        Some(g) => format!("control socket: {} (root and group {})", socket.display(), g.name),
        None => format!("control socket: {} (root only)", socket.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn key() -> PrivateKey {
        PrivateKey::generate().unwrap()
    }

    fn client_toml(private: &str, server_pub: &PublicKey, extra: &str) -> String {
        format!(
            "private_key = \"{private}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n{extra}\n\
             [server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{server_pub}\"\n"
        )
    }

    fn load_client(text: &str) -> ClientConfig {
        ClientConfig::from_toml(Path::new("c.toml"), text).unwrap()
    }

    fn server_toml(private: &str, peers: &[(&str, PublicKey, &str)]) -> String {
        let mut text = format!(
            "private_key = \"{private}\"\nlisten = \"198.18.1.1:7700\"\nvirtual_ips = [\"100.64.0.1\"]\n\
             client_prefixes = [\"100.64.0.0/10\"]\n"
        );
        for (name, pk, ip) in peers {
            text.push_str(&format!("[[peer]]\nname = \"{name}\"\npublic_key = \"{pk}\"\nvirtual_ips = [\"{ip}\"]\n"));
        }
        text
    }

    #[test]
    fn a_clean_client_config_lists_what_was_checked_and_warns_of_nothing() {
        let own = key();
        let server = key().public_key();
        let c = load_client(&client_toml(own.to_base64().as_str(), &server, "uplinks = [\"eth0\"]"));
        let r = client(&c, |_| true);
        assert_eq!(r.warnings, Vec::<String>::new());
        assert_eq!(
            r.facts,
            vec![
                format!("key: inline private_key, public key {} (give it to the server's [[peer]])", own.public_key()),
                format!("server: 198.18.1.1:7700, public key {server}"),
                "tun: roam0 (mtu 65535), virtual IPs 100.64.0.2".to_string(),
                "routes into the tunnel: 100.64.0.0/10".to_string(),
                format!("uplink eth0: {}, present", crate::config::uplink_kind("eth0")),
                "control socket: /run/roamtun/client.sock (root only)".to_string(),
            ]
        );
    }

    #[test]
    fn an_uplink_that_is_not_on_this_host_is_named() {
        let c = load_client(&client_toml(
            key().to_base64().as_str(),
            &key().public_key(),
            "uplinks = [\"lo\", \"wwan-typo0\"]",
        ));
        // The real lookup: lo exists on every host, this name on none.
        let r = client(&c, link_exists);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("uplink \"wwan-typo0\" does not exist on this host"), "{:?}", r.warnings);
        assert!(r.facts.iter().any(|f| f.starts_with("uplink lo: ") && f.ends_with(", present")), "{:?}", r.facts);
        assert!(r.facts.iter().any(|f| f == "uplink wwan-typo0: ethernet, not on this host now"), "{:?}", r.facts);
    }

    #[test]
    fn dns_says_its_backend_and_names_a_server_outside_the_tunnel() {
        let server = key().public_key();
        let c = load_client(&client_toml(key().to_base64().as_str(), &server, ""));
        assert_eq!(dns(&c, None).facts, ["dns: not set (the host's DNS settings are left alone)"]);
        let c =
            load_client(&client_toml(key().to_base64().as_str(), &server, "dns = [\"100.64.0.1\", \"192.0.2.53\"]"));
        let r = dns(&c, Some(&crate::dns::Backend::Resolved));
        assert_eq!(
            r.facts,
            ["dns: 100.64.0.1, 192.0.2.53 through systemd-resolved (over D-Bus, on the TUN's link) (beside the other \
              links' servers)"]
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("dns server 192.0.2.53 is not inside routes"), "{:?}", r.warnings);
        let why = "systemd-resolved is not running: no /run/systemd/resolve".to_string();
        let many = "dns = [\"100.64.0.1\", \"100.64.0.2\", \"100.64.0.3\", \"100.64.0.4\"]";
        let c = load_client(&client_toml(key().to_base64().as_str(), &server, many));
        let r = dns(&c, Some(&crate::dns::Backend::ResolvConf { why }));
        assert!(
            r.facts[0].contains(
                "through /etc/resolv.conf (replaced while running, put back at stop; systemd-resolved is not running"
            ),
            "{:?}",
            r.facts
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("only the first 3"), "{:?}", r.warnings);
    }

    #[test]
    fn routes_of_a_family_without_a_virtual_ip_are_named() {
        let text = client_toml(key().to_base64().as_str(), &key().public_key(), "")
            .replace("virtual_ips = [\"100.64.0.2\"]", "virtual_ips = [\"fd00:64::2\"]")
            .replace("routes = [\"100.64.0.0/10\"]", "routes = [\"100.64.0.0/10\", \"fd00:64::/64\"]");
        let r = client(&load_client(&text), |_| true);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("routes 100.64.0.0/10 are IPv4 but virtual_ips has only IPv6 addresses"));
        let text = client_toml(key().to_base64().as_str(), &key().public_key(), "")
            .replace("routes = [\"100.64.0.0/10\"]", "routes = [\"100.64.0.0/10\", \"fd00:64::/64\"]");
        let r = client(&load_client(&text), |_| true);
        assert!(r.warnings[0].starts_with("routes fd00:64::/64 are IPv6 but virtual_ips has only IPv4 addresses"));
        // Both families present: nothing to say.
        let text = text.replace("virtual_ips = [\"100.64.0.2\"]", "virtual_ips = [\"100.64.0.2\", \"fd00:64::2\"]");
        assert_eq!(client(&load_client(&text), |_| true).warnings, Vec::<String>::new());
    }

    #[test]
    fn a_full_tunnel_says_what_it_installs_and_a_family_without_a_virtual_ip_is_blocked() {
        let text = client_toml(key().to_base64().as_str(), &key().public_key(), "")
            .replace("routes = [\"100.64.0.0/10\"]", "routes = [\"0.0.0.0/0\", \"::/0\"]");
        let r = client(&load_client(&text), |_| true);
        assert_eq!(r.warnings, Vec::<String>::new(), "a full tunnel is no routing mistake");
        let full: Vec<&String> = r.facts.iter().filter(|f| f.starts_with("full tunnel")).collect();
        assert_eq!(full.len(), 3, "{:?}", r.facts);
        assert_eq!(full[0], "full tunnel IPv4: 0.0.0.0/0 into roam0 (source 100.64.0.2) in table 52100");
        assert!(
            full[1].starts_with("full tunnel IPv6: ::/0 unreachable in table 52100 (no IPv6 virtual IP"),
            "{full:?}"
        );
        assert!(full[2].contains("5203 `not fwmark 0x5254 lookup 52100`"), "{full:?}");
    }

    #[test]
    fn the_exit_nat_is_described_and_a_missing_exit_interface_named() {
        let text = server_toml(key().to_base64().as_str(), &[("laptop", key().public_key(), "100.64.0.2")]);
        let with = |line: &str| ServerConfig::from_toml(Path::new("s.toml"), &format!("{line}\n{text}")).unwrap();
        let r = server(&with("exit_interface = \"eth-typo0\""), link_exists);
        assert!(
            r.facts.iter().any(|f| f.starts_with("exit NAT: nftables table inet roamtun_roamsrv0")),
            "{:?}",
            r.facts
        );
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("exit_interface \"eth-typo0\" does not exist on this host"));
        assert_eq!(server(&with("exit_interface = \"lo\""), link_exists).warnings, Vec::<String>::new());
        let r = server(&with("exit = true"), link_exists);
        assert!(r.warnings[0].starts_with("exit = true without exit_interface"), "{:?}", r.warnings);
    }

    #[test]
    fn the_servers_key_on_the_client_is_named() {
        let server = key();
        let c = load_client(&client_toml(server.to_base64().as_str(), &server.public_key(), ""));
        let r = client(&c, |_| true);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("the client's key is the server's own key"), "{:?}", r.warnings);
    }

    #[test]
    fn a_public_key_pasted_as_private_key_is_named() {
        let server_pub = key().public_key();
        // The server's public key where the client's private key belongs: it parses as a key.
        let c = load_client(&client_toml(&server_pub.to_base64(), &server_pub, ""));
        let r = client(&c, |_| true);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("private_key is the server's public key, pasted in the wrong place"));
        let laptop = key().public_key();
        let s = ServerConfig::from_toml(
            Path::new("s.toml"),
            &server_toml(&laptop.to_base64(), &[("laptop", laptop, "100.64.0.2")]),
        )
        .unwrap();
        let r = server(&s, |_| true);
        assert_eq!(
            r.warnings,
            vec![
            "private_key is peer \"laptop\"'s public key, pasted in the wrong place: the server's private_key is its \
             own (roamtun genkey)"
                .to_string()
        ]
        );
    }

    #[test]
    fn two_peers_with_one_name_and_a_peer_with_the_servers_key_are_named() {
        let own = key();
        let text = server_toml(
            own.to_base64().as_str(),
            &[("laptop", key().public_key(), "100.64.0.2"), ("laptop", key().public_key(), "100.64.0.3")],
        );
        let r = server(&ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap(), |_| true);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("two peers are named \"laptop\""), "{:?}", r.warnings);
        assert!(r.facts.iter().filter(|f| f.starts_with("peer \"laptop\": public key")).count() == 2, "{:?}", r.facts);
        assert!(r.facts.contains(&"listen: 198.18.1.1:7700".to_string()), "{:?}", r.facts);
        let text = server_toml(own.to_base64().as_str(), &[("phone", own.public_key(), "100.64.0.2")]);
        let r = server(&ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap(), |_| true);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].starts_with("peer \"phone\" has the server's own public key"), "{:?}", r.warnings);
    }
}
