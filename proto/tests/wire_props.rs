//! Property tests for the relay wire format (`roamtun_proto::wire`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use proptest::prelude::*;
use roamtun_proto::wire::{Frame, FrameType, ResetCode, WireError, HEADER_LEN, MAX_BODY};

/// An owned frame, so that proptest can generate and shrink it; `as_frame`
/// borrows it as a `Frame`.
#[derive(Debug, Clone, PartialEq)]
enum OwnedFrame {
    Hello(u16, u64, Vec<IpAddr>),
    Welcome(u16, u64),
    Close(u16, String),
    Open(u32, SocketAddr, SocketAddr),
    OpenOk(u32),
    Data(u32, u64, Vec<u8>),
    Fin(u32, u64),
    Reset(u32, ResetCode),
    Credit(u32, u64, u64),
    Datagram(Vec<u8>),
    Ping(u64),
    Pong(u64),
    Report(u32),
    Control(Vec<u8>),
}

impl OwnedFrame {
    fn from_frame(frame: &Frame<'_>) -> OwnedFrame {
        match frame {
            Frame::Hello { version, resume, virtual_ips } => OwnedFrame::Hello(*version, *resume, virtual_ips.clone()),
            Frame::Welcome { version, session_id } => OwnedFrame::Welcome(*version, *session_id),
            Frame::Close { code, reason } => OwnedFrame::Close(*code, reason.to_string()),
            Frame::Open { stream_id, src, dst } => OwnedFrame::Open(*stream_id, *src, *dst),
            Frame::OpenOk { stream_id } => OwnedFrame::OpenOk(*stream_id),
            Frame::Data { stream_id, offset, data } => OwnedFrame::Data(*stream_id, *offset, data.to_vec()),
            Frame::Fin { stream_id, offset } => OwnedFrame::Fin(*stream_id, *offset),
            Frame::Reset { stream_id, code } => OwnedFrame::Reset(*stream_id, *code),
            Frame::Credit { stream_id, received, max_offset } => OwnedFrame::Credit(*stream_id, *received, *max_offset),
            Frame::Datagram { packet } => OwnedFrame::Datagram(packet.to_vec()),
            Frame::Ping { nonce } => OwnedFrame::Ping(*nonce),
            Frame::Pong { nonce } => OwnedFrame::Pong(*nonce),
            Frame::Report { loss_ppm } => OwnedFrame::Report(*loss_ppm),
            Frame::Control { body } => OwnedFrame::Control(body.to_vec()),
        }
    }

    fn as_frame(&self) -> Frame<'_> {
        match self {
            OwnedFrame::Hello(version, resume, ips) => {
                Frame::Hello { version: *version, resume: *resume, virtual_ips: ips.clone() }
            }
            OwnedFrame::Welcome(version, session_id) => Frame::Welcome { version: *version, session_id: *session_id },
            OwnedFrame::Close(code, reason) => Frame::Close { code: *code, reason },
            OwnedFrame::Open(stream_id, src, dst) => Frame::Open { stream_id: *stream_id, src: *src, dst: *dst },
            OwnedFrame::OpenOk(stream_id) => Frame::OpenOk { stream_id: *stream_id },
            OwnedFrame::Data(stream_id, offset, data) => Frame::Data { stream_id: *stream_id, offset: *offset, data },
            OwnedFrame::Fin(stream_id, offset) => Frame::Fin { stream_id: *stream_id, offset: *offset },
            OwnedFrame::Reset(stream_id, code) => Frame::Reset { stream_id: *stream_id, code: *code },
            OwnedFrame::Credit(stream_id, received, max_offset) => {
                Frame::Credit { stream_id: *stream_id, received: *received, max_offset: *max_offset }
            }
            OwnedFrame::Datagram(packet) => Frame::Datagram { packet },
            OwnedFrame::Ping(nonce) => Frame::Ping { nonce: *nonce },
            OwnedFrame::Pong(nonce) => Frame::Pong { nonce: *nonce },
            OwnedFrame::Report(loss_ppm) => Frame::Report { loss_ppm: *loss_ppm },
            OwnedFrame::Control(body) => Frame::Control { body },
        }
    }
}

fn ip_strategy() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
    ]
}

/// Socket addresses as the wire carries them: IPv6 without flow info or scope.
fn socket_addr_strategy() -> impl Strategy<Value = SocketAddr> {
    (ip_strategy(), any::<u16>()).prop_map(|(ip, port)| match ip {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
    })
}

/// Reset codes in canonical form (`Other` only for unassigned values).
fn reset_code_strategy() -> impl Strategy<Value = ResetCode> {
    any::<u16>().prop_map(ResetCode::from)
}

fn payload_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => proptest::collection::vec(any::<u8>(), 1..64),
        1 => proptest::collection::vec(any::<u8>(), 1..2000),
    ]
}

/// Any frame that `encode` accepts.
fn frame_strategy() -> impl Strategy<Value = OwnedFrame> {
    prop_oneof![
        (any::<u16>(), any::<u64>(), proptest::collection::vec(ip_strategy(), 0..8))
            .prop_map(|(v, r, ips)| OwnedFrame::Hello(v, r, ips)),
        (any::<u16>(), any::<u64>()).prop_map(|(v, s)| OwnedFrame::Welcome(v, s)),
        (any::<u16>(), ".{0,40}").prop_map(|(c, r)| OwnedFrame::Close(c, r)),
        (any::<u32>(), socket_addr_strategy(), socket_addr_strategy())
            .prop_map(|(id, s, d)| OwnedFrame::Open(id, s, d)),
        any::<u32>().prop_map(OwnedFrame::OpenOk),
        (any::<u32>(), any::<u64>(), payload_strategy()).prop_map(|(id, off, data)| {
            // Keep offset + len within u64.
            let off = off.min(u64::MAX - data.len() as u64);
            OwnedFrame::Data(id, off, data)
        }),
        (any::<u32>(), any::<u64>()).prop_map(|(id, off)| OwnedFrame::Fin(id, off)),
        (any::<u32>(), reset_code_strategy()).prop_map(|(id, c)| OwnedFrame::Reset(id, c)),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(id, r, m)| OwnedFrame::Credit(id, r, m)),
        payload_strategy().prop_map(OwnedFrame::Datagram),
        any::<u64>().prop_map(OwnedFrame::Ping),
        any::<u64>().prop_map(OwnedFrame::Pong),
        (0..=1_000_000u32).prop_map(OwnedFrame::Report),
        payload_strategy().prop_map(OwnedFrame::Control),
    ]
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(&mut out).expect("generated frames are encodable");
    out
}

/// Bytes that start like a frame of a known type with a small body, to reach
/// the body parsers more often than fully random bytes would.
fn frame_like_bytes() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::sample::select(FrameType::ALL.to_vec()),
        prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
        .prop_map(|(ty, flags, body, honest_len)| {
            let len = if honest_len { body.len() as u16 } else { (body.len() as u16).wrapping_add(3) };
            let mut out = vec![ty.as_u8(), flags];
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body);
            out
        })
}

/// Checks the decoder's contract on arbitrary input; returns the decode result.
fn check_decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, WireError> {
    let result = Frame::decode(buf);
    if let Ok(Some((frame, consumed))) = &result {
        assert!(*consumed <= buf.len());
        assert!(*consumed >= HEADER_LEN);
        assert!(*consumed <= HEADER_LEN + MAX_BODY);
        // Whatever decodes is the canonical encoding of the decoded frame.
        assert_eq!(frame.encoded_len(), *consumed);
        assert_eq!(encode(frame), &buf[..*consumed]);
    }
    result
}

proptest! {
    #[test]
    fn round_trip(owned in frame_strategy()) {
        let frame = owned.as_frame();
        let bytes = encode(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        let (decoded, consumed) = Frame::decode(&bytes)
            .expect("valid frame decodes")
            .expect("complete frame");
        prop_assert_eq!(consumed, bytes.len());
        prop_assert_eq!(decoded, frame);
        // Every strict prefix asks for more bytes.
        for len in [0, 1, HEADER_LEN - 1, HEADER_LEN, bytes.len() - 1] {
            if len < bytes.len() {
                prop_assert_eq!(Frame::decode(&bytes[..len]), Ok(None));
            }
        }
    }

    #[test]
    fn streaming_reassembly(
        frames in proptest::collection::vec(frame_strategy(), 0..12),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
    ) {
        let mut stream = Vec::new();
        for owned in &frames {
            owned.as_frame().encode(&mut stream).unwrap();
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();

        // Feed the chunks one at a time into a reassembly buffer, decoding
        // every complete frame after each chunk.
        let mut buffer: Vec<u8> = Vec::new();
        let mut decoded: Vec<OwnedFrame> = Vec::new();
        for window in cuts.windows(2) {
            buffer.extend_from_slice(&stream[window[0]..window[1]]);
            loop {
                match Frame::decode(&buffer) {
                    Ok(Some((frame, consumed))) => {
                        decoded.push(OwnedFrame::from_frame(&frame));
                        buffer.drain(..consumed);
                    }
                    Ok(None) => break,
                    Err(e) => panic!("valid stream failed to decode: {e}"),
                }
            }
        }
        prop_assert!(buffer.is_empty(), "{} bytes left over", buffer.len());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
        let _ = check_decode(&bytes);
    }

    #[test]
    fn frame_like_bytes_never_panic(bytes in frame_like_bytes()) {
        let _ = check_decode(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        owned in frame_strategy(),
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 1..4),
        truncate in any::<proptest::sample::Index>(),
    ) {
        let mut bytes = encode(&owned.as_frame());
        for (index, value) in flips {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        let _ = check_decode(&bytes);
        let len = truncate.index(bytes.len() + 1);
        let _ = check_decode(&bytes[..len]);
    }

    #[test]
    fn trailing_body_bytes_are_rejected(
        owned in frame_strategy(),
        extra in proptest::collection::vec(any::<u8>(), 1..20),
    ) {
        let frame = owned.as_frame();
        let mut bytes = encode(&frame);
        let body_len = bytes.len() - HEADER_LEN + extra.len();
        prop_assume!(body_len <= MAX_BODY);
        bytes[2..HEADER_LEN].copy_from_slice(&(body_len as u16).to_be_bytes());
        bytes.extend_from_slice(&extra);
        let result = check_decode(&bytes);
        match frame.frame_type() {
            // The last field is "rest of body": the extra bytes belong to it
            // (for CLOSE only if they keep the reason valid UTF-8).
            FrameType::Close | FrameType::Data | FrameType::Datagram | FrameType::Control => {
                if let Ok(Some((decoded, consumed))) = result {
                    prop_assert_eq!(consumed, bytes.len());
                    prop_assert_eq!(decoded.body_len(), frame.body_len() + extra.len());
                } else {
                    prop_assert_eq!(frame.frame_type(), FrameType::Close);
                    prop_assert!(
                        matches!(result, Err(WireError::InvalidUtf8 { .. })),
                        "{:?}",
                        result
                    );
                }
            }
            frame_type => {
                let expected = match frame_type.fixed_body_len() {
                    Some(fixed) => fixed,
                    None => frame.body_len(),
                };
                prop_assert_eq!(
                    result.map(|_| ()),
                    Err(WireError::BadLength { frame_type, expected, got: body_len })
                );
            }
        }
    }

    #[test]
    fn errors_are_final_as_input_grows(bytes in frame_like_bytes()) {
        // Growing the input never turns an error into success: once a prefix
        // is rejected, every longer input is rejected too.
        let mut failed = false;
        for len in 0..=bytes.len() {
            match Frame::decode(&bytes[..len]) {
                Err(_) => failed = true,
                Ok(Some(_)) => prop_assert!(!failed, "prefix failed but {len} bytes decoded"),
                Ok(None) => prop_assert!(!failed, "prefix failed but {len} bytes need more"),
            }
        }
    }
}
