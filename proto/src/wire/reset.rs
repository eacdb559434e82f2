//! [`ResetCode`], the `code` field of RESET: why a stream was aborted.

use std::fmt;

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
