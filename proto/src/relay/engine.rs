//! The relay engine: moves app traffic between the TUN side (through [`Stack`]) and relay sessions.
//!
//! One engine serves both daemons. The client (CNAPT) has one session, with the server; the server
//! (SNAPT) has one per connected client and picks it by the client's virtual IP. A TCP connection on
//! either side becomes a relay stream: its opener holds the app's SYN until the far side has connected
//! (so a refused connection is refused, not accepted then reset), and each direction is flow
//! controlled by credit ([`super::stream`]). UDP and ICMP travel as whole IP packets (DATAGRAM), checked
//! against the session's virtual IPs in both directions so a client can never speak for another.
//!
//! Sans-IO: inputs are [`Engine::handle_tun_packet`], [`Engine::handle_session_bytes`] and the
//! session lifecycle calls; outputs are [`Engine::pop_tun_packet`] and [`Engine::pop_session_output`];
//! [`Engine::poll`] runs timers and [`Engine::poll_at`] says when to call it again. The caller owns
//! the TUN, the sockets and the clock.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use roamtun_stack::{FlowEvent, FlowId, Ingress, Stack, StackConfig};

use crate::time::{Duration, Instant};

use super::outqueue::{BulkMark, Keep, OutQueue};
use super::packet::{datagram_info, DatagramInfo, DatagramProto};
use super::policy::{DestinationPolicy, Forbidden};
use super::stream::{RecvHalf, ReplayBuffer, SendHalf, StreamError, INITIAL_CREDIT};
use crate::wire::{self, Frame, ResetCode};

/// Names one relay session (one peer) inside an engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub u64);

/// Which daemon runs the engine; it decides who owns which addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// CNAPT: the apps are local and own the session's virtual IPs.
    Client,
    /// SNAPT: the session's virtual IPs belong to the remote client.
    Server,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub role: Role,
    /// Bytes one stream may have in flight towards us in one direction: the receiver's budget and the
    /// credit a new stream starts with.
    pub stream_window: u64,
    /// Bytes queued towards one peer before the engine stops reading from the apps (backpressure).
    pub session_out_budget: usize,
    /// A UDP flow with no packet for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// Streams (TCP connections, both directions) one session may have at once, so that one peer
    /// cannot take the flows of all (the stack's `max_flows` bounds every session together). Beyond
    /// it an app's SYN gets RST and a peer's OPEN gets RESET `LimitReached`.
    pub max_streams_per_session: usize,
    /// UDP flows (pairs of a virtual-side and a remote endpoint, chosen by the apps or the peer) one
    /// session may have at once; a datagram that would start one more is dropped.
    pub max_udp_flows_per_session: usize,
    /// Server: where a client's OPENs and DATAGRAMs may go ([`super::policy`]).
    pub destinations: DestinationPolicy,
    /// Server: a session that has this many paths refuses another one (`RelayCore`, CLOSE
    /// `PATH_LIMIT`; the client counts it as a failed dial and tries again later). A client keeps one
    /// per uplink (the current one and warm standbys) and opens one more to switch.
    pub max_paths_per_session: usize,
    pub stack: StackConfig,
}

impl EngineConfig {
    pub fn new(role: Role) -> Self {
        EngineConfig {
            role,
            stream_window: 512 * 1024,
            session_out_budget: 2 * 1024 * 1024,
            udp_idle_timeout: Duration::from_secs(60),
            max_streams_per_session: 1024,
            max_udp_flows_per_session: 1024,
            destinations: DestinationPolicy::allow_all(),
            max_paths_per_session: 8,
            stack: StackConfig::default(),
        }
    }

    /// The most bytes a session's queue towards its peer may hold before the peer counts as not
    /// reading ([`SessionError::PeerNotReading`]): the out budget (app bytes and datagrams stop there,
    /// plus the one datagram that may pass it), then room for the frames nobody stops: replies to the
    /// peer's own frames (RESETs of refused OPENs, CREDITs for its data) and the control frames a
    /// resume queues for every stream.
    pub fn queue_limit(&self) -> usize {
        self.session_out_budget + REPLY_ALLOWANCE + PER_STREAM_ALLOWANCE * self.max_streams_per_session
    }
}

/// Of [`EngineConfig::queue_limit`]: room for one datagram past the budget and for a few thousand
/// replies. A peer that reads its relay connection never gets near it: its replies leave as fast
/// as its frames come.
const REPLY_ALLOWANCE: usize = 256 * 1024;
/// Of [`EngineConfig::queue_limit`]: the control frames one stream may have queued at once (OPEN,
/// OPEN_OK, CREDIT, FIN, RESET are each under 50 bytes).
const PER_STREAM_ALLOWANCE: usize = 256;

/// Why a session must end; the caller closes its transport and calls [`Engine::remove_session`].
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("peer closed the session (code {code}): {reason}")]
    PeerClosed { code: u16, reason: String },
    #[error("no session {0:?}")]
    NoSuchSession(SessionId),
    #[error("virtual IP {0} is already in use by another session")]
    VirtualIpTaken(IpAddr),
    /// The peer sends but does not read: what we queued for it, mostly replies to its own frames,
    /// passed [`EngineConfig::queue_limit`]. The caller drops the path (a resume regenerates the
    /// queue from the streams' replay buffers, so no stream byte is lost).
    #[error("the peer does not read: {queued} bytes queued towards it, above the limit of {limit}")]
    PeerNotReading { queued: usize, limit: usize },
}

/// Counters of one session; all only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Stream payload and datagram bytes sent to the peer.
    pub bytes_sent: u64,
    /// Stream payload and datagram bytes received from the peer.
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Datagrams not sent because the queue towards the peer was full (UDP may be lost; streams never).
    pub datagrams_dropped: u64,
    /// Datagrams from the peer whose addresses it does not own; dropped.
    pub datagrams_spoofed: u64,
    /// Frames that could not be parsed; skipped by their length, the session goes on.
    pub frames_malformed: u64,
    /// Streams reset because the peer broke the stream rules (credit, offsets, unknown addresses).
    pub streams_violated: u64,
    pub tcp_streams_opened: u64,
    /// Stream bytes sent again after a path was lost (they were in flight on it).
    pub bytes_resent: u64,
    /// Datagrams kept aside while the session changed paths, sent once it was on the new one.
    pub datagrams_held: u64,
    /// Of those, datagrams dropped because the hold budget was full (counted in `datagrams_dropped` too).
    pub datagrams_dropped_switching: u64,
    /// Streams refused because the session had `max_streams_per_session`: an app's SYN answered with
    /// RST, or the peer's OPEN with RESET `LimitReached`.
    pub streams_refused_limit: u64,
    /// Datagrams dropped because they would have started a UDP flow beyond
    /// `max_udp_flows_per_session` (either direction).
    pub datagrams_refused_limit: u64,
    /// Server: the client's OPENs refused by the destination policy (RESET `NotAllowed`).
    pub streams_forbidden: u64,
    /// Server: the client's DATAGRAMs dropped by the destination policy.
    pub datagrams_forbidden: u64,
}

/// What a session looks like from outside, for `roamtun status`.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    pub id: SessionId,
    pub virtual_ips: Vec<IpAddr>,
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub queued_bytes: usize,
    pub counters: SessionCounters,
}

/// Counters of the TUN side, not tied to a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunCounters {
    /// Packets from the TUN with no session to carry them (no server connected, unknown virtual IP).
    pub packets_unroutable: u64,
    /// Packets from the TUN that are neither TCP, UDP nor ICMP.
    pub packets_unsupported: u64,
    /// SYNs refused because the flow limit was reached.
    pub flows_refused_limit: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// An app's SYN is held; we sent OPEN and wait for OPEN_OK.
    Opening,
    /// The peer sent OPEN; our stack is connecting to the app on this side.
    Connecting,
    Open,
}

struct Stream {
    flow: FlowId,
    /// The app's endpoints as carried in OPEN (source, destination).
    endpoints: (SocketAddr, SocketAddr),
    phase: Phase,
    send: SendHalf,
    recv: RecvHalf,
    /// What was sent and not yet acknowledged, to send again after a path is lost.
    replay: ReplayBuffer,
    /// We asked the stack to FIN the app (the peer finished and the app took every byte).
    app_close_sent: bool,
    /// The stack reported the TCP connection gracefully over.
    app_done: bool,
    /// Where the stream's frames last went into the session's bulk lane (its order across lanes).
    mark: BulkMark,
}

impl Stream {
    /// A new stream: nothing sent or received yet; `window` is its receive budget ([`RecvHalf::new`]).
    fn new(flow: FlowId, endpoints: (SocketAddr, SocketAddr), phase: Phase, window: u64) -> Self {
        Stream {
            flow,
            endpoints,
            phase,
            send: SendHalf::new(INITIAL_CREDIT),
            recv: RecvHalf::new(window),
            replay: ReplayBuffer::new(),
            app_close_sent: false,
            app_done: false,
            mark: 0,
        }
    }
}

struct Session {
    virtual_ips: Vec<IpAddr>,
    /// Warnings about this peer's input are logged at a bounded rate (a peer may send garbage on
    /// purpose); the counters count every one.
    warnings: crate::log_budget::LogBudget,
    /// Bytes of a frame that has not fully arrived.
    rx: Vec<u8>,
    out: OutQueue,
    /// The datagrams' place in the bulk lane: they keep their order too.
    datagram_mark: BulkMark,
    streams: BTreeMap<u32, Stream>,
    next_stream_id: u32,
    /// The highest stream id the peer opened so far (ids only grow), to tell a stream the peer
    /// removed from one whose OPEN never arrived.
    highest_peer_stream: Option<u32>,
    /// Datagrams from the TUN wait here while the session changes paths ([`Engine::hold_datagrams`]):
    /// the queue towards the peer may be thrown away and regenerated by a resume, datagrams cannot.
    held: Option<VecDeque<Vec<u8>>>,
    held_bytes: usize,
    /// Entries of the engine's UDP flow table that belong to this session.
    udp_flows: usize,
    counters: SessionCounters,
}

impl Session {
    fn owns(&self, ip: IpAddr) -> bool {
        self.virtual_ips.contains(&ip)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct UdpKey {
    session: SessionId,
    /// The endpoint on the virtual IP side.
    virtual_end: SocketAddr,
    remote_end: SocketAddr,
}

pub struct Engine {
    config: EngineConfig,
    stack: Stack,
    sessions: BTreeMap<SessionId, Session>,
    flow_streams: HashMap<FlowId, (SessionId, u32)>,
    udp_flows: HashMap<UdpKey, Instant>,
    next_udp_expiry: Option<Instant>,
    tun_out: VecDeque<Vec<u8>>,
    tun_counters: TunCounters,
}

impl Engine {
    pub fn new(config: EngineConfig, now: Instant) -> Self {
        let stack = Stack::new(config.stack.clone(), now.into());
        Engine {
            config,
            stack,
            sessions: BTreeMap::new(),
            flow_streams: HashMap::new(),
            udp_flows: HashMap::new(),
            next_udp_expiry: None,
            tun_out: VecDeque::new(),
            tun_counters: TunCounters::default(),
        }
    }

    pub fn role(&self) -> Role {
        self.config.role
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Starts carrying traffic for a peer that owns (client role: whose apps use) `virtual_ips`.
    pub fn add_session(&mut self, id: SessionId, virtual_ips: Vec<IpAddr>) -> Result<(), SessionError> {
        for ip in &virtual_ips {
            if self.sessions.values().any(|s| s.owns(*ip)) {
                return Err(SessionError::VirtualIpTaken(*ip));
            }
        }
        let first_stream = match self.config.role {
            Role::Client => 1,
            Role::Server => 2,
        };
        self.sessions.insert(
            id,
            Session {
                warnings: crate::log_budget::LogBudget::for_peer_input(),
                virtual_ips,
                rx: Vec::new(),
                out: OutQueue::default(),
                datagram_mark: 0,
                streams: BTreeMap::new(),
                next_stream_id: first_stream,
                highest_peer_stream: None,
                held: None,
                held_bytes: 0,
                udp_flows: 0,
                counters: SessionCounters::default(),
            },
        );
        Ok(())
    }

    /// Ends a session: its apps' TCP connections are reset (a held SYN is refused), its UDP flows
    /// forgotten. Returns its final counters.
    pub fn remove_session(&mut self, id: SessionId, now: Instant) -> Option<SessionCounters> {
        let session = self.sessions.remove(&id)?;
        for stream in session.streams.values() {
            self.flow_streams.remove(&stream.flow);
            // The flow may have finished on its own already; nothing to reset then.
            let _ = self.stack.abort(stream.flow, now.into());
        }
        self.udp_flows.retain(|k, _| k.session != id);
        Some(session.counters)
    }

    /// One IP packet the kernel wrote into the TUN.
    pub fn handle_tun_packet(&mut self, packet: Vec<u8>, now: Instant) {
        if let Some(info) = datagram_info(&packet) {
            self.datagram_from_tun(info, packet, now);
            return;
        }
        match self.stack.handle_packet(packet, now.into()) {
            Ingress::Handled => {}
            Ingress::NewFlow { flow, src, dst } => self.new_app_flow(flow, src, dst, now),
            Ingress::TooManyFlows => self.tun_counters.flows_refused_limit += 1,
            Ingress::NotTcp => self.tun_counters.packets_unsupported += 1,
        }
    }

    /// The session that carries traffic to or from `local_side` (the address on this side of the tunnel).
    fn session_for(&self, app_src: IpAddr, app_dst: IpAddr) -> Option<SessionId> {
        match self.config.role {
            // The client's apps send from their virtual IP to anywhere.
            Role::Client => self.sessions.iter().find(|(_, s)| s.owns(app_src)).map(|(id, _)| *id),
            // Server apps reach a client at its virtual IP.
            Role::Server => self.sessions.iter().find(|(_, s)| s.owns(app_dst)).map(|(id, _)| *id),
        }
    }

    fn new_app_flow(&mut self, flow: FlowId, src: SocketAddr, dst: SocketAddr, now: Instant) {
        let Some(sid) = self.session_for(src.ip(), dst.ip()) else {
            self.tun_counters.packets_unroutable += 1;
            let _ = self.stack.refuse(flow, now.into());
            return;
        };
        let window = self.config.stream_window;
        let limit = self.config.max_streams_per_session;
        let session = self.sessions.get_mut(&sid).expect("session_for returns a live session");
        if session.streams.len() >= limit {
            session.counters.streams_refused_limit += 1;
            tracing::debug!(session = sid.0, %src, %dst, limit, "refusing an app's connection: the session is at its stream limit");
            let _ = self.stack.refuse(flow, now.into());
            return;
        }
        let stream_id = session.next_stream_id;
        let Some(next) = stream_id.checked_add(2) else {
            // 2^31 streams in one session: refuse rather than reuse an id.
            let _ = self.stack.refuse(flow, now.into());
            return;
        };
        session.next_stream_id = next;
        session.streams.insert(stream_id, Stream::new(flow, (src, dst), Phase::Opening, window));
        session.counters.tcp_streams_opened += 1;
        let stream = session.streams.get_mut(&stream_id).expect("inserted above");
        session.out.push_ordered(&mut stream.mark, 0, &Frame::Open { stream_id, src, dst });
        self.flow_streams.insert(flow, (sid, stream_id));
        tracing::debug!(session = sid.0, stream = stream_id, %src, %dst, "app opened a TCP connection");
    }

    fn datagram_from_tun(&mut self, info: DatagramInfo, packet: Vec<u8>, now: Instant) {
        let Some(sid) = self.session_for(info.src, info.dst) else {
            self.tun_counters.packets_unroutable += 1;
            return;
        };
        let budget = self.config.session_out_budget;
        let session = self.sessions.get_mut(&sid).expect("session_for returns a live session");
        let holding = session.held.is_some();
        // The hold budget is the session's out budget: a switch may hold as much as the path queues.
        let full = if holding { session.held_bytes + packet.len() > budget } else { session.out.bytes() >= budget };
        if full || packet.len() > wire::MAX_BODY {
            session.counters.datagrams_dropped += 1;
            session.counters.datagrams_dropped_switching += u64::from(holding);
            return;
        }
        if !self.admit_udp(sid, info, now) {
            return;
        }
        let session = self.sessions.get_mut(&sid).expect("session_for returns a live session");
        if let Some(held) = session.held.as_mut() {
            session.counters.datagrams_held += 1;
            session.held_bytes += packet.len();
            held.push_back(packet);
            return;
        }
        session.counters.datagrams_sent += 1;
        session.counters.bytes_sent += packet.len() as u64;
        session.out.push_ordered(&mut session.datagram_mark, packet.len(), &Frame::Datagram { packet: &packet });
    }

    /// Records the UDP flow of a datagram of session `sid` (or refreshes its idle timer). False when
    /// it would start a flow beyond `max_udp_flows_per_session`: the datagram is to be dropped (it is
    /// counted here). Other datagrams need no flow.
    fn admit_udp(&mut self, sid: SessionId, info: DatagramInfo, now: Instant) -> bool {
        if info.proto != DatagramProto::Udp {
            return true;
        }
        let limit = self.config.max_udp_flows_per_session;
        let Some(session) = self.sessions.get_mut(&sid) else { return false };
        let src = SocketAddr::new(info.src, info.src_port);
        let dst = SocketAddr::new(info.dst, info.dst_port);
        let (virtual_end, remote_end) = if session.owns(info.src) { (src, dst) } else { (dst, src) };
        let key = UdpKey { session: sid, virtual_end, remote_end };
        if let Some(last) = self.udp_flows.get_mut(&key) {
            *last = now;
            return true;
        }
        if session.udp_flows >= limit {
            session.counters.datagrams_refused_limit += 1;
            return false;
        }
        session.udp_flows += 1;
        self.udp_flows.insert(key, now);
        if self.next_udp_expiry.is_none() {
            self.next_udp_expiry = Some(now + self.config.udp_idle_timeout);
        }
        true
    }

    /// Server: whether a client may send to `dst` ([`super::policy`]).
    fn destination_allowed(&self, dst: IpAddr) -> Result<(), Forbidden> {
        self.config.destinations.check(dst, || self.sessions.values().any(|s| s.owns(dst)))
    }

    /// Bytes read from a session's transport. Malformed frames are skipped and counted; an error means
    /// the session must end.
    pub fn handle_session_bytes(&mut self, sid: SessionId, bytes: &[u8], now: Instant) -> Result<(), SessionError> {
        let session = self.sessions.get_mut(&sid).ok_or(SessionError::NoSuchSession(sid))?;
        let mut buf = std::mem::take(&mut session.rx);
        let result = if buf.is_empty() {
            // The common case: decode straight from the caller's buffer, keep only a partial tail.
            let r = self.handle_frames(sid, bytes, now);
            if let Ok(consumed) = r {
                buf.extend_from_slice(&bytes[consumed..]);
            }
            r
        } else {
            buf.extend_from_slice(bytes);
            let r = self.handle_frames(sid, &buf, now);
            if let Ok(consumed) = r {
                buf.drain(..consumed);
            }
            r
        };
        if result.is_err() {
            // The session or its path ends: what is left of this read is not for anyone.
            buf.clear();
        }
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.rx = buf;
        }
        result.map(|_| ())
    }

    /// Handles every complete frame at the front of `data`; returns the bytes consumed.
    ///
    /// Every frame may queue a reply, and a peer that sends without reading would make those pile up:
    /// once the session's queue passes [`EngineConfig::queue_limit`], the input stops with
    /// [`SessionError::PeerNotReading`].
    fn handle_frames(&mut self, sid: SessionId, data: &[u8], now: Instant) -> Result<usize, SessionError> {
        let limit = self.config.queue_limit();
        let mut pos = 0;
        while pos < data.len() {
            match Frame::decode(&data[pos..]) {
                Ok(Some((frame, n))) => {
                    pos += n;
                    self.handle_frame(sid, frame, now)?;
                    let queued = self.sessions.get(&sid).map_or(0, |s| s.out.bytes());
                    if queued > limit {
                        return Err(SessionError::PeerNotReading { queued, limit });
                    }
                }
                Ok(None) => break,
                Err(err) => match wire::frame_len(&data[pos..]) {
                    // The header's length still delimits the frame: skip it, keep the session.
                    Some(n) => {
                        if let Some(left_out) = self.session_mut(sid).warnings.allow(now) {
                            tracing::warn!(session = sid.0, %err, left_out, "skipping a malformed frame");
                        }
                        self.counters_mut(sid).frames_malformed += 1;
                        pos += n;
                    }
                    None => break,
                },
            }
        }
        Ok(pos)
    }

    fn counters_mut(&mut self, sid: SessionId) -> &mut SessionCounters {
        &mut self.sessions.get_mut(&sid).expect("frames are handled for live sessions").counters
    }

    fn handle_frame(&mut self, sid: SessionId, frame: Frame<'_>, now: Instant) -> Result<(), SessionError> {
        match frame {
            Frame::Close { code, reason } => {
                return Err(SessionError::PeerClosed { code, reason: reason.to_string() });
            }
            Frame::Open { stream_id, src, dst } => self.peer_open(sid, stream_id, src, dst, now),
            Frame::OpenOk { stream_id } => self.peer_open_ok(sid, stream_id),
            Frame::Data { stream_id, offset, data } => {
                let Engine { stack, sessions, .. } = self;
                let session = sessions.get_mut(&sid).expect("frames are handled for live sessions");
                session.counters.bytes_received += data.len() as u64;
                let r = session.streams.get_mut(&stream_id).map(|s| {
                    let flow = s.flow;
                    let open = s.phase == Phase::Open;
                    // Straight into the app's socket when nothing waits before these bytes.
                    s.recv
                        .on_data_with(offset, data, |fresh| if open { stack.send(flow, fresh) } else { 0 })
                        .map(|_| ())
                });
                self.after_stream_input(sid, stream_id, r, now);
            }
            Frame::Fin { stream_id, offset } => {
                let r = self.stream_mut(sid, stream_id).map(|s| s.recv.on_fin(offset));
                self.after_stream_input(sid, stream_id, r, now);
            }
            Frame::Credit { stream_id, received, max_offset } => {
                if let Some(s) = self.stream_mut(sid, stream_id) {
                    s.send.on_credit(received, max_offset);
                    s.replay.ack(s.send.acked());
                }
            }
            Frame::Reset { stream_id, code } => self.peer_reset(sid, stream_id, code, now),
            Frame::Datagram { packet } => self.datagram_from_peer(sid, packet, now),
            Frame::Ping { nonce } => self.session_mut(sid).out.push_urgent(&Frame::Pong { nonce }),
            // The path reader takes well-formed ones out; these reached us anyway and mean nothing here.
            Frame::Pong { .. } | Frame::Report { .. } => {}
            Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Control { .. } => {
                // Handshake and transition frames belong to the daemon around the engine (the path
                // reader takes CONTROL out of the byte stream); here they are out of place.
                self.counters_mut(sid).frames_malformed += 1;
            }
        }
        Ok(())
    }

    fn session_mut(&mut self, sid: SessionId) -> &mut Session {
        self.sessions.get_mut(&sid).expect("frames are handled for live sessions")
    }

    fn stream_mut(&mut self, sid: SessionId, stream_id: u32) -> Option<&mut Stream> {
        self.sessions.get_mut(&sid)?.streams.get_mut(&stream_id)
    }

    /// A stream frame was applied (`Some(result)`) or named no stream (`None`, e.g. one we just reset:
    /// frames in flight are expected and ignored).
    fn after_stream_input(&mut self, sid: SessionId, stream_id: u32, r: Option<Result<(), StreamError>>, now: Instant) {
        if let Some(Err(err)) = r {
            if let Some(left_out) = self.session_mut(sid).warnings.allow(now) {
                tracing::warn!(session = sid.0, stream = stream_id, %err, left_out, "peer broke the stream rules; resetting the stream");
            }
            self.counters_mut(sid).streams_violated += 1;
            self.reset_stream(sid, stream_id, ResetCode::Internal, now);
        }
    }

    /// Ends a stream from our side: tells the peer and resets the app's connection.
    fn reset_stream(&mut self, sid: SessionId, stream_id: u32, code: ResetCode, now: Instant) {
        let session = self.session_mut(sid);
        if let Some(mut stream) = session.streams.remove(&stream_id) {
            session.out.push_ordered(&mut stream.mark, 0, &Frame::Reset { stream_id, code });
            self.flow_streams.remove(&stream.flow);
            let _ = self.stack.abort(stream.flow, now.into());
        }
    }

    fn peer_open(&mut self, sid: SessionId, stream_id: u32, src: SocketAddr, dst: SocketAddr, now: Instant) {
        let role = self.config.role;
        let window = self.config.stream_window;
        let session = self.session_mut(sid);
        // The peer opens streams with the other parity; a clash would confuse two connections.
        let peer_parity = match role {
            Role::Client => 0,
            Role::Server => 1,
        };
        let allowed = match role {
            // The server may only reach this client's own virtual IPs.
            Role::Client => session.owns(dst.ip()),
            // A client may only speak from its own virtual IPs.
            Role::Server => session.owns(src.ip()),
        };
        if session.streams.contains_key(&stream_id) {
            // An OPEN for a live stream: the two sides no longer agree on it, so neither may keep it.
            if let Some(left_out) = session.warnings.allow(now) {
                tracing::warn!(
                    session = sid.0,
                    stream = stream_id,
                    left_out,
                    "peer reopened a live stream; resetting it"
                );
            }
            session.counters.streams_violated += 1;
            self.reset_stream(sid, stream_id, ResetCode::Internal, now);
            return;
        }
        // Ids only grow: one at or below the highest the peer opened names a stream that was here and
        // is gone (reset, or finished). Opening it again would mix two streams under one id, the old
        // one's frames still queued with the new one's.
        let reused = session.highest_peer_stream.is_some_and(|highest| stream_id <= highest);
        if stream_id % 2 != peer_parity || !allowed || reused {
            if let Some(left_out) = session.warnings.allow(now) {
                tracing::warn!(session = sid.0, stream = stream_id, %src, %dst, reused, left_out, "refusing a stream the peer may not open");
            }
            session.counters.streams_violated += 1;
            // Nothing of ours went out on this stream: no order to keep.
            session.out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::Refused });
            return;
        }
        if role == Role::Server {
            if let Err(why) = self.destination_allowed(dst.ip()) {
                tracing::debug!(session = sid.0, stream = stream_id, %src, %dst, %why, "refusing a connection");
                let session = self.session_mut(sid);
                session.counters.streams_forbidden += 1;
                session.out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::NotAllowed });
                return;
            }
        }
        let limit = self.config.max_streams_per_session;
        let session = self.session_mut(sid);
        if session.streams.len() >= limit {
            tracing::debug!(
                session = sid.0,
                stream = stream_id,
                limit,
                "refusing a connection: the session is at its stream limit"
            );
            session.counters.streams_refused_limit += 1;
            session.out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::LimitReached });
            return;
        }
        session.highest_peer_stream = session.highest_peer_stream.max(Some(stream_id));
        match self.stack.connect(src, dst) {
            Ok(flow) => {
                let session = self.session_mut(sid);
                session.streams.insert(stream_id, Stream::new(flow, (src, dst), Phase::Connecting, window));
                session.counters.tcp_streams_opened += 1;
                self.flow_streams.insert(flow, (sid, stream_id));
                tracing::debug!(session = sid.0, stream = stream_id, %src, %dst, "peer opened a TCP connection");
            }
            Err(err) => {
                if let Some(left_out) = self.session_mut(sid).warnings.allow(now) {
                    tracing::warn!(session = sid.0, stream = stream_id, %err, left_out, "cannot open the connection the peer asked for");
                }
                self.session_mut(sid).out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::Refused });
            }
        }
    }

    fn peer_open_ok(&mut self, sid: SessionId, stream_id: u32) {
        let Some(stream) = self.stream_mut(sid, stream_id) else { return };
        if stream.phase == Phase::Opening {
            stream.phase = Phase::Open;
            let flow = stream.flow;
            // The flow is alive while its stream is; accept cannot fail for a live flow.
            let _ = self.stack.accept(flow);
        }
    }

    fn peer_reset(&mut self, sid: SessionId, stream_id: u32, code: ResetCode, now: Instant) {
        let Some(stream) = self.session_mut(sid).streams.remove(&stream_id) else { return };
        tracing::debug!(session = sid.0, stream = stream_id, %code, "peer reset the stream");
        self.flow_streams.remove(&stream.flow);
        // A held SYN is refused (the app sees "connection refused"), an open connection is reset.
        let _ = self.stack.abort(stream.flow, now.into());
    }

    fn datagram_from_peer(&mut self, sid: SessionId, packet: &[u8], now: Instant) {
        let role = self.config.role;
        let session = self.session_mut(sid);
        let info = datagram_info(packet);
        let allowed = info.is_some_and(|i| match role {
            Role::Client => session.owns(i.dst),
            Role::Server => session.owns(i.src),
        });
        let Some(info) = info.filter(|_| allowed) else {
            session.counters.datagrams_spoofed += 1;
            return;
        };
        if role == Role::Server {
            if let Err(why) = self.destination_allowed(info.dst) {
                tracing::trace!(session = sid.0, dst = %info.dst, %why, "dropping a datagram");
                self.session_mut(sid).counters.datagrams_forbidden += 1;
                return;
            }
        }
        if !self.admit_udp(sid, info, now) {
            return;
        }
        let session = self.session_mut(sid);
        session.counters.datagrams_received += 1;
        session.counters.bytes_received += packet.len() as u64;
        self.tun_out.push_back(packet.to_vec());
    }

    /// Runs the stack's timers, reports flow changes to the peers and moves stream bytes both ways.
    pub fn poll(&mut self, now: Instant) {
        // A few rounds: moving bytes into the stack lets it send and open windows, which may let
        // more bytes move. Bounded, so one call never runs away.
        for _ in 0..4 {
            self.stack.poll(now.into());
            self.handle_flow_events();
            if !self.pump_streams() {
                break;
            }
        }
        self.stack.poll(now.into());
        self.handle_flow_events();
        self.expire_udp(now);
    }

    fn handle_flow_events(&mut self) {
        while let Some(event) = self.stack.pop_event() {
            match event {
                FlowEvent::Connected(flow) => {
                    let Some(&(sid, stream_id)) = self.flow_streams.get(&flow) else { continue };
                    let session = self.session_mut(sid);
                    if let Some(stream) = session.streams.get_mut(&stream_id) {
                        stream.phase = Phase::Open;
                        session.out.push_ordered(&mut stream.mark, 0, &Frame::OpenOk { stream_id });
                    }
                }
                FlowEvent::Closed { flow, reset: true } => {
                    let Some((sid, stream_id)) = self.flow_streams.remove(&flow) else {
                        self.stack.release(flow);
                        continue;
                    };
                    let session = self.session_mut(sid);
                    if let Some(mut stream) = session.streams.remove(&stream_id) {
                        let code = match stream.phase {
                            Phase::Connecting => ResetCode::Refused,
                            _ => ResetCode::Reset,
                        };
                        session.out.push_ordered(&mut stream.mark, 0, &Frame::Reset { stream_id, code });
                    }
                    self.stack.release(flow);
                }
                FlowEvent::Closed { flow, reset: false } => {
                    if let Some(&(sid, stream_id)) = self.flow_streams.get(&flow) {
                        if let Some(stream) = self.session_mut(sid).streams.get_mut(&stream_id) {
                            stream.app_done = true;
                        }
                    } else {
                        self.stack.release(flow);
                    }
                }
            }
        }
    }

    /// Moves bytes between the stack and every open stream; returns whether anything moved.
    fn pump_streams(&mut self) -> bool {
        let budget = self.config.session_out_budget;
        let Engine { stack, sessions, flow_streams, .. } = self;
        let mut progress = false;
        for session in sessions.values_mut() {
            let Session { streams, out, counters, .. } = session;
            let mut finished = Vec::new();
            for (&stream_id, stream) in streams.iter_mut() {
                if stream.phase != Phase::Open {
                    continue;
                }
                let flow = stream.flow;
                // Peer → app, as far as the app's socket takes it.
                while stream.recv.pending_len() > 0 {
                    let (front, _) = stream.recv.pending();
                    let n = stack.send(flow, front);
                    let whole = n == front.len();
                    stream.recv.consume(n);
                    progress |= n > 0;
                    if !whole {
                        break;
                    }
                }
                if stream.recv.finished() && !stream.app_close_sent {
                    stack.close(flow);
                    stream.app_close_sent = true;
                    progress = true;
                }
                if let Some((received, max_offset)) = stream.recv.credit_due() {
                    out.push_ordered(&mut stream.mark, 0, &Frame::Credit { stream_id, received, max_offset });
                }
                // App → peer, within the peer's credit and our queue budget. First what a lost path
                // took with it (from the replay buffer), then new bytes from the app.
                let mut room = budget.saturating_sub(out.bytes()).min(stream.send.allowance());
                if room > 0 && stream.send.offset() < stream.replay.end() {
                    let mut offset = stream.send.offset();
                    if let Some(parts) = stream.replay.since(offset) {
                        for part in parts {
                            for piece in part[..part.len().min(room)].chunks(out.max_payload()) {
                                out.push_data(&mut stream.mark, stream_id, offset, piece, Keep::No);
                                offset += piece.len() as u64;
                                room -= piece.len();
                            }
                        }
                    }
                    let n = (offset - stream.send.offset()) as usize;
                    stream.send.on_sent(n);
                    counters.bytes_resent += n as u64;
                    progress |= n > 0;
                }
                if room > 0 && stream.send.offset() == stream.replay.end() {
                    let mut offset = stream.send.offset();
                    let Stream { replay, mark, .. } = stream;
                    let max_payload = out.max_payload();
                    let n = stack.recv(flow, room, |chunk| {
                        replay.push_queued(chunk.len());
                        for piece in chunk.chunks(max_payload) {
                            out.push_data(mark, stream_id, offset, piece, Keep::Yes);
                            offset += piece.len() as u64;
                        }
                    });
                    if n > 0 {
                        stream.send.on_sent(n);
                        counters.bytes_sent += n as u64;
                        progress = true;
                    }
                }
                let all_sent = stream.send.offset() == stream.replay.end();
                if !stream.send.fin_sent() && all_sent && stack.app_finished_sending(flow) {
                    out.push_ordered(&mut stream.mark, 0, &Frame::Fin { stream_id, offset: stream.send.offset() });
                    stream.send.on_fin_sent();
                    progress = true;
                }
                // Forgotten only when nothing of it can be lost any more: a path lost now could otherwise
                // take our last bytes or FIN with it, with no stream left to resend them.
                if stream.app_done && stream.send.fin_acked() && stream.app_close_sent {
                    finished.push(stream_id);
                }
            }
            for stream_id in finished {
                if let Some(stream) = streams.remove(&stream_id) {
                    flow_streams.remove(&stream.flow);
                    stack.release(stream.flow);
                }
            }
        }
        progress
    }

    fn expire_udp(&mut self, now: Instant) {
        let Some(at) = self.next_udp_expiry else { return };
        if now < at {
            return;
        }
        let timeout = self.config.udp_idle_timeout;
        let sessions = &mut self.sessions;
        self.udp_flows.retain(|key, last| {
            let keep = now - *last < timeout;
            if !keep {
                if let Some(s) = sessions.get_mut(&key.session) {
                    s.udp_flows -= 1;
                }
            }
            keep
        });
        self.next_udp_expiry = self.udp_flows.values().min().map(|oldest| *oldest + timeout);
    }

    /// When [`Engine::poll`] must run next at the latest.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let stack = self.stack.poll_at(now.into()).map(Instant::from);
        match (stack, self.next_udp_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next packet to write into the TUN.
    pub fn pop_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.tun_out.pop_front().or_else(|| self.stack.pop_transmit())
    }

    /// A buffer of `len` bytes to read the next TUN packet into (see [`Stack::read_buffer`]).
    pub fn tun_read_buffer(&mut self, len: usize) -> Vec<u8> {
        self.stack.read_buffer(len)
    }

    /// Gives back a packet from [`Engine::pop_tun_packet`] once written (see [`Stack::recycle`]).
    pub fn recycle_tun_packet(&mut self, packet: Vec<u8>) {
        self.stack.recycle(packet);
    }

    /// The next chunk of encoded frames for a session's transport.
    pub fn pop_session_output(&mut self, sid: SessionId) -> Option<Bytes> {
        let session = self.sessions.get_mut(&sid)?;
        let chunk = session.out.pop()?;
        Some(settle(chunk, &mut session.streams))
    }

    /// Sizes the session's bulk chunks for the path it is on, which carries `bytes_per_sec` (see
    /// [`super::outqueue`]).
    pub fn set_session_rate(&mut self, sid: SessionId, bytes_per_sec: Option<u64>) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.out.set_rate(bytes_per_sec);
        }
    }

    /// For every stream of a session: its id and the bytes received from the peer in order. After a
    /// path is lost, the peer resends each stream from this offset ([`Engine::resume_session`]).
    pub fn received_offsets(&self, sid: SessionId) -> Vec<(u32, u64)> {
        self.sessions
            .get(&sid)
            .map_or_else(Vec::new, |s| s.streams.iter().map(|(id, st)| (*id, st.recv.received())).collect())
    }

    /// Continues a session on a new path after the old one was lost with whatever it carried.
    /// `peer_received` is the peer's [`Engine::received_offsets`]. Everything queued for the old path
    /// is dropped and regenerated: each stream resends from the offset the peer has (its replay buffer
    /// holds those bytes) and grants its credit again; an OPEN or OPEN_OK that may have been lost is
    /// repeated; a stream only one side still knows was reset on the other, so it is reset here too.
    ///
    /// Returns how many stream bytes go out again (they were sent on the lost path and the peer does
    /// not have them).
    pub fn resume_session(&mut self, sid: SessionId, peer_received: &[(u32, u64)], now: Instant) -> u64 {
        let role = self.config.role;
        let Some(session) = self.sessions.get_mut(&sid) else { return 0 };
        let mut replayed = 0;
        session.rx.clear();
        // The queued frames are regenerated below, but the stream bytes in them are the only copy:
        // the replay buffers keep them before the frames go.
        for chunk in session.out.drain() {
            settle(chunk, &mut session.streams);
        }
        let peer: BTreeMap<u32, u64> = peer_received.iter().copied().collect();
        let ours_parity = match role {
            Role::Client => 1,
            Role::Server => 0,
        };
        let mut gone = Vec::new();
        for (&id, stream) in session.streams.iter_mut() {
            match peer.get(&id) {
                Some(&received) => {
                    let before = stream.send.offset();
                    stream.send.rewind(received);
                    replayed += before - stream.send.offset();
                    stream.replay.ack(stream.send.acked());
                    let (received, max_offset) = stream.recv.current_grant();
                    session.out.push_ordered(
                        &mut stream.mark,
                        0,
                        &Frame::Credit { stream_id: id, received, max_offset },
                    );
                    if id % 2 != ours_parity && stream.phase == Phase::Open {
                        session.out.push_ordered(&mut stream.mark, 0, &Frame::OpenOk { stream_id: id });
                    }
                }
                // Our OPEN was lost with the path: open it again.
                None if id % 2 == ours_parity && stream.phase == Phase::Opening => {
                    let (src, dst) = stream.endpoints;
                    session.out.push_ordered(&mut stream.mark, 0, &Frame::Open { stream_id: id, src, dst });
                }
                // The peer finished with it, which it does only after our FIN and with its own FIN
                // acknowledged by us: it ends here as it would have.
                None if stream.recv.fin_complete() && stream.send.fin_sent() => stream.send.on_peer_finished(),
                // The peer no longer has it: its RESET was lost with the path.
                None => gone.push(id),
            }
        }
        for (&id, _) in peer.iter().filter(|(id, _)| !session.streams.contains_key(id)) {
            // A stream of the peer's we never saw: its OPEN was lost and comes again. Any other we no
            // longer have: our RESET was lost with the path.
            let never_seen = id % 2 != ours_parity && session.highest_peer_stream.is_none_or(|h| id > h);
            if !never_seen {
                session.out.push_urgent(&Frame::Reset { stream_id: id, code: ResetCode::Reset });
            }
        }
        for id in gone {
            if let Some(stream) = session.streams.remove(&id) {
                self.flow_streams.remove(&stream.flow);
                let _ = self.stack.abort(stream.flow, now.into());
            }
        }
        replayed
    }

    /// From now until [`Engine::release_datagrams`], datagrams of this session wait aside (up to the
    /// session's out budget; beyond it they are dropped and counted): the session is changing paths.
    pub fn hold_datagrams(&mut self, sid: SessionId) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.held.get_or_insert_with(VecDeque::new);
        }
    }

    /// The session is on its new path: the held datagrams go out, in order, before any new one.
    pub fn release_datagrams(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else { return };
        for packet in session.held.take().into_iter().flatten() {
            session.counters.datagrams_sent += 1;
            session.counters.bytes_sent += packet.len() as u64;
            session.out.push_ordered(&mut session.datagram_mark, packet.len(), &Frame::Datagram { packet: &packet });
        }
        session.held_bytes = 0;
    }

    pub fn session_counters(&self, sid: SessionId) -> Option<SessionCounters> {
        self.sessions.get(&sid).map(|s| s.counters.clone())
    }

    pub fn session_status(&self) -> Vec<SessionStatus> {
        self.sessions
            .iter()
            .map(|(id, s)| SessionStatus {
                id: *id,
                virtual_ips: s.virtual_ips.clone(),
                tcp_flows: s.streams.len(),
                udp_flows: s.udp_flows,
                queued_bytes: s.out.bytes(),
                counters: s.counters.clone(),
            })
            .collect()
    }

    pub fn tun_counters(&self) -> &TunCounters {
        &self.tun_counters
    }
}

/// Hands each stream's replay buffer its new bytes of a chunk that leaves (see
/// [`super::outqueue::OutChunk::settle`]).
fn settle(chunk: super::outqueue::OutChunk, streams: &mut BTreeMap<u32, Stream>) -> Bytes {
    // A stream reset meanwhile has no replay buffer left to keep them.
    chunk.settle(|id, bytes| {
        if let Some(stream) = streams.get_mut(&id) {
            stream.replay.settle(bytes);
        }
    })
}
