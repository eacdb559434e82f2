//! Property tests for per-stream flow control (`roamtun_proto::relay::stream`).
//!
//! One direction of a relay stream is modelled end to end: a sender holding a [`SendHalf`] cuts a
//! random byte string into DATA pieces of random sizes, never beyond the credit it holds; the frames
//! travel in order to a receiver holding a [`RecvHalf`], which an "app" drains by random amounts;
//! CREDIT frames from `credit_due()` travel back. Random resends re-deliver ranges that already
//! arrived, and random uplink switches lose the frames in flight and resend from the acknowledged
//! offset. Every schedule must deliver every byte to the app exactly once, in order, within the
//! receiver's window and the sender's credit.

use std::collections::VecDeque;

use proptest::prelude::*;
use proptest::sample::Index;
use roamtun_proto::relay::stream::{RecvHalf, SendHalf, StreamError, INITIAL_CREDIT};

/// A frame on its way from the sender to the receiver. DATA names a range of the stream's bytes.
#[derive(Debug, Clone, Copy)]
enum Forward {
    Data { offset: u64, len: usize },
    Fin { offset: u64 },
}

/// One step of a schedule.
#[derive(Debug, Clone)]
enum Op {
    /// The sender sends one DATA of at most this many bytes within its credit; with nothing left to
    /// send, it sends FIN instead (once).
    Send(usize),
    /// The next `n` frames towards the receiver arrive. With `direct`, each goes through `on_data_with`
    /// and the app's socket takes up to that many of the new bytes at once (the engine's hot path).
    Deliver { n: usize, direct: Option<usize> },
    /// The app takes up to `n` bytes.
    Read(usize),
    /// The next `n` CREDIT frames reach the sender.
    Credit(usize),
    /// Re-delivers a range of bytes sent before (it arrives after the originals: the channel is ordered),
    /// in pieces of `piece` bytes.
    Resend { start: Index, len: usize, piece: usize },
    /// An uplink switch: every frame in flight towards the receiver is lost, the sender resends from the
    /// offset the receiver acknowledged, in pieces of `piece` bytes, then FIN again if it had sent FIN.
    Switch { piece: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..1500).prop_map(Op::Send),
        4 => (1usize..6, prop::option::of(0usize..1500)).prop_map(|(n, direct)| Op::Deliver { n, direct }),
        3 => (0usize..2000).prop_map(Op::Read),
        2 => (1usize..4).prop_map(Op::Credit),
        1 => (any::<Index>(), 1usize..3000, 1usize..800).prop_map(|(start, len, piece)| Op::Resend { start, len, piece }),
        1 => (1usize..800).prop_map(|piece| Op::Switch { piece }),
    ]
}

/// Both ends of one stream direction and the two channels between them.
struct Model {
    data: Vec<u8>,
    window: u64,
    send: SendHalf,
    recv: RecvHalf,
    forward: VecDeque<Forward>,
    /// CREDIT frames `(received, max_offset)` on their way back to the sender.
    back: VecDeque<(u64, u64)>,
    /// The largest credit the sender was given: the initial window, then every CREDIT it received.
    credit_held: u64,
    /// What the app has read, in order.
    app: Vec<u8>,
    fin_delivered: bool,
}

impl Model {
    fn new(data: Vec<u8>, window: u64) -> Self {
        // The receiver honours at least the protocol's initial credit, which every sender starts with.
        let window = window.max(INITIAL_CREDIT);
        let initial = INITIAL_CREDIT;
        Model {
            data,
            window,
            send: SendHalf::new(initial),
            recv: RecvHalf::new(window),
            forward: VecDeque::new(),
            back: VecDeque::new(),
            credit_held: initial,
            app: Vec::new(),
            fin_delivered: false,
        }
    }

    fn queue_range(&mut self, start: u64, end: u64, piece: usize) {
        let mut offset = start;
        while offset < end {
            let len = (end - offset).min(piece as u64) as usize;
            self.forward.push_back(Forward::Data { offset, len });
            offset += len as u64;
        }
    }

    /// Sends one piece; returns whether anything was sent.
    fn send_piece(&mut self, max: usize) -> bool {
        let offset = self.send.offset();
        let remaining = self.data.len() - offset as usize;
        let n = max.min(self.send.allowance()).min(remaining);
        if n > 0 {
            self.forward.push_back(Forward::Data { offset, len: n });
            self.send.on_sent(n);
            true
        } else if remaining == 0 && !self.send.fin_sent() {
            self.forward.push_back(Forward::Fin { offset });
            self.send.on_fin_sent();
            true
        } else {
            false
        }
    }

    fn deliver(&mut self, n: usize, direct: Option<usize>) -> Result<(), TestCaseError> {
        for _ in 0..n {
            let Some(frame) = self.forward.pop_front() else { break };
            match frame {
                Forward::Data { offset, len } => {
                    let before = self.recv.received();
                    let end = offset + len as u64;
                    let bytes = &self.data[offset as usize..end as usize];
                    let fresh = match direct {
                        None => self.recv.on_data(offset, bytes),
                        Some(take) => {
                            let was_pending = self.recv.pending_len();
                            let app = &mut self.app;
                            let mut offered = None;
                            let r = self.recv.on_data_with(offset, bytes, |new| {
                                offered = Some(new.len());
                                let k = take.min(new.len());
                                app.extend_from_slice(&new[..k]);
                                k
                            });
                            // Offered only the new bytes, only when none wait before them (order).
                            if let Some(len) = offered {
                                prop_assert_eq!(was_pending, 0, "offered bytes past pending ones");
                                prop_assert_eq!(len as u64, end.saturating_sub(before), "offered the wrong bytes");
                            }
                            r
                        }
                    };
                    prop_assert_eq!(fresh, Ok(end.saturating_sub(before) as usize), "DATA {}..{} refused", offset, end);
                }
                Forward::Fin { offset } => {
                    prop_assert_eq!(self.recv.on_fin(offset), Ok(()), "FIN at {} refused", offset);
                    self.fin_delivered = true;
                }
            }
            self.check()?;
        }
        Ok(())
    }

    fn read(&mut self, n: usize) {
        let n = n.min(self.recv.pending_len());
        let (a, b) = self.recv.pending();
        let from_a = n.min(a.len());
        self.app.extend_from_slice(&a[..from_a]);
        self.app.extend_from_slice(&b[..n - from_a]);
        self.recv.consume(n);
    }

    /// What the engine does on every pump: send a CREDIT when one is due.
    fn grant(&mut self) -> Result<(), TestCaseError> {
        if let Some((received, max_offset)) = self.recv.credit_due() {
            if received == self.recv.received() + 1 {
                // The FIN's acknowledgement (TCP-style, one past the final size): only once it and
                // every byte before it arrived; it grants nothing new.
                prop_assert!(self.recv.fin_complete(), "FIN acknowledged before it arrived");
            } else {
                prop_assert_eq!(received, self.recv.received());
                prop_assert_eq!(max_offset, self.app.len() as u64 + self.window, "credit is one window past the app");
            }
            self.back.push_back((received, max_offset));
        }
        Ok(())
    }

    fn credit(&mut self, n: usize) -> Result<(), TestCaseError> {
        for _ in 0..n {
            let Some((received, max_offset)) = self.back.pop_front() else { break };
            self.send.on_credit(received, max_offset);
            self.credit_held = self.credit_held.max(max_offset);
            prop_assert!(self.send.acked() <= self.recv.received());
            prop_assert!(self.send.acked() <= self.send.offset());
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op {
            Op::Send(max) => {
                self.send_piece(*max);
            }
            Op::Deliver { n, direct } => self.deliver(*n, *direct)?,
            Op::Read(n) => self.read(*n),
            Op::Credit(n) => self.credit(*n)?,
            Op::Resend { start, len, piece } => {
                let sent = self.send.offset();
                if sent > 0 {
                    let start = start.index(sent as usize) as u64;
                    let end = (start + *len as u64).min(sent);
                    self.queue_range(start, end, *piece);
                }
            }
            Op::Switch { piece } => {
                self.forward.clear();
                self.queue_range(self.send.acked(), self.send.offset(), *piece);
                if self.send.fin_sent() {
                    self.forward.push_back(Forward::Fin { offset: self.send.offset() });
                }
            }
        }
        self.grant()?;
        self.check()
    }

    /// The invariants that hold after every step.
    fn check(&self) -> Result<(), TestCaseError> {
        let (recv, send) = (&self.recv, &self.send);
        prop_assert!(
            recv.pending_len() as u64 <= self.window,
            "receiver holds {} bytes, window {}",
            recv.pending_len(),
            self.window
        );
        prop_assert!(
            send.offset() <= self.credit_held,
            "sent up to {} with credit {}",
            send.offset(),
            self.credit_held
        );
        prop_assert_eq!(send.allowance() as u64, self.credit_held - send.offset());
        prop_assert!(recv.received() <= send.offset());
        prop_assert_eq!(recv.received(), self.app.len() as u64 + recv.pending_len() as u64);
        prop_assert!(self.app[..] == self.data[..self.app.len()], "the app read bytes out of order or twice");
        if recv.finished() {
            prop_assert!(self.fin_delivered, "finished without FIN");
            prop_assert_eq!(self.app.len(), self.data.len(), "finished before the app took every byte");
        }
        Ok(())
    }

    /// Lets the stream run to its end with every frame delivered and the app reading everything.
    fn drain(&mut self, piece: usize) -> Result<(), TestCaseError> {
        let bound = 2 * self.data.len() + 16;
        for _ in 0..bound {
            if self.recv.finished() {
                break;
            }
            while self.send_piece(piece) {}
            self.check()?;
            let n = self.forward.len();
            self.deliver(n, None)?;
            // Before the app reads the last bytes, FIN alone does not finish the stream.
            if self.recv.pending_len() > 0 {
                prop_assert!(!self.recv.finished());
            }
            self.read(usize::MAX);
            self.grant()?;
            self.check()?;
            let n = self.back.len();
            self.credit(n)?;
        }
        prop_assert!(
            self.recv.finished(),
            "the stream never finished: {} of {} bytes read",
            self.app.len(),
            self.data.len()
        );
        prop_assert!(self.app == self.data);
        prop_assert_eq!(self.send.offset(), self.data.len() as u64);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever the cut points, piece sizes, read sizes, resends and switches: every byte reaches the app
    /// exactly once and in order, the receiver never holds more than its window, the sender never
    /// exceeds its credit, and the stream finishes exactly when the app has taken every byte after FIN.
    #[test]
    fn every_byte_arrives_once_in_order_within_credit(
        // Longer than the initial credit, so credit really limits the sender.
        data in prop::collection::vec(any::<u8>(), 0..3 * INITIAL_CREDIT as usize),
        // Below INITIAL_CREDIT the receiver raises the window to it.
        window in prop_oneof![1 => 1u64..16, 4 => INITIAL_CREDIT..INITIAL_CREDIT * 3],
        ops in prop::collection::vec(op(), 0..150),
        final_piece in 1usize..2000,
    ) {
        let mut m = Model::new(data, window);
        m.check()?;
        for op in &ops {
            m.apply(op)?;
        }
        m.drain(final_piece)?;
        // Late duplicates after the end change nothing.
        if !m.data.is_empty() {
            let len = m.data.len().min(100);
            let start = m.data.len() - len;
            prop_assert_eq!(m.recv.on_data(start as u64, &m.data[start..]), Ok(0));
            prop_assert!(m.recv.finished());
        }
    }

    /// DATA that leaves a gap, exceeds the granted credit or contradicts the final size is refused with
    /// the matching error, and the refusal leaves the receiver as it was.
    #[test]
    fn data_outside_the_rules_is_refused(
        window in 4u64..4096,
        prefix in any::<Index>(),
        read in any::<Index>(),
        gap in any::<Index>(),
        back in any::<Index>(),
        over in 1u64..2000,
    ) {
        // A window below the initial credit is raised to it by the receiver.
        let window = window.max(INITIAL_CREDIT);
        let data: Vec<u8> = (0..window * 3).map(|i| (i % 251) as u8).collect();
        let mut r = RecvHalf::new(window);
        // Some bytes arrived (leaving at least two bytes of credit), the app took some, credit maybe moved.
        let received = prefix.index(window as usize - 1) as u64;
        prop_assert_eq!(r.on_data(0, &data[..received as usize]), Ok(received as usize));
        let consumed = read.index(received as usize + 1);
        r.consume(consumed);
        let granted = r.credit_due().map_or(INITIAL_CREDIT, |(_, max)| max);
        prop_assert!(granted >= received + 2);

        // A gap: starts after the next expected byte, still within credit.
        let offset = received + 1 + gap.index((granted - received - 1) as usize) as u64;
        prop_assert_eq!(r.on_data(offset, &data[offset as usize..offset as usize + 1]), Err(StreamError::Gap { offset, expected: received }));

        // Past the credit: starts at or before the next expected byte (a resend, possibly), ends beyond it.
        let offset = received - back.index(received as usize + 1) as u64;
        let end = granted + over;
        let bytes: Vec<u8> = (offset..end).map(|i| (i % 251) as u8).collect();
        prop_assert_eq!(r.on_data(offset, &bytes), Err(StreamError::CreditExceeded { end, granted }));

        // The refusals changed nothing: the same bytes wait, the next byte is still welcome.
        prop_assert_eq!(r.received(), received);
        prop_assert_eq!(r.pending_len(), received as usize - consumed);
        let (a, b) = r.pending();
        prop_assert!([a, b].concat() == data[consumed..received as usize]);
        prop_assert_eq!(r.on_data(received, &data[received as usize..received as usize + 1]), Ok(1));
        let received = received + 1;

        // The final size: a FIN below what arrived is refused; once FIN is known, data beyond it and a
        // different FIN are refused, and the stream is not finished while bytes wait for the app.
        if received > 1 {
            let low = r.on_fin(received - 1);
            prop_assert!(matches!(low, Err(StreamError::FinalSize { .. })), "FIN below the data: {:?}", low);
        }
        prop_assert_eq!(r.on_fin(received), Ok(()));
        prop_assert_eq!(r.on_data(received, &data[received as usize..received as usize + 1]), Err(StreamError::FinalSize { fin: received, end: received + 1 }));
        let other = r.on_fin(received + 1);
        prop_assert!(
            matches!(other, Err(StreamError::FinalSize { fin, .. }) if fin == received + 1),
            "a second, different FIN: {:?}",
            other
        );
        prop_assert!(!r.finished());
        let pending = r.pending_len();
        r.consume(pending);
        prop_assert!(r.finished());
    }

    /// Credit and acknowledgement never move back, whatever order CREDIT frames arrive in, and the
    /// acknowledgement never passes what was sent.
    #[test]
    fn credit_only_grows_under_reordering(
        initial in 0u64..10_000,
        steps in prop::collection::vec((0usize..3000, 0u64..20_000, 0u64..20_000), 0..60),
    ) {
        let mut s = SendHalf::new(initial);
        let mut max = initial;
        let mut acked = 0;
        for (send, received, max_offset) in steps {
            let n = send.min(s.allowance());
            s.on_sent(n);
            s.on_credit(received, max_offset);
            max = max.max(max_offset);
            acked = acked.max(received.min(s.offset()));
            prop_assert_eq!(s.allowance() as u64, max - s.offset());
            prop_assert_eq!(s.acked(), acked, "acknowledgement moved back");
            prop_assert!(s.acked() <= s.offset());
        }
    }
}

proptest! {
    /// Whatever the order of sends, hand-overs of their storage and acknowledgements, the replay
    /// buffer holds exactly the bytes between the highest acknowledgement and the end of what was
    /// sent, and gives back any suffix of the handed-over ones byte for byte.
    #[test]
    fn the_replay_buffer_returns_exactly_what_was_sent_and_not_acknowledged(
        data in prop::collection::vec(any::<u8>(), 0..4000),
        steps in prop::collection::vec(
            (0usize..600, any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<prop::sample::Index>()),
            1..60,
        ),
    ) {
        let mut replay = roamtun_proto::relay::stream::ReplayBuffer::new();
        let (mut sent, mut settled, mut acked) = (0usize, 0usize, 0usize);
        for (len, settle, ack, from) in steps {
            // Sent: the bytes go out in an output chunk, their storage is handed over later, in
            // order and in pieces (as the chunks leave).
            let len = len.min(data.len() - sent);
            replay.push_queued(len);
            sent += len;
            let upto = settled + settle.index(sent - settled + 1);
            let mid = (settled + upto) / 2;
            replay.settle(bytes::Bytes::copy_from_slice(&data[settled..mid]));
            replay.settle(bytes::Bytes::copy_from_slice(&data[mid..upto]));
            settled = upto;
            // Acknowledgements may be old (reordered CREDIT frames). One beyond what left (a peer
            // cannot have it) forgets what left and nothing that is still queued.
            let upto = ack.index(sent + 2);
            replay.ack(upto as u64);
            acked = acked.max(upto.min(settled));
            prop_assert_eq!(replay.len(), sent - acked);
            prop_assert_eq!(replay.end(), sent as u64);
            prop_assert_eq!(replay.settled(), settled == sent);
            let from = acked + from.index(settled - acked + 1);
            let again: Vec<u8> = replay.since(from as u64).unwrap().flatten().copied().collect();
            prop_assert_eq!(again, data[from..settled].to_vec());
            if acked > 0 {
                prop_assert!(replay.since(acked as u64 - 1).is_none());
            }
            prop_assert!(replay.since(settled as u64 + 1).is_none());
        }
    }
}
