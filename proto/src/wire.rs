//! Relay wire format: the frames carried inside one TLS stream per uplink.
//!
//! One TLS connection between client and server carries a sequence of
//! *frames*. Frames multiplex many application TCP connections ("streams",
//! identified by a `stream_id`) plus raw IP datagrams (UDP, ICMP) and a few
//! control messages.
//!
//! In the style of smoltcp's `wire` module, [`Frame::decode`] is a checked
//! parse into a view that borrows the input buffer, and [`Frame::encode`]
//! appends to a caller-owned buffer. Every malformed input is reported as a
//! typed [`WireError`]; the decoder never panics, whatever the bytes.
//!
//! # Frame layout
//!
//! All integers are big-endian (network byte order).
//!
//! ```text
//!  0        1        2                 4
//! +--------+--------+--------+--------+----------------------+
//! |  type  | flags  |     body_len    | body (body_len bytes) |
//! +--------+--------+--------+--------+----------------------+
//! ```
//!
//! * `type` (u8): one of the [`FrameType`] values. An unknown type is an
//!   error ([`WireError::UnknownType`]); the engine steps over such a frame by
//!   its `body_len` and counts it, and the session goes on.
//! * `flags` (u8): reserved, must be 0 ([`WireError::UnknownFlags`]).
//! * `body_len` (u16): number of body bytes that follow the header, at most
//!   [`MAX_BODY`].
//!
//! The body of each frame type is described on the [`Frame`] variants and on
//! [`FrameType`]. Fixed-size bodies must have exactly their size; a body that
//! is too short, or has bytes left over after its last field, is rejected with
//! [`WireError::BadLength`].
//!
//! ## Addresses
//!
//! An *IP address* is `family: u8` (4 or 6) followed by 4 (IPv4) or 16 (IPv6)
//! address bytes. A *socket address* is an IP address followed by
//! `port: u16`. Any other family value is rejected with
//! [`WireError::UnknownAddressFamily`]. IPv6 flow info and scope id are not
//! carried: they are ignored when encoding and decoded as 0. IPv4-mapped IPv6
//! addresses are sent as family 6 and stay IPv6 after decoding.
//!
//! ## Validation order
//!
//! Errors are reported as soon as the bytes that prove them are present:
//! an unknown type after 1 byte, non-zero flags after 2, a `body_len` that is
//! impossible for the type (wrong size for a fixed-size body, below the
//! minimum for a variable-size one, an empty DATA or DATAGRAM) after the
//! 4-byte header, without waiting for the body. Errors about the body's
//! content are reported once the whole body has arrived. A prefix of a valid
//! frame always decodes as `Ok(None)`.
//!
//! ## Canonical encoding
//!
//! Every byte string that [`Frame::decode`] accepts is the canonical encoding
//! of the decoded frame: re-encoding it yields exactly the consumed bytes.
//! Conversely, every frame that [`Frame::encode`] accepts decodes back to an
//! equal frame, except for IPv6 flow info / scope id (not carried) and
//! [`ResetCode::Other`] holding an assigned value (decodes as the named
//! variant).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Version of this wire format, sent in HELLO and WELCOME.
///
/// The decoder does not check the version fields; the handshake code decides
/// what to do with a peer that speaks another version.
pub const PROTOCOL_VERSION: u16 = 3;

/// Length of the frame header: `type: u8 | flags: u8 | body_len: u16`.
pub const HEADER_LEN: usize = 4;

/// Largest body a frame can carry (the range of the `body_len` field).
pub const MAX_BODY: usize = u16::MAX as usize;

/// Largest frame on the wire: header plus the largest body.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_BODY;

/// Length of the fixed part of a DATA body: `stream_id: u32 | offset: u64`.
pub const DATA_OVERHEAD: usize = 12;

/// Largest payload a DATA frame can carry (`MAX_BODY - 12`).
pub const MAX_DATA: usize = MAX_BODY - DATA_OVERHEAD;

/// Largest number of addresses a HELLO frame can carry (`count` is a u8).
pub const MAX_HELLO_ADDRS: usize = u8::MAX as usize;

/// The only transport protocol OPEN accepts: TCP (IP protocol number 6).
pub const PROTO_TCP: u8 = 6;

/// Address family byte for IPv4 addresses (followed by 4 address bytes).
pub const FAMILY_V4: u8 = 4;

/// Address family byte for IPv6 addresses (followed by 16 address bytes).
pub const FAMILY_V6: u8 = 6;

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

/// The type byte of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameType {
    /// 0x01, client→server, the first frame after the TLS handshake.
    /// Body: `version: u16 | resume: u64 | count: u8 | count × ip address`.
    Hello = 0x01,
    /// 0x02, server→client, the answer to HELLO.
    /// Body: `version: u16 | session_id: u64` (10 bytes).
    Welcome = 0x02,
    /// 0x03, either direction; the sender closes the connection afterwards.
    /// Body: `code: u16 | reason: UTF-8 bytes (rest of body)`.
    Close = 0x03,
    /// 0x10, opens a stream (an application TCP connection).
    /// Body: `stream_id: u32 | proto: u8 (6) | src: socket addr | dst: socket addr`.
    Open = 0x10,
    /// 0x11, the stream was accepted / connected.
    /// Body: `stream_id: u32` (4 bytes).
    OpenOk = 0x11,
    /// 0x12, stream payload.
    /// Body: `stream_id: u32 | offset: u64 | data (rest of body, non-empty)`.
    Data = 0x12,
    /// 0x13, end of the stream in the sender's direction.
    /// Body: `stream_id: u32 | offset: u64` (12 bytes).
    Fin = 0x13,
    /// 0x14, abort a stream in both directions.
    /// Body: `stream_id: u32 | code: u16` (6 bytes).
    Reset = 0x14,
    /// 0x15, flow control, receiver→sender.
    /// Body: `stream_id: u32 | received: u64 | max_offset: u64` (20 bytes).
    Credit = 0x15,
    /// 0x20, one raw IP packet (UDP or ICMP).
    /// Body: `packet (rest of body, non-empty)`.
    Datagram = 0x20,
    /// 0x30, liveness probe. Body: `nonce: u64` (8 bytes).
    Ping = 0x30,
    /// 0x31, answer to PING, echoing its nonce. Body: `nonce: u64` (8 bytes).
    Pong = 0x31,
    /// 0x32, the sender's view of this path: the share of its segments the relay socket had to
    /// retransmit lately, i.e. the loss on the way to the receiver, which the receiver cannot see.
    /// Body: `loss_ppm: u32` (parts per million, at most 1 000 000; 4 bytes).
    Report = 0x32,
    /// 0x40, one message of the transition protocol (SWITCH_STEP1 … ALL_REDIRECTED, SWITCH_UNEXPECTED).
    /// Body: the message's own encoding (`crate::transition::ControlMessage`), non-empty.
    Control = 0x40,
}

impl FrameType {
    /// All frame types, in type-byte order.
    pub const ALL: [FrameType; 14] = [
        FrameType::Hello,
        FrameType::Welcome,
        FrameType::Close,
        FrameType::Open,
        FrameType::OpenOk,
        FrameType::Data,
        FrameType::Fin,
        FrameType::Reset,
        FrameType::Credit,
        FrameType::Datagram,
        FrameType::Ping,
        FrameType::Pong,
        FrameType::Report,
        FrameType::Control,
    ];

    /// Maps a type byte to a frame type; `None` for unassigned values.
    pub const fn from_u8(value: u8) -> Option<FrameType> {
        Some(match value {
            0x01 => FrameType::Hello,
            0x02 => FrameType::Welcome,
            0x03 => FrameType::Close,
            0x10 => FrameType::Open,
            0x11 => FrameType::OpenOk,
            0x12 => FrameType::Data,
            0x13 => FrameType::Fin,
            0x14 => FrameType::Reset,
            0x15 => FrameType::Credit,
            0x20 => FrameType::Datagram,
            0x30 => FrameType::Ping,
            0x31 => FrameType::Pong,
            0x32 => FrameType::Report,
            0x40 => FrameType::Control,
            _ => return None,
        })
    }

    /// The type byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The upper-case name used in the protocol description, e.g. `"OPEN_OK"`.
    pub const fn name(self) -> &'static str {
        match self {
            FrameType::Hello => "HELLO",
            FrameType::Welcome => "WELCOME",
            FrameType::Close => "CLOSE",
            FrameType::Open => "OPEN",
            FrameType::OpenOk => "OPEN_OK",
            FrameType::Data => "DATA",
            FrameType::Fin => "FIN",
            FrameType::Reset => "RESET",
            FrameType::Credit => "CREDIT",
            FrameType::Datagram => "DATAGRAM",
            FrameType::Ping => "PING",
            FrameType::Pong => "PONG",
            FrameType::Report => "REPORT",
            FrameType::Control => "CONTROL",
        }
    }

    /// The body length of fixed-size frame types; `None` for variable-size ones.
    pub const fn fixed_body_len(self) -> Option<usize> {
        match self {
            FrameType::Welcome => Some(10),
            FrameType::OpenOk => Some(4),
            FrameType::Fin => Some(12),
            FrameType::Reset => Some(6),
            FrameType::Credit => Some(20),
            FrameType::Ping | FrameType::Pong => Some(8),
            FrameType::Report => Some(4),
            FrameType::Hello
            | FrameType::Close
            | FrameType::Open
            | FrameType::Data
            | FrameType::Datagram
            | FrameType::Control => None,
        }
    }

    /// The smallest body length a well-formed frame of this type can have.
    ///
    /// For DATA and DATAGRAM this includes one payload byte (empty payloads
    /// are invalid).
    pub const fn min_body_len(self) -> usize {
        match self.fixed_body_len() {
            Some(len) => len,
            None => match self {
                // version + resume + count (zero addresses)
                FrameType::Hello => 11,
                // code, empty reason
                FrameType::Close => 2,
                // stream_id + proto + two IPv4 socket addresses
                FrameType::Open => 4 + 1 + 2 * SOCKET_ADDR_V4_LEN,
                FrameType::Data => DATA_OVERHEAD + 1,
                FrameType::Datagram | FrameType::Control => 1,
                _ => 0,
            },
        }
    }

    /// Whether this frame type belongs to a stream (carries a `stream_id`).
    pub const fn is_stream_frame(self) -> bool {
        matches!(
            self,
            FrameType::Open
                | FrameType::OpenOk
                | FrameType::Data
                | FrameType::Fin
                | FrameType::Reset
                | FrameType::Credit
        )
    }
}

impl fmt::Display for FrameType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<FrameType> for u8 {
    fn from(value: FrameType) -> u8 {
        value as u8
    }
}

impl TryFrom<u8> for FrameType {
    type Error = WireError;

    fn try_from(value: u8) -> Result<FrameType, WireError> {
        FrameType::from_u8(value).ok_or(WireError::UnknownType(value))
    }
}

/// Why a stream was reset (the `code` field of RESET).
///
/// Unassigned values are preserved as [`ResetCode::Other`] rather than
/// rejected, so that newer peers can add codes. `Other` should only hold
/// unassigned values; `From<u16>` never produces `Other` for an assigned one,
/// and `Other(1)` encodes exactly like `Refused`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetCode {
    /// 1: the destination refused the connection (TCP RST in reply to SYN).
    Refused,
    /// 2: the connection was reset by the peer after it was established.
    Reset,
    /// 3: the destination is unreachable (no route, ICMP unreachable).
    Unreachable,
    /// 4: connecting or the connection timed out.
    TimedOut,
    /// 5: an internal error of the relay endpoint.
    Internal,
    /// 6: the stream id is not known to the sender of the RESET.
    UnknownStream,
    /// 7: the destination is not one this peer may reach (the server's destination policy:
    /// `exit`, `allowed_destinations`, `client_to_client`).
    NotAllowed,
    /// 8: the peer's session is at its stream limit (`max_flows_per_session`).
    LimitReached,
    /// Any other value, kept verbatim.
    Other(u16),
}

impl From<u16> for ResetCode {
    fn from(value: u16) -> ResetCode {
        match value {
            1 => ResetCode::Refused,
            2 => ResetCode::Reset,
            3 => ResetCode::Unreachable,
            4 => ResetCode::TimedOut,
            5 => ResetCode::Internal,
            6 => ResetCode::UnknownStream,
            7 => ResetCode::NotAllowed,
            8 => ResetCode::LimitReached,
            other => ResetCode::Other(other),
        }
    }
}

impl From<ResetCode> for u16 {
    fn from(value: ResetCode) -> u16 {
        match value {
            ResetCode::Refused => 1,
            ResetCode::Reset => 2,
            ResetCode::Unreachable => 3,
            ResetCode::TimedOut => 4,
            ResetCode::Internal => 5,
            ResetCode::UnknownStream => 6,
            ResetCode::NotAllowed => 7,
            ResetCode::LimitReached => 8,
            ResetCode::Other(other) => other,
        }
    }
}

impl fmt::Display for ResetCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResetCode::Refused => f.write_str("connection refused"),
            ResetCode::Reset => f.write_str("connection reset"),
            ResetCode::Unreachable => f.write_str("destination unreachable"),
            ResetCode::TimedOut => f.write_str("timed out"),
            ResetCode::Internal => f.write_str("internal error"),
            ResetCode::UnknownStream => f.write_str("unknown stream"),
            ResetCode::NotAllowed => f.write_str("destination not allowed"),
            ResetCode::LimitReached => f.write_str("stream limit of the session reached"),
            ResetCode::Other(code) => write!(f, "reset code {code}"),
        }
    }
}

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
        match frame_type.fixed_body_len() {
            Some(expected) if got != expected => {
                return Err(WireError::BadLength { frame_type, expected, got });
            }
            Some(_) => {}
            None => {
                let empty_payload_len = match frame_type {
                    FrameType::Data => Some(DATA_OVERHEAD),
                    FrameType::Datagram | FrameType::Control => Some(0),
                    _ => None,
                };
                if empty_payload_len == Some(got) {
                    return Err(WireError::EmptyPayload { frame_type });
                }
                let min = frame_type.min_body_len();
                if got < min {
                    return Err(WireError::BadLength { frame_type, expected: min, got });
                }
            }
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

/// One relay frame, borrowing its variable-size fields from the decode buffer
/// (or from the caller, when encoding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// HELLO (0x01), client→server, the first frame after the TLS handshake.
    ///
    /// Body: `version: u16 | resume: u64 | count: u8 | count × (family: u8, addr: 4|16 bytes)`.
    Hello {
        /// Wire format version the client speaks ([`PROTOCOL_VERSION`]).
        version: u16,
        /// The session this connection is to join (a new path of a session the client already has),
        /// or 0 for a new session.
        resume: u64,
        /// The virtual IPs (TUN addresses) the client claims, in order; at
        /// most 255. May be empty at the wire level.
        virtual_ips: Vec<IpAddr>,
    },
    /// WELCOME (0x02), server→client, accepts the HELLO.
    ///
    /// Body: `version: u16 | session_id: u64`.
    Welcome {
        /// Wire format version the server speaks.
        version: u16,
        /// Identifier of the client's session, shared by all its uplinks.
        session_id: u64,
    },
    /// CLOSE (0x03), either direction; the sender closes the connection
    /// after sending it.
    ///
    /// Body: `code: u16 | reason: UTF-8 bytes (rest of body, may be empty)`.
    Close {
        /// Machine-readable reason for closing.
        code: u16,
        /// Human-readable reason, at most `MAX_BODY - 2` bytes.
        reason: &'a str,
    },
    /// OPEN (0x10), opens a stream carrying one application TCP connection.
    ///
    /// Body: `stream_id: u32 | proto: u8 | src: socket addr | dst: socket addr`,
    /// socket addr = `family: u8 (4|6) | addr: 4|16 bytes | port: u16`.
    /// `proto` is always 6 (TCP); any other value is rejected. `src` and `dst`
    /// may be of different families.
    Open {
        /// Identifier of the new stream, chosen by the opener.
        stream_id: u32,
        /// Source of the application connection (the app's address).
        src: SocketAddr,
        /// Destination of the application connection.
        dst: SocketAddr,
    },
    /// OPEN_OK (0x11), the stream was accepted (the destination connected).
    ///
    /// Body: `stream_id: u32`.
    OpenOk {
        /// The stream that was opened.
        stream_id: u32,
    },
    /// DATA (0x12), stream payload.
    ///
    /// Body: `stream_id: u32 | offset: u64 | data (rest of body)`.
    /// `data` is non-empty, at most [`MAX_DATA`] bytes, and
    /// `offset + data.len()` must not overflow u64.
    Data {
        /// The stream the bytes belong to.
        stream_id: u32,
        /// Byte offset of `data[0]` within the stream (in this direction).
        offset: u64,
        /// The payload.
        data: &'a [u8],
    },
    /// FIN (0x13), no more data in the sender's direction.
    ///
    /// Body: `stream_id: u32 | offset: u64`.
    Fin {
        /// The stream being finished.
        stream_id: u32,
        /// Final size of the stream in this direction (offset one past the
        /// last data byte).
        offset: u64,
    },
    /// RESET (0x14), aborts a stream in both directions.
    ///
    /// Body: `stream_id: u32 | code: u16`.
    Reset {
        /// The stream being aborted.
        stream_id: u32,
        /// Why ([`ResetCode`]; unknown values are kept).
        code: ResetCode,
    },
    /// CREDIT (0x15), flow control from the receiver of a stream's data to
    /// its sender.
    ///
    /// Body: `stream_id: u32 | received: u64 | max_offset: u64`.
    /// The decoder does not check any relation between the two offsets.
    Credit {
        /// The stream the credit is for.
        stream_id: u32,
        /// Bytes received in order so far (an acknowledgement).
        received: u64,
        /// The sender may send bytes with offset < `max_offset`.
        max_offset: u64,
    },
    /// DATAGRAM (0x20), one raw IPv4 or IPv6 packet (UDP or ICMP).
    ///
    /// Body: `packet (rest of body)`; non-empty, not parsed here.
    Datagram {
        /// The IP packet, starting with its IP header.
        packet: &'a [u8],
    },
    /// PING (0x30), liveness probe; answered with PONG.
    ///
    /// Body: `nonce: u64`.
    Ping {
        /// Arbitrary value to be echoed.
        nonce: u64,
    },
    /// PONG (0x31), answer to PING.
    ///
    /// Body: `nonce: u64`.
    Pong {
        /// The nonce of the PING being answered.
        nonce: u64,
    },
    /// REPORT (0x32), the sender's retransmission rate on this path: the loss towards the receiver.
    ///
    /// Body: `loss_ppm: u32`, at most 1 000 000.
    Report {
        /// Retransmitted segments per million sent, lately.
        loss_ppm: u32,
    },
    /// CONTROL (0x40), one transition-protocol message, either direction.
    ///
    /// Body: the message in its own encoding (`crate::transition::ControlMessage`), non-empty.
    Control {
        /// The encoded message.
        body: &'a [u8],
    },
}

const SOCKET_ADDR_V4_LEN: usize = 1 + 4 + 2;

fn ip_len(ip: &IpAddr) -> usize {
    match ip {
        IpAddr::V4(_) => 1 + 4,
        IpAddr::V6(_) => 1 + 16,
    }
}

fn socket_addr_len(addr: &SocketAddr) -> usize {
    ip_len(&addr.ip()) + 2
}

fn put_ip(out: &mut Vec<u8>, ip: &IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            out.push(FAMILY_V4);
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.push(FAMILY_V6);
            out.extend_from_slice(&v6.octets());
        }
    }
}

fn put_socket_addr(out: &mut Vec<u8>, addr: &SocketAddr) {
    put_ip(out, &addr.ip());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Bounds-checked big-endian reader over one frame body.
struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    frame_type: FrameType,
}

impl<'a> Reader<'a> {
    fn new(frame_type: FrameType, body: &'a [u8]) -> Self {
        Reader { body, pos: 0, frame_type }
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

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        self.array().map(u64::from_be_bytes)
    }

    fn ip(&mut self) -> Result<IpAddr, WireError> {
        match self.u8()? {
            FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>()?))),
            FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>()?))),
            family => Err(WireError::UnknownAddressFamily { frame_type: self.frame_type, family }),
        }
    }

    fn socket_addr(&mut self) -> Result<SocketAddr, WireError> {
        let ip = self.ip()?;
        let port = self.u16()?;
        Ok(match ip {
            IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), port),
            IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        let rest = &self.body[self.pos..];
        self.pos = self.body.len();
        rest
    }

    /// Fails with `BadLength` if bytes are left after the last field.
    fn finish(self) -> Result<(), WireError> {
        if self.pos == self.body.len() {
            Ok(())
        } else {
            Err(WireError::BadLength { frame_type: self.frame_type, expected: self.pos, got: self.body.len() })
        }
    }
}

impl<'a> Frame<'a> {
    /// Parses one frame from the front of `buf`.
    ///
    /// Returns `Ok(None)` if `buf` holds only part of a frame (incomplete
    /// header or body) and more bytes are needed, `Ok(Some((frame,
    /// consumed)))` with `consumed` = header + body length otherwise; bytes
    /// after `consumed` belong to the next frame. Errors are final: the
    /// stream cannot be resynchronised and the connection should be closed.
    pub fn decode(buf: &'a [u8]) -> Result<Option<(Frame<'a>, usize)>, WireError> {
        let Some(header) = Header::parse(buf)? else {
            return Ok(None);
        };
        let frame_len = header.frame_len();
        let Some(body) = buf.get(HEADER_LEN..frame_len) else {
            return Ok(None);
        };
        let frame = Frame::parse_body(header.frame_type, body)?;
        Ok(Some((frame, frame_len)))
    }

    /// Parses the body of a frame of type `frame_type`; `body` must be exactly
    /// the body (`body_len` bytes), without the header.
    pub fn parse_body(frame_type: FrameType, body: &'a [u8]) -> Result<Frame<'a>, WireError> {
        let mut r = Reader::new(frame_type, body);
        let frame = match frame_type {
            FrameType::Hello => {
                let version = r.u16()?;
                let resume = r.u64()?;
                let count = r.u8()?;
                let mut virtual_ips = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    virtual_ips.push(r.ip()?);
                }
                Frame::Hello { version, resume, virtual_ips }
            }
            FrameType::Welcome => Frame::Welcome { version: r.u16()?, session_id: r.u64()? },
            FrameType::Close => {
                let code = r.u16()?;
                let reason = std::str::from_utf8(r.rest())
                    .map_err(|e| WireError::InvalidUtf8 { valid_up_to: e.valid_up_to() })?;
                Frame::Close { code, reason }
            }
            FrameType::Open => {
                let stream_id = r.u32()?;
                let proto = r.u8()?;
                if proto != PROTO_TCP {
                    return Err(WireError::UnsupportedProtocol(proto));
                }
                let src = r.socket_addr()?;
                let dst = r.socket_addr()?;
                Frame::Open { stream_id, src, dst }
            }
            FrameType::OpenOk => Frame::OpenOk { stream_id: r.u32()? },
            FrameType::Data => {
                let stream_id = r.u32()?;
                let offset = r.u64()?;
                let data = r.rest();
                check_data(stream_id, offset, data.len())?;
                Frame::Data { stream_id, offset, data }
            }
            FrameType::Fin => Frame::Fin { stream_id: r.u32()?, offset: r.u64()? },
            FrameType::Reset => Frame::Reset { stream_id: r.u32()?, code: ResetCode::from(r.u16()?) },
            FrameType::Credit => Frame::Credit { stream_id: r.u32()?, received: r.u64()?, max_offset: r.u64()? },
            FrameType::Datagram => {
                let packet = r.rest();
                if packet.is_empty() {
                    return Err(WireError::EmptyPayload { frame_type });
                }
                Frame::Datagram { packet }
            }
            FrameType::Control => {
                let body = r.rest();
                if body.is_empty() {
                    return Err(WireError::EmptyPayload { frame_type });
                }
                Frame::Control { body }
            }
            FrameType::Ping => Frame::Ping { nonce: r.u64()? },
            FrameType::Pong => Frame::Pong { nonce: r.u64()? },
            FrameType::Report => {
                let loss_ppm = r.u32()?;
                if loss_ppm > 1_000_000 {
                    return Err(WireError::LossOutOfRange(loss_ppm));
                }
                Frame::Report { loss_ppm }
            }
        };
        r.finish()?;
        Ok(frame)
    }

    /// The type of this frame.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello { .. } => FrameType::Hello,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::Close { .. } => FrameType::Close,
            Frame::Open { .. } => FrameType::Open,
            Frame::OpenOk { .. } => FrameType::OpenOk,
            Frame::Data { .. } => FrameType::Data,
            Frame::Fin { .. } => FrameType::Fin,
            Frame::Reset { .. } => FrameType::Reset,
            Frame::Credit { .. } => FrameType::Credit,
            Frame::Datagram { .. } => FrameType::Datagram,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Report { .. } => FrameType::Report,
            Frame::Control { .. } => FrameType::Control,
        }
    }

    /// The stream this frame belongs to, for OPEN, OPEN_OK, DATA, FIN, RESET
    /// and CREDIT; `None` for connection-level frames.
    pub fn stream_id(&self) -> Option<u32> {
        match *self {
            Frame::Open { stream_id, .. }
            | Frame::OpenOk { stream_id }
            | Frame::Data { stream_id, .. }
            | Frame::Fin { stream_id, .. }
            | Frame::Reset { stream_id, .. }
            | Frame::Credit { stream_id, .. } => Some(stream_id),
            _ => None,
        }
    }

    /// Length of the body this frame encodes to (may exceed [`MAX_BODY`] for
    /// frames that [`encode`](Self::encode) rejects).
    pub fn body_len(&self) -> usize {
        match self {
            Frame::Hello { virtual_ips, .. } => 11 + virtual_ips.iter().map(ip_len).sum::<usize>(),
            Frame::Close { reason, .. } => 2 + reason.len(),
            Frame::Open { src, dst, .. } => 4 + 1 + socket_addr_len(src) + socket_addr_len(dst),
            Frame::Data { data, .. } => DATA_OVERHEAD + data.len(),
            Frame::Datagram { packet } => packet.len(),
            Frame::Control { body } => body.len(),
            // Fixed-size types.
            other => other.frame_type().fixed_body_len().unwrap_or(0),
        }
    }

    /// Length of the encoded frame, header included.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.body_len()
    }

    /// Checks that the frame can be encoded, returning its body length.
    fn validate(&self) -> Result<u16, WireError> {
        let frame_type = self.frame_type();
        match *self {
            Frame::Hello { ref virtual_ips, .. } if virtual_ips.len() > MAX_HELLO_ADDRS => {
                return Err(WireError::TooManyAddresses(virtual_ips.len()));
            }
            Frame::Data { stream_id, offset, data } => check_data(stream_id, offset, data.len())?,
            Frame::Datagram { packet: [] } | Frame::Control { body: [] } => {
                return Err(WireError::EmptyPayload { frame_type });
            }
            Frame::Report { loss_ppm } if loss_ppm > 1_000_000 => return Err(WireError::LossOutOfRange(loss_ppm)),
            _ => {}
        }
        let len = self.body_len();
        u16::try_from(len).map_err(|_| WireError::BodyTooLong { frame_type, len })
    }

    /// Appends the encoded frame (header and body) to `out`.
    ///
    /// Fails, leaving `out` unchanged, if the frame cannot be represented:
    /// body longer than [`MAX_BODY`] ([`WireError::BodyTooLong`]), more than
    /// 255 HELLO addresses ([`WireError::TooManyAddresses`]), empty DATA or
    /// DATAGRAM payload ([`WireError::EmptyPayload`]), or DATA whose end
    /// offset overflows ([`WireError::OffsetOverflow`]).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), WireError> {
        let body_len = self.validate()?;
        out.reserve(HEADER_LEN + usize::from(body_len));
        Header { frame_type: self.frame_type(), body_len }.emit(out);
        match self {
            Frame::Hello { version, resume, virtual_ips } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&resume.to_be_bytes());
                // validate() guarantees the count fits.
                out.push(virtual_ips.len() as u8);
                for ip in virtual_ips {
                    put_ip(out, ip);
                }
            }
            Frame::Welcome { version, session_id } => {
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&session_id.to_be_bytes());
            }
            Frame::Close { code, reason } => {
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(reason.as_bytes());
            }
            Frame::Open { stream_id, src, dst } => {
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.push(PROTO_TCP);
                put_socket_addr(out, src);
                put_socket_addr(out, dst);
            }
            Frame::OpenOk { stream_id } => out.extend_from_slice(&stream_id.to_be_bytes()),
            Frame::Data { stream_id, offset, data } => {
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(data);
            }
            Frame::Fin { stream_id, offset } => {
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
            }
            Frame::Reset { stream_id, code } => {
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&u16::from(*code).to_be_bytes());
            }
            Frame::Credit { stream_id, received, max_offset } => {
                out.extend_from_slice(&stream_id.to_be_bytes());
                out.extend_from_slice(&received.to_be_bytes());
                out.extend_from_slice(&max_offset.to_be_bytes());
            }
            Frame::Datagram { packet } => out.extend_from_slice(packet),
            Frame::Control { body } => out.extend_from_slice(body),
            Frame::Ping { nonce } | Frame::Pong { nonce } => out.extend_from_slice(&nonce.to_be_bytes()),
            Frame::Report { loss_ppm } => out.extend_from_slice(&loss_ppm.to_be_bytes()),
        }
        Ok(())
    }
}

/// DATA payload checks shared by decoding and encoding (the length limit is
/// checked separately: by `body_len` when decoding, by `validate` when encoding).
fn check_data(stream_id: u32, offset: u64, len: usize) -> Result<(), WireError> {
    if len == 0 {
        return Err(WireError::EmptyPayload { frame_type: FrameType::Data });
    }
    if offset.checked_add(len as u64).is_none() {
        return Err(WireError::OffsetOverflow { stream_id, offset, len });
    }
    Ok(())
}

/// Fast path for the data plane: appends the header and fixed fields of a DATA
/// frame (`HEADER_LEN + 12` bytes) to `out`; the caller then appends exactly
/// `data_len` payload bytes.
///
/// The result is identical to encoding
/// `Frame::Data { stream_id, offset, data }` with `data.len() == data_len`.
/// The caller must respect the limits `encode` checks: `1 <= data_len <=
/// MAX_DATA` and `offset + data_len` not overflowing u64 (debug-asserted).
pub fn encode_data_header(stream_id: u32, offset: u64, data_len: usize, out: &mut Vec<u8>) {
    debug_assert!(data_len <= MAX_DATA, "DATA payload of {data_len} bytes exceeds MAX_DATA");
    debug_assert!(data_len > 0, "DATA payload must not be empty");
    debug_assert!(offset.checked_add(data_len as u64).is_some(), "DATA offset {offset} + {data_len} overflows u64");
    out.reserve(HEADER_LEN + DATA_OVERHEAD + data_len);
    Header { frame_type: FrameType::Data, body_len: (DATA_OVERHEAD + data_len) as u16 }.emit(out);
    out.extend_from_slice(&stream_id.to_be_bytes());
    out.extend_from_slice(&offset.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses hand-written hex, ignoring whitespace and `|` separators.
    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace() && *b != b'|').collect();
        assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
        digits.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
    }

    fn encode(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        frame.encode(&mut out).expect("encode");
        out
    }

    fn decode_err(buf: &[u8]) -> WireError {
        Frame::decode(buf).expect_err("expected a decode error")
    }

    fn sample_frames() -> Vec<Frame<'static>> {
        vec![
            Frame::Hello {
                version: PROTOCOL_VERSION,
                resume: 0,
                virtual_ips: vec!["100.64.0.2".parse().unwrap(), "fd00:1234::2".parse().unwrap()],
            },
            Frame::Hello { version: 7, resume: u64::MAX, virtual_ips: vec![] },
            Frame::Welcome { version: PROTOCOL_VERSION, session_id: 0xdead_beef_0123_4567 },
            Frame::Close { code: 42, reason: "server shutting down – bye" },
            Frame::Close { code: 0, reason: "" },
            Frame::Open {
                stream_id: 1,
                src: "10.0.0.2:40000".parse().unwrap(),
                dst: "[2001:db8::1]:443".parse().unwrap(),
            },
            Frame::OpenOk { stream_id: u32::MAX },
            Frame::Data { stream_id: 3, offset: 1 << 40, data: b"hello world" },
            Frame::Fin { stream_id: 3, offset: 12345 },
            Frame::Reset { stream_id: 9, code: ResetCode::TimedOut },
            Frame::Reset { stream_id: 9, code: ResetCode::Other(999) },
            Frame::Credit { stream_id: 4, received: 10, max_offset: 1 << 20 },
            Frame::Datagram { packet: &[0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17] },
            Frame::Ping { nonce: 1 },
            Frame::Control { body: &[1, 0, 0, 0, 7] },
            Frame::Pong { nonce: u64::MAX },
            Frame::Report { loss_ppm: 12_345 },
        ]
    }

    #[test]
    fn round_trip_every_frame_type() {
        let frames = sample_frames();
        for ty in FrameType::ALL {
            assert!(frames.iter().any(|f| f.frame_type() == ty), "no sample for {ty}");
        }
        for frame in &frames {
            let bytes = encode(frame);
            assert_eq!(bytes.len(), frame.encoded_len(), "{frame:?}");
            let (decoded, consumed) = Frame::decode(&bytes).unwrap().unwrap();
            assert_eq!(&decoded, frame);
            assert_eq!(consumed, bytes.len());
            // Trailing bytes of a following frame are left alone.
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            let (decoded, consumed) = Frame::decode(&two).unwrap().unwrap();
            assert_eq!(&decoded, frame);
            assert_eq!(consumed, bytes.len());
        }
    }

    #[test]
    fn encode_appends() {
        let mut out = vec![0xaa];
        Frame::Ping { nonce: 5 }.encode(&mut out).unwrap();
        assert_eq!(out, hex("aa 30 00 0008 0000000000000005"));
    }

    #[test]
    fn golden_data() {
        let frame = Frame::Data { stream_id: 0x0102_0304, offset: 0x1122_3344_5566_7788, data: b"hi" };
        let golden = hex("12 00 000e | 01020304 | 1122334455667788 | 6869");
        assert_eq!(encode(&frame), golden);
        assert_eq!(Frame::decode(&golden).unwrap(), Some((frame, golden.len())));
    }

    #[test]
    fn golden_open_v4() {
        let frame = Frame::Open {
            stream_id: 7,
            src: "10.0.0.2:40000".parse().unwrap(),
            dst: "93.184.216.34:443".parse().unwrap(),
        };
        let golden = hex("10 00 0013 | 00000007 | 06 | 04 0a000002 9c40 | 04 5db8d822 01bb");
        assert_eq!(encode(&frame), golden);
        assert_eq!(Frame::decode(&golden).unwrap(), Some((frame, golden.len())));
    }

    #[test]
    fn golden_open_v6() {
        let frame = Frame::Open {
            stream_id: 0x8000_0001,
            src: "[fd00::2]:50000".parse().unwrap(),
            dst: "[2001:db8::1]:80".parse().unwrap(),
        };
        let golden = hex("10 00 002b | 80000001 | 06 \
             | 06 fd000000000000000000000000000002 c350 \
             | 06 20010db8000000000000000000000001 0050");
        assert_eq!(encode(&frame), golden);
        assert_eq!(Frame::decode(&golden).unwrap(), Some((frame, golden.len())));
    }

    #[test]
    fn golden_credit() {
        let frame = Frame::Credit { stream_id: 5, received: 1000, max_offset: 66536 };
        let golden = hex("15 00 0014 | 00000005 | 00000000000003e8 | 00000000000103e8");
        assert_eq!(encode(&frame), golden);
        assert_eq!(Frame::decode(&golden).unwrap(), Some((frame, golden.len())));
    }

    #[test]
    fn golden_hello_and_reset() {
        let frame = Frame::Hello {
            version: 1,
            resume: 5,
            virtual_ips: vec!["100.64.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        };
        let golden =
            hex("01 00 0021 | 0001 | 0000000000000005 | 02 | 04 64400002 | 06 fd000000000000000000000000000002");
        assert_eq!(encode(&frame), golden);
        let frame = Frame::Reset { stream_id: 2, code: ResetCode::UnknownStream };
        assert_eq!(encode(&frame), hex("14 00 0006 | 00000002 | 0006"));
    }

    #[test]
    fn incomplete_prefixes_need_more() {
        for frame in sample_frames() {
            let bytes = encode(&frame);
            for len in 0..bytes.len() {
                assert_eq!(Frame::decode(&bytes[..len]), Ok(None), "prefix of {len} bytes of {frame:?}");
            }
        }
    }

    #[test]
    fn fast_path_data_header_matches_encode() {
        let data = [1u8, 2, 3, 4, 5];
        let mut fast = Vec::new();
        encode_data_header(77, 1_000_000, data.len(), &mut fast);
        assert_eq!(fast.len(), HEADER_LEN + DATA_OVERHEAD);
        fast.extend_from_slice(&data);
        let frame = Frame::Data { stream_id: 77, offset: 1_000_000, data: &data };
        assert_eq!(fast, encode(&frame));

        let big = vec![0x5a; MAX_DATA];
        let mut fast = Vec::new();
        encode_data_header(1, 0, big.len(), &mut fast);
        fast.extend_from_slice(&big);
        let (decoded, consumed) = Frame::decode(&fast).unwrap().unwrap();
        assert_eq!(consumed, MAX_FRAME);
        assert_eq!(decoded, Frame::Data { stream_id: 1, offset: 0, data: &big });
    }

    #[test]
    fn max_sizes_encode() {
        let data = vec![0u8; MAX_DATA];
        let frame = Frame::Data { stream_id: 1, offset: 0, data: &data };
        assert_eq!(encode(&frame).len(), MAX_FRAME);
        let packet = vec![0u8; MAX_BODY];
        assert_eq!(encode(&Frame::Datagram { packet: &packet }).len(), MAX_FRAME);
        let reason = "x".repeat(MAX_BODY - 2);
        assert_eq!(encode(&Frame::Close { code: 1, reason: &reason }).len(), MAX_FRAME);
        let virtual_ips = vec![IpAddr::V6(Ipv6Addr::LOCALHOST); MAX_HELLO_ADDRS];
        let frame = Frame::Hello { version: 1, resume: 0, virtual_ips };
        let bytes = encode(&frame);
        assert_eq!(Frame::decode(&bytes).unwrap().unwrap().0, frame);
    }

    #[test]
    fn err_unknown_type() {
        assert_eq!(decode_err(&[0x00]), WireError::UnknownType(0));
        assert_eq!(decode_err(&hex("41 00 0000")), WireError::UnknownType(0x41));
        assert_eq!(FrameType::try_from(0xff), Err(WireError::UnknownType(0xff)));
        assert_eq!(WireError::UnknownType(0x41).to_string(), "unknown frame type 0x41");
    }

    #[test]
    fn err_unknown_flags() {
        let err = decode_err(&hex("30 80"));
        assert_eq!(err, WireError::UnknownFlags { frame_type: FrameType::Ping, flags: 0x80 });
        assert_eq!(err.to_string(), "PING frame has unknown flags 0x80 (must be 0)");
    }

    #[test]
    fn err_bad_length_fixed_size() {
        // Wrong body_len is rejected from the header alone, body not needed.
        let err = decode_err(&hex("30 00 0009"));
        assert_eq!(err, WireError::BadLength { frame_type: FrameType::Ping, expected: 8, got: 9 });
        assert_eq!(err.to_string(), "PING frame body is 9 bytes, expected 8");
        assert_eq!(
            decode_err(&hex("15 00 0013")),
            WireError::BadLength { frame_type: FrameType::Credit, expected: 20, got: 19 }
        );
        assert_eq!(
            decode_err(&hex("11 00 0000")),
            WireError::BadLength { frame_type: FrameType::OpenOk, expected: 4, got: 0 }
        );
    }

    #[test]
    fn err_bad_length_variable_size() {
        // Below the minimum: from the header alone.
        assert_eq!(
            decode_err(&hex("12 00 0005")),
            WireError::BadLength { frame_type: FrameType::Data, expected: 13, got: 5 }
        );
        assert_eq!(
            decode_err(&hex("10 00 0005")),
            WireError::BadLength { frame_type: FrameType::Open, expected: 19, got: 5 }
        );
        // HELLO claiming two addresses but carrying one (truncated).
        assert_eq!(
            decode_err(&hex("01 00 0010 | 0001 0000000000000000 02 | 04 0a000001")),
            WireError::BadLength { frame_type: FrameType::Hello, expected: 17, got: 16 }
        );
        // HELLO with trailing bytes after its addresses.
        assert_eq!(
            decode_err(&hex("01 00 0011 | 0001 0000000000000000 01 | 04 0a000001 | ff")),
            WireError::BadLength { frame_type: FrameType::Hello, expected: 16, got: 17 }
        );
        // OPEN with a v6 dst that does not fit.
        assert_eq!(
            decode_err(&hex("10 00 0013 | 00000001 06 | 04 0a000002 9c40 | 06 2001 0db8 0000 00")),
            WireError::BadLength { frame_type: FrameType::Open, expected: 4 + 1 + 7 + 1 + 16, got: 19 }
        );
        // OPEN with trailing bytes.
        assert_eq!(
            decode_err(&hex("10 00 0014 | 00000001 06 | 04 0a000002 9c40 | 04 0a000003 0050 | 00")),
            WireError::BadLength { frame_type: FrameType::Open, expected: 19, got: 20 }
        );
    }

    #[test]
    fn err_unknown_address_family() {
        assert_eq!(
            decode_err(&hex("01 00 0010 | 0001 0000000000000000 01 | 05 0a000001")),
            WireError::UnknownAddressFamily { frame_type: FrameType::Hello, family: 5 }
        );
        let err = decode_err(&hex("10 00 0013 | 00000001 06 | 04 0a000002 9c40 | 00 0a000003 0050"));
        assert_eq!(err, WireError::UnknownAddressFamily { frame_type: FrameType::Open, family: 0 });
        assert_eq!(err.to_string(), "OPEN frame has unknown address family 0 (expected 4 or 6)");
    }

    #[test]
    fn err_unsupported_protocol() {
        let err = decode_err(&hex("10 00 0013 | 00000001 11 | 04 0a000002 9c40 | 04 0a000003 0035"));
        assert_eq!(err, WireError::UnsupportedProtocol(17));
        assert!(err.to_string().contains("OPEN"));
        assert!(err.to_string().contains("17"));
    }

    #[test]
    fn err_invalid_utf8() {
        let err = decode_err(&hex("03 00 0005 | 0001 | 61 ff 62"));
        assert_eq!(err, WireError::InvalidUtf8 { valid_up_to: 1 });
        assert!(err.to_string().starts_with("CLOSE"));
    }

    #[test]
    fn err_empty_payload() {
        // Detected from the header alone.
        assert_eq!(decode_err(&hex("12 00 000c")), WireError::EmptyPayload { frame_type: FrameType::Data });
        assert_eq!(decode_err(&hex("20 00 0000")), WireError::EmptyPayload { frame_type: FrameType::Datagram });
        // Direct body parse.
        assert_eq!(
            Frame::parse_body(FrameType::Datagram, &[]),
            Err(WireError::EmptyPayload { frame_type: FrameType::Datagram })
        );
        // Encoding refuses too, leaving the buffer untouched.
        let mut out = vec![1, 2, 3];
        assert_eq!(
            Frame::Data { stream_id: 1, offset: 0, data: &[] }.encode(&mut out),
            Err(WireError::EmptyPayload { frame_type: FrameType::Data })
        );
        assert_eq!(
            Frame::Datagram { packet: &[] }.encode(&mut out),
            Err(WireError::EmptyPayload { frame_type: FrameType::Datagram })
        );
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(
            WireError::EmptyPayload { frame_type: FrameType::Datagram }.to_string(),
            "DATAGRAM frame has an empty payload"
        );
    }

    #[test]
    fn err_offset_overflow() {
        let expected = WireError::OffsetOverflow { stream_id: 1, offset: u64::MAX, len: 1 };
        assert_eq!(decode_err(&hex("12 00 000d | 00000001 | ffffffffffffffff | 00")), expected);
        let frame = Frame::Data { stream_id: 1, offset: u64::MAX, data: &[0] };
        assert_eq!(frame.encode(&mut Vec::new()), Err(expected));
        // The last byte may sit at offset u64::MAX - 1.
        let frame = Frame::Data { stream_id: 1, offset: u64::MAX - 1, data: &[0] };
        let bytes = encode(&frame);
        assert_eq!(Frame::decode(&bytes).unwrap().unwrap().0, frame);
    }

    #[test]
    fn err_body_too_long() {
        let data = vec![0u8; MAX_DATA + 1];
        let mut out = Vec::new();
        let err = Frame::Data { stream_id: 1, offset: 0, data: &data }.encode(&mut out).unwrap_err();
        assert_eq!(err, WireError::BodyTooLong { frame_type: FrameType::Data, len: MAX_BODY + 1 });
        assert!(err.to_string().starts_with("DATA"));
        let reason = "x".repeat(MAX_BODY - 1);
        assert_eq!(
            Frame::Close { code: 1, reason: &reason }.encode(&mut out),
            Err(WireError::BodyTooLong { frame_type: FrameType::Close, len: MAX_BODY + 1 })
        );
        let packet = vec![0u8; MAX_BODY + 1];
        assert_eq!(
            Frame::Datagram { packet: &packet }.encode(&mut out),
            Err(WireError::BodyTooLong { frame_type: FrameType::Datagram, len: MAX_BODY + 1 })
        );
        assert!(out.is_empty());
    }

    #[test]
    fn err_too_many_addresses() {
        let frame = Frame::Hello {
            version: 1,
            resume: 0,
            virtual_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST); MAX_HELLO_ADDRS + 1],
        };
        let mut out = Vec::new();
        assert_eq!(frame.encode(&mut out), Err(WireError::TooManyAddresses(256)));
        assert!(out.is_empty());
    }

    #[test]
    fn ipv6_scope_and_flowinfo_are_not_carried() {
        let src = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 1, 0x1234, 7));
        let frame = Frame::Open { stream_id: 1, src, dst: "[fe80::2]:2".parse().unwrap() };
        let bytes = encode(&frame);
        let Frame::Open { src: decoded, .. } = Frame::decode(&bytes).unwrap().unwrap().0 else {
            panic!("not OPEN");
        };
        assert_eq!(decoded, "[fe80::1]:1".parse().unwrap());
    }

    #[test]
    fn reset_code_conversions() {
        for value in 0..=20u16 {
            assert_eq!(u16::from(ResetCode::from(value)), value);
        }
        assert_eq!(ResetCode::from(1), ResetCode::Refused);
        assert_eq!(ResetCode::from(6), ResetCode::UnknownStream);
        assert_eq!(ResetCode::from(0), ResetCode::Other(0));
        assert_eq!(ResetCode::from(7), ResetCode::NotAllowed);
        assert_eq!(ResetCode::from(8), ResetCode::LimitReached);
        assert_eq!(ResetCode::from(9), ResetCode::Other(9));
        assert_eq!(ResetCode::NotAllowed.to_string(), "destination not allowed");
        assert_eq!(ResetCode::Refused.to_string(), "connection refused");
        assert_eq!(ResetCode::Other(300).to_string(), "reset code 300");
    }

    #[test]
    fn frame_type_conversions() {
        for ty in FrameType::ALL {
            assert_eq!(FrameType::from_u8(u8::from(ty)), Some(ty));
            assert_eq!(ty.to_string(), ty.name());
            assert!(ty.min_body_len() <= MAX_BODY);
        }
        let assigned = (0..=255u8).filter(|b| FrameType::from_u8(*b).is_some()).count();
        assert_eq!(assigned, FrameType::ALL.len());
        assert_eq!(FrameType::OpenOk.to_string(), "OPEN_OK");
        assert_eq!(FrameType::Credit as u8, 0x15);
    }

    #[test]
    fn stream_id_accessor() {
        for frame in sample_frames() {
            assert_eq!(frame.stream_id().is_some(), frame.frame_type().is_stream_frame(), "{frame:?}");
        }
        assert_eq!(Frame::OpenOk { stream_id: 9 }.stream_id(), Some(9));
    }

    #[test]
    fn a_report_above_one_million_ppm_is_malformed_both_ways() {
        let mut out = Vec::new();
        Frame::Report { loss_ppm: 1_000_000 }.encode(&mut out).unwrap();
        assert_eq!(Frame::decode(&out).unwrap().unwrap().0, Frame::Report { loss_ppm: 1_000_000 });
        let err = Frame::Report { loss_ppm: 1_000_001 }.encode(&mut Vec::new()).unwrap_err();
        assert_eq!(err, WireError::LossOutOfRange(1_000_001));
        assert_eq!(decode_err(&hex("32 00 0004 000f4241")), WireError::LossOutOfRange(1_000_001));
    }
}
