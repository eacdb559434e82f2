//! The quickest sign that a busy path has died: its bytes stop being acknowledged.

use super::TcpSample;
use crate::time::{Duration, Instant};

/// How long the bytes in flight on the relay socket have waited for an acknowledgement: a black hole
/// acknowledges nothing, and this says so long before silence would. Fed with TCP_INFO samples and
/// the time they were taken.
#[derive(Debug)]
pub struct AckStall {
    bytes_acked: u64,
    /// Since when the bytes in flight have waited: the last sample that saw the acknowledged count
    /// move or nothing in flight. An upper bound on the real wait, by one sampling tick.
    waiting_since: Instant,
    /// The relay socket's minimum retransmission timeout.
    rto_min: Duration,
}

/// How long a healthy peer may leave a lone segment unacknowledged: its kernel holds the ACK of a
/// segment that does not complete two full ones for up to 200 ms (Linux's TCP_DELACK_MAX) when it
/// has nothing to send back. Seen on CI: a healthy path declared dead after "1448 bytes
/// unacknowledged for 160 ms". Two or more full segments in flight are acknowledged at once, so a
/// busy path is still judged by `stall_after` alone, and so is a lone PING, which the peer answers
/// at once (see [`AckStall::dead`]).
pub const LONE_SEGMENT_WAIT: Duration = Duration::from_millis(200);

impl AckStall {
    pub fn new(now: Instant, rto_min: Duration) -> Self {
        AckStall { bytes_acked: 0, waiting_since: now, rto_min }
    }

    /// Whether the path is dead; returns how long its bytes waited.
    ///
    /// Bytes in flight that have waited at least `floor`, and longer than a lost segment takes to be
    /// repaired by the retransmission timer (the kernel's own last acknowledgement agreeing), are a
    /// stall; a lone segment in flight must also have waited [`LONE_SEGMENT_WAIT`] and a round trip,
    /// as it may be a delayed ACK.
    ///
    /// `probing`: our PING, sent after the last byte the peer sent us, is unanswered, and the peer has
    /// been silent this long. The peer answers a PING at once, and its PONG acknowledges the segment,
    /// so no delayed ACK is to be waited for; and the peer's silence began before the PING, so the
    /// floor counts from the silence. Only the repair of a lost PING (or PONG) is still waited for.
    /// This is a receiver's black hole: a download whose bytes stop.
    ///
    /// A path that loses packets is not dead: seen with 1 % loss at 10 Mbit/s, "14480 bytes
    /// unacknowledged for 129 ms" under an upload, a tail loss that the kernel would have repaired
    /// by its timer. That repair takes the timeout as Linux computes it, srtt + max(4 rttvar,
    /// rto_min), and a round trip (with its deviation) for the acknowledgement.
    pub fn dead(
        &mut self,
        info: &TcpSample,
        floor: Duration,
        probing: Option<Duration>,
        now: Instant,
    ) -> Option<Duration> {
        if info.unacked == 0 || info.bytes_acked != self.bytes_acked {
            self.bytes_acked = info.bytes_acked;
            self.waiting_since = now;
            return None;
        }
        let waited = now - self.waiting_since;
        let rto = info.rtt + (4 * info.rttvar).max(self.rto_min);
        let repair = rto + info.rtt + 4 * info.rttvar;
        // The kernel's clock of the last acknowledgement guards against a reader that was not
        // scheduled for a while and so saw no progress it would otherwise have seen.
        let stalled = |limit: Duration| waited >= limit && info.last_ack_recv >= limit;
        if probing.is_some_and(|silence| silence >= floor) && stalled(repair) {
            return Some(waited);
        }
        let mut limit = floor.max(repair);
        if info.unacked <= 1 {
            limit = limit.max(LONE_SEGMENT_WAIT + info.rtt);
        }
        stalled(limit).then_some(waited)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(unacked: u32, bytes_acked: u64, last_ack_ms: u64, rtt_ms: u64) -> TcpSample {
        TcpSample {
            unacked,
            snd_mss: 1448,
            last_ack_recv: Duration::from_millis(last_ack_ms),
            rtt: Duration::from_millis(rtt_ms),
            rttvar: Duration::from_millis(rtt_ms / 4),
            bytes_acked,
            ..TcpSample::default()
        }
    }

    fn ms(n: u64) -> Instant {
        Instant::from_millis(10_000 + n)
    }

    /// The relay socket's minimum retransmission timeout in these tests, as the daemon sets it.
    const RTO_MIN: Duration = Duration::from_millis(50);
    const FLOOR: Duration = Duration::from_millis(100);

    #[test]
    fn a_busy_path_is_dead_when_its_bytes_go_unacknowledged() {
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        // Acknowledgements keep coming: never dead, however long it runs.
        for i in 0..100u64 {
            assert_eq!(stall.dead(&info(10, i * 1000, 0, 1), FLOOR, None, ms(i * 10)), None);
        }
        // They stop (a black hole) at 990 ms; dead once 100 ms have passed, not before.
        assert_eq!(stall.dead(&info(10, 99_000, 50, 1), FLOOR, None, ms(1080)), None);
        assert_eq!(stall.dead(&info(10, 99_000, 100, 1), FLOOR, None, ms(1090)), Some(Duration::from_millis(100)));
    }

    #[test]
    fn a_loss_the_retransmission_timer_repairs_is_not_a_stall() {
        // A slow link under an upload: 25 ms round trip, 6 ms deviation. The tail of a burst is
        // lost and nothing is acknowledged until the timer resends it: after 25 + 50 ms, and its
        // acknowledgement a round trip later, at about 100 ms.
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        assert_eq!(stall.dead(&info(10, 0, 0, 25), FLOOR, None, ms(0)), None);
        assert_eq!(stall.dead(&info(10, 0, 120, 25), FLOOR, None, ms(120)), None);
        assert!(stall.dead(&info(10, 0, 124, 25), FLOOR, None, ms(124)).is_some(), "a black hole, past the repair");
        // Where the kernel keeps its 200 ms minimum, the repair takes 225 ms and its
        // acknowledgement: the 129 ms seen on such a link were no stall.
        let mut stall = AckStall::new(ms(0), Duration::from_millis(200));
        assert_eq!(stall.dead(&info(10, 0, 0, 25), FLOOR, None, ms(0)), None);
        assert_eq!(stall.dead(&info(10, 0, 129, 25), FLOOR, None, ms(129)), None);
        assert_eq!(stall.dead(&info(10, 0, 270, 25), FLOOR, None, ms(270)), None);
        assert!(stall.dead(&info(10, 0, 274, 25), FLOOR, None, ms(274)).is_some());
    }

    #[test]
    fn a_lone_segment_may_wait_for_a_delayed_ack() {
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        assert_eq!(stall.dead(&info(1, 0, 0, 1), FLOOR, None, ms(0)), None);
        assert_eq!(stall.dead(&info(1, 0, 160, 1), FLOOR, None, ms(160)), None, "a delayed ACK, not a stall");
        assert_eq!(stall.dead(&info(1, 0, 200, 1), FLOOR, None, ms(200)), None);
        assert_eq!(stall.dead(&info(1, 0, 201, 1), FLOOR, None, ms(201)), Some(Duration::from_millis(201)));
    }

    #[test]
    fn an_unanswered_ping_into_a_silence_needs_no_delayed_ack_allowance() {
        // A download stopped 33 ms ago and our PING went out then: it waits alone.
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        let silence = |at: u64| Some(Duration::from_millis(33 + at));
        assert_eq!(stall.dead(&info(1, 0, 0, 1), FLOOR, silence(0), ms(0)), None);
        // The repair of a lost PING (or PONG) is waited for.
        assert_eq!(stall.dead(&info(1, 0, 40, 1), FLOOR, silence(40), ms(40)), None);
        // Past the floor of silence and the repair: dead, 167 ms before a lone segment would be.
        assert_eq!(stall.dead(&info(1, 0, 66, 1), FLOOR, silence(66), ms(66)), None, "67 ms of silence is not 100");
        assert_eq!(stall.dead(&info(1, 0, 67, 1), FLOOR, silence(67), ms(67)), Some(Duration::from_millis(67)));
        // On a long path the repair is the longer wait: 50 ms round trip, 12 ms deviation.
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        assert_eq!(stall.dead(&info(1, 0, 0, 50), FLOOR, silence(0), ms(0)), None);
        assert_eq!(stall.dead(&info(1, 0, 195, 50), FLOOR, silence(195), ms(195)), None);
        assert!(stall.dead(&info(1, 0, 200, 50), FLOOR, silence(200), ms(200)).is_some());
        // The PING was answered (its segment acknowledged): the wait starts again.
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        assert_eq!(stall.dead(&info(1, 0, 0, 1), FLOOR, silence(0), ms(0)), None);
        assert_eq!(stall.dead(&info(1, 1448, 0, 1), FLOOR, silence(80), ms(80)), None);
        assert_eq!(stall.dead(&info(1, 1448, 50, 1), FLOOR, silence(130), ms(130)), None);
    }

    #[test]
    fn an_idle_path_or_a_slow_one_is_not_stalled() {
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        // Nothing in flight for 5 s, then a burst: the wait starts with the burst, although the
        // kernel's last acknowledgement is 5 s old.
        assert_eq!(stall.dead(&info(0, 500, 5000, 1), FLOOR, None, ms(5000)), None);
        assert_eq!(stall.dead(&info(4, 500, 5010, 1), FLOOR, None, ms(5010)), None);
        assert_eq!(stall.dead(&info(4, 500, 5090, 1), FLOOR, None, ms(5090)), None);
        assert!(stall.dead(&info(4, 500, 5100, 1), FLOOR, None, ms(5100)).is_some());
        // A 200 ms round trip (deviation 50 ms): the retransmission timer (200 + 4 x 50 ms) and a
        // round trip with four deviations (200 + 200 ms) before a stall counts.
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        assert_eq!(stall.dead(&info(4, 0, 0, 200), FLOOR, None, ms(0)), None);
        assert_eq!(stall.dead(&info(4, 0, 790, 200), FLOOR, None, ms(790)), None);
        assert!(stall.dead(&info(4, 0, 800, 200), FLOOR, None, ms(800)).is_some());
        // The reader was not scheduled and saw no progress, but the kernel got an ACK 5 ms ago.
        let mut stall = AckStall::new(ms(0), RTO_MIN);
        assert_eq!(stall.dead(&info(4, 0, 0, 1), FLOOR, None, ms(0)), None);
        assert_eq!(stall.dead(&info(4, 0, 5, 1), FLOOR, None, ms(300)), None);
    }
}
