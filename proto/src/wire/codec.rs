//! Frame bodies to bytes and back: [`Frame::decode`], [`Frame::parse_body`], [`Frame::encode`], and
//! the data plane's [`encode_data_header`]. One arm per frame type in each direction; what the type
//! alone decides (lengths, names) comes from the frame table.

use super::addr::{put_ip, put_socket_addr};
use super::reader::Reader;
use super::table::BodyLen;
#[cfg(doc)]
use super::MAX_BODY;
use super::{
    Frame, FrameType, Header, ResetCode, WireError, DATA_OVERHEAD, HEADER_LEN, MAX_DATA, MAX_HELLO_ADDRS, PROTO_TCP,
};

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
        if is_empty_payload(frame_type, body.len()) {
            return Err(WireError::EmptyPayload { frame_type });
        }
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
                check_data_end(stream_id, offset, data.len())?;
                Frame::Data { stream_id, offset, data }
            }
            FrameType::Fin => Frame::Fin { stream_id: r.u32()?, offset: r.u64()? },
            FrameType::Reset => Frame::Reset { stream_id: r.u32()?, code: ResetCode::from(r.u16()?) },
            FrameType::Credit => Frame::Credit { stream_id: r.u32()?, received: r.u64()?, max_offset: r.u64()? },
            FrameType::Datagram => Frame::Datagram { packet: r.rest() },
            FrameType::Control => Frame::Control { body: r.rest() },
            FrameType::Ping => Frame::Ping { nonce: r.u64()? },
            FrameType::Pong => Frame::Pong { nonce: r.u64()? },
            FrameType::Report => {
                let loss_ppm = r.u32()?;
                check_loss(loss_ppm)?;
                Frame::Report { loss_ppm }
            }
        };
        r.finish()?;
        Ok(frame)
    }

    /// Checks that the frame can be encoded, returning its body length.
    fn validate(&self) -> Result<u16, WireError> {
        let frame_type = self.frame_type();
        let len = self.body_len();
        if is_empty_payload(frame_type, len) {
            return Err(WireError::EmptyPayload { frame_type });
        }
        match *self {
            Frame::Hello { ref virtual_ips, .. } if virtual_ips.len() > MAX_HELLO_ADDRS => {
                return Err(WireError::TooManyAddresses(virtual_ips.len()));
            }
            Frame::Data { stream_id, offset, data } => check_data_end(stream_id, offset, data.len())?,
            Frame::Report { loss_ppm } => check_loss(loss_ppm)?,
            _ => {}
        }
        u16::try_from(len).map_err(|_| WireError::BodyTooLong { frame_type, len })
    }

    /// Appends the encoded frame (header and body) to `out`.
    ///
    /// Fails, leaving `out` unchanged, if the frame cannot be represented:
    /// body longer than [`MAX_BODY`] ([`WireError::BodyTooLong`]), more than
    /// 255 HELLO addresses ([`WireError::TooManyAddresses`]), empty DATA,
    /// DATAGRAM or CONTROL payload ([`WireError::EmptyPayload`]), DATA whose end
    /// offset overflows ([`WireError::OffsetOverflow`]), or a REPORT above one
    /// million ppm ([`WireError::LossOutOfRange`]).
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

/// A body of `len` bytes holds the fixed fields of a payload-carrying type (DATA, DATAGRAM, CONTROL)
/// and no payload. Checked before the fields, when decoding and encoding alike.
fn is_empty_payload(frame_type: FrameType, len: usize) -> bool {
    matches!(frame_type.body_len_rule(), BodyLen::Payload { fixed } if len == fixed)
}

/// The last byte of a DATA payload must lie at an offset a u64 can hold, when decoding and encoding
/// alike (the length limit is checked separately: by `body_len` when decoding, by `validate` when
/// encoding).
fn check_data_end(stream_id: u32, offset: u64, len: usize) -> Result<(), WireError> {
    if offset.checked_add(len as u64).is_none() {
        return Err(WireError::OffsetOverflow { stream_id, offset, len });
    }
    Ok(())
}

/// A REPORT's loss is a share: at most one million parts per million.
fn check_loss(loss_ppm: u32) -> Result<(), WireError> {
    if loss_ppm > 1_000_000 {
        return Err(WireError::LossOutOfRange(loss_ppm));
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
