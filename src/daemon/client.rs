//! The client daemon (the spec's CNAPT): a TUN with the stable virtual IPs, smoltcp terminating the
//! apps' TCP, and one relay connection to the server, re-established with backoff when it fails.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_rustls::TlsConnector;

use super::transport::{self, Handshake, HandshakeError, Liveness};
use super::{engine_config, EngineMsg, PeerInfo, SharedCounters, StatusSource, Tun};
use crate::clock::Clock;
use crate::config::ClientConfig;
use crate::relay::engine::{Engine, Role, SessionId};
use crate::tls;
use crate::wire::{Frame, PROTOCOL_VERSION};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

pub async fn run(config: ClientConfig) -> anyhow::Result<()> {
    let tls_config = tls::client_config(&config.private_key, config.server.public_key)?;
    let tun = Arc::new(Tun::create(&config.tun.name, config.tun.mtu, &config.virtual_ips, &config.routes).await?);
    tracing::info!(tun = %config.tun.name, virtual_ips = ?config.virtual_ips, routes = ?config.routes.iter().map(ToString::to_string).collect::<Vec<_>>(), "client TUN up");
    let clock = Clock::new();
    let engine = Engine::new(engine_config(Role::Client, &config.tuning, config.tun.mtu), clock.now());
    let shared = Arc::new(SharedCounters::default());
    let source = StatusSource {
        role: Role::Client,
        tun: config.tun.name.clone(),
        virtual_ips: config.virtual_ips.clone(),
        started: StdInstant::now(),
        known_peers: vec![("server".into(), config.server.public_key.to_base64(), Vec::new())],
        shared: shared.clone(),
    };
    let connector = TlsConnector::from(tls_config);
    super::serve(tun, engine, clock, source, &config.control_socket, |engine, room| async {
        Dialer { config: &config, connector, engine, room, shared }.run().await
    })
    .await
}

struct Dialer<'a> {
    config: &'a ClientConfig,
    connector: TlsConnector,
    engine: mpsc::Sender<EngineMsg>,
    room: Arc<Notify>,
    shared: Arc<SharedCounters>,
}

impl Dialer<'_> {
    /// Keeps one session with the server up, forever.
    async fn run(&self) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.connect().await {
                Ok(writer) => {
                    let since = StdInstant::now();
                    let _ = writer.await;
                    tracing::warn!("relay connection to the server ended; reconnecting");
                    // A session that lived a while was healthy: start over with a short wait.
                    if since.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_FIRST;
                    }
                }
                Err(err) => {
                    let msg = format!("{:#}", err);
                    tracing::warn!(server = %self.config.server.address, error = %msg, retry_in_ms = backoff.as_millis() as u64, "cannot reach the server");
                    self.shared.note_error(msg);
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Dials, authenticates and registers one session; returns the writer task, which ends with it.
    async fn connect(&self) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let server = self.config.server.address;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server))
            .await
            .map_err(|_| anyhow::anyhow!("no answer from {server} within {CONNECT_TIMEOUT:?}"))?
            .with_context(|| format!("cannot connect to {server}"))?;
        tcp.set_nodelay(true)?;
        let local = tcp.local_addr()?;
        let mut stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, self.connector.connect(tls::server_name(), tcp))
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake with {server} timed out"))?
            .map_err(|err| match tls::key_refusal(&err) {
                Some(refused) => anyhow::anyhow!("TLS handshake with {server} refused: {refused}"),
                None => anyhow::Error::new(err).context(format!("TLS handshake with {server} failed")),
            })?;
        transport::write_frame(
            &mut stream,
            &Frame::Hello { version: PROTOCOL_VERSION, virtual_ips: self.config.virtual_ips.clone() },
        )
        .await
        .context("cannot send HELLO")?;
        let (hs, early) = transport::read_handshake(&mut stream, HANDSHAKE_TIMEOUT).await.map_err(|err| match err {
            // TLS 1.3 clients finish their handshake before the server judges their key: a refusal
            // shows up here, as an alert on the first read.
            HandshakeError::Io(io) => anyhow::anyhow!("the server ended the connection during the handshake ({io}); is this client's public key in its [[peer]] list?"),
            other => anyhow::Error::new(other),
        })?;
        let Handshake::Welcome { version, session_id } = hs else {
            anyhow::bail!("the server answered HELLO with something other than WELCOME");
        };
        if version != PROTOCOL_VERSION {
            anyhow::bail!("the server speaks protocol version {version}, we speak {PROTOCOL_VERSION}");
        }
        let id = SessionId(session_id);
        let liveness = Liveness::from_idle_timeout(Duration::from_secs(self.config.tuning.idle_timeout_secs));
        let (out, reader, writer) =
            transport::spawn_session_io(stream, id, self.engine.clone(), self.room.clone(), liveness);
        let (reply, answer) = oneshot::channel();
        let peer = PeerInfo {
            name: "server".into(),
            public_key: self.config.server.public_key.to_base64(),
            local_address: Some(local),
            remote_address: Some(server),
        };
        self.engine
            .send(EngineMsg::SessionUp {
                id,
                virtual_ips: self.config.virtual_ips.clone(),
                peer,
                out,
                reader,
                early,
                reply,
            })
            .await
            .context("the engine stopped")?;
        answer.await.context("the engine stopped")??;
        self.shared.connects.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut e) = self.shared.last_error.lock() {
            *e = None;
        }
        let uplink = super::tun::interface_of(local.ip()).unwrap_or_else(|| "?".into());
        tracing::info!(%server, %local, %uplink, session = session_id, "connected to the server");
        Ok(writer)
    }
}
