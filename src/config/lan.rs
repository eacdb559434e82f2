//! `[lan]` of the client: a network behind it (the client runs on a router, CPE) whose hosts use the
//! tunnel too, and keep their connections across every WAN switch as the router's own apps do.

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use super::de::vec_from_str;
use super::error::{invalid_at, ConfigError};
use super::prefix::{prefix_contains, Prefix};
use crate::config_shape::Step;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LanConfig {
    /// The LAN's prefixes (e.g. `192.168.1.0/24`): their hosts' packets into the TUN are carried.
    #[serde(deserialize_with = "vec_from_str")]
    pub prefixes: Vec<Prefix>,
    #[serde(default)]
    pub mode: LanMode,
}

/// How the LAN's hosts appear on the server side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LanMode {
    /// Translated to the client's virtual IP on the router (an nftables masquerade into the TUN):
    /// works with any server, and server apps see the client's virtual IP.
    #[default]
    Masquerade,
    /// With their own addresses: the server lists the same prefixes as this peer's `lan_prefixes`,
    /// accepts those sources from this peer only and routes replies back; server apps see the LAN
    /// hosts' addresses and can reach them.
    Routed,
}

impl LanMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LanMode::Masquerade => "masquerade",
            LanMode::Routed => "routed",
        }
    }
}

/// Two prefixes share an address.
pub fn overlap(a: &Prefix, b: &Prefix) -> bool {
    prefix_contains(a, b.addr) || prefix_contains(b, a.addr)
}

pub(super) fn check_lan(path: &Path, text: &str, lan: &LanConfig, virtual_ips: &[IpAddr]) -> Result<(), ConfigError> {
    let at = |i: usize| [Step::Key("lan"), Step::Key("prefixes"), Step::Index(i)];
    if lan.prefixes.is_empty() {
        let key = [Step::Key("lan"), Step::Key("prefixes")];
        return Err(invalid_at(path, text, &key, "[lan] prefixes must name the LAN's prefixes".into()));
    }
    for (i, p) in lan.prefixes.iter().enumerate() {
        if p.len == 0 {
            let message = format!("[lan] prefix {p} is everything: name the LAN's own prefixes");
            return Err(invalid_at(path, text, &at(i), message));
        }
        if let Some(ip) = virtual_ips.iter().find(|ip| prefix_contains(p, **ip)) {
            let message = format!("[lan] prefix {p} holds the virtual IP {ip}: the LAN's addresses must be its own");
            return Err(invalid_at(path, text, &at(i), message));
        }
        if let Some(other) = lan.prefixes[..i].iter().find(|o| overlap(o, p)) {
            return Err(invalid_at(path, text, &at(i), format!("[lan] prefix {p} overlaps {other}")));
        }
    }
    Ok(())
}
