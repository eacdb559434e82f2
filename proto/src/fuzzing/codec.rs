//! `frame_decode` and `control_codec`: the two decoders a peer's bytes meet first.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::transition::{ControlMessage, Epoch, StreamOffset};
use crate::wire::{self, Frame, FrameType, ResetCode};

/// [`Frame::decode`] on arbitrary bytes, and [`Frame::encode`] on arbitrary frames built from them.
///
/// Checks: no panic; a decoded frame is exactly as long as its header says, and re-encodes to the
/// very bytes it was decoded from (every accepted encoding is canonical); "need more bytes" only
/// while the frame is incomplete; a frame that encodes decodes back to itself (up to the documented
/// exceptions), and a refused encoding leaves the buffer alone.
pub fn frame_decode(data: &[u8]) {
    match Frame::decode(data) {
        Ok(Some((frame, used))) => {
            assert_eq!(wire::frame_len(data), Some(used), "the header's length delimits {frame:?}");
            assert_eq!(frame.encoded_len(), used, "encoded_len of {frame:?}");
            let mut again = Vec::new();
            frame.encode(&mut again).expect("a decoded frame encodes");
            assert_eq!(again, data[..used], "decode accepted a non-canonical encoding of {frame:?}");
        }
        Ok(None) => assert_eq!(wire::frame_len(data), None, "a whole frame is not 'need more bytes'"),
        Err(_) => {}
    }

    let mut u = Unstructured::new(data);
    let Ok(frame) = arbitrary_frame(&mut u) else { return };
    let mut bytes = vec![0xee];
    match frame.encode(&mut bytes) {
        Ok(()) => {
            assert_eq!(bytes.len() - 1, frame.encoded_len(), "encoded_len of {frame:?}");
            let (back, used) = Frame::decode(&bytes[1..])
                .unwrap_or_else(|e| panic!("{frame:?} encodes to bytes that do not decode: {e}"))
                .unwrap_or_else(|| panic!("{frame:?} encodes to an incomplete frame"));
            assert_eq!(used, bytes.len() - 1);
            assert_eq!(back, canonical(frame), "round trip");
        }
        Err(_) => assert_eq!(bytes, [0xee], "a refused encoding touched the buffer"),
    }
}

/// [`ControlMessage::decode`] on arbitrary bytes, and the encoder on arbitrary messages.
///
/// Checks: no panic; a decoded message re-encodes to exactly its bytes; every message decodes back
/// to itself, alone and inside a CONTROL frame.
pub fn control_codec(data: &[u8]) {
    if let Ok(msg) = ControlMessage::decode(data) {
        assert_eq!(msg.encoded_len(), data.len(), "encoded_len of {msg:?}");
        assert_eq!(msg.to_bytes(), data, "decode accepted a non-canonical encoding of {msg:?}");
    }

    let mut u = Unstructured::new(data);
    let Ok(msg) = arbitrary_message(&mut u) else { return };
    let bytes = msg.to_bytes();
    assert_eq!(bytes.len(), msg.encoded_len(), "encoded_len of {msg:?}");
    assert_eq!(ControlMessage::decode(&bytes).as_ref(), Ok(&msg), "round trip");
    if bytes.len() <= wire::MAX_BODY {
        let mut framed = Vec::new();
        Frame::Control { body: &bytes }.encode(&mut framed).expect("a control message fits its frame");
        match Frame::decode(&framed) {
            Ok(Some((Frame::Control { body }, _))) => assert_eq!(ControlMessage::decode(body), Ok(msg)),
            other => panic!("CONTROL frame of {msg:?} decodes as {other:?}"),
        }
    }
}

/// What decoding the encoding of `frame` gives, by the documented exceptions: an assigned reset
/// code held in `Other` decodes as the named code.
fn canonical(frame: Frame<'_>) -> Frame<'_> {
    match frame {
        Frame::Reset { stream_id, code } => Frame::Reset { stream_id, code: ResetCode::from(u16::from(code)) },
        other => other,
    }
}

fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(if u.arbitrary()? {
        IpAddr::V6(Ipv6Addr::from(u.arbitrary::<u128>()?))
    } else {
        IpAddr::V4(Ipv4Addr::from(u.arbitrary::<u32>()?))
    })
}

fn socket_addr(u: &mut Unstructured<'_>) -> Result<SocketAddr> {
    Ok(SocketAddr::new(ip(u)?, u.arbitrary()?))
}

fn arbitrary_frame<'a>(u: &mut Unstructured<'a>) -> Result<Frame<'a>> {
    let ty = *u.choose(&FrameType::ALL)?;
    Ok(match ty {
        FrameType::Hello => {
            let version = u.arbitrary()?;
            let resume = u.arbitrary()?;
            let count = u.int_in_range(0..=300)?;
            let virtual_ips = (0..count).map(|_| ip(u)).collect::<Result<_>>()?;
            Frame::Hello { version, resume, virtual_ips }
        }
        FrameType::Welcome => Frame::Welcome { version: u.arbitrary()?, session_id: u.arbitrary()? },
        FrameType::Close => Frame::Close { code: u.arbitrary()?, reason: <&str>::arbitrary(u)? },
        FrameType::Open => Frame::Open { stream_id: u.arbitrary()?, src: socket_addr(u)?, dst: socket_addr(u)? },
        FrameType::OpenOk => Frame::OpenOk { stream_id: u.arbitrary()? },
        FrameType::Data => {
            Frame::Data { stream_id: u.arbitrary()?, offset: u.arbitrary()?, data: <&[u8]>::arbitrary(u)? }
        }
        FrameType::Fin => Frame::Fin { stream_id: u.arbitrary()?, offset: u.arbitrary()? },
        FrameType::Reset => Frame::Reset { stream_id: u.arbitrary()?, code: ResetCode::Other(u.arbitrary()?) },
        FrameType::Credit => {
            Frame::Credit { stream_id: u.arbitrary()?, received: u.arbitrary()?, max_offset: u.arbitrary()? }
        }
        FrameType::Datagram => Frame::Datagram { packet: <&[u8]>::arbitrary(u)? },
        FrameType::Ping => Frame::Ping { nonce: u.arbitrary()? },
        FrameType::Pong => Frame::Pong { nonce: u.arbitrary()? },
        FrameType::Report => Frame::Report { loss_ppm: u.arbitrary()? },
        FrameType::Control => Frame::Control { body: <&[u8]>::arbitrary(u)? },
    })
}

fn arbitrary_message(u: &mut Unstructured<'_>) -> Result<ControlMessage> {
    let epoch = Epoch(u.arbitrary()?);
    let offsets = |u: &mut Unstructured<'_>| -> Result<Vec<StreamOffset>> {
        let n = u.arbitrary_len::<(u32, u64)>()?;
        (0..n).map(|_| Ok(StreamOffset { stream: u.arbitrary()?, received: u.arbitrary()? })).collect()
    };
    Ok(match u.int_in_range(0..=8u8)? {
        0 => ControlMessage::SwitchStep1 { epoch },
        1 => ControlMessage::Ack { epoch },
        2 => ControlMessage::LastMessageBeforeRedirection { epoch },
        3 => ControlMessage::OkToRedirection { epoch },
        4 => ControlMessage::ClientServicesReadyForRedirection { epoch },
        5 => ControlMessage::ServerServicesReadyForRedirection { epoch },
        6 => ControlMessage::SwitchStep2 { epoch, session: u.arbitrary()? },
        7 => ControlMessage::AllRedirected { epoch, received: offsets(u)? },
        _ => ControlMessage::SwitchUnexpected { epoch, session: u.arbitrary()?, received: offsets(u)? },
    })
}
