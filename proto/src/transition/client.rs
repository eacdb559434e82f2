//! The client (CNAPT) side of the transition protocol.

use super::{
    earliest, ControlMessage, Epoch, Event, ExpiryReason, PathId, ReceivedOffsets, Retransmit, StreamOffset,
    SwitchKind, SwitchRequest, SwitchSummary, Timeline, TimerReason, Transition, TransitionConfig, TransitionError,
};
use crate::time::Instant;
use std::collections::VecDeque;

/// Where a planned switch stands on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// SWITCH_STEP1 sent; waiting for ACK.
    Ack,
    /// CNAPT-13/14: LAST_MESSAGE_BEFORE_REDIRECTION sent; waiting for the server's and for OK_TO_REDIRECTION.
    Ok,
    /// CNAPT-19: CLIENT_SERVICES_READY_FOR_REDIRECTION sent.
    ServerReady,
    /// CNAPT-30..33: SWITCH_STEP2 sent on the new path; waiting for ALL_REDIRECTED.
    AllRedirected,
}

#[derive(Debug, Clone)]
enum State {
    /// On `path`, nothing in progress.
    Active,
    /// A planned switch from `path` to `new_path`.
    Planned { phase: Awaiting, new_path: PathId, target: Epoch, got_last: bool, got_ok: bool, step_deadline: Instant },
    /// The path is lost; waiting for the shell to open one and call `resume_on`.
    Lost { give_up: Instant },
    /// CNAPT-17*..21*: SWITCH_UNEXPECTED sent on `new_path`; waiting for ALL_REDIRECTED.
    Resuming { new_path: PathId, target: Epoch, give_up: Instant },
    /// Gave up; terminal.
    Expired,
}

/// The CNAPT state machine of one session. See the module documentation for the protocol.
#[derive(Debug)]
pub struct ClientTransition {
    config: TransitionConfig,
    session: u64,
    /// The epoch of the path the session is on (or was on, during a switch).
    epoch: Epoch,
    /// The highest epoch this side ever proposed: a new switch always uses a higher one.
    highest: Epoch,
    /// The path of `epoch`.
    path: PathId,
    state: State,
    kind: SwitchKind,
    retransmit: Option<Retransmit>,
    timeline: Timeline,
    queued: Option<PathId>,
    transmits: VecDeque<(PathId, ControlMessage)>,
    events: VecDeque<Event>,
}

impl ClientTransition {
    /// A session that has just been established on `path` (epoch 0), identified by `session` (the
    /// server's session id from WELCOME).
    pub fn new(config: TransitionConfig, session: u64, path: PathId) -> Self {
        Self::resumed(config, session, path, Epoch(0))
    }

    /// A session on `path` at `epoch`.
    pub fn resumed(config: TransitionConfig, session: u64, path: PathId, epoch: Epoch) -> Self {
        ClientTransition {
            config,
            session,
            epoch,
            highest: epoch,
            path,
            state: State::Active,
            kind: SwitchKind::Planned,
            retransmit: None,
            timeline: Timeline::default(),
            queued: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The path of the current epoch (during a switch: the path being left).
    pub fn path(&self) -> PathId {
        self.path
    }

    /// Whether the client gave up the session.
    pub fn is_expired(&self) -> bool {
        matches!(self.state, State::Expired)
    }

    /// The queued switch request, if any.
    pub fn queued_switch(&self) -> Option<PathId> {
        self.queued
    }

    /// The user or the decision task asks to move the session to `new_path`, which the daemon has
    /// already opened and authenticated (make-before-break).
    ///
    /// CNAPT-1..11, without the spec's stop: the client's stream frames move to the new path at once
    /// ([`Event::Redirect`]), behind a CUTOVER on the old path (its last frame there) and a CUTOVER
    /// first on the new one; SWITCH_STEP1 follows on the old path. The control steps then run as in
    /// the spec while the data flows. During another switch the request is queued and starts when
    /// that switch ends; a later request replaces a queued one.
    pub fn request_switch(&mut self, new_path: PathId, now: Instant) -> Result<SwitchRequest, TransitionError> {
        match self.state {
            State::Expired => Err(TransitionError::Expired),
            State::Active if new_path == self.path => Err(TransitionError::AlreadyOnPath(new_path)),
            State::Active => Ok(SwitchRequest::Started(self.start_planned(new_path, now))),
            _ => {
                tracing::debug!(?new_path, "switch requested during a switch: queued");
                self.queued = Some(new_path);
                Ok(SwitchRequest::Queued)
            }
        }
    }

    fn start_planned(&mut self, new_path: PathId, now: Instant) -> Epoch {
        let target = self.highest.next();
        self.highest = target;
        self.kind = SwitchKind::Planned;
        self.timeline = Timeline::default();
        self.timeline
            .record("CNAPT-1..11 stream frames redirected to the new path (CUTOVER on both), SWITCH_STEP1 sent", now);
        let cutover = ControlMessage::Cutover { epoch: target };
        self.transmits.push_back((self.path, cutover.clone()));
        // SWITCH_STEP1 after the old path's CUTOVER, the new path's CUTOVER beside it; both again on
        // the retransmission timer: the server answers SWITCH_STEP1 only once the CUTOVER told it the
        // new path. (A TCP path loses a message only with the path, so over TCP a repeated CUTOVER is
        // a duplicate the receiver ignores.) The transmits are queued before the Redirect is acted on,
        // so each CUTOVER is where it must be: behind the last stream frame on the old path, before
        // the first on the new one.
        self.send_all(vec![(self.path, ControlMessage::SwitchStep1 { epoch: target }), (new_path, cutover)], now);
        self.events.push_back(Event::Redirect { from: self.path, to: new_path });
        self.state = State::Planned {
            phase: Awaiting::Ack,
            new_path,
            target,
            got_last: false,
            got_ok: false,
            step_deadline: now + self.config.step_timeout,
        };
        target
    }

    /// A planned switch cannot finish: continue as an unexpected switch.
    fn fall_back(&mut self, candidate: Option<PathId>, give_up: Instant) {
        self.kind = SwitchKind::Unexpected;
        // The stream frames went out on the new path since the start: they stop until the resume.
        self.events.push_back(Event::StopSending { path: self.path });
        // The old path is retired unless it is the one to resume on (the new path was the one lost).
        if candidate != Some(self.path) {
            self.events.push_back(Event::RetireOldPath { path: self.path });
        }
        self.enter_lost(candidate, give_up);
    }

    fn enter_lost(&mut self, candidate: Option<PathId>, give_up: Instant) {
        self.retransmit = None;
        self.state = State::Lost { give_up };
        self.events.push_back(Event::ResumeNeeded { candidate });
    }

    /// The shell has a path again (a new uplink, or the old one back): resume the session on it.
    ///
    /// CNAPT-16*..17*: send SWITCH_UNEXPECTED with what this side received per stream (`received`,
    /// read once: from now on the engine must drop stream data from older epochs). CNAPT-18*..21*:
    /// wait for ALL_REDIRECTED.
    pub fn resume_on(
        &mut self,
        path: PathId,
        received: &(impl ReceivedOffsets + ?Sized),
        now: Instant,
    ) -> Result<Epoch, TransitionError> {
        let give_up = self.lost_since(path)?;
        let target = self.highest.next();
        let msg = ControlMessage::SwitchUnexpected {
            epoch: target,
            session: self.session,
            received: received.received_offsets(),
        };
        self.timeline.record("CNAPT-16*..17* SWITCH_UNEXPECTED sent on the new path", now);
        self.send(path, msg, now);
        self.highest = target;
        self.state = State::Resuming { new_path: path, target, give_up };
        Ok(target)
    }

    /// A SWITCH_UNEXPECTED for a path the shell has yet to open, if the session is lost: the dialer
    /// writes it right behind the HELLO, so the server resumes the session without waiting a round
    /// trip for WELCOME. Its epoch is taken now: the server may act on it although the path never
    /// reaches this side (a dial given up after writing it), so no other resume may propose it.
    pub fn resume_message(&mut self, received: &(impl ReceivedOffsets + ?Sized)) -> Option<ControlMessage> {
        if !matches!(self.state, State::Lost { .. }) {
            return None;
        }
        self.highest = self.highest.next();
        Some(ControlMessage::SwitchUnexpected {
            epoch: self.highest,
            session: self.session,
            received: received.received_offsets(),
        })
    }

    /// [`resume_on`](Self::resume_on) for a path whose dialer already wrote `sent` (the latest
    /// [`resume_message`](Self::resume_message)) behind its HELLO: the same step, nothing sent again
    /// (but repeated on the retransmission timer, like any step).
    ///
    /// Refused when `sent` is no longer the one to act on: a newer one was made, or a stream it names
    /// has received more since (which the core's receive side rules out). The server may have acted
    /// on it already; the next resume proposes a higher epoch and the server resends from that one's
    /// offsets.
    pub fn resume_on_announced(
        &mut self,
        path: PathId,
        sent: &ControlMessage,
        received: &(impl ReceivedOffsets + ?Sized),
        now: Instant,
    ) -> Result<Epoch, TransitionError> {
        let give_up = self.lost_since(path)?;
        let ControlMessage::SwitchUnexpected { epoch, session, received: announced } = sent else {
            return Err(TransitionError::StaleAnnouncement(path));
        };
        let now_received: std::collections::BTreeMap<u32, u64> =
            received.received_offsets().into_iter().map(|o| (o.stream, o.received)).collect();
        let same_offsets = announced.iter().all(|a| now_received.get(&a.stream).is_none_or(|&r| r == a.received));
        if *epoch != self.highest || *session != self.session || !same_offsets {
            return Err(TransitionError::StaleAnnouncement(path));
        }
        self.timeline.record("CNAPT-16*..17* SWITCH_UNEXPECTED sent on the new path, behind HELLO", now);
        self.retransmit = Some(Retransmit::new(vec![(path, sent.clone())], &self.config, now));
        self.state = State::Resuming { new_path: path, target: *epoch, give_up };
        Ok(*epoch)
    }

    /// When a lost session gives up, or why it cannot resume on `path`.
    fn lost_since(&self, path: PathId) -> Result<Instant, TransitionError> {
        match self.state {
            State::Lost { give_up } => Ok(give_up),
            State::Expired => Err(TransitionError::Expired),
            _ => Err(TransitionError::NotLost(path)),
        }
    }

    /// A control message arrived on `path`. Messages for another epoch than the one awaited, and
    /// duplicates of steps already taken, are ignored.
    pub fn handle_message(&mut self, path: PathId, msg: ControlMessage, now: Instant) {
        match self.state.clone() {
            State::Planned { phase, new_path, target, mut got_last, mut got_ok, .. } => {
                if msg.epoch() != target {
                    return;
                }
                let mut phase = phase;
                match msg {
                    ControlMessage::Ack { .. } if phase == Awaiting::Ack => {
                        self.timeline.record("[0119] ACK received", now);
                        self.timeline.record("CNAPT-12 LAST_MESSAGE_BEFORE_REDIRECTION sent", now);
                        self.send(self.path, ControlMessage::LastMessageBeforeRedirection { epoch: target }, now);
                        phase = Awaiting::Ok;
                    }
                    ControlMessage::LastMessageBeforeRedirection { .. }
                        if !got_last && matches!(phase, Awaiting::Ack | Awaiting::Ok) =>
                    {
                        self.timeline.record("CNAPT-13 server's LAST_MESSAGE_BEFORE_REDIRECTION received", now);
                        got_last = true;
                    }
                    ControlMessage::OkToRedirection { .. } if !got_ok && phase == Awaiting::Ok => {
                        self.timeline.record("CNAPT-14 OK_TO_REDIRECTION received", now);
                        got_ok = true;
                    }
                    ControlMessage::ServerServicesReadyForRedirection { .. } if phase == Awaiting::ServerReady => {
                        self.timeline.record("CNAPT-19 SERVER_SERVICES_READY_FOR_REDIRECTION received", now);
                        self.timeline.record("CNAPT-20..22 old path retired", now);
                        self.events.push_back(Event::RetireOldPath { path: self.path });
                        self.timeline.record("CNAPT-29 SWITCH_STEP2 sent on the new path", now);
                        self.send(new_path, ControlMessage::SwitchStep2 { epoch: target, session: self.session }, now);
                        phase = Awaiting::AllRedirected;
                    }
                    ControlMessage::AllRedirected { received, .. }
                        if phase == Awaiting::AllRedirected && path == new_path =>
                    {
                        self.timeline.record("CNAPT-33 ALL_REDIRECTED received", now);
                        self.finish(new_path, target, &received, now);
                        return;
                    }
                    _ => return,
                }
                if phase == Awaiting::Ok && got_last && got_ok {
                    self.timeline.record("CNAPT-15..17 streams kept (no emulation socket to destroy)", now);
                    self.timeline.record("CNAPT-18 CLIENT_SERVICES_READY_FOR_REDIRECTION sent", now);
                    self.send(self.path, ControlMessage::ClientServicesReadyForRedirection { epoch: target }, now);
                    phase = Awaiting::ServerReady;
                }
                // Any progress re-arms the step timeout.
                let step_deadline = now + self.config.step_timeout;
                self.state = State::Planned { phase, new_path, target, got_last, got_ok, step_deadline };
            }
            State::Resuming { new_path, target, .. } => {
                if let ControlMessage::AllRedirected { epoch, received } = msg {
                    if epoch == target && path == new_path {
                        self.timeline.record("CNAPT-21* ALL_REDIRECTED received", now);
                        self.finish(new_path, target, &received, now);
                    }
                }
            }
            State::Active | State::Lost { .. } | State::Expired => {}
        }
    }

    /// CNAPT-22*..23* / CNAPT-34: resend what the server misses, resume on the new path, start a
    /// queued switch.
    fn finish(&mut self, new_path: PathId, target: Epoch, server_received: &[super::StreamOffset], now: Instant) {
        if !server_received.is_empty() {
            self.timeline.record("CNAPT-22* resend from the server's received offsets", now);
        }
        for o in server_received {
            self.events.push_back(Event::Resend { stream: o.stream, from: o.received });
        }
        self.timeline.record(
            if self.kind == SwitchKind::Planned {
                "CNAPT-34 resume on the new path"
            } else {
                "CNAPT-23* resume on the new path"
            },
            now,
        );
        let from = self.path;
        self.epoch = target;
        self.path = new_path;
        self.retransmit = None;
        self.state = State::Active;
        let replay = self.kind == SwitchKind::Unexpected;
        self.events.push_back(Event::ResumeOn { path: new_path, epoch: target, replay });
        let timeline = std::mem::take(&mut self.timeline).0;
        tracing::info!(kind = ?self.kind, ?from, to = ?new_path, epoch = target.0, steps = timeline.len(), "uplink switch done");
        self.events.push_back(Event::SwitchDone(SwitchSummary {
            kind: self.kind,
            epoch: target,
            from: Some(from),
            to: new_path,
            timeline,
        }));
        if let Some(next) = self.queued.take() {
            if next != self.path {
                self.start_planned(next, now);
            }
        }
    }

    fn send(&mut self, path: PathId, msg: ControlMessage, now: Instant) {
        self.send_all(vec![(path, msg)], now);
    }

    /// Sends `msgs` now and again on the retransmission timer, until the answer comes.
    fn send_all(&mut self, msgs: Vec<(PathId, ControlMessage)>, now: Instant) {
        self.transmits.extend(msgs.iter().cloned());
        self.retransmit = Some(Retransmit::new(msgs, &self.config, now));
    }

    fn expire(&mut self, now: Instant) {
        self.timeline.record("client gave up: no path within the limit", now);
        tracing::info!(session = self.session, "session given up: no path within the limit");
        self.state = State::Expired;
        self.retransmit = None;
        self.queued = None;
        self.events.push_back(Event::SessionExpired { reason: ExpiryReason::ClientGaveUp });
    }
}

impl Transition for ClientTransition {
    /// The epoch of the current path.
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether a switch is in progress (or the path is lost and not yet resumed).
    fn is_switching(&self) -> bool {
        !matches!(self.state, State::Active | State::Expired)
    }

    /// The shell saw `path` fail (link down, address gone, transport timeout, connection reset).
    ///
    /// CNAPT-1*..6*: stop sending ([`Event::StopSending`]); the unsent and unacknowledged bytes stay
    /// in the replay buffers. [`Event::ResumeNeeded`] asks the shell for a new path. Losing the old
    /// path after SWITCH_STEP2 was sent is expected (CNAPT-21) and changes nothing; losing a path the
    /// session does not use is ignored.
    fn handle_path_lost(&mut self, path: PathId, now: Instant) {
        let give_up = now + self.config.client_give_up;
        match self.state.clone() {
            State::Active if path == self.path => {
                self.kind = SwitchKind::Unexpected;
                self.timeline = Timeline::default();
                self.events.push_back(Event::StopSending { path });
                self.timeline.record("CNAPT-1*..6* path lost, stop sending", now);
                self.enter_lost(None, give_up);
            }
            State::Planned { phase, new_path, .. } => {
                if path == self.path && phase != Awaiting::AllRedirected {
                    self.timeline.record("CNAPT-1*..6* old path lost during a planned switch", now);
                    self.fall_back(Some(new_path), give_up);
                } else if path == new_path {
                    self.timeline.record("CNAPT-1*..6* new path lost during a planned switch", now);
                    let candidate = (phase != Awaiting::AllRedirected).then_some(self.path);
                    self.fall_back(candidate, give_up);
                }
            }
            State::Resuming { new_path, give_up, .. } if path == new_path => {
                self.timeline.record("CNAPT-1*..6* resumption path lost", now);
                self.enter_lost(None, give_up);
            }
            _ => {}
        }
    }

    /// Acts on every timer that has elapsed at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Planned { step_deadline, new_path, .. } if now >= step_deadline => {
                self.timeline.record("step timeout: planned switch falls back to an unexpected switch", now);
                self.fall_back(Some(new_path), now + self.config.client_give_up);
                return;
            }
            State::Lost { give_up } | State::Resuming { give_up, .. } if now >= give_up => {
                self.expire(now);
                return;
            }
            _ => {}
        }
        if let Some(r) = self.retransmit.as_mut() {
            for t in r.due(&self.config, now) {
                tracing::debug!(msg = t.1.name(), "control message retransmitted");
                self.transmits.push_back(t);
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, and why.
    fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let retransmit = self.retransmit.as_ref().map(|r| (r.next, TimerReason::Retransmit));
        let limit = match self.state {
            State::Planned { step_deadline, .. } => Some((step_deadline, TimerReason::StepTimeout)),
            State::Lost { give_up } | State::Resuming { give_up, .. } => Some((give_up, TimerReason::GiveUp)),
            State::Active | State::Expired => None,
        };
        earliest([limit, retransmit])
    }

    /// The next control message to send, and the path to send it on.
    fn poll_transmit(&mut self) -> Option<(PathId, ControlMessage)> {
        self.transmits.pop_front()
    }

    /// The next thing the engine or daemon must do.
    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn handle_control(
        &mut self,
        path: PathId,
        msg: ControlMessage,
        _received: &[StreamOffset],
        now: Instant,
    ) -> Result<(), TransitionError> {
        self.handle_message(path, msg, now);
        Ok(())
    }

    fn as_client(&mut self) -> Option<&mut ClientTransition> {
        Some(self)
    }
}
