//! The tokio shell of both daemons: owns the TUN, the sockets and the clock, and feeds the sans-IO
//! [`Engine`]. `client` and `server` add what differs: who dials whom.

pub mod client;
pub mod server;
mod transport;
mod tun;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant as StdInstant;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::AbortHandle;

use crate::clock::Clock;
use crate::config::Tuning;
use crate::control::{ControlRequest, PeerStatus, Request, Response, Status};
use crate::relay::engine::{Engine, EngineConfig, Role, SessionError, SessionId};
use roamtun_stack::{Duration, StackConfig};

pub use tun::{Tun, TunError};

/// Who a session talks to, for status and logs.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: String,
    pub local_address: Option<SocketAddr>,
    pub remote_address: Option<SocketAddr>,
}

/// What the connection tasks tell the engine task.
pub enum EngineMsg {
    /// A relay connection is authenticated and ready to carry `virtual_ips`.
    SessionUp {
        id: SessionId,
        virtual_ips: Vec<IpAddr>,
        peer: PeerInfo,
        out: mpsc::Sender<Vec<u8>>,
        reader: AbortHandle,
        /// Bytes that arrived behind the handshake.
        early: Vec<u8>,
        reply: oneshot::Sender<Result<(), SessionError>>,
    },
    SessionBytes {
        id: SessionId,
        bytes: Vec<u8>,
    },
    SessionDown {
        id: SessionId,
        reason: String,
    },
    Control(ControlRequest),
    /// Stop: reset the apps' connections, close the sessions, return.
    Shutdown,
}

struct SessionHandle {
    peer: PeerInfo,
    out: mpsc::Sender<Vec<u8>>,
    /// A chunk taken from the engine that the writer's channel had no room for yet.
    pending: Option<Vec<u8>>,
    reader: AbortHandle,
    since: StdInstant,
}

/// Facts for the status that the engine task does not own.
pub struct StatusSource {
    pub role: Role,
    pub tun: String,
    pub virtual_ips: Vec<IpAddr>,
    pub started: StdInstant,
    /// Peers that are configured but may not be connected (server: every `[[peer]]`; client: the server).
    pub known_peers: Vec<(String, String, Vec<IpAddr>)>,
    pub shared: Arc<SharedCounters>,
}

/// Counters and notes written by connection tasks, read for status.
#[derive(Default)]
pub struct SharedCounters {
    pub handshakes_refused: std::sync::atomic::AtomicU64,
    pub connects: std::sync::atomic::AtomicU64,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl SharedCounters {
    pub fn note_error(&self, err: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(err);
        }
    }
}

pub fn engine_config(role: Role, tuning: &Tuning, mtu: u16) -> EngineConfig {
    EngineConfig {
        role,
        stream_window: tuning.stream_window,
        session_out_budget: tuning.session_out_budget,
        udp_idle_timeout: Duration::from_secs(tuning.udp_idle_timeout_secs),
        stack: StackConfig {
            mtu: usize::from(mtu),
            tcp_rx_buffer: tuning.tcp_buffer,
            tcp_tx_buffer: tuning.tcp_buffer,
            max_flows: tuning.max_tcp_flows,
            ..StackConfig::default()
        },
    }
}

/// Most packets or messages handled per wake-up, so one busy source cannot starve the others.
const BATCH: usize = 64;

/// The engine task: runs until told to stop, every sender is dropped, or the TUN fails.
async fn run_engine(
    mut engine: Engine,
    tun: Arc<Tun>,
    mut msgs: mpsc::Receiver<EngineMsg>,
    room: Arc<Notify>,
    clock: Clock,
    source: StatusSource,
) {
    let mut sessions: BTreeMap<SessionId, SessionHandle> = BTreeMap::new();
    let mut buf = vec![0u8; 65536 + 64];
    loop {
        let wait = engine.poll_at(clock.now()).map_or(std::time::Duration::from_secs(3600), |at| clock.until(at));
        let blocked = sessions.values().any(|s| s.pending.is_some());
        tokio::select! {
            msg = msgs.recv() => {
                let mut next = msg;
                let mut handled = 0;
                let stop = loop {
                    match next {
                        // Every sender is gone, or we were told to stop.
                        None | Some(EngineMsg::Shutdown) => break true,
                        Some(msg) => handle_msg(&mut engine, &mut sessions, msg, &clock, &source),
                    }
                    handled += 1;
                    if handled == BATCH {
                        break false;
                    }
                    match msgs.try_recv() {
                        Ok(msg) => next = Some(msg),
                        Err(_) => break false,
                    }
                };
                if stop {
                    break;
                }
            }
            r = tun.recv(&mut buf) => {
                match r {
                    Ok(n) => engine.handle_tun_packet(buf[..n].to_vec(), clock.now()),
                    Err(err) => {
                        tracing::error!(%err, "reading the TUN device failed; stopping");
                        break;
                    }
                }
                for _ in 1..BATCH {
                    match tun.try_recv(&mut buf) {
                        Ok(n) => engine.handle_tun_packet(buf[..n].to_vec(), clock.now()),
                        Err(_) => break,
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = room.notified(), if blocked => {}
        }
        engine.poll(clock.now());
        while let Some(packet) = engine.pop_tun_packet() {
            if let Err(err) = tun.send(&packet).await {
                // The kernel refused one packet (e.g. no buffer space); TCP retransmits, UDP is lossy.
                tracing::debug!(%err, len = packet.len(), "writing a packet to the TUN failed");
            }
        }
        flush_sessions(&mut engine, &mut sessions, &clock);
    }
    for (id, handle) in sessions {
        handle.reader.abort();
        engine.remove_session(id, clock.now());
    }
    // Send the resets of the removed sessions' flows before the TUN goes away.
    while let Some(packet) = engine.pop_tun_packet() {
        let _ = tun.send(&packet).await;
    }
}

fn handle_msg(
    engine: &mut Engine,
    sessions: &mut BTreeMap<SessionId, SessionHandle>,
    msg: EngineMsg,
    clock: &Clock,
    source: &StatusSource,
) {
    match msg {
        EngineMsg::SessionUp { id, virtual_ips, peer, out, reader, early, reply } => {
            // One session per peer: a peer that reconnects replaces its old session.
            let stale: Vec<SessionId> =
                sessions.iter().filter(|(_, h)| h.peer.public_key == peer.public_key).map(|(id, _)| *id).collect();
            for old in stale {
                tracing::info!(peer = %peer.name, session = old.0, "peer reconnected; closing its previous session");
                end_session(engine, sessions, old, clock);
            }
            let result = engine.add_session(id, virtual_ips);
            if result.is_ok() {
                tracing::info!(peer = %peer.name, session = id.0, remote = ?peer.remote_address, "session up");
                sessions.insert(id, SessionHandle { peer, out, pending: None, reader, since: StdInstant::now() });
                if !early.is_empty() {
                    feed(engine, sessions, id, &early, clock);
                }
            }
            let _ = reply.send(result);
        }
        EngineMsg::SessionBytes { id, bytes } => feed(engine, sessions, id, &bytes, clock),
        EngineMsg::SessionDown { id, reason } => {
            if sessions.contains_key(&id) {
                tracing::info!(session = id.0, %reason, "session down");
                end_session(engine, sessions, id, clock);
            }
        }
        EngineMsg::Control(ControlRequest { request: Request::Status, reply }) => {
            let _ = reply.send(Response::Status(status(engine, sessions, source)));
        }
        // Handled by the loop in run_engine.
        EngineMsg::Shutdown => {}
    }
}

fn feed(
    engine: &mut Engine,
    sessions: &mut BTreeMap<SessionId, SessionHandle>,
    id: SessionId,
    bytes: &[u8],
    clock: &Clock,
) {
    if !sessions.contains_key(&id) {
        return; // Bytes that were in flight when the session ended.
    }
    if let Err(err) = engine.handle_session_bytes(id, bytes, clock.now()) {
        tracing::warn!(session = id.0, %err, "ending session");
        end_session(engine, sessions, id, clock);
    }
}

fn end_session(engine: &mut Engine, sessions: &mut BTreeMap<SessionId, SessionHandle>, id: SessionId, clock: &Clock) {
    if let Some(handle) = sessions.remove(&id) {
        // Dropping `out` ends the writer, which closes the TLS stream; the reader is stopped here.
        handle.reader.abort();
    }
    if let Some(counters) = engine.remove_session(id, clock.now()) {
        tracing::info!(
            session = id.0,
            bytes_sent = counters.bytes_sent,
            bytes_received = counters.bytes_received,
            streams = counters.tcp_streams_opened,
            "session closed; its connections were reset"
        );
    }
}

fn flush_sessions(engine: &mut Engine, sessions: &mut BTreeMap<SessionId, SessionHandle>, clock: &Clock) {
    let mut dead = Vec::new();
    for (&id, handle) in sessions.iter_mut() {
        while let Some(chunk) = handle.pending.take().or_else(|| engine.pop_session_output(id)) {
            match handle.out.try_send(chunk) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(chunk)) => {
                    handle.pending = Some(chunk);
                    break;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    dead.push(id);
                    break;
                }
            }
        }
    }
    for id in dead {
        end_session(engine, sessions, id, clock);
    }
}

fn status(engine: &Engine, sessions: &BTreeMap<SessionId, SessionHandle>, source: &StatusSource) -> Status {
    use std::sync::atomic::Ordering::Relaxed;
    let live = engine.session_status();
    let mut peers = Vec::new();
    for (name, key, vips) in &source.known_peers {
        let session = sessions.iter().find(|(_, h)| &h.peer.public_key == key);
        let mut p = PeerStatus {
            name: name.clone(),
            public_key: key.clone(),
            connected: session.is_some(),
            virtual_ips: vips.clone(),
            local_address: None,
            uplink: None,
            remote_address: None,
            connected_secs: None,
            tcp_flows: 0,
            udp_flows: 0,
            queued_bytes: 0,
            counters: Default::default(),
            connects: 0,
            last_error: None,
        };
        if let Some((id, h)) = session {
            p.local_address = h.peer.local_address;
            p.uplink = h.peer.local_address.and_then(|a| tun::interface_of(a.ip()));
            p.remote_address = h.peer.remote_address;
            p.connected_secs = Some(h.since.elapsed().as_secs());
            if let Some(s) = live.iter().find(|s| s.id == *id) {
                p.tcp_flows = s.tcp_flows;
                p.udp_flows = s.udp_flows;
                p.queued_bytes = s.queued_bytes;
                p.counters = s.counters.clone();
            }
        }
        if source.role == Role::Client {
            p.connects = source.shared.connects.load(Relaxed);
            p.last_error = source.shared.last_error.lock().ok().and_then(|e| e.clone());
        }
        peers.push(p);
    }
    Status {
        role: match source.role {
            Role::Client => "client".into(),
            Role::Server => "server".into(),
        },
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: source.started.elapsed().as_secs(),
        tun: source.tun.clone(),
        virtual_ips: source.virtual_ips.clone(),
        tcp_flows: live.iter().map(|s| s.tcp_flows).sum(),
        udp_flows: live.iter().map(|s| s.udp_flows).sum(),
        bytes_sent: live.iter().map(|s| s.counters.bytes_sent).sum(),
        bytes_received: live.iter().map(|s| s.counters.bytes_received).sum(),
        peers,
        tun_counters: engine.tun_counters().clone(),
        handshakes_refused: source.shared.handshakes_refused.load(Relaxed),
    }
}

/// What both daemons share around their own work (`role_task`: dialing or accepting): the engine task
/// on `tun`, the control socket, and the orderly shutdown on SIGINT/SIGTERM (apps' connections reset,
/// sessions closed, routes and addresses removed, control socket deleted).
pub async fn serve<F, Fut>(
    tun: Arc<Tun>,
    engine: Engine,
    clock: Clock,
    source: StatusSource,
    control_socket: &std::path::Path,
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
    let engine_task = tokio::spawn(run_engine(engine, tun.clone(), engine_rx, room.clone(), clock, source));
    let result = async {
        let (ctl_tx, ctl_rx) = mpsc::channel(16);
        let control_task = crate::control::serve(control_socket, ctl_tx).await?;
        forward_control(ctl_rx, engine_tx.clone());
        tokio::select! {
            _ = role_task(engine_tx.clone(), room) => {}
            _ = shutdown_signal() => {}
        }
        control_task.abort();
        anyhow::Ok(())
    }
    .await;
    let _ = engine_tx.send(EngineMsg::Shutdown).await;
    let _ = engine_task.await;
    tun.remove().await;
    let _ = std::fs::remove_file(control_socket);
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

/// Forwards control requests into the engine task's queue.
fn forward_control(mut rx: mpsc::Receiver<ControlRequest>, engine: mpsc::Sender<EngineMsg>) {
    tokio::spawn(async move {
        while let Some(req) = rx.recv().await {
            if engine.send(EngineMsg::Control(req)).await.is_err() {
                break;
            }
        }
    });
}
