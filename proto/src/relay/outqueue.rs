//! What a session has queued towards its peer: encoded frames in chunks, in two lanes.
//!
//! A bulk transfer keeps up to a stream window of its bytes queued (in these lanes, the path's
//! queue, the writer's and the relay socket's); on a 50 Mbit/s uplink that is 90 ms. A keystroke, a
//! CREDIT or a DNS answer queued behind it would wait as long, where the bare link makes it wait a
//! few milliseconds. So frames that are small and have nothing of their own stream (or, for
//! datagrams, no datagram) still queued in the bulk lane go into the urgent lane, which leaves
//! first. Order is kept where the protocol needs it, within one stream and among datagrams: a
//! stream's frame goes urgent only once every earlier frame of the stream has left the bulk lane,
//! and an urgent frame always leaves before any bulk frame queued after it.
//!
//! The urgent lane holds at most [`URGENT_BUDGET`] bytes; beyond it small frames queue as bulk (and
//! the rest of their stream's follow them there), so a flood of small frames cannot starve the bulk
//! lane. Replies that belong to no stream ([`OutQueue::push_urgent`]) obey the same budget. The
//! bulk lane has no limit of its own: the engine stops reading the apps at its out budget and
//! treats a peer whose replies pile up beyond its queue limit as one that does not read
//! (`EngineConfig::queue_limit`).
//!
//! The lanes only help if little waits downstream of them, where everything is first come, first
//! served: the path's queue (one chunk), the writer's (up to eight) and the relay socket's send
//! buffer. So a bulk chunk is cut to what the path carries in [`SLOT_TIME`]
//! ([`OutQueue::set_rate`]): 192 KiB on a path faster than 3 Gbit/s, down to [`MIN_SLOT`] below 65
//! Mbit/s, where the writer also holds only two chunks (`RelayCore::writer_depth`). The relay
//! socket keeps at most two chunks unsent (`TCP_NOTSENT_LOWAT`, set by the path's reader).

use std::collections::VecDeque;

use bytes::Bytes;

use crate::time::Duration;
use crate::wire::{self, Frame};

/// Bulk frames are batched into chunks of at most this size, one transport write each: three whole
/// DATA frames (192 KiB) per hand-over to the writer task, a third of the wake-ups of one per frame.
/// On a fast path every bulk chunk is allocated at this size, so a freed chunk leaves a hole the next
/// one fits in exactly.
pub const CHUNK: usize = SHARE_FRACTION * (wire::HEADER_LEN + wire::MAX_BODY);

/// A bulk chunk carries about this much of the path's time: each chunk waiting downstream of the
/// lanes delays an urgent frame by as much. Paths faster than 3 Gbit/s get whole chunks.
pub const SLOT_TIME: Duration = Duration::from_micros(500);

/// The smallest bulk chunk (a path slower than 65 Mbit/s): 0.4 % of it goes to frame headers.
pub const MIN_SLOT: usize = 4 * 1024;

/// A DATA payload or a datagram of at most this many bytes may take the urgent lane: a keystroke, a
/// request, a DNS or VoIP packet. Bulk transfers come in frames as large as the app's segments.
pub const URGENT_MAX: usize = 2048;

/// The most bytes the urgent lane holds.
pub const URGENT_BUDGET: usize = 64 * 1024;

/// Urgent chunks are allocated at this size: they carry a few small frames.
const URGENT_CHUNK: usize = 8 * 1024;

/// A replay buffer keeps slices of an output chunk, rather than copies, when its stream's frames
/// are at least this fraction of the chunk's allocation.
const SHARE_FRACTION: usize = 3;

/// Where a frame of a stream (or a datagram) was last queued in the bulk lane: the sequence number
/// of that bulk chunk, 0 for never. The stream's next frame may go urgent once that chunk has left.
pub type BulkMark = u64;

/// Encoded frames on their way to the peer, and where the new stream bytes among them are: when the
/// chunk leaves ([`OutChunk::settle`]), each stream's replay buffer keeps a slice of it instead of a
/// copy of its own.
pub struct OutChunk {
    bytes: Vec<u8>,
    /// (stream id, start, length) of each DATA payload sent for the first time, in order.
    kept: Vec<(u32, usize, usize)>,
    /// The bulk chunk's sequence number (from 1); 0 for an urgent chunk.
    seq: u64,
}

impl OutChunk {
    fn new(capacity: usize, seq: u64) -> Self {
        OutChunk { bytes: Vec::with_capacity(capacity), kept: Vec::new(), seq }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Freezes the chunk and hands each stream its new bytes in it, through `keep(stream id, bytes)`:
    /// slices when the stream's DATA frames in this chunk together make at least a
    /// [`SHARE_FRACTION`]th of it (bulk transfers, whose frames are as large as the app's segments,
    /// 40-64 KiB), else copies, so that a few small unacknowledged bytes (an interactive session's
    /// keystrokes wait for half a window of them before the peer acknowledges) never keep a whole
    /// chunk alive. Acknowledgements come in stream order, so of all the chunks a replay buffer
    /// keeps slices of, only the oldest can be partly released: it keeps alive at most
    /// [`SHARE_FRACTION`] times its bytes, plus one chunk.
    pub fn settle(self, mut keep: impl FnMut(u32, Bytes)) -> Bytes {
        let capacity = self.bytes.capacity();
        let shares = self.shares();
        let bytes = Bytes::from(self.bytes);
        for (stream_id, start, len) in self.kept {
            let share = shares.iter().find(|(id, _)| *id == stream_id).map_or(0, |(_, total)| *total);
            keep(
                stream_id,
                if shared(share, capacity) {
                    bytes.slice(start..start + len)
                } else {
                    Bytes::copy_from_slice(&bytes[start..start + len])
                },
            );
        }
        bytes
    }

    /// Each stream's part of the chunk: the bytes of its DATA frames with new bytes, headers
    /// included. A chunk carries few streams.
    fn shares(&self) -> Vec<(u32, usize)> {
        let mut shares: Vec<(u32, usize)> = Vec::new();
        for &(stream_id, _, len) in &self.kept {
            let frame = wire::HEADER_LEN + wire::DATA_OVERHEAD + len;
            match shares.iter_mut().find(|(id, _)| *id == stream_id) {
                Some((_, total)) => *total += frame,
                None => shares.push((stream_id, frame)),
            }
        }
        shares
    }
}

fn shared(frames: usize, chunk: usize) -> bool {
    frames * SHARE_FRACTION >= chunk
}

/// Whether a DATA frame's payload is new (its replay buffer keeps it from the chunk) or resent from
/// the replay buffer, which has it already.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Yes,
    No,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lane {
    Urgent,
    Bulk,
}

/// The bulk chunk size for a path that carries `bytes_per_sec` (unknown: the largest).
pub fn slot(bytes_per_sec: Option<u64>) -> usize {
    bytes_per_sec.map_or(CHUNK, |rate| ((rate as f64 * SLOT_TIME.as_secs_f64()) as usize).clamp(MIN_SLOT, CHUNK))
}

/// One session's queue towards its peer (see the module's documentation).
pub struct OutQueue {
    urgent: VecDeque<OutChunk>,
    bulk: VecDeque<OutChunk>,
    urgent_bytes: usize,
    bulk_bytes: usize,
    /// The sequence number of the newest bulk chunk, and of the last one that left.
    bulk_pushed: u64,
    bulk_left: u64,
    /// The size of a bulk chunk, for the session's path ([`slot`]).
    slot: usize,
}

impl Default for OutQueue {
    fn default() -> Self {
        OutQueue {
            urgent: VecDeque::new(),
            bulk: VecDeque::new(),
            urgent_bytes: 0,
            bulk_bytes: 0,
            bulk_pushed: 0,
            bulk_left: 0,
            slot: CHUNK,
        }
    }
}

impl OutQueue {
    /// Sizes the bulk chunks queued from now on for a path that carries `bytes_per_sec`.
    pub fn set_rate(&mut self, bytes_per_sec: Option<u64>) {
        self.slot = slot(bytes_per_sec);
    }

    /// The largest DATA payload to queue at once: a whole frame fills at most one bulk chunk.
    pub fn max_payload(&self) -> usize {
        (self.slot - wire::HEADER_LEN - wire::DATA_OVERHEAD).min(wire::MAX_DATA)
    }

    /// Bytes queued in both lanes.
    pub fn bytes(&self) -> usize {
        self.urgent_bytes + self.bulk_bytes
    }

    /// The lane for a frame of `len` payload bytes of a stream whose last bulk frame is at `mark`.
    fn lane(&self, mark: BulkMark, len: usize, frame_len: usize) -> Lane {
        if len <= URGENT_MAX && mark <= self.bulk_left && self.urgent_bytes + frame_len <= URGENT_BUDGET {
            Lane::Urgent
        } else {
            Lane::Bulk
        }
    }

    /// Queues a frame that belongs to no stream and needs no order against any other: urgent, while
    /// the urgent lane has room ([`URGENT_BUDGET`]), else bulk. Such frames are replies to the peer's
    /// own frames (a RESET for a refused OPEN); a peer that sends many and reads none fills the bulk
    /// lane with them, where the engine's queue limit catches it.
    pub fn push_urgent(&mut self, frame: &Frame<'_>) {
        let lane = if self.urgent_bytes + frame.encoded_len() <= URGENT_BUDGET { Lane::Urgent } else { Lane::Bulk };
        self.push_frame(lane, frame);
    }

    /// Queues a frame behind everything queued so far (a CLOSE after the data before it).
    pub fn push_last(&mut self, frame: &Frame<'_>) {
        self.push_frame(Lane::Bulk, frame);
    }

    /// Queues a frame of the stream (or the datagrams) whose mark is `mark`, keeping their order.
    /// `payload` is the size that decides the lane: the DATA payload or datagram, 0 for a control
    /// frame.
    pub fn push_ordered(&mut self, mark: &mut BulkMark, payload: usize, frame: &Frame<'_>) {
        let lane = self.lane(*mark, payload, frame.encoded_len());
        self.push_frame(lane, frame);
        self.note(mark, lane);
    }

    /// Queues a DATA frame of stream `stream_id` whose mark is `mark`.
    pub fn push_data(&mut self, mark: &mut BulkMark, stream_id: u32, offset: u64, data: &[u8], keep: Keep) {
        let len = wire::HEADER_LEN + wire::DATA_OVERHEAD + data.len();
        let lane = self.lane(*mark, data.len(), len);
        let chunk = self.tail(lane, len);
        wire::encode_data_header(stream_id, offset, data.len(), &mut chunk.bytes);
        if keep == Keep::Yes {
            chunk.kept.push((stream_id, chunk.bytes.len(), data.len()));
        }
        chunk.bytes.extend_from_slice(data);
        self.add(lane, len);
        self.note(mark, lane);
    }

    /// The next chunk to send: urgent ones first.
    pub fn pop(&mut self) -> Option<OutChunk> {
        if let Some(chunk) = self.urgent.pop_front() {
            self.urgent_bytes -= chunk.len();
            return Some(chunk);
        }
        let chunk = self.bulk.pop_front()?;
        self.bulk_bytes -= chunk.len();
        self.bulk_left = chunk.seq;
        Some(chunk)
    }

    /// Takes every chunk out, in the order [`OutQueue::pop`] would give them.
    pub fn drain(&mut self) -> impl Iterator<Item = OutChunk> + '_ {
        std::iter::from_fn(|| self.pop())
    }

    fn push_frame(&mut self, lane: Lane, frame: &Frame<'_>) {
        let len = frame.encoded_len();
        let chunk = self.tail(lane, len);
        // Cannot fail: control frames and datagrams are within the body limit (checked by callers).
        frame.encode(&mut chunk.bytes).expect("frame fits the wire format");
        self.add(lane, len);
    }

    fn note(&self, mark: &mut BulkMark, lane: Lane) {
        if lane == Lane::Bulk {
            *mark = self.bulk_pushed;
        }
    }

    fn add(&mut self, lane: Lane, len: usize) {
        match lane {
            Lane::Urgent => self.urgent_bytes += len,
            Lane::Bulk => self.bulk_bytes += len,
        }
    }

    fn tail(&mut self, lane: Lane, room: usize) -> &mut OutChunk {
        let (queue, size) = match lane {
            Lane::Urgent => (&mut self.urgent, URGENT_CHUNK),
            Lane::Bulk => (&mut self.bulk, self.slot),
        };
        if queue.back().is_none_or(|c| c.bytes.len() + room > size) {
            let seq = match lane {
                Lane::Urgent => 0,
                Lane::Bulk => {
                    self.bulk_pushed += 1;
                    self.bulk_pushed
                }
            };
            queue.push_back(OutChunk::new(size.max(room), seq));
        }
        // Cannot fail: pushed just above when empty.
        queue.back_mut().expect("a tail chunk exists")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: usize) -> usize {
        wire::HEADER_LEN + wire::DATA_OVERHEAD + payload
    }

    /// The frames of a chunk as (stream id, offset, payload length), DATA only.
    fn data_frames(chunk: &[u8]) -> Vec<(u32, u64, usize)> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some((f, used)) = Frame::decode(rest).unwrap() {
            if let Frame::Data { stream_id, offset, data } = f {
                out.push((stream_id, offset, data.len()));
            }
            rest = &rest[used..];
        }
        out
    }

    #[test]
    fn a_replay_buffer_shares_only_slices_that_are_a_good_part_of_their_chunk() {
        // Bulk: whole DATA frames, three to a chunk, each payload is shared.
        assert_eq!(CHUNK, 3 * frame(wire::MAX_DATA));
        assert!(shared(frame(wire::MAX_DATA), CHUNK));
        // A piece of a large write is copied: it would keep 192 KiB alive.
        assert!(!shared(frame(32 * 1024), CHUNK));
    }

    #[test]
    fn a_stream_shares_the_chunk_by_all_its_frames_in_it() {
        let mut q = OutQueue::default();
        let (mut bulk, mut other, mut resent) = (0, 0, 0);
        // A bulk stream whose app writes 40 KiB segments (each frame alone is under a third of the
        // chunk), 2.5 KiB writes on another stream between them (too large for the urgent lane), and
        // a resent frame (not kept again).
        let mut offset = 0;
        for _ in 0..4 {
            q.push_data(&mut bulk, 1, offset, &[1; 40 << 10], Keep::Yes);
            q.push_data(&mut other, 3, offset, &[3; 2560], Keep::Yes);
            offset += 40 << 10;
        }
        q.push_data(&mut resent, 5, 0, &[5; 10 << 10], Keep::No);
        let chunk = q.pop().unwrap();
        assert!(q.pop().is_none(), "all in one chunk");
        assert_eq!(chunk.shares(), vec![(1, 4 * frame(40 << 10)), (3, 4 * frame(2560))]);
        let capacity = chunk.bytes.capacity();
        assert!(!shared(frame(40 << 10), capacity), "one frame alone would be copied");
        assert!(shared(4 * frame(40 << 10), capacity), "the bulk stream keeps slices");
        assert!(!shared(4 * frame(2560), capacity), "the small writes are copied");
        let mut kept = Vec::new();
        chunk.settle(|id, bytes| kept.push((id, bytes.len())));
        assert_eq!(kept.len(), 8, "every new payload, none of the resent one");
    }

    #[test]
    fn a_keystroke_passes_the_bulk_stream_queued_before_it() {
        let mut q = OutQueue::default();
        let (mut bulk, mut keys) = (0, 0);
        for i in 0..8u64 {
            q.push_data(&mut bulk, 1, i * 65536, &[1; wire::MAX_DATA], Keep::Yes);
        }
        q.push_data(&mut keys, 3, 0, b"ls\n", Keep::Yes);
        let first = q.pop().unwrap();
        assert_eq!(data_frames(&first.bytes), vec![(3, 0, 3)]);
        assert_eq!(data_frames(&q.pop().unwrap().bytes)[0], (1, 0, wire::MAX_DATA));
    }

    #[test]
    fn a_stream_keeps_its_order_across_the_lanes() {
        let mut q = OutQueue::default();
        let mut s = 0;
        q.push_data(&mut s, 1, 0, &[1; 10], Keep::Yes); // urgent
        q.push_data(&mut s, 1, 10, &[1; 60000], Keep::Yes); // bulk
        q.push_data(&mut s, 1, 60010, &[1; 10], Keep::Yes); // bulk: its stream is there
        let order: Vec<_> = q.drain().flat_map(|c| data_frames(&c.bytes)).collect();
        assert_eq!(order, vec![(1, 0, 10), (1, 10, 60000), (1, 60010, 10)]);
        // Once the bulk frames have left, the stream's small frames are urgent again.
        q.push_data(&mut s, 1, 60020, &[1; 60000], Keep::Yes);
        let mut other = 0;
        for i in 0..3 {
            q.push_data(&mut other, 3, i * 65536, &[3; wire::MAX_DATA], Keep::Yes);
        }
        assert_eq!(data_frames(&q.pop().unwrap().bytes)[0], (1, 60020, 60000));
        q.push_data(&mut s, 1, 120020, &[1; 5], Keep::Yes);
        assert_eq!(data_frames(&q.pop().unwrap().bytes), vec![(1, 120020, 5)], "passes stream 3");
        assert_eq!(data_frames(&q.pop().unwrap().bytes), vec![(3, 131072, wire::MAX_DATA)]);
    }

    #[test]
    fn a_slow_path_gets_small_bulk_chunks() {
        assert_eq!(slot(None), CHUNK);
        assert_eq!(slot(Some(5_000_000_000 / 8)), CHUNK, "5 Gbit/s");
        assert_eq!(slot(Some(200_000_000 / 8)), 12_500, "200 Mbit/s: 0.5 ms");
        assert_eq!(slot(Some(1_000_000 / 8)), MIN_SLOT, "1 Mbit/s");
        let mut q = OutQueue::default();
        q.set_rate(Some(200_000_000 / 8));
        let mut s = 0;
        let data = vec![7; 100_000];
        for (i, piece) in data.chunks(q.max_payload()).enumerate() {
            q.push_data(&mut s, 1, (i * q.max_payload()) as u64, piece, Keep::Yes);
        }
        let chunks: Vec<_> = q.drain().collect();
        assert!(chunks.iter().all(|c| c.len() <= 12_500), "no chunk beyond the slot");
        let payload: usize = chunks.iter().flat_map(|c| data_frames(&c.bytes)).map(|(_, _, n)| n).sum();
        assert_eq!(payload, data.len());
    }

    #[test]
    fn small_frames_beyond_the_urgent_budget_queue_as_bulk() {
        let mut q = OutQueue::default();
        let mut marks = vec![0; 200];
        for (i, mark) in marks.iter_mut().enumerate() {
            q.push_data(mark, i as u32, 0, &[0; 1000], Keep::Yes);
        }
        assert!(q.urgent_bytes <= URGENT_BUDGET);
        assert!(q.bulk_bytes > 0);
        assert_eq!(q.bytes(), 200 * frame(1000));
        let total: usize = q.drain().map(|c| data_frames(&c.bytes).len()).sum();
        assert_eq!(total, 200);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn replies_keep_to_the_urgent_budget_too() {
        let mut q = OutQueue::default();
        let reset = Frame::Reset { stream_id: 1, code: crate::wire::ResetCode::Refused };
        let n = 3 * URGENT_BUDGET / reset.encoded_len();
        for _ in 0..n {
            q.push_urgent(&reset);
        }
        assert!(q.urgent_bytes <= URGENT_BUDGET, "urgent lane holds {} bytes", q.urgent_bytes);
        assert_eq!(q.bytes(), n * reset.encoded_len(), "none lost: the rest queues as bulk");
    }
}
