//! [`WireError`]: why bytes are not a frame, or a frame cannot be encoded.

use super::FrameType;
#[cfg(doc)]
use super::{frame_len, MAX_BODY, MAX_DATA, MAX_HELLO_ADDRS};

/// A malformed frame (decoding) or a frame that cannot be represented
/// (encoding).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The type byte is not an assigned [`FrameType`]. The header has the same
    /// layout for every type, so the frame's boundary is still known
    /// ([`frame_len`]): in a session the engine steps over it and counts it as
    /// malformed (docs/protocol.md, "Malformed frames"); in the handshake it
    /// ends the connection like any malformed frame.
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),

    /// The flags byte is not 0; no flags are defined in this version.
    #[error("{frame_type} frame has unknown flags 0x{flags:02x} (must be 0)")]
    UnknownFlags {
        /// Type of the offending frame.
        frame_type: FrameType,
        /// The flags byte received.
        flags: u8,
    },

    /// The body is too short for its fields, has bytes left over after its
    /// last field, or (fixed-size types) is not exactly the defined size.
    #[error("{frame_type} frame body is {got} bytes, expected {expected}")]
    BadLength {
        /// Type of the offending frame.
        frame_type: FrameType,
        /// The body length the fields require: the exact size for fixed-size
        /// types, the minimum size when `body_len` is below the type's
        /// minimum, otherwise the length of the fields parsed so far plus
        /// the field that did not fit (truncated) or the length of all fields
        /// (trailing bytes).
        expected: usize,
        /// The body length announced in the header.
        got: usize,
    },

    /// An address family byte other than 4 or 6 (in HELLO or OPEN).
    #[error("{frame_type} frame has unknown address family {family} (expected 4 or 6)")]
    UnknownAddressFamily {
        /// Type of the offending frame.
        frame_type: FrameType,
        /// The family byte received.
        family: u8,
    },

    /// OPEN with a `proto` other than 6 (TCP); UDP and ICMP travel as
    /// DATAGRAM frames and have no streams.
    #[error("OPEN frame has unsupported protocol {0} (only 6 = TCP is allowed)")]
    UnsupportedProtocol(u8),

    /// The CLOSE reason is not valid UTF-8.
    #[error("CLOSE frame reason is not valid UTF-8 (valid up to byte {valid_up_to})")]
    InvalidUtf8 {
        /// Number of leading reason bytes that are valid UTF-8.
        valid_up_to: usize,
    },

    /// A DATA or DATAGRAM frame without payload, when decoding or encoding.
    #[error("{frame_type} frame has an empty payload")]
    EmptyPayload {
        /// DATA or DATAGRAM.
        frame_type: FrameType,
    },

    /// A DATA frame whose last byte would lie beyond offset `u64::MAX`
    /// (`offset + len` overflows), when decoding or encoding.
    #[error("DATA frame on stream {stream_id}: offset {offset} + length {len} overflows u64")]
    OffsetOverflow {
        /// Stream of the offending frame.
        stream_id: u32,
        /// Offset of the first data byte.
        offset: u64,
        /// Number of data bytes.
        len: usize,
    },

    /// Encoding only: the body would be longer than [`MAX_BODY`] (e.g. DATA
    /// with more than [`MAX_DATA`] bytes, a CLOSE reason that is too long,
    /// a DATAGRAM packet larger than 65535 bytes).
    #[error("{frame_type} frame body would be {len} bytes, more than the maximum of 65535")]
    BodyTooLong {
        /// Type of the frame being encoded.
        frame_type: FrameType,
        /// The body length it would have.
        len: usize,
    },

    /// Encoding only: HELLO with more than [`MAX_HELLO_ADDRS`] (255)
    /// addresses, which do not fit the `count: u8` field.
    #[error("HELLO frame has {0} virtual IPs, at most 255 fit")]
    TooManyAddresses(usize),

    /// A REPORT whose loss is above one million parts per million, when decoding or encoding.
    #[error("REPORT frame has loss {0} ppm, more than 1000000")]
    LossOutOfRange(u32),
}
