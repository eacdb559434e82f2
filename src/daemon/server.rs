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
        Some(Forwarding::enable(state, config.exit_interface.as_deref())?)
    } else {
        None
    };
    // Dropped before the forwarding settings are put back (declared after them).
    let _exit_nat = match &config.exit_interface {
        Some(interface) => Some(ExitNatRules::install(&config, interface)?),
        None => None,
    };
    super::check_congestion_control(&config.tuning);
    let tun =
        Arc::new(Tun::create(&config.tun.name, config.tun.mtu, &config.virtual_ips, &config.client_prefixes).await?);
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
        known_peers: config
            .peers
            .iter()
            .map(|p| (p.name.clone(), p.public_key.to_base64(), p.virtual_ips.clone()))
            .collect(),
        shared: shared.clone(),
        dns: None,
    };
    let config = Arc::new(config);
    let transition = transition_config(&config.tuning);
    let access = crate::control::Access::new(config.control_group.clone());
    let metrics = config.metrics_listen;
    let live: SharedLive = Arc::new(std::sync::RwLock::new(Live { config: config.clone(), tls }));
    let (reload_tx, reload_rx) = mpsc::channel(4);
    let tuning = config.tuning.clone();
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
            let reloads = super::reload::serve(path, live.clone(), engine.clone(), reload_rx);
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

/// Lets the kernel forward the clients' packets to destinations beyond this host (exit mode), and puts
/// the previous settings back when dropped. The previous settings are also written to `state` first,
/// so that the next start can put them back after a daemon that was killed (SIGKILL) could not.
///
/// With forwarding on, the kernel ignores router advertisements on an interface whose `accept_ra`
/// is 1, and turning forwarding on drops the default routes they gave: on the exit interface,
/// `accept_ra` 1 becomes 2 (accept them while forwarding) first, so its IPv6 address and default
/// route stay.
struct Forwarding {
    /// In the order they were changed.
    previous: Vec<(String, String)>,
    state: std::path::PathBuf,
}

impl Forwarding {
    const SYSCTLS: [&'static str; 2] = ["/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding"];

    /// The `accept_ra` setting of `interface`.
    fn accept_ra(interface: &str) -> String {
        format!("/proc/sys/net/ipv6/conf/{interface}/accept_ra")
    }

    /// Whether a line of a state file names a setting this type changes (and nothing else).
    fn ours(path: &str) -> bool {
        Self::SYSCTLS.contains(&path)
            || path
                .strip_prefix("/proc/sys/net/ipv6/conf/")
                .and_then(|rest| rest.strip_suffix("/accept_ra"))
                .is_some_and(|name| !name.is_empty() && !name.contains('/') && name != "." && name != "..")
    }

    fn enable(state: std::path::PathBuf, exit_interface: Option<&str>) -> anyhow::Result<Self> {
        if let Ok(left) = std::fs::read_to_string(&state) {
            // A daemon before us changed them and was killed before it could restore them; put
            // them back last change first.
            for (path, value) in left.lines().filter_map(|l| l.split_once(' ')).collect::<Vec<_>>().into_iter().rev() {
                if Self::ours(path) && std::fs::write(path, value).is_ok() {
                    tracing::info!(%path, %value, "restored the forwarding setting a killed daemon left changed");
                }
            }
        }
        if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("exit mode: cannot create {}", dir.display()))?;
        }
        let mut changes: Vec<(String, &str)> = Vec::new();
        if let Some(interface) = exit_interface {
            let path = Self::accept_ra(interface);
            match std::fs::read_to_string(&path) {
                Ok(value) if value.trim() == "1" => changes.push((path, "2")),
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(%interface, %err, "exit mode: cannot read the exit interface's accept_ra; is it there (and IPv6 on)?")
                }
            }
        }
        changes.extend(Self::SYSCTLS.iter().map(|p| (p.to_string(), "1")));
        let mut fwd = Forwarding { previous: Vec::new(), state };
        for (path, _) in &changes {
            let before = std::fs::read_to_string(path).with_context(|| format!("exit mode: cannot read {path}"))?;
            fwd.previous.push((path.clone(), before.trim().to_string()));
        }
        let record: String = fwd.previous.iter().map(|(path, before)| format!("{path} {before}\n")).collect();
        std::fs::write(&fwd.state, record)
            .with_context(|| format!("exit mode: cannot record the forwarding settings in {}", fwd.state.display()))?;
        for (path, value) in &changes {
            std::fs::write(path, value).with_context(|| format!("exit mode: cannot write {value} to {path}"))?;
        }
        Ok(fwd)
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        for (path, before) in self.previous.iter().rev() {
            if let Err(err) = std::fs::write(path, before) {
                tracing::warn!(%path, %err, "cannot restore the forwarding setting");
            }
        }
        let _ = std::fs::remove_file(&self.state);
    }
}

/// Exit mode's NAT (`exit_interface`): the clients' prefixes masqueraded out of it, in an nftables
/// table of our own (roamtun_netlink::ExitNat), deleted when dropped. The kernel deletes the table
/// by itself if the daemon dies without that (the table is owned by our netlink socket).
struct ExitNatRules {
    nft: roamtun_netlink::Nftables,
    table: String,
}

impl ExitNatRules {
    fn install(config: &ServerConfig, exit_interface: &str) -> anyhow::Result<Self> {
        if !crate::check::link_exists(exit_interface) {
            tracing::warn!(interface = %exit_interface, "exit_interface is not on this host now: nothing leaves through it until it appears");
        }
        let nat = roamtun_netlink::ExitNat {
            tun: config.tun.name.clone(),
            exit_interface: exit_interface.into(),
            client_prefixes: config.client_prefixes.iter().map(|p| (p.addr, p.len)).collect(),
        };
        let mut nft = roamtun_netlink::Nftables::connect().context("exit mode: cannot reach nftables")?;
        let leftover = nft.install(&nat).with_context(|| {
            format!("exit mode: cannot install the masquerade and forward rules in nftables table inet {}", nat.table())
        })?;
        if leftover {
            tracing::info!(table = %nat.table(), "exit mode: removed the nftables table a previous daemon left behind");
        }
        tracing::info!(table = %nat.table(), interface = %exit_interface, prefixes = ?config.client_prefixes.iter().map(ToString::to_string).collect::<Vec<_>>(), "exit mode: clients masqueraded out of the exit interface");
        Ok(ExitNatRules { nft, table: nat.table() })
    }
}

impl Drop for ExitNatRules {
    fn drop(&mut self) {
        if let Err(err) = self.nft.delete(&self.table) {
            tracing::warn!(table = %self.table, error = %format!("{:#}", anyhow::Error::new(err)), "cannot delete the exit NAT's nftables table");
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
            transport::Rekey::new(&self.config.tuning, &self.shared),
            self.clock,
        );
        let info = PathInfo { local: Some(local), remote: Some(remote), uplink: None, congestion_control };
        let peer_info = PeerInfo {
            name: peer.name.clone(),
            public_key: key.to_base64(),
            switch_timeout: peer.switch_timeout_secs.map(roamtun_proto::time::Duration::from_secs),
        };
        let join = Join::Hello { resume, virtual_ips: peer.virtual_ips.clone() };
        self.engine
            .send(EngineMsg::PathUp { path, join, peer: peer_info, info, io })
            .await
            .context("the engine stopped")?;
        tracing::debug!(peer = %peer.name, %remote, ?path, resume, "client authenticated");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_file_names_only_the_settings_exit_mode_changes() {
        assert!(Forwarding::ours("/proc/sys/net/ipv4/ip_forward"));
        assert!(Forwarding::ours("/proc/sys/net/ipv6/conf/all/forwarding"));
        assert!(Forwarding::ours(&Forwarding::accept_ra("eth0")));
        // Whatever else a damaged or forged file says is not written.
        for other in [
            "/proc/sys/net/ipv6/conf/eth0/forwarding",
            "/proc/sys/net/ipv6/conf/../accept_ra",
            "/proc/sys/net/ipv6/conf//accept_ra",
            "/proc/sys/net/ipv6/conf/a/b/accept_ra",
            "/etc/passwd",
        ] {
            assert!(!Forwarding::ours(other), "{other}");
        }
    }
}
