//! The server's peers: `[[peer]]` tables and the files of `peers_dir`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::de::{from_str, vec_from_str};
use super::error::{parse, ConfigError};
use super::prefix::Prefix;
use crate::keys::PublicKey;

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
        };
        peers.push((peer, file));
    }
    Ok(peers)
}
