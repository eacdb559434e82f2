//! The server (SNAPT) side of the transition protocol.

use super::{
    earliest, ControlMessage, Epoch, Event, ExpiryReason, PathId, ReceivedOffsets, StreamOffset, SwitchKind,
    SwitchSummary, Timeline, TimerReason, Transition, TransitionConfig, TransitionError,
};
use crate::time::Instant;
use std::collections::VecDeque;

/// How far above the highest epoch seen so far a client may propose the next one.
///
/// An honest client proposes its own highest + 1 for every switch it starts, planned or unexpected,
/// so it runs ahead of the server only by the proposals that never arrived: resumptions whose path
/// died before their SWITCH_UNEXPECTED got through, at most one per dial (100 ms apart at the
/// shortest backoff, for the 60 s give-up: 600). Without a bound, a client could propose
/// `u32::MAX` and leave its session on the last epoch, where no further switch can be proposed.
pub const MAX_EPOCH_STEP: u32 = 1024;

/// Where a planned switch stands on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    /// The client's CUTOVER came on its new path first and our output is redirected there; waiting
    /// for SWITCH_STEP1 on the old path.
    Step1,
    /// SWITCH_STEP1 came first; waiting for the client's CUTOVER on its new path, which names the
    /// path to redirect our output to (SNAPT-2..8 need it).
    Cutover,
    /// SNAPT-10: LAST_MESSAGE_BEFORE_REDIRECTION and ACK sent; waiting for the client's last message.
    ClientLast,
    /// SNAPT-12: OK_TO_REDIRECTION sent; waiting for CLIENT_SERVICES_READY_FOR_REDIRECTION.
    ClientReady,
    /// SNAPT-16: SERVER_SERVICES_READY_FOR_REDIRECTION sent; waiting for SWITCH_STEP2 on a new path.
    Step2,
}

#[derive(Debug, Clone)]
enum State {
    /// On `path`, nothing in progress.
    Active,
    /// A planned switch to `target`, begun on the old path `path`; `new_path` once the client's
    /// CUTOVER named it.
    Planned { phase: Awaiting, target: Epoch, new_path: Option<PathId>, step_deadline: Instant },
    /// \[0133\]: the path is lost (or a planned switch stalled); waiting for SWITCH_UNEXPECTED until
    /// `switch_deadline`.
    AwaitingResume,
    /// The switch timeout elapsed; terminal.
    Expired,
}

/// The SNAPT state machine of one session. See the module documentation for the protocol.
#[derive(Debug)]
pub struct ServerTransition {
    config: TransitionConfig,
    session: u64,
    epoch: Epoch,
    /// The highest epoch the client ever proposed; SWITCH_UNEXPECTED must be above it.
    highest: Epoch,
    /// The path of `epoch`.
    path: PathId,
    state: State,
    kind: SwitchKind,
    /// The switch timeout, armed while the session has no working path.
    switch_deadline: Option<Instant>,
    /// The ALL_REDIRECTED that completed `epoch`, resent to duplicates of the request that caused it.
    last_reply: Option<ControlMessage>,
    timeline: Timeline,
    transmits: VecDeque<(PathId, ControlMessage)>,
    events: VecDeque<Event>,
}

impl ServerTransition {
    /// A session that has just been established on `path` (epoch 0).
    pub fn new(config: TransitionConfig, session: u64, path: PathId) -> Self {
        ServerTransition {
            config,
            session,
            epoch: Epoch(0),
            highest: Epoch(0),
            path,
            state: State::Active,
            kind: SwitchKind::Planned,
            switch_deadline: None,
            last_reply: None,
            timeline: Timeline::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The path of the current epoch (during a switch: the path being left).
    pub fn path(&self) -> PathId {
        self.path
    }

    /// Whether the switch timeout expired the session.
    pub fn is_expired(&self) -> bool {
        matches!(self.state, State::Expired)
    }

    /// A control message arrived on `path`. `received` is read only to answer SWITCH_UNEXPECTED
    /// (from then on the engine must drop stream data from older epochs). Messages for epochs other
    /// than the one awaited are ignored; a duplicate request is answered again.
    ///
    /// A request that proposes an epoch more than [`MAX_EPOCH_STEP`] above the highest so far is
    /// refused ([`TransitionError::EpochJump`]) and changes nothing.
    pub fn handle_message(
        &mut self,
        path: PathId,
        msg: ControlMessage,
        received: &(impl ReceivedOffsets + ?Sized),
        now: Instant,
    ) -> Result<(), TransitionError> {
        if matches!(self.state, State::Expired) {
            return Ok(());
        }
        let e = msg.epoch();
        match msg {
            ControlMessage::SwitchUnexpected { session, received: client_received, .. } => {
                if session != self.session {
                    return Ok(());
                }
                if e > self.highest {
                    self.check_step(e)?;
                    self.accept_unexpected(path, e, &client_received, received, now);
                } else if e == self.epoch && matches!(self.state, State::Active) {
                    self.resend_reply(path, e);
                }
            }
            ControlMessage::SwitchStep2 { session, .. } => {
                if session != self.session {
                    return Ok(());
                }
                match self.state {
                    State::Planned { phase: Awaiting::Step2, target, new_path, .. }
                        if e == target && new_path == Some(path) =>
                    {
                        self.timeline.record("SNAPT-16 SWITCH_STEP2 received on the new path", now);
                        self.timeline.record("SNAPT-17..21 session moved to the new path", now);
                        let reply = ControlMessage::AllRedirected { epoch: e, received: Vec::new() };
                        self.timeline.record("SNAPT-22 ALL_REDIRECTED sent", now);
                        self.transmits.push_back((path, reply.clone()));
                        self.last_reply = Some(reply);
                        self.timeline.record("SNAPT-23 resume on the new path", now);
                        self.finish(path, e);
                    }
                    State::Active if e == self.epoch => self.resend_reply(path, e),
                    _ => {}
                }
            }
            ControlMessage::SwitchStep1 { .. } => match self.state {
                State::Active if e > self.highest && path == self.path => {
                    self.check_step(e)?;
                    self.begin(e);
                    self.timeline.record("SNAPT-1 SWITCH_STEP1 received", now);
                    // SNAPT-2..9 wait for the client's CUTOVER on its new path: our own CUTOVER and
                    // LAST_MESSAGE_BEFORE_REDIRECTION may only follow our last frame on the old path.
                    self.enter(Awaiting::Cutover, e, None, now);
                }
                State::Planned { phase: Awaiting::Step1, target, new_path, .. } if e == target && path == self.path => {
                    self.timeline.record("SNAPT-1 SWITCH_STEP1 received", now);
                    self.timeline.record("SNAPT-8 LAST_MESSAGE_BEFORE_REDIRECTION sent", now);
                    self.timeline.record("SNAPT-9 ACK sent", now);
                    self.reply_step1(e);
                    self.enter(Awaiting::ClientLast, e, new_path, now);
                }
                State::Planned { phase: Awaiting::ClientLast, target, .. } if e == target => self.reply_step1(e),
                _ => {}
            },
            ControlMessage::Cutover { .. } if path != self.path => match self.state {
                // The client moved its stream frames to `path` before its SWITCH_STEP1 arrived.
                State::Active if e > self.highest => {
                    self.check_step(e)?;
                    self.begin(e);
                    self.redirect(path, e, now);
                    self.enter(Awaiting::Step1, e, Some(path), now);
                }
                State::Planned { phase: Awaiting::Cutover, target, .. } if e == target => {
                    self.redirect(path, e, now);
                    self.timeline.record("SNAPT-8 LAST_MESSAGE_BEFORE_REDIRECTION sent", now);
                    self.timeline.record("SNAPT-9 ACK sent", now);
                    self.reply_step1(e);
                    self.enter(Awaiting::ClientLast, e, Some(path), now);
                }
                _ => {}
            },
            // The client's CUTOVER on the old path orders the data (relay::core), not the steps.
            ControlMessage::Cutover { .. } => {}
            ControlMessage::LastMessageBeforeRedirection { .. } => match self.state {
                State::Planned { phase: Awaiting::ClientLast, target, .. } if e == target => {
                    self.timeline.record("SNAPT-10 client's LAST_MESSAGE_BEFORE_REDIRECTION received", now);
                    self.timeline.record("SNAPT-11 OK_TO_REDIRECTION sent", now);
                    self.reply_last(e);
                    self.progress(Awaiting::ClientReady, e, now);
                }
                State::Planned { phase: Awaiting::ClientReady, target, .. } if e == target => self.reply_last(e),
                _ => {}
            },
            ControlMessage::ClientServicesReadyForRedirection { .. } => match self.state {
                State::Planned { phase: Awaiting::ClientReady, target, .. } if e == target => {
                    self.timeline.record("SNAPT-12 CLIENT_SERVICES_READY_FOR_REDIRECTION received", now);
                    self.timeline.record("SNAPT-13..14 streams kept (no emulation socket to destroy)", now);
                    self.timeline.record("SNAPT-15 SERVER_SERVICES_READY_FOR_REDIRECTION sent", now);
                    self.reply_ready(e);
                    self.progress(Awaiting::Step2, e, now);
                }
                State::Planned { phase: Awaiting::Step2, target, .. } if e == target => self.reply_ready(e),
                _ => {}
            },
            // Server-to-client messages are never valid here.
            ControlMessage::Ack { .. }
            | ControlMessage::OkToRedirection { .. }
            | ControlMessage::ServerServicesReadyForRedirection { .. }
            | ControlMessage::AllRedirected { .. } => {}
        }
        Ok(())
    }

    /// Whether the client may move on to `proposed` from the highest epoch so far.
    fn check_step(&self, proposed: Epoch) -> Result<(), TransitionError> {
        if proposed.0 - self.highest.0 > MAX_EPOCH_STEP {
            return Err(TransitionError::EpochJump { proposed, highest: self.highest });
        }
        Ok(())
    }

    /// A planned switch to `epoch` begins.
    fn begin(&mut self, epoch: Epoch) {
        self.highest = epoch;
        self.kind = SwitchKind::Planned;
        self.timeline = Timeline::default();
    }

    /// SNAPT-2..7: our stream frames move to `new_path` (the client's CUTOVER came on it), behind a
    /// CUTOVER on the old path and after one on the new; the planned steps go on beside the data.
    fn redirect(&mut self, new_path: PathId, epoch: Epoch, now: Instant) {
        self.timeline.record("SNAPT-2..7 client's CUTOVER on the new path; stream frames redirected there", now);
        self.transmits.push_back((self.path, ControlMessage::Cutover { epoch }));
        self.transmits.push_back((new_path, ControlMessage::Cutover { epoch }));
        self.events.push_back(Event::Redirect { from: self.path, to: new_path });
    }

    fn enter(&mut self, phase: Awaiting, target: Epoch, new_path: Option<PathId>, now: Instant) {
        self.state = State::Planned { phase, target, new_path, step_deadline: now + self.config.step_timeout };
    }

    /// SNAPT-8, SNAPT-9 (again for a duplicate SWITCH_STEP1).
    fn reply_step1(&mut self, epoch: Epoch) {
        self.transmits.push_back((self.path, ControlMessage::LastMessageBeforeRedirection { epoch }));
        self.transmits.push_back((self.path, ControlMessage::Ack { epoch }));
    }

    /// SNAPT-11 (with our LAST_MESSAGE again, in case the first one was lost).
    fn reply_last(&mut self, epoch: Epoch) {
        self.transmits.push_back((self.path, ControlMessage::LastMessageBeforeRedirection { epoch }));
        self.transmits.push_back((self.path, ControlMessage::OkToRedirection { epoch }));
    }

    /// SNAPT-15.
    fn reply_ready(&mut self, epoch: Epoch) {
        self.transmits.push_back((self.path, ControlMessage::ServerServicesReadyForRedirection { epoch }));
    }

    fn progress(&mut self, phase: Awaiting, target: Epoch, now: Instant) {
        let new_path = match self.state {
            State::Planned { new_path, .. } => new_path,
            _ => None,
        };
        self.enter(phase, target, new_path, now);
    }

    fn resend_reply(&mut self, path: PathId, epoch: Epoch) {
        if let Some(reply) = self.last_reply.clone().filter(|r| r.epoch() == epoch && path == self.path) {
            self.transmits.push_back((path, reply));
        }
    }

    /// SNAPT-1*..16*.
    fn accept_unexpected(
        &mut self,
        path: PathId,
        epoch: Epoch,
        client_received: &[super::StreamOffset],
        received: &(impl ReceivedOffsets + ?Sized),
        now: Instant,
    ) {
        if matches!(self.state, State::Active) {
            self.timeline = Timeline::default();
            self.events.push_back(Event::StopSending { path: self.path });
        }
        self.kind = SwitchKind::Unexpected;
        self.highest = epoch;
        self.timeline.record("SNAPT-1*..6* SWITCH_UNEXPECTED received, stop sending on the old path", now);
        self.timeline.record("SNAPT-7*..13* session moved to the new path", now);
        let reply = ControlMessage::AllRedirected { epoch, received: received.received_offsets() };
        self.timeline.record("SNAPT-14* ALL_REDIRECTED sent with the server's received offsets", now);
        self.transmits.push_back((path, reply.clone()));
        self.last_reply = Some(reply);
        self.timeline.record("SNAPT-15* resend from the client's received offsets", now);
        for o in client_received {
            self.events.push_back(Event::Resend { stream: o.stream, from: o.received });
        }
        self.timeline.record("SNAPT-16* resume on the new path", now);
        self.finish(path, epoch);
    }

    fn finish(&mut self, new_path: PathId, epoch: Epoch) {
        let from = self.path;
        self.epoch = epoch;
        self.path = new_path;
        self.state = State::Active;
        self.switch_deadline = None;
        let replay = self.kind == SwitchKind::Unexpected;
        self.events.push_back(Event::ResumeOn { path: new_path, epoch, replay });
        let timeline = std::mem::take(&mut self.timeline).0;
        tracing::info!(session = self.session, kind = ?self.kind, ?from, to = ?new_path, epoch = epoch.0, "uplink switch done");
        self.events.push_back(Event::SwitchDone(SwitchSummary {
            kind: self.kind,
            epoch,
            from: Some(from),
            to: new_path,
            timeline,
        }));
    }
}

impl Transition for ServerTransition {
    /// The epoch of the current path.
    fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Whether a switch is in progress or the session waits for its client to come back.
    fn is_switching(&self) -> bool {
        !matches!(self.state, State::Active | State::Expired)
    }

    /// The relay connection `path` failed. If it is the session's path, \[0133\]: stop sending and arm
    /// the switch timeout; a SWITCH_UNEXPECTED before it resumes the session. Losing the old path while
    /// waiting for SWITCH_STEP2 is expected (the client closes it, CNAPT-21) but arms the timeout too.
    fn handle_path_lost(&mut self, path: PathId, now: Instant) {
        let new_path = match self.state {
            State::Planned { new_path, .. } => new_path,
            _ => None,
        };
        if path != self.path && Some(path) != new_path {
            return;
        }
        match self.state {
            State::Active => {
                self.kind = SwitchKind::Unexpected;
                self.timeline = Timeline::default();
                self.events.push_back(Event::StopSending { path });
                self.timeline.record("[0133] path lost, switch timeout armed", now);
                self.state = State::AwaitingResume;
            }
            State::Planned { phase: Awaiting::Step2, .. } if path == self.path => {
                self.timeline.record("old path closed, switch timeout armed", now);
            }
            State::Planned { .. } => {
                self.timeline.record("[0133] a path lost during a planned switch, switch timeout armed", now);
                self.kind = SwitchKind::Unexpected;
                // Our stream frames may have gone out on the new path: they stop until the resume.
                self.events.push_back(Event::StopSending { path: self.path });
                self.state = State::AwaitingResume;
            }
            State::AwaitingResume | State::Expired => return,
        }
        self.switch_deadline.get_or_insert(now + self.config.switch_timeout);
    }

    /// Acts on every timer that has elapsed at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        if self.is_expired() {
            return;
        }
        if let Some(deadline) = self.switch_deadline {
            if now >= deadline {
                self.timeline.record("[0133] switch timeout: session expired", now);
                tracing::info!(
                    session = self.session,
                    "session expired: client did not come back within the switch timeout"
                );
                self.state = State::Expired;
                self.switch_deadline = None;
                self.events.push_back(Event::SessionExpired { reason: ExpiryReason::SwitchTimeout });
                return;
            }
        }
        if let State::Planned { step_deadline, .. } = self.state {
            if now >= step_deadline {
                self.timeline.record("step timeout: waiting for SWITCH_UNEXPECTED", now);
                self.kind = SwitchKind::Unexpected;
                self.events.push_back(Event::StopSending { path: self.path });
                self.state = State::AwaitingResume;
                self.switch_deadline.get_or_insert(now + self.config.switch_timeout);
            }
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next, and why.
    fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let step = match self.state {
            State::Planned { step_deadline, .. } => Some((step_deadline, TimerReason::StepTimeout)),
            _ => None,
        };
        earliest([self.switch_deadline.map(|d| (d, TimerReason::SwitchTimeout)), step])
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
        received: &[StreamOffset],
        now: Instant,
    ) -> Result<(), TransitionError> {
        self.handle_message(path, msg, received, now)
    }
}
