//! One path's Check activity: probes, silence, stalls and statistics.

use std::collections::VecDeque;

use super::{AckStall, LossMeter, RateWindow, TcpSample};
use crate::relay::core::PathSample;
use crate::time::{Duration, Instant};

/// How a path is watched: each side PINGs when it has sent nothing for `probe_interval`, the PONG
/// gives the round trip, and a path that receives nothing at all (data, PING or PONG) for
/// `dead_after` is dead. Under traffic there is a quicker sign: bytes sent and not acknowledged by
/// the peer's kernel for `stall_after`, and for longer than the kernel's retransmission timer takes
/// to repair a lost segment ([`AckStall`]), so that neither a slow link nor a lossy one is mistaken
/// for a dead one.
///
/// A standby path (warm, carrying no stream) is probed every `standby_probe_interval` instead, so
/// that a metered uplink pays little for being ready, and is declared dead by silence only after
/// three of those; the stall check still catches a black hole at its next PING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    pub dead_after: Duration,
    pub probe_interval: Duration,
    pub stall_after: Duration,
    pub standby_probe_interval: Duration,
}

impl Liveness {
    /// A PING goes out after this long without writing.
    pub fn probe_interval(&self, standby: bool) -> Duration {
        if standby {
            self.standby_probe_interval
        } else {
            self.probe_interval
        }
    }

    /// Silence this long and the path is dead.
    pub fn dead_after(&self, standby: bool) -> Duration {
        if standby {
            self.dead_after.max(3 * self.standby_probe_interval)
        } else {
            self.dead_after
        }
    }

    /// How often the monitor looks at the path: often enough to decide a stall within a tick of
    /// `stall_after`, when the stall check is the quicker one.
    fn tick(&self) -> Duration {
        let every = self.stats_every();
        if self.stall_after < self.dead_after {
            STALL_TICK.min(every)
        } else {
            every
        }
    }

    /// How often the path's statistics go to the core.
    fn stats_every(&self) -> Duration {
        self.probe_interval.min(self.dead_after / 4)
    }
}

/// How often the monitor looks at the relay socket's acknowledgements when the stall check is on:
/// small against `stall_after`; one getsockopt per tick.
pub const STALL_TICK: Duration = Duration::from_millis(10);

/// Why a path was lost. The monitor decides the first three; the daemon reports the others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathLoss {
    #[error("nothing received for {} ms", .after.total_millis())]
    Silent { after: Duration },
    #[error("{bytes} bytes unacknowledged for {} ms", .waited.total_millis())]
    Unacknowledged { bytes: u64, waited: Duration },
    #[error("a PING went unanswered for {} ms after {} ms of silence", .waited.total_millis(), .silence.total_millis())]
    ProbeUnanswered { waited: Duration, silence: Duration },
    #[error("the peer closed the connection")]
    PeerClosed,
    #[error("read failed: {0}")]
    ReadFailed(String),
    #[error("write failed: {0}")]
    WriteFailed(String),
    #[error("its writer stopped")]
    WriterStopped,
    /// The relay socket stayed full (the peer acknowledges nothing: it does not read, or the way is
    /// gone) for this long.
    #[error("nothing could be written for {} ms: the peer does not read", .after.total_millis())]
    Unwritable { after: Duration },
    #[error("{uplink} is down")]
    UplinkDown { uplink: String },
    #[error("{uplink} lost {address}")]
    AddressLost { uplink: String, address: std::net::IpAddr },
    #[error("its interface is gone or lost the address")]
    InterfaceGone,
    /// The peer sends but does not read what we queue for it (`Engine`'s queue limit).
    #[error("the peer does not read: {queued} bytes queued towards it (limit {limit})")]
    NotReading { queued: usize, limit: usize },
}

/// What the monitor asks of the reader.
#[derive(Debug, Clone, PartialEq)]
pub enum PathEvent {
    /// Put a PING with this nonce into the path's writer queue now, and say whether it went
    /// ([`PathMonitor::ping_queued`]).
    SendPing { nonce: u64 },
    /// A PONG came back after this round trip.
    Rtt(Duration),
    /// The relay socket's statistics, for the core and the link manager.
    Stats(PathSample),
    /// The path is lost: end it. The monitor says nothing more.
    Lost(PathLoss),
}

/// The Check activity of one path, fed by the path's reader. See the module documentation.
#[derive(Debug)]
pub struct PathMonitor {
    liveness: Liveness,
    standby: bool,
    /// When the last byte arrived (or the reader last finished handing bytes over: time spent
    /// waiting for the engine is not silence on the path).
    last_rx: Instant,
    /// Whether bytes were arriving back to back before the current silence.
    busy: bool,
    /// When our PING into the current silence was queued; `None` until one is, and again once a
    /// byte arrives.
    probe: Option<Instant>,
    next_tick: Instant,
    last_stats: Instant,
    stall: AckStall,
    loss: LossMeter,
    rate: RateWindow,
    events: VecDeque<PathEvent>,
    lost: bool,
}

impl PathMonitor {
    /// `rto_min`: the relay socket's minimum retransmission timeout.
    pub fn new(liveness: Liveness, rto_min: Duration, now: Instant) -> Self {
        PathMonitor {
            liveness,
            standby: false,
            last_rx: now,
            busy: false,
            probe: None,
            next_tick: now + liveness.tick(),
            last_stats: now,
            stall: AckStall::new(now, rto_min),
            loss: LossMeter::default(),
            rate: RateWindow::default(),
            events: VecDeque::new(),
            lost: false,
        }
    }

    /// Bytes arrived from the peer.
    pub fn on_bytes(&mut self, now: Instant) {
        self.busy = now - self.last_rx < self.liveness.stall_after / 3;
        self.last_rx = now;
        self.probe = None;
    }

    /// The reader finished handing what it read to the engine, which may have kept it waiting.
    pub fn on_delivered(&mut self, now: Instant) {
        self.last_rx = self.last_rx.max(now);
    }

    /// A PONG with `nonce` arrived (its bytes were already counted by [`PathMonitor::on_bytes`]).
    pub fn on_pong(&mut self, nonce: u64, now: Instant) {
        if let Some(rtt) = now.total_micros().checked_sub(nonce) {
            self.events.push_back(PathEvent::Rtt(Duration::from_micros(rtt)));
        }
    }

    /// The PING of [`PathEvent::SendPing`] went into the writer queue (`false`: the queue was
    /// full; the next tick asks again).
    pub fn ping_queued(&mut self, queued: bool, now: Instant) {
        if queued && self.probe.is_none() {
            self.probe = Some(now);
        }
    }

    /// The core made the path a standby one, or called it to work. Called to work (a switch, a
    /// resumption), it is judged by the busy pace from now on, not by the standby pace's silence
    /// behind it, and the peer is shown at once that it lives (the PING also gives the stall check
    /// something to time).
    pub fn set_standby(&mut self, standby: bool, now: Instant) {
        if self.standby && !standby {
            self.last_rx = now;
            self.probe = None;
            self.ping(now);
        }
        self.standby = standby;
    }

    /// When [`PathMonitor::handle_tick`] must run next, with a fresh TCP_INFO sample.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.lost).then_some(self.next_tick)
    }

    /// The periodic look at the path: silence, the unanswered probe, the relay socket's
    /// acknowledgements (`tcp`: its TCP_INFO now, `None` if it could not be read), statistics.
    pub fn handle_tick(&mut self, tcp: Option<&TcpSample>, now: Instant) {
        if self.lost {
            return;
        }
        self.next_tick = now + self.liveness.tick();
        let dead_after = self.liveness.dead_after(self.standby);
        let silence = now - self.last_rx;
        if silence >= dead_after {
            return self.lose(PathLoss::Silent { after: dead_after });
        }
        if self.busy && self.probe.is_none() && silence >= self.liveness.stall_after / 3 {
            // Bytes were pouring in and have stopped. A receiver has nothing in flight for the stall
            // check to time, so put a PING in flight now instead of waiting for the writer's next
            // probe: its answer, or its lack, tells a pause of the sender from a black hole.
            self.ping(now);
        }
        let Some(tcp) = tcp else { return };
        let floor = self.liveness.stall_after.min(dead_after);
        let probing = self.probe.map(|_| silence);
        if let Some(waited) = self.stall.dead(tcp, floor, probing, now) {
            return self.lose(match self.probe {
                Some(_) if tcp.unacked <= 1 => PathLoss::ProbeUnanswered { waited, silence },
                _ => PathLoss::Unacknowledged { bytes: tcp.unacked_bytes(), waited },
            });
        }
        if now - self.last_stats >= self.liveness.stats_every() {
            self.last_stats = now;
            let pace = self.rate.update(tcp.delivery_rate);
            self.events.push_back(PathEvent::Stats(PathSample {
                tcp_rtt: tcp.rtt,
                jitter: tcp.rttvar,
                loss: self.loss.update(tcp),
                bytes: tcp.bytes_acked.saturating_add(tcp.bytes_received),
                delivery_rate: tcp.delivery_rate,
                pace,
            }));
        }
    }

    /// What the reader must do next.
    pub fn poll_event(&mut self) -> Option<PathEvent> {
        self.events.pop_front()
    }

    fn ping(&mut self, now: Instant) {
        self.events.push_back(PathEvent::SendPing { nonce: now.total_micros() });
    }

    fn lose(&mut self, why: PathLoss) {
        self.lost = true;
        self.events.push_back(PathEvent::Lost(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemon's defaults.
    const LIVENESS: Liveness = Liveness {
        dead_after: Duration::from_millis(3000),
        probe_interval: Duration::from_millis(500),
        stall_after: Duration::from_millis(100),
        standby_probe_interval: Duration::from_millis(5000),
    };
    const RTO_MIN: Duration = Duration::from_millis(50);

    /// A receiving relay socket on a veth-like path (1 ms round trip), driven tick by tick.
    struct Receiver {
        monitor: PathMonitor,
        now: Instant,
        tcp: TcpSample,
        /// When our PING, if one is in flight, reaches the peer's kernel and its PONG comes back
        /// (`None`: it never does, a black hole).
        pong_at: Option<Instant>,
        pong_delay: Option<Duration>,
        lost: Option<(Instant, PathLoss)>,
        pings: u32,
    }

    impl Receiver {
        fn new(pong_delay: Option<Duration>) -> Self {
            let now = Instant::from_secs(100);
            Receiver {
                monitor: PathMonitor::new(LIVENESS, RTO_MIN, now),
                now,
                tcp: TcpSample { snd_mss: 1448, rtt: Duration::from_millis(1), ..TcpSample::default() },
                pong_at: None,
                pong_delay,
                lost: None,
                pings: 0,
            }
        }

        /// Runs until `until`, with a download's bytes arriving every `gap` until `stop`.
        fn run(&mut self, gap: Duration, stop: Instant, until: Instant) {
            let mut next_byte = self.now;
            while self.now < until && self.lost.is_none() {
                let tick = self.monitor.poll_timeout().expect("a live path has a tick");
                let at = [tick, next_byte, self.pong_at.unwrap_or(until)].into_iter().min().unwrap().min(until);
                self.advance(at);
                if self.now == next_byte && self.now < stop {
                    self.monitor.on_bytes(self.now);
                    next_byte = self.now + gap;
                } else if self.now >= stop {
                    next_byte = until;
                }
                if Some(self.now) == self.pong_at {
                    // The PONG acknowledges the PING's segment and brings a round trip.
                    self.pong_at = None;
                    self.tcp.unacked = 0;
                    self.tcp.bytes_acked += 30;
                    self.tcp.last_ack_recv = Duration::ZERO;
                    self.monitor.on_bytes(self.now);
                }
                if self.now == tick {
                    let tcp = self.tcp;
                    self.monitor.handle_tick(Some(&tcp), self.now);
                }
                self.events();
            }
        }

        fn advance(&mut self, to: Instant) {
            self.tcp.last_ack_recv += to - self.now;
            self.now = to;
        }

        fn events(&mut self) {
            while let Some(event) = self.monitor.poll_event() {
                match event {
                    PathEvent::SendPing { .. } => {
                        self.pings += 1;
                        self.monitor.ping_queued(true, self.now);
                        self.tcp.unacked = 1;
                        self.pong_at = self.pong_delay.map(|d| self.now + d);
                    }
                    PathEvent::Lost(why) => self.lost = Some((self.now, why)),
                    PathEvent::Rtt(_) | PathEvent::Stats(_) => {}
                }
            }
        }
    }

    #[test]
    fn a_paced_download_into_a_black_hole_is_lost_within_stall_after_and_a_tick() {
        let mut rx = Receiver::new(None);
        let stop = rx.now + Duration::from_secs(2);
        // 2 MB/s in 16 KiB reads: a read every 8 ms.
        rx.run(Duration::from_millis(8), stop, stop + Duration::from_secs(5));
        let (at, why) = rx.lost.clone().expect("the black hole is noticed");
        let after = at - stop;
        assert!(matches!(why, PathLoss::ProbeUnanswered { .. }), "{why}");
        assert!(after >= LIVENESS.stall_after, "lost after {after} of silence");
        assert!(after <= LIVENESS.stall_after + 2 * STALL_TICK, "lost only after {after} of silence ({why})");
        assert_eq!(rx.pings, 1);
    }

    #[test]
    fn a_download_that_pauses_on_a_healthy_path_is_not_lost() {
        // The peer answers the PING a round trip later; then its own PINGs keep the path alive.
        let mut rx = Receiver::new(Some(Duration::from_millis(1)));
        let stop = rx.now + Duration::from_secs(1);
        rx.run(Duration::from_millis(8), stop, stop + Duration::from_millis(400));
        assert_eq!(rx.lost, None);
        assert_eq!(rx.pings, 1, "one PING into the silence, not one per tick");
    }

    #[test]
    fn a_lost_ping_repaired_by_the_retransmission_timer_is_not_a_black_hole() {
        // 1 % loss took the PING: the kernel resends it after its timeout (1 ms + 50 ms), and the
        // PONG follows a round trip later; the download resumes behind it.
        let mut rx = Receiver::new(Some(Duration::from_millis(53)));
        let stop = rx.now + Duration::from_secs(1);
        rx.run(Duration::from_millis(8), stop, stop + Duration::from_millis(95));
        assert_eq!(rx.lost, None);
        let resume = rx.now;
        rx.run(Duration::from_millis(8), resume + Duration::from_secs(1), resume + Duration::from_secs(1));
        assert_eq!(rx.lost, None);
    }

    #[test]
    fn an_idle_path_lives_on_its_peers_pings_and_dies_of_silence() {
        let mut rx = Receiver::new(Some(Duration::from_millis(1)));
        // The peer PINGs every probe interval: it lives, and no PING of ours goes into those gaps
        // (but the one after its first, which came right after the path was set up).
        let until = rx.now + Duration::from_secs(10);
        rx.run(LIVENESS.probe_interval, until, until);
        assert_eq!(rx.lost, None);
        assert!(rx.pings <= 1, "an idle path is probed by its writer, not into every gap: {} PINGs", rx.pings);
        // Then nothing, not even an answer: dead after dead_after.
        rx.pong_delay = None;
        let from = rx.now;
        rx.run(LIVENESS.probe_interval, from, from + Duration::from_secs(5));
        let (at, why) = rx.lost.clone().expect("silence kills");
        assert_eq!(why, PathLoss::Silent { after: LIVENESS.dead_after });
        // The silence began with the peer's last PING, at most a probe interval before `from`.
        let waited = at - from;
        assert!(waited + LIVENESS.probe_interval >= LIVENESS.dead_after, "dead after {waited}");
        assert!(waited <= LIVENESS.dead_after + STALL_TICK, "dead only after {waited}");
    }

    #[test]
    fn a_standby_path_called_to_work_pings_at_once_and_is_judged_at_the_busy_pace() {
        let now = Instant::from_secs(100);
        let mut m = PathMonitor::new(LIVENESS, RTO_MIN, now);
        m.set_standby(true, now);
        assert_eq!(m.poll_event(), None);
        // Ten seconds of standby silence (under its 15 s), then called to work.
        let later = now + Duration::from_secs(10);
        m.handle_tick(None, later);
        assert_eq!(m.poll_event(), None, "a standby path may be silent for three of its probes");
        m.set_standby(false, later);
        assert_eq!(m.poll_event(), Some(PathEvent::SendPing { nonce: later.total_micros() }));
        m.ping_queued(true, later);
        m.handle_tick(None, later + Duration::from_millis(10));
        assert_eq!(m.poll_event(), None, "the standby silence before it does not count");
        m.on_bytes(later + Duration::from_millis(11));
        m.on_pong(later.total_micros(), later + Duration::from_millis(11));
        assert_eq!(m.poll_event(), Some(PathEvent::Rtt(Duration::from_millis(11))));
    }
}
