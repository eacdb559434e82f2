//! The peer side: frames read from a session's transport, and what each one does.

use std::net::{IpAddr, SocketAddr};

use super::session::{Phase, Stream};
use super::{Engine, Role, SessionError, SessionId};
use crate::relay::policy::Forbidden;
use crate::relay::stream::StreamError;
use crate::time::Instant;
use crate::wire::{self, Frame, ResetCode};

impl Engine {
    /// Bytes read from a session's transport. Malformed frames are skipped and counted; an error means
    /// the session must end.
    pub fn handle_session_bytes(&mut self, sid: SessionId, bytes: &[u8], now: Instant) -> Result<(), SessionError> {
        let session = self.sessions.get_mut(&sid).ok_or(SessionError::NoSuchSession(sid))?;
        let mut buf = std::mem::take(&mut session.rx);
        let result = if buf.is_empty() {
            // The common case: decode straight from the caller's buffer, keep only a partial tail.
            let r = self.handle_frames(sid, bytes, now);
            if let Ok(consumed) = r {
                buf.extend_from_slice(&bytes[consumed..]);
            }
            r
        } else {
            buf.extend_from_slice(bytes);
            let r = self.handle_frames(sid, &buf, now);
            if let Ok(consumed) = r {
                buf.drain(..consumed);
            }
            r
        };
        if result.is_err() {
            // The session or its path ends: what is left of this read is not for anyone.
            buf.clear();
        }
        if let Some(session) = self.sessions.get_mut(&sid) {
            session.rx = buf;
        }
        result.map(|_| ())
    }

    /// Handles every complete frame at the front of `data`; returns the bytes consumed.
    ///
    /// Every frame may queue a reply, and a peer that sends without reading would make those pile up:
    /// once the session's queue passes [`EngineConfig::queue_limit`], the input stops with
    /// [`SessionError::PeerNotReading`].
    fn handle_frames(&mut self, sid: SessionId, data: &[u8], now: Instant) -> Result<usize, SessionError> {
        let Some(limits) = self.session_limits(sid) else { return Err(SessionError::NoSuchSession(sid)) };
        let limit = self.config.queue_limit(&limits);
        let mut pos = 0;
        while pos < data.len() {
            match Frame::decode(&data[pos..]) {
                Ok(Some((frame, n))) => {
                    pos += n;
                    self.handle_frame(sid, frame, now)?;
                    let queued = self.sessions.get(&sid).map_or(0, |s| s.out.bytes());
                    if queued > limit {
                        return Err(SessionError::PeerNotReading { queued, limit });
                    }
                }
                Ok(None) => break,
                Err(err) => match wire::frame_len(&data[pos..]) {
                    // The header's length still delimits the frame: skip it, keep the session.
                    Some(n) => {
                        if let Some(left_out) = self.session_mut(sid).warnings.allow(now) {
                            tracing::warn!(session = sid.0, %err, left_out, "skipping a malformed frame");
                        }
                        self.counters_mut(sid).frames_malformed += 1;
                        pos += n;
                    }
                    None => break,
                },
            }
        }
        Ok(pos)
    }

    fn handle_frame(&mut self, sid: SessionId, frame: Frame<'_>, now: Instant) -> Result<(), SessionError> {
        match frame {
            Frame::Close { code, reason } => {
                return Err(SessionError::PeerClosed { code, reason: reason.to_string() });
            }
            Frame::Open { stream_id, src, dst } => self.peer_open(sid, stream_id, src, dst, now),
            Frame::OpenOk { stream_id } => self.peer_open_ok(sid, stream_id),
            Frame::Data { stream_id, offset, data } => {
                let Engine { stack, sessions, .. } = self;
                let session = sessions.get_mut(&sid).expect("frames are handled for live sessions");
                session.counters.bytes_received += data.len() as u64;
                let r = session.streams.get_mut(&stream_id).map(|s| {
                    let flow = s.flow;
                    let open = s.phase == Phase::Open;
                    // Straight into the app's socket when nothing waits before these bytes.
                    s.recv
                        .on_data_with(offset, data, |fresh| if open { stack.send(flow, fresh) } else { 0 })
                        .map(|_| ())
                });
                self.after_stream_input(sid, stream_id, r, now);
            }
            Frame::Fin { stream_id, offset } => {
                let r = self.stream_mut(sid, stream_id).map(|s| s.recv.on_fin(offset));
                self.after_stream_input(sid, stream_id, r, now);
            }
            Frame::Credit { stream_id, received, max_offset } => {
                if let Some(s) = self.stream_mut(sid, stream_id) {
                    s.send.on_credit(received, max_offset);
                    s.replay.ack(s.send.acked());
                }
            }
            Frame::Reset { stream_id, code } => self.peer_reset(sid, stream_id, code, now),
            Frame::Datagram { packet } => self.datagram_from_peer(sid, packet, now),
            Frame::Ping { nonce } => self.session_mut(sid).out.push_urgent(&Frame::Pong { nonce }),
            // The path reader takes well-formed ones out; these reached us anyway and mean nothing here.
            Frame::Pong { .. } | Frame::Report { .. } => {}
            Frame::Hello { .. } | Frame::Welcome { .. } | Frame::Control { .. } => {
                // Handshake and transition frames belong to the daemon around the engine (the path
                // reader takes CONTROL out of the byte stream); here they are out of place.
                self.counters_mut(sid).frames_malformed += 1;
            }
        }
        Ok(())
    }

    /// A stream frame was applied (`Some(result)`) or named no stream (`None`, e.g. one we just reset:
    /// frames in flight are expected and ignored).
    fn after_stream_input(&mut self, sid: SessionId, stream_id: u32, r: Option<Result<(), StreamError>>, now: Instant) {
        if let Some(Err(err)) = r {
            if let Some(left_out) = self.session_mut(sid).warnings.allow(now) {
                tracing::warn!(session = sid.0, stream = stream_id, %err, left_out, "peer broke the stream rules; resetting the stream");
            }
            self.counters_mut(sid).streams_violated += 1;
            self.reset_stream(sid, stream_id, ResetCode::Internal, now);
        }
    }

    /// Ends a stream from our side: tells the peer and resets the app's connection.
    fn reset_stream(&mut self, sid: SessionId, stream_id: u32, code: ResetCode, now: Instant) {
        let session = self.session_mut(sid);
        if let Some(mut stream) = session.streams.remove(&stream_id) {
            session.out.push_ordered(&mut stream.mark, 0, &Frame::Reset { stream_id, code });
            self.flow_streams.remove(&stream.flow);
            let _ = self.stack.abort(stream.flow, now.into());
        }
    }

    fn peer_open(&mut self, sid: SessionId, stream_id: u32, src: SocketAddr, dst: SocketAddr, now: Instant) {
        let role = self.config.role;
        let window = self.config.stream_window;
        let session = self.session_mut(sid);
        // The peer opens streams with the other parity; a clash would confuse two connections.
        let peer_parity = match role {
            Role::Client => 0,
            Role::Server => 1,
        };
        let allowed = match role {
            // The server may only reach this client's own virtual IPs.
            Role::Client => session.owns(dst.ip()),
            // A client may only speak from its own virtual IPs.
            Role::Server => session.owns(src.ip()),
        };
        if session.streams.contains_key(&stream_id) {
            // An OPEN for a live stream: the two sides no longer agree on it, so neither may keep it.
            if let Some(left_out) = session.warnings.allow(now) {
                tracing::warn!(
                    session = sid.0,
                    stream = stream_id,
                    left_out,
                    "peer reopened a live stream; resetting it"
                );
            }
            session.counters.streams_violated += 1;
            self.reset_stream(sid, stream_id, ResetCode::Internal, now);
            return;
        }
        // Ids only grow: one at or below the highest the peer opened names a stream that was here and
        // is gone (reset, or finished). Opening it again would mix two streams under one id, the old
        // one's frames still queued with the new one's.
        let reused = session.highest_peer_stream.is_some_and(|highest| stream_id <= highest);
        if stream_id % 2 != peer_parity || !allowed || reused {
            if let Some(left_out) = session.warnings.allow(now) {
                tracing::warn!(session = sid.0, stream = stream_id, %src, %dst, reused, left_out, "refusing a stream the peer may not open");
            }
            session.counters.streams_violated += 1;
            // Nothing of ours went out on this stream: no order to keep.
            session.out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::Refused });
            return;
        }
        if role == Role::Server {
            if let Err(why) = self.destination_allowed(dst.ip()) {
                tracing::debug!(session = sid.0, stream = stream_id, %src, %dst, %why, "refusing a connection");
                let session = self.session_mut(sid);
                session.counters.streams_forbidden += 1;
                session.out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::NotAllowed });
                return;
            }
        }
        let session = self.session_mut(sid);
        let limit = session.limits.streams;
        if session.streams.len() >= limit {
            tracing::debug!(
                session = sid.0,
                stream = stream_id,
                limit,
                "refusing a connection: the session is at its stream limit"
            );
            session.counters.streams_refused_limit += 1;
            session.out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::LimitReached });
            return;
        }
        session.highest_peer_stream = session.highest_peer_stream.max(Some(stream_id));
        match self.stack.connect(src, dst) {
            Ok(flow) => {
                let session = self.session_mut(sid);
                session.streams.insert(stream_id, Stream::new(flow, (src, dst), Phase::Connecting, window));
                session.counters.tcp_streams_opened += 1;
                self.flow_streams.insert(flow, (sid, stream_id));
                tracing::debug!(session = sid.0, stream = stream_id, %src, %dst, "peer opened a TCP connection");
            }
            Err(err) => {
                if let Some(left_out) = self.session_mut(sid).warnings.allow(now) {
                    tracing::warn!(session = sid.0, stream = stream_id, %err, left_out, "cannot open the connection the peer asked for");
                }
                self.session_mut(sid).out.push_urgent(&Frame::Reset { stream_id, code: ResetCode::Refused });
            }
        }
    }

    fn peer_open_ok(&mut self, sid: SessionId, stream_id: u32) {
        let Some(stream) = self.stream_mut(sid, stream_id) else { return };
        if stream.phase == Phase::Opening {
            stream.phase = Phase::Open;
            let flow = stream.flow;
            // The flow is alive while its stream is; accept cannot fail for a live flow.
            let _ = self.stack.accept(flow);
        }
    }

    fn peer_reset(&mut self, sid: SessionId, stream_id: u32, code: ResetCode, now: Instant) {
        let Some(stream) = self.session_mut(sid).streams.remove(&stream_id) else { return };
        tracing::debug!(session = sid.0, stream = stream_id, %code, "peer reset the stream");
        self.flow_streams.remove(&stream.flow);
        // A held SYN is refused (the app sees "connection refused"), an open connection is reset.
        let _ = self.stack.abort(stream.flow, now.into());
    }

    /// Server: whether a client may send to `dst` ([`crate::relay::policy`]).
    pub(super) fn destination_allowed(&self, dst: IpAddr) -> Result<(), Forbidden> {
        self.config.destinations.check(dst, || self.sessions.values().any(|s| s.owns(dst)))
    }
}
