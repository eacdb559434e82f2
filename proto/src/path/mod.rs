//! Path liveness: the spec's Check activity on one path, sans-IO.
//!
//! The daemon's reader task feeds a [`PathMonitor`] what it sees (bytes arriving, PONGs, the relay
//! socket's TCP_INFO as a [`TcpSample`], the time) and does what it answers: send a PING, hand the
//! path's statistics to the core, or end the path for a typed [`PathLoss`]. The rules that tell a
//! dead path from a slow or lossy one live here, tested on injected time.

mod loss;
mod monitor;
mod pieces;
mod rate;
mod stall;

pub use loss::LossMeter;
pub use monitor::{Liveness, PathEvent, PathLoss, PathMonitor, STALL_TICK};
pub use pieces::{take_frames, Piece};
pub use rate::{RateWindow, PACE_SAMPLES};
pub use stall::{AckStall, LONE_SEGMENT_WAIT};

use crate::time::Duration;

/// The fields of the kernel's `struct tcp_info` the Check activity uses, as the daemon read them
/// off the relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpSample {
    /// Segments sent and not yet acknowledged (`tcpi_unacked`).
    pub unacked: u32,
    pub snd_mss: u32,
    /// Since the last acknowledgement arrived (`tcpi_last_ack_recv`, jiffies-coarse).
    pub last_ack_recv: Duration,
    pub rtt: Duration,
    pub rttvar: Duration,
    pub total_retrans: u32,
    /// Bytes the peer has acknowledged so far (`tcpi_bytes_acked`).
    pub bytes_acked: u64,
    /// Bytes received so far (`tcpi_bytes_received`).
    pub bytes_received: u64,
    /// Segments sent that carried data (`tcpi_data_segs_out`, Linux 4.6; before it, all segments).
    /// Pure ACKs must not count: a relay socket that mostly receives sends an ACK for every other
    /// segment, and they would dilute its retransmission rate towards zero on a lossy path.
    pub data_segs_out: u32,
    /// The kernel's latest delivery-rate sample, bytes/s (`tcpi_delivery_rate`), unless the sender
    /// was application-limited when it was taken (then it says nothing of the link's capacity).
    pub delivery_rate: Option<u64>,
}

impl TcpSample {
    pub fn unacked_bytes(&self) -> u64 {
        u64::from(self.unacked) * u64::from(self.snd_mss)
    }
}
