//! The transition machines' outputs: what the core does for each [`Event`].

use super::switch::Progress;
use super::{encode, offsets, Action, DialRequest, RelayCore};
use crate::relay::engine::{Role, SessionId};
use crate::time::Instant;
use crate::transition::{Event, ExpiryReason};
use crate::wire::Frame;

impl RelayCore {
    /// Carries out what a session's machine asks for until it has nothing more to say.
    pub(super) fn drive(&mut self, sid: SessionId, now: Instant) {
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

    /// The record of the switch that starts now (its first event), leaving `from`.
    fn begin_progress(&mut self, sid: SessionId, from: crate::transition::PathId) {
        let label = self
            .paths
            .get(&from)
            .map(|p| p.info.label())
            .or_else(|| self.last_lost.as_ref().filter(|(lost, _)| *lost == from).map(|(_, l)| l.clone()));
        let before = self.engine.session_counters(sid).unwrap_or_default();
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        if state.progress.is_none() {
            state.progress = Some(Progress { stopped: None, from: label, before, resumed: None, replayed: 0 });
        }
    }

    pub(super) fn act(&mut self, sid: SessionId, event: Event, now: Instant) {
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        match event {
            Event::StopSending { path } => {
                // Whatever path the output went to (the old one, or a planned switch's new one): the
                // resume regenerates it from the replay buffers.
                state.send_on = None;
                self.engine.hold_datagrams(sid);
                self.begin_progress(sid, path);
                if let Some(p) = self.sessions.get_mut(&sid).and_then(|s| s.progress.as_mut()) {
                    p.stopped.get_or_insert(now);
                }
                self.receive_on(sid, None);
            }
            Event::Redirect { from, to } => {
                // The CUTOVERs are queued on both paths (drive queues a machine's messages before
                // acting on its events): the output goes on behind the new path's.
                state.send_on = Some(to);
                self.begin_progress(sid, from);
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
                if let (Some(path), Some(m)) = (candidate, state.machine.as_client()) {
                    if m.resume_on(path, &received, now).is_ok() {
                        return;
                    }
                }
                // No path to resume on: the dialer writes the SWITCH_UNEXPECTED behind its HELLO. It
                // stays valid until the path is up, as no peer stream bytes count until the resume.
                let announced = state.machine.as_client().and_then(|m| m.resume_message(&received));
                let ahead = announced.as_ref().map(|msg| encode(&Frame::Control { body: &msg.to_bytes() }));
                state.announced = announced;
                self.dial(DialRequest { resume: sid.0, uplink: None, avoid: lost, standby: false, ahead });
            }
            Event::Resend { stream, from } => state.resends.push((stream, from)),
            Event::ResumeOn { path, epoch, replay } => {
                let previous = state.current.replace(path);
                state.send_on = Some(path);
                if replay || !state.receive.takes(path) {
                    if !replay {
                        // Cannot happen: the planned steps follow both CUTOVERs on the old path.
                        tracing::error!(session = sid.0, ?path, receive = ?state.receive, "planned switch done before the peer's CUTOVERs");
                    }
                    self.receive_on(sid, Some(path));
                }
                let Some(state) = self.sessions.get_mut(&sid) else { return };
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
                    self.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false, ahead: None });
                }
            }
        }
    }
}
