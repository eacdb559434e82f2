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
//!
//! Where things are: `join` (a path's first frame: HELLO on the server, WELCOME on the client),
//! `paths` (the path registry and what a path's reader delivers), `events` (what the core does for
//! each event of a session's machine), `switch` (`roamtun switch` and the switch records), `standby`
//! (warm standby paths and the link manager's view by uplink), `session` (sessions, their end and
//! status), `output` (timers, and the engine's output into the paths' queues).
//!
//! [`Event::ResumeOn`]: crate::transition::Event::ResumeOn
//! [`Event::StopSending`]: crate::transition::Event::StopSending

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::relay::engine::{Engine, Role, SessionId};
use crate::transition::{PathId, StreamOffset, TransitionConfig};
use crate::wire::Frame;
use paths::PathState;
use session::SessionState;

mod events;
mod join;
mod output;
mod paths;
mod receive;
mod session;
mod standby;
mod switch;
#[cfg(test)]
mod tests;

pub use paths::{PathInfo, PathSample};
pub use session::{PeerInfo, SessionView};
pub use switch::{SwitchError, SwitchReport, SwitchTotals};

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
    /// The session has as many paths as its limit allows already: this one is not taken.
    pub const PATH_LIMIT: u16 = 6;
    /// The server's configuration no longer has this client, or gives it other virtual IPs: the
    /// session ends (a changed peer dials a new one).
    pub const PEER_CHANGED: u16 = 7;
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
    /// Frames to write right behind HELLO, before WELCOME arrives: a lost session's SWITCH_UNEXPECTED,
    /// so the server resumes it one round trip sooner. The path that carried them comes up with
    /// `ahead_sent` ([`RelayCore::client_path_up`]).
    pub ahead: Option<Bytes>,
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
    /// Stop (`true`) or resume reading `path`: its frames wait for a planned switch's old path and
    /// hold as much as they may (`receive`); unread, the connection's TCP window slows the peer.
    ReadPaused { path: PathId, paused: bool },
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
}

impl RelayCore {
    /// `first_session`: server session ids count up from here; pick it so that ids differ across
    /// restarts (a client must never resume a stranger's session).
    pub fn new(engine: Engine, transition: TransitionConfig, first_session: u64) -> Self {
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

    fn dial(&mut self, request: DialRequest) {
        if self.role() == Role::Client {
            self.actions.push_back(Action::Dial(request));
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
