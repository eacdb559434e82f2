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
    /// Streams (TCP connections, both directions) one session may have at once, so that one peer
    /// cannot take the flows of all (the stack's `max_flows` bounds every session together). Beyond
    /// it an app's SYN gets RST and a peer's OPEN gets RESET `LimitReached`.
    pub max_streams_per_session: usize,
    /// UDP flows (pairs of a virtual-side and a remote endpoint, chosen by the apps or the peer) one
    /// session may have at once; a datagram that would start one more is dropped.
    pub max_udp_flows_per_session: usize,
    /// Server: where a client's OPENs and DATAGRAMs may go ([`crate::relay::policy`]).
    pub destinations: DestinationPolicy,
    /// Server: a session that has this many paths refuses another one (`RelayCore`, CLOSE
    /// `PATH_LIMIT`; the client counts it as a failed dial and tries again later). A client keeps one
    /// per uplink (the current one and warm standbys) and opens one more to switch.
    pub max_paths_per_session: usize,
    pub stack: StackConfig,
}

impl EngineConfig {
    pub fn new(role: Role) -> Self {
        EngineConfig {
            role,
            stream_window: 512 * 1024,
            session_out_budget: 2 * 1024 * 1024,
            udp_idle_timeout: Duration::from_secs(60),
            max_streams_per_session: 1024,
            max_udp_flows_per_session: 1024,
            destinations: DestinationPolicy::allow_all(),
            max_paths_per_session: 8,
            stack: StackConfig::default(),
        }
    }

    /// The most bytes a session's queue towards its peer may hold before the peer counts as not
    /// reading ([`SessionError::PeerNotReading`]): the out budget (app bytes and datagrams stop there,
    /// plus the one datagram that may pass it), then room for the frames nobody stops: replies to the
    /// peer's own frames (RESETs of refused OPENs, CREDITs for its data) and the control frames a
    /// resume queues for every stream.
    ///
    /// [`SessionError::PeerNotReading`]: super::SessionError::PeerNotReading
    pub fn queue_limit(&self) -> usize {
        self.session_out_budget + REPLY_ALLOWANCE + PER_STREAM_ALLOWANCE * self.max_streams_per_session
    }
}

/// Of [`EngineConfig::queue_limit`]: room for one datagram past the budget and for a few thousand
/// replies. A peer that reads its relay connection never gets near it: its replies leave as fast
/// as its frames come.
const REPLY_ALLOWANCE: usize = 256 * 1024;
/// Of [`EngineConfig::queue_limit`]: the control frames one stream may have queued at once (OPEN,
/// OPEN_OK, CREDIT, FIN, RESET are each under 50 bytes).
const PER_STREAM_ALLOWANCE: usize = 256;
