//! The path registry: where each path runs, what it measured, and its output queue; the inputs a
//! path's reader delivers.

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::Bytes;

use super::{encode, offsets, Action, DialRequest, RelayCore};
use crate::path::PathLoss;
use crate::relay::engine::{Role, SessionError, SessionId};
use crate::time::{Duration, Instant};
use crate::transition::{ControlMessage, PathId};
use crate::wire::Frame;

/// Where one path runs.
#[derive(Debug, Clone, Default)]
pub struct PathInfo {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// The interface the path is bound to (client), or that holds `local`.
    pub uplink: Option<String>,
    /// The relay socket's TCP congestion control, as the kernel reports it (for the status).
    pub congestion_control: Option<String>,
}

impl PathInfo {
    /// How a path is named in switch records: its uplink, else (server) the client's address.
    pub fn label(&self) -> String {
        match (&self.uplink, self.remote) {
            (Some(uplink), _) => uplink.clone(),
            (None, Some(remote)) => remote.ip().to_string(),
            (None, None) => "?".into(),
        }
    }
}

/// What a path's reader read off the relay socket's TCP_INFO (the Check activity's own signals).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PathSample {
    /// The kernel's smoothed round trip.
    pub tcp_rtt: Duration,
    /// Its mean deviation (the kernel's `rttvar`): the path's jitter.
    pub jitter: Duration,
    /// The share of segments retransmitted lately, 0.0–1.0.
    pub loss: f64,
    /// Bytes acknowledged by the peer plus bytes received, since the path began.
    pub bytes: u64,
    /// A delivery-rate sample in bytes/s, taken while the sender was not application-limited.
    pub delivery_rate: Option<u64>,
    /// What the path carries now, bytes/s: the largest delivery-rate sample of the last few, which
    /// forgets a burst within seconds (the engine sizes its bulk chunks by it, relay::outqueue).
    pub pace: Option<u64>,
}

pub(super) struct PathState {
    pub(super) session: SessionId,
    pub(super) info: PathInfo,
    /// Smoothed round trip of the path's probes (RFC 6298 weights), µs.
    pub(super) srtt_us: Option<u64>,
    /// The relay socket's own view: the kernel's smoothed RTT and the share of segments retransmitted.
    pub(super) tcp_rtt: Option<Duration>,
    pub(super) jitter: Option<Duration>,
    pub(super) loss: Option<f64>,
    /// Bytes carried (both ways) since the path began.
    pub(super) bytes: u64,
    /// The path's capacity as the kernel measured it: the peak delivery rate, decaying by 1 % per
    /// sample so that a link that got slower is seen as slower within a minute or so. Bytes/s.
    pub(super) bandwidth: Option<f64>,
    /// [`PathSample::pace`], bytes/s.
    pub(super) pace: Option<u64>,
    /// The peer's REPORT: the share of its segments its relay socket retransmits, i.e. the loss on
    /// the way towards us, which our own socket cannot see.
    pub(super) peer_loss: Option<f64>,
    /// Our loss as last sent to the peer in a REPORT, parts per million.
    pub(super) reported_ppm: u32,
    /// Encoded frames for the path's writer, in order.
    pub(super) out: VecDeque<Bytes>,
}

impl PathState {
    /// A path just up in `session`, nothing measured yet, with `out` to send first.
    pub(super) fn new(session: SessionId, info: PathInfo, out: VecDeque<Bytes>) -> Self {
        PathState {
            session,
            info,
            srtt_us: None,
            tcp_rtt: None,
            jitter: None,
            loss: None,
            bytes: 0,
            bandwidth: None,
            pace: None,
            peer_loss: None,
            reported_ppm: 0,
            out,
        }
    }
}

impl RelayCore {
    /// Whole frames read from `path`.
    pub fn path_bytes(&mut self, path: PathId, bytes: &[u8], now: Instant) {
        let Some(sid) = self.paths.get(&path).map(|p| p.session) else { return };
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        if !state.receive.takes(path) {
            // A planned switch's new path before the old path's CUTOVER: the frames wait.
            if self.hold(sid, path, bytes) {
                return;
            }
            // Late frames of an older epoch: the stream offsets were settled without them.
            if let Some(state) = self.sessions.get_mut(&sid) {
                state.stale_frames += 1;
            }
            return;
        }
        self.feed(sid, path, bytes, now);
    }

    /// Stream frames of `path` that count: into the engine.
    pub(super) fn feed(&mut self, sid: SessionId, path: PathId, bytes: &[u8], now: Instant) {
        if let Err(err) = self.engine.handle_session_bytes(sid, bytes, now) {
            match err {
                SessionError::PeerClosed { .. } => {
                    self.end_session(sid, &err.to_string(), now);
                    if self.role() == Role::Client {
                        // The peer ended the session on purpose (e.g. the server stopped): the apps
                        // were reset; a new session serves the next ones.
                        self.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false, ahead: None });
                    }
                }
                SessionError::PeerNotReading { queued, limit } => {
                    if let Some(state) = self.sessions.get_mut(&sid) {
                        state.paths_lost_not_reading += 1;
                    }
                    // The path goes; the session waits for a resume as after any lost path, which
                    // regenerates the queue from the replay buffers (no stream byte is lost).
                    self.path_lost(path, &PathLoss::NotReading { queued, limit }, now);
                }
                other => tracing::warn!(session = sid.0, err = %other, "session input refused"),
            }
        }
    }

    /// The body of a CONTROL frame read from `path`.
    pub fn path_control(&mut self, path: PathId, body: &[u8], now: Instant) {
        let Some(sid) = self.paths.get(&path).map(|p| p.session) else { return };
        let received = offsets(&self.engine, sid);
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        let msg = match ControlMessage::decode(body) {
            Ok(msg) => msg,
            Err(err) => {
                state.control_malformed += 1;
                tracing::warn!(session = sid.0, ?path, %err, "malformed transition message dropped");
                return;
            }
        };
        tracing::debug!(session = sid.0, ?path, msg = msg.name(), epoch = msg.epoch().0, "transition message");
        if let ControlMessage::Cutover { epoch } = msg {
            // The data's order first; the machine sees it too (the server learns the new path).
            self.peer_cutover(sid, path, epoch, now);
        }
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        if let Err(err) = state.machine.handle_control(path, msg, &received, now) {
            // Server: a client that proposes an epoch out of reach: dropped like a malformed message.
            state.control_malformed += 1;
            tracing::warn!(session = sid.0, ?path, %err, "transition message refused");
        }
        self.drive(sid, now);
    }

    /// A path failed: its connection ended, its uplink went away, or it carried nothing for too long.
    pub fn path_lost(&mut self, path: PathId, reason: &PathLoss, now: Instant) {
        let Some(p) = self.paths.remove(&path) else { return };
        let sid = p.session;
        tracing::info!(session = sid.0, ?path, uplink = ?p.info.uplink, %reason, "path lost");
        self.actions.push_back(Action::ClosePath { path, last: Vec::new() });
        self.last_lost = Some((path, p.info.label()));
        if let Some(state) = self.sessions.get_mut(&sid) {
            if state.receive.waits_on(path) {
                // The order of the peer's frames across the two paths is lost with it: the switch
                // resumes with the offsets exchange (the machine stops and falls back below).
                self.receive_on(sid, None);
            }
        }
        if let Some(state) = self.sessions.get_mut(&sid) {
            state.machine.handle_path_lost(path, now);
            self.drive(sid, now);
        }
    }

    /// A probe of `path` came back after `rtt`.
    pub fn path_rtt(&mut self, path: PathId, rtt: Duration) {
        if let Some(p) = self.paths.get_mut(&path) {
            let sample = rtt.total_micros();
            p.srtt_us = Some(p.srtt_us.map_or(sample, |s| (7 * s + sample) / 8));
        }
    }

    /// The relay socket's TCP counters on `path`; returns the bytes it carried since the last sample
    /// (for an uplink's volume).
    pub fn path_stats(&mut self, path: PathId, sample: PathSample) -> u64 {
        let Some(p) = self.paths.get_mut(&path) else { return 0 };
        p.tcp_rtt = Some(sample.tcp_rtt);
        p.jitter = Some(sample.jitter);
        p.loss = Some(sample.loss);
        let decayed = p.bandwidth.map(|b| b * 0.99);
        p.bandwidth = match (decayed, sample.delivery_rate) {
            (Some(b), Some(r)) => Some(b.max(r as f64)),
            (b, r) => b.or(r.map(|r| r as f64)),
        };
        p.pace = sample.pace.or(p.pace);
        // The peer cannot see what we retransmit towards it: tell it when the figure moves by 0.1 %
        // or more (or to or from zero), in the path's queue, so that it is not lost behind a full
        // writer, which is when it matters. An idle path's figure does not move: a metered standby
        // uplink pays nothing for it.
        let ppm = (sample.loss.clamp(0.0, 1.0) * 1e6).round() as u32;
        if p.reported_ppm.abs_diff(ppm) >= 1000 || (ppm == 0) != (p.reported_ppm == 0) {
            p.out.push_back(encode(&Frame::Report { loss_ppm: ppm }));
            p.reported_ppm = ppm;
        }
        let carried = sample.bytes.saturating_sub(p.bytes);
        p.bytes = p.bytes.max(sample.bytes);
        carried
    }

    /// The jitter (the kernel's RTT deviation) of the relay socket on `uplink`.
    pub fn uplink_jitter(&self, uplink: &str) -> Option<Duration> {
        self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?.jitter
    }

    /// The capacity of `uplink` as measured on its path (bytes/s), if it has been busy enough to tell.
    pub fn uplink_bandwidth(&self, uplink: &str) -> Option<f64> {
        self.paths.values().find(|p| p.info.uplink.as_deref() == Some(uplink))?.bandwidth
    }

    /// The peer's REPORT on `path`: its retransmission rate, the loss towards us.
    pub fn path_peer_loss(&mut self, path: PathId, loss: f64) {
        if let Some(p) = self.paths.get_mut(&path) {
            tracing::debug!(?path, uplink = ?p.info.uplink, loss, "the peer's loss report");
            p.peer_loss = Some(loss.clamp(0.0, 1.0));
        }
    }

    /// Every path and where it runs.
    pub fn paths(&self) -> impl Iterator<Item = (PathId, &PathInfo)> {
        self.paths.iter().map(|(id, p)| (*id, &p.info))
    }

    /// Closes a path; what is queued for it still goes out.
    pub(super) fn close_path(&mut self, id: PathId) {
        if let Some(p) = self.paths.remove(&id) {
            self.actions.push_back(Action::ClosePath { path: id, last: p.out.into() });
        }
    }
}
