//! A client engine and a server engine wired back to back in memory, each with a `Stack` playing the
//! kernel and the apps on its side of the tunnel:
//!
//! ```text
//!  client apps            client daemon              server daemon              server apps
//!  (app Stack) ⇄ TUN ⇄ Engine(Client) ⇄ relay link ⇄ Engine(Server) ⇄ TUN ⇄ (app Stack)
//! ```
//!
//! The relay link carries the bytes of `pop_session_output` of one engine to `handle_session_bytes` of
//! the other, optionally a limited number of bytes per round (so frames arrive split anywhere). Time
//! is injected and advanced in explicit steps; nothing sleeps, nothing touches a socket.

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, IpSlice, PacketBuilder, TcpHeaderSlice};
use roamtun_proto::relay::engine::{Engine, EngineConfig, Role, SessionCounters, SessionId, SessionStatus};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::wire::{Frame, FrameType, ResetCode};
use roamtun_stack::{FlowEvent, FlowId, Ingress, Stack, StackConfig};

use super::{addr, vip};

/// The client engine's session (towards the server).
pub const CS: SessionId = SessionId(1);
/// The server engine's session of this client.
pub const SS: SessionId = SessionId(42);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Client,
    Server,
}

/// One side of the tunnel: its daemon's engine and the kernel + apps behind its TUN.
pub struct Side {
    pub engine: Engine,
    pub sid: SessionId,
    /// The kernel and the apps on this side, as a TCP stack.
    pub app: Stack,
    /// Flow events of `app`, in order.
    pub events: Vec<FlowEvent>,
    /// SYNs that reached `app` from the engine: connections the tunnel opened towards this side's apps.
    pub new_flows: Vec<(FlowId, SocketAddr, SocketAddr)>,
    /// Non-TCP packets the engine wrote into this side's TUN.
    pub datagrams: Vec<Vec<u8>>,
    /// TCP resets the engine wrote into this side's TUN, as (source, destination) of the segment.
    pub resets_to_app: Vec<(SocketAddr, SocketAddr)>,
    /// The frames this side's engine sent to the peer, except DATA and CREDIT.
    pub sent_frames: Vec<Seen>,
    /// Largest `queued_bytes` of the engine's session seen in any round, before the link took its share.
    pub max_queued: usize,
}

impl Side {
    pub fn new(role: Role, config: EngineConfig, app_config: StackConfig, sid: SessionId, now: Instant) -> Self {
        assert_eq!(config.role, role);
        let mut engine = Engine::new(config, now);
        let limits = engine.config().session_limits;
        engine.add_session(sid, vec![vip()], Vec::new(), limits).unwrap();
        Side {
            engine,
            sid,
            app: Stack::new(app_config, now.into()),
            events: Vec::new(),
            new_flows: Vec::new(),
            datagrams: Vec::new(),
            resets_to_app: Vec::new(),
            sent_frames: Vec::new(),
            max_queued: 0,
        }
    }

    pub fn status(&self) -> SessionStatus {
        let all = self.engine.session_status();
        assert_eq!(all.len(), 1, "one session expected: {all:?}");
        all.into_iter().next().unwrap()
    }

    pub fn counters(&self) -> SessionCounters {
        self.status().counters
    }

    /// Reads everything the app kernel holds for `flow` into `into`; returns the byte count.
    pub fn read(&mut self, flow: FlowId, into: &mut Vec<u8>) -> usize {
        self.app.recv(flow, usize::MAX, |c| into.extend_from_slice(c))
    }

    pub fn closed(&self, flow: FlowId) -> Option<bool> {
        self.events.iter().find_map(|e| match *e {
            FlowEvent::Closed { flow: f, reset } if f == flow => Some(reset),
            _ => None,
        })
    }

    pub fn connected(&self, flow: FlowId) -> bool {
        self.events.contains(&FlowEvent::Connected(flow))
    }

    /// Moves the packets of this side's TUN both ways; returns whether any moved.
    pub fn move_packets(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(p) = self.app.pop_transmit() {
            moved = true;
            self.engine.handle_tun_packet(p, now);
        }
        self.engine.poll(now);
        while let Some(p) = self.engine.pop_tun_packet() {
            moved = true;
            self.resets_to_app.extend(tcp_reset(&p));
            match self.app.handle_packet(p.clone(), now.into()) {
                Ingress::NewFlow { flow, src, dst } => self.new_flows.push((flow, src, dst)),
                Ingress::NotTcp => self.datagrams.push(p),
                Ingress::Handled | Ingress::TooManyFlows => {}
            }
        }
        moved
    }
}

/// Both sides and the relay link between them.
pub struct Net {
    pub client: Side,
    pub server: Side,
    pub now: Instant,
    /// Bytes on the relay link, client → server and server → client.
    pub c2s: Vec<u8>,
    pub s2c: Vec<u8>,
    /// Most bytes the link holds and delivers per round and direction; `None`: everything at once.
    pub link_rate: Option<usize>,
}

pub fn engine_config(role: Role, seed: u64) -> EngineConfig {
    let mut c = EngineConfig::new(role);
    c.stack.random_seed = seed;
    c
}

pub fn app_config(seed: u64) -> StackConfig {
    StackConfig { random_seed: seed, ..StackConfig::default() }
}

impl Net {
    pub fn new() -> Self {
        Net::with(engine_config(Role::Client, 11), engine_config(Role::Server, 22), app_config(33), app_config(44))
    }

    pub fn with(
        client: EngineConfig,
        server: EngineConfig,
        client_apps: StackConfig,
        server_apps: StackConfig,
    ) -> Self {
        let now = Instant::from_millis(1_000_000);
        Net {
            client: Side::new(Role::Client, client, client_apps, CS, now),
            server: Side::new(Role::Server, server, server_apps, SS, now),
            now,
            c2s: Vec::new(),
            s2c: Vec::new(),
            link_rate: None,
        }
    }

    pub fn side(&mut self, w: Which) -> &mut Side {
        match w {
            Which::Client => &mut self.client,
            Which::Server => &mut self.server,
        }
    }

    /// One round: apps and engines poll, TUN packets move, the link moves (at most `link_rate`).
    pub fn round(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        for side in [&mut self.client, &mut self.server] {
            side.app.poll(now.into());
            moved |= side.move_packets(now);
            side.events.extend(std::iter::from_fn(|| side.app.pop_event()));
        }
        for (side, link) in [(&mut self.client, &mut self.c2s), (&mut self.server, &mut self.s2c)] {
            if let Some(s) = side.engine.session_status().first() {
                side.max_queued = side.max_queued.max(s.queued_bytes);
            }
            // A slow link takes a chunk only when it has room, like a transport with a full socket buffer.
            while link.len() < self.link_rate.unwrap_or(usize::MAX) {
                let Some(chunk) = side.engine.pop_session_output(side.sid) else { break };
                // The engine never splits a frame across chunks.
                let frames = decode_all(&chunk);
                side.sent_frames.extend(frames.into_iter().filter(|f| !matches!(f, Seen::Data | Seen::Credit)));
                link.extend_from_slice(&chunk);
            }
        }
        for (link, to) in [(&mut self.c2s, &mut self.server), (&mut self.s2c, &mut self.client)] {
            let n = self.link_rate.unwrap_or(usize::MAX).min(link.len());
            if n > 0 {
                moved = true;
                let sid = to.sid;
                to.engine.handle_session_bytes(sid, &link[..n], now).expect("the session goes on");
                link.drain(..n);
            }
        }
        moved
    }

    /// Rounds until nothing moves any more, at the current time.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            if !self.round() {
                return;
            }
        }
        panic!("the tunnel never went quiet");
    }

    /// Advances the clock by `dt`, then pumps.
    pub fn step(&mut self, dt: Duration) {
        self.now += dt;
        self.pump();
    }

    /// Runs `f` (the apps' actions), pumps and advances the clock by 1 ms, until `f` says it is done.
    pub fn drive(&mut self, what: &str, mut f: impl FnMut(&mut Net) -> bool) {
        for _ in 0..20_000 {
            let done = f(self);
            self.step(Duration::from_millis(1));
            if done {
                return;
            }
        }
        panic!("{what}: not done after 20 000 steps");
    }

    /// A client app connects from the client's virtual IP to a server app, which accepts.
    /// Returns (client app flow, server app flow).
    pub fn client_connects(&mut self, port: u16) -> (FlowId, FlowId) {
        let src = SocketAddr::new(vip(), port);
        let dst = addr("100.64.0.1:80");
        let fc = self.client.app.connect(src, dst).unwrap();
        let seen = self.server.new_flows.len();
        self.pump();
        assert_eq!(self.server.new_flows.len(), seen + 1, "the SYN did not reach the server side");
        let (fs, s, d) = self.server.new_flows[seen];
        assert_eq!((s, d), (src, dst), "the server side sees the client app's own endpoints");
        assert!(!self.client.connected(fc), "the client app connected before the server app accepted");
        self.server.app.accept(fs).unwrap();
        self.pump();
        assert!(self.client.connected(fc), "the client app did not connect");
        (fc, fs)
    }

    /// Sends `data` from the app of `from` to the app of `to` and reads it there; returns what arrived.
    pub fn transfer(&mut self, from: (Which, FlowId), to: (Which, FlowId), data: &[u8]) -> Vec<u8> {
        let mut sent = 0;
        let mut got = Vec::new();
        self.drive("transfer", |n| {
            sent += n.side(from.0).app.send(from.1, &data[sent..]);
            n.side(to.0).read(to.1, &mut got);
            got.len() >= data.len()
        });
        got
    }
}

/// A frame in an engine's output, as far as the tests look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Open(u32),
    OpenOk(u32),
    Data,
    Credit,
    Fin(u32, u64),
    Reset(u32, ResetCode),
    Pong(u64),
    Other(FrameType),
}

pub fn decode_all(bytes: &[u8]) -> Vec<Seen> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (frame, n) = Frame::decode(rest).unwrap().expect("whole frames");
        out.push(match frame {
            Frame::Open { stream_id, .. } => Seen::Open(stream_id),
            Frame::OpenOk { stream_id } => Seen::OpenOk(stream_id),
            Frame::Data { .. } => Seen::Data,
            Frame::Credit { .. } => Seen::Credit,
            Frame::Fin { stream_id, offset } => Seen::Fin(stream_id, offset),
            Frame::Reset { stream_id, code } => Seen::Reset(stream_id, code),
            Frame::Pong { nonce } => Seen::Pong(nonce),
            other => Seen::Other(other.frame_type()),
        });
        rest = &rest[n..];
    }
    out
}

/// Takes what an engine queued for its peer, bypassing the link.
pub fn drain_frames(engine: &mut Engine, sid: SessionId) -> Vec<Seen> {
    let mut bytes = Vec::new();
    while let Some(chunk) = engine.pop_session_output(sid) {
        bytes.extend_from_slice(&chunk);
    }
    decode_all(&bytes)
}

/// The endpoints (source, destination) of a TCP segment with RST set.
pub fn tcp_reset(packet: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let ip = IpSlice::from_slice(packet).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match &ip {
        IpSlice::Ipv4(v4) => (v4.header().source_addr().into(), v4.header().destination_addr().into()),
        IpSlice::Ipv6(v6) => (v6.header().source_addr().into(), v6.header().destination_addr().into()),
    };
    if ip.payload().ip_number != IpNumber::TCP {
        return None;
    }
    let tcp = TcpHeaderSlice::from_slice(ip.payload().payload).ok()?;
    tcp.rst().then(|| (SocketAddr::new(src, tcp.source_port()), SocketAddr::new(dst, tcp.destination_port())))
}

pub fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out).unwrap();
    }
    out
}

pub fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    PacketBuilder::ipv4(src.0, dst.0, 64).udp(src.1, dst.1).write(&mut p, payload).unwrap();
    p
}
