//! The client daemon (the spec's CNAPT): a TUN with the stable virtual IPs, smoltcp terminating the
//! apps' TCP, and the relay paths to the server, each bound to one uplink. The engine task decides
//! when a path is needed ([`DialRequest`]); the dialer here opens and authenticates it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::TlsConnector;

use super::forwarding::{Forwarding, NatRules};
use super::relay_socket::RelaySocket;
use super::transport::{self, Handshake, HandshakeError};
use super::{
    engine_config, transition_config, ClientHooks, DialRequest, EngineMsg, Join, PathInfo, PeerInfo, SharedCounters,
    StatusSource, Tun, Uplinks,
};
use crate::clock::Clock;
use crate::config::{ClientConfig, LanConfig, LanMode};
use crate::tls;
use roamtun_proto::relay::engine::{Engine, PeerLimits, Role};
use roamtun_proto::relay::policy::IpPrefix;
use roamtun_proto::wire::{Frame, PROTOCOL_VERSION};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Resuming is urgent (the apps are stalled), so the first retries come quickly.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn run(config: ClientConfig) -> anyhow::Result<()> {
    let tls_config = tls::client_config(config.private_key(), config.server.public_key)?;
    super::check_congestion_control(&config.tuning);
    // Watch the uplinks before anything else, so the first path already knows which ones are usable.
    let uplinks = match roamtun_netlink::watch_uplinks().await {
        Ok((rx, _task)) => Some(rx),
        Err(err) => {
            tracing::warn!(%err, "cannot watch the uplinks over rtnetlink; link changes are noticed by the transport only");
            None
        }
    };
    // A killed daemon's full tunnel rules would steer traffic into a table with no way out left.
    if let Err(err) = crate::full_tunnel::clear_leftovers(&config.routing).await {
        tracing::warn!(error = %roamtun_netlink::error_chain(&err), "cannot look for a killed daemon's full tunnel rules");
    }
    // The default routes of a full tunnel go into its own table (crate::full_tunnel), the others
    // into the main table with the TUN.
    let main_routes: Vec<_> = config.routes.iter().filter(|p| p.len > 0).copied().collect();
    let tun = Arc::new(Tun::create(&config.tun, &config.tuning, &config.virtual_ips, &main_routes).await?);
    let full_tunnel = if config.full_tunnel() {
        let plan = crate::full_tunnel::plan(&config, tun.index());
        match crate::full_tunnel::start(plan, uplinks.clone()).await {
            Ok(task) => {
                tracing::info!(
                    table = config.routing.tunnel_table,
                    fwmark = config.routing.fwmark,
                    "full tunnel: default routes into the tunnel"
                );
                Some(task)
            }
            Err(err) => {
                tun.remove().await;
                return Err(anyhow::Error::new(err).context("cannot set up the full tunnel's routing"));
            }
        }
    } else {
        None
    };
    tracing::info!(tun = %config.tun.name, virtual_ips = ?config.virtual_ips, routes = ?config.routes.iter().map(ToString::to_string).collect::<Vec<_>>(), uplinks = ?config.uplink_names(), "client TUN up");
    // Held until the end of `run`, like the TUN.
    let _lan = match &config.lan {
        Some(lan) => match Lan::start(&config, lan) {
            Ok(lan) => Some(lan),
            Err(err) => {
                if let Some(full_tunnel) = full_tunnel {
                    full_tunnel.stop().await;
                }
                tun.remove().await;
                return Err(err);
            }
        },
        None => None,
    };
    // Taken back below, once serve has returned (signal, failure or a task's panic); a panic that
    // unwinds past here drops it, which puts resolv.conf back too; after SIGKILL the next start does.
    let dns = crate::dns::start(&config.dns, &config.routes, &config.tun.name, &config.control_socket).await?;
    let clock = Clock::new();
    let engine = Engine::new(engine_config(Role::Client, &config.tuning, config.tun.mtu), clock.now());
    let shared = Arc::new(SharedCounters::default());
    let source = StatusSource {
        role: Role::Client,
        tun: config.tun.name.clone(),
        virtual_ips: config.virtual_ips.clone(),
        started: StdInstant::now(),
        known_peers: vec![super::KnownPeer {
            name: "server".into(),
            public_key: config.server.public_key.to_base64(),
            virtual_ips: Vec::new(),
            lan_prefixes: Vec::new(),
            limits: PeerLimits::default(),
        }],
        shared: shared.clone(),
        dns: dns.as_ref().map(crate::dns::Applied::status),
        lan: config.lan.as_ref().map(|lan| crate::control::LanStatus {
            mode: lan.mode.as_str().into(),
            prefixes: lan.prefixes.iter().map(ToString::to_string).collect(),
        }),
    };
    // One request at a time is all the dialer ever has: a newer one replaces what it was doing.
    let (dial_tx, dial_rx) = mpsc::channel(4);
    let hooks = ClientHooks {
        dial: dial_tx,
        uplinks: uplinks.clone(),
        configured: config.uplinks.clone(),
        decision: config.decision.clone(),
        volume_file: super::volume::volume_path(&config.state_directory(), &config.tun.name),
    };
    let connector = TlsConnector::from(tls_config);
    // Removed again below, once serve has returned (signal or failure), like the TUN's routes.
    let routing = crate::routing::start_if_enabled(&config, uplinks.clone()).await;
    let result = super::serve(
        tun,
        engine,
        transition_config(&config.tuning),
        clock,
        source,
        Some(hooks),
        &config.control_socket,
        crate::control::Access::new(config.control_group.clone()),
        config.metrics_listen,
        None,
        |engine, room| async {
            Dialer { config: &config, connector, engine, room, shared, uplinks, clock }.run(dial_rx).await
        },
    )
    .await;
    if let Some(routing) = routing {
        routing.stop().await;
    }
    if let Some(full_tunnel) = full_tunnel {
        full_tunnel.stop().await;
    }
    if let Some(dns) = dns {
        dns.restore().await;
    }
    result
}

struct Dialer<'a> {
    config: &'a ClientConfig,
    connector: TlsConnector,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    shared: Arc<SharedCounters>,
    uplinks: Option<watch::Receiver<Uplinks>>,
    /// The engine's clock, which the path's Check activity shares.
    clock: Clock,
}

impl Dialer<'_> {
    /// Serves the engine task's requests for paths, forever. A request for the session is retried
    /// with backoff (and at once when an uplink changes) until a path is up; a `roamtun switch` is
    /// tried once. A newer request replaces the one in progress.
    async fn run(mut self, mut requests: mpsc::Receiver<DialRequest>) {
        let Some(mut request) = requests.recv().await else { return };
        let mut backoff = BACKOFF_FIRST;
        loop {
            let outcome = tokio::select! {
                newer = requests.recv() => match newer {
                    Some(newer) => {
                        request = newer;
                        backoff = BACKOFF_FIRST;
                        continue;
                    }
                    None => return,
                },
                (outcome, ahead_written) = self.attempt(&request) => {
                    if ahead_written {
                        // The server may have acted on those frames: a SWITCH_UNEXPECTED goes to it
                        // once per epoch, so the next path resumes after its WELCOME, with a new one.
                        request.ahead = None;
                    }
                    outcome
                }
            };
            match outcome {
                Ok(()) => {}
                Err(err) if request.uplink.is_some() => {
                    let failed = EngineMsg::DialFailed { error: format!("{err:#}"), standby: request.standby };
                    let _ = self.engine.send(failed).await;
                }
                Err(err) => {
                    let msg = format!("{err:#}");
                    tracing::warn!(server = ?self.config.server.addresses, error = %msg, retry_in_ms = backoff.as_millis() as u64, "cannot reach the server");
                    self.shared.note_error(msg);
                    // Wait out the backoff, unless an uplink changes (a new address is worth a try now)
                    // or the engine task asks for something else.
                    let changed = async {
                        match self.uplinks.as_mut() {
                            Some(w) => {
                                let _ = w.changed().await;
                            }
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(BACKOFF_MAX),
                        // Something changed: the next failure (e.g. the route comes a moment after the
                        // address) is retried soon again, not after a long backoff.
                        _ = changed => backoff = BACKOFF_FIRST,
                        newer = requests.recv() => match newer {
                            Some(newer) => {
                                request = newer;
                                backoff = BACKOFF_FIRST;
                                continue;
                            }
                            None => return,
                        },
                    }
                    continue;
                }
            }
            let Some(next) = requests.recv().await else { return };
            request = next;
            backoff = BACKOFF_FIRST;
        }
    }

    /// One round: the requested uplink, or every usable uplink in order of preference (the one that
    /// just failed last). Unbound when no uplink is configured. Over each uplink, the server's addresses
    /// of a family the uplink has an address of, in the configured order: an IPv6-only uplink reaches
    /// the server at its IPv6 address.
    ///
    /// Also returns whether the request's `ahead` frames were written on some path (then they may have
    /// reached the server, and no other path may carry them again).
    async fn attempt(&mut self, request: &DialRequest) -> (anyhow::Result<()>, bool) {
        let mut ahead_written = false;
        let result = self.attempt_paths(request, &mut ahead_written).await;
        (result, ahead_written)
    }

    async fn attempt_paths(&mut self, request: &DialRequest, ahead_written: &mut bool) -> anyhow::Result<()> {
        // Marked seen: the backoff waits for the next change, not for this one.
        let snapshot = self.uplinks.as_mut().map(|w| w.borrow_and_update().clone());
        let candidates: Vec<Option<String>> = if let Some(u) = &request.uplink {
            vec![Some(u.clone())]
        } else if self.config.uplinks.is_empty() {
            vec![None]
        } else {
            let usable = |name: &String| snapshot.as_ref().is_none_or(|s| s.get(name).is_some_and(|u| u.usable()));
            let all = self.config.uplink_names();
            let mut names: Vec<&String> = all.iter().filter(|n| usable(n)).collect();
            names.sort_by_key(|n| request.avoid.as_ref() == Some(*n));
            if names.is_empty() {
                anyhow::bail!("no usable uplink among {all:?} (down or without an address)");
            }
            names.into_iter().map(|n| Some(n.clone())).collect()
        };
        let mut errors = Vec::new();
        for uplink in candidates {
            let known = uplink.as_ref().and_then(|name| snapshot.as_ref()?.get(name));
            let servers = servers_for(&self.config.server.addresses, known.map(|u| u.addresses.as_slice()));
            let over = uplink.as_deref().unwrap_or("any uplink");
            if servers.is_empty() {
                errors.push(format!("{over}: no address of the server's families {:?}", self.config.server.addresses));
            }
            for server in servers {
                // With per-uplink tables, the uplink's `from` rule routes the relay only when its
                // socket is bound to the uplink's address.
                let source = match (&uplink, &snapshot) {
                    (Some(name), Some(s)) if self.config.routing.per_uplink_tables => {
                        crate::routing::source_address(s, name, server.ip())
                    }
                    _ => None,
                };
                let ahead = request.ahead.as_deref().filter(|_| !*ahead_written);
                match self.connect(uplink.as_deref(), server, source, request.resume, ahead, ahead_written).await {
                    Ok(()) => return Ok(()),
                    Err(err) => errors.push(format!("{over}: {err:#}")),
                }
            }
        }
        anyhow::bail!("{}", errors.join("; "))
    }

    /// Dials over `uplink`, authenticates, joins `resume` (0: a new session), writes `ahead` behind
    /// HELLO (`ahead_written` once it went to the socket) and hands the path to the engine task.
    async fn connect(
        &self,
        uplink: Option<&str>,
        server: SocketAddr,
        source: Option<IpAddr>,
        resume: u64,
        ahead: Option<&[u8]>,
        ahead_written: &mut bool,
    ) -> anyhow::Result<()> {
        let mark = crate::full_tunnel::relay_mark(self.config);
        let started = StdInstant::now();
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, dial(server, uplink, source, mark))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {server} within {CONNECT_TIMEOUT:?}"))??;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let tcp_ms = started.elapsed().as_secs_f64() * 1e3;
        let tcp = RelaySocket::new(tcp, &self.config.tuning.congestion_control);
        let congestion_control = tcp.congestion_control().map(str::to_owned);
        let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(tls::server_name(), tcp))
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake with {server} timed out"))?
            .map_err(|err| match tls::key_refusal(&err) {
                Some(refused) => anyhow::anyhow!("TLS handshake with {server} refused: {refused}"),
                None => anyhow::Error::new(err).context(format!("TLS handshake with {server} failed")),
            })?;
        let tls_ms = started.elapsed().as_secs_f64() * 1e3;
        let hello = Frame::Hello { version: PROTOCOL_VERSION, resume, virtual_ips: self.config.virtual_ips.clone() };
        let mut first = Vec::with_capacity(hello.encoded_len() + ahead.map_or(0, <[u8]>::len));
        hello.encode(&mut first).context("cannot encode HELLO")?;
        // In the same flight: the server acts on the resume without waiting for us to read WELCOME.
        first.extend_from_slice(ahead.unwrap_or_default());
        *ahead_written |= ahead.is_some();
        stream.write_all(&first).await.context("cannot send HELLO")?;
        stream.flush().await.context("cannot send HELLO")?;
        let (hs, early) = transport::read_handshake(&mut stream, HANDSHAKE_TIMEOUT).await.map_err(|err| match err {
            // TLS 1.3 clients finish their handshake before the server judges their key: a refusal
            // shows up here, as an alert on the first read.
            HandshakeError::Io(io) => anyhow::anyhow!("the server ended the connection during the handshake ({io}); is this client's public key in its [[peer]] list?"),
            other => anyhow::Error::new(other),
        })?;
        stream.get_mut().0.grow_read_buffer();
        let Handshake::Welcome { version, session_id } = hs else {
            anyhow::bail!("the server answered HELLO with something other than WELCOME");
        };
        if version != PROTOCOL_VERSION {
            anyhow::bail!("the server speaks protocol version {version}, we speak {PROTOCOL_VERSION}");
        }
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
        let uplink = uplink.map(str::to_string).or_else(|| super::tun::interface_of(local.ip()));
        let welcome_ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(%server, %local, ?uplink, session = session_id, ?path, tcp_ms, tls_ms, welcome_ms, "path authenticated");
        let peer = PeerInfo {
            name: "server".into(),
            public_key: self.config.server.public_key.to_base64(),
            switch_timeout: None,
            lan_prefixes: Lan::routed_prefixes(self.config),
            limits: PeerLimits::default(),
        };
        let info = PathInfo { local: Some(local), remote: Some(server), uplink, congestion_control };
        self.engine
            .send(EngineMsg::PathUp {
                path,
                join: Join::Welcome { session: session_id, ahead_sent: ahead.is_some() },
                peer: Box::new(peer),
                info,
                io,
            })
            .await
            .context("the engine stopped")
    }
}

/// The server addresses worth dialling from an uplink with `local` addresses (unknown: all of them), in
/// the configured order: those of a family the uplink has an address of.
fn servers_for(servers: &[SocketAddr], local: Option<&[IpAddr]>) -> Vec<SocketAddr> {
    let Some(local) = local else { return servers.to_vec() };
    servers.iter().filter(|s| local.iter().any(|a| a.is_ipv4() == s.is_ipv4())).copied().collect()
}

/// A TCP connection to `server`, bound to `uplink` when given: the kernel then routes it out of that
/// interface only, whatever the main table says (also when the default route points into our TUN).
///
/// A link that has just come back may lose the first SYN (its neighbour entries are being
/// re-learned); the kernel would resend it only after its 1 s initial RTO. So when the first attempt
/// has not connected after [`SYN_RETRY`], a second one starts beside it and the first to connect wins.
async fn dial(
    server: SocketAddr,
    uplink: Option<&str>,
    source: Option<IpAddr>,
    mark: Option<u32>,
) -> anyhow::Result<TcpStream> {
    let first = connect_once(server, uplink, source, mark);
    tokio::pin!(first);
    tokio::select! {
        r = &mut first => return r,
        _ = tokio::time::sleep(SYN_RETRY) => {}
    }
    let second = connect_once(server, uplink, source, mark);
    tokio::pin!(second);
    let (mut first_done, mut second_done) = (false, false);
    let mut error = None;
    while !(first_done && second_done) {
        tokio::select! {
            r = &mut first, if !first_done => match r {
                Ok(tcp) => return Ok(tcp),
                Err(err) => { first_done = true; error = Some(err); }
            },
            r = &mut second, if !second_done => match r {
                Ok(tcp) => return Ok(tcp),
                Err(err) => { second_done = true; error = Some(err); }
            },
        }
    }
    Err(error.expect("both attempts failed, so there is an error"))
}

/// How long the first connection attempt of a dial runs alone.
const SYN_RETRY: Duration = Duration::from_millis(250);

/// `mark`: a full tunnel's fwmark, which takes the relay past the tunnel's table (crate::full_tunnel).
async fn connect_once(
    server: SocketAddr,
    uplink: Option<&str>,
    source: Option<IpAddr>,
    mark: Option<u32>,
) -> anyhow::Result<TcpStream> {
    let socket = if server.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(mark) = mark {
        set_mark(&socket, mark).with_context(|| format!("cannot mark the relay socket with fwmark {mark:#x}"))?;
    }
    if let Some(name) = uplink {
        socket.bind_device(Some(name.as_bytes())).with_context(|| format!("cannot bind the relay to {name}"))?;
    }
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("cannot bind the relay to {ip}"))?;
    }
    let via = uplink.map(|u| format!(" over {u}")).unwrap_or_default();
    socket.connect(server).await.with_context(|| format!("cannot connect to {server}{via}"))
}

/// SO_MARK (needs CAP_NET_ADMIN, which the client has for its TUN).
fn set_mark(socket: &TcpSocket, mark: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads a u32 of the size given; the fd is the socket we own.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            (&mark as *const u32).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A router's LAN (`[lan]`): the kernel forwards its hosts' packets into the TUN, masqueraded to the
/// virtual IP there (masquerade mode) or with their own addresses (routed mode, where the engine
/// carries them as its own apps'); both undone when dropped.
struct Lan {
    // Dropped before the forwarding settings are put back (declared first).
    _masquerade: Option<NatRules>,
    _forwarding: Forwarding,
}

impl Lan {
    fn start(config: &ClientConfig, lan: &LanConfig) -> anyhow::Result<Self> {
        // Beside the control socket, in the daemon's runtime directory.
        let state = config.control_socket.with_extension("forwarding");
        let forwarding = Forwarding::enable(state, &config.uplink_names(), "lan")?;
        let masquerade = match lan.mode {
            LanMode::Masquerade => {
                let prefixes = lan.prefixes.iter().map(|p| (p.addr, p.len)).collect();
                let nat = roamtun_netlink::Masquerade::lan(&config.tun.name, prefixes);
                Some(NatRules::install(&nat, "lan", "LAN hosts masqueraded to the virtual IP into the tunnel")?)
            }
            LanMode::Routed => {
                let prefixes: Vec<String> = lan.prefixes.iter().map(ToString::to_string).collect();
                tracing::info!(?prefixes, "lan: LAN hosts routed into the tunnel with their own addresses (the server must list them as this peer's lan_prefixes)");
                None
            }
        };
        Ok(Lan { _masquerade: masquerade, _forwarding: forwarding })
    }

    /// The prefixes the engine carries besides the virtual IPs: the LAN's, in routed mode.
    fn routed_prefixes(config: &ClientConfig) -> Vec<IpPrefix> {
        match &config.lan {
            Some(lan) if lan.mode == LanMode::Routed => {
                lan.prefixes.iter().map(|p| IpPrefix::new(p.addr, p.len)).collect()
            }
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uplink_dials_the_server_addresses_of_its_own_families() {
        let v4: SocketAddr = "198.18.0.1:7700".parse().unwrap();
        let v6: SocketAddr = "[2001:2::1]:7700".parse().unwrap();
        let servers = [v4, v6];
        let only_v6: [IpAddr; 1] = ["2001:2:0:4::2".parse().unwrap()];
        let both: [IpAddr; 2] = ["198.18.1.2".parse().unwrap(), "2001:2:0:1::2".parse().unwrap()];
        assert_eq!(servers_for(&servers, Some(&only_v6)), [v6]);
        assert_eq!(servers_for(&servers, Some(&both)), [v4, v6], "the configured order is kept");
        assert_eq!(servers_for(&servers, Some(&[])), Vec::<SocketAddr>::new());
        assert_eq!(servers_for(&servers, None), [v4, v6], "an uplink we know nothing of tries them all");
    }
}
