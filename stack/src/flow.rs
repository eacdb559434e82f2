//! Bookkeeping of one TCP flow: which socket holds it and which state changes were already reported.

use std::collections::VecDeque;
use std::net::SocketAddr;

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, State};

/// Names one TCP connection through the stack for its whole life; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(pub u64);

/// A state change of a flow, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// An originated connection ([`crate::Stack::connect`]) completed its handshake.
    Connected(FlowId),
    /// The connection is over. `reset` is false only after both FINs were exchanged; otherwise the
    /// app reset it, the handshake failed, or it timed out. Bytes still in the receive queue may be
    /// taken before [`crate::Stack::release`].
    Closed { flow: FlowId, reset: bool },
}

pub(crate) struct Flow {
    pub(crate) handle: SocketHandle,
    /// Our end as the stack sees it (the app's destination, or the source we originate from).
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    originated: bool,
    established: bool,
    /// The app's FIN was seen (the socket may no longer receive).
    app_fin: bool,
    closed_reported: bool,
    /// Our FIN was asked for before the handshake completed; it goes once the flow is established.
    pub(crate) close_deferred: bool,
}

impl Flow {
    pub(crate) fn new(handle: SocketHandle, local: SocketAddr, remote: SocketAddr, originated: bool) -> Self {
        Flow {
            handle,
            local,
            remote,
            originated,
            established: false,
            app_fin: false,
            closed_reported: false,
            close_deferred: false,
        }
    }

    /// The handshake completed (the socket left the SYN states).
    pub(crate) fn established(&self) -> bool {
        self.established
    }

    /// The app sent FIN (not a reset) at some point.
    pub(crate) fn app_fin(&self) -> bool {
        self.app_fin
    }

    /// Compares the socket with what was reported and queues the differences.
    pub(crate) fn observe(&mut self, id: FlowId, socket: &Socket<'_>, events: &mut VecDeque<FlowEvent>) {
        if self.closed_reported {
            return;
        }
        let state = socket.state();
        if !self.established && !matches!(state, State::Closed | State::Listen | State::SynSent | State::SynReceived) {
            self.established = true;
            if self.originated {
                events.push_back(FlowEvent::Connected(id));
            }
        }
        // These states are reached only through the app's FIN. The state is sampled at every poll and
        // our own FIN needs a poll to leave, so LastAck is always seen before Closed.
        // (`may_recv` is false after a reset too, so it only counts while the socket is not Closed.)
        if matches!(state, State::CloseWait | State::LastAck | State::Closing | State::TimeWait)
            || (self.established && state != State::Closed && !socket.may_recv())
        {
            self.app_fin = true;
        }
        if matches!(state, State::Closed | State::TimeWait) {
            // TimeWait and Closed via LastAck are reached only after both FINs; a reset, a failed
            // handshake or a timeout go straight to Closed without the app's FIN.
            let graceful = state == State::TimeWait || (self.app_fin && socket.send_queue() == 0);
            self.closed_reported = true;
            events.push_back(FlowEvent::Closed { flow: id, reset: !graceful });
        }
    }
}
