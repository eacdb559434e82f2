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

use super::relay_socket::RelaySocket;
use super::transport::{self, close_code, Handshake};
use super::{engine_config, transition_config, EngineMsg, Join, PathInfo, PeerInfo, SharedCounters, StatusSource, Tun};
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::tls;
use roamtun_proto::admission::{Admission, AdmissionLimits, HandshakeId};
use roamtun_proto::relay::engine::{Engine, Role};
use roamtun_proto::wire::{Frame, PROTOCOL_VERSION};

/// From accept to an authenticated HELLO.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// From accept to the ClientHello, which a client sends as soon as its TCP connect returns: a
/// connection that stays silent this long is a stranger's, and its slot goes to the next one. Room
/// for two lost segments on a slow mobile link.
const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(3);

pub async fn run(config: ServerConfig) -> anyhow::Result<()> {
    let keys = config.peers.iter().map(|p| p.public_key).collect();
    let tls = tls::server_config(config.private_key(), keys)?;
    let mut listeners = Vec::new();
    for addr in &config.listen {
        listeners.push(TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?);
    }
    // Held until the end of `run`: restores the host's forwarding settings however the daemon stops.
    let _forwarding = if config.exit { Some(Forwarding::enable()?) } else { None };
    super::check_congestion_control(&config.tuning);
    let tun =
        Arc::new(Tun::create(&config.tun.name, config.tun.mtu, &config.virtual_ips, &config.client_prefixes).await?);
    tracing::info!(listen = ?config.listen, tun = %config.tun.name, peers = config.peers.len(), exit = config.exit, "server up");
    let clock = Clock::new();
    let engine = Engine::new(engine_config(Role::Server, &config.tuning, config.tun.mtu), clock.now());
    let shared = Arc::new(SharedCounters::default());
    let source = StatusSource {
        role: Role::Server,
        tun: config.tun.name.clone(),
        virtual_ips: config.virtual_ips.clone(),
        started: StdInstant::now(),
        known_peers: config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.public_key.to_base64(), p.virtual_ips.clone()))
            .collect(),
        shared: shared.clone(),
    };
    let config = Arc::new(config);
    let transition = transition_config(&config.tuning);
    let access = crate::control::Access::new(config.control_group.clone());
    super::serve(tun, engine, transition, clock, source, None, &config.control_socket, access, |engine, room| {
        accept_loop(listeners, tls, config.clone(), engine, room, shared, clock)
    })
    .await
}

/// Accepts relay connections on every listener, forever; each is authenticated in its own task,
/// once [`Admission`] lets it in.
async fn accept_loop(
    listeners: Vec<TcpListener>,
    tls: Arc<rustls::ServerConfig>,
    config: Arc<ServerConfig>,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    shared: Arc<SharedCounters>,
    clock: Clock,
) {
    let gate = Arc::new(Gate {
        state: std::sync::Mutex::new((
            Admission::new(AdmissionLimits {
                pending: config.tuning.max_pending_handshakes,
                pending_per_source: config.tuning.max_pending_handshakes_per_source,
            }),
            HashMap::new(),
        )),
        shared: shared.clone(),
    });
    let refusals = Arc::new(LogBudget::new("connections refused before their handshake"));
    let failures = Arc::new(LogBudget::new("clients refused"));
    loop {
        let accepts = listeners.iter().map(|l| Box::pin(l.accept()));
        let (tcp, remote) = match futures::future::select_all(accepts).await.0 {
            Ok(conn) => conn,
            Err(err) => {
                // EMFILE and the like: wait a little instead of spinning; the connections queued
                // meanwhile wait in the listen backlog.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = Accepted {
            config: config.clone(),
            tls: tls.clone(),
            engine: engine.clone(),
            room: room.clone(),
            shared: shared.clone(),
            clock,
        };
        let failures = failures.clone();
        let admitted = gate.admit(remote.ip(), |ticket| {
            tokio::spawn(async move {
                if let Err(err) = ctx.serve(tcp, remote, ticket).await {
                    ctx.shared.handshakes_refused.fetch_add(1, Ordering::Relaxed);
                    if failures.allow() {
                        tracing::warn!(%remote, error = %format!("{err:#}"), suppressed = failures.take_suppressed(), "client refused");
                    }
                }
            })
            .abort_handle()
        });
        if let Err(refusal) = admitted {
            // The connection (moved into the closure, which did not run) is closed already: no TLS
            // state, no task, no buffer.
            shared.connections_over_limit.fetch_add(1, Ordering::Relaxed);
            if refusals.allow() {
                tracing::warn!(%remote, reason = %refusal, suppressed = refusals.take_suppressed(), "connection refused before its handshake");
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

/// Bounds how often one kind of refusal is logged: a flood of strangers must not flood the journal.
/// A few lines per window, then one line that says how many were left out.
struct LogBudget {
    what: &'static str,
    state: std::sync::Mutex<(StdInstant, u32, u64)>,
}

impl LogBudget {
    const WINDOW: Duration = Duration::from_secs(10);
    const LINES: u32 = 5;

    fn new(what: &'static str) -> Self {
        LogBudget { what, state: std::sync::Mutex::new((StdInstant::now(), 0, 0)) }
    }

    /// Whether this occurrence may be logged; counts it as left out if not.
    fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, lines, suppressed) = &mut *state;
        if start.elapsed() >= Self::WINDOW {
            if *suppressed > 0 {
                tracing::warn!(
                    count = *suppressed,
                    window_secs = Self::WINDOW.as_secs(),
                    "{}: more were not logged",
                    self.what
                );
            }
            *start = StdInstant::now();
            *lines = 0;
            *suppressed = 0;
        }
        if *lines < Self::LINES {
            *lines += 1;
            true
        } else {
            *suppressed += 1;
            false
        }
    }

    /// How many were left out in this window so far (shown with the lines that are logged).
    fn take_suppressed(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).2
    }
}

/// Lets the kernel forward the clients' packets to destinations beyond this host (exit mode), and puts
/// the previous settings back when dropped.
struct Forwarding {
    previous: Vec<(&'static str, String)>,
}

impl Forwarding {
    const SYSCTLS: [&'static str; 2] = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

    fn enable() -> anyhow::Result<Self> {
        let mut fwd = Forwarding { previous: Vec::new() };
        for path in Self::SYSCTLS {
            let before = std::fs::read_to_string(path).with_context(|| format!("exit mode: cannot read {path}"))?;
            std::fs::write(path, "1").with_context(|| format!("exit mode: cannot enable forwarding in {path}"))?;
            fwd.previous.push((path, before));
        }
        Ok(fwd)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (path, before) in &self.previous {
            if let Err(err) = std::fs::write(path, before.trim()) {
                tracing::warn!(%path, %err, "cannot restore the forwarding setting");
            }
        }
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
            self.clock,
        );
        let info = PathInfo { local: Some(local), remote: Some(remote), uplink: None, congestion_control };
        let peer_info = PeerInfo { name: peer.name.clone(), public_key: key.to_base64() };
        let join = Join::Hello { resume, virtual_ips: peer.virtual_ips.clone() };
        self.engine
            .send(EngineMsg::PathUp { path, join, peer: peer_info, info, io })
            .await
            .context("the engine stopped")?;
        tracing::debug!(peer = %peer.name, %remote, ?path, resume, "client authenticated");
        Ok(())
    }
}
