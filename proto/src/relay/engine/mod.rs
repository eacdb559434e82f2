//! The relay engine: moves app traffic between the TUN side (through [`Stack`]) and relay sessions.
//!
//! One engine serves both daemons. The client (CNAPT) has one session, with the server; the server
//! (SNAPT) has one per connected client and picks it by the client's virtual IP. A TCP connection on
//! either side becomes a relay stream: its opener holds the app's SYN until the far side has connected
//! (so a refused connection is refused, not accepted then reset), and each direction is flow
//! controlled by credit ([`crate::relay::stream`]). UDP and ICMP travel as whole IP packets
//! (DATAGRAM), checked against the session's virtual IPs in both directions so a client can never
//! speak for another.
//!
//! Sans-IO: inputs are [`Engine::handle_tun_packet`], [`Engine::handle_session_bytes`] and the
//! session lifecycle calls; outputs are [`Engine::pop_tun_packet`] and [`Engine::pop_session_output`];
//! [`Engine::poll`] runs timers and [`Engine::poll_at`] says when to call it again. The caller owns
//! the TUN, the sockets and the clock.
//!
//! Where things are: `config` (budgets and limits), `session` (a session's streams and queue, its
//! start and end), `tun` (the apps' packets and the stack's flow events), `peer` (frames from the
//! peer), `pump` (bytes between the stack and the streams), `datagram` (UDP and ICMP, the UDP flow
//! table, datagrams held during a switch), `resume` (continuing on a new path), `counters`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

use roamtun_stack::{FlowId, Stack};

use crate::time::Instant;
use datagram::UdpKey;
use session::{Session, Stream};

mod config;
mod counters;
mod datagram;
mod peer;
mod pump;
mod resume;
mod session;
mod tun;

pub use config::{EngineConfig, PeerLimits, SessionLimits};
pub use counters::{SessionCounters, SessionStatus, TunCounters};
pub use session::SessionError;

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

    /// The session that carries traffic to or from `local_side` (the address on this side of the tunnel).
    fn session_for(&self, app_src: IpAddr, app_dst: IpAddr) -> Option<SessionId> {
        match self.config.role {
            // The client's apps send from their virtual IP to anywhere.
            Role::Client => self.sessions.iter().find(|(_, s)| s.owns(app_src)).map(|(id, _)| *id),
            // Server apps reach a client at its virtual IP.
            Role::Server => self.sessions.iter().find(|(_, s)| s.owns(app_dst)).map(|(id, _)| *id),
        }
    }

    fn session_mut(&mut self, sid: SessionId) -> &mut Session {
        self.sessions.get_mut(&sid).expect("frames are handled for live sessions")
    }

    fn stream_mut(&mut self, sid: SessionId, stream_id: u32) -> Option<&mut Stream> {
        self.sessions.get_mut(&sid)?.streams.get_mut(&stream_id)
    }

    fn counters_mut(&mut self, sid: SessionId) -> &mut SessionCounters {
        &mut self.sessions.get_mut(&sid).expect("frames are handled for live sessions").counters
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

    /// When [`Engine::poll`] must run next at the latest.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let stack = self.stack.poll_at(now.into()).map(Instant::from);
        match (stack, self.next_udp_expiry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}
