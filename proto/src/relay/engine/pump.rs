//! Moving bytes between the stack and the open streams, one named step at a time.
//!
//! The session's queue budget is shared in turn: each pass starts with the stream after the last
//! one that sent. Taken in stream order, the first busy streams would fill the budget on every pass
//! and a new connection, whose stream comes last, would wait behind all of them for seconds.

use std::collections::BTreeMap;
use std::ops::Bound;

use roamtun_stack::Stack;

use super::counters::SessionCounters;
use super::session::{Phase, Session, Stream};
use super::Engine;
use crate::relay::outqueue::{Keep, OutQueue};
use crate::wire::Frame;

impl Engine {
    /// Moves bytes between the stack and every open stream; returns whether anything moved.
    pub(super) fn pump_streams(&mut self) -> bool {
        let budget = self.config.session_out_budget;
        let Engine { stack, sessions, flow_streams, .. } = self;
        let mut progress = false;
        for session in sessions.values_mut() {
            let Session { streams, out, counters, pump_from, .. } = session;
            let mut finished = Vec::new();
            let mut last_sent = None;
            // From the stream after the last one that sent, round the session once.
            let from = *pump_from;
            let rounds = [(Bound::Included(from), Bound::Unbounded), (Bound::Unbounded, Bound::Excluded(from))];
            for round in rounds {
                for (&stream_id, stream) in streams.range_mut(round) {
                    if stream.phase != Phase::Open {
                        continue;
                    }
                    let mut pump =
                        StreamPump { stack: &mut *stack, out: &mut *out, counters: &mut *counters, stream_id, stream };
                    progress |= pump.deliver_to_app();
                    pump.grant_credit();
                    if pump.send_to_peer(budget) {
                        progress = true;
                        last_sent = Some(stream_id);
                    }
                    progress |= pump.send_fin();
                    if pump.stream.is_finished() {
                        finished.push(stream_id);
                    }
                }
            }
            if let Some(id) = last_sent {
                *pump_from = next_after(streams, id);
            }
            for stream_id in finished {
                if let Some(stream) = streams.remove(&stream_id) {
                    flow_streams.remove(&stream.flow);
                    stack.release(stream.flow);
                }
            }
        }
        progress
    }
}

/// One open stream while its bytes move, with the parts of its session and engine that moving
/// them touches. Each step returns whether anything moved.
struct StreamPump<'a> {
    stack: &'a mut Stack,
    out: &'a mut OutQueue,
    counters: &'a mut SessionCounters,
    stream_id: u32,
    stream: &'a mut Stream,
}

impl StreamPump<'_> {
    /// Peer → app, as far as the app's socket takes it; then the app's FIN once the peer finished
    /// and the app took every byte.
    fn deliver_to_app(&mut self) -> bool {
        let StreamPump { stack, stream, .. } = self;
        let flow = stream.flow;
        let mut progress = false;
        while stream.recv.pending_len() > 0 {
            let (front, _) = stream.recv.pending();
            let n = stack.send(flow, front);
            let whole = n == front.len();
            stream.recv.consume(n);
            progress |= n > 0;
            if !whole {
                break;
            }
        }
        if stream.recv.finished() && !stream.app_close_sent {
            stack.close(flow);
            stream.app_close_sent = true;
            progress = true;
        }
        progress
    }

    /// A CREDIT when the app took enough of what the peer sent for a new grant to be due.
    fn grant_credit(&mut self) {
        let StreamPump { out, stream_id, stream, .. } = self;
        if let Some((received, max_offset)) = stream.recv.credit_due() {
            out.push_ordered(&mut stream.mark, 0, &Frame::Credit { stream_id: *stream_id, received, max_offset });
        }
    }

    /// App → peer, within the peer's credit and our queue budget. First what a lost path took with
    /// it (from the replay buffer), then new bytes from the app.
    fn send_to_peer(&mut self, budget: usize) -> bool {
        let mut room = budget.saturating_sub(self.out.bytes()).min(self.stream.send.allowance());
        let mut progress = false;
        if room > 0 && self.stream.send.offset() < self.stream.replay.end() {
            progress |= self.resend_replay(&mut room);
        }
        if room > 0 && self.stream.send.offset() == self.stream.replay.end() {
            progress |= self.read_app(room);
        }
        progress
    }

    /// Up to `room` bytes again from the replay buffer, from where the peer's received offset put
    /// the send side back; `room` shrinks by what went.
    fn resend_replay(&mut self, room: &mut usize) -> bool {
        let StreamPump { out, counters, stream_id, stream, .. } = self;
        let mut offset = stream.send.offset();
        if let Some(parts) = stream.replay.since(offset) {
            for part in parts {
                for piece in part[..part.len().min(*room)].chunks(out.max_payload()) {
                    out.push_data(&mut stream.mark, *stream_id, offset, piece, Keep::No);
                    offset += piece.len() as u64;
                    *room -= piece.len();
                }
            }
        }
        let n = (offset - stream.send.offset()) as usize;
        stream.send.on_sent(n);
        counters.bytes_resent += n as u64;
        n > 0
    }

    /// Up to `room` new bytes from the app, kept in the replay buffer until the peer has them.
    fn read_app(&mut self, room: usize) -> bool {
        let StreamPump { stack, out, counters, stream_id, stream } = self;
        let stream_id = *stream_id;
        let mut offset = stream.send.offset();
        let Stream { replay, mark, flow, .. } = &mut **stream;
        let max_payload = out.max_payload();
        let n = stack.recv(*flow, room, |chunk| {
            replay.push_queued(chunk.len());
            for piece in chunk.chunks(max_payload) {
                out.push_data(mark, stream_id, offset, piece, Keep::Yes);
                offset += piece.len() as u64;
            }
        });
        if n == 0 {
            return false;
        }
        stream.send.on_sent(n);
        counters.bytes_sent += n as u64;
        true
    }

    /// FIN once the app finished sending and every byte of it went out.
    fn send_fin(&mut self) -> bool {
        let StreamPump { stack, out, stream_id, stream, .. } = self;
        let all_sent = stream.send.offset() == stream.replay.end();
        if stream.send.fin_sent() || !all_sent || !stack.app_finished_sending(stream.flow) {
            return false;
        }
        out.push_ordered(&mut stream.mark, 0, &Frame::Fin { stream_id: *stream_id, offset: stream.send.offset() });
        stream.send.on_fin_sent();
        true
    }
}

/// The id of the stream after `id` in the session's order (the first one after the last).
fn next_after(streams: &BTreeMap<u32, Stream>, id: u32) -> u32 {
    streams.range(id + 1..).next().or_else(|| streams.iter().next()).map_or(0, |(next, _)| *next)
}

impl Stream {
    /// Whether the stream may be forgotten: only when nothing of it can be lost any more. A path
    /// lost before could take our last bytes or FIN with it, with no stream left to resend them.
    fn is_finished(&self) -> bool {
        self.app_done && self.send.fin_acked() && self.app_close_sent
    }
}
