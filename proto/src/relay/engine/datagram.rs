//! Datagrams (UDP and ICMP as whole IP packets): both directions, the UDP flow table and its
//! limits, and holding them aside while a session changes paths.

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::{Engine, Role, SessionId};
use crate::relay::packet::{datagram_info, DatagramInfo, DatagramProto};
use crate::time::Instant;
use crate::wire::{self, Frame};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct UdpKey {
    pub(super) session: SessionId,
    /// The endpoint on the virtual IP side.
    pub(super) virtual_end: SocketAddr,
    pub(super) remote_end: SocketAddr,
}

impl Engine {
    pub(super) fn datagram_from_tun(&mut self, info: DatagramInfo, packet: Vec<u8>, now: Instant) {
        let Some(sid) = self.session_for(info.src, info.dst) else {
            self.tun_counters.packets_unroutable += 1;
            return;
        };
        let budget = self.config.session_out_budget;
        let session = self.sessions.get_mut(&sid).expect("session_for returns a live session");
        let holding = session.held.is_some();
        // The hold budget is the session's out budget: a switch may hold as much as the path queues.
        let full = if holding { session.held_bytes + packet.len() > budget } else { session.out.bytes() >= budget };
        if full || packet.len() > wire::MAX_BODY {
            session.counters.datagrams_dropped += 1;
            session.counters.datagrams_dropped_switching += u64::from(holding);
            return;
        }
        if !self.admit_udp(sid, info, now) {
            return;
        }
        let session = self.sessions.get_mut(&sid).expect("session_for returns a live session");
        if let Some(held) = session.held.as_mut() {
            session.counters.datagrams_held += 1;
            session.held_bytes += packet.len();
            held.push_back(packet);
            return;
        }
        session.counters.datagrams_sent += 1;
        session.counters.bytes_sent += packet.len() as u64;
        session.out.push_ordered(&mut session.datagram_mark, packet.len(), &Frame::Datagram { packet: &packet });
    }

    pub(super) fn datagram_from_peer(&mut self, sid: SessionId, packet: &[u8], now: Instant) {
        let role = self.config.role;
        let session = self.session_mut(sid);
        let info = datagram_info(packet);
        let allowed = info.is_some_and(|i| match role {
            Role::Client => session.owns(i.dst),
            Role::Server => session.owns(i.src),
        });
        let Some(info) = info.filter(|_| allowed) else {
            session.counters.datagrams_spoofed += 1;
            return;
        };
        if role == Role::Server {
            if let Err(why) = self.destination_allowed(info.dst) {
                tracing::trace!(session = sid.0, dst = %info.dst, %why, "dropping a datagram");
                self.session_mut(sid).counters.datagrams_forbidden += 1;
                return;
            }
        }
        if !self.admit_udp(sid, info, now) {
            return;
        }
        let session = self.session_mut(sid);
        session.counters.datagrams_received += 1;
        session.counters.bytes_received += packet.len() as u64;
        self.tun_out.push_back(packet.to_vec());
    }

    /// Records the UDP flow of a datagram of session `sid` (or refreshes its idle timer). False when
    /// it would start a flow beyond the session's `udp_flows` limit: the datagram is to be dropped (it is
    /// counted here). Other datagrams need no flow.
    fn admit_udp(&mut self, sid: SessionId, info: DatagramInfo, now: Instant) -> bool {
        if info.proto != DatagramProto::Udp {
            return true;
        }
        let Some(session) = self.sessions.get_mut(&sid) else { return false };
        let limit = session.limits.udp_flows;
        let src = SocketAddr::new(info.src, info.src_port);
        let dst = SocketAddr::new(info.dst, info.dst_port);
        let (virtual_end, remote_end) = if session.owns(info.src) { (src, dst) } else { (dst, src) };
        let key = UdpKey { session: sid, virtual_end, remote_end };
        if let Some(last) = self.udp_flows.get_mut(&key) {
            *last = now;
            return true;
        }
        if session.udp_flows >= limit {
            session.counters.datagrams_refused_limit += 1;
            return false;
        }
        session.udp_flows += 1;
        self.udp_flows.insert(key, now);
        if self.next_udp_expiry.is_none() {
            self.next_udp_expiry = Some(now + self.config.udp_idle_timeout);
        }
        true
    }

    pub(super) fn expire_udp(&mut self, now: Instant) {
        let Some(at) = self.next_udp_expiry else { return };
        if now < at {
            return;
        }
        let timeout = self.config.udp_idle_timeout;
        let sessions = &mut self.sessions;
        self.udp_flows.retain(|key, last| {
            let keep = now - *last < timeout;
            if !keep {
                if let Some(s) = sessions.get_mut(&key.session) {
                    s.udp_flows -= 1;
                }
            }
            keep
        });
        self.next_udp_expiry = self.udp_flows.values().min().map(|oldest| *oldest + timeout);
    }

    /// From now until [`Engine::release_datagrams`], datagrams of this session wait aside (up to the
    /// session's out budget; beyond it they are dropped and counted): the session is changing paths.
    pub fn hold_datagrams(&mut self, sid: SessionId) {
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.held.get_or_insert_with(VecDeque::new);
        }
    }

    /// The session is on its new path: the held datagrams go out, in order, before any new one.
    pub fn release_datagrams(&mut self, sid: SessionId) {
        let Some(session) = self.sessions.get_mut(&sid) else { return };
        for packet in session.held.take().into_iter().flatten() {
            session.counters.datagrams_sent += 1;
            session.counters.bytes_sent += packet.len() as u64;
            session.out.push_ordered(&mut session.datagram_mark, packet.len(), &Frame::Datagram { packet: &packet });
        }
        session.held_bytes = 0;
    }
}
