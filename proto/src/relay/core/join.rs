//! Paths joining: a client's HELLO on the server, a WELCOME on the client.

use std::collections::VecDeque;
use std::net::IpAddr;

use super::{close_code, encode, offsets, Action, DialRequest, PathInfo, PathState, PeerInfo, RelayCore, SessionState};
use crate::relay::engine::SessionId;
use crate::time::Instant;
use crate::transition::{ClientTransition, PathId, ServerTransition, TransitionError};
use crate::wire::{Frame, PROTOCOL_VERSION};

impl RelayCore {
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
                let limit = self.engine.session_limits(sid).map_or(2, |l| l.paths);
                if open >= limit {
                    tracing::warn!(peer = %peer.name, session = sid.0, ?path, paths = open, limit, "refusing a path: the session is at its path limit");
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
                let limits = peer.limits.over(self.engine.config().session_limits);
                if let Err(err) = self.engine.add_session(sid, virtual_ips, peer.lan_prefixes.clone(), limits) {
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
                let machine = Box::new(ServerTransition::new(transition, sid.0, path));
                self.sessions.insert(sid, SessionState::new(peer, machine, Some(path), now));
                sid
            }
        };
        let welcome = encode(&Frame::Welcome { version: PROTOCOL_VERSION, session_id: sid.0 });
        self.paths.insert(path, PathState::new(sid, info, VecDeque::from([welcome])));
    }

    /// Client: a path the shell opened, in the session the server's WELCOME named. A new session
    /// starts on it; a lost session resumes on it (SWITCH_UNEXPECTED, already written behind HELLO
    /// when `ahead_sent`: the request's [`DialRequest::ahead`]); a `roamtun switch` waiting for this
    /// uplink starts its planned switch on it.
    #[allow(clippy::too_many_arguments)]
    pub fn client_path_up(
        &mut self,
        path: PathId,
        info: PathInfo,
        peer: PeerInfo,
        session: u64,
        virtual_ips: Vec<IpAddr>,
        ahead_sent: bool,
        now: Instant,
    ) {
        let uplink = info.uplink.clone();
        self.paths.insert(path, PathState::new(SessionId(session), info, VecDeque::new()));
        if self.abandoned.contains(&session) {
            tracing::info!(session, ?path, "a path joined a session we already ended; asking for a new session");
            self.close_path(path);
            self.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false, ahead: None });
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
            let limits = peer.limits.over(self.engine.config().session_limits);
            if let Err(err) = self.engine.add_session(sid, virtual_ips, peer.lan_prefixes.clone(), limits) {
                tracing::error!(%err, "cannot start the session");
                self.close_path(path);
                return;
            }
            tracing::info!(session, ?path, uplink = ?uplink, "connected to the server");
            let machine = Box::new(ClientTransition::new(self.transition, session, path));
            self.sessions.insert(sid, SessionState::new(peer, machine, Some(path), now));
            return;
        };
        // Without it, the announcement may have reached the server over an earlier attempt that
        // failed: this resume proposes a higher epoch.
        let announced = state.announced.take().filter(|_| ahead_sent);
        let Some(machine) = state.machine.as_client() else { return };
        let received = offsets(&self.engine, sid);
        let resumed = match &announced {
            Some(sent) => machine.resume_on_announced(path, sent, &received, now),
            None => machine.resume_on(path, &received, now),
        };
        match resumed {
            // CNAPT-16*..17*: SWITCH_UNEXPECTED goes out on the new path.
            Ok(epoch) => tracing::info!(?path, uplink = ?uplink, epoch = epoch.0, "resuming the session on a new path"),
            Err(err @ TransitionError::StaleAnnouncement(_)) => {
                // The server may have resumed with it: this path goes, the next resume proposes a
                // higher epoch with the offsets of now.
                tracing::warn!(?path, %err, "closing the path");
                self.close_path(path);
                self.act(sid, crate::transition::Event::ResumeNeeded { candidate: None }, now);
            }
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
}
