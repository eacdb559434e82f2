//! The path reader's cut of its byte stream: whole stream frames for the engine, and the frames the
//! reader handles itself, taken out in place.

use bytes::{Bytes, BytesMut};

use crate::wire::{self, FrameType};

/// What the reader makes of the byte stream: whole stream frames for the engine, a transition
/// message, or a probe of this path (answered or timed here: a probe belongs to the path it came on,
/// whichever path the session's stream frames use).
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    Frames(Bytes),
    Control(Vec<u8>),
    Ping(u64),
    Pong(u64),
    Report(u32),
}

/// Cuts the whole frames off the front of `buf` (a partial frame stays), taking each CONTROL frame
/// out as its own piece so that the daemon acts on it exactly between the frames around it: an
/// ALL_REDIRECTED must take effect before the stream bytes that follow it on the new path.
///
/// The frames are split off the buffer, not copied: the pieces share its allocation, and the partial
/// frame behind them stays where it is and grows in place as the next reads arrive.
pub fn take_frames(buf: &mut BytesMut, pieces: &mut Vec<Piece>) {
    let mut pos = 0;
    while let Some(len) = wire::frame_len(&buf[pos..]) {
        let body = &buf[pos + wire::HEADER_LEN..pos + len];
        let nonce = || u64::from_be_bytes(body.try_into().expect("an 8-byte body"));
        let piece = match FrameType::from_u8(buf[pos]) {
            Some(FrameType::Control) => Some(Piece::Control(body.to_vec())),
            // A probe with a malformed body stays in the stream: the engine counts it.
            Some(FrameType::Ping) if body.len() == 8 && buf[pos + 1] == 0 => Some(Piece::Ping(nonce())),
            Some(FrameType::Pong) if body.len() == 8 && buf[pos + 1] == 0 => Some(Piece::Pong(nonce())),
            Some(FrameType::Report) if body.len() == 4 && buf[pos + 1] == 0 => {
                Some(Piece::Report(u32::from_be_bytes(body.try_into().expect("a 4-byte body"))))
            }
            _ => None,
        };
        match piece {
            Some(piece) => {
                if pos > 0 {
                    pieces.push(Piece::Frames(buf.split_to(pos).freeze()));
                }
                pieces.push(piece);
                let _ = buf.split_to(len);
                pos = 0;
            }
            None => pos += len,
        }
    }
    if pos > 0 {
        pieces.push(Piece::Frames(buf.split_to(pos).freeze()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Frame;

    fn frame(f: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        f.encode(&mut out).unwrap();
        out
    }

    #[test]
    fn whole_frames_pass_and_control_frames_are_taken_out_in_place() {
        let ping = frame(&Frame::Ping { nonce: 1 });
        let pong = frame(&Frame::Pong { nonce: 7 });
        let credit = frame(&Frame::Credit { stream_id: 1, received: 0, max_offset: 9 });
        let control = frame(&Frame::Control { body: &[9, 9] });
        let data = frame(&Frame::Data { stream_id: 1, offset: 0, data: b"abc" });
        let report = frame(&Frame::Report { loss_ppm: 250_000 });
        let mut buf = BytesMut::from(
            &[credit.clone(), ping, control, pong, report, data.clone(), data[..5].to_vec()].concat()[..],
        );
        let mut pieces = Vec::new();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(
            pieces,
            vec![
                Piece::Frames(credit.into()),
                Piece::Ping(1),
                Piece::Control(vec![9, 9]),
                Piece::Pong(7),
                Piece::Report(250_000),
                Piece::Frames(data.clone().into())
            ]
        );
        assert_eq!(buf, data[..5]);
        buf.extend_from_slice(&data[5..]);
        pieces.clear();
        take_frames(&mut buf, &mut pieces);
        assert_eq!(pieces, vec![Piece::Frames(data.into())]);
        assert!(buf.is_empty());
        pieces.clear();
        take_frames(&mut buf, &mut pieces);
        assert!(pieces.is_empty());
    }
}
