//! The [`Frame`] enum: one variant per row of the frame table, with the fields of its body.

use std::net::{IpAddr, SocketAddr};

use super::addr::{ip_len, socket_addr_len};
#[cfg(doc)]
use super::PROTOCOL_VERSION;
use super::{ResetCode, HEADER_LEN, MAX_BODY};

/// Length of the fixed part of a DATA body: `stream_id: u32 | offset: u64`.
pub const DATA_OVERHEAD: usize = 12;

/// Largest payload a DATA frame can carry (`MAX_BODY - 12`).
pub const MAX_DATA: usize = MAX_BODY - DATA_OVERHEAD;

/// Largest number of addresses a HELLO frame can carry (`count` is a u8).
pub const MAX_HELLO_ADDRS: usize = u8::MAX as usize;

/// The only transport protocol OPEN accepts: TCP (IP protocol number 6).
pub const PROTO_TCP: u8 = 6;

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

impl Frame<'_> {
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
}
