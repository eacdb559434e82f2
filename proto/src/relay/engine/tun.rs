//! The TUN side: the apps' packets in, the stack's flow events, packets out to the TUN.

use std::net::SocketAddr;

use roamtun_stack::{FlowEvent, FlowId, Ingress};

use super::session::{Phase, Stream};
use super::Engine;
use crate::relay::packet::datagram_info;
use crate::time::Instant;
use crate::wire::{Frame, ResetCode};

impl Engine {
    /// One IP packet the kernel wrote into the TUN.
    pub fn handle_tun_packet(&mut self, packet: Vec<u8>, now: Instant) {
        if let Some(info) = datagram_info(&packet) {
            self.datagram_from_tun(info, packet, now);
            return;
        }
        match self.stack.handle_packet(packet, now.into()) {
            Ingress::Handled => {}
            Ingress::NewFlow { flow, src, dst } => self.new_app_flow(flow, src, dst, now),
            Ingress::TooManyFlows => self.tun_counters.flows_refused_limit += 1,
            Ingress::NotTcp => self.tun_counters.packets_unsupported += 1,
        }
    }

    fn new_app_flow(&mut self, flow: FlowId, src: SocketAddr, dst: SocketAddr, now: Instant) {
        let Some(sid) = self.session_for(src.ip(), dst.ip()) else {
            self.tun_counters.packets_unroutable += 1;
            let _ = self.stack.refuse(flow, now.into());
            return;
        };
        let window = self.config.stream_window;
        let session = self.sessions.get_mut(&sid).expect("session_for returns a live session");
        let limit = session.limits.streams;
        if session.streams.len() >= limit {
            session.counters.streams_refused_limit += 1;
            tracing::debug!(session = sid.0, %src, %dst, limit, "refusing an app's connection: the session is at its stream limit");
            let _ = self.stack.refuse(flow, now.into());
            return;
        }
        let stream_id = session.next_stream_id;
        let Some(next) = stream_id.checked_add(2) else {
            // 2^31 streams in one session: refuse rather than reuse an id.
            let _ = self.stack.refuse(flow, now.into());
            return;
        };
        session.next_stream_id = next;
        session.streams.insert(stream_id, Stream::new(flow, (src, dst), Phase::Opening, window));
        session.counters.tcp_streams_opened += 1;
        let stream = session.streams.get_mut(&stream_id).expect("inserted above");
        session.out.push_ordered(&mut stream.mark, 0, &Frame::Open { stream_id, src, dst });
        self.flow_streams.insert(flow, (sid, stream_id));
        tracing::debug!(session = sid.0, stream = stream_id, %src, %dst, "app opened a TCP connection");
    }

    pub(super) fn handle_flow_events(&mut self) {
        while let Some(event) = self.stack.pop_event() {
            match event {
                FlowEvent::Connected(flow) => {
                    let Some(&(sid, stream_id)) = self.flow_streams.get(&flow) else { continue };
                    let session = self.session_mut(sid);
                    if let Some(stream) = session.streams.get_mut(&stream_id) {
                        stream.phase = Phase::Open;
                        session.out.push_ordered(&mut stream.mark, 0, &Frame::OpenOk { stream_id });
                    }
                }
                FlowEvent::Closed { flow, reset: true } => {
                    let Some((sid, stream_id)) = self.flow_streams.remove(&flow) else {
                        self.stack.release(flow);
                        continue;
                    };
                    let session = self.session_mut(sid);
                    if let Some(mut stream) = session.streams.remove(&stream_id) {
                        let code = match stream.phase {
                            Phase::Connecting => ResetCode::Refused,
                            _ => ResetCode::Reset,
                        };
                        session.out.push_ordered(&mut stream.mark, 0, &Frame::Reset { stream_id, code });
                    }
                    self.stack.release(flow);
                }
                FlowEvent::Closed { flow, reset: false } => {
                    if let Some(&(sid, stream_id)) = self.flow_streams.get(&flow) {
                        if let Some(stream) = self.session_mut(sid).streams.get_mut(&stream_id) {
                            stream.app_done = true;
                        }
                    } else {
                        self.stack.release(flow);
                    }
                }
            }
        }
    }

    /// The next packet to write into the TUN.
    pub fn pop_tun_packet(&mut self) -> Option<Vec<u8>> {
        self.tun_out.pop_front().or_else(|| self.stack.pop_transmit())
    }

    /// A buffer of `len` bytes to read the next TUN packet into (see [`Stack::read_buffer`]).
    ///
    /// [`Stack::read_buffer`]: roamtun_stack::Stack::read_buffer
    pub fn tun_read_buffer(&mut self, len: usize) -> Vec<u8> {
        self.stack.read_buffer(len)
    }

    /// Gives back a packet from [`Engine::pop_tun_packet`] once written (see [`Stack::recycle`]).
    ///
    /// [`Stack::recycle`]: roamtun_stack::Stack::recycle
    pub fn recycle_tun_packet(&mut self, packet: Vec<u8>) {
        self.stack.recycle(packet);
    }
}
