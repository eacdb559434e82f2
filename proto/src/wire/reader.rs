//! A bounds-checked big-endian reader over one frame body; every short read is a typed
//! [`WireError::BadLength`] naming the frame type.

use super::{FrameType, WireError};

/// Bounds-checked big-endian reader over one frame body.
pub(super) struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    frame_type: FrameType,
}

impl<'a> Reader<'a> {
    pub(super) fn new(frame_type: FrameType, body: &'a [u8]) -> Self {
        Reader { body, pos: 0, frame_type }
    }

    /// The type of the frame whose body this is, for errors.
    pub(super) fn frame_type(&self) -> FrameType {
        self.frame_type
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos + n;
        match self.body.get(self.pos..end) {
            Some(bytes) => {
                self.pos = end;
                Ok(bytes)
            }
            None => Err(WireError::BadLength { frame_type: self.frame_type, expected: end, got: self.body.len() }),
        }
    }

    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub(super) fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    pub(super) fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    pub(super) fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    /// The rest of the body, however long (possibly empty).
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.body[self.pos..];
        self.pos = self.body.len();
        rest
    }

    /// Fails with `BadLength` if bytes are left after the last field.
    pub(super) fn finish(self) -> Result<(), WireError> {
        if self.pos == self.body.len() {
            Ok(())
        } else {
            Err(WireError::BadLength { frame_type: self.frame_type, expected: self.pos, got: self.body.len() })
        }
    }
}
