//! The tokio shell of both daemons: owns the TUN, the sockets and the clock, and feeds the sans-IO
//! [`Engine`] and the transition state machines ([`roamtun_proto::transition`]). `client` and `server` add
//! what differs: who dials whom, over which uplink.
//!
//! A *session* (one client and its virtual IPs, its streams and their replay buffers) outlives its
//! *paths* (authenticated TLS connections over one uplink each). The [`shell`] moves a session from
//! one path to the next as the transition protocol says.

pub mod client;
mod client_side;
mod crash;
mod forwarding;
pub mod memory;
mod relay_socket;
pub mod reload;
pub mod server;
mod shell;
mod status;
mod tls_split;
mod transport;
mod tun;
mod volume;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use tokio::sync::{mpsc, Notify};

use crate::clock::Clock;
use crate::config::Tuning;
use crate::control::ControlRequest;
use roamtun_proto::path::PathLoss;
pub use roamtun_proto::relay::core::{DialRequest, PathInfo, PeerInfo};
use roamtun_proto::relay::engine::{Engine, EngineConfig, PeerLimits, Role, SessionLimits};
use roamtun_proto::relay::policy::DestinationPolicy;
use roamtun_proto::time::Duration;
use roamtun_proto::transition::{PathId, TransitionConfig};
use roamtun_stack::StackConfig;

pub use transport::PathIo;

/// Tries the configured congestion control once at start-up: a kernel without it is said in words
/// (with the fix) once, not on every relay connection, which then keep the host's default.
fn check_congestion_control(tuning: &Tuning) {
    match relay_socket::check_congestion_control(&tuning.congestion_control) {
        Ok(()) => tracing::debug!(congestion_control = %tuning.congestion_control, "relay sockets' congestion control"),
        Err(err) => tracing::warn!("{err}; the relay connections use the host's default instead"),
    }
}
pub use tun::{Tun, TunError};

/// What an authenticated path asks to join.
#[derive(Debug, Clone)]
pub enum Join {
    /// Server: a client's HELLO. `resume` names the session the client continues on this path (0: a
    /// new session); the core answers WELCOME with the session the path joined.
    Hello { resume: u64, virtual_ips: Vec<IpAddr> },
    /// Client: the server's WELCOME put the path in this session; `ahead_sent`: the dial request's
    /// `ahead` frames went out behind HELLO.
    Welcome { session: u64, ahead_sent: bool },
}

/// What the connection tasks tell the engine task.
pub enum EngineMsg {
    /// A relay connection is authenticated and its reader and writer run.
    PathUp {
        path: PathId,
        join: Join,
        /// Boxed: the other messages are small and many.
        peer: Box<PeerInfo>,
        info: PathInfo,
        io: PathIo,
    },
    /// Whole frames read from a path.
    PathBytes {
        path: PathId,
        /// Split off the reader's buffer (see `transport::take_frames`), not copied.
        bytes: bytes::Bytes,
    },
    /// The body of a CONTROL frame (a transition message) read from a path.
    PathControl {
        path: PathId,
        body: Vec<u8>,
    },
    /// A PONG came back on a path after this round trip.
    PathRtt {
        path: PathId,
        rtt: Duration,
    },
    /// The relay socket's TCP counters on a path: the kernel's RTT and the smoothed share of
    /// segments retransmitted (the path's loss, which TCP hides).
    PathStats {
        path: PathId,
        sample: roamtun_proto::relay::core::PathSample,
    },
    /// The peer's REPORT on a path: the share of its segments it retransmits (the loss towards us).
    PathPeerLoss {
        path: PathId,
        loss: f64,
    },
    /// A path failed or ended.
    PathDown {
        path: PathId,
        reason: PathLoss,
    },
    /// Client: a [`DialRequest`] for one uplink failed.
    DialFailed {
        error: String,
        /// It was a standby path (Search), which nobody waits for.
        standby: bool,
    },
    Control(ControlRequest),
    /// Server: a reload changed the configured peers: `known` is the new list (for the status, and
    /// whose limits running sessions take), `ended` the public keys (base64) whose sessions must
    /// end, with why.
    PeersChanged {
        known: Vec<KnownPeer>,
        ended: Vec<(String, String)>,
    },
    /// Stop: reset the apps' connections, close the sessions, return.
    Shutdown,
}

/// Facts for the status that the engine task does not own.
pub struct StatusSource {
    pub role: Role,
    pub tun: String,
    pub virtual_ips: Vec<IpAddr>,
    pub started: StdInstant,
    /// Peers that are configured but may not be connected (server: every `[[peer]]`; client: the server).
    pub known_peers: Vec<KnownPeer>,
    pub shared: Arc<SharedCounters>,
    /// Client: its `dns` as applied to the host.
    pub dns: Option<crate::control::DnsStatus>,
    /// Client: the `[lan]` it carries.
    pub lan: Option<crate::control::LanStatus>,
}

/// A configured peer, as the status lists it before and while it is connected.
#[derive(Debug, Clone)]
pub struct KnownPeer {
    pub name: String,
    pub public_key: String,
    pub virtual_ips: Vec<IpAddr>,
    /// Server: the networks routed through this peer (`[[peer]] lan_prefixes`).
    pub lan_prefixes: Vec<String>,
    /// Server: the bounds this peer's `[[peer]]` table sets.
    pub limits: PeerLimits,
}

impl KnownPeer {
    fn of(peer: &crate::config::PeerConfig) -> Self {
        KnownPeer {
            name: peer.name.clone(),
            public_key: peer.public_key.to_base64(),
            virtual_ips: peer.virtual_ips.clone(),
            lan_prefixes: peer.lan_prefixes.iter().map(ToString::to_string).collect(),
            limits: peer.limits(),
        }
    }
}

/// Counters and notes written by connection tasks, read for status.
#[derive(Default)]
pub struct SharedCounters {
    pub handshakes_refused: AtomicU64,
    /// TLS traffic key refreshes this daemon's path writers sent (`tuning.rekey_interval_secs`).
    pub key_updates: Arc<AtomicU64>,
    /// Server: connections closed at accept because their source was at its bound
    /// ([`roamtun_proto::admission`]).
    pub connections_over_limit: AtomicU64,
    /// Server: connections between accept and authentication now.
    pub handshakes_pending: AtomicU64,
    /// Server: connections in their handshake closed to make room for a newer one.
    pub handshakes_evicted: AtomicU64,
    pub connects: AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
    next_path: AtomicU64,
}

impl SharedCounters {
    pub fn note_error(&self, err: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err);
        }
    }

    /// Client: a path to the server is up; the last error is history.
    pub fn note_connected(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.last_error.lock() {
            *e = None;
        }
    }

    /// A path id never used before in this daemon.
    pub fn next_path(&self) -> PathId {
        PathId(self.next_path.fetch_add(1, Ordering::Relaxed) + 1)
    }
}

pub fn engine_config(role: Role, tuning: &Tuning, mtu: u16) -> EngineConfig {
    EngineConfig {
        role,
        stream_window: tuning.stream_window,
        session_out_budget: tuning.session_out_budget,
        udp_idle_timeout: Duration::from_secs(tuning.udp_idle_timeout_secs),
        session_limits: SessionLimits {
            streams: tuning.max_flows_per_session,
            udp_flows: tuning.max_udp_flows_per_session,
            paths: tuning.max_paths_per_session,
        },
        // The server sets its own (server::destination_policy); the client engine does not use it.
        destinations: DestinationPolicy::allow_all(),
        stack: StackConfig {
            mtu: usize::from(mtu),
            tcp_rx_buffer: tuning.tcp_buffer,
            tcp_tx_buffer: tuning.tcp_buffer,
            max_flows: tuning.max_tcp_flows,
            // Our TUN devices finish TCP checksums themselves (tun.rs, roamtun_stack::vnet).
            tcp_checksum_offload: true,
            ..StackConfig::default()
        },
    }
}

pub fn transition_config(tuning: &Tuning) -> TransitionConfig {
    TransitionConfig {
        switch_timeout: Duration::from_secs(tuning.switch_timeout_secs),
        client_give_up: Duration::from_secs(tuning.switch_timeout_secs),
        ..TransitionConfig::default()
    }
}

/// What the client side of the engine task needs beyond the server's.
pub struct ClientHooks {
    /// Where the engine task asks for paths.
    pub dial: mpsc::Sender<DialRequest>,
    /// The uplinks as rtnetlink reports them (`None`: not watched).
    pub uplinks: Option<tokio::sync::watch::Receiver<Uplinks>>,
    /// The configured uplinks, in order of preference (empty: the kernel's routing chooses).
    pub configured: Vec<crate::config::UplinkConfig>,
    pub decision: crate::config::DecisionConfig,
    /// Where the capped uplinks' volume is kept across restarts (`volume`).
    pub volume_file: std::path::PathBuf,
}

/// Every interface rtnetlink reports, by name.
pub type Uplinks = std::collections::BTreeMap<String, roamtun_netlink::Uplink>;

/// What both daemons share around their own work (`role_task`: dialing or accepting): the engine task
/// on `tun`, the control socket, and the orderly shutdown on SIGINT/SIGTERM (apps' connections reset,
/// sessions closed, routes and addresses removed, control socket deleted).
#[allow(clippy::too_many_arguments)]
pub async fn serve<F, Fut>(
    tun: Arc<Tun>,
    engine: Engine,
    transition: TransitionConfig,
    clock: Clock,
    source: StatusSource,
    client: Option<ClientHooks>,
    control_socket: &std::path::Path,
    control_access: crate::control::Access,
    metrics: Option<std::net::SocketAddr>,
    reloads: Option<mpsc::Sender<reload::ReloadRequest>>,
    role_task: F,
) -> anyhow::Result<()>
where
    F: FnOnce(mpsc::Sender<EngineMsg>, Arc<Notify>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    // Mostly relay reads of up to 64 KiB each: 128 of them bound what waits for the engine to 8 MiB;
    // past that the readers stop and TCP slows the peers down.
    let (engine_tx, engine_rx) = mpsc::channel(128);
    let room = Arc::new(Notify::new());
    let tun_name = source.tun.clone();
    let (shell, uplinks) = shell::Shell::new(engine, tun.clone(), clock, transition, source, client);
    crash::install_hook();
    let mut engine_task = tokio::spawn(shell.run(uplinks, engine_rx, room.clone()));
    // Whether the control socket is ours to delete: one that another daemon answers on is not.
    let mut bound_socket = false;
    let result = async {
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let mut control_task = crate::control::serve(control_socket, control_access, ctl_tx.clone()).await?;
        bound_socket = true;
        let metrics_task = match metrics {
            Some(addr) => Some(crate::metrics::serve(addr, ctl_tx).await?),
            None => None,
        };
        forward_control(ctl_rx, engine_tx.clone(), reloads);
        // Everything that can fail at start is done: the TUN, the listeners, the control socket.
        crate::service::ready(&format!("serving on {tun_name}, control socket {}", control_socket.display()));
        // Only a signal ends the daemon well; any task that ends or panics before one leaves it
        // unable to do its work, so it stops, cleans up and exits non-zero (see crash.rs).
        // A panic comes first: it is the cause, and the dialer whose engine it killed ends in the same
        // poll, so an unbiased select would often name the dialer instead.
        let outcome = tokio::select! {
            biased;
            _ = shutdown_signal() => Ok(()),
            what = crash::panicked() => Err(anyhow::anyhow!("a task panicked: {what}")),
            end = &mut engine_task => Err(match end {
                Err(err) if err.is_panic() => anyhow::anyhow!("the engine task panicked: {}", crash::first_panic()),
                _ => anyhow::anyhow!("the engine task ended unexpectedly (its TUN or its queue failed)"),
            }),
            _ = role_task(engine_tx.clone(), room) => Err(anyhow::anyhow!("the accepting or dialing task ended unexpectedly")),
            _ = &mut control_task => Err(anyhow::anyhow!("the control socket task ended unexpectedly")),
        };
        crate::service::stopping("stopping: resetting the apps' connections, removing routes");
        control_task.abort();
        if let Some(task) = metrics_task {
            task.abort();
        }
        outcome
    }
    .await;
    if let Err(err) = &result {
        tracing::error!(error = %format!("{err:#}"), "stopping: removing the TUN's routes and addresses");
    }
    // A finished task's handle must not be polled again (the select above may have done it).
    if !engine_task.is_finished() {
        let _ = engine_tx.send(EngineMsg::Shutdown).await;
        let _ = engine_task.await;
    }
    tun.remove().await;
    if bound_socket {
        let _ = std::fs::remove_file(control_socket);
    }
    result
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGTERM; only SIGINT stops the daemon");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

/// Forwards control requests into the engine task's queue; `roamtun reload` goes to the reload task
/// instead (it reads files, which the engine task never does).
fn forward_control(
    mut rx: mpsc::Receiver<ControlRequest>,
    engine: mpsc::Sender<EngineMsg>,
    reloads: Option<mpsc::Sender<reload::ReloadRequest>>,
) {
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            if matches!(req.request, crate::control::Request::Reload) {
                match &reloads {
                    Some(reloads) => {
                        let _ = reloads.send(req.reply).await;
                    }
                    None => {
                        let message = "only the server reloads its configuration (restart the client)".into();
                        let _ = req.reply.send(crate::control::Response::Error { message });
                    }
                }
                continue;
            }
            if engine.send(EngineMsg::Control(req)).await.is_err() {
                break;
            }
        }
    });
}
