//! The frame table: one row per frame type, and everything that depends on the type alone.
//!
//! A row gives the type byte, the name used in the protocol description, the rule its body length
//! must follow (checked from the header alone, before the body arrives) and whether the frame belongs
//! to a stream (carries a `stream_id`, always its first field). From the rows the `frame_table!`
//! macro builds [`FrameType`], its lookups and [`Frame::frame_type`] / [`Frame::stream_id`], so
//! that none of them can miss a type. The body layouts are in `codec.rs`.

use std::fmt;

use super::addr::SOCKET_ADDR_V4_LEN;
use super::{Frame, WireError, DATA_OVERHEAD};

/// How long the body of a frame type may be, as far as the header can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BodyLen {
    /// Exactly this many bytes.
    Fixed(usize),
    /// At least this many bytes: fields of variable size follow the fixed ones.
    AtLeast(usize),
    /// `fixed` bytes of fields, then a payload of at least one byte (the rest of the body). A body
    /// of exactly `fixed` bytes is an empty payload ([`WireError::EmptyPayload`]).
    Payload { fixed: usize },
}

impl BodyLen {
    /// The smallest body length a well-formed frame can have.
    pub(super) const fn min(self) -> usize {
        match self {
            BodyLen::Fixed(len) | BodyLen::AtLeast(len) => len,
            BodyLen::Payload { fixed } => fixed + 1,
        }
    }
}

/// Whether a frame type belongs to a stream or to the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Connection,
    /// Carries a `stream_id: u32` as its first field.
    Stream,
}

/// Builds [`FrameType`] and the lookups on it from the rows of the frame table:
/// `Variant = type byte, "NAME", body length rule, connection | stream;`, each with its doc
/// comment. `Variant` is also the name of the [`Frame`] variant.
macro_rules! frame_table {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident = $byte:literal, $name:literal, $body:expr, $scope:ident;
    )*) => {
        /// The type byte of a frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum FrameType {
            $( $(#[doc = $doc])* $variant = $byte, )*
        }

        impl FrameType {
            /// All frame types, in type-byte order.
            pub const ALL: [FrameType; [$($byte),*].len()] = [$(FrameType::$variant),*];

            /// Maps a type byte to a frame type; `None` for unassigned values.
            pub const fn from_u8(value: u8) -> Option<FrameType> {
                match value {
                    $( $byte => Some(FrameType::$variant), )*
                    _ => None,
                }
            }

            const fn row(self) -> Row {
                match self {
                    $( FrameType::$variant => Row { name: $name, body: $body, scope: frame_table!(@scope $scope) }, )*
                }
            }
        }

        impl Frame<'_> {
            /// The type of this frame.
            pub fn frame_type(&self) -> FrameType {
                match self {
                    $( Frame::$variant { .. } => FrameType::$variant, )*
                }
            }

            /// The stream this frame belongs to, for OPEN, OPEN_OK, DATA, FIN, RESET
            /// and CREDIT; `None` for connection-level frames.
            pub fn stream_id(&self) -> Option<u32> {
                match self {
                    $( Frame::$variant { .. } => frame_table!(@stream_id self, $variant, $scope), )*
                }
            }
        }
    };
    (@scope connection) => { Scope::Connection };
    (@scope stream) => { Scope::Stream };
    (@stream_id $frame:ident, $variant:ident, connection) => { None };
    (@stream_id $frame:ident, $variant:ident, stream) => {
        match $frame {
            Frame::$variant { stream_id, .. } => Some(*stream_id),
            _ => None,
        }
    };
}

/// What one row of the table says about a type besides its byte.
struct Row {
    name: &'static str,
    body: BodyLen,
    scope: Scope,
}

frame_table! {
    /// 0x01, client→server, the first frame after the TLS handshake.
    /// Body: `version: u16 | resume: u64 | count: u8 | count × ip address`.
    // version + resume + count (zero addresses)
    Hello = 0x01, "HELLO", BodyLen::AtLeast(2 + 8 + 1), connection;
    /// 0x02, server→client, the answer to HELLO.
    /// Body: `version: u16 | session_id: u64` (10 bytes).
    Welcome = 0x02, "WELCOME", BodyLen::Fixed(10), connection;
    /// 0x03, either direction; the sender closes the connection afterwards.
    /// Body: `code: u16 | reason: UTF-8 bytes (rest of body)`.
    // code, empty reason
    Close = 0x03, "CLOSE", BodyLen::AtLeast(2), connection;
    /// 0x10, opens a stream (an application TCP connection).
    /// Body: `stream_id: u32 | proto: u8 (6) | src: socket addr | dst: socket addr`.
    // stream_id + proto + two IPv4 socket addresses
    Open = 0x10, "OPEN", BodyLen::AtLeast(4 + 1 + 2 * SOCKET_ADDR_V4_LEN), stream;
    /// 0x11, the stream was accepted / connected.
    /// Body: `stream_id: u32` (4 bytes).
    OpenOk = 0x11, "OPEN_OK", BodyLen::Fixed(4), stream;
    /// 0x12, stream payload.
    /// Body: `stream_id: u32 | offset: u64 | data (rest of body, non-empty)`.
    Data = 0x12, "DATA", BodyLen::Payload { fixed: DATA_OVERHEAD }, stream;
    /// 0x13, end of the stream in the sender's direction.
    /// Body: `stream_id: u32 | offset: u64` (12 bytes).
    Fin = 0x13, "FIN", BodyLen::Fixed(12), stream;
    /// 0x14, abort a stream in both directions.
    /// Body: `stream_id: u32 | code: u16` (6 bytes).
    Reset = 0x14, "RESET", BodyLen::Fixed(6), stream;
    /// 0x15, flow control, receiver→sender.
    /// Body: `stream_id: u32 | received: u64 | max_offset: u64` (20 bytes).
    Credit = 0x15, "CREDIT", BodyLen::Fixed(20), stream;
    /// 0x20, one raw IP packet (UDP or ICMP).
    /// Body: `packet (rest of body, non-empty)`.
    Datagram = 0x20, "DATAGRAM", BodyLen::Payload { fixed: 0 }, connection;
    /// 0x30, liveness probe. Body: `nonce: u64` (8 bytes).
    Ping = 0x30, "PING", BodyLen::Fixed(8), connection;
    /// 0x31, answer to PING, echoing its nonce. Body: `nonce: u64` (8 bytes).
    Pong = 0x31, "PONG", BodyLen::Fixed(8), connection;
    /// 0x32, the sender's view of this path: the share of its segments the relay socket had to
    /// retransmit lately, i.e. the loss on the way to the receiver, which the receiver cannot see.
    /// Body: `loss_ppm: u32` (parts per million, at most 1 000 000; 4 bytes).
    Report = 0x32, "REPORT", BodyLen::Fixed(4), connection;
    /// 0x40, one message of the transition protocol (SWITCH_STEP1 … ALL_REDIRECTED, SWITCH_UNEXPECTED).
    /// Body: the message's own encoding (`crate::transition::ControlMessage`), non-empty.
    Control = 0x40, "CONTROL", BodyLen::Payload { fixed: 0 }, connection;
}

impl FrameType {
    /// The type byte.
    pub const fn as_u8(self) -> u8 {
        self as u8
    }

    /// The upper-case name used in the protocol description, e.g. `"OPEN_OK"`.
    pub const fn name(self) -> &'static str {
        self.row().name
    }

    /// The body length of fixed-size frame types; `None` for variable-size ones.
    pub const fn fixed_body_len(self) -> Option<usize> {
        match self.row().body {
            BodyLen::Fixed(len) => Some(len),
            BodyLen::AtLeast(_) | BodyLen::Payload { .. } => None,
        }
    }

    /// The smallest body length a well-formed frame of this type can have.
    ///
    /// For DATA, DATAGRAM and CONTROL this includes one payload byte (empty
    /// payloads are invalid).
    pub const fn min_body_len(self) -> usize {
        self.row().body.min()
    }

    /// Whether this frame type belongs to a stream (carries a `stream_id`).
    pub const fn is_stream_frame(self) -> bool {
        matches!(self.row().scope, Scope::Stream)
    }

    /// The rule the body length of this type follows.
    pub(super) const fn body_len_rule(self) -> BodyLen {
        self.row().body
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
