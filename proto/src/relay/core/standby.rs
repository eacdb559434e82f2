//! The link manager's view of the paths by uplink: warm standby paths (the Search activity) and
//! each uplink's measured health.

use std::collections::BTreeMap;

use super::RelayCore;
use crate::link::manager::{LinkView, PathHealth, SessionLink};
use crate::relay::engine::SessionId;
use crate::time::Duration;
use crate::transition::PathId;

impl RelayCore {
    /// Whether `path` is the session's only path on its uplink (then it is worth keeping warm).
    pub(super) fn standby_wanted(&self, sid: SessionId, path: PathId) -> bool {
        let Some(uplink) = self.paths.get(&path).and_then(|p| p.info.uplink.as_deref()) else { return false };
        !self.paths.iter().any(|(id, p)| *id != path && p.session == sid && p.info.uplink.as_deref() == Some(uplink))
    }

    /// The round trip of the path on `uplink`, if one is open: the kernel's smoothed RTT of the relay
    /// socket, else the probes'. The probes also time the daemons' own queues (a PONG waits behind
    /// the peer's queued output), which says more about the daemon's load than about the uplink.
    pub fn uplink_rtt(&self, uplink: &str) -> Option<Duration> {
        let p = self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?;
        p.tcp_rtt.or(p.srtt_us.map(Duration::from_micros))
    }

    /// The loss on `uplink` lately: the share of segments the relay socket had to retransmit, in the
    /// direction that loses more (ours, or the peer's as its REPORT says).
    pub fn uplink_loss(&self, uplink: &str) -> Option<f64> {
        let p = self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?;
        match (p.loss, p.peer_loss) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether `path` is a warm standby: open, in a session that is not switching, and not the one its
    /// streams use. (During a switch every path of the session counts as busy.)
    pub fn is_standby(&self, path: PathId) -> bool {
        let Some(p) = self.paths.get(&path) else { return false };
        self.sessions.get(&p.session).is_some_and(|s| s.current.is_some_and(|c| c != path) && !s.machine.is_switching())
    }

    /// Whether a path (current or standby) runs on `uplink`.
    pub fn has_path_on(&self, uplink: &str) -> bool {
        self.paths.values().any(|p| p.info.uplink.as_deref() == Some(uplink))
    }

    /// Client: what the link manager needs of the session and its paths.
    pub fn link_view(&self) -> LinkView {
        let mut paths = BTreeMap::new();
        for p in self.paths.values() {
            let Some(uplink) = &p.info.uplink else { continue };
            // The first path found per uplink, as uplink_rtt and the others below read it.
            paths.entry(uplink.clone()).or_insert_with(|| PathHealth {
                rtt: self.uplink_rtt(uplink),
                loss: self.uplink_loss(uplink),
                bandwidth: p.bandwidth,
            });
        }
        let session = self.sessions.iter().next().map(|(sid, s)| SessionLink {
            id: sid.0,
            active: s.current.and_then(|c| self.paths.get(&c)).and_then(|p| p.info.uplink.clone()),
            switching: s.machine.is_switching(),
            switch_pending: self.switch_wanted.is_some(),
            uplinks: self.paths.values().filter(|p| p.session == *sid).filter_map(|p| p.info.uplink.clone()).collect(),
        });
        LinkView { session, paths }
    }

    /// Client: the standby path of the session on `uplink`, if one is open.
    pub(super) fn standby_on(&self, sid: SessionId, uplink: &str) -> Option<PathId> {
        let current = self.sessions.get(&sid).and_then(|s| s.current);
        self.paths
            .iter()
            .find(|(id, p)| p.session == sid && Some(**id) != current && p.info.uplink.as_deref() == Some(uplink))
            .map(|(id, _)| *id)
    }

    /// Client: the uplinks (of `candidates`) on which the session has no path, so a standby path
    /// should be opened there; empty while a switch or a dial is under way.
    pub fn standby_missing<'a>(&self, candidates: &'a [String]) -> Vec<&'a String> {
        let Some((&sid, state)) = self.sessions.iter().next() else { return Vec::new() };
        if state.machine.is_switching() || self.switch_wanted.is_some() || state.current.is_none() {
            return Vec::new();
        }
        candidates
            .iter()
            .filter(|u| !self.paths.values().any(|p| p.session == sid && p.info.uplink.as_deref() == Some(u.as_str())))
            .collect()
    }
}
