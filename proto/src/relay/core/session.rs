//! Sessions: who each one talks to, its transition machine, its end, and its status.

use std::collections::VecDeque;

use super::receive::Receive;
use super::switch::{Progress, SwitchReport, SwitchTotals};
use super::{close_code, encode, PathInfo, RelayCore};
use crate::relay::engine::{PeerLimits, Role, SessionId};
use crate::relay::policy::IpPrefix;
use crate::time::{Duration, Instant};
use crate::transition::{ControlMessage, Epoch, PathId, Transition};
use crate::wire::Frame;

/// Who a session talks to, for status and logs.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub name: String,
    pub public_key: String,
    /// Server: this peer's own switch timeout (\[0133\]), e.g. long for a laptop that sleeps through
    /// the night; `None`: the daemon's.
    pub switch_timeout: Option<Duration>,
    /// Networks behind the client whose hosts speak from their own addresses (a router's LAN in
    /// routed mode; on the server, the peer's `lan_prefixes`, as WireGuard's AllowedIPs).
    pub lan_prefixes: Vec<IpPrefix>,
    /// Server: this peer's own limits (its `[[peer]]` table), over the engine's.
    pub limits: PeerLimits,
}

impl PeerInfo {
    /// A peer with the daemon's switch timeout and limits, and no LAN behind it.
    pub fn new(name: impl Into<String>, public_key: impl Into<String>) -> Self {
        PeerInfo {
            name: name.into(),
            public_key: public_key.into(),
            switch_timeout: None,
            lan_prefixes: Vec::new(),
            limits: PeerLimits::default(),
        }
    }
}

pub(super) struct SessionState {
    pub(super) peer: PeerInfo,
    /// Client or server, by the daemon's role.
    pub(super) machine: Box<dyn Transition + Send>,
    /// The path of the machine's epoch; `None` until the first path of a client session.
    pub(super) current: Option<PathId>,
    /// Where the engine's output goes: `current`, or the new path from a planned switch's
    /// `Redirect`; `None` from `StopSending` to `ResumeOn`.
    pub(super) send_on: Option<PathId>,
    /// Where the peer's stream frames count from (`receive`).
    pub(super) receive: Receive,
    /// The epoch of the last planned switch whose two CUTOVERs both arrived.
    pub(super) cutover_done: Epoch,
    /// The peer's received offsets of an unexpected switch, gathered from [`Event::Resend`].
    pub(super) resends: Vec<(u32, u64)>,
    /// The SWITCH_UNEXPECTED the dialer writes behind HELLO ([`super::DialRequest::ahead`]).
    pub(super) announced: Option<ControlMessage>,
    pub(super) progress: Option<Progress>,
    pub(super) history: VecDeque<SwitchReport>,
    pub(super) totals: SwitchTotals,
    pub(super) since: Instant,
    pub(super) stale_frames: u64,
    pub(super) control_malformed: u64,
    /// Server: paths of this session refused because it was at its path limit.
    pub(super) paths_refused_limit: u64,
    /// Paths dropped because the peer did not read what was queued for it.
    pub(super) paths_lost_not_reading: u64,
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
    /// Bytes of the peer's stream frames from a planned switch's new path that wait for the old
    /// path's CUTOVER (`receive`): at most the out budget plus the read that crossed it.
    pub held_bytes: usize,
    pub stale_frames: u64,
    pub control_malformed: u64,
    /// Server: paths refused because the session was at its path limit.
    pub paths_refused_limit: u64,
    /// Paths dropped because the peer did not read what was queued for it.
    pub paths_lost_not_reading: u64,
    /// Finished switches, oldest first (the last few).
    pub switches: &'a VecDeque<SwitchReport>,
    pub switch_totals: SwitchTotals,
    pub since: Instant,
}

impl RelayCore {
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

    /// Server: a reload gave the peer with `public_key` other limits; its running sessions take them
    /// (what they hold beyond them stays, see [`Engine::set_session_limits`]). Returns how many
    /// sessions changed.
    ///
    /// [`Engine::set_session_limits`]: crate::relay::engine::Engine::set_session_limits
    pub fn set_peer_limits(&mut self, public_key: &str, limits: PeerLimits) -> usize {
        let defaults = self.engine.config().session_limits;
        let mut changed = 0;
        for (id, state) in self.sessions.iter_mut().filter(|(_, s)| s.peer.public_key == public_key) {
            if state.peer.limits != limits {
                state.peer.limits = limits;
                self.engine.set_session_limits(*id, limits.over(defaults));
                changed += 1;
            }
        }
        changed
    }

    pub(super) fn end_session(&mut self, sid: SessionId, why: &str, now: Instant) {
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

    pub fn sessions(&self) -> impl Iterator<Item = SessionView<'_>> {
        self.sessions.iter().map(|(id, s)| SessionView {
            id: *id,
            peer: &s.peer,
            path: s.current.and_then(|c| self.paths.get(&c)).map(|p| &p.info),
            rtt: s.current.and_then(|c| self.paths.get(&c)).and_then(|p| p.srtt_us).map(Duration::from_micros),
            epoch: s.machine.epoch().0,
            switching: s.machine.is_switching(),
            held_bytes: s.receive.held_bytes(),
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
    pub(super) fn new(
        peer: PeerInfo,
        machine: Box<dyn Transition + Send>,
        current: Option<PathId>,
        now: Instant,
    ) -> Self {
        SessionState {
            peer,
            machine,
            current,
            send_on: current,
            receive: Receive::On(current),
            cutover_done: Epoch(0),
            resends: Vec::new(),
            announced: None,
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
