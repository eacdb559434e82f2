//! Resuming a session on a new path after the old one was lost with what it carried.

use std::collections::BTreeMap;

use super::session::{settle, Phase};
use super::{Engine, Role, SessionId};
use crate::time::Instant;
use crate::wire::Frame;

impl Engine {
    /// For every stream of a session: its id and the bytes received from the peer in order. After a
    /// path is lost, the peer resends each stream from this offset ([`Engine::resume_session`]).
    pub fn received_offsets(&self, sid: SessionId) -> Vec<(u32, u64)> {
        self.sessions
            .get(&sid)
            .map_or_else(Vec::new, |s| s.streams.iter().map(|(id, st)| (*id, st.recv.received())).collect())
    }

    /// Continues a session on a new path after the old one was lost with whatever it carried.
    /// `peer_received` is the peer's [`Engine::received_offsets`]. Everything queued for the old path
    /// is dropped and regenerated: each stream resends from the offset the peer has (its replay buffer
    /// holds those bytes) and grants its credit again; an OPEN or OPEN_OK that may have been lost is
    /// repeated; a stream the peer no longer has ends here, gracefully if both FINs went through.
    ///
    /// Returns how many stream bytes go out again (they were sent on the lost path and the peer does
    /// not have them).
    pub fn resume_session(&mut self, sid: SessionId, peer_received: &[(u32, u64)], now: Instant) -> u64 {
        let role = self.config.role;
        let Some(session) = self.sessions.get_mut(&sid) else { return 0 };
        let mut replayed = 0;
        session.rx.clear();
        // The queued frames are regenerated below, but the stream bytes in them are the only copy:
        // the replay buffers keep them before the frames go.
        for chunk in session.out.drain() {
            settle(chunk, &mut session.streams);
        }
        let peer: BTreeMap<u32, u64> = peer_received.iter().copied().collect();
        let ours_parity = match role {
            Role::Client => 1,
            Role::Server => 0,
        };
        let mut gone = Vec::new();
        for (&id, stream) in session.streams.iter_mut() {
            match peer.get(&id) {
                Some(&received) => {
                    let before = stream.send.offset();
                    stream.send.rewind(received);
                    replayed += before - stream.send.offset();
                    stream.replay.ack(stream.send.acked());
                    let (received, max_offset) = stream.recv.current_grant();
                    session.out.push_ordered(
                        &mut stream.mark,
                        0,
                        &Frame::Credit { stream_id: id, received, max_offset },
                    );
                    if id % 2 != ours_parity && stream.phase == Phase::Open {
                        session.out.push_ordered(&mut stream.mark, 0, &Frame::OpenOk { stream_id: id });
                    }
                }
                // Our OPEN was lost with the path: open it again.
                None if id % 2 == ours_parity && stream.phase == Phase::Opening => {
                    let (src, dst) = stream.endpoints;
                    session.out.push_ordered(&mut stream.mark, 0, &Frame::Open { stream_id: id, src, dst });
                }
                // The peer finished with it, which it does only after our FIN and with its own FIN
                // acknowledged by us: it ends here as it would have.
                None if stream.recv.fin_complete() && stream.send.fin_sent() => stream.send.on_peer_finished(),
                // The peer no longer has it: its RESET was lost with the path.
                None => gone.push(id),
            }
        }
        // Streams the peer lists and we do not need nothing from us. One of the peer's we never saw
        // had its OPEN lost, and the peer sends it again. One we finished with or reset is settled by
        // the peer's own resume, from our list that lacks it (the two arms above): a RESET from here
        // would abort a stream we ended gracefully while the peer's app still reads its last bytes.
        for id in gone {
            if let Some(stream) = session.streams.remove(&id) {
                self.flow_streams.remove(&stream.flow);
                let _ = self.stack.abort(stream.flow, now.into());
            }
        }
        replayed
    }
}
