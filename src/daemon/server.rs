//! The server daemon (the spec's SNAPT): accepts authenticated client sessions and re-originates their
//! streams into the server TUN with the client's virtual IP as source.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_rustls::LazyConfigAcceptor;

use super::forwarding::{Forwarding, NatRules};
use super::relay_socket::RelaySocket;
use super::reload::{Live, SharedLive};
use super::transport::{self, close_code, Handshake};
use super::{engine_config, transition_config, EngineMsg, Join, PathInfo, PeerInfo, SharedCounters, StatusSource, Tun};
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::tls;
use roamtun_proto::admission::{Admission, AdmissionLimits, HandshakeId};
use roamtun_proto::log_budget::LogBudget;
use roamtun_proto::relay::engine::{Engine, Role};
use roamtun_proto::relay::policy::{DestinationPolicy, IpPrefix};
use roamtun_proto::wire::{Frame, PROTOCOL_VERSION};

/// From accept to an authenticated HELLO.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From accept to the ClientHello, which a client sends as soon as its TCP connect returns: a
/// connection that stays silent this long is a stranger's, and its slot goes to the next one. Room
/// for two lost segments on a slow mobile link.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs the server of `config`, read from `path` (read again at every reload).
pub async fn run(config: ServerConfig, path: std::path::PathBuf) -> anyhow::Result<()> {
    let keys = config.peers.iter().map(|p| p.public_key).collect();
    let tls = tls::server_config(config.private_key(), keys)?;
    let mut listeners = Vec::new();
    for addr in &config.listen {
        listeners.push(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?);
    }
    // Held until the end of `run`: restores the host's forwarding settings however the daemon stops.
    // allowed_destinations beyond this host need forwarding as exit mode does.
    let forward = config.exit || !config.allowed_destinations.is_empty();
    let _forwarding = if forward {
        // Beside the control socket, in the daemon's runtime directory.
        let state = config.control_socket.with_extension("forwarding");
        let upstream: Vec<String> = config.exit_interface.iter().cloned().collect();
        Some(Forwarding::enable(state, &upstream, "exit mode")?)
    } else {
        None
    };
    // Dropped before the forwarding settings are put back (declared after them).
    let _exit_nat = match &config.exit_interface {
        Some(interface) => {
            if !crate::check::link_exists(interface) {
                tracing::warn!(%interface, "exit_interface is not on this host now: nothing leaves through it until it appears");
            }
            let prefixes = config.client_prefixes.iter().map(|p| (p.addr, p.len)).collect();
            let nat = roamtun_netlink::Masquerade::exit(&config.tun.name, interface, prefixes);
            Some(NatRules::install(&nat, "exit mode", &format!("clients masqueraded out of {interface}"))?)
        }
        None => None,
    };
    super::check_congestion_control(&config.tuning);
    let tun = Arc::new(Tun::create(&config.tun, &config.tuning, &config.virtual_ips, &config.tun_routes()).await?);
    tracing::info!(listen = ?config.listen, tun = %config.tun.name, peers = config.peers.len(), exit = config.exit, "server up");
    let clock = Clock::new();
    let mut relay = engine_config(Role::Server, &config.tuning, config.tun.mtu);
    relay.destinations = destination_policy(&config);
    let engine = Engine::new(relay, clock.now());
    let shared = Arc::new(SharedCounters::default());
    let source = StatusSource {
        role: Role::Server,
        tun: config.tun.name.clone(),
        virtual_ips: config.virtual_ips.clone(),
        started: StdInstant::now(),
        known_peers: config.peers.iter().map(super::KnownPeer::of).collect(),
        shared: shared.clone(),
        dns: None,
        lan: None,
    };
    let config = Arc::new(config);
    let transition = transition_config(&config.tuning);
    let access = crate::control::Access::new(config.control_group.clone());
    let metrics = config.metrics_listen;
    let live: SharedLive = Arc::new(std::sync::RwLock::new(Live { config: config.clone(), tls }));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let tuning = config.tuning.clone();
    let reload_tun = tun.clone();
    super::serve(
        tun,
        engine,
        transition,
        clock,
        source,
        None,
        &config.control_socket,
        access,
        metrics,
        Some(reload_tx),
        |engine, room| async move {
            let reloads = super::reload::serve(path, live.clone(), reload_tun, engine.clone(), reload_rx);
            tokio::join!(accept_loop(listeners, live, &tuning, engine, room, shared, clock), reloads);
        },
    )
    .await
}

/// Accepts relay connections on every listener, forever; each is authenticated in its own task,
/// once [`Admission`] lets it in.
async fn accept_loop(
    listeners: Vec<TcpListener>,
    live: SharedLive,
    tuning: &crate::config::Tuning,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    shared: Arc<SharedCounters>,
    clock: Clock,
) {
    let gate = Arc::new(Gate {
        state: std::sync::Mutex::new((
            Admission::new(AdmissionLimits {
                pending: tuning.max_pending_handshakes,
                pending_per_source: tuning.max_pending_handshakes_per_source,
            }),
            HashMap::new(),
        )),
        shared: shared.clone(),
    });
    // A stranger decides how often these happen: each kind is logged at a bounded rate.
    let refusals = SharedBudget::new(clock);
    let failures = Arc::new(SharedBudget::new(clock));
    let accept_errors = SharedBudget::new(clock);
    loop {
        let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
        let (tcp, remote) = match futures::future::select_all(accepts).await.0 {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and the like: wait a little instead of spinning; the connections queued
                // meanwhile wait in the listen backlog.
                if let Some(left_out) = accept_errors.allow() {
                    tracing::warn!(%err, left_out, "accept failed; retrying in 100 ms");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The configuration of this moment: a reload later does not change this connection's.
        let (config, tls) = {
            let live = live.read().unwrap_or_else(|e| e.into_inner());
            (live.config.clone(), live.tls.clone())
        };
        let ctx = Accepted { config, tls, engine: engine.clone(), room: room.clone(), shared: shared.clone(), clock };
        let failures = failures.clone();
        let admitted = gate.admit(remote.ip(), |ticket| {
            tokio::spawn(async move {
                if let Err(err) = ctx.serve(tcp, remote, ticket).await {
                    ctx.shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(left_out) = failures.allow() {
                        tracing::warn!(%remote, error = %format!("{err:#}"), left_out, "client refused");
                    }
                }
            })
            .abort_handle()
        });
        if let Err(refusal) = admitted {
            // The connection (moved into the closure, which did not run) is closed already: no TLS
            // state, no task, no buffer.
            shared.connections_over_limit.fetch_add(1, Ordering::Relaxed);
            if let Some(left_out) = refusals.allow() {
                tracing::warn!(%remote, reason = %refusal, left_out, "connection refused before its handshake");
            }
        }
    }
}

/// The connections in their handshake: [`Admission`]'s decisions, carried out on their tasks.
struct Gate {
    state: std::sync::Mutex<(Admission, HashMap<HandshakeId, tokio::task::AbortHandle>)>,
    shared: Arc<SharedCounters>,
}

impl Gate {
    /// Admits a connection from `addr` and starts its task with `spawn` (given the connection's
    /// [`Ticket`]), closing the oldest connection in its handshake if all places are taken.
    fn admit(
        self: &Arc<Self>,
        addr: IpAddr,
        spawn: impl FnOnce(Ticket) -> tokio::task::AbortHandle,
    ) -> Result<(), roamtun_proto::admission::Refusal> {
        // Held while the task is spawned, so that it cannot release its place before its handle
        // is recorded.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let admitted = state.0.admit(addr)?;
        if let Some(evicted) = admitted.evicted {
            if let Some(task) = state.1.remove(&evicted) {
                task.abort();
            }
            self.shared.handshakes_evicted.fetch_add(1, Ordering::Relaxed);
        }
        let task = spawn(Ticket { gate: self.clone(), id: Some(admitted.id) });
        state.1.insert(admitted.id, task);
        self.shared.handshakes_pending.store(state.0.pending() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn release(&self, id: HandshakeId) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.0.release(id);
        state.1.remove(&id);
        self.shared.handshakes_pending.store(state.0.pending() as u64, Ordering::Relaxed);
    }
}

/// A connection's place among those in their handshake; given back once the peer is authenticated
/// ([`Ticket::release`]) or when the task ends, however it ends.
struct Ticket {
    gate: Arc<Gate>,
    id: Option<HandshakeId>,
}

impl Ticket {
    fn release(&mut self) {
        if let Some(id) = self.id.take() {
            self.gate.release(id);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.release();
    }
}

/// A [`LogBudget`] shared by the accept loop and the connection tasks, on the daemon's clock.
struct SharedBudget {
    budget: std::sync::Mutex<LogBudget>,
    clock: Clock,
}

impl SharedBudget {
    fn new(clock: Clock) -> Self {
        SharedBudget { budget: std::sync::Mutex::new(LogBudget::for_peer_input()), clock }
    }

    /// `Some(left_out)`: log this one, saying how many were not logged before it.
    fn allow(&self) -> Option<u64> {
        self.budget.lock().unwrap_or_else(|e| e.into_inner()).allow(self.clock.now())
    }
}

/// Where the clients may send (docs/config.md `exit`, `allowed_destinations`, `client_to_client`).
fn destination_policy(config: &ServerConfig) -> DestinationPolicy {
    let prefix = |p: &crate::config::Prefix| IpPrefix::new(p.addr, p.len);
    DestinationPolicy {
        server_ips: config.virtual_ips.clone(),
        client_prefixes: config.client_prefixes.iter().map(prefix).collect(),
        exit: config.exit,
        allowed: config.allowed_destinations.iter().map(prefix).collect(),
        client_to_client: config.client_to_client,
    }
}

struct Accepted {
    config: Arc<ServerConfig>,
    tls: Arc<rustls::ServerConfig>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    shared: Arc<SharedCounters>,
    clock: Clock,
}

impl Accepted {
    /// Authenticates one connection and hands it to the engine task as a path; the engine task
    /// answers WELCOME with the session the path joined.
    async fn serve(&self, tcp: TcpStream, remote: SocketAddr, mut ticket: Ticket) -> anyhow::Result<()> {
        if super::crash::TestPanic::from_env() == Some(super::crash::TestPanic::Connection) {
            panic!("ROAMTUN_TEST_PANIC=connection: the injected fault in a connection task");
        }
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let tcp = RelaySocket::new(tcp, &self.config.tuning.congestion_control);
        let congestion_control = tcp.congestion_control().map(str::to_owned);
        let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
        let start = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, LazyConfigAcceptor::new(Default::default(), tcp))
            .await
            .map_err(|_| anyhow::anyhow!("no ClientHello within {CLIENT_HELLO_TIMEOUT:?}"))?
            .context("no valid ClientHello")?;
        let mut stream = tokio::time::timeout_at(deadline, start.into_stream(self.tls.clone()))
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake timed out"))?
            .map_err(|err| match tls::key_refusal(&err) {
                Some(refused) => anyhow::anyhow!("TLS handshake refused: {refused}"),
                None => anyhow::Error::new(err).context("TLS handshake failed"),
            })?;
        // The verifier accepted the key, so it is one of ours: no longer a stranger to bound.
        ticket.release();
        let key = tls::peer_public_key(stream.get_ref().1).context("no client key after the handshake")?;
        let peer = self.config.peer_by_key(&key).context("client key vanished from the configuration")?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (hs, early) = transport::read_handshake(&mut stream, left).await?;
        let Handshake::Hello { version, resume, virtual_ips } = hs else {
            let reason = "expected HELLO";
            let _ = transport::write_frame(&mut stream, &Frame::Close { code: close_code::PROTOCOL, reason }).await;
            anyhow::bail!("peer {}: {reason}", peer.name);
        };
        if version != PROTOCOL_VERSION {
            let reason = format!("server speaks protocol version {PROTOCOL_VERSION}, client {version}");
            let _ =
                transport::write_frame(&mut stream, &Frame::Close { code: close_code::VERSION, reason: &reason }).await;
            anyhow::bail!("peer {}: {reason}", peer.name);
        }
        let claimed: BTreeSet<IpAddr> = virtual_ips.iter().copied().collect();
        let configured: BTreeSet<IpAddr> = peer.virtual_ips.iter().copied().collect();
        if claimed != configured {
            let reason = format!(
                "client claims virtual IPs {claimed:?} but the server gives peer {:?} {configured:?}",
                peer.name
            );
            let _ =
                transport::write_frame(&mut stream, &Frame::Close { code: close_code::VIRTUAL_IPS, reason: &reason })
                    .await;
            anyhow::bail!("{reason}");
        }
        // Authenticated: now the path may cost what a bulk path needs.
        stream.get_mut().0.grow_read_buffer();
        let path = self.shared.next_path();
        let liveness = transport::liveness(&self.config.tuning);
        let socket = stream.get_ref().0.handle();
        let io = transport::spawn_path_io(
            stream,
            socket,
            path,
            early,
            self.engine.clone(),
            self.room.clone(),
            liveness,
            transport::Rekey::new(&self.config.tuning, &self.shared),
            self.clock,
        );
        let info = PathInfo { local: Some(local), remote: Some(remote), uplink: None, congestion_control };
        let peer_info = PeerInfo {
            name: peer.name.clone(),
            public_key: key.to_base64(),
            switch_timeout: peer.switch_timeout_secs.map(roamtun_proto::time::Duration::from_secs),
            lan_prefixes: peer.lan_prefixes.iter().map(|p| IpPrefix::new(p.addr, p.len)).collect(),
            limits: peer.limits(),
        };
        let join = Join::Hello { resume, virtual_ips: peer.virtual_ips.clone() };
        self.engine
            .send(EngineMsg::PathUp { path, join, peer: Box::new(peer_info), info, io })
            .await
            .context("the engine stopped")?;
        tracing::debug!(peer = %peer.name, %remote, ?path, resume, "client authenticated");
        Ok(())
    }
}
