//! The frame header, `type: u8 | flags: u8 | body_len: u16`, and frame boundaries read from it alone.

use super::table::BodyLen;
use super::{FrameType, WireError};

/// Length of the frame header: `type: u8 | flags: u8 | body_len: u16`.
pub const HEADER_LEN: usize = 4;

/// Largest body a frame can carry (the range of the `body_len` field).
pub const MAX_BODY: usize = u16::MAX as usize;

/// Largest frame on the wire: header plus the largest body.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_BODY;

/// The length of the frame at the front of `data` as its header states it, if all of it is there.
/// Frame boundaries need only the header: a frame whose body is malformed can still be stepped over,
/// and a reader can cut a byte stream into whole frames without parsing them.
pub fn frame_len(data: &[u8]) -> Option<usize> {
    let len = announced_len(data)?;
    (data.len() >= len).then_some(len)
}

/// The length of the frame that starts `data`, header included, as its header announces it, whether
/// or not the rest has arrived; None before the whole header.
pub fn announced_len(data: &[u8]) -> Option<usize> {
    let header = data.get(..HEADER_LEN)?;
    Some(HEADER_LEN + usize::from(u16::from_be_bytes([header[2], header[3]])))
}

/// A validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame type.
    pub frame_type: FrameType,
    /// The number of body bytes following the header.
    pub body_len: u16,
}

impl Header {
    /// Parses and validates the header at the front of `buf`.
    ///
    /// Returns `Ok(None)` if fewer than [`HEADER_LEN`] bytes are available and
    /// those present are a valid prefix. Checks the type, the flags and
    /// that `body_len` is possible for the type (see the module docs); the
    /// body itself is not looked at.
    pub fn parse(buf: &[u8]) -> Result<Option<Header>, WireError> {
        let Some(&type_byte) = buf.first() else {
            return Ok(None);
        };
        let frame_type = FrameType::try_from(type_byte)?;
        let Some(&flags) = buf.get(1) else {
            return Ok(None);
        };
        if flags != 0 {
            return Err(WireError::UnknownFlags { frame_type, flags });
        }
        let Some(len_bytes) = buf.get(2..HEADER_LEN) else {
            return Ok(None);
        };
        let body_len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]);
        let got = usize::from(body_len);
        match frame_type.body_len_rule() {
            BodyLen::Fixed(expected) if got != expected => {
                return Err(WireError::BadLength { frame_type, expected, got });
            }
            // The fixed fields and nothing after them: the payload is empty.
            BodyLen::Payload { fixed } if got == fixed => return Err(WireError::EmptyPayload { frame_type }),
            rule if got < rule.min() => {
                return Err(WireError::BadLength { frame_type, expected: rule.min(), got });
            }
            _ => {}
        }
        Ok(Some(Header { frame_type, body_len }))
    }

    /// Total length of the frame on the wire: header plus body.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.body_len)
    }

    /// Appends the 4 header bytes to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.push(self.frame_type.as_u8());
        out.push(0);
        out.extend_from_slice(&self.body_len.to_be_bytes());
    }
}
