//! What an engine is configured with: its role's budgets and limits.

use roamtun_stack::StackConfig;

use super::Role;
use crate::relay::policy::DestinationPolicy;
use crate::time::Duration;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub role: Role,
    /// Bytes one stream may have in flight towards us in one direction: the receiver's budget and the
    /// credit a new stream starts with.
    pub stream_window: u64,
    /// Bytes queued towards one peer before the engine stops reading from the apps (backpressure).
    pub session_out_budget: usize,
    /// A UDP flow with no packet for this long is forgotten.
    pub udp_idle_timeout: Duration,
    /// What a session may hold unless its peer has limits of its own ([`PeerLimits`]).
    pub session_limits: SessionLimits,
    /// Server: where a client's OPENs and DATAGRAMs may go ([`crate::relay::policy`]).
    pub destinations: DestinationPolicy,
    pub stack: StackConfig,
}

/// What one session may hold at once, so that one peer cannot take the share of all (the stack's
/// `max_flows` bounds every session together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// Streams (TCP connections, both directions). Beyond it an app's SYN gets RST and a peer's OPEN
    /// gets RESET `LimitReached`.
    pub streams: usize,
    /// UDP flows (pairs of a virtual-side and a remote endpoint, chosen by the apps or the peer); a
    /// datagram that would start one more is dropped.
    pub udp_flows: usize,
    /// Server: a session that has this many paths refuses another one (`RelayCore`, CLOSE
    /// `PATH_LIMIT`; the client counts it as a failed dial and tries again later). A client keeps one
    /// per uplink (the current one and warm standbys) and opens one more to switch, so at least 2
    /// are always allowed.
    pub paths: usize,
}

/// A peer's own limits (server: its `[[peer]]` table); `None` takes the engine's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerLimits {
    pub streams: Option<usize>,
    pub udp_flows: Option<usize>,
    pub paths: Option<usize>,
}

impl PeerLimits {
    /// These limits where set, `defaults` elsewhere.
    pub fn over(&self, defaults: SessionLimits) -> SessionLimits {
        SessionLimits {
            streams: self.streams.unwrap_or(defaults.streams),
            udp_flows: self.udp_flows.unwrap_or(defaults.udp_flows),
            paths: self.paths.unwrap_or(defaults.paths).max(2),
        }
    }
}

impl EngineConfig {
    pub fn new(role: Role) -> Self {
        EngineConfig {
            role,
            stream_window: 512 * 1024,
            session_out_budget: 2 * 1024 * 1024,
            udp_idle_timeout: Duration::from_secs(60),
            session_limits: SessionLimits { streams: 1024, udp_flows: 1024, paths: 8 },
            destinations: DestinationPolicy::allow_all(),
            stack: StackConfig::default(),
        }
    }

    /// The most bytes a session's queue towards its peer may hold before the peer counts as not
    /// reading ([`SessionError::PeerNotReading`]): the out budget (app bytes and datagrams stop there,
    /// plus the one datagram that may pass it), then room for the frames nobody stops: replies to the
    /// peer's own frames (RESETs of refused OPENs, CREDITs for its data) and the control frames a
    /// resume queues for every stream it may have (`limits`).
    ///
    /// [`SessionError::PeerNotReading`]: super::SessionError::PeerNotReading
    pub fn queue_limit(&self, limits: &SessionLimits) -> usize {
        self.session_out_budget + REPLY_ALLOWANCE + PER_STREAM_ALLOWANCE * limits.streams
    }
}

/// Of [`EngineConfig::queue_limit`]: room for one datagram past the budget and for a few thousand
/// replies. A peer that reads its relay connection never gets near it: its replies leave as fast
/// as its frames come.
const REPLY_ALLOWANCE: usize = 256 * 1024;
/// Of [`EngineConfig::queue_limit`]: the control frames one stream may have queued at once (OPEN,
/// OPEN_OK, CREDIT, FIN, RESET are each under 50 bytes).
const PER_STREAM_ALLOWANCE: usize = 256;
