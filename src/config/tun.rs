//! `[tun]`: the TUN device a daemon creates.

use std::path::Path;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// The TUN device a daemon creates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunConfig {
    /// Default: `roam0` on the client, `roamsrv0` on the server.
    #[serde(default)]
    pub name: String,
    /// Large by default: TCP is terminated locally, so the TUN need not match any physical path.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

pub(super) fn default_mtu() -> u16 {
    65535
}

pub(super) fn check_tun(path: &Path, tun: &mut TunConfig, default_name: &str) -> Result<(), ConfigError> {
    if tun.name.is_empty() {
        tun.name = default_name.into();
    }
    if tun.name.is_empty() || tun.name.len() > 15 {
        return Err(invalid(
            path,
            format!("tun.name {:?} must be 1 to 15 characters (a Linux interface name)", tun.name),
        ));
    }
    if tun.mtu < 1280 {
        return Err(invalid(path, format!("tun.mtu {} is below 1280, the IPv6 minimum", tun.mtu)));
    }
    Ok(())
}
