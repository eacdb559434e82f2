//! The server's peers: `[[peer]]` tables and the files of `peers_dir`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::de::{from_str, vec_from_str};
use super::error::{parse, ConfigError};
use super::prefix::Prefix;
use crate::keys::PublicKey;
use roamtun_proto::relay::engine::PeerLimits;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    #[serde(deserialize_with = "from_str")]
    pub public_key: PublicKey,
    pub virtual_ips: Vec<IpAddr>,
    /// This peer's own switch timeout (`tuning.switch_timeout_secs` otherwise): how long its session
    /// waits for it to come back, e.g. a laptop closed for the night.
    #[serde(default)]
    pub switch_timeout_secs: Option<u64>,
    /// Networks behind this peer (a router's LAN in routed mode, its `[lan] prefixes`): their hosts
    /// speak from their own addresses, accepted from this peer only and routed into the TUN, like
    /// WireGuard's AllowedIPs.
    #[serde(default, deserialize_with = "vec_from_str")]
    pub lan_prefixes: Vec<Prefix>,
    /// This peer's own bounds, over `[tuning]`'s of the same names: a router with a LAN behind it
    /// may need more flows than a phone, and an untrusted peer fewer.
    #[serde(default)]
    pub max_flows_per_session: Option<usize>,
    #[serde(default)]
    pub max_udp_flows_per_session: Option<usize>,
    #[serde(default)]
    pub max_paths_per_session: Option<usize>,
}

impl PeerConfig {
    /// The bounds this peer set for itself; the rest are `[tuning]`'s.
    pub fn limits(&self) -> PeerLimits {
        PeerLimits {
            streams: self.max_flows_per_session,
            udp_flows: self.max_udp_flows_per_session,
            paths: self.max_paths_per_session,
        }
    }
}

/// One file of `peers_dir`: a `[[peer]]` table whose name defaults to the file's stem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: Option<String>,
    #[serde(deserialize_with = "from_str")]
    public_key: PublicKey,
    virtual_ips: Vec<IpAddr>,
    #[serde(default)]
    switch_timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "vec_from_str")]
    lan_prefixes: Vec<Prefix>,
    #[serde(default)]
    max_flows_per_session: Option<usize>,
    #[serde(default)]
    max_udp_flows_per_session: Option<usize>,
    #[serde(default)]
    max_paths_per_session: Option<usize>,
}

/// Every `*.toml` of `dir`, in name order, as peers.
pub(super) fn read_peers_dir(dir: &Path) -> Result<Vec<(PeerConfig, PathBuf)>, ConfigError> {
    let read_err = |source| ConfigError::Read { path: dir.into(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut peers = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
        let peer: PeerFile = parse(&file, &text)?;
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = peer.name.unwrap_or(stem);
        let peer = PeerConfig {
            name,
            public_key: peer.public_key,
            virtual_ips: peer.virtual_ips,
            switch_timeout_secs: peer.switch_timeout_secs,
            lan_prefixes: peer.lan_prefixes,
            max_flows_per_session: peer.max_flows_per_session,
            max_udp_flows_per_session: peer.max_udp_flows_per_session,
            max_paths_per_session: peer.max_paths_per_session,
        };
        peers.push((peer, file));
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    #[test]
    fn a_peer_file_is_named_by_its_stem_and_may_set_its_own_limits() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "public_key = \"{key}\"\nvirtual_ips = [\"100.64.0.7\"]\nmax_flows_per_session = 64\n\
             max_paths_per_session = 3\n"
        );
        std::fs::write(dir.path().join("router.toml"), text).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a peer").unwrap();
        let peers = read_peers_dir(dir.path()).unwrap();
        assert_eq!(peers.len(), 1, "only *.toml files are peers");
        let (peer, file) = &peers[0];
        assert_eq!((peer.name.as_str(), file.file_name().unwrap()), ("router", "router.toml".as_ref()));
        assert_eq!(peer.limits(), PeerLimits { streams: Some(64), udp_flows: None, paths: Some(3) });
    }
}
