//! The control messages of the transition protocol and their compact byte encoding.
//!
//! They travel inside a CONTROL frame of the relay connection, so the encoding carries no
//! length prefix of its own: the frame delimits it. Layout (all integers big-endian):
//!
//! | message | bytes |
//! |---|---|
//! | every message except the two below | `tag:u8 epoch:u32` |
//! | `SWITCH_STEP2` | `tag:u8 epoch:u32 session:u64` |
//! | `SWITCH_UNEXPECTED` | `tag:u8 epoch:u32 session:u64 count:u32 (stream:u32 received:u64)*count` |
//! | `ALL_REDIRECTED` | `tag:u8 epoch:u32 count:u32 (stream:u32 received:u64)*count` |
//! | `CUTOVER` (not in the spec: the data-plane marker of a planned switch) | `tag:u8 epoch:u32` |
//!
//! Decoding rejects unknown tags, truncated input, counts that do not match the remaining length and
//! trailing bytes; it never allocates more than the input can describe.

use thiserror::Error;

/// The epoch of a path: 0 for the first relay connection of a session, +1 for every switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u32);

impl Epoch {
    /// The epoch after this one (saturating: 4 billion switches do not happen in one session).
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}

impl std::fmt::Display for Epoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How many bytes of one relay stream a side has received (its `RecvHalf::received()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamOffset {
    /// The relay stream id (the engine's `u32` stream key).
    pub stream: u32,
    /// Every byte below this offset has arrived; the peer resends from here.
    pub received: u64,
}

/// One message of the transition protocol (spec \[0118\]–\[0136\]).
///
/// `epoch` is always the epoch being switched *to*: a message whose epoch is not the one the receiver
/// expects is a late or stray message and is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// CNAPT → SNAPT on the old path: start a planned switch to `epoch`.
    SwitchStep1 { epoch: Epoch },
    /// SNAPT → CNAPT on the old path: SWITCH_STEP1 received (SNAPT-9).
    Ack { epoch: Epoch },
    /// Both ways on the old path: nothing more follows on this path (CNAPT-12, SNAPT-8). The path is
    /// one ordered connection, so one marker covers the output of every stream.
    LastMessageBeforeRedirection { epoch: Epoch },
    /// SNAPT → CNAPT: the server has received the client's last message (SNAPT-11).
    OkToRedirection { epoch: Epoch },
    /// CNAPT → SNAPT: the client is ready (CNAPT-18).
    ClientServicesReadyForRedirection { epoch: Epoch },
    /// SNAPT → CNAPT: the server is ready (SNAPT-15).
    ServerServicesReadyForRedirection { epoch: Epoch },
    /// CNAPT → SNAPT on the NEW path: continue session `session` here (CNAPT-29).
    SwitchStep2 { epoch: Epoch, session: u64 },
    /// SNAPT → CNAPT on the new path: the switch is complete (SNAPT-22, SNAPT-14*). After an unexpected
    /// switch `received` lists what the server received per stream (the client resends from there);
    /// after a planned switch it is empty (nothing is missing).
    AllRedirected { epoch: Epoch, received: Vec<StreamOffset> },
    /// CNAPT → SNAPT on a new path after the old one was lost (CNAPT-17*), with what the client
    /// received per stream (the server resends from there).
    SwitchUnexpected { epoch: Epoch, session: u64, received: Vec<StreamOffset> },
    /// Both ways, once on the old path and once on the new one, when the sender moves its stream
    /// frames to the new path in a planned switch (protocol version 4; not in the spec). On the old
    /// path it follows the sender's last stream frame there (the spec's LAST_MESSAGE_BEFORE_REDIRECTION
    /// in spirit, for the data); on the new path it precedes the first. The receiver takes the new
    /// path's stream frames only after the old path's marker, so each direction keeps one order.
    Cutover { epoch: Epoch },
}

/// Why bytes are not a control message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ends before the message does.
    #[error("control message truncated: need {needed} bytes, have {have}")]
    Truncated { needed: usize, have: usize },
    /// The first byte names no known message.
    #[error("unknown control message tag {0:#04x}")]
    UnknownTag(u8),
    /// The stream count does not match the remaining bytes.
    #[error("control message announces {count} stream offsets but carries {bytes} bytes for them")]
    BadCount { count: u32, bytes: usize },
    /// Bytes follow the message.
    #[error("{0} unexpected bytes after the control message")]
    TrailingBytes(usize),
}

const TAG_SWITCH_STEP1: u8 = 1;
const TAG_ACK: u8 = 2;
const TAG_LAST_MESSAGE: u8 = 3;
const TAG_OK_TO_REDIRECTION: u8 = 4;
const TAG_CLIENT_READY: u8 = 5;
const TAG_SERVER_READY: u8 = 6;
const TAG_SWITCH_STEP2: u8 = 7;
const TAG_ALL_REDIRECTED: u8 = 8;
const TAG_SWITCH_UNEXPECTED: u8 = 9;
const TAG_CUTOVER: u8 = 10;

const OFFSET_LEN: usize = 12;

impl ControlMessage {
    /// The spec's name of the message, for logs and timelines.
    pub fn name(&self) -> &'static str {
        match self {
            ControlMessage::SwitchStep1 { .. } => "SWITCH_STEP1",
            ControlMessage::Ack { .. } => "ACK",
            ControlMessage::LastMessageBeforeRedirection { .. } => "LAST_MESSAGE_BEFORE_REDIRECTION",
            ControlMessage::OkToRedirection { .. } => "OK_TO_REDIRECTION",
            ControlMessage::ClientServicesReadyForRedirection { .. } => "CLIENT_SERVICES_READY_FOR_REDIRECTION",
            ControlMessage::ServerServicesReadyForRedirection { .. } => "SERVER_SERVICES_READY_FOR_REDIRECTION",
            ControlMessage::SwitchStep2 { .. } => "SWITCH_STEP2",
            ControlMessage::AllRedirected { .. } => "ALL_REDIRECTED",
            ControlMessage::SwitchUnexpected { .. } => "SWITCH_UNEXPECTED",
            ControlMessage::Cutover { .. } => "CUTOVER",
        }
    }

    /// The epoch the message belongs to.
    pub fn epoch(&self) -> Epoch {
        match self {
            ControlMessage::SwitchStep1 { epoch }
            | ControlMessage::Ack { epoch }
            | ControlMessage::LastMessageBeforeRedirection { epoch }
            | ControlMessage::OkToRedirection { epoch }
            | ControlMessage::ClientServicesReadyForRedirection { epoch }
            | ControlMessage::ServerServicesReadyForRedirection { epoch }
            | ControlMessage::SwitchStep2 { epoch, .. }
            | ControlMessage::AllRedirected { epoch, .. }
            | ControlMessage::SwitchUnexpected { epoch, .. }
            | ControlMessage::Cutover { epoch } => *epoch,
        }
    }

    /// The encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        match self {
            ControlMessage::SwitchStep2 { .. } => 13,
            ControlMessage::AllRedirected { received, .. } => 9 + received.len() * OFFSET_LEN,
            ControlMessage::SwitchUnexpected { received, .. } => 17 + received.len() * OFFSET_LEN,
            _ => 5,
        }
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let tag = match self {
            ControlMessage::SwitchStep1 { .. } => TAG_SWITCH_STEP1,
            ControlMessage::Ack { .. } => TAG_ACK,
            ControlMessage::LastMessageBeforeRedirection { .. } => TAG_LAST_MESSAGE,
            ControlMessage::OkToRedirection { .. } => TAG_OK_TO_REDIRECTION,
            ControlMessage::ClientServicesReadyForRedirection { .. } => TAG_CLIENT_READY,
            ControlMessage::ServerServicesReadyForRedirection { .. } => TAG_SERVER_READY,
            ControlMessage::SwitchStep2 { .. } => TAG_SWITCH_STEP2,
            ControlMessage::AllRedirected { .. } => TAG_ALL_REDIRECTED,
            ControlMessage::SwitchUnexpected { .. } => TAG_SWITCH_UNEXPECTED,
            ControlMessage::Cutover { .. } => TAG_CUTOVER,
        };
        out.push(tag);
        out.extend_from_slice(&self.epoch().0.to_be_bytes());
        match self {
            ControlMessage::SwitchStep2 { session, .. } => out.extend_from_slice(&session.to_be_bytes()),
            ControlMessage::AllRedirected { received, .. } => encode_offsets(received, out),
            ControlMessage::SwitchUnexpected { session, received, .. } => {
                out.extend_from_slice(&session.to_be_bytes());
                encode_offsets(received, out);
            }
            _ => {}
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Parses exactly one message from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<ControlMessage, DecodeError> {
        let mut r = Reader { bytes, pos: 0 };
        let tag = r.u8()?;
        if !(TAG_SWITCH_STEP1..=TAG_CUTOVER).contains(&tag) {
            return Err(DecodeError::UnknownTag(tag));
        }
        let epoch = Epoch(r.u32()?);
        let msg = match tag {
            TAG_SWITCH_STEP1 => ControlMessage::SwitchStep1 { epoch },
            TAG_ACK => ControlMessage::Ack { epoch },
            TAG_LAST_MESSAGE => ControlMessage::LastMessageBeforeRedirection { epoch },
            TAG_OK_TO_REDIRECTION => ControlMessage::OkToRedirection { epoch },
            TAG_CLIENT_READY => ControlMessage::ClientServicesReadyForRedirection { epoch },
            TAG_SERVER_READY => ControlMessage::ServerServicesReadyForRedirection { epoch },
            TAG_SWITCH_STEP2 => ControlMessage::SwitchStep2 { epoch, session: r.u64()? },
            TAG_ALL_REDIRECTED => ControlMessage::AllRedirected { epoch, received: r.offsets()? },
            TAG_CUTOVER => ControlMessage::Cutover { epoch },
            _ => {
                let session = r.u64()?;
                ControlMessage::SwitchUnexpected { epoch, session, received: r.offsets()? }
            }
        };
        let rest = bytes.len() - r.pos;
        if rest != 0 {
            return Err(DecodeError::TrailingBytes(rest));
        }
        Ok(msg)
    }
}

fn encode_offsets(received: &[StreamOffset], out: &mut Vec<u8>) {
    // A session has far fewer than 2^32 streams; saturate rather than wrap if it ever had more.
    let count = u32::try_from(received.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&count.to_be_bytes());
    for o in received.iter().take(count as usize) {
        out.extend_from_slice(&o.stream.to_be_bytes());
        out.extend_from_slice(&o.received.to_be_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let have = self.bytes.len() - self.pos;
        if have < N {
            return Err(DecodeError::Truncated { needed: self.pos + N, have: self.bytes.len() });
        }
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..self.pos + N]);
        self.pos += N;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn offsets(&mut self) -> Result<Vec<StreamOffset>, DecodeError> {
        let count = self.u32()?;
        let bytes = self.bytes.len() - self.pos;
        if (count as usize).checked_mul(OFFSET_LEN) != Some(bytes) {
            return Err(DecodeError::BadCount { count, bytes });
        }
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            out.push(StreamOffset { stream: self.u32()?, received: self.u64()? });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<ControlMessage> {
        let e = Epoch(7);
        let offs = vec![StreamOffset { stream: 1, received: 0 }, StreamOffset { stream: u32::MAX, received: u64::MAX }];
        vec![
            ControlMessage::SwitchStep1 { epoch: e },
            ControlMessage::Ack { epoch: e },
            ControlMessage::LastMessageBeforeRedirection { epoch: e },
            ControlMessage::OkToRedirection { epoch: e },
            ControlMessage::ClientServicesReadyForRedirection { epoch: e },
            ControlMessage::ServerServicesReadyForRedirection { epoch: e },
            ControlMessage::SwitchStep2 { epoch: e, session: 0xdead_beef_0000_0001 },
            ControlMessage::AllRedirected { epoch: e, received: vec![] },
            ControlMessage::AllRedirected { epoch: e, received: offs.clone() },
            ControlMessage::SwitchUnexpected { epoch: Epoch(u32::MAX), session: 3, received: offs },
            ControlMessage::SwitchUnexpected { epoch: e, session: 3, received: vec![] },
            ControlMessage::Cutover { epoch: e },
        ]
    }

    #[test]
    fn round_trip() {
        for m in samples() {
            let bytes = m.to_bytes();
            assert_eq!(bytes.len(), m.encoded_len(), "{m:?}");
            assert_eq!(ControlMessage::decode(&bytes), Ok(m));
        }
    }

    #[test]
    fn known_bytes() {
        let m = ControlMessage::SwitchStep2 { epoch: Epoch(2), session: 5 };
        assert_eq!(m.to_bytes(), [7, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 5]);
        let m =
            ControlMessage::AllRedirected { epoch: Epoch(1), received: vec![StreamOffset { stream: 3, received: 9 }] };
        assert_eq!(m.to_bytes(), [8, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 9]);
        assert_eq!(ControlMessage::Cutover { epoch: Epoch(3) }.to_bytes(), [10, 0, 0, 0, 3]);
    }

    #[test]
    fn every_prefix_and_extension_is_rejected() {
        for m in samples() {
            let bytes = m.to_bytes();
            for cut in 0..bytes.len() {
                assert!(ControlMessage::decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut}");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(ControlMessage::decode(&longer).is_err(), "{m:?} with a trailing byte");
        }
        assert_eq!(ControlMessage::decode(&[0, 0, 0, 0, 0]), Err(DecodeError::UnknownTag(0)));
        assert_eq!(ControlMessage::decode(&[11, 0, 0, 0, 0]), Err(DecodeError::UnknownTag(11)));
        // A huge count with no bytes behind it is rejected before any allocation.
        let huge = [8, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(ControlMessage::decode(&huge), Err(DecodeError::BadCount { count: u32::MAX, bytes: 0 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = Vec::new();
        for _ in 0..200_000 {
            let len = (next() % 48) as usize;
            buf.clear();
            for i in 0..len {
                // Bias the first byte towards valid tags so the deeper parsers get exercised.
                let b = next() as u8;
                buf.push(if i == 0 { b % 12 } else { b });
            }
            if let Ok(m) = ControlMessage::decode(&buf) {
                assert_eq!(m.to_bytes(), buf, "decode then encode must give the same bytes");
            }
        }
    }
}
