//! The sans-IO core of a daemon: the [`Engine`] (streams, datagrams, the TUN side), the transition
//! state machine of each session ([`crate::transition`]), and the paths each session runs over. It
//! opens no socket and reads no clock; the tokio shell (`daemon::shell`) feeds it what the TUN, the
//! path readers and the timers deliver, and carries out its [`Action`]s. Tests drive two cores over
//! simulated links (tests/roaming_sim.rs).
//!
//! What the core adds to the state machines is the path bookkeeping:
//! * a session's stream frames go out on, and are accepted from, its *current* path only. A path
//!   becomes current at [`Event::ResumeOn`]; bytes from any other path are late frames of an old
//!   epoch and are dropped (counted as `stale_frames`).
//! * each path has one output queue. Control messages (CONTROL frames) join the queue of the path the
//!   machine names, behind whatever is already queued there, so a LAST_MESSAGE_BEFORE_REDIRECTION
//!   follows every stream byte of its path and an ALL_REDIRECTED precedes every stream byte of the
//!   new one.
//! * [`Event::StopSending`] stops moving the engine's output to any path (the engine keeps producing
//!   up to its out budget, then the apps see backpressure) and holds datagrams aside.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use crate::link::manager::{LinkView, PathHealth, SessionLink};
use crate::path::PathLoss;
use crate::time::{Duration, Instant};
use bytes::Bytes;

use crate::relay::engine::{Engine, Role, SessionCounters, SessionError, SessionId};
use crate::transition::{
    ClientTransition, ControlMessage, Event, ExpiryReason, PathId, ServerTransition, StreamOffset, SwitchKind,
    SwitchSummary, TransitionConfig,
};
use crate::wire::{Frame, PROTOCOL_VERSION};

/// Switches kept per session for `roamtun status`.
const HISTORY: usize = 8;
/// Chunks a path's queue holds before the engine's output waits in the engine, in its two lanes
/// (urgent frames pass bulk ones there, not here). One: the writer's queue behind it keeps the
/// writer busy, so a chunk more here would only make urgent frames wait longer.
const PATH_QUEUE: usize = 1;
/// The chunks a writer may hold on a very slow path ([`RelayCore::writer_depth`]).
const SLOW_WRITER_DEPTH: usize = 2;

/// CLOSE codes (docs/protocol.md).
pub mod close_code {
    /// The peer speaks another protocol version.
    pub const VERSION: u16 = 1;
    /// The client claimed virtual IPs the server does not give to its key.
    pub const VIRTUAL_IPS: u16 = 2;
    /// The peer sent something other than the expected handshake frame.
    pub const PROTOCOL: u16 = 3;
    /// The daemon is stopping: the session ends now, it is not an outage to wait out.
    pub const SHUTDOWN: u16 = 4;
    /// The server cannot start the session (e.g. its virtual IPs are taken).
    pub const SESSION: u16 = 5;
    /// The session has `max_paths_per_session` paths already: this one is not taken.
    pub const PATH_LIMIT: u16 = 6;
    /// The server's configuration no longer has this client, or gives it other virtual IPs: the
    /// session ends (a changed peer dials a new one).
    pub const PEER_CHANGED: u16 = 7;
}

/// Who a session talks to, for status and logs.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: String,
    /// Server: this peer's own switch timeout (\[0133\]), e.g. long for a laptop that sleeps through
    /// the night; `None`: the daemon's.
    pub switch_timeout: Option<Duration>,
}

/// Where one path runs.
#[derive(Debug, Clone, Default)]
pub struct PathInfo {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The interface the path is bound to (client), or that holds `local`.
    pub uplink: Option<String>,
    /// The relay socket's TCP congestion control, as the kernel reports it (for the status).
    pub congestion_control: Option<String>,
}

impl PathInfo {
    /// How a path is named in switch records: its uplink, else (server) the client's address.
    pub fn label(&self) -> String {
        match (&self.uplink, self.remote) {
            (Some(uplink), _) => uplink.clone(),
            (None, Some(remote)) => remote.ip().to_string(),
            (None, None) => "?".into(),
        }
    }
}

/// What a path's reader read off the relay socket's TCP_INFO (the Check activity's own signals).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSample {
    /// The kernel's smoothed round trip.
    pub tcp_rtt: Duration,
    /// Its mean deviation (the kernel's `rttvar`): the path's jitter.
    pub jitter: Duration,
    /// The share of segments retransmitted lately, 0.0–1.0.
    pub loss: f64,
    /// Bytes acknowledged by the peer plus bytes received, since the path began.
    pub bytes: u64,
    /// A delivery-rate sample in bytes/s, taken while the sender was not application-limited.
    pub delivery_rate: Option<u64>,
    /// What the path carries now, bytes/s: the largest delivery-rate sample of the last few, which
    /// forgets a burst within seconds (the engine sizes its bulk chunks by it, relay::outqueue).
    pub pace: Option<u64>,
}

/// A client's request for a new path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialRequest {
    /// The session to continue (0: ask for a new one).
    pub resume: u64,
    /// `roamtun switch`: exactly this uplink, one attempt. Otherwise any usable uplink, until one works.
    pub uplink: Option<String>,
    /// The uplink that just failed: tried last.
    pub avoid: Option<String>,
    /// A warm standby path on `uplink` (the spec's Search activity): one attempt, nothing waits on it.
    pub standby: bool,
}

/// What the shell must do for the core.
#[derive(Debug)]
pub enum Action {
    /// Client: open a path (answered with [`RelayCore::client_path_up`]).
    Dial(DialRequest),
    /// Close a path: write `last` (its remaining queue, e.g. a CLOSE), then end the connection.
    ClosePath { path: PathId, last: Vec<Bytes> },
    /// Client: the switch the user asked for is done, or failed.
    SwitchDone(Result<SwitchReport, SwitchError>),
}

/// Every finished switch of a session by kind, since it began: the history keeps only the last few,
/// metrics need totals that only grow.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SwitchTotals {
    pub planned: u64,
    pub unexpected: u64,
    /// The apps' stall (stop sending → resume), summed per kind.
    pub planned_stall: Duration,
    pub unexpected_stall: Duration,
}

/// One finished uplink switch of a session, as the core saw it; the daemon renders it for the
/// status (with wall-clock times) and the log.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchReport {
    pub kind: SwitchKind,
    /// The uplinks left and taken (client; the server knows addresses only).
    pub from: Option<String>,
    pub to: Option<String>,
    /// The session's epoch after the switch.
    pub epoch: u32,
    /// When it finished, on the core's clock.
    pub finished: Instant,
    /// From the first protocol step to the last.
    pub duration: Duration,
    /// How long no stream data went out (stop sending → resume): the pause the apps could see.
    pub stall: Duration,
    /// Stream bytes sent again because they were in flight on a lost path.
    pub bytes_replayed: u64,
    /// Datagrams held during the switch and sent after it, and those dropped (hold budget full).
    pub datagrams_held: u64,
    pub datagrams_dropped: u64,
    /// The spec steps in order, with their time since the first one.
    pub steps: Vec<(&'static str, Duration)>,
}

/// Why `roamtun switch` could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    #[error("another switch request is in progress")]
    Busy,
    #[error("no session with the server yet")]
    NoSession,
    #[error("the session is switching already; try again in a moment")]
    Switching,
    #[error("the session already uses {0}")]
    AlreadyOn(String),
    #[error("only the client switches uplinks")]
    NotClient,
    #[error("the planned switch could not start: {0}")]
    Refused(String),
    #[error("no path to {uplink} could be opened: {reason}")]
    Dial { uplink: String, reason: String },
}

/// The transition machine of a session, by role.
enum Machine {
    Client(ClientTransition),
    Server(ServerTransition),
}

impl Machine {
    fn poll_event(&mut self) -> Option<Event> {
        match self {
            Machine::Client(m) => m.poll_event(),
            Machine::Server(m) => m.poll_event(),
        }
    }

    fn poll_transmit(&mut self) -> Option<(PathId, ControlMessage)> {
        match self {
            Machine::Client(m) => m.poll_transmit(),
            Machine::Server(m) => m.poll_transmit(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Machine::Client(m) => m.poll_timeout().map(|(at, _)| at),
            Machine::Server(m) => m.poll_timeout().map(|(at, _)| at),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Machine::Client(m) => m.handle_timeout(now),
            Machine::Server(m) => m.handle_timeout(now),
        }
    }

    fn handle_path_lost(&mut self, path: PathId, now: Instant) {
        match self {
            Machine::Client(m) => m.handle_path_lost(path, now),
            Machine::Server(m) => m.handle_path_lost(path, now),
        }
    }

    fn is_switching(&self) -> bool {
        match self {
            Machine::Client(m) => m.is_switching(),
            Machine::Server(m) => m.is_switching(),
        }
    }

    fn epoch(&self) -> u32 {
        match self {
            Machine::Client(m) => m.epoch().0,
            Machine::Server(m) => m.epoch().0,
        }
    }
}

/// A switch between its first step and [`Event::SwitchDone`].
struct Progress {
    /// When stream data stopped going out (StopSending).
    stopped: Instant,
    from: Option<String>,
    before: SessionCounters,
    /// When stream data flowed again (ResumeOn).
    resumed: Option<Instant>,
    /// Stream bytes sent again because the lost path took them.
    replayed: u64,
}

struct SessionState {
    peer: PeerInfo,
    machine: Machine,
    /// Where stream frames go and come from; `None` until the first path of a client session.
    current: Option<PathId>,
    /// False between StopSending and ResumeOn.
    sending: bool,
    /// The peer's received offsets of an unexpected switch, gathered from [`Event::Resend`].
    resends: Vec<(u32, u64)>,
    progress: Option<Progress>,
    history: VecDeque<SwitchReport>,
    totals: SwitchTotals,
    since: Instant,
    stale_frames: u64,
    control_malformed: u64,
    /// Server: paths of this session refused because it had `max_paths` already.
    paths_refused_limit: u64,
    /// Paths dropped because the peer did not read what was queued for it.
    paths_lost_not_reading: u64,
}

struct PathState {
    session: SessionId,
    info: PathInfo,
    /// Smoothed round trip of the path's probes (RFC 6298 weights), µs.
    srtt_us: Option<u64>,
    /// The relay socket's own view: the kernel's smoothed RTT and the share of segments retransmitted.
    tcp_rtt: Option<Duration>,
    jitter: Option<Duration>,
    loss: Option<f64>,
    /// Bytes carried (both ways) since the path began.
    bytes: u64,
    /// The path's capacity as the kernel measured it: the peak delivery rate, decaying by 1 % per
    /// sample so that a link that got slower is seen as slower within a minute or so. Bytes/s.
    bandwidth: Option<f64>,
    /// [`PathSample::pace`], bytes/s.
    pace: Option<u64>,
    /// The peer's REPORT: the share of its segments its relay socket retransmits, i.e. the loss on
    /// the way towards us, which our own socket cannot see.
    peer_loss: Option<f64>,
    /// Our loss as last sent to the peer in a REPORT, parts per million.
    reported_ppm: u32,
    /// Encoded frames for the path's writer, in order.
    out: VecDeque<Bytes>,
}

impl PathState {
    /// A path just up in `session`, nothing measured yet, with `out` to send first.
    fn new(session: SessionId, info: PathInfo, out: VecDeque<Bytes>) -> Self {
        PathState {
            session,
            info,
            srtt_us: None,
            tcp_rtt: None,
            jitter: None,
            loss: None,
            bytes: 0,
            bandwidth: None,
            pace: None,
            peer_loss: None,
            reported_ppm: 0,
            out,
        }
    }
}

/// One session as `roamtun status` shows it.
pub struct SessionView<'a> {
    pub id: SessionId,
    pub peer: &'a PeerInfo,
    /// The current path, if the session has one, and its smoothed round trip.
    pub path: Option<&'a PathInfo>,
    pub rtt: Option<Duration>,
    pub epoch: u32,
    pub switching: bool,
    pub stale_frames: u64,
    pub control_malformed: u64,
    /// Server: paths refused because the session had `max_paths_per_session` already.
    pub paths_refused_limit: u64,
    /// Paths dropped because the peer did not read what was queued for it.
    pub paths_lost_not_reading: u64,
    /// Finished switches, oldest first (the last few).
    pub switches: &'a VecDeque<SwitchReport>,
    pub switch_totals: SwitchTotals,
    pub since: Instant,
}

/// The sans-IO core of one daemon. See the module documentation.
pub struct RelayCore {
    engine: Engine,
    transition: TransitionConfig,
    sessions: BTreeMap<SessionId, SessionState>,
    paths: BTreeMap<PathId, PathState>,
    next_session: u64,
    actions: VecDeque<Action>,
    /// The path just lost and where it ran: the switch it starts records where it came from.
    last_lost: Option<(PathId, String)>,
    /// Client: sessions this side ended; a path that still joins one of them (a resume that was under
    /// way) must not start it again with no streams.
    abandoned: BTreeSet<u64>,
    /// Client: the uplink a `roamtun switch` waits for.
    switch_wanted: Option<String>,
    /// Client: the uplinks best first, as the decision task ranks them: a lost session resumes on
    /// the best standby path.
    preference: Vec<String>,
    /// Server: the most paths one session may have at once (`EngineConfig::max_paths_per_session`,
    /// at least 2 so that a switch, old path and new, always fits).
    max_paths: usize,
}

impl RelayCore {
    /// `first_session`: server session ids count up from here; pick it so that ids differ across
    /// restarts (a client must never resume a stranger's session).
    pub fn new(engine: Engine, transition: TransitionConfig, first_session: u64) -> Self {
        let max_paths = engine.config().max_paths_per_session.max(2);
        RelayCore {
            engine,
            transition,
            sessions: BTreeMap::new(),
            paths: BTreeMap::new(),
            next_session: first_session,
            actions: VecDeque::new(),
            last_lost: None,
            abandoned: BTreeSet::new(),
            switch_wanted: None,
            preference: Vec::new(),
            max_paths,
        }
    }

    /// Client: the uplinks best first (the decision task's ranking).
    pub fn set_preference(&mut self, order: Vec<String>) {
        self.preference = order;
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The TUN side goes straight to the engine.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    fn role(&self) -> Role {
        self.engine.role()
    }

    // ---- paths joining -------------------------------------------------------------------------

    /// Server: a client's authenticated HELLO on `path`. It continues its session when `resume` names
    /// it, else it starts a new one (ending any session of the same key: the client restarted or gave
    /// up). WELCOME, naming the session, is the first frame queued on the path.
    pub fn server_path_up(
        &mut self,
        path: PathId,
        info: PathInfo,
        peer: PeerInfo,
        resume: u64,
        virtual_ips: Vec<IpAddr>,
        now: Instant,
    ) {
        let existing = self
            .sessions
            .iter()
            .find(|(id, s)| id.0 == resume && resume != 0 && s.peer.public_key == peer.public_key)
            .map(|(id, _)| *id);
        let sid = match existing {
            Some(sid) => {
                let open = self.paths.values().filter(|p| p.session == sid).count();
                if open >= self.max_paths {
                    tracing::warn!(peer = %peer.name, session = sid.0, ?path, paths = open, "refusing a path: the session has max_paths_per_session paths");
                    if let Some(state) = self.sessions.get_mut(&sid) {
                        state.paths_refused_limit += 1;
                    }
                    let reason = format!("the session has {open} paths already (max_paths_per_session)");
                    let close = encode(&Frame::Close { code: close_code::PATH_LIMIT, reason: &reason });
                    self.actions.push_back(Action::ClosePath { path, last: vec![close] });
                    return;
                }
                tracing::info!(peer = %peer.name, session = sid.0, ?path, remote = ?info.remote, "client opened a new path");
                sid
            }
            None => {
                let stale: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.peer.public_key == peer.public_key)
                    .map(|(id, _)| *id)
                    .collect();
                for old in stale {
                    self.end_session(old, "the client started a new session", now);
                }
                self.next_session += 1;
                let sid = SessionId(self.next_session);
                if let Err(err) = self.engine.add_session(sid, virtual_ips) {
                    tracing::warn!(peer = %peer.name, %err, "session refused");
                    let reason = err.to_string();
                    let close = encode(&Frame::Close { code: close_code::SESSION, reason: &reason });
                    self.actions.push_back(Action::ClosePath { path, last: vec![close] });
                    return;
                }
                if resume != 0 {
                    tracing::info!(peer = %peer.name, resume, session = sid.0, "the client's session is gone (switch timeout or restart); a new one starts");
                } else {
                    tracing::info!(peer = %peer.name, session = sid.0, remote = ?info.remote, "session up");
                }
                let mut transition = self.transition;
                if let Some(timeout) = peer.switch_timeout {
                    transition.switch_timeout = timeout;
                }
                let machine = Machine::Server(ServerTransition::new(transition, sid.0, path));
                self.sessions.insert(sid, SessionState::new(peer, machine, Some(path), now));
                sid
            }
        };
        let welcome = encode(&Frame::Welcome { version: PROTOCOL_VERSION, session_id: sid.0 });
        self.paths.insert(path, PathState::new(sid, info, VecDeque::from([welcome])));
    }

    /// Client: a path the shell opened, in the session the server's WELCOME named. A new session
    /// starts on it; a lost session resumes on it (SWITCH_UNEXPECTED); a `roamtun switch` waiting for
    /// this uplink starts its planned switch on it.
    pub fn client_path_up(
        &mut self,
        path: PathId,
        info: PathInfo,
        peer: PeerInfo,
        session: u64,
        virtual_ips: Vec<IpAddr>,
        now: Instant,
    ) {
        let uplink = info.uplink.clone();
        self.paths.insert(path, PathState::new(SessionId(session), info, VecDeque::new()));
        if self.abandoned.contains(&session) {
            tracing::info!(session, ?path, "a path joined a session we already ended; asking for a new session");
            self.close_path(path);
            self.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false });
            return;
        }
        let current = self.sessions.keys().next().copied();
        if let Some(old) = current.filter(|old| old.0 != session) {
            tracing::warn!(
                old = old.0,
                new = session,
                "the server no longer knows our session (switch timeout or restart); its connections are reset"
            );
            self.end_session(old, "the server lost the session", now);
        }
        let sid = SessionId(session);
        let Some(state) = self.sessions.get_mut(&sid) else {
            if let Err(err) = self.engine.add_session(sid, virtual_ips) {
                tracing::error!(%err, "cannot start the session");
                self.close_path(path);
                return;
            }
            tracing::info!(session, ?path, uplink = ?uplink, "connected to the server");
            let machine = Machine::Client(ClientTransition::new(self.transition, session, path));
            self.sessions.insert(sid, SessionState::new(peer, machine, Some(path), now));
            return;
        };
        let Machine::Client(machine) = &mut state.machine else { return };
        let received = offsets(&self.engine, sid);
        match machine.resume_on(path, &received, now) {
            // CNAPT-16*..17*: SWITCH_UNEXPECTED goes out on the new path.
            Ok(epoch) => tracing::info!(?path, uplink = ?uplink, epoch = epoch.0, "resuming the session on a new path"),
            Err(_) if self.switch_wanted.is_some() && self.switch_wanted == uplink => {
                // The user's planned switch: the new path is up and authenticated (make-before-break).
                match machine.request_switch(path, now) {
                    Ok(r) => tracing::info!(?path, uplink = ?uplink, request = ?r, "planned switch started"),
                    Err(err) => self.switch_failed(err.to_string()),
                }
            }
            Err(_) if self.standby_wanted(sid, path) => {
                // Search: an authenticated path on another uplink, kept warm (probed, not used) so a
                // switch to it needs no handshake.
                tracing::info!(?path, uplink = ?uplink, "standby path up");
            }
            Err(_) => {
                tracing::debug!(?path, "a path nobody needs any more; closing it");
                self.close_path(path);
            }
        }
        self.drive(sid, now);
    }

    /// Whether `path` is the session's only path on its uplink (then it is worth keeping warm).
    fn standby_wanted(&self, sid: SessionId, path: PathId) -> bool {
        let Some(uplink) = self.paths.get(&path).and_then(|p| p.info.uplink.as_deref()) else { return false };
        !self.paths.iter().any(|(id, p)| *id != path && p.session == sid && p.info.uplink.as_deref() == Some(uplink))
    }

    /// The round trip of the path on `uplink`, if one is open: the kernel's smoothed RTT of the relay
    /// socket, else the probes'. The probes also time the daemons' own queues (a PONG waits behind
    /// the peer's queued output), which says more about the daemon's load than about the uplink.
    pub fn uplink_rtt(&self, uplink: &str) -> Option<Duration> {
        let p = self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?;
        p.tcp_rtt.or(p.srtt_us.map(Duration::from_micros))
    }

    /// The loss on `uplink` lately: the share of segments the relay socket had to retransmit, in the
    /// direction that loses more (ours, or the peer's as its REPORT says).
    pub fn uplink_loss(&self, uplink: &str) -> Option<f64> {
        let p = self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?;
        match (p.loss, p.peer_loss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `path` is a warm standby: open, in a session that is not switching, and not the one its
    /// streams use. (During a switch every path of the session counts as busy.)
    pub fn is_standby(&self, path: PathId) -> bool {
        let Some(p) = self.paths.get(&path) else { return false };
        self.sessions.get(&p.session).is_some_and(|s| s.current.is_some_and(|c| c != path) && !s.machine.is_switching())
    }

    /// Whether a path (current or standby) runs on `uplink`.
    pub fn has_path_on(&self, uplink: &str) -> bool {
        self.paths.values().any(|p| p.info.uplink.as_deref() == Some(uplink))
    }

    /// Client: what the link manager needs of the session and its paths.
    pub fn link_view(&self) -> LinkView {
        let mut paths = BTreeMap::new();
        for p in self.paths.values() {
            let Some(uplink) = &p.info.uplink else { continue };
            // The first path found per uplink, as uplink_rtt and the others below read it.
            paths.entry(uplink.clone()).or_insert_with(|| PathHealth {
                rtt: self.uplink_rtt(uplink),
                loss: self.uplink_loss(uplink),
                bandwidth: p.bandwidth,
            });
        }
        let session = self.sessions.iter().next().map(|(sid, s)| SessionLink {
            id: sid.0,
            active: s.current.and_then(|c| self.paths.get(&c)).and_then(|p| p.info.uplink.clone()),
            switching: s.machine.is_switching(),
            switch_pending: self.switch_wanted.is_some(),
            uplinks: self.paths.values().filter(|p| p.session == *sid).filter_map(|p| p.info.uplink.clone()).collect(),
        });
        LinkView { session, paths }
    }

    /// Client: the standby path of the session on `uplink`, if one is open.
    fn standby_on(&self, sid: SessionId, uplink: &str) -> Option<PathId> {
        let current = self.sessions.get(&sid).and_then(|s| s.current);
        self.paths
            .iter()
            .find(|(id, p)| p.session == sid && Some(**id) != current && p.info.uplink.as_deref() == Some(uplink))
            .map(|(id, _)| *id)
    }

    /// Client: the uplinks (of `candidates`) on which the session has no path, so a standby path
    /// should be opened there; empty while a switch or a dial is under way.
    pub fn standby_missing<'a>(&self, candidates: &'a [String]) -> Vec<&'a String> {
        let Some((&sid, state)) = self.sessions.iter().next() else { return Vec::new() };
        if state.machine.is_switching() || self.switch_wanted.is_some() || state.current.is_none() {
            return Vec::new();
        }
        candidates
            .iter()
            .filter(|u| !self.paths.values().any(|p| p.session == sid && p.info.uplink.as_deref() == Some(u.as_str())))
            .collect()
    }

    // ---- bytes and messages from paths ---------------------------------------------------------

    /// Whole frames read from `path`.
    pub fn path_bytes(&mut self, path: PathId, bytes: &[u8], now: Instant) {
        let Some(sid) = self.paths.get(&path).map(|p| p.session) else { return };
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        if state.current != Some(path) {
            // Late frames of an older epoch: the stream offsets were settled without them.
            state.stale_frames += 1;
            return;
        }
        if let Err(err) = self.engine.handle_session_bytes(sid, bytes, now) {
            match err {
                SessionError::PeerClosed { .. } => {
                    self.end_session(sid, &err.to_string(), now);
                    if self.role() == Role::Client {
                        // The peer ended the session on purpose (e.g. the server stopped): the apps
                        // were reset; a new session serves the next ones.
                        self.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false });
                    }
                }
                SessionError::PeerNotReading { queued, limit } => {
                    if let Some(state) = self.sessions.get_mut(&sid) {
                        state.paths_lost_not_reading += 1;
                    }
                    // The path goes; the session waits for a resume as after any lost path, which
                    // regenerates the queue from the replay buffers (no stream byte is lost).
                    self.path_lost(path, &PathLoss::NotReading { queued, limit }, now);
                }
                other => tracing::warn!(session = sid.0, err = %other, "session input refused"),
            }
        }
    }

    /// The body of a CONTROL frame read from `path`.
    pub fn path_control(&mut self, path: PathId, body: &[u8], now: Instant) {
        let Some(sid) = self.paths.get(&path).map(|p| p.session) else { return };
        let received = offsets(&self.engine, sid);
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        let msg = match ControlMessage::decode(body) {
            Ok(msg) => msg,
            Err(err) => {
                state.control_malformed += 1;
                tracing::warn!(session = sid.0, ?path, %err, "malformed transition message dropped");
                return;
            }
        };
        tracing::debug!(session = sid.0, ?path, msg = msg.name(), epoch = msg.epoch().0, "transition message");
        match &mut state.machine {
            Machine::Client(m) => m.handle_message(path, msg, now),
            Machine::Server(m) => {
                if let Err(err) = m.handle_message(path, msg, &received, now) {
                    // A client that proposes an epoch out of reach: dropped like a malformed message.
                    state.control_malformed += 1;
                    tracing::warn!(session = sid.0, ?path, %err, "transition message refused");
                }
            }
        }
        self.drive(sid, now);
    }

    /// A path failed: its connection ended, its uplink went away, or it carried nothing for too long.
    pub fn path_lost(&mut self, path: PathId, reason: &PathLoss, now: Instant) {
        let Some(p) = self.paths.remove(&path) else { return };
        let sid = p.session;
        tracing::info!(session = sid.0, ?path, uplink = ?p.info.uplink, %reason, "path lost");
        self.actions.push_back(Action::ClosePath { path, last: Vec::new() });
        self.last_lost = Some((path, p.info.label()));
        if let Some(state) = self.sessions.get_mut(&sid) {
            state.machine.handle_path_lost(path, now);
            self.drive(sid, now);
        }
    }

    /// A probe of `path` came back after `rtt`.
    pub fn path_rtt(&mut self, path: PathId, rtt: Duration) {
        if let Some(p) = self.paths.get_mut(&path) {
            let sample = rtt.total_micros();
            p.srtt_us = Some(p.srtt_us.map_or(sample, |s| (7 * s + sample) / 8));
        }
    }

    /// The relay socket's TCP counters on `path`; returns the bytes it carried since the last sample
    /// (for an uplink's volume).
    pub fn path_stats(&mut self, path: PathId, sample: PathSample) -> u64 {
        let Some(p) = self.paths.get_mut(&path) else { return 0 };
        p.tcp_rtt = Some(sample.tcp_rtt);
        p.jitter = Some(sample.jitter);
        p.loss = Some(sample.loss);
        let decayed = p.bandwidth.map(|b| b * 0.99);
        p.bandwidth = match (decayed, sample.delivery_rate) {
            (Some(b), Some(r)) => Some(b.max(r as f64)),
            (b, r) => b.or(r.map(|r| r as f64)),
        };
        p.pace = sample.pace.or(p.pace);
        // The peer cannot see what we retransmit towards it: tell it when the figure moves by 0.1 %
        // or more (or to or from zero), in the path's queue, so that it is not lost behind a full
        // writer, which is when it matters. An idle path's figure does not move: a metered standby
        // uplink pays nothing for it.
        let ppm = (sample.loss.clamp(0.0, 1.0) * 1e6).round() as u32;
        if p.reported_ppm.abs_diff(ppm) >= 1000 || (ppm == 0) != (p.reported_ppm == 0) {
            p.out.push_back(encode(&Frame::Report { loss_ppm: ppm }));
            p.reported_ppm = ppm;
        }
        let carried = sample.bytes.saturating_sub(p.bytes);
        p.bytes = p.bytes.max(sample.bytes);
        carried
    }

    /// The jitter (the kernel's RTT deviation) of the relay socket on `uplink`.
    pub fn uplink_jitter(&self, uplink: &str) -> Option<Duration> {
        self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?.jitter
    }

    /// The capacity of `uplink` as measured on its path (bytes/s), if it has been busy enough to tell.
    pub fn uplink_bandwidth(&self, uplink: &str) -> Option<f64> {
        self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?.bandwidth
    }

    /// The peer's REPORT on `path`: its retransmission rate, the loss towards us.
    pub fn path_peer_loss(&mut self, path: PathId, loss: f64) {
        if let Some(p) = self.paths.get_mut(&path) {
            tracing::debug!(?path, uplink = ?p.info.uplink, loss, "the peer's loss report");
            p.peer_loss = Some(loss.clamp(0.0, 1.0));
        }
    }

    /// Client: `roamtun switch <uplink>`. The core asks for a path on `uplink` and switches to it once
    /// it is up; [`Action::SwitchDone`] answers.
    pub fn request_switch(&mut self, uplink: String, now: Instant) -> Result<(), SwitchError> {
        if self.switch_wanted.is_some() {
            return Err(SwitchError::Busy);
        }
        let Some((&sid, state)) = self.sessions.iter().next() else {
            return Err(SwitchError::NoSession);
        };
        if state.machine.is_switching() {
            return Err(SwitchError::Switching);
        }
        let on = state.current.and_then(|p| self.paths.get(&p)).and_then(|p| p.info.uplink.clone());
        if on.as_deref() == Some(uplink.as_str()) {
            return Err(SwitchError::AlreadyOn(uplink));
        }
        self.switch_wanted = Some(uplink.clone());
        if let Some(path) = self.standby_on(sid, &uplink) {
            // Search already opened and authenticated it: the planned switch starts now.
            let Some(Machine::Client(m)) = self.sessions.get_mut(&sid).map(|s| &mut s.machine) else {
                return Err(SwitchError::NotClient);
            };
            return match m.request_switch(path, now) {
                Ok(_) => {
                    self.drive(sid, now);
                    Ok(())
                }
                Err(err) => {
                    self.switch_wanted = None;
                    Err(SwitchError::Refused(err.to_string()))
                }
            };
        }
        self.dial(DialRequest { resume: sid.0, uplink: Some(uplink), avoid: None, standby: false });
        Ok(())
    }

    /// Client: the path for a `roamtun switch` could not be opened.
    pub fn switch_failed(&mut self, reason: String) {
        if let Some(uplink) = self.switch_wanted.take() {
            self.actions.push_back(Action::SwitchDone(Err(SwitchError::Dial { uplink, reason })));
        }
    }

    // ---- the transition machines' outputs ------------------------------------------------------

    /// Carries out what a session's machine asks for until it has nothing more to say.
    fn drive(&mut self, sid: SessionId, now: Instant) {
        loop {
            let Some(state) = self.sessions.get_mut(&sid) else { return };
            if let Some((path, msg)) = state.machine.poll_transmit() {
                tracing::debug!(session = sid.0, ?path, msg = msg.name(), "transition message sent");
                if let Some(p) = self.paths.get_mut(&path) {
                    p.out.push_back(encode(&Frame::Control { body: &msg.to_bytes() }));
                }
                continue;
            }
            let Some(event) = state.machine.poll_event() else { return };
            self.act(sid, event, now);
        }
    }

    fn act(&mut self, sid: SessionId, event: Event, now: Instant) {
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        match event {
            Event::StopSending { path } => {
                if state.current == Some(path) {
                    state.sending = false;
                }
                self.engine.hold_datagrams(sid);
                if state.progress.is_none() {
                    let from =
                        self.paths.get(&path).map(|p| p.info.label()).or_else(|| {
                            self.last_lost.as_ref().filter(|(lost, _)| *lost == path).map(|(_, l)| l.clone())
                        });
                    let before = self.engine.session_counters(sid).unwrap_or_default();
                    state.progress = Some(Progress { stopped: now, from, before, resumed: None, replayed: 0 });
                }
            }
            Event::RetireOldPath { path } => self.close_path(path),
            Event::ResumeNeeded { candidate } => {
                // The path the machine names, else a warm standby on another uplink than the lost one.
                let lost = state.progress.as_ref().and_then(|p| p.from.clone());
                let rank = |u: &Option<String>| {
                    u.as_ref().and_then(|u| self.preference.iter().position(|p| p == u)).unwrap_or(usize::MAX)
                };
                let standby = self
                    .paths
                    .iter()
                    .filter(|(_, p)| p.session == sid && p.info.uplink.is_some() && p.info.uplink != lost)
                    .min_by_key(|(id, p)| (rank(&p.info.uplink), **id))
                    .map(|(id, _)| *id);
                let candidate = candidate.filter(|p| self.paths.contains_key(p)).or(standby);
                let received = offsets(&self.engine, sid);
                let Some(state) = self.sessions.get_mut(&sid) else { return };
                if let (Some(path), Machine::Client(m)) = (candidate, &mut state.machine) {
                    if m.resume_on(path, &received, now).is_ok() {
                        return;
                    }
                }
                self.dial(DialRequest { resume: sid.0, uplink: None, avoid: lost, standby: false });
            }
            Event::Resend { stream, from } => state.resends.push((stream, from)),
            Event::ResumeOn { path, epoch, replay } => {
                let previous = state.current.replace(path);
                state.sending = true;
                let resends = std::mem::take(&mut state.resends);
                let replayed = if replay {
                    // What was queued for the old path is regenerated from the replay buffers.
                    self.engine.resume_session(sid, &resends, now)
                } else {
                    0
                };
                if let Some(p) = state.progress.as_mut() {
                    p.resumed = Some(now);
                    p.replayed = replayed;
                }
                self.engine.release_datagrams(sid);
                tracing::debug!(session = sid.0, ?path, epoch = epoch.0, replay, "session on its new path");
                // The path left behind goes (late frames on it are of an old epoch); the client's other
                // paths stay as warm standbys.
                if let Some(old) = previous.filter(|old| *old != path) {
                    self.close_path(old);
                }
            }
            Event::SwitchDone(summary) => {
                let record = self.record_switch(sid, summary, now);
                if self.switch_wanted.take().is_some() {
                    self.actions.push_back(Action::SwitchDone(Ok(record)));
                }
            }
            Event::SessionExpired { reason } => {
                let why = match reason {
                    ExpiryReason::SwitchTimeout => "the client did not come back within the switch timeout",
                    ExpiryReason::ClientGaveUp => "no path to the server within the switch timeout",
                };
                self.end_session(sid, why, now);
                if self.role() == Role::Client {
                    // The apps were reset; a new session serves the next ones once the server is back.
                    self.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false });
                }
            }
        }
    }

    fn record_switch(&mut self, sid: SessionId, summary: SwitchSummary, now: Instant) -> SwitchReport {
        let counters = self.engine.session_counters(sid).unwrap_or_default();
        let to = self.paths.get(&summary.to).map(|p| p.info.label());
        let state = self.sessions.get_mut(&sid).expect("a live session switched");
        let progress = state.progress.take();
        let before = progress.as_ref().map(|p| p.before.clone()).unwrap_or_default();
        let first = summary.timeline.first().map_or(now, |e| e.at);
        let last = summary.timeline.last().map_or(now, |e| e.at);
        let report = SwitchReport {
            kind: summary.kind,
            from: progress.as_ref().and_then(|p| p.from.clone()),
            to,
            epoch: summary.epoch.0,
            finished: now,
            duration: last - first,
            stall: progress.as_ref().and_then(|p| p.resumed.map(|r| r - p.stopped)).unwrap_or(Duration::ZERO),
            bytes_replayed: progress.as_ref().map_or(0, |p| p.replayed),
            datagrams_held: counters.datagrams_held - before.datagrams_held,
            datagrams_dropped: counters.datagrams_dropped_switching - before.datagrams_dropped_switching,
            steps: summary.timeline.iter().map(|e| (e.step, e.at - first)).collect(),
        };
        tracing::info!(
            peer = %state.peer.name,
            kind = ?report.kind,
            from = report.from.as_deref().unwrap_or("?"),
            to = report.to.as_deref().unwrap_or("?"),
            epoch = report.epoch,
            stall_ms = format!("{:.1}", report.stall.as_millis_f64()),
            bytes_replayed = report.bytes_replayed,
            datagrams_held = report.datagrams_held,
            datagrams_dropped = report.datagrams_dropped,
            "uplink switch"
        );
        match report.kind {
            SwitchKind::Planned => {
                state.totals.planned += 1;
                state.totals.planned_stall += report.stall;
            }
            SwitchKind::Unexpected => {
                state.totals.unexpected += 1;
                state.totals.unexpected_stall += report.stall;
            }
        }
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(report.clone());
        report
    }

    fn dial(&mut self, request: DialRequest) {
        if self.role() == Role::Client {
            self.actions.push_back(Action::Dial(request));
        }
    }

    // ---- time and output -----------------------------------------------------------------------

    /// When [`RelayCore::poll`] must run next at the latest.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let machines = self.sessions.values().filter_map(|s| s.machine.poll_timeout()).min();
        [self.engine.poll_at(now), machines].into_iter().flatten().min()
    }

    /// Runs the timers that are due and the engine, and moves the engine's output into the queues of
    /// the sessions' current paths (a few chunks each; the rest waits in the engine, which then stops
    /// reading the apps).
    pub fn poll(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.machine.poll_timeout().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for sid in due {
            if let Some(state) = self.sessions.get_mut(&sid) {
                state.machine.handle_timeout(now);
            }
            self.drive(sid, now);
        }
        self.engine.poll(now);
        self.refill();
    }

    /// Moves the engine's output into the queues of the sessions' current paths, while they have room.
    /// Returns whether anything moved.
    pub fn refill(&mut self) -> bool {
        let mut moved = false;
        for (&sid, state) in &self.sessions {
            let Some(path) = state.current.filter(|_| state.sending) else { continue };
            let Some(p) = self.paths.get_mut(&path) else { continue };
            self.engine.set_session_rate(sid, p.pace);
            while p.out.len() < PATH_QUEUE {
                let Some(chunk) = self.engine.pop_session_output(sid) else { break };
                p.out.push_back(chunk);
                moved = true;
            }
        }
        moved
    }

    /// How many of its `capacity` chunks the writer of `path` may hold: all, as long as a chunk is
    /// what the path carries in half a millisecond (relay::outqueue), so they drain within a few;
    /// [`SLOW_WRITER_DEPTH`] on a path so slow (under 65 Mbit/s) that even the smallest chunk takes
    /// longer.
    pub fn writer_depth(&self, path: PathId, capacity: usize) -> usize {
        match self.paths.get(&path) {
            Some(p) if super::outqueue::slot(p.pace) <= super::outqueue::MIN_SLOT => capacity.min(SLOW_WRITER_DEPTH),
            _ => capacity,
        }
    }

    /// The next chunk for `path`'s writer.
    pub fn pop_path_output(&mut self, path: PathId) -> Option<Bytes> {
        self.paths.get_mut(&path)?.out.pop_front()
    }

    /// Puts back a chunk the writer had no room for; it goes first next time.
    pub fn unpop_path_output(&mut self, path: PathId, chunk: Bytes) {
        if let Some(p) = self.paths.get_mut(&path) {
            p.out.push_front(chunk);
        }
    }

    /// The paths that have output queued.
    pub fn paths_with_output(&self) -> Vec<PathId> {
        self.paths.iter().filter(|(_, p)| !p.out.is_empty()).map(|(id, _)| *id).collect()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Every path and where it runs.
    pub fn paths(&self) -> impl Iterator<Item = (PathId, &PathInfo)> {
        self.paths.iter().map(|(id, p)| (*id, &p.info))
    }

    /// The daemon stops: every path gets a CLOSE (so the peer ends the session now instead of waiting
    /// for us to come back), every session ends.
    pub fn shutdown(&mut self, now: Instant) {
        let goodbye = encode(&Frame::Close { code: close_code::SHUTDOWN, reason: "the daemon is stopping" });
        for p in self.paths.values_mut() {
            p.out.push_back(goodbye.clone());
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id, "the daemon is stopping", now);
        }
    }

    /// Server: the configuration no longer has the peer with `public_key` as it was (a reload removed
    /// or changed it): its sessions end, and each of their paths gets a CLOSE saying why. Returns how
    /// many sessions ended.
    pub fn end_peer(&mut self, public_key: &str, reason: &str, now: Instant) -> usize {
        let ids: Vec<SessionId> =
            self.sessions.iter().filter(|(_, s)| s.peer.public_key == public_key).map(|(id, _)| *id).collect();
        let goodbye = encode(&Frame::Close { code: close_code::PEER_CHANGED, reason });
        for p in self.paths.values_mut().filter(|p| ids.contains(&p.session)) {
            p.out.push_back(goodbye.clone());
        }
        for id in &ids {
            self.end_session(*id, reason, now);
        }
        ids.len()
    }

    /// Closes a path; what is queued for it still goes out.
    fn close_path(&mut self, id: PathId) {
        if let Some(p) = self.paths.remove(&id) {
            self.actions.push_back(Action::ClosePath { path: id, last: p.out.into() });
        }
    }

    fn end_session(&mut self, sid: SessionId, why: &str, now: Instant) {
        let paths: Vec<PathId> = self.paths.iter().filter(|(_, p)| p.session == sid).map(|(id, _)| *id).collect();
        for p in paths {
            self.close_path(p);
        }
        let Some(state) = self.sessions.remove(&sid) else { return };
        if self.role() == Role::Client {
            self.abandoned.insert(sid.0);
        }
        if let Some(counters) = self.engine.remove_session(sid, now) {
            tracing::info!(
                peer = %state.peer.name,
                session = sid.0,
                reason = why,
                bytes_sent = counters.bytes_sent,
                bytes_received = counters.bytes_received,
                streams = counters.tcp_streams_opened,
                "session closed; its connections were reset"
            );
        }
        if self.switch_wanted.is_some() {
            self.switch_failed(format!("the session ended: {why}"));
        }
    }

    // ---- status --------------------------------------------------------------------------------

    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_>> {
        self.sessions.iter().map(|(id, s)| SessionView {
            id: *id,
            peer: &s.peer,
            path: s.current.and_then(|c| self.paths.get(&c)).map(|p| &p.info),
            rtt: s.current.and_then(|c| self.paths.get(&c)).and_then(|p| p.srtt_us).map(Duration::from_micros),
            epoch: s.machine.epoch(),
            switching: s.machine.is_switching(),
            stale_frames: s.stale_frames,
            control_malformed: s.control_malformed,
            paths_refused_limit: s.paths_refused_limit,
            paths_lost_not_reading: s.paths_lost_not_reading,
            switches: &s.history,
            switch_totals: s.totals,
            since: s.since,
        })
    }
}

impl SessionState {
    fn new(peer: PeerInfo, machine: Machine, current: Option<PathId>, now: Instant) -> Self {
        SessionState {
            peer,
            machine,
            current,
            sending: true,
            resends: Vec::new(),
            progress: None,
            history: VecDeque::new(),
            totals: SwitchTotals::default(),
            since: now,
            stale_frames: 0,
            control_malformed: 0,
            paths_refused_limit: 0,
            paths_lost_not_reading: 0,
        }
    }
}

fn offsets(engine: &Engine, sid: SessionId) -> Vec<StreamOffset> {
    engine.received_offsets(sid).into_iter().map(|(stream, received)| StreamOffset { stream, received }).collect()
}

fn encode(frame: &Frame<'_>) -> Bytes {
    let mut out = Vec::with_capacity(frame.encoded_len());
    // Cannot fail: handshake and control frames are far below the body limit.
    frame.encode(&mut out).expect("control frame encodes");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::engine::{EngineConfig, Role};

    fn sample(pace: Option<u64>) -> PathSample {
        PathSample {
            tcp_rtt: Duration::from_millis(20),
            jitter: Duration::from_millis(1),
            loss: 0.0,
            bytes: 0,
            delivery_rate: pace,
            pace,
        }
    }

    #[test]
    fn a_slow_path_gets_a_shallow_writer_queue() {
        let now = Instant::from_millis(0);
        let mut core =
            RelayCore::new(Engine::new(EngineConfig::new(Role::Server), now), TransitionConfig::default(), 1);
        let path = PathId(1);
        let info = PathInfo { local: None, remote: None, uplink: None, congestion_control: None };
        let peer = PeerInfo { name: "laptop".into(), public_key: "k".into(), switch_timeout: None };
        core.server_path_up(path, info, peer, 0, vec!["100.64.0.2".parse().unwrap()], now);
        assert_eq!(core.writer_depth(path, 8), 8, "rate unknown: as before");
        core.path_stats(path, sample(Some(10_000_000 / 8)));
        assert_eq!(core.writer_depth(path, 8), SLOW_WRITER_DEPTH, "10 Mbit/s");
        // An application-limited tick says nothing new.
        core.path_stats(path, sample(None));
        assert_eq!(core.writer_depth(path, 8), SLOW_WRITER_DEPTH);
        core.path_stats(path, sample(Some(100_000_000 / 8)));
        assert_eq!(core.writer_depth(path, 8), 8, "100 Mbit/s: 8 chunks of 6 KiB");
        assert_eq!(core.writer_depth(PathId(2), 8), 8, "no such path");
    }

    fn server(max_paths: usize, now: Instant) -> RelayCore {
        let mut config = EngineConfig::new(Role::Server);
        config.max_paths_per_session = max_paths;
        // A small queue limit (about 280 KiB), quick to fill.
        config.session_out_budget = 16 * 1024;
        config.max_streams_per_session = 16;
        RelayCore::new(Engine::new(config, now), TransitionConfig::default(), 1)
    }

    fn peer() -> PeerInfo {
        PeerInfo { name: "laptop".into(), public_key: "k".into(), switch_timeout: None }
    }

    fn vips() -> Vec<IpAddr> {
        vec!["100.64.0.2".parse().unwrap()]
    }

    /// The CLOSE codes of the ClosePath actions queued so far, by path (None: closed without one).
    fn closes(core: &mut RelayCore) -> Vec<(PathId, Option<u16>)> {
        std::iter::from_fn(|| core.poll_action())
            .filter_map(|a| match a {
                Action::ClosePath { path, last } => {
                    let code = last.iter().find_map(|b| match Frame::decode(b) {
                        Ok(Some((Frame::Close { code, .. }, _))) => Some(code),
                        _ => None,
                    });
                    Some((path, code))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_session_with_its_paths_full_refuses_another_and_other_sessions_still_join() {
        let now = Instant::from_millis(0);
        let mut core = server(3, now);
        let info = PathInfo::default();
        core.server_path_up(PathId(1), info.clone(), peer(), 0, vips(), now);
        let sid = core.sessions().next().unwrap().id;
        core.server_path_up(PathId(2), info.clone(), peer(), sid.0, vips(), now);
        core.server_path_up(PathId(3), info.clone(), peer(), sid.0, vips(), now);
        assert!(closes(&mut core).is_empty());
        core.server_path_up(PathId(4), info.clone(), peer(), sid.0, vips(), now);
        assert_eq!(closes(&mut core), vec![(PathId(4), Some(close_code::PATH_LIMIT))]);
        assert_eq!(core.paths().count(), 3);
        assert_eq!(core.sessions().next().unwrap().paths_refused_limit, 1);
        // Another client is not held to this one's count.
        let other = PeerInfo { name: "phone".into(), public_key: "k2".into(), switch_timeout: None };
        core.server_path_up(PathId(5), info.clone(), other, 0, vec!["100.64.0.3".parse().unwrap()], now);
        assert!(closes(&mut core).is_empty(), "the other client's path was refused");
        // A path of the full session that goes makes room again.
        core.path_lost(PathId(3), &PathLoss::PeerClosed, now);
        closes(&mut core);
        core.server_path_up(PathId(6), info, peer(), sid.0, vips(), now);
        assert!(closes(&mut core).is_empty(), "no room after a path was lost");
        // Fewer than two paths would make every switch fail: the floor is two.
        assert_eq!(server(0, now).max_paths, 2);
    }

    #[test]
    fn a_peer_that_does_not_read_loses_its_path_not_its_session() {
        let now = Instant::from_millis(0);
        let mut core = server(8, now);
        core.server_path_up(PathId(1), PathInfo::default(), peer(), 0, vips(), now);
        let sid = core.sessions().next().unwrap().id;
        // Refused OPENs (the server's id parity), none of whose RESETs the peer reads.
        let mut frames = Vec::new();
        for i in 0..40_000u32 {
            let open = Frame::Open {
                stream_id: 2 * i,
                src: "100.64.0.2:1000".parse().unwrap(),
                dst: "100.64.0.1:80".parse().unwrap(),
            };
            open.encode(&mut frames).unwrap();
        }
        for piece in frames.chunks(60_000) {
            core.path_bytes(PathId(1), piece, now);
        }
        assert_eq!(closes(&mut core), vec![(PathId(1), None)], "the path was not dropped");
        let view = core.sessions().next().expect("the session waits for its client to come back");
        assert_eq!((view.id, view.paths_lost_not_reading), (sid, 1));
        assert!(core.paths().next().is_none());
    }
}
