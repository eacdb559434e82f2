//! The codec's unit tests: golden bytes, every error, and round trips of every frame type.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

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
        Frame::Open { stream_id: 1, src: "10.0.0.2:40000".parse().unwrap(), dst: "[2001:db8::1]:443".parse().unwrap() },
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
    let frame =
        Frame::Open { stream_id: 7, src: "10.0.0.2:40000".parse().unwrap(), dst: "93.184.216.34:443".parse().unwrap() };
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
    let golden = hex("01 00 0021 | 0001 | 0000000000000005 | 02 | 04 64400002 | 06 fd000000000000000000000000000002");
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
    let frame =
        Frame::Hello { version: 1, resume: 0, virtual_ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST); MAX_HELLO_ADDRS + 1] };
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
