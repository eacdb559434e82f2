//! Time and output: the timers, and moving the engine's output into the paths' queues.

use bytes::Bytes;

use super::{Action, RelayCore};
use crate::relay::engine::SessionId;
use crate::relay::outqueue;
use crate::time::Instant;
use crate::transition::PathId;

/// Chunks a path's queue holds before the engine's output waits in the engine, in its two lanes
/// (urgent frames pass bulk ones there, not here). One: the writer's queue behind it keeps the
/// writer busy, so a chunk more here would only make urgent frames wait longer.
const PATH_QUEUE: usize = 1;
/// The chunks a writer may hold on a very slow path ([`RelayCore::writer_depth`]).
pub(super) const SLOW_WRITER_DEPTH: usize = 2;

impl RelayCore {
    /// When [`RelayCore::poll`] must run next at the latest.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let machines = self.sessions.values().filter_map(|s| s.machine.poll_timeout().map(|(at, _)| at)).min();
        [self.engine.poll_at(now), machines].into_iter().flatten().min()
    }

    /// Runs the timers that are due and the engine, and moves the engine's output into the queues of
    /// the sessions' current paths (a few chunks each; the rest waits in the engine, which then stops
    /// reading the apps).
    pub fn poll(&mut self, now: Instant) {
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.machine.poll_timeout().is_some_and(|(at, _)| at <= now))
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
            let Some(path) = state.send_on else { continue };
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
            Some(p) if outqueue::slot(p.pace) <= outqueue::MIN_SLOT => capacity.min(SLOW_WRITER_DEPTH),
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
}
