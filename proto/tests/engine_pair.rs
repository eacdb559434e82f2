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
use roamtun_proto::relay::engine::{
    Engine, EngineConfig, Role, SessionCounters, SessionError, SessionId, SessionStatus,
};
use roamtun_proto::relay::policy::{DestinationPolicy, IpPrefix};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::wire::{Frame, FrameType, ResetCode};
use roamtun_stack::{FlowEvent, FlowId, Ingress, Stack, StackConfig};

/// The client engine's session (towards the server).
const CS: SessionId = SessionId(1);
/// The server engine's session of this client.
const SS: SessionId = SessionId(42);

const CLIENT_VIP: [u8; 4] = [100, 64, 0, 2];
const SERVER_IP: [u8; 4] = [100, 64, 0, 1];

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn vip() -> IpAddr {
    IpAddr::from(CLIENT_VIP)
}

/// Deterministic, position-dependent bytes, so a misplaced or repeated byte is caught.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Which {
    Client,
    Server,
}

/// One side of the tunnel: its daemon's engine and the kernel + apps behind its TUN.
struct Side {
    engine: Engine,
    sid: SessionId,
    /// The kernel and the apps on this side, as a TCP stack.
    app: Stack,
    /// Flow events of `app`, in order.
    events: Vec<FlowEvent>,
    /// SYNs that reached `app` from the engine: connections the tunnel opened towards this side's apps.
    new_flows: Vec<(FlowId, SocketAddr, SocketAddr)>,
    /// Non-TCP packets the engine wrote into this side's TUN.
    datagrams: Vec<Vec<u8>>,
    /// TCP resets the engine wrote into this side's TUN, as (source, destination) of the segment.
    resets_to_app: Vec<(SocketAddr, SocketAddr)>,
    /// The frames this side's engine sent to the peer, except DATA and CREDIT.
    sent_frames: Vec<Seen>,
    /// Largest `queued_bytes` of the engine's session seen in any round, before the link took its share.
    max_queued: usize,
}

impl Side {
    fn new(role: Role, config: EngineConfig, app_config: StackConfig, sid: SessionId, now: Instant) -> Self {
        assert_eq!(config.role, role);
        let mut engine = Engine::new(config, now);
        engine.add_session(sid, vec![vip()]).unwrap();
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

    fn status(&self) -> SessionStatus {
        let all = self.engine.session_status();
        assert_eq!(all.len(), 1, "one session expected: {all:?}");
        all.into_iter().next().unwrap()
    }

    fn counters(&self) -> SessionCounters {
        self.status().counters
    }

    /// Reads everything the app kernel holds for `flow` into `into`; returns the byte count.
    fn read(&mut self, flow: FlowId, into: &mut Vec<u8>) -> usize {
        self.app.recv(flow, usize::MAX, |c| into.extend_from_slice(c))
    }

    fn closed(&self, flow: FlowId) -> Option<bool> {
        self.events.iter().find_map(|e| match *e {
            FlowEvent::Closed { flow: f, reset } if f == flow => Some(reset),
            _ => None,
        })
    }

    fn connected(&self, flow: FlowId) -> bool {
        self.events.contains(&FlowEvent::Connected(flow))
    }

    /// Moves the packets of this side's TUN both ways; returns whether any moved.
    fn move_packets(&mut self, now: Instant) -> bool {
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
struct Net {
    client: Side,
    server: Side,
    now: Instant,
    /// Bytes on the relay link, client → server and server → client.
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    /// Most bytes the link holds and delivers per round and direction; `None`: everything at once.
    link_rate: Option<usize>,
}

fn engine_config(role: Role, seed: u64) -> EngineConfig {
    let mut c = EngineConfig::new(role);
    c.stack.random_seed = seed;
    c
}

fn app_config(seed: u64) -> StackConfig {
    StackConfig { random_seed: seed, ..StackConfig::default() }
}

impl Net {
    fn new() -> Self {
        Net::with(engine_config(Role::Client, 11), engine_config(Role::Server, 22), app_config(33), app_config(44))
    }

    fn with(client: EngineConfig, server: EngineConfig, client_apps: StackConfig, server_apps: StackConfig) -> Self {
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

    fn side(&mut self, w: Which) -> &mut Side {
        match w {
            Which::Client => &mut self.client,
            Which::Server => &mut self.server,
        }
    }

    /// One round: apps and engines poll, TUN packets move, the link moves (at most `link_rate`).
    fn round(&mut self) -> bool {
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
    fn pump(&mut self) {
        for _ in 0..100_000 {
            if !self.round() {
                return;
            }
        }
        panic!("the tunnel never went quiet");
    }

    /// Advances the clock by `dt`, then pumps.
    fn step(&mut self, dt: Duration) {
        self.now += dt;
        self.pump();
    }

    /// Runs `f` (the apps' actions), pumps and advances the clock by 1 ms, until `f` says it is done.
    fn drive(&mut self, what: &str, mut f: impl FnMut(&mut Net) -> bool) {
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
    fn client_connects(&mut self, port: u16) -> (FlowId, FlowId) {
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
    fn transfer(&mut self, from: (Which, FlowId), to: (Which, FlowId), data: &[u8]) -> Vec<u8> {
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
enum Seen {
    Open(u32),
    OpenOk(u32),
    Data,
    Credit,
    Fin(u32, u64),
    Reset(u32, ResetCode),
    Pong(u64),
    Other(FrameType),
}

fn decode_all(bytes: &[u8]) -> Vec<Seen> {
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
fn drain_frames(engine: &mut Engine, sid: SessionId) -> Vec<Seen> {
    let mut bytes = Vec::new();
    while let Some(chunk) = engine.pop_session_output(sid) {
        bytes.extend_from_slice(&chunk);
    }
    decode_all(&bytes)
}

/// The endpoints (source, destination) of a TCP segment with RST set.
fn tcp_reset(packet: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
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

fn encode(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        f.encode(&mut out).unwrap();
    }
    out
}

fn udp(src: ([u8; 4], u16), dst: ([u8; 4], u16), payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::new();
    PacketBuilder::ipv4(src.0, dst.0, 64).udp(src.1, dst.1).write(&mut p, payload).unwrap();
    p
}

// 1.
#[test]
fn tcp_carries_a_mebibyte_each_way_and_half_closes_gracefully() {
    let mut n = Net::new();
    let (fc, fs) = n.client_connects(40000);
    const MIB: usize = 1024 * 1024;
    let up = pattern(MIB, 1);
    let down = pattern(MIB, 2);
    let half = MIB / 2;

    // Both directions at once: the client app sends all of its MiB, the server app the first half of its.
    let (mut up_sent, mut down_sent) = (0, 0);
    let (mut up_got, mut down_got) = (Vec::new(), Vec::new());
    n.drive("concurrent transfer", |n| {
        up_sent += n.client.app.send(fc, &up[up_sent..]);
        down_sent += n.server.app.send(fs, &down[down_sent..half]);
        n.server.read(fs, &mut up_got);
        n.client.read(fc, &mut down_got);
        up_sent == MIB && down_got.len() == half
    });
    // The client app is done sending: it closes its side first.
    n.client.app.close(fc);
    n.drive("server app reads to EOF", |n| {
        n.server.read(fs, &mut up_got);
        n.server.app.app_finished_sending(fs)
    });
    assert!(up_got == up, "client → server bytes differ ({} of {} bytes arrived)", up_got.len(), up.len());
    assert_eq!(n.client.closed(fc), None, "the client app's connection ended at its own FIN");

    // The server app goes on sending through the half-closed connection, then closes.
    n.drive("server app sends the second half", |n| {
        down_sent += n.server.app.send(fs, &down[down_sent..]);
        n.client.read(fc, &mut down_got);
        down_got.len() == MIB
    });
    assert!(down_got == down, "server → client bytes differ");
    n.server.app.close(fs);
    n.drive("both apps see a graceful close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
    assert_eq!(n.client.closed(fc), Some(false), "client app: {:?}", n.client.events);
    assert_eq!(n.server.closed(fs), Some(false), "server app: {:?}", n.server.events);
    n.step(Duration::from_millis(10));

    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        let st = side.status();
        assert_eq!(st.tcp_flows, 0, "{name} engine still holds a stream");
        assert_eq!(st.counters.tcp_streams_opened, 1, "{name}");
        assert_eq!(st.counters.bytes_sent, MIB as u64, "{name} engine sent each payload byte once");
        assert_eq!(st.counters.bytes_received, MIB as u64, "{name} engine received each payload byte once");
        assert_eq!(st.counters.streams_violated + st.counters.frames_malformed, 0, "{name}");
        assert_eq!(st.queued_bytes, 0, "{name}");
    }
    // On the relay: OPEN, OPEN_OK, one FIN each way at the final offset, no RESET.
    assert_eq!(n.client.sent_frames, vec![Seen::Open(1), Seen::Fin(1, MIB as u64)]);
    assert_eq!(n.server.sent_frames, vec![Seen::OpenOk(1), Seen::Fin(1, MIB as u64)]);
}

/// A finished connection gives its flow back to the engine's stack: with room for one flow only, one
/// connection after the other still works, whichever app closes first.
#[test]
fn finished_connections_give_their_flows_back() {
    let one_flow = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stack.max_flows = 1;
        c
    };
    let mut n = Net::with(one_flow(Role::Client, 11), one_flow(Role::Server, 22), app_config(33), app_config(44));
    for i in 0..4u16 {
        let (fc, fs) = n.client_connects(41000 + i);
        let bytes = pattern(10_000, u32::from(i));
        assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &bytes) == bytes);
        assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &bytes) == bytes);
        let (first, second) = if i % 2 == 0 { (Which::Client, Which::Server) } else { (Which::Server, Which::Client) };
        let flow = |w| if w == Which::Client { fc } else { fs };
        n.side(first).app.close(flow(first));
        n.drive("EOF", |n| n.side(second).app.app_finished_sending(flow(second)));
        n.side(second).app.close(flow(second));
        n.drive("both close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
        assert_eq!((n.client.closed(fc), n.server.closed(fs)), (Some(false), Some(false)), "connection {i}");
        n.step(Duration::from_millis(10));
        assert_eq!(n.client.status().tcp_flows, 0, "connection {i}");
        assert_eq!(n.server.status().tcp_flows, 0, "connection {i}");
    }
    assert_eq!(n.client.engine.tun_counters().flows_refused_limit, 0);
    assert_eq!(n.server.engine.tun_counters().flows_refused_limit, 0);
    assert_eq!(n.client.counters().tcp_streams_opened, 4);
}

// 2.
#[test]
fn server_app_reaches_a_client_app_at_the_virtual_ip() {
    let mut n = Net::new();
    let src = addr("100.64.0.1:5000");
    let dst = addr("100.64.0.2:7000");
    let fs = n.server.app.connect(src, dst).unwrap();
    n.pump();
    assert_eq!(n.client.new_flows.len(), 1, "the SYN did not reach the client side");
    let (fc, s, d) = n.client.new_flows[0];
    assert_eq!((s, d), (src, dst));
    assert!(!n.server.connected(fs), "connected before the client app accepted");
    n.client.app.accept(fc).unwrap();
    n.pump();
    assert!(n.server.connected(fs));
    assert_eq!(n.client.status().counters.tcp_streams_opened, 1);
    assert_eq!(n.client.status().tcp_flows, 1);

    let down = pattern(200_000, 3);
    let up = pattern(150_000, 4);
    assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &down) == down);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &up) == up);

    // This time the server app closes first.
    n.server.app.close(fs);
    n.drive("client app sees EOF", |n| n.client.app.app_finished_sending(fc));
    n.client.app.close(fc);
    n.drive("both close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
    assert_eq!((n.client.closed(fc), n.server.closed(fs)), (Some(false), Some(false)));
    n.step(Duration::from_millis(10));
    assert_eq!(n.client.status().tcp_flows, 0);
    assert_eq!(n.server.status().tcp_flows, 0);
}

// 3.
#[test]
fn a_refused_connection_is_refused_not_accepted_then_reset() {
    let mut n = Net::new();
    let fc = n.client.app.connect(addr("100.64.0.2:40001"), addr("100.64.0.1:9")).unwrap();
    n.pump();
    assert_eq!(n.server.new_flows.len(), 1);
    // The client engine holds the app's SYN while the server side decides.
    assert!(n.client.events.is_empty(), "client app: {:?}", n.client.events);
    let (fs, _, _) = n.server.new_flows[0];
    n.server.app.refuse(fs, n.now.into()).unwrap();
    n.pump();
    assert_eq!(n.client.events, vec![FlowEvent::Closed { flow: fc, reset: true }]);
    assert_eq!(n.server.sent_frames, vec![Seen::Reset(1, ResetCode::Refused)], "the server engine's answer");
    assert!(!n.client.connected(fc));
    assert_eq!(n.client.status().tcp_flows, 0);
    assert_eq!(n.server.status().tcp_flows, 0);
    assert_eq!(n.client.status().counters.streams_violated, 0);
    // Nothing is left to happen later either.
    n.step(Duration::from_secs(5));
    assert_eq!(n.client.events.len(), 1);
}

// 4.
#[test]
fn a_server_app_that_does_not_read_stops_the_client_app_without_unbounded_queues() {
    const BUF: usize = 64 * 1024;
    const WINDOW: u64 = 192 * 1024;
    const BUDGET: usize = 40 * 1024;
    let small = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stream_window = WINDOW;
        c.session_out_budget = BUDGET;
        c.stack.tcp_rx_buffer = BUF;
        c.stack.tcp_tx_buffer = BUF;
        c
    };
    let apps = |seed| StackConfig { tcp_rx_buffer: BUF, tcp_tx_buffer: BUF, ..app_config(seed) };
    let mut n = Net::with(small(Role::Client, 11), small(Role::Server, 22), apps(33), apps(44));
    let (fc, fs) = n.client_connects(40002);
    // A slow link, so queues form in front of it and frames arrive cut anywhere.
    n.link_rate = Some(16 * 1024);

    let data = pattern(2 * 1024 * 1024, 5);
    let mut written = 0;
    // The client app writes whenever it can, between every two rounds (not once per pump: the engine
    // must hold back while the link is slower than the app), until it has been stuck for a while.
    let mut stalled_for = 0;
    for round in 0.. {
        assert!(round < 100_000, "the client app was never stopped");
        let w = n.client.app.send(fc, &data[written..]);
        written += w;
        let moved = n.round();
        n.now += Duration::from_millis(1);
        stalled_for = if w == 0 && !moved && n.client.app.send_capacity(fc) == 0 { stalled_for + 1 } else { 0 };
        if stalled_for == 50 {
            break;
        }
    }
    assert_eq!(n.client.app.send_capacity(fc), 0);
    assert!(written < data.len(), "the client app wrote everything: nothing pushed back");

    // What the server engine holds: bytes it received minus what waits in the server app's socket.
    let server_received = n.server.counters().bytes_received as usize;
    let in_server_app = n.server.app.recv_queue(fs);
    let in_server_engine = server_received - in_server_app;
    assert!(
        in_server_engine <= WINDOW as usize + BUF,
        "server engine holds {in_server_engine} bytes (window {WINDOW}, stack buffer {BUF})"
    );
    assert!(in_server_app <= BUF);
    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        assert!(
            side.max_queued <= BUDGET + 64 * 1024,
            "{name} engine queued up to {} bytes towards the peer (budget {BUDGET})",
            side.max_queued
        );
    }
    // The slow link made a queue form in the client engine: the budget was what bounded it.
    assert!(n.client.max_queued > BUDGET / 2, "no queue formed ({} bytes)", n.client.max_queued);
    // Everything the app wrote sits in one of the bounded buffers on the way.
    let bound = BUF /* client app socket */ + BUF /* client engine stack */ + BUDGET + 64 * 1024 /* queue */
        + WINDOW as usize + BUF /* server engine */ + BUF /* server app socket */;
    assert!(written <= bound, "{written} bytes in flight, bound {bound}");
    assert_eq!(n.client.counters().streams_violated + n.server.counters().streams_violated, 0);

    // The server app starts reading: everything arrives, intact, and the client app can write again.
    let mut got = Vec::new();
    n.drive("everything arrives once the server app reads", |n| {
        written += n.client.app.send(fc, &data[written..]);
        n.server.read(fs, &mut got);
        got.len() == data.len()
    });
    assert!(got == data, "bytes differ after backpressure");
    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        assert!(side.max_queued <= BUDGET + 64 * 1024, "{name} engine queued up to {} bytes", side.max_queued);
    }
}

// 5.
#[test]
fn malformed_frames_are_skipped_and_the_session_and_streams_go_on() {
    let mut n = Net::new();
    let (fc, fs) = n.client_connects(40003);
    let first = pattern(30_000, 6);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &first) == first);

    for which in [Which::Client, Which::Server] {
        let now = n.now;
        let side = n.side(which);
        let sid = side.sid;
        let before = side.counters();
        let feed = |side: &mut Side, bytes: &[u8]| {
            side.engine.handle_session_bytes(sid, bytes, now).expect("a malformed frame does not end the session")
        };

        // An unknown type with a valid length header: skipped by its length.
        feed(side, &[0x7f, 0, 0, 3, 1, 2, 3]);
        // Non-zero flags; a fixed-size frame with the wrong length; a handshake frame out of place.
        feed(side, &[0x30, 0x01, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        feed(side, &[0x14, 0, 0, 7, 0, 0, 0, 1, 0, 2, 0]);
        feed(side, &encode(&[Frame::Hello { version: 1, resume: 0, virtual_ips: vec![vip()] }]));
        assert_eq!(side.counters().frames_malformed, before.frames_malformed + 4, "{which:?}");
        assert!(drain_frames(&mut side.engine, sid).is_empty(), "{which:?}: answered garbage");

        // DATA, FIN and CREDIT for streams that do not exist: ignored (frames in flight after a reset).
        feed(
            side,
            &encode(&[
                Frame::Data { stream_id: 1001, offset: 0, data: b"stray" },
                Frame::Fin { stream_id: 1001, offset: 5 },
                Frame::Credit { stream_id: 1001, received: 0, max_offset: 1 << 20 },
            ]),
        );
        assert_eq!(side.counters().streams_violated, before.streams_violated, "{which:?}");

        // A PING cut in two, then an unknown type cut right after its type byte, then one more PING
        // glued to the end of the second piece: all handled once complete.
        let ping = encode(&[Frame::Ping { nonce: 7 }]);
        feed(side, &ping[..5]);
        assert!(drain_frames(&mut side.engine, sid).is_empty(), "{which:?}: answered half a PING");
        let mut rest = ping[5..].to_vec();
        rest.extend_from_slice(&[0x7e]);
        feed(side, &rest);
        let mut tail = vec![0, 0, 2, 0xaa, 0xbb];
        tail.extend_from_slice(&encode(&[Frame::Ping { nonce: 8 }]));
        feed(side, &tail[..3]);
        feed(side, &tail[3..]);
        assert_eq!(drain_frames(&mut side.engine, sid), vec![Seen::Pong(7), Seen::Pong(8)], "{which:?}");
        let after = side.counters();
        assert_eq!(after.frames_malformed, before.frames_malformed + 5, "{which:?}");
        assert_eq!(after.streams_violated, before.streams_violated, "{which:?}");
        assert_eq!(side.status().tcp_flows, 1, "{which:?}");
    }

    // The live stream still works both ways and closes cleanly.
    let up = pattern(100_000, 7);
    let down = pattern(100_000, 8);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &up) == up);
    assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &down) == down);
    n.client.app.close(fc);
    n.drive("server app sees EOF", |n| n.server.app.app_finished_sending(fs));
    n.server.app.close(fs);
    n.drive("both close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
    assert_eq!((n.client.closed(fc), n.server.closed(fs)), (Some(false), Some(false)));
}

// 6.
#[test]
fn a_peer_cannot_speak_for_addresses_it_does_not_own() {
    let mut n = Net::new();
    let now = n.now;
    let other = [100, 64, 0, 9];

    // A DATAGRAM from the client whose source is another address: dropped, counted, never on the TUN.
    let spoofed = udp((other, 5000), (SERVER_IP, 53), b"spoofed");
    n.server.engine.handle_session_bytes(SS, &encode(&[Frame::Datagram { packet: &spoofed }]), now).unwrap();
    // A DATAGRAM from the server to an address the client does not own: the same on the client.
    let misrouted = udp((SERVER_IP, 53), (other, 5000), b"not yours");
    n.client.engine.handle_session_bytes(CS, &encode(&[Frame::Datagram { packet: &misrouted }]), now).unwrap();
    n.pump();
    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        let c = side.counters();
        assert_eq!(c.datagrams_spoofed, 1, "{name}");
        assert_eq!(c.datagrams_received, 0, "{name}");
        assert!(side.datagrams.is_empty(), "{name} engine wrote a spoofed datagram into its TUN");
        assert_eq!(side.status().udp_flows, 0, "{name}");
    }

    // An OPEN from the client with a source outside its virtual IPs: answered with RESET, no SYN sent.
    let open = Frame::Open { stream_id: 1, src: addr("100.64.0.9:1234"), dst: addr("100.64.0.1:80") };
    n.server.engine.handle_session_bytes(SS, &encode(&[open]), now).unwrap();
    assert_eq!(drain_frames(&mut n.server.engine, SS), vec![Seen::Reset(1, ResetCode::Refused)]);
    // An OPEN from the client with the server's stream id parity, from its own address: refused too.
    let open = Frame::Open { stream_id: 2, src: addr("100.64.0.2:1234"), dst: addr("100.64.0.1:80") };
    n.server.engine.handle_session_bytes(SS, &encode(&[open]), now).unwrap();
    assert_eq!(drain_frames(&mut n.server.engine, SS), vec![Seen::Reset(2, ResetCode::Refused)]);
    // An OPEN from the server towards an address the client does not own.
    let open = Frame::Open { stream_id: 2, src: addr("100.64.0.1:5000"), dst: addr("100.64.0.9:22") };
    n.client.engine.handle_session_bytes(CS, &encode(&[open]), now).unwrap();
    assert_eq!(drain_frames(&mut n.client.engine, CS), vec![Seen::Reset(2, ResetCode::Refused)]);
    n.pump();
    assert!(n.server.new_flows.is_empty(), "the server engine originated a spoofed connection");
    assert!(n.client.new_flows.is_empty(), "the client engine originated a connection to a foreign address");
    assert_eq!(n.server.counters().streams_violated, 2);
    assert_eq!(n.client.counters().streams_violated, 1);
    for side in [&n.client, &n.server] {
        assert_eq!(side.status().tcp_flows, 0);
        assert_eq!(side.counters().tcp_streams_opened, 0);
    }

    // On the client, a local app that is not on the virtual IP has no session to carry it.
    let f = n.client.app.connect(addr("10.9.9.9:1000"), addr("100.64.0.1:80")).unwrap();
    n.pump();
    assert_eq!(n.client.closed(f), Some(true), "the foreign-source SYN was not refused");
    assert_eq!(n.client.engine.tun_counters().packets_unroutable, 1);
    assert!(n.server.new_flows.is_empty());
}

// 7.
#[test]
fn udp_crosses_unchanged_and_its_flow_expires_when_idle() {
    let mut n = Net::new();
    let timeout = EngineConfig::new(Role::Client).udp_idle_timeout;
    let query = udp((CLIENT_VIP, 5353), (SERVER_IP, 53), b"what is the address of example.org?");
    n.client.engine.handle_tun_packet(query.clone(), n.now);
    n.pump();
    assert_eq!(n.server.datagrams, vec![query.clone()], "the datagram changed on the way");
    let answer = udp((SERVER_IP, 53), (CLIENT_VIP, 5353), b"93.184.215.14");
    n.step(Duration::from_secs(1));
    n.server.engine.handle_tun_packet(answer.clone(), n.now);
    n.pump();
    assert_eq!(n.client.datagrams, vec![answer.clone()]);
    let last_packet = n.now;

    let (c, s) = (n.client.counters(), n.server.counters());
    assert_eq!((c.datagrams_sent, c.datagrams_received), (1, 1));
    assert_eq!((s.datagrams_sent, s.datagrams_received), (1, 1));
    assert_eq!(c.bytes_sent, query.len() as u64);
    assert_eq!(s.bytes_received, query.len() as u64);
    assert_eq!(s.bytes_sent, answer.len() as u64);
    assert_eq!(c.bytes_received, answer.len() as u64);
    assert_eq!(c.datagrams_dropped + c.datagrams_spoofed + s.datagrams_dropped + s.datagrams_spoofed, 0);
    // A query and its answer are one flow on each side.
    assert_eq!(n.client.status().udp_flows, 1);
    assert_eq!(n.server.status().udp_flows, 1);

    // The engines ask to be polled no later than the expiry.
    let expiry = last_packet + timeout;
    for side in [&mut n.client, &mut n.server] {
        let at = side.engine.poll_at(n.now).expect("a UDP flow needs a timer");
        assert!(at <= expiry, "poll_at {at} is after the flow's expiry {expiry}");
    }
    // Idle for just under the timeout: still there. At the timeout: gone.
    n.now = expiry - Duration::from_millis(1);
    n.pump();
    assert_eq!(n.client.status().udp_flows, 1, "expired early");
    assert_eq!(n.server.status().udp_flows, 1, "expired early");
    n.step(Duration::from_millis(1));
    assert_eq!(n.client.status().udp_flows, 0);
    assert_eq!(n.server.status().udp_flows, 0);
}

/// Three connections through one session: two the client apps opened, one a server app opened.
/// Returns the (client app, server app) flows and their endpoints as (client app end, server app end).
fn three_flows(n: &mut Net) -> Vec<(FlowId, FlowId, SocketAddr, SocketAddr)> {
    let (fc1, fs1) = n.client_connects(40004);
    let (fc2, fs2) = n.client_connects(40005);
    let fs3 = n.server.app.connect(addr("100.64.0.1:5001"), addr("100.64.0.2:7001")).unwrap();
    n.pump();
    let (fc3, _, _) = n.client.new_flows[0];
    n.client.app.accept(fc3).unwrap();
    n.pump();
    assert!(n.server.connected(fs3));
    let bytes = pattern(20_000, 9);
    assert!(n.transfer((Which::Client, fc1), (Which::Server, fs1), &bytes) == bytes);
    assert!(n.transfer((Which::Server, fs3), (Which::Client, fc3), &bytes) == bytes);
    assert_eq!(n.client.status().tcp_flows, 3);
    assert_eq!(n.server.status().tcp_flows, 3);
    vec![
        (fc1, fs1, addr("100.64.0.2:40004"), addr("100.64.0.1:80")),
        (fc2, fs2, addr("100.64.0.2:40005"), addr("100.64.0.1:80")),
        (fc3, fs3, addr("100.64.0.2:7001"), addr("100.64.0.1:5001")),
    ]
}

/// Removes the session from both engines (the client's first), moving only TUN packets afterwards:
/// the relay link is gone.
fn remove_both_sessions(n: &mut Net) {
    let now = n.now;
    let counters = n.client.engine.remove_session(CS, now).expect("the session existed");
    assert_eq!(counters.tcp_streams_opened, 3);
    assert!(n.client.engine.session_status().is_empty());
    assert!(n.client.engine.remove_session(CS, now).is_none());
    assert!(matches!(
        n.client.engine.handle_session_bytes(CS, &encode(&[Frame::Ping { nonce: 1 }]), now),
        Err(SessionError::NoSuchSession(CS))
    ));
    n.server.engine.remove_session(SS, now).expect("the session existed");
    for side in [&mut n.client, &mut n.server] {
        side.move_packets(now);
        side.app.poll(now.into());
        side.events.extend(std::iter::from_fn(|| side.app.pop_event()));
    }
}

// 8.
#[test]
fn removing_a_session_resets_every_flow_it_carried() {
    let mut n = Net::new();
    let flows = three_flows(&mut n);
    remove_both_sessions(&mut n);
    for (fc, fs, client_end, server_end) in flows {
        // Each engine wrote a TCP reset for the connection into its TUN …
        assert!(
            n.client.resets_to_app.contains(&(server_end, client_end)),
            "no RST to the client app {client_end}: {:?}",
            n.client.resets_to_app
        );
        assert!(
            n.server.resets_to_app.contains(&(client_end, server_end)),
            "no RST to the server app {server_end}: {:?}",
            n.server.resets_to_app
        );
        // … and the apps' connections are over: nothing can be sent on them any more.
        assert!(n.client.closed(fc).is_some(), "client app {client_end}: {:?}", n.client.events);
        assert!(n.server.closed(fs).is_some(), "server app {server_end}: {:?}", n.server.events);
        assert_eq!(n.client.app.send(fc, b"anyone?"), 0);
        assert_eq!(n.server.app.send(fs, b"anyone?"), 0);
    }
}

/// The apps' kernels (roamtun_stack) must report the reset of an established connection as a reset.
#[test]
fn removing_a_session_is_seen_by_the_apps_as_a_reset() {
    let mut n = Net::new();
    let flows = three_flows(&mut n);
    remove_both_sessions(&mut n);
    for (fc, fs, client_end, server_end) in flows {
        assert_eq!(n.client.closed(fc), Some(true), "client app {client_end}: {:?}", n.client.events);
        assert_eq!(n.server.closed(fs), Some(true), "server app {server_end}: {:?}", n.server.events);
    }
}

/// An app that resets its connection resets the far app's connection, and both engines forget the
/// stream.
#[test]
fn an_app_reset_resets_the_far_app() {
    let mut n = Net::new();
    let (fc, fs) = n.client_connects(40010);
    let bytes = pattern(20_000, 10);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &bytes) == bytes);

    // The client app aborts its (idle, fully acknowledged) connection: its kernel sends RST.
    n.client.app.abort(fc, n.now.into()).unwrap();
    n.step(Duration::from_millis(10));
    assert!(
        n.client.sent_frames.contains(&Seen::Reset(1, ResetCode::Reset)),
        "the client engine did not relay the reset; it sent {:?}",
        n.client.sent_frames
    );
    assert!(!n.client.sent_frames.contains(&Seen::Fin(1, 20_000)), "the reset was relayed as FIN");
    assert!(!n.server.app.app_finished_sending(fs), "the server app saw EOF instead of a reset");
    assert!(n.server.resets_to_app.contains(&(addr("100.64.0.2:40010"), addr("100.64.0.1:80"))));
    assert_eq!(n.client.status().tcp_flows, 0, "the client engine kept the stream");
    assert_eq!(n.server.status().tcp_flows, 0, "the server engine kept the stream");
}

/// CLOSE from the peer is the one frame that ends a session.
#[test]
fn close_from_the_peer_ends_the_session() {
    let mut n = Net::new();
    let r = n.server.engine.handle_session_bytes(SS, &encode(&[Frame::Close { code: 3, reason: "bye" }]), n.now);
    assert!(matches!(r, Err(SessionError::PeerClosed { code: 3, ref reason }) if reason == "bye"), "{r:?}");
}

/// A stream id the peer uses twice is a violation answered with RESET; RESET ends the stream on both
/// sides, so the engine that sent it must not keep its own stream of that id either.
#[test]
fn a_duplicate_open_does_not_leave_half_a_stream() {
    let mut n = Net::new();
    let (_fc, fs) = n.client_connects(40020);
    // The client (misbehaving) opens stream 1 again.
    let open = Frame::Open { stream_id: 1, src: addr("100.64.0.2:40021"), dst: addr("100.64.0.1:80") };
    n.server.engine.handle_session_bytes(SS, &encode(&[open]), n.now).unwrap();
    n.step(Duration::from_millis(10));
    assert_eq!(n.server.counters().streams_violated, 1);
    assert_eq!(n.server.sent_frames.last(), Some(&Seen::Reset(1, ResetCode::Internal)));
    assert_eq!(n.client.status().tcp_flows, 0, "the client applied the RESET to its stream 1");
    assert_eq!(n.server.status().tcp_flows, 0, "the server sent RESET for stream 1 but kept it");
    assert!(n.server.resets_to_app.contains(&(addr("100.64.0.2:40020"), addr("100.64.0.1:80"))));
    // However it ends, the server app closing must not leave the stream behind.
    n.server.app.close(fs);
    for _ in 0..20 {
        n.step(Duration::from_secs(1));
    }
    assert_eq!(n.server.status().tcp_flows, 0);
}

/// UDP is dropped, not queued without bound, when the link does not take it.
#[test]
fn udp_is_dropped_and_counted_when_the_session_queue_is_full() {
    let mut config = engine_config(Role::Client, 11);
    config.session_out_budget = 8 * 1024;
    let mut n = Net::with(config, engine_config(Role::Server, 22), app_config(33), app_config(44));
    let packet = udp((CLIENT_VIP, 5353), (SERVER_IP, 53), &[7; 1000]);
    // The link is stalled: nothing is taken from the engine while the app sends 20 datagrams.
    for _ in 0..20 {
        n.client.engine.handle_tun_packet(packet.clone(), n.now);
    }
    let st = n.client.status();
    assert!(st.queued_bytes <= 8 * 1024 + packet.len() + 4, "queued {} bytes", st.queued_bytes);
    assert!(st.counters.datagrams_dropped > 0);
    assert_eq!(st.counters.datagrams_sent + st.counters.datagrams_dropped, 20);
    let sent = st.counters.datagrams_sent;
    n.pump();
    assert_eq!(n.server.datagrams.len() as u64, sent, "every datagram counted as sent arrived");
    assert!(n.server.datagrams.iter().all(|d| *d == packet));
    assert_eq!(n.server.counters().datagrams_received, sent);
}

/// A `stream_window` below the initial credit (16 KiB; the configuration refuses it, the engine raises
/// it) still carries a burst: a sender must not start with more credit than the receiver honours.
#[test]
fn the_smallest_configurable_stream_window_carries_a_burst() {
    let small = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stream_window = 16 * 1024;
        c
    };
    let mut n = Net::with(small(Role::Client, 11), small(Role::Server, 22), app_config(33), app_config(44));
    let (fc, fs) = n.client_connects(40030);
    let burst = pattern(200_000, 11);
    let mut sent = 0;
    let mut got = Vec::new();
    n.drive("burst", |n| {
        sent += n.client.app.send(fc, &burst[sent..]);
        n.server.read(fs, &mut got);
        got.len() == burst.len() || n.client.closed(fc).is_some() || n.server.closed(fs).is_some()
    });
    assert_eq!(
        n.server.counters().streams_violated,
        0,
        "the server engine reset the stream; it sent {:?} after {} bytes",
        n.server.sent_frames,
        got.len()
    );
    assert_eq!((n.client.closed(fc), n.server.closed(fs)), (None, None));
    assert!(got == burst);
}

/// One slow reader never blocks the others: while a server app reads nothing on one connection (its
/// stream's credit runs out and its bytes wait in bounded buffers), another connection over the same
/// session carries 2 MiB at full speed.
#[test]
fn a_stalled_stream_does_not_block_the_others() {
    let mut n = Net::new();
    let (stuck_c, stuck_s) = n.client_connects(40030);
    let (busy_c, busy_s) = n.client_connects(40031);
    let stuck_data = pattern(4 * 1024 * 1024, 30);
    let mut stuck_written = 0;
    // The stuck connection's app writes until it is pushed back.
    n.drive("the unread connection fills up", |n| {
        let w = n.client.app.send(stuck_c, &stuck_data[stuck_written..]);
        stuck_written += w;
        w == 0 && n.client.app.send_capacity(stuck_c) == 0
    });
    assert!(stuck_written < stuck_data.len(), "nothing pushed back on the unread connection");

    // Meanwhile the other connection moves 2 MiB, intact, with the first one still unread.
    let busy_data = pattern(2 * 1024 * 1024, 31);
    let got = n.transfer((Which::Client, busy_c), (Which::Server, busy_s), &busy_data);
    assert!(got == busy_data, "the second connection's bytes differ");

    // And the stalled one resumes when its reader does.
    let mut got = Vec::new();
    n.drive("the stalled connection drains", |n| {
        stuck_written += n.client.app.send(stuck_c, &stuck_data[stuck_written..]);
        n.server.read(stuck_s, &mut got);
        got.len() == stuck_data.len()
    });
    assert!(got == stuck_data, "the stalled connection's bytes differ");
}

impl Net {
    /// The relay path is lost with everything in flight on it; both engines continue on a new one from
    /// the offsets the other side reports.
    fn cut_and_resume(&mut self) {
        self.c2s.clear();
        self.s2c.clear();
        // Chunks the engines had queued for the dead path are regenerated by resume.
        let from_client = self.client.engine.received_offsets(CS);
        let from_server = self.server.engine.received_offsets(SS);
        self.client.engine.resume_session(CS, &from_server, self.now);
        self.server.engine.resume_session(SS, &from_client, self.now);
    }
}

/// A lost path loses no byte: at random moments everything in flight between the engines (whole and
/// partial frames, DATA, CREDIT, FIN, OPEN, OPEN_OK) is thrown away, both engines resume from the
/// offsets the other side reports, and every byte of every connection still arrives exactly once, in
/// order, both ways.
#[test]
fn cutting_the_path_at_random_moments_loses_and_duplicates_nothing() {
    for seed in 1..=12u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut n = Net::new();
        let (c1, s1) = n.client_connects(41000);
        let (c2, s2) = n.client_connects(41001);
        n.link_rate = Some(8 * 1024 + (next() % (56 * 1024)) as usize);
        let up1 = pattern(512 * 1024, seed as u32);
        let down1 = pattern(512 * 1024, seed as u32 + 100);
        let up2 = pattern(300 * 1024, seed as u32 + 200);
        let down2 = pattern(300 * 1024, seed as u32 + 300);
        let (mut su1, mut sd1, mut su2, mut sd2) = (0, 0, 0, 0);
        let (mut gu1, mut gd1, mut gu2, mut gd2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut cuts = 0;
        // At least one cut, early enough to land mid-transfer; more at random.
        let first_cut = 2 + next() % 8;
        for round in 0.. {
            assert!(round < 200_000, "seed {seed}: transfers did not finish");
            su1 += n.client.app.send(c1, &up1[su1..]);
            sd1 += n.server.app.send(s1, &down1[sd1..]);
            su2 += n.client.app.send(c2, &up2[su2..]);
            sd2 += n.server.app.send(s2, &down2[sd2..]);
            n.server.read(s1, &mut gu1);
            n.client.read(c1, &mut gd1);
            n.server.read(s2, &mut gu2);
            n.client.read(c2, &mut gd2);
            // Each app closes its sending side once it wrote everything: FINs cross cut paths too.
            for (side, flow, done) in [
                (Which::Client, c1, su1 == up1.len()),
                (Which::Server, s1, sd1 == down1.len()),
                (Which::Client, c2, su2 == up2.len()),
                (Which::Server, s2, sd2 == down2.len()),
            ] {
                if done {
                    n.side(side).app.close(flow);
                }
            }
            let all_closed = [(&n.client, c1), (&n.server, s1), (&n.client, c2), (&n.server, s2)]
                .iter()
                .all(|(side, flow)| side.closed(*flow).is_some());
            if all_closed {
                break;
            }
            n.round();
            n.now += Duration::from_millis(1);
            if cuts < 6 && (round == first_cut || next() % 40 == 0) {
                cuts += 1;
                n.cut_and_resume();
            }
        }
        assert!(
            gu1 == up1 && gd1 == down1 && gu2 == up2 && gd2 == down2,
            "seed {seed}: bytes differ: {} {} {} {} of {} {} {} {}; closed {:?} {:?} {:?} {:?}",
            gu1.len(),
            gd1.len(),
            gu2.len(),
            gd2.len(),
            up1.len(),
            down1.len(),
            up2.len(),
            down2.len(),
            n.server.closed(s1),
            n.client.closed(c1),
            n.server.closed(s2),
            n.client.closed(c2)
        );
        for (side, flow) in [(&n.client, c1), (&n.server, s1), (&n.client, c2), (&n.server, s2)] {
            assert_eq!(side.closed(flow), Some(false), "seed {seed}: a connection did not close gracefully");
        }
        n.pump();
        assert_eq!(n.client.status().tcp_flows + n.server.status().tcp_flows, 0, "seed {seed}: streams left behind");
        assert!(cuts > 0, "seed {seed}: the path was never cut");
        for side in [&n.client, &n.server] {
            let c = side.counters();
            assert_eq!(c.streams_violated, 0, "seed {seed}: a resend broke the stream rules");
        }
        let resent = n.client.counters().bytes_resent + n.server.counters().bytes_resent;
        assert!(resent > 0, "seed {seed}: {cuts} cuts and nothing was resent");
    }
}

/// An OPEN lost with the path is sent again, and the connection comes up on the new path.
#[test]
fn an_open_lost_with_the_path_is_sent_again() {
    let mut n = Net::new();
    n.link_rate = Some(1); // Nothing crosses before the cut.
    let src = SocketAddr::new(vip(), 41100);
    let fc = n.client.app.connect(src, addr("100.64.0.1:80")).unwrap();
    for _ in 0..5 {
        n.round();
    }
    n.cut_and_resume();
    n.link_rate = None;
    n.pump();
    let (fs, s, _) = *n.server.new_flows.last().expect("the SYN reached the server side after the resume");
    assert_eq!(s, src);
    n.server.app.accept(fs).unwrap();
    n.pump();
    assert!(n.client.connected(fc), "client sent {:?}, server sent {:?}", n.client.sent_frames, n.server.sent_frames);
    let data = pattern(100_000, 7);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &data) == data);
}

/// A keystroke on one connection does not wait behind the bytes another connection's bulk transfer
/// has queued in the engine (relay::outqueue's urgent lane), only behind what is already on the
/// link; and both byte streams arrive whole and in order.
#[test]
fn a_keystroke_passes_a_bulk_transfer_queued_in_the_engine() {
    // A window large enough that the engine's queue, not the credit, is what grows.
    let wide = |role, seed| {
        let mut c = engine_config(role, seed);
        c.stream_window = 4 * 1024 * 1024;
        c
    };
    let mut n = Net::with(wide(Role::Client, 11), wide(Role::Server, 22), app_config(33), app_config(44));
    let (bulk_c, bulk_s) = n.client_connects(40010);
    let (keys_c, keys_s) = n.client_connects(40011);
    n.link_rate = Some(16 * 1024);
    let data = pattern(8 * 1024 * 1024, 9);
    let (mut written, mut got) = (0, Vec::new());
    // The bulk app writes until a queue has formed in the client engine behind the slow link.
    for round in 0.. {
        assert!(round < 10_000, "no queue formed in the engine");
        written += n.client.app.send(bulk_c, &data[written..]);
        n.round();
        n.server.read(bulk_s, &mut got);
        n.now += Duration::from_millis(1);
        if n.client.status().queued_bytes >= 512 * 1024 {
            break;
        }
    }
    let queued = n.client.status().queued_bytes;
    let on_link = n.c2s.len();
    let bulk_before = got.len();
    assert_eq!(n.client.app.send(keys_c, b"ls\n"), 3);
    let mut typed = Vec::new();
    for round in 0.. {
        assert!(round < 10_000, "the keystroke never arrived");
        written += n.client.app.send(bulk_c, &data[written..]);
        n.round();
        n.server.read(bulk_s, &mut got);
        n.server.read(keys_s, &mut typed);
        n.now += Duration::from_millis(1);
        if !typed.is_empty() {
            break;
        }
    }
    assert_eq!(typed, b"ls\n");
    // Behind what was on the link, plus a few rounds of it (16 KiB each) while the keystroke crosses
    // the engines' stacks: not behind the engine's queue (without the urgent lane, 1 MiB here).
    let waited_for = got.len() - bulk_before;
    assert!(
        waited_for <= on_link + 128 * 1024,
        "the keystroke arrived after {waited_for} more bulk bytes; the link held {on_link} when it was \
         typed, the engine another {queued}"
    );
    n.drive("the bulk transfer completes", |n| {
        written += n.client.app.send(bulk_c, &data[written..]);
        n.server.read(bulk_s, &mut got);
        got.len() == data.len()
    });
    assert!(got == data, "the bulk stream's bytes differ");
    assert_eq!(n.client.counters().streams_violated + n.server.counters().streams_violated, 0);
}

// ---- per-session bounds and the destination policy -------------------------------------------------

/// A second client's session on the server engine, with its own virtual IP.
const SB: SessionId = SessionId(43);
const OTHER_VIP: [u8; 4] = [100, 64, 0, 3];

/// The destinations of the TCP SYNs an engine wrote into its TUN (connections it originated).
fn syns_to(engine: &mut Engine) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    while let Some(p) = engine.pop_tun_packet() {
        let Ok(ip) = IpSlice::from_slice(&p) else { continue };
        let dst: IpAddr = match &ip {
            IpSlice::Ipv4(v4) => v4.header().destination_addr().into(),
            IpSlice::Ipv6(v6) => v6.header().destination_addr().into(),
        };
        if ip.payload().ip_number != IpNumber::TCP {
            continue;
        }
        if let Ok(tcp) = TcpHeaderSlice::from_slice(ip.payload().payload) {
            if tcp.syn() && !tcp.ack() {
                out.push(SocketAddr::new(dst, tcp.destination_port()));
            }
        }
    }
    out
}

/// The datagrams an engine wrote into its TUN.
fn datagrams_out(engine: &mut Engine) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| engine.pop_tun_packet()).filter(|p| tcp_reset(p).is_none()).collect()
}

/// A server engine with two client sessions, SS (100.64.0.2) and SB (100.64.0.3).
fn server_with_two_clients(config: EngineConfig, now: Instant) -> Engine {
    let mut e = Engine::new(config, now);
    e.add_session(SS, vec![vip()]).unwrap();
    e.add_session(SB, vec![IpAddr::from(OTHER_VIP)]).unwrap();
    e
}

fn status_of(engine: &Engine, sid: SessionId) -> SessionStatus {
    engine.session_status().into_iter().find(|s| s.id == sid).unwrap()
}

fn open(stream_id: u32, src: &str, dst: &str) -> Vec<u8> {
    encode(&[Frame::Open { stream_id, src: addr(src), dst: addr(dst) }])
}

#[test]
fn a_session_at_its_stream_limit_refuses_more_and_other_sessions_are_unaffected() {
    let now = Instant::from_millis(1_000);
    let mut config = engine_config(Role::Server, 22);
    config.max_streams_per_session = 3;
    let mut e = server_with_two_clients(config, now);
    // The greedy client opens five connections; three are originated, the rest refused with a reason.
    for (i, id) in [1u32, 3, 5, 7, 9].into_iter().enumerate() {
        e.handle_session_bytes(SS, &open(id, &format!("100.64.0.2:{}", 40000 + i), "100.64.0.1:80"), now).unwrap();
    }
    e.poll(now);
    assert_eq!(syns_to(&mut e).len(), 3, "connections originated for the greedy client");
    assert_eq!(
        drain_frames(&mut e, SS),
        vec![Seen::Reset(7, ResetCode::LimitReached), Seen::Reset(9, ResetCode::LimitReached)]
    );
    let greedy = status_of(&e, SS);
    assert_eq!((greedy.tcp_flows, greedy.counters.streams_refused_limit), (3, 2));
    // The other client still gets its own three.
    for (i, id) in [1u32, 3, 5].into_iter().enumerate() {
        e.handle_session_bytes(SB, &open(id, &format!("100.64.0.3:{}", 40000 + i), "100.64.0.1:80"), now).unwrap();
    }
    e.poll(now);
    assert_eq!(syns_to(&mut e).len(), 3, "connections originated for the other client");
    assert!(drain_frames(&mut e, SB).is_empty(), "the other client got a refusal");
    let other = status_of(&e, SB);
    assert_eq!((other.tcp_flows, other.counters.streams_refused_limit), (3, 0));
}

#[test]
fn an_app_beyond_the_stream_limit_is_refused_locally() {
    let limited = |role, seed| {
        let mut c = engine_config(role, seed);
        c.max_streams_per_session = 2;
        c
    };
    let mut n = Net::with(limited(Role::Client, 11), limited(Role::Server, 22), app_config(33), app_config(44));
    let (fc1, fs1) = n.client_connects(42000);
    let _second = n.client_connects(42001);
    let third = n.client.app.connect(addr("100.64.0.2:42002"), addr("100.64.0.1:80")).unwrap();
    n.pump();
    assert_eq!(n.client.closed(third), Some(true), "the third connection was not refused");
    assert_eq!(n.server.new_flows.len(), 2, "the refused connection reached the server");
    assert_eq!(n.client.counters().streams_refused_limit, 1);
    // The two within the limit still carry data.
    let bytes = pattern(50_000, 9);
    assert!(n.transfer((Which::Client, fc1), (Which::Server, fs1), &bytes) == bytes);
}

#[test]
fn a_session_at_its_udp_flow_limit_drops_new_flows_until_old_ones_expire() {
    let now = Instant::from_millis(1_000);
    let mut config = engine_config(Role::Server, 22);
    config.max_udp_flows_per_session = 4;
    let timeout = config.udp_idle_timeout;
    let mut e = server_with_two_clients(config, now);
    let from = |port| encode(&[Frame::Datagram { packet: &udp((CLIENT_VIP, port), (SERVER_IP, 53), b"q") }]);
    for port in 5000..5006 {
        e.handle_session_bytes(SS, &from(port), now).unwrap();
    }
    assert_eq!(datagrams_out(&mut e).len(), 4, "datagrams written for the greedy client");
    let greedy = status_of(&e, SS);
    assert_eq!((greedy.udp_flows, greedy.counters.datagrams_refused_limit), (4, 2));
    // A known flow goes on; a server app's datagram that would start a fifth flow is dropped too.
    e.handle_session_bytes(SS, &from(5000), now).unwrap();
    assert_eq!(datagrams_out(&mut e).len(), 1, "an existing flow was cut");
    e.handle_tun_packet(udp((SERVER_IP, 53), (CLIENT_VIP, 6000), b"unasked"), now);
    assert!(drain_frames(&mut e, SS).is_empty(), "a fifth flow went out");
    assert_eq!(status_of(&e, SS).counters.datagrams_refused_limit, 3);
    // The other client has its own table.
    let b = encode(&[Frame::Datagram { packet: &udp((OTHER_VIP, 5000), (SERVER_IP, 53), b"q") }]);
    e.handle_session_bytes(SB, &b, now).unwrap();
    assert_eq!(datagrams_out(&mut e).len(), 1, "the other client's datagram was dropped");
    // Idle flows expire and make room again.
    let later = now + timeout + Duration::from_secs(1);
    e.poll(later);
    assert_eq!(status_of(&e, SS).udp_flows, 0);
    e.handle_session_bytes(SS, &from(7000), later).unwrap();
    assert_eq!(datagrams_out(&mut e).len(), 1, "no room after the old flows expired");
    assert_eq!(status_of(&e, SS).udp_flows, 1);
}

#[test]
fn a_peer_that_sends_without_reading_hits_the_queue_limit_and_one_that_reads_does_not() {
    let now = Instant::from_millis(1_000);
    let config = engine_config(Role::Server, 22);
    let limit = config.queue_limit();
    // OPENs with the server's parity: each is answered by a RESET, which the peer never reads.
    let bad_opens = |from: u32, count: u32| {
        let frames: Vec<Frame> = (from..from + count)
            .map(|i| Frame::Open { stream_id: 2 * i, src: addr("100.64.0.2:1000"), dst: addr("100.64.0.1:80") })
            .collect();
        encode(&frames)
    };
    let mut reader = server_with_two_clients(config.clone(), now);
    let mut deaf = server_with_two_clients(config, now);
    let mut fed = 0;
    let err = loop {
        assert!(fed < 1_000_000, "the queue towards the deaf peer was never bounded");
        match deaf.handle_session_bytes(SS, &bad_opens(fed, 1000), now) {
            Ok(()) => fed += 1000,
            Err(err) => break err,
        }
        // The same frames from a peer that reads its replies.
        reader.handle_session_bytes(SS, &bad_opens(fed, 1000), now).expect("a reading peer is never cut off");
        drain_frames(&mut reader, SS);
    };
    let SessionError::PeerNotReading { queued, limit: l } = err else { panic!("{err}") };
    assert_eq!(l, limit);
    assert!(queued > limit && queued <= limit + 64, "queued {queued}, limit {limit}");
    assert!(status_of(&deaf, SS).queued_bytes <= limit + 64);
    // Nothing of the other session was touched.
    let other = status_of(&deaf, SB);
    assert_eq!((other.queued_bytes, other.counters.streams_violated), (0, 0));
}

/// Destinations a client tries, with what the server policy without exit mode answers.
fn forbidden_by_default() -> Vec<&'static str> {
    vec!["198.18.1.1", "198.18.9.2", "127.0.0.1", "100.64.0.3"]
}

fn isolated(allowed: Vec<IpPrefix>, client_to_client: bool) -> EngineConfig {
    let mut c = engine_config(Role::Server, 22);
    c.destinations = DestinationPolicy {
        server_ips: vec![IpAddr::from(SERVER_IP)],
        client_prefixes: vec![IpPrefix::new("100.64.0.0".parse().unwrap(), 10)],
        exit: false,
        allowed,
        client_to_client,
    };
    c
}

#[test]
fn without_exit_a_client_reaches_only_the_servers_virtual_ips() {
    let now = Instant::from_millis(1_000);
    let mut e = server_with_two_clients(isolated(Vec::new(), false), now);
    for (i, dst) in forbidden_by_default().into_iter().enumerate() {
        let id = 2 * i as u32 + 1;
        e.handle_session_bytes(SS, &open(id, "100.64.0.2:40000", &format!("{dst}:22")), now).unwrap();
        assert_eq!(drain_frames(&mut e, SS), vec![Seen::Reset(id, ResetCode::NotAllowed)], "{dst}");
        let dg = udp((CLIENT_VIP, 5000), (dst.parse::<std::net::Ipv4Addr>().unwrap().octets(), 53), b"q");
        e.handle_session_bytes(SS, &encode(&[Frame::Datagram { packet: &dg }]), now).unwrap();
    }
    e.poll(now);
    assert!(syns_to(&mut e).is_empty(), "a connection to a forbidden destination was originated");
    let c = status_of(&e, SS).counters;
    assert_eq!((c.streams_forbidden, c.datagrams_forbidden), (4, 4));
    assert_eq!((c.datagrams_received, c.tcp_streams_opened, c.streams_violated), (0, 0, 0));
    // The server's own virtual IP works, for TCP and UDP.
    e.handle_session_bytes(SS, &open(21, "100.64.0.2:40001", "100.64.0.1:80"), now).unwrap();
    let dg = udp((CLIENT_VIP, 5000), (SERVER_IP, 53), b"q");
    e.handle_session_bytes(SS, &encode(&[Frame::Datagram { packet: &dg }]), now).unwrap();
    e.poll(now);
    let out: Vec<Vec<u8>> = std::iter::from_fn(|| e.pop_tun_packet()).collect();
    assert!(out.contains(&dg), "the datagram to the server's virtual IP did not reach the TUN");
    assert_eq!(out.len(), 2, "the SYN to 100.64.0.1:80 and the datagram");
}

#[test]
fn allowed_destinations_and_client_to_client_open_what_they_name() {
    let now = Instant::from_millis(1_000);
    let behind = IpPrefix::new("198.18.9.0".parse().unwrap(), 24);
    let mut e = server_with_two_clients(isolated(vec![behind], false), now);
    e.handle_session_bytes(SS, &open(1, "100.64.0.2:40000", "198.18.9.2:80"), now).unwrap();
    e.handle_session_bytes(SS, &open(3, "100.64.0.2:40001", "100.64.0.3:80"), now).unwrap();
    e.handle_session_bytes(SS, &open(5, "100.64.0.2:40002", "198.18.1.1:80"), now).unwrap();
    e.poll(now);
    assert_eq!(syns_to(&mut e), vec![addr("198.18.9.2:80")]);
    assert_eq!(
        drain_frames(&mut e, SS),
        vec![Seen::Reset(3, ResetCode::NotAllowed), Seen::Reset(5, ResetCode::NotAllowed)]
    );
    let mut e = server_with_two_clients(isolated(Vec::new(), true), now);
    e.handle_session_bytes(SS, &open(1, "100.64.0.2:40000", "100.64.0.3:80"), now).unwrap();
    e.poll(now);
    assert_eq!(syns_to(&mut e), vec![addr("100.64.0.3:80")], "client_to_client");
}

#[test]
fn an_app_connecting_to_a_forbidden_destination_is_refused_at_once() {
    let mut n = Net::with(engine_config(Role::Client, 11), isolated(Vec::new(), false), app_config(33), app_config(44));
    let f = n.client.app.connect(addr("100.64.0.2:43000"), addr("198.18.1.1:22")).unwrap();
    n.pump();
    assert_eq!(n.client.closed(f), Some(true), "the app's connection was not refused");
    assert!(n.server.new_flows.is_empty(), "the server side saw the connection");
    assert_eq!(n.server.sent_frames, vec![Seen::Reset(1, ResetCode::NotAllowed)]);
    // The server's virtual IP still works.
    let (fc, fs) = n.client_connects(43001);
    let bytes = pattern(20_000, 10);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &bytes) == bytes);
}

// Found by the engine_peer fuzz target (fuzz/regressions/engine_peer/crash-38bd…): a peer that
// repeats an OPEN after its stream was reset got a new stream under the old id while the old one's
// DATA still waited in the queue, and handing that chunk to the writer panicked the engine (the
// bytes were settled into the new stream's replay buffer). Stream ids are never reused in a session.
#[test]
fn a_stream_id_the_peer_opened_once_is_never_opened_again() {
    let mut n = Net::new();
    let (_fc, fs) = n.client_connects(40004);
    // The server's app sends; the DATA frames wait in the server's queue towards the client.
    let now = n.now;
    assert!(n.server.app.send(fs, &pattern(20_000, 7)) > 0);
    n.server.app.poll(now.into());
    n.server.move_packets(now);
    assert!(n.server.status().queued_bytes > 0, "no DATA queued for the client");
    let before = n.server.counters();

    // The client opens stream 1 again (live: both ends reset it), and then once more.
    let open = Frame::Open { stream_id: 1, src: SocketAddr::new(vip(), 40004), dst: addr("100.64.0.1:80") };
    let bytes = encode(&[open.clone(), open]);
    n.server.engine.handle_session_bytes(SS, &bytes, now).unwrap();
    assert_eq!(n.server.status().tcp_flows, 0, "a second stream 1 was opened");
    assert_eq!(n.server.counters().streams_violated, before.streams_violated + 2);
    let sent = drain_frames(&mut n.server.engine, SS);
    assert!(sent.contains(&Seen::Reset(1, ResetCode::Internal)), "{sent:?}");
    assert!(sent.contains(&Seen::Reset(1, ResetCode::Refused)), "{sent:?}");
}
