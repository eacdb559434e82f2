//! Flow control and ordering of one relay stream, one direction each: [`SendHalf`] counts what we may
//! send, [`RecvHalf`] holds what arrived until the app takes it. Sans-IO: no sockets, no clock.
//!
//! Every byte of a stream has an offset. The receiver grants credit as "you may send below offset X"
//! and acknowledges "I have everything below offset R". Credit is a byte budget: the receiver never
//! holds more than one window of bytes the app has not taken, so memory is bounded and a slow app
//! closes the sender's window instead of growing a queue. Offsets also make resending after an uplink
//! switch exact: bytes below R are never sent again, a repeated byte is recognised and dropped.

use std::collections::VecDeque;

use bytes::{Buf, Bytes};

/// The credit every stream starts with in each direction, before the receiver's first CREDIT. A
/// protocol constant, so the two daemons agree on it whatever windows they are configured with; the
/// receiver grants its real window with its first CREDIT.
pub const INITIAL_CREDIT: u64 = 64 * 1024;

/// A violation of the stream rules by the peer; the stream is reset, the session goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// DATA starts beyond the next expected byte: bytes in between were lost.
    #[error("data at offset {offset} leaves a gap after byte {expected}")]
    Gap { offset: u64, expected: u64 },
    /// DATA goes past the credit we granted.
    #[error("data up to offset {end} exceeds the granted credit {granted}")]
    CreditExceeded { end: u64, granted: u64 },
    /// DATA beyond the final size, or two different final sizes.
    #[error("final size {fin} contradicts data up to offset {end}")]
    FinalSize { fin: u64, end: u64 },
}

/// What we may still send on a stream.
#[derive(Debug, Clone)]
pub struct SendHalf {
    /// Offset of the next byte to send.
    offset: u64,
    /// The peer accepts bytes with an offset below this.
    max: u64,
    /// Everything below this offset is acknowledged by the peer.
    acked: u64,
    fin_sent: bool,
    /// The peer acknowledged our FIN (a CREDIT whose `received` is one past the final size, as TCP
    /// counts its FIN).
    fin_acked: bool,
}

impl SendHalf {
    pub fn new(initial_credit: u64) -> Self {
        SendHalf { offset: 0, max: initial_credit, acked: 0, fin_sent: false, fin_acked: false }
    }

    /// Bytes we may send now.
    pub fn allowance(&self) -> usize {
        usize::try_from(self.max.saturating_sub(self.offset)).unwrap_or(usize::MAX)
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Records `n` bytes sent at [`SendHalf::offset`].
    pub fn on_sent(&mut self, n: usize) {
        debug_assert!(n <= self.allowance(), "sent beyond credit");
        self.offset += n as u64;
    }

    /// Applies a CREDIT frame. Credit and acknowledgement only move forward: a reordered, older frame
    /// cannot shrink them.
    pub fn on_credit(&mut self, received: u64, max_offset: u64) {
        self.max = self.max.max(max_offset);
        self.acked = self.acked.max(received.min(self.offset));
        if self.fin_sent && received == self.offset + 1 {
            self.fin_acked = true;
        }
    }

    /// The peer has every byte and our FIN: nothing of this direction can be lost any more.
    pub fn fin_acked(&self) -> bool {
        self.fin_acked
    }

    /// The peer finished with the stream, which it does only after our FIN arrived.
    pub fn on_peer_finished(&mut self) {
        self.fin_acked = true;
    }

    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// After a path was lost: the peer says it has every byte below `to`. Sending continues from there
    /// (the caller resends those bytes from its [`ReplayBuffer`]), and the FIN, if it was sent, must be
    /// sent again after them. `to` beyond what was sent is ignored.
    pub fn rewind(&mut self, to: u64) {
        if to > self.offset {
            return;
        }
        self.acked = self.acked.max(to);
        self.offset = to.max(self.acked);
        self.fin_sent = false;
    }

    pub fn on_fin_sent(&mut self) {
        self.fin_sent = true;
    }
}

/// What arrived on a stream and is not yet taken by the app.
#[derive(Debug, Clone)]
pub struct RecvHalf {
    window: u64,
    /// Every byte below this offset has arrived.
    received: u64,
    /// Every byte below this offset has been taken by the app.
    consumed: u64,
    /// The credit we last granted (the peer may send below it).
    granted: u64,
    /// Bytes in `consumed..received`.
    pending: VecDeque<u8>,
    fin: Option<u64>,
    /// The FIN arrived (with every byte before it) and was not acknowledged yet.
    fin_ack_due: bool,
}

impl RecvHalf {
    /// `window` is the byte budget of this half, at least [`INITIAL_CREDIT`] (the credit the peer
    /// starts with, which we must honour); [`RecvHalf::credit_due`] grants the rest at once.
    pub fn new(window: u64) -> Self {
        let window = window.max(INITIAL_CREDIT);
        RecvHalf {
            window,
            received: 0,
            consumed: 0,
            granted: INITIAL_CREDIT,
            pending: VecDeque::new(),
            fin: None,
            fin_ack_due: false,
        }
    }

    /// Accepts DATA at `offset`. Bytes that arrived before (a resend after a switch) are skipped, so each
    /// byte is delivered once. Returns how many new bytes were queued.
    pub fn on_data(&mut self, offset: u64, data: &[u8]) -> Result<usize, StreamError> {
        self.on_data_with(offset, data, |_| 0)
    }

    /// Like [`RecvHalf::on_data`], but when nothing is pending the new bytes are first offered to
    /// `deliver` (the app's socket), which returns how many it took; only the rest is queued. This saves
    /// a copy on the hot path.
    pub fn on_data_with(
        &mut self,
        offset: u64,
        data: &[u8],
        deliver: impl FnOnce(&[u8]) -> usize,
    ) -> Result<usize, StreamError> {
        let end = offset + data.len() as u64;
        if offset > self.received {
            return Err(StreamError::Gap { offset, expected: self.received });
        }
        if end > self.granted {
            return Err(StreamError::CreditExceeded { end, granted: self.granted });
        }
        if let Some(fin) = self.fin {
            if end > fin {
                return Err(StreamError::FinalSize { fin, end });
            }
        }
        let skip = (self.received - offset).min(data.len() as u64) as usize;
        let fresh = &data[skip..];
        let taken = if self.pending.is_empty() && !fresh.is_empty() { deliver(fresh).min(fresh.len()) } else { 0 };
        self.consumed += taken as u64;
        self.pending.extend(&fresh[taken..]);
        self.received += fresh.len() as u64;
        Ok(fresh.len())
    }

    /// Accepts FIN: the stream ends at `offset`.
    pub fn on_fin(&mut self, offset: u64) -> Result<(), StreamError> {
        if offset < self.received || self.fin.is_some_and(|f| f != offset) {
            return Err(StreamError::FinalSize { fin: offset, end: self.received.max(self.fin.unwrap_or(0)) });
        }
        self.fin = Some(offset);
        // Acknowledged (again: it may be a resend) once every byte before it is here.
        self.fin_ack_due = true;
        Ok(())
    }

    /// The bytes waiting for the app, as two slices (ring buffer halves).
    pub fn pending(&self) -> (&[u8], &[u8]) {
        self.pending.as_slices()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The app took `n` bytes from the front of [`RecvHalf::pending`].
    pub fn consume(&mut self, n: usize) {
        self.pending.drain(..n);
        self.consumed += n as u64;
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// A CREDIT to send, `(received, max_offset)`, once the app has taken half a window since the last
    /// grant: granting every byte would cost a frame per read, granting late would stall the sender.
    pub fn credit_due(&mut self) -> Option<(u64, u64)> {
        if self.fin_ack_due && self.fin_complete() {
            // `received` one past the final size acknowledges the FIN itself.
            self.fin_ack_due = false;
            return Some((self.received + 1, self.granted));
        }
        let max = self.consumed + self.window;
        if max - self.granted >= self.window / 2 {
            self.granted = max;
            Some((self.received, max))
        } else {
            None
        }
    }

    /// The credit last granted, as a CREDIT frame's `(received, max_offset)`: to grant it again when the
    /// frame that carried it may have been lost with a path.
    pub fn current_grant(&self) -> (u64, u64) {
        (self.received + u64::from(self.fin_complete()), self.granted)
    }

    /// The FIN and every byte before it have arrived (the app may not have taken them all yet).
    pub fn fin_complete(&self) -> bool {
        self.fin == Some(self.received)
    }

    /// The peer sent FIN and the app has taken every byte: time to close the app's side.
    pub fn finished(&self) -> bool {
        self.fin == Some(self.received) && self.pending.is_empty()
    }
}

/// The bytes of one stream direction that were sent but are not acknowledged yet, kept so that they
/// can be sent again on a new path after the old one was lost (the spec's "store the unsent packets").
///
/// Bounded without a limit of its own: the peer grants credit up to what its app consumed plus one
/// window, and acknowledges at least what it consumed, so a sender never holds more than one window
/// here. The engine resends from it in [`crate::relay::engine::Engine::resume_session`].
///
/// The bytes are not copied here: the engine writes a DATA frame's payload once, into the output
/// chunk, records it with [`ReplayBuffer::push_queued`], and hands the buffer slices of the chunk
/// ([`ReplayBuffer::settle`]) when the chunk leaves for the transport, in the order they were queued.
#[derive(Debug, Clone, Default)]
pub struct ReplayBuffer {
    /// Offset of the first byte kept.
    start: u64,
    /// The kept bytes, oldest first: slices of output chunks.
    kept: VecDeque<Bytes>,
    kept_len: usize,
    /// Bytes sent after `kept` whose slices have not been handed over yet.
    queued: usize,
}

impl ReplayBuffer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset just past the last byte sent: the next byte sent gets this offset.
    pub fn end(&self) -> u64 {
        self.start + (self.kept_len + self.queued) as u64
    }

    /// Bytes kept or still queued.
    pub fn len(&self) -> usize {
        self.kept_len + self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` bytes were just sent (at offset [`ReplayBuffer::end`]); their storage follows by
    /// [`ReplayBuffer::settle`].
    pub fn push_queued(&mut self, n: usize) {
        self.queued += n;
    }

    /// The storage of the oldest queued bytes.
    pub fn settle(&mut self, bytes: Bytes) {
        assert!(bytes.len() <= self.queued, "settled {} bytes of {} queued", bytes.len(), self.queued);
        self.queued -= bytes.len();
        self.kept_len += bytes.len();
        if !bytes.is_empty() {
            self.kept.push_back(bytes);
        }
    }

    /// Whether every byte sent has its storage here ([`ReplayBuffer::since`] can resend all of them).
    pub fn settled(&self) -> bool {
        self.queued == 0
    }

    /// The peer has every byte below `upto`: forget them. An older acknowledgement changes nothing;
    /// bytes still queued cannot have reached the peer and are not forgotten.
    pub fn ack(&mut self, upto: u64) {
        let mut n = upto.saturating_sub(self.start).min(self.kept_len as u64) as usize;
        self.start += n as u64;
        self.kept_len -= n;
        while n > 0 {
            let front = self.kept.front_mut().expect("kept_len counts the kept slices");
            if front.len() <= n {
                n -= front.len();
                self.kept.pop_front();
            } else {
                front.advance(n);
                n = 0;
            }
        }
    }

    /// The bytes from `offset` to the end, to send again (as slices in order), or None when `offset`
    /// is outside what is kept: below it the peer already acknowledged, above it nothing was sent.
    /// Only settled bytes are returned: the caller settles the queued ones first.
    pub fn since(&self, offset: u64) -> Option<impl Iterator<Item = &[u8]>> {
        if offset < self.start || offset > self.start + self.kept_len as u64 {
            return None;
        }
        let mut skip = (offset - self.start) as usize;
        Some(self.kept.iter().filter_map(move |b| {
            let from = skip.min(b.len());
            skip -= from;
            (from < b.len()).then(|| &b[from..])
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_is_granted_after_half_a_window_is_consumed() {
        let w = INITIAL_CREDIT;
        let mut r = RecvHalf::new(10);
        assert_eq!(r.credit_due(), None, "a window below INITIAL_CREDIT is raised to it");
        assert_eq!(r.on_data(0, &vec![1; 60_000]), Ok(60_000));
        assert_eq!(r.credit_due(), None);
        r.consume(w as usize / 2 - 1);
        assert_eq!(r.credit_due(), None);
        r.consume(1);
        assert_eq!(r.credit_due(), Some((60_000, w + w / 2)));
        assert_eq!(r.credit_due(), None);
    }

    #[test]
    fn a_large_window_is_granted_by_the_first_credit() {
        let mut r = RecvHalf::new(1 << 20);
        assert_eq!(
            r.on_data(0, &vec![0; INITIAL_CREDIT as usize + 1]).unwrap_err(),
            StreamError::CreditExceeded { end: INITIAL_CREDIT + 1, granted: INITIAL_CREDIT }
        );
        assert_eq!(r.credit_due(), Some((0, 1 << 20)));
    }

    #[test]
    fn delivered_bytes_skip_the_queue() {
        let mut r = RecvHalf::new(100);
        assert_eq!(r.on_data_with(0, b"hello", |d| d.len() - 2), Ok(5));
        assert_eq!(r.pending_len(), 2);
        // With bytes pending, new ones queue behind them to keep the order.
        assert_eq!(r.on_data_with(5, b"!", |_| panic!("must not deliver past pending bytes")), Ok(1));
        let (a, b) = r.pending();
        assert_eq!([a, b].concat(), b"lo!");
    }

    #[test]
    fn data_beyond_credit_or_with_a_gap_is_refused() {
        let mut r = RecvHalf::new(10);
        let over = vec![0; INITIAL_CREDIT as usize + 1];
        assert_eq!(
            r.on_data(0, &over),
            Err(StreamError::CreditExceeded { end: INITIAL_CREDIT + 1, granted: INITIAL_CREDIT })
        );
        assert_eq!(r.on_data(1, &[0; 2]), Err(StreamError::Gap { offset: 1, expected: 0 }));
    }

    #[test]
    fn resent_bytes_are_delivered_once() {
        let mut r = RecvHalf::new(100);
        r.on_data(0, b"hello").unwrap();
        assert_eq!(r.on_data(3, b"lo world"), Ok(6));
        assert_eq!(r.on_data(0, b"hel"), Ok(0));
        let (a, b) = r.pending();
        assert_eq!([a, b].concat(), b"hello world");
    }

    #[test]
    fn fin_must_agree_with_data() {
        let mut r = RecvHalf::new(100);
        r.on_data(0, b"abc").unwrap();
        assert!(r.on_fin(2).is_err());
        r.on_fin(3).unwrap();
        assert!(r.on_fin(4).is_err());
        assert!(!r.finished());
        r.consume(3);
        assert!(r.finished());
        assert!(r.on_data(3, b"x").is_err());
    }

    #[test]
    fn the_replay_buffer_keeps_exactly_the_unacknowledged_bytes() {
        let again = |r: &ReplayBuffer, from| r.since(from).map(|parts| parts.collect::<Vec<_>>().concat());
        let mut r = ReplayBuffer::new();
        for sent in [&b"hello "[..], b"world"] {
            r.push_queued(sent.len());
            r.settle(Bytes::from_static(sent));
        }
        assert_eq!(r.end(), 11);
        r.ack(3);
        assert_eq!(r.len(), 8);
        assert_eq!(again(&r, 6).unwrap(), b"world");
        assert_eq!(again(&r, 4).unwrap(), b"o world");
        assert!(r.since(2).is_none(), "acknowledged bytes are gone");
        assert!(r.since(12).is_none(), "nothing was sent there");
        assert_eq!(again(&r, 11), Some(vec![]));
        r.ack(1);
        assert_eq!(r.len(), 8, "an older acknowledgement changes nothing");
        r.ack(100);
        assert!(r.is_empty());
        assert_eq!(r.end(), 11);
    }

    #[test]
    fn queued_bytes_count_as_sent_and_are_resent_once_settled() {
        let mut r = ReplayBuffer::new();
        r.push_queued(5);
        assert_eq!((r.end(), r.len(), r.settled()), (5, 5, false));
        assert!(r.since(1).is_none(), "not here yet");
        r.ack(5);
        assert_eq!(r.len(), 5, "what has not left cannot be acknowledged");
        let chunk = Bytes::from_static(b"..hello..");
        r.settle(chunk.slice(2..7));
        assert!(r.settled());
        assert_eq!(r.since(1).unwrap().collect::<Vec<_>>(), [b"ello"]);
    }

    #[test]
    fn credit_and_ack_never_move_back() {
        let mut s = SendHalf::new(10);
        s.on_sent(8);
        s.on_credit(8, 30);
        s.on_credit(4, 20);
        assert_eq!(s.allowance(), 22);
        assert_eq!(s.acked(), 8);
    }
}
