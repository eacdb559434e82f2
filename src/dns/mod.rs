//! The client's `dns = [...]`: the host resolves names through the tunnel's DNS servers while the
//! client runs, and gets its own settings back when it stops, however it stops.
//!
//! Two backends, chosen at start as wg-quick's resolvconf helpers choose:
//! - [`resolved`]: systemd-resolved runs (its runtime directory exists, its bus name is owned, and it
//!   serves this network namespace): the servers go to the TUN's link over D-Bus. resolved forgets
//!   the link when the TUN disappears, so a killed client leaves nothing behind.
//! - [`resolv_conf`]: otherwise /etc/resolv.conf is replaced, its previous content saved next to the
//!   control socket first, and put back at stop; a copy left by a killed client is put back at the
//!   next start. A file someone else rewrote meanwhile is left alone.
//!
//! Not here: search domains, DNS over TLS, split DNS by domain (resolved's routing domains are
//! `~.` for a full tunnel and none otherwise).

pub mod resolv_conf;
pub mod resolved;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::Prefix;
use crate::control::DnsStatus;

/// The file the resolv.conf backend manages.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Where the resolv.conf backend keeps the file it replaced: beside the control socket, in the
/// daemon's runtime directory, like the server's `.forwarding` record.
pub fn state_path(control_socket: &Path) -> PathBuf {
    control_socket.with_extension("dns")
}

/// Which backend applies `dns`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Resolved,
    ResolvConf { why: String },
}

impl Backend {
    /// One line for `--check` and the log.
    pub fn describe(&self) -> String {
        match self {
            Backend::Resolved => "systemd-resolved (over D-Bus, on the TUN's link)".into(),
            Backend::ResolvConf { why } => format!("{RESOLV_CONF} (replaced while running, put back at stop; {why})"),
        }
    }
}

/// Chooses the backend as it would be chosen now.
pub async fn detect() -> Backend {
    match resolved::detect().await {
        Ok(()) => Backend::Resolved,
        Err(why) => Backend::ResolvConf { why },
    }
}

/// Failed to apply or take back the tunnel's DNS settings.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns: cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: {path} is not text; roamtun does not replace it")]
    NotText { path: PathBuf },
    #[error("dns: {link} is a symlink to {target}, which does not exist; roamtun writes no file there")]
    DanglingLink { link: PathBuf, target: PathBuf },
    #[error("dns: cannot save the current DNS settings in {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: cannot remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dns: the TUN {tun} has no interface index")]
    NoLink { tun: String },
    #[error("dns: systemd-resolved: cannot {action}")]
    Bus {
        action: String,
        /// Boxed: a zbus error is large, and every other variant is small.
        #[source]
        source: Box<zbus::Error>,
    },
}

/// The tunnel's DNS settings while they are applied; [`Applied::restore`] takes them back (dropping
/// it without does so too for the resolv.conf backend, on a panic's unwinding).
pub enum Applied {
    Resolved(resolved::Link),
    ResolvConf(resolv_conf::Replaced),
}

impl Applied {
    pub fn status(&self) -> DnsStatus {
        match self {
            Applied::Resolved(link) => link.status(),
            Applied::ResolvConf(replaced) => replaced.status(),
        }
    }

    /// Puts the host's own settings back; what could not be is logged.
    pub async fn restore(self) {
        match self {
            Applied::Resolved(link) => link.revert().await,
            Applied::ResolvConf(replaced) => replaced.restore(),
        }
    }
}

/// Whether `routes` send everything of a family into the TUN: then every name is resolved through
/// the tunnel (resolved's routing domain `~.`), not only those no other link claims.
pub fn full_tunnel(routes: &[Prefix]) -> bool {
    routes.iter().any(|p| p.len == 0)
}

/// Puts back what a killed client left changed (the resolv.conf backend's saved copy), whatever
/// this start's configuration says; then applies `servers` to the host for the TUN `tun`, through
/// the backend [`detect`] chooses. `servers` empty: nothing is applied.
pub async fn start(
    servers: &[IpAddr],
    routes: &[Prefix],
    tun: &str,
    control_socket: &Path,
) -> Result<Option<Applied>, DnsError> {
    let state = state_path(control_socket);
    if let Err(err) = resolv_conf::recover(&state) {
        if !servers.is_empty() {
            return Err(err);
        }
        tracing::error!(error = %format!("{:#}", anyhow::Error::new(err)), "dns: cannot put back what a killed client left");
    }
    if servers.is_empty() {
        return Ok(None);
    }
    let backend = detect().await;
    tracing::info!(backend = %backend.describe(), "dns: applying the tunnel's DNS servers");
    match backend {
        Backend::Resolved => {
            let link = resolved::Link::apply(tun, servers, full_tunnel(routes)).await?;
            Ok(Some(Applied::Resolved(link)))
        }
        Backend::ResolvConf { .. } => {
            let replaced = resolv_conf::Replaced::apply(Path::new(RESOLV_CONF), servers, state)?;
            Ok(Some(Applied::ResolvConf(replaced)))
        }
    }
}
