//! The server's reload (SIGHUP or `roamtun reload`): the config file and `peers_dir` are read again,
//! and added, changed and removed peers take effect without touching anyone else's session. A peer
//! removed or given other virtual IPs has its session ended with a CLOSE that says why; everyone
//! else keeps theirs. What the running daemon cannot change (listen addresses, its TUN, its key…)
//! is reported as needing a restart and left as it was. The routes of the peers' LANs into the TUN
//! follow the peers.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tokio::sync::{mpsc, oneshot};

use super::{EngineMsg, Tun};
use crate::config::{PeerConfig, Prefix, ServerConfig};
use crate::control::Response;

/// The configuration new connections are checked against; swapped whole by a reload.
pub struct Live {
    pub config: Arc<ServerConfig>,
    pub tls: Arc<rustls::ServerConfig>,
}

pub type SharedLive = Arc<RwLock<Live>>;

/// A `roamtun reload` waiting for its answer.
pub type ReloadRequest = oneshot::Sender<Response>;

/// Reloads on SIGHUP and on every request, until the daemon stops.
pub async fn serve(
    path: PathBuf,
    live: SharedLive,
    tun: Arc<Tun>,
    engine: mpsc::Sender<EngineMsg>,
    mut requests: mpsc::Receiver<ReloadRequest>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGHUP; roamtun reload still works");
            None
        }
    };
    loop {
        let reply = tokio::select! {
            Some(()) = async { hangup.as_mut()?.recv().await } => None,
            request = requests.recv() => match request {
                Some(reply) => Some(reply),
                None => return,
            },
        };
        let answer = match reload(&path, &live, &tun, &engine).await {
            Ok(summary) => {
                tracing::info!(%summary, "configuration reloaded");
                Response::Done { message: summary }
            }
            Err(err) => {
                tracing::warn!(error = %err, "reload refused; the running configuration is unchanged");
                Response::Error { message: format!("reload refused, nothing changed: {err}") }
            }
        };
        if let Some(reply) = reply {
            let _ = reply.send(answer);
        }
    }
}

async fn reload(
    path: &std::path::Path,
    live: &SharedLive,
    tun: &Tun,
    engine: &mpsc::Sender<EngineMsg>,
) -> Result<String, String> {
    let new = Arc::new(ServerConfig::load(path).map_err(|e| roamtun_netlink::error_chain(&e))?);
    let old = live.read().unwrap_or_else(|e| e.into_inner()).config.clone();
    if new.private_key().public_key() != old.private_key().public_key() {
        return Err("the server's private key changed: that needs a restart".into());
    }
    let keys = new.peers.iter().map(|p| p.public_key).collect();
    let tls = crate::tls::server_config(new.private_key(), keys).map_err(|e| e.to_string())?;
    let diff = PeerDiff::new(&old.peers, &new.peers);
    let restart = needs_restart(&old, &new);
    // A new LAN is routed before its peer may connect; one that went stops being routed. The TUN's
    // addresses and the clients' prefixes stay as they are until a restart.
    let routes = tun_routes(&old, &new);
    let (added, removed) = match tun.set_routes(&old.virtual_ips, &routes).await {
        Ok(change) => change,
        Err(err) => {
            let undo = tun.set_routes(&old.virtual_ips, &old.tun_routes()).await;
            let undone = if undo.is_ok() { "" } else { " (and putting the old ones back failed too)" };
            return Err(format!(
                "cannot change the routes into the TUN{undone}: {}",
                roamtun_netlink::error_chain(&err)
            ));
        }
    };
    let known = new.peers.iter().map(super::KnownPeer::of).collect();
    let mut ended = Vec::new();
    for p in &diff.removed {
        ended
            .push((p.public_key.to_base64(), format!("peer {:?} was removed from the server's configuration", p.name)));
    }
    for p in &diff.changed {
        ended.push((p.public_key.to_base64(), format!("peer {:?} was changed in the server's configuration", p.name)));
    }
    // New connections see the new peers from here on; then the engine ends the old sessions.
    *live.write().unwrap_or_else(|e| e.into_inner()) = Live { config: new.clone(), tls };
    engine.send(EngineMsg::PeersChanged { known, ended }).await.map_err(|_| "the engine task stopped".to_string())?;
    let names = |ps: &[&PeerConfig]| ps.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ");
    let mut summary = format!(
        "{} peers: {} added ({}), {} removed ({}), {} changed ({}), {} unchanged",
        diff.total,
        diff.added.len(),
        names(&diff.added),
        diff.removed.len(),
        names(&diff.removed),
        diff.changed.len(),
        names(&diff.changed),
        diff.unchanged
    );
    if !diff.relimited.is_empty() {
        summary.push_str(&format!("; new limits for {} (their sessions go on under them)", names(&diff.relimited)));
    }
    if !added.is_empty() || !removed.is_empty() {
        let list = |ps: &[Prefix]| ps.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        summary.push_str(&format!("; routes into the TUN: added ({}), removed ({})", list(&added), list(&removed)));
    }
    if !restart.is_empty() {
        summary.push_str(&format!("; not applied until a restart: {}", restart.join(", ")));
    }
    Ok(summary)
}

/// Peers by public key: a changed peer kept its key but not its name, virtual IPs or LAN prefixes.
/// An unchanged one may still have new limits (`relimited`), which its session takes as it runs.
struct PeerDiff<'a> {
    added: Vec<&'a PeerConfig>,
    removed: Vec<&'a PeerConfig>,
    changed: Vec<&'a PeerConfig>,
    unchanged: usize,
    relimited: Vec<&'a PeerConfig>,
    total: usize,
}

impl<'a> PeerDiff<'a> {
    fn new(old: &'a [PeerConfig], new: &'a [PeerConfig]) -> Self {
        let old_by_key: BTreeMap<_, _> = old.iter().map(|p| (p.public_key, p)).collect();
        let new_by_key: BTreeMap<_, _> = new.iter().map(|p| (p.public_key, p)).collect();
        let mut diff = PeerDiff {
            added: vec![],
            removed: vec![],
            changed: vec![],
            unchanged: 0,
            relimited: vec![],
            total: new.len(),
        };
        for (key, p) in &new_by_key {
            match old_by_key.get(key) {
                None => diff.added.push(p),
                Some(o) if o.name != p.name || o.virtual_ips != p.virtual_ips || o.lan_prefixes != p.lan_prefixes => {
                    diff.changed.push(p)
                }
                Some(o) => {
                    diff.unchanged += 1;
                    if o.limits() != p.limits() {
                        diff.relimited.push(p);
                    }
                }
            }
        }
        diff.removed = old_by_key.iter().filter(|(k, _)| !new_by_key.contains_key(k)).map(|(_, p)| *p).collect();
        diff
    }
}

/// The routes into the TUN after a reload from `old` to `new`: the running clients' prefixes (a
/// change of them needs a restart) and the new configuration's LANs.
fn tun_routes(old: &ServerConfig, new: &ServerConfig) -> Vec<Prefix> {
    old.client_prefixes.iter().copied().chain(new.lan_routes()).collect()
}

/// The keys whose change the running daemon does not apply.
fn needs_restart(old: &ServerConfig, new: &ServerConfig) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |key, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check("listen", old.listen != new.listen);
    check("virtual_ips", old.virtual_ips != new.virtual_ips);
    check("client_prefixes", old.client_prefixes != new.client_prefixes);
    check("exit", old.exit != new.exit);
    check("allowed_destinations", old.allowed_destinations != new.allowed_destinations);
    check("client_to_client", old.client_to_client != new.client_to_client);
    check("[tun]", old.tun.name != new.tun.name || old.tun.mtu != new.tun.mtu);
    check("control_socket", old.control_socket != new.control_socket);
    check("metrics_listen", old.metrics_listen != new.metrics_listen);
    check("[tuning]", old.tuning != new.tuning);
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::PrivateKey;

    fn peer(name: &str, key: &PrivateKey, ip: &str) -> PeerConfig {
        PeerConfig {
            name: name.into(),
            public_key: key.public_key(),
            virtual_ips: vec![ip.parse().unwrap()],
            switch_timeout_secs: None,
            lan_prefixes: Vec::new(),
            max_flows_per_session: None,
            max_udp_flows_per_session: None,
            max_paths_per_session: None,
        }
    }

    #[test]
    fn peers_are_told_apart_by_key() {
        let (a, b, c, d) = (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        );
        let old = [peer("a", &a, "100.64.0.2"), peer("b", &b, "100.64.0.3"), peer("c", &c, "100.64.0.4")];
        let mut a_fewer = peer("a", &a, "100.64.0.2");
        a_fewer.max_flows_per_session = Some(20);
        let new = [a_fewer, peer("b", &b, "100.64.0.9"), peer("d", &d, "100.64.0.5")];
        let diff = PeerDiff::new(&old, &new);
        let names = |ps: &[&PeerConfig]| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&diff.added), ["d"]);
        assert_eq!(names(&diff.removed), ["c"]);
        assert_eq!(names(&diff.changed), ["b"], "b kept its key but not its virtual IP");
        assert_eq!((diff.unchanged, diff.total), (1, 3));
        assert_eq!(names(&diff.relimited), ["a"], "a's new flow limit was missed");
    }
}
