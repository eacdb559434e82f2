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
//!
//! # Where things are
//!
//! * `header`: the 4-byte header, [`frame_len`] / [`announced_len`] (frame boundaries without parsing).
//! * `table`: the frame table, one row per [`FrameType`] (type byte, name, body length rule, whether
//!   it belongs to a stream); everything that is a property of the type alone is derived from it.
//! * `frame`: the [`Frame`] enum, one variant per row of the table.
//! * `codec`: [`Frame::decode`] / [`Frame::parse_body`] and [`Frame::encode`], per-type body layouts.
//! * `reader` and `addr`: the bounds-checked body reader and the address encoding.
//! * `reset`: [`ResetCode`]. `error`: [`WireError`].
//!
//! Adding a frame type: a row in the table, a variant of [`Frame`], its arms in `codec` (decode,
//! encode) and, for a variable-size body, in [`Frame::body_len`]. The body of CONTROL frames is the
//! transition protocol's own encoding (`crate::transition::ControlMessage`), not parsed here.

mod addr;
mod codec;
mod error;
mod frame;
mod header;
mod reader;
mod reset;
mod table;
#[cfg(test)]
mod tests;

pub use addr::{FAMILY_V4, FAMILY_V6};
pub use codec::encode_data_header;
pub use error::WireError;
pub use frame::{Frame, DATA_OVERHEAD, MAX_DATA, MAX_HELLO_ADDRS, PROTO_TCP};
pub use header::{announced_len, frame_len, Header, HEADER_LEN, MAX_BODY, MAX_FRAME};
pub use reset::ResetCode;
pub use table::FrameType;

/// Version of this wire format, sent in HELLO and WELCOME.
///
/// The decoder does not check the version fields; the handshake code decides
/// what to do with a peer that speaks another version. Version 4 added the CUTOVER control message
/// (a planned switch moves the stream frames to the new path at once, which a version 3 peer would
/// drop as late frames), so the server refuses a version 3 client with CLOSE VERSION.
pub const PROTOCOL_VERSION: u16 = 4;
