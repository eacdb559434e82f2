//! Uplink switches: `roamtun switch`, and the record of every finished switch.

use super::{Action, DialRequest, RelayCore};
use crate::relay::engine::{SessionCounters, SessionId};
use crate::time::{Duration, Instant};
use crate::transition::{SwitchKind, SwitchSummary};

/// Switches kept per session for `roamtun status`.
const HISTORY: usize = 8;

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
    /// How long no stream data went out (stop sending → resume): the pause the protocol imposed on
    /// the apps. Zero for a planned switch, which redirects instead of stopping (the apps may still
    /// see the difference of the two paths' one-way delays, which neither side can measure alone).
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

/// A switch between its first step and [`Event::SwitchDone`].
pub(super) struct Progress {
    /// When stream data stopped going out (StopSending); a planned switch that runs to its end never
    /// stops it.
    pub(super) stopped: Option<Instant>,
    pub(super) from: Option<String>,
    pub(super) before: SessionCounters,
    /// When stream data flowed again (ResumeOn).
    pub(super) resumed: Option<Instant>,
    /// Stream bytes sent again because the lost path took them.
    pub(super) replayed: u64,
}

impl RelayCore {
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
            let Some(m) = self.sessions.get_mut(&sid).and_then(|s| s.machine.as_client()) else {
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
        self.dial(DialRequest { resume: sid.0, uplink: Some(uplink), avoid: None, standby: false, ahead: None });
        Ok(())
    }

    /// Client: the path for a `roamtun switch` could not be opened.
    pub fn switch_failed(&mut self, reason: String) {
        if let Some(uplink) = self.switch_wanted.take() {
            self.actions.push_back(Action::SwitchDone(Err(SwitchError::Dial { uplink, reason })));
        }
    }

    pub(super) fn record_switch(&mut self, sid: SessionId, summary: SwitchSummary, now: Instant) -> SwitchReport {
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
            stall: progress.as_ref().and_then(|p| Some(p.resumed? - p.stopped?)).unwrap_or(Duration::ZERO),
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
}
