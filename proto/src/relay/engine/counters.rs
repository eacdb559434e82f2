//! What an engine counts, per session and on the TUN side, for `roamtun status` and metrics.

use std::net::IpAddr;

use super::{Engine, SessionId, SessionLimits};

/// Counters of one session; all only grow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionCounters {
    /// Stream payload and datagram bytes sent to the peer.
    pub bytes_sent: u64,
    /// Stream payload and datagram bytes received from the peer.
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    /// Datagrams not sent because the queue towards the peer was full (UDP may be lost; streams never).
    pub datagrams_dropped: u64,
    /// Datagrams from the peer whose addresses it does not own; dropped.
    pub datagrams_spoofed: u64,
    /// Frames that could not be parsed; skipped by their length, the session goes on.
    pub frames_malformed: u64,
    /// Streams reset because the peer broke the stream rules (credit, offsets, unknown addresses).
    pub streams_violated: u64,
    pub tcp_streams_opened: u64,
    /// Stream bytes sent again after a path was lost (they were in flight on it).
    pub bytes_resent: u64,
    /// Datagrams kept aside while the session changed paths, sent once it was on the new one.
    pub datagrams_held: u64,
    /// Of those, datagrams dropped because the hold budget was full (counted in `datagrams_dropped` too).
    pub datagrams_dropped_switching: u64,
    /// Streams refused because the session was at its stream limit ([`SessionLimits`]): an app's SYN
    /// answered with RST, or the peer's OPEN with RESET `LimitReached`.
    pub streams_refused_limit: u64,
    /// Datagrams dropped because they would have started a UDP flow beyond the session's limit
    /// ([`SessionLimits`], either direction).
    pub datagrams_refused_limit: u64,
    /// Server: the client's OPENs refused by the destination policy (RESET `NotAllowed`).
    pub streams_forbidden: u64,
    /// Server: the client's DATAGRAMs dropped by the destination policy.
    pub datagrams_forbidden: u64,
}

/// What a session looks like from outside, for `roamtun status`.
#[derive(Debug, Clone)]
pub struct SessionStatus {
    pub id: SessionId,
    pub virtual_ips: Vec<IpAddr>,
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub queued_bytes: usize,
    pub limits: SessionLimits,
    pub counters: SessionCounters,
}

/// Counters of the TUN side, not tied to a session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TunCounters {
    /// Packets from the TUN with no session to carry them (no server connected, unknown virtual IP).
    pub packets_unroutable: u64,
    /// Packets from the TUN that are neither TCP, UDP nor ICMP.
    pub packets_unsupported: u64,
    /// SYNs refused because the flow limit was reached.
    pub flows_refused_limit: u64,
}

impl Engine {
    pub fn session_counters(&self, sid: SessionId) -> Option<SessionCounters> {
        self.sessions.get(&sid).map(|s| s.counters.clone())
    }

    pub fn session_status(&self) -> Vec<SessionStatus> {
        self.sessions
            .iter()
            .map(|(id, s)| SessionStatus {
                id: *id,
                virtual_ips: s.virtual_ips.clone(),
                tcp_flows: s.streams.len(),
                udp_flows: s.udp_flows,
                queued_bytes: s.out.bytes(),
                limits: s.limits,
                counters: s.counters.clone(),
            })
            .collect()
    }

    pub fn tun_counters(&self) -> &TunCounters {
        &self.tun_counters
    }
}
