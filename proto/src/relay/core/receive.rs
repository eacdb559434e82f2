//! Which path a session takes the peer's stream frames from, and the CUTOVER of a planned switch.
//!
//! In a planned switch each side moves its sending to the new path at once: it writes a CUTOVER on
//! the old path behind its last frame there, and one on the new path ahead of its first. The
//! receiver keeps one order per direction by taking the old path's frames up to the peer's CUTOVER
//! there, and only then the new path's; until then the new path's frames wait here, in arrival order,
//! within the session's out budget. Past it, the new path's reader stops reading
//! ([`Action::ReadPaused`]), so its TCP window closes and the peer slows down: nothing is dropped and
//! nothing grows without bound. An unexpected switch (the old path lost before its CUTOVER arrived,
//! a step timeout) takes nothing from any path until its offsets exchange resumes the session; the
//! frames held are discarded then, because the peer resends from the offsets this side reports
//! (they do not count what was held), so nothing is lost and nothing arrives twice.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{Action, RelayCore};
use crate::relay::engine::SessionId;
use crate::time::Instant;
use crate::transition::{Epoch, PathId};

/// Where a session's peer stream frames count from.
#[derive(Debug)]
pub(super) enum Receive {
    /// From this path only; `None`: from no path (before the first one, or during an unexpected
    /// switch until the session resumes).
    On(Option<PathId>),
    /// The peer's CUTOVER for `epoch` came on `new`: `old`'s frames still count, up to its CUTOVER
    /// there; `new`'s wait in `held`, in order.
    Holding { old: PathId, new: PathId, epoch: Epoch, held: VecDeque<Bytes>, bytes: usize, paused: bool },
    /// The peer's CUTOVER for `epoch` came on `old` first: nothing counts until the one on its new path.
    AwaitingNew { old: PathId, epoch: Epoch },
}

impl Receive {
    /// Whether stream frames from `path` are to be taken now.
    pub(super) fn takes(&self, path: PathId) -> bool {
        match self {
            Receive::On(p) => *p == Some(path),
            Receive::Holding { old, .. } => *old == path,
            Receive::AwaitingNew { .. } => false,
        }
    }

    /// Bytes held until the old path's CUTOVER.
    pub(super) fn held_bytes(&self) -> usize {
        match self {
            Receive::Holding { bytes, .. } => *bytes,
            _ => 0,
        }
    }

    /// Whether `path` is one this receive side waits on (its loss breaks the order it keeps).
    pub(super) fn waits_on(&self, path: PathId) -> bool {
        match self {
            Receive::On(_) => false,
            Receive::Holding { old, new, .. } => *old == path || *new == path,
            Receive::AwaitingNew { old, .. } => *old == path,
        }
    }
}

impl RelayCore {
    /// Stream frames from `path` that must wait for the old path's CUTOVER: held (copied, within the
    /// budget; past it the path's reader pauses). Returns false when `path` is not the one held.
    pub(super) fn hold(&mut self, sid: SessionId, path: PathId, bytes: &[u8]) -> bool {
        let limit = self.engine.config().session_out_budget;
        let Some(state) = self.sessions.get_mut(&sid) else { return false };
        let Receive::Holding { new, held, bytes: total, paused, .. } = &mut state.receive else { return false };
        if *new != path {
            return false;
        }
        held.push_back(Bytes::copy_from_slice(bytes));
        *total += bytes.len();
        if *total >= limit && !*paused {
            *paused = true;
            tracing::debug!(
                session = sid.0,
                ?path,
                held = *total,
                "new path's frames wait for the old path's CUTOVER; reading paused"
            );
            self.actions.push_back(Action::ReadPaused { path, paused: true });
        }
        true
    }

    /// The peer's CUTOVER for `epoch` arrived on `path`.
    pub(super) fn peer_cutover(&mut self, sid: SessionId, path: PathId, epoch: Epoch, now: Instant) {
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        // Late or repeated markers (the client repeats its CUTOVER with SWITCH_STEP1).
        if epoch <= state.machine.epoch() || epoch <= state.cutover_done {
            return;
        }
        let next = match std::mem::replace(&mut state.receive, Receive::On(None)) {
            Receive::On(Some(old)) if old == path => Receive::AwaitingNew { old, epoch },
            Receive::On(Some(old)) => {
                tracing::debug!(session = sid.0, ?old, new = ?path, epoch = epoch.0, "peer's CUTOVER on the new path");
                Receive::Holding { old, new: path, epoch, held: VecDeque::new(), bytes: 0, paused: false }
            }
            Receive::Holding { old, new, epoch: e, held, paused, .. } if old == path && e == epoch => {
                state.cutover_done = epoch;
                state.receive = Receive::On(Some(new));
                tracing::debug!(
                    session = sid.0,
                    ?old,
                    ?new,
                    epoch = epoch.0,
                    held = held.len(),
                    "peer's CUTOVER on the old path: the new path's frames count"
                );
                if paused {
                    self.actions.push_back(Action::ReadPaused { path: new, paused: false });
                }
                for chunk in held {
                    // Feeding may end the session or stop the switch (e.g. a peer that does not read).
                    if !self.sessions.get(&sid).is_some_and(|s| s.receive.takes(new)) {
                        break;
                    }
                    self.feed(sid, new, &chunk, now);
                }
                return;
            }
            Receive::AwaitingNew { old, epoch: e } if e == epoch && old != path => {
                state.cutover_done = epoch;
                Receive::On(Some(path))
            }
            // A duplicate, or during an unexpected switch: nothing changes.
            other => other,
        };
        state.receive = next;
    }

    /// From now on the peer's stream frames count from `path` only (`None`: from none); whatever was
    /// held is discarded (the offsets exchange of the resume accounts for it).
    pub(super) fn receive_on(&mut self, sid: SessionId, path: Option<PathId>) {
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        if let Receive::Holding { new, paused: true, .. } = state.receive {
            self.actions.push_back(Action::ReadPaused { path: new, paused: false });
        }
        state.receive = Receive::On(path);
    }
}
