//! The buffered IP transition protocol: planned and unexpected uplink switches of one session.
//!
//! A session outlives its relay connections ("paths"). A path is one authenticated TLS connection over
//! one uplink; each path a session uses gets an [`Epoch`] one higher than the last. This module holds
//! the two sans-IO state machines that move a session from one path to the next:
//! [`ClientTransition`] (the spec's CNAPT) and [`ServerTransition`] (the SNAPT). They exchange
//! [`ControlMessage`]s; they open no socket, read no clock and move no stream byte. Inputs are
//! `handle_*(…, now)` calls; outputs are [`poll_transmit`](ClientTransition::poll_transmit) (a
//! message and the path it must go out on), [`poll_event`](ClientTransition::poll_event) (what the
//! engine must do: stop sending, resend a stream from an offset, resume on a path, expire the session)
//! and [`poll_timeout`](ClientTransition::poll_timeout) (when to call `handle_timeout`, and why).
//!
//! # Planned switch (make-before-break, spec \[0118\]–\[0127\])
//!
//! The client daemon has already opened and authenticated the new path; the old one still works.
//!
//! ```text
//! CNAPT                      old path                       SNAPT
//!   | CNAPT-1..11: stream frames redirected to the new path  |
//!   |---- CUTOVER{e+1} (behind the last stream frame) ------>|
//!   |---- SWITCH_STEP1{e+1} -------------------------------->| SNAPT-1
//!   |==== CUTOVER{e+1} on the new path, then stream frames =>| SNAPT-2..7: redirected to that path
//!   |<--- CUTOVER{e+1} (old path), CUTOVER{e+1} (new path) --|
//!   |<--- LAST_MESSAGE_BEFORE_REDIRECTION{e+1} --------------| SNAPT-8
//!   |<--- ACK{e+1} ------------------------------------------| SNAPT-9, SNAPT-10: wait
//!   |---- LAST_MESSAGE_BEFORE_REDIRECTION{e+1} ------------->| CNAPT-12, CNAPT-13/14: wait
//!   |<--- OK_TO_REDIRECTION{e+1} ----------------------------| SNAPT-11, SNAPT-12: wait
//!   |---- CLIENT_SERVICES_READY_FOR_REDIRECTION{e+1} ------->| CNAPT-15..18, CNAPT-19: wait
//!   |<--- SERVER_SERVICES_READY_FOR_REDIRECTION{e+1} --------| SNAPT-13..15, SNAPT-16: wait
//!   |                          new path                      |
//!   |==== SWITCH_STEP2{e+1, session} =======================>| CNAPT-20..29; SNAPT-17..21
//!   |<=== ALL_REDIRECTED{e+1, []} ===========================| SNAPT-22, SNAPT-23: resume on new path
//!   | CNAPT-30..34: resume on new path                       |
//! ```
//!
//! Unlike the spec, no side stops forwarding: each moves its stream frames to the new path when it
//! cuts over ([`Event::Redirect`]), behind a CUTOVER on the old path and after one on the new; the
//! receiver (`relay::core`) takes the new path's frames only after the old path's CUTOVER, so each
//! direction keeps one order. The control steps run beside the data, unchanged. Each side's single
//! LAST_MESSAGE_BEFORE_REDIRECTION follows its CUTOVER on the old path: once both have crossed,
//! nothing is in flight there and the planned switch needs no resend (ALL_REDIRECTED carries an
//! empty offset list). A planned switch that falls back stops sending ([`Event::StopSending`]) and
//! resumes as an unexpected one.
//!
//! # Unexpected switch (spec \[0132\]–\[0136\])
//!
//! ```text
//! CNAPT                                                      SNAPT
//!   | old path lost: handle_path_lost                        | old path lost: handle_path_lost,
//!   | CNAPT-1*..11*: stop sending; Event::ResumeNeeded       |   switch timeout armed (\[0133\])
//!   | shell opens a path, calls resume_on(path, offsets)     |
//!   |==== SWITCH_UNEXPECTED{e', session, client offsets} ===>| SNAPT-1*..13*: Resend events
//!   |<=== ALL_REDIRECTED{e', server offsets} ================| SNAPT-14*..16*: resume on new path
//!   | CNAPT-19*..23*: Resend events, resume on new path      |
//! ```
//!
//! The server answers SWITCH_UNEXPECTED with ALL_REDIRECTED carrying its own received offsets (no
//! dedicated reply message). Each side then resends every stream from the offset the *peer* received;
//! the receiver drops bytes it already has (`RecvHalf`), so every byte arrives exactly once.
//!
//! # Reliability
//!
//! * **Epochs.** Every message carries the epoch being switched to. A message for any other epoch than
//!   the one a side expects is ignored: late messages from an old path cannot move the machine.
//! * **Retransmission is driven by the client.** The client resends its last message on a timer
//!   (`retransmit_initial`, doubling up to `retransmit_max`) until the answer it waits for arrives.
//!   The server keeps no retransmission timer: it answers every (duplicate) request idempotently with
//!   the reply of that step, so a lost server message is repaired by the client's next retransmission.
//! * **Step timeout.** If a planned step gets no answer within `step_timeout`, the client falls back
//!   to an unexpected switch (on the already open new path); the server, without progress for
//!   `step_timeout`, stops waiting for the planned steps and waits for SWITCH_UNEXPECTED under the
//!   switch timeout.
//! * **Switch timeout** (\[0133\]). The server, having lost the path (or given up a planned switch),
//!   expires the session `switch_timeout` (default 60 s) later unless a SWITCH_UNEXPECTED arrives.
//!   The client gives up `client_give_up` after losing its path.
//! * **A second switch requested during one is queued** (one slot; a newer request replaces the queued
//!   one: the latest decision wins). It starts as a planned switch as soon as the current switch ends.
//!
//! # Spec step → what it means here
//!
//! | spec step | here |
//! |---|---|
//! | CNAPT-1..11 (start of a planned switch; not in the seed excerpt, by analogy with CNAPT-1*..6*) | [`ClientTransition::request_switch`]: CUTOVER on both paths, [`Event::Redirect`] (redirect instead of stop), SWITCH_STEP1 sent |
//! | SNAPT-1 (retrieve the CNAPT ID) | the path is authenticated; one [`ServerTransition`] per session |
//! | SNAPT-2..6 (stop forwarding, buffer, flush) | on the client's CUTOVER on the new path: CUTOVER on both paths, [`Event::Redirect`]; what was queued on the old path goes out before its CUTOVER |
//! | SNAPT-7, SNAPT-10, CNAPT-13 (input streams wait for the last message) | the peer's data: its CUTOVER on the old path (`relay::core`); the steps: one wait per side for the peer's single LAST_MESSAGE_BEFORE_REDIRECTION |
//! | SNAPT-8, CNAPT-12 (last message in each output stream) | one LAST_MESSAGE_BEFORE_REDIRECTION after all stream data on the ordered old path |
//! | SNAPT-9 | ACK |
//! | SNAPT-11 / CNAPT-14 | OK_TO_REDIRECTION sent / awaited |
//! | CNAPT-15..17, SNAPT-13..14, CNAPT-20 (destroy emulation sockets) | nothing is destroyed: the relay streams and smoltcp sockets are independent of the path; recorded in the timeline only |
//! | CNAPT-18 / SNAPT-12 | CLIENT_SERVICES_READY_FOR_REDIRECTION sent / awaited |
//! | SNAPT-15 / CNAPT-19 | SERVER_SERVICES_READY_FOR_REDIRECTION sent / awaited |
//! | CNAPT-21..22 (destroy the old control socket, close the old connection) | [`Event::RetireOldPath`] |
//! | CNAPT-23..28 (new address, recreate sockets, new control socket) | already done: the new path was opened and authenticated before `request_switch` (make-before-break) |
//! | CNAPT-29 / SNAPT-16 | SWITCH_STEP2 sent on the new path / awaited |
//! | SNAPT-17..21, CNAPT-30..32 (update address, renew sockets) | the server adopts the path SWITCH_STEP2 came on; the streams move to it |
//! | SNAPT-22 / CNAPT-33 | ALL_REDIRECTED sent / awaited |
//! | SNAPT-23, CNAPT-34 (wake up, send buffered packets) | nothing was buffered: [`Event::ResumeOn`] + [`Event::SwitchDone`] |
//! | CNAPT-1*..6* (suspend, stop forwarding, store unsent packets) | [`ClientTransition::handle_path_lost`]: [`Event::StopSending`], [`Event::ResumeNeeded`]; unsent bytes stay in the replay buffer |
//! | CNAPT-7*..15* (destroy and recreate sockets, change address) | nothing to do beyond opening the new path (the shell) |
//! | CNAPT-16*..17* | [`ClientTransition::resume_on`]: SWITCH_UNEXPECTED with the client's received offsets on the new path |
//! | \[0133\] switch timeout | [`ServerTransition::handle_path_lost`] arms it; [`Event::SessionExpired`] when it elapses |
//! | SNAPT-1*..6* | SWITCH_UNEXPECTED accepted; [`Event::StopSending`] on the old path |
//! | SNAPT-7*..13* (destroy, update address, recreate sockets) | the server adopts the new path |
//! | SNAPT-14* / CNAPT-21* | ALL_REDIRECTED with the server's received offsets sent / awaited |
//! | SNAPT-15*, CNAPT-22* (resend stored unsent packets) | [`Event::Resend`] per stream, from the peer's received offset |
//! | SNAPT-16*, CNAPT-23* (wake up, send buffered packets) | [`Event::ResumeOn`] + [`Event::SwitchDone`] |
//!
//! What this module deliberately does not do: carry the messages (the CONTROL frame of `wire/`,
//! queued per path by `relay::core`), keep replay buffers, open paths, or choose uplinks.

mod client;
mod message;
mod server;

pub use client::ClientTransition;
pub use message::{ControlMessage, DecodeError, Epoch, StreamOffset};
pub use server::{ServerTransition, MAX_EPOCH_STEP};

use crate::time::{Duration, Instant};
use std::collections::BTreeMap;
use thiserror::Error;

/// Names one relay connection of a session. Assigned by the shell; opaque to the state machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathId(pub u64);

/// Timers and limits of the transition protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionConfig {
    /// First retransmission delay of a control message (doubles at every retransmission).
    pub retransmit_initial: Duration,
    /// Upper bound of the retransmission delay.
    pub retransmit_max: Duration,
    /// How long a planned step may go unanswered before the switch falls back to an unexpected one.
    pub step_timeout: Duration,
    /// How long the server keeps a session whose path is lost (\[0133\]'s switch timeout).
    pub switch_timeout: Duration,
    /// How long the client keeps trying to resume after losing its path.
    pub client_give_up: Duration,
}

impl Default for TransitionConfig {
    fn default() -> Self {
        TransitionConfig {
            retransmit_initial: Duration::from_millis(200),
            retransmit_max: Duration::from_secs(2),
            step_timeout: Duration::from_secs(3),
            switch_timeout: Duration::from_secs(60),
            client_give_up: Duration::from_secs(60),
        }
    }
}

/// Planned (make-before-break) or unexpected (the old path was lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchKind {
    /// Spec \[0118\]–\[0127\].
    Planned,
    /// Spec \[0132\]–\[0136\], including a planned switch that fell back.
    Unexpected,
}

/// One protocol step of a switch and when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineEntry {
    /// The spec step and message, e.g. `"CNAPT-12 LAST_MESSAGE_BEFORE_REDIRECTION sent"`.
    pub step: &'static str,
    /// When the machine took it.
    pub at: Instant,
}

/// What a finished switch looked like, for `roamtun status` and the per-switch log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchSummary {
    /// Planned or unexpected (a planned switch that fell back is unexpected).
    pub kind: SwitchKind,
    /// The epoch the session is on now.
    pub epoch: Epoch,
    /// The path the session left (`None` when the server never knew which path it was).
    pub from: Option<PathId>,
    /// The path the session is on now.
    pub to: PathId,
    /// Every step, in order.
    pub timeline: Vec<TimelineEntry>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpiryReason {
    /// Server: no SWITCH_UNEXPECTED within the switch timeout after the path was lost.
    SwitchTimeout,
    /// Client: no ALL_REDIRECTED within `client_give_up` after the path was lost.
    ClientGaveUp,
}

/// What the engine or daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Stop sending stream data and datagrams (hold them) and stop taking the peer's stream frames:
    /// the session left `path` and resumes with an offsets exchange (CNAPT-2*..6*, SNAPT-2*..6*, and
    /// a planned switch that falls back).
    StopSending { path: PathId },
    /// A planned switch: send stream frames and datagrams on `to` from now on. The CUTOVER markers
    /// were queued just before, behind the last frame on `from` and ahead of the first on `to`
    /// (CNAPT-1..11, SNAPT-2..8). The peer's frames are still taken from `from` until its own CUTOVER
    /// there.
    Redirect { from: PathId, to: PathId },
    /// Client: the old path is no longer needed and may be closed (CNAPT-21..22).
    RetireOldPath { path: PathId },
    /// Client: the session has no usable path; open one (a new uplink, or the same once it is back) and
    /// call [`ClientTransition::resume_on`]. `candidate` is an already open new path, if any.
    ResumeNeeded { candidate: Option<PathId> },
    /// Resend `stream` from byte offset `from` (what the peer received) on the new path before any new
    /// data: SNAPT-15*, CNAPT-22*.
    Resend { stream: u32, from: u64 },
    /// Send and receive stream data on `path` from now on; frames of older epochs are to be dropped.
    /// `replay`: the switch was unexpected, so what was in flight on the old path may be lost: every
    /// stream continues from the peer's received offset (the [`Event::Resend`]s just before, none for
    /// a stream the peer does not know). After a planned switch nothing was in flight (`false`).
    ResumeOn { path: PathId, epoch: Epoch, replay: bool },
    /// The switch is complete.
    SwitchDone(SwitchSummary),
    /// The session is over: reset its flows and free its resources.
    SessionExpired { reason: ExpiryReason },
}

/// Why [`ClientTransition::poll_timeout`] / [`ServerTransition::poll_timeout`] wants a wake-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerReason {
    /// Resend the last control message.
    Retransmit,
    /// A planned step went unanswered for too long.
    StepTimeout,
    /// Server: the switch timeout of a lost path (\[0133\]).
    SwitchTimeout,
    /// Client: the limit for resuming after a lost path.
    GiveUp,
}

/// Whether a switch request started at once or waits for the current switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchRequest {
    /// SWITCH_STEP1 for this epoch is queued for transmission.
    Started(Epoch),
    /// Another switch is in progress; this one starts when it ends (replacing any earlier queued one).
    Queued,
}

/// Why the transition machine refused an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TransitionError {
    /// The requested path is the one the session already uses.
    #[error("cannot switch to path {0:?}: the session already uses it")]
    AlreadyOnPath(PathId),
    /// The session has expired; nothing can resume it.
    #[error("cannot switch: the session has expired")]
    Expired,
    /// `resume_on` without a lost path.
    #[error("cannot resume on path {0:?}: the session has not lost its path")]
    NotLost(PathId),
    /// `resume_on_announced` with a SWITCH_UNEXPECTED that is no longer the one to send.
    #[error("cannot resume on path {0:?}: the SWITCH_UNEXPECTED written behind its HELLO is out of date")]
    StaleAnnouncement(PathId),
    /// Server: the client proposed an epoch too far above the highest one so far
    /// ([`MAX_EPOCH_STEP`]); the request is dropped.
    #[error(
        "refused a switch to epoch {proposed}: more than {MAX_EPOCH_STEP} above the highest epoch so far, {highest}"
    )]
    EpochJump {
        /// The epoch the client's request named.
        proposed: Epoch,
        /// The highest epoch the session had seen.
        highest: Epoch,
    },
}

/// What both machines share: the relay core drives a session's machine through this, whatever the
/// session's role. Inputs are `handle_*(…, now)`, outputs `poll_*()`; [`Transition::as_client`] reaches
/// what only the client does (open a switch, resume on a new path).
pub trait Transition {
    /// The epoch of the current path.
    fn epoch(&self) -> Epoch;

    /// Whether a switch is in progress (or the path is lost and not yet resumed).
    fn is_switching(&self) -> bool;

    /// The relay connection `path` failed.
    fn handle_path_lost(&mut self, path: PathId, now: Instant);

    /// A control message arrived on `path`. `received` is what this side received per stream; only
    /// the server reads it (to answer SWITCH_UNEXPECTED), and only the server refuses a message
    /// ([`TransitionError::EpochJump`]).
    fn handle_control(
        &mut self,
        path: PathId,
        msg: ControlMessage,
        received: &[StreamOffset],
        now: Instant,
    ) -> Result<(), TransitionError>;

    /// Acts on every timer that has elapsed at `now`.
    fn handle_timeout(&mut self, now: Instant);

    /// When to call [`Transition::handle_timeout`] next, and why.
    fn poll_timeout(&self) -> Option<(Instant, TimerReason)>;

    /// The next control message to send, and the path to send it on.
    fn poll_transmit(&mut self) -> Option<(PathId, ControlMessage)>;

    /// The next thing the engine or daemon must do.
    fn poll_event(&mut self) -> Option<Event>;

    /// The client's machine, for what only the client does; `None` on the server.
    fn as_client(&mut self) -> Option<&mut ClientTransition> {
        None
    }
}

/// A read-only view of what this side received per stream (the engine's `RecvHalf::received()`).
pub trait ReceivedOffsets {
    /// Every stream's received offset, in a stable order.
    fn received_offsets(&self) -> Vec<StreamOffset>;
}

impl ReceivedOffsets for [StreamOffset] {
    fn received_offsets(&self) -> Vec<StreamOffset> {
        self.to_vec()
    }
}

impl ReceivedOffsets for Vec<StreamOffset> {
    fn received_offsets(&self) -> Vec<StreamOffset> {
        self.clone()
    }
}

impl ReceivedOffsets for BTreeMap<u32, u64> {
    fn received_offsets(&self) -> Vec<StreamOffset> {
        self.iter().map(|(&stream, &received)| StreamOffset { stream, received }).collect()
    }
}

/// The timeline being recorded for the switch in progress.
#[derive(Debug, Clone, Default)]
struct Timeline(Vec<TimelineEntry>);

impl Timeline {
    fn record(&mut self, step: &'static str, at: Instant) {
        tracing::debug!(step, at_ms = at.total_millis(), "transition step");
        self.0.push(TimelineEntry { step, at });
    }
}

/// Control messages awaiting their answer, resent together with exponential backoff.
#[derive(Debug, Clone)]
struct Retransmit {
    msgs: Vec<(PathId, ControlMessage)>,
    next: Instant,
    interval: Duration,
}

impl Retransmit {
    fn new(msgs: Vec<(PathId, ControlMessage)>, config: &TransitionConfig, now: Instant) -> Self {
        Retransmit { msgs, next: now + config.retransmit_initial, interval: config.retransmit_initial }
    }

    /// Returns the messages again if their timer has elapsed, and re-arms it with a doubled delay.
    fn due(&mut self, config: &TransitionConfig, now: Instant) -> Vec<(PathId, ControlMessage)> {
        if now < self.next {
            return Vec::new();
        }
        self.interval = (self.interval * 2).min(config.retransmit_max);
        self.next = now + self.interval;
        self.msgs.clone()
    }
}

/// Earliest of the given deadlines.
fn earliest(deadlines: impl IntoIterator<Item = Option<(Instant, TimerReason)>>) -> Option<(Instant, TimerReason)> {
    deadlines.into_iter().flatten().min_by_key(|(at, _)| *at)
}
