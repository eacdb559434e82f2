//! `engine_peer`: the relay engine with one established session, fed arbitrary frames by its peer,
//! with a TCP stack behind its TUN playing the apps.
//!
//! ```text
//!   peer (the fuzzer) ⇄ Engine(role) ⇄ TUN ⇄ apps (a Stack that accepts every connection)
//! ```

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use etherparse::PacketBuilder;
use roamtun_stack::fuzzing::Port;
use roamtun_stack::{FlowId, Ingress, Stack, StackConfig};

use crate::relay::engine::{Engine, EngineConfig, Role, SessionId};
use crate::time::{Duration, Instant};
use crate::wire::{self, Frame, ResetCode};

const SID: SessionId = SessionId(7);
/// The most bytes one `Repeat` sends.
const REPEAT_BYTES: usize = 1 << 20;
/// The bytes of the peer's DATA frames.
static PAYLOAD: [u8; wire::MAX_DATA] = [0x42; wire::MAX_DATA];
/// The session's queue budget: small, so that a peer's input can reach it.
const BUDGET: usize = 16 * 1024;
/// Flows the engine's stack may hold (`max_tcp_flows`).
const MAX_FLOWS: usize = 8;
/// What the queue may hold beyond the engine's own `queue_limit()` (budget, reply allowance, a few
/// control frames per stream): the limit is checked after each of the peer's frames is handled, so
/// the replies to one frame may overshoot it by a frame.
const SLACK: usize = wire::MAX_FRAME;

fn client_v4() -> IpAddr {
    Ipv4Addr::new(100, 64, 0, 2).into()
}
fn client_v6() -> IpAddr {
    "fd00::2".parse::<Ipv6Addr>().expect("literal").into()
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    /// The session's virtual IPs.
    ClientV4,
    ClientV6,
    /// The server's virtual IP, a host address, loopback, another client: never the session's.
    ServerV4,
    Other(u8),
    Any(u32),
}

impl Addr {
    fn ip(self) -> IpAddr {
        match self {
            Addr::ClientV4 => client_v4(),
            Addr::ClientV6 => client_v6(),
            Addr::ServerV4 => Ipv4Addr::new(100, 64, 0, 1).into(),
            Addr::Other(i) => match i % 4 {
                0 => Ipv4Addr::new(198, 18, 0, 9).into(),
                1 => Ipv4Addr::LOCALHOST.into(),
                2 => Ipv4Addr::new(100, 64, 0, 3).into(),
                _ => "fd00::1".parse::<Ipv6Addr>().expect("literal").into(),
            },
            Addr::Any(v) => Ipv4Addr::from(v).into(),
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum StreamSel {
    /// The first few ids of either side: the streams that exist.
    Small(u8),
    Any(u32),
}

impl StreamSel {
    fn id(self) -> u32 {
        match self {
            StreamSel::Small(i) => u32::from(i % 16),
            StreamSel::Any(id) => id,
        }
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OffsetSel {
    Small(u16),
    Any(u64),
}

impl OffsetSel {
    fn get(self) -> u64 {
        match self {
            OffsetSel::Small(o) => u64::from(o),
            OffsetSel::Any(o) => o,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Datagram {
    Udp { src: (Addr, Port), dst: (Addr, Port), payload: Vec<u8> },
    Icmp { src: Addr, dst: Addr, payload: Vec<u8> },
    Raw(Vec<u8>),
}

impl Datagram {
    fn bytes(&self) -> Vec<u8> {
        let ip = |src: IpAddr, dst: IpAddr| match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (s, d) => PacketBuilder::ipv6(v6(s).octets(), v6(d).octets(), 64),
        };
        let mut out = Vec::new();
        match self {
            Datagram::Udp { src, dst, payload } => {
                let b = ip(src.0.ip(), dst.0.ip()).udp(src.1.get(), dst.1.get());
                // Cannot fail for a payload that fits: the builder writes into a vector.
                let _ = b.write(&mut out, payload);
            }
            Datagram::Icmp { src, dst, payload } => match (src.ip(), dst.ip()) {
                (s @ IpAddr::V4(_), d @ IpAddr::V4(_)) => {
                    let _ = ip(s, d).icmpv4_echo_request(1, 1).write(&mut out, payload);
                }
                (s, d) => {
                    let _ = ip(s, d).icmpv6_echo_request(1, 1).write(&mut out, payload);
                }
            },
            Datagram::Raw(bytes) => out.clone_from(bytes),
        }
        out.truncate(wire::MAX_BODY);
        out
    }
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// A frame the peer sends, built to meet the session's streams and addresses.
#[derive(Arbitrary, Debug, Clone)]
enum PeerFrame {
    Open { stream: StreamSel, src: (Addr, Port), dst: (Addr, Port) },
    OpenOk(StreamSel),
    Data { stream: StreamSel, offset: OffsetSel, len: u16 },
    Fin { stream: StreamSel, offset: OffsetSel },
    Reset { stream: StreamSel, code: u16 },
    Credit { stream: StreamSel, received: OffsetSel, max_offset: OffsetSel },
    Datagram(Datagram),
    Ping(u64),
    Pong(u64),
    Report(u32),
    Control(Vec<u8>),
    Hello,
    Welcome,
    Close,
}

impl PeerFrame {
    fn encode(&self, out: &mut Vec<u8>) {
        let payload = &PAYLOAD;
        let packet;
        let frame = match self {
            PeerFrame::Open { stream, src, dst } => Frame::Open {
                stream_id: stream.id(),
                src: SocketAddr::new(src.0.ip(), src.1.get()),
                dst: SocketAddr::new(dst.0.ip(), dst.1.get()),
            },
            PeerFrame::OpenOk(s) => Frame::OpenOk { stream_id: s.id() },
            PeerFrame::Data { stream, offset, len } => {
                let len = usize::from(*len).clamp(1, wire::MAX_DATA);
                Frame::Data { stream_id: stream.id(), offset: offset.get(), data: &payload[..len] }
            }
            PeerFrame::Fin { stream, offset } => Frame::Fin { stream_id: stream.id(), offset: offset.get() },
            PeerFrame::Reset { stream, code } => Frame::Reset { stream_id: stream.id(), code: ResetCode::from(*code) },
            PeerFrame::Credit { stream, received, max_offset } => {
                Frame::Credit { stream_id: stream.id(), received: received.get(), max_offset: max_offset.get() }
            }
            PeerFrame::Datagram(d) => {
                packet = d.bytes();
                if packet.is_empty() {
                    return;
                }
                Frame::Datagram { packet: &packet }
            }
            PeerFrame::Ping(nonce) => Frame::Ping { nonce: *nonce },
            PeerFrame::Pong(nonce) => Frame::Pong { nonce: *nonce },
            PeerFrame::Report(loss) => Frame::Report { loss_ppm: loss % 1_000_001 },
            PeerFrame::Control(body) => {
                if body.is_empty() || body.len() > wire::MAX_BODY {
                    return;
                }
                Frame::Control { body }
            }
            PeerFrame::Hello => {
                Frame::Hello { version: wire::PROTOCOL_VERSION, resume: SID.0, virtual_ips: vec![client_v4()] }
            }
            PeerFrame::Welcome => Frame::Welcome { version: wire::PROTOCOL_VERSION, session_id: SID.0 },
            PeerFrame::Close => Frame::Close { code: 4, reason: "the daemon is stopping" },
        };
        // A frame the wire format cannot carry (DATA past offset 2^64) is one a peer cannot send.
        let _ = frame.encode(out);
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Frames from the peer, handed over in pieces of `split` bytes (0: all at once).
    Frames {
        frames: Vec<PeerFrame>,
        split: u16,
    },
    /// One frame, 16 × `times` times: a peer that floods one cheap request.
    Repeat {
        frame: PeerFrame,
        times: u8,
    },
    /// Any bytes from the peer.
    Raw(Vec<u8>),
    /// The peer reads this many chunks of what the engine queued for it.
    PeerReads(u8),
    /// Milliseconds pass; the engine and the apps run.
    Advance(u16),
    /// An app behind the TUN opens a connection through the tunnel.
    AppConnect {
        src: (Addr, Port),
        dst: (Addr, Port),
    },
    /// An app writes to one of its connections, closes or resets it.
    AppWrite {
        flow: u8,
        len: u16,
    },
    AppClose(u8),
    AppAbort(u8),
    /// The core's calls around a switch: hold the datagrams, let them go, resume on a new path with
    /// the peer's received offsets (which come from the peer's SWITCH_UNEXPECTED or ALL_REDIRECTED).
    Hold,
    Release,
    Resume(Vec<(StreamSel, OffsetSel)>),
}

/// The engine's session fed arbitrary frames by its peer, with the apps behind the TUN accepting
/// every connection.
///
/// Checks: no panic; the bytes queued towards the peer stay within the engine's `queue_limit()`
/// (plus one frame, [`SLACK`]), however the peer floods it and whether
/// or not it reads; every packet written into the TUN belongs to the session: on the server its
/// source is one of the client's virtual IPs (a client cannot speak for anyone else), on the client
/// its destination is; everything the engine sends the peer is whole, well-formed frames.
pub fn engine_peer(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let role = if u.arbitrary::<bool>().unwrap_or(false) { Role::Client } else { Role::Server };
    let mut now = Instant::from_millis(1_000_000);
    let mut config = EngineConfig::new(role);
    config.stream_window = 8 * 1024;
    config.session_out_budget = BUDGET;
    config.session_limits.streams = MAX_FLOWS;
    config.stack = StackConfig {
        mtu: 1500,
        tcp_rx_buffer: 4096,
        tcp_tx_buffer: 4096,
        max_flows: MAX_FLOWS,
        random_seed: 1,
        ..StackConfig::default()
    };
    let limits = config.session_limits;
    let limit = config.queue_limit(&limits) + SLACK;
    let mut engine = Engine::new(config, now);
    engine.add_session(SID, vec![client_v4(), client_v6()], Vec::new(), limits).expect("the only session");
    let apps_config =
        StackConfig { mtu: 1500, tcp_rx_buffer: 4096, tcp_tx_buffer: 4096, random_seed: 2, ..StackConfig::default() };
    let mut apps = Stack::new(apps_config, now.into());
    let mut app_flows: Vec<FlowId> = Vec::new();
    let mut tun = Tun { role, app_sent: BTreeSet::new() };
    let pick = |flows: &[FlowId], i: u8| (!flows.is_empty()).then(|| flows[usize::from(i) % flows.len()]);

    // Exhausted input makes `arbitrary` produce default values forever: stop at its end.
    while !u.is_empty() {
        let Ok(op) = u.arbitrary::<Op>() else { break };
        if trace() {
            eprintln!("{op:?}");
        }
        let mut from_peer = Vec::new();
        let mut split = 0;
        match op {
            Op::Frames { frames, split: s } => {
                for f in &frames {
                    f.encode(&mut from_peer);
                }
                split = usize::from(s);
            }
            Op::Repeat { frame, times } => {
                let mut one = Vec::new();
                frame.encode(&mut one);
                // At most 1 MiB per flood, so that one input stays quick.
                from_peer = one.repeat((16 * usize::from(times)).min(REPEAT_BYTES / one.len().max(1)));
            }
            Op::Raw(bytes) => from_peer = bytes,
            Op::PeerReads(n) => {
                for _ in 0..n {
                    let Some(chunk) = engine.pop_session_output(SID) else { break };
                    check_output(&chunk);
                }
            }
            Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
            Op::AppConnect { src, dst } => {
                if let Ok(flow) =
                    apps.connect(SocketAddr::new(src.0.ip(), src.1.get()), SocketAddr::new(dst.0.ip(), dst.1.get()))
                {
                    app_flows.push(flow);
                }
            }
            Op::AppWrite { flow, len } => {
                if let Some(f) = pick(&app_flows, flow) {
                    apps.send(f, &vec![0x61; usize::from(len)]);
                }
            }
            Op::AppClose(i) => {
                if let Some(f) = pick(&app_flows, i) {
                    apps.close(f);
                }
            }
            Op::AppAbort(i) => {
                if let Some(f) = pick(&app_flows, i) {
                    let _ = apps.abort(f, now.into());
                }
            }
            Op::Hold => engine.hold_datagrams(SID),
            Op::Release => engine.release_datagrams(SID),
            Op::Resume(offsets) => {
                let offsets: Vec<(u32, u64)> = offsets.iter().map(|(s, o)| (s.id(), o.get())).collect();
                engine.resume_session(SID, &offsets, now);
            }
        }
        if !from_peer.is_empty() {
            let pieces = if split == 0 { from_peer.len() } else { split };
            for piece in from_peer.chunks(pieces) {
                if engine.handle_session_bytes(SID, piece, now).is_err() {
                    // The peer closed the session; the core ends it and nothing more arrives for it.
                    engine.remove_session(SID, now);
                    return;
                }
                check_budget(&engine, limit);
            }
        }
        run_tun(&mut engine, &mut apps, &mut app_flows, &mut tun, now);
        check_budget(&engine, limit);
    }
}

/// What the TUN has seen.
struct Tun {
    role: Role,
    /// (source, destination) of every packet the apps wrote: the engine may answer those whatever
    /// their addresses (a reset for a connection no session carries).
    app_sent: BTreeSet<(IpAddr, IpAddr)>,
}

/// The engine and the apps run and exchange packets through the TUN until nothing moves (bounded).
fn run_tun(engine: &mut Engine, apps: &mut Stack, app_flows: &mut Vec<FlowId>, tun: &mut Tun, now: Instant) {
    for _ in 0..8 {
        let mut moved = false;
        apps.poll(now.into());
        while let Some(packet) = apps.pop_transmit() {
            moved = true;
            if let Some(addrs) = addresses(&packet) {
                tun.app_sent.insert(addrs);
            }
            engine.handle_tun_packet(packet, now);
        }
        engine.poll(now);
        while let Some(packet) = engine.pop_tun_packet() {
            moved = true;
            check_tun_packet(&packet, tun);
            if let Ingress::NewFlow { flow, .. } = apps.handle_packet(packet, now.into()) {
                let _ = apps.accept(flow);
                app_flows.push(flow);
            }
        }
        while apps.pop_event().is_some() {}
        // What the apps were sent, they read.
        for &flow in app_flows.iter() {
            apps.recv(flow, usize::MAX, |_| {});
        }
        if !moved {
            break;
        }
    }
}

fn check_budget(engine: &Engine, limit: usize) {
    for s in engine.session_status() {
        assert!(s.queued_bytes <= limit, "{} bytes queued towards the peer, limit {limit}", s.queued_bytes);
    }
}

/// The source and destination of an IP packet.
fn addresses(packet: &[u8]) -> Option<(IpAddr, IpAddr)> {
    match packet.first().map(|b| b >> 4) {
        Some(4) if packet.len() >= 20 => {
            Some((<[u8; 4]>::try_from(&packet[12..16]).ok()?.into(), <[u8; 4]>::try_from(&packet[16..20]).ok()?.into()))
        }
        Some(6) if packet.len() >= 40 => Some((
            <[u8; 16]>::try_from(&packet[8..24]).ok()?.into(),
            <[u8; 16]>::try_from(&packet[24..40]).ok()?.into(),
        )),
        _ => None,
    }
}

/// A packet the engine writes into the TUN belongs to the session: the server's TUN gets packets
/// from the client's virtual IPs, the client's TUN packets to them. The one exception is an answer
/// to the apps' own packets (a reset for a SYN no session can carry).
fn check_tun_packet(packet: &[u8], tun: &Tun) {
    let Some((src, dst)) = addresses(packet) else {
        panic!("the engine wrote a packet that is not IP into the TUN: {packet:02x?}");
    };
    if tun.app_sent.contains(&(dst, src)) {
        return;
    }
    let ours = |ip: IpAddr| ip == client_v4() || ip == client_v6();
    match tun.role {
        Role::Server => assert!(ours(src), "the server's TUN got a packet from {src} (to {dst}), not from the client"),
        Role::Client => assert!(ours(dst), "the client's TUN got a packet to {dst} (from {src}), not to the client"),
    }
}

/// A chunk the engine hands to the path's writer is whole, well-formed frames.
fn check_output(chunk: &[u8]) {
    let mut rest = chunk;
    while !rest.is_empty() {
        match Frame::decode(rest) {
            Ok(Some((_, used))) => rest = &rest[used..],
            other => panic!("the engine sent the peer bytes that are not whole frames: {other:?}"),
        }
    }
}

/// `FUZZ_TRACE=1`: print each operation as it is applied, to read a crash's story.
fn trace() -> bool {
    std::env::var_os("FUZZ_TRACE").is_some()
}
