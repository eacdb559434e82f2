//! One direction of an emulated link, sans-IO: frames go in with `handle_frame(frame, len, now)`,
//! come out with `poll_transmit(now)`, and `poll_timeout()` says when the next one is due. No socket
//! and no clock in here: the shell passes `now` in, the tests jump it forward.
//!
//! The model is a real link's: a frame first waits in the sender's queue (a budget in bytes;
//! drop-tail when it would overflow), is then serialised onto the wire at the link rate (the queue
//! drains at exactly that rate, counting every byte of the frame), may be lost on the wire (a seeded
//! draw, so a run replays; a lost frame still used its airtime), and arrives one propagation delay
//! after its last bit left. Serialisation times are kept in virtual time with the remainder of each
//! division carried, so a long run keeps the configured rate to the nanosecond whatever the wake-up
//! jitter of the shell.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand_core::{Rng, SeedableRng};
use rand_xorshift::XorShiftRng;

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// What one direction of the link does to the frames that cross it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay, added after a frame's last bit is on the wire.
    pub delay: Duration,
    /// Link rate in bits per second, every byte of a frame counted; `None` is an infinitely fast
    /// wire (no serialisation time, so the queue never fills).
    pub rate_bps: Option<u64>,
    /// The queue in front of the wire, in bytes (the frame being serialised counts for the part not
    /// yet sent). A frame that would overflow it is dropped (drop-tail).
    pub queue_bytes: u64,
    /// Probability in [0, 1] that a frame that entered the wire is lost on it.
    pub loss: f64,
    /// Seed of the loss draws: the same seed and the same frames drop the same frames.
    pub seed: u64,
    /// Bound on the frames held (queued and in flight), whatever the rate and delay: beyond it a
    /// frame is dropped as a queue drop.
    pub max_frames: usize,
}

/// Why a [`LinkConfig`] cannot be used.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    /// The loss probability is not a number in [0, 1].
    #[error("loss probability {0} is not in [0, 1]")]
    Loss(f64),
    /// A rate of zero bits per second would never send anything (use `None` for no limit).
    #[error("a rate of 0 bit/s would never send a frame")]
    ZeroRate,
    /// The frame bound is zero: nothing could cross.
    #[error("max_frames is 0: no frame could cross")]
    ZeroFrames,
}

/// Why a frame given to [`Link::handle_frame`] will not come out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The queue (or the frame bound) had no room for it.
    Queue,
    /// The loss draw lost it on the wire.
    Loss,
}

/// A frame the link dropped, handed back so that its buffer can be reused.
#[derive(Debug)]
pub struct Dropped<F> {
    pub reason: DropReason,
    pub frame: F,
}

/// What the link has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames handed to `handle_frame`.
    pub received: u64,
    /// Frames handed out by `poll_transmit`, and their bytes.
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Frames dropped because the queue was full.
    pub dropped_queue: u64,
    /// Frames lost on the wire.
    pub dropped_loss: u64,
}

/// One direction of an emulated link; `F` is whatever the shell keeps a frame in.
#[derive(Debug)]
pub struct Link<F> {
    config: LinkConfig,
    rng: XorShiftRng,
    /// Loss draws below this value lose the frame (`loss * 2^64`, saturated).
    loss_threshold: u64,
    /// When the wire is free again: the end of the last accepted frame's serialisation.
    wire_free_at: Option<Instant>,
    /// The part of a nanosecond (in units of 1 / rate_bps ns) the last serialisation time was cut.
    wire_remainder: u128,
    /// Frames in the queue or in flight, in the order (and so at the times) they arrive.
    line: VecDeque<(Instant, usize, F)>,
    stats: LinkStats,
}

impl<F> Link<F> {
    pub fn new(config: LinkConfig) -> Result<Self, ConfigError> {
        if !(0.0..=1.0).contains(&config.loss) {
            return Err(ConfigError::Loss(config.loss));
        }
        if config.rate_bps == Some(0) {
            return Err(ConfigError::ZeroRate);
        }
        if config.max_frames == 0 {
            return Err(ConfigError::ZeroFrames);
        }
        // 2^64 * loss, as an exact comparison bound for a uniform u64 (1.0 saturates to u64::MAX,
        // which loses all but one draw in 2^64).
        let loss_threshold = (config.loss * 18_446_744_073_709_551_616.0) as u64;
        Ok(Link {
            rng: XorShiftRng::seed_from_u64(config.seed),
            loss_threshold,
            wire_free_at: None,
            wire_remainder: 0,
            line: VecDeque::new(),
            stats: LinkStats::default(),
            config,
        })
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    pub fn stats(&self) -> LinkStats {
        self.stats
    }

    /// Frames queued or in flight.
    pub fn held(&self) -> usize {
        self.line.len()
    }

    /// Bytes in the queue at `now`: what the wire has yet to send of the frames accepted.
    pub fn queued_bytes(&self, now: Instant) -> u64 {
        match (self.wire_free_at, self.config.rate_bps) {
            (Some(free), Some(rate)) if free > now => {
                let nanos = (free - now).as_nanos();
                (nanos * u128::from(rate) / 8 / NANOS_PER_SEC) as u64
            }
            _ => 0,
        }
    }

    /// A frame of `len` bytes (everything that goes on the wire) arrives at `now`. It is either
    /// accepted (it will come out of `poll_transmit`) or handed back with the reason.
    pub fn handle_frame(&mut self, frame: F, len: usize, now: Instant) -> Result<(), Dropped<F>> {
        self.stats.received += 1;
        // Without a rate the wire takes every frame at once: only the frame bound applies.
        let queue_full =
            self.config.rate_bps.is_some() && self.queued_bytes(now) + len as u64 > self.config.queue_bytes;
        if queue_full || self.line.len() >= self.config.max_frames {
            self.stats.dropped_queue += 1;
            return Err(Dropped { reason: DropReason::Queue, frame });
        }
        let sent_at = self.serialise(len, now);
        // One draw per frame that reaches the wire: the same frames through the same queue meet
        // the same fate.
        if self.rng.next_u64() < self.loss_threshold {
            self.stats.dropped_loss += 1;
            return Err(Dropped { reason: DropReason::Loss, frame });
        }
        self.line.push_back((sent_at + self.config.delay, len, frame));
        Ok(())
    }

    /// Puts `len` bytes on the wire after what is already there; returns when its last bit leaves.
    fn serialise(&mut self, len: usize, now: Instant) -> Instant {
        let Some(rate) = self.config.rate_bps else {
            return now;
        };
        let start = match self.wire_free_at {
            Some(free) if free > now => free,
            _ => {
                // The wire was idle: nothing of the last frame's cut nanosecond is owed.
                self.wire_remainder = 0;
                now
            }
        };
        // len * 8 bits at `rate` bit/s, in ns, with the cut part carried to the next frame.
        let scaled = len as u128 * 8 * NANOS_PER_SEC + self.wire_remainder;
        let nanos = scaled / u128::from(rate);
        self.wire_remainder = scaled % u128::from(rate);
        let done = start + Duration::from_nanos(nanos as u64);
        self.wire_free_at = Some(done);
        done
    }

    /// The next frame due at `now`, if any, in arrival order.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<F> {
        match self.line.front() {
            Some((due, _, _)) if *due <= now => {
                let (_, len, frame) = self.line.pop_front()?;
                self.stats.forwarded += 1;
                self.stats.forwarded_bytes += len as u64;
                Some(frame)
            }
            _ => None,
        }
    }

    /// When the next frame is due (`None`: nothing held, wait for a frame).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.line.front().map(|(due, _, _)| *due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LinkConfig {
        LinkConfig {
            delay: Duration::ZERO,
            rate_bps: None,
            queue_bytes: u64::MAX,
            loss: 0.0,
            seed: 1,
            max_frames: 1 << 20,
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_frame_leaves_exactly_after_the_delay() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig { delay: ms(25), ..config() }).unwrap();
        link.handle_frame("a", 1500, t0).unwrap();
        assert_eq!(link.poll_timeout(), Some(t0 + ms(25)));
        assert_eq!(link.poll_transmit(t0 + ms(25) - Duration::from_nanos(1)), None);
        assert_eq!(link.poll_transmit(t0 + ms(25)), Some("a"));
        assert_eq!(link.poll_timeout(), None);
        assert_eq!(link.stats().forwarded, 1);
        assert_eq!(link.stats().forwarded_bytes, 1500);
    }

    #[test]
    fn with_a_rate_a_frame_leaves_after_its_serialisation_and_the_delay() {
        let t0 = Instant::now();
        // 1250 bytes at 10 Mbit/s: 1 ms on the wire.
        let mut link = Link::new(LinkConfig { delay: ms(10), rate_bps: Some(10_000_000), ..config() }).unwrap();
        link.handle_frame(1, 1250, t0).unwrap();
        assert_eq!(link.poll_timeout(), Some(t0 + ms(11)));
    }

    #[test]
    fn a_burst_beyond_the_rate_is_spread_at_the_rate() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig { delay: ms(5), rate_bps: Some(10_000_000), ..config() }).unwrap();
        for i in 0..100 {
            link.handle_frame(i, 1250, t0).unwrap();
        }
        // Frame i's last bit leaves at (i + 1) ms and arrives 5 ms later, never earlier.
        let mut out = Vec::new();
        let mut now = t0;
        while let Some(due) = link.poll_timeout() {
            now = due;
            while let Some(i) = link.poll_transmit(now) {
                out.push((i, now - t0));
            }
        }
        assert_eq!(out.len(), 100);
        for (i, at) in out {
            assert_eq!(at, ms(5 + i as u64 + 1), "frame {i}");
        }
        assert_eq!(now - t0, ms(105));
    }

    #[test]
    fn the_rate_holds_over_many_frames_despite_rounding() {
        let t0 = Instant::now();
        // 1514 bytes at 200 Mbit/s is 60.56 µs: not a whole number of nanoseconds... 3 frames
        // are 181.68 µs. Over 10 000 frames the last one must end within a nanosecond of the exact time.
        let mut link = Link::new(LinkConfig { rate_bps: Some(200_000_000), ..config() }).unwrap();
        let rate = 200_000_000u128;
        for i in 0..10_000u128 {
            link.handle_frame((), 1514, t0).unwrap();
            let exact = (i + 1) * 1514 * 8 * NANOS_PER_SEC / rate;
            let due = link.line.back().unwrap().0 - t0;
            assert_eq!(due.as_nanos(), exact);
        }
    }

    #[test]
    fn an_idle_wire_starts_afresh() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig { rate_bps: Some(10_000_000), ..config() }).unwrap();
        link.handle_frame(1, 1250, t0).unwrap();
        // Long after the first left, a second one is not sent "in the past".
        link.handle_frame(2, 1250, t0 + ms(50)).unwrap();
        assert_eq!(link.poll_transmit(t0 + ms(1)), Some(1));
        assert_eq!(link.poll_timeout(), Some(t0 + ms(51)));
    }

    #[test]
    fn the_queue_bound_drops_and_counts() {
        let t0 = Instant::now();
        // 1000-byte frames at 8 Mbit/s (1 ms each), a 5000-byte queue: of a burst of 10, the first five
        // fit (the one on the wire counts until sent), the other five are dropped.
        let mut link = Link::new(LinkConfig { rate_bps: Some(8_000_000), queue_bytes: 5000, ..config() }).unwrap();
        let mut dropped = Vec::new();
        for i in 0..10 {
            if let Err(d) = link.handle_frame(i, 1000, t0) {
                assert_eq!(d.reason, DropReason::Queue);
                dropped.push(d.frame);
            }
        }
        assert_eq!(dropped, vec![5, 6, 7, 8, 9]);
        assert_eq!(link.stats().dropped_queue, 5);
        assert_eq!(link.queued_bytes(t0), 5000);
        // 2 ms later two frames have left the queue: there is room for two more, not three.
        let t2 = t0 + ms(2);
        assert_eq!(link.queued_bytes(t2), 3000);
        assert!(link.handle_frame(10, 1000, t2).is_ok());
        assert!(link.handle_frame(11, 1000, t2).is_ok());
        assert!(link.handle_frame(12, 1000, t2).is_err());
        assert_eq!(link.stats().dropped_queue, 6);
        assert_eq!(link.stats().received, 13);
    }

    #[test]
    fn the_frame_bound_holds_without_a_rate() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig { delay: ms(100), max_frames: 3, ..config() }).unwrap();
        for i in 0..5 {
            let _ = link.handle_frame(i, 100, t0);
        }
        assert_eq!(link.held(), 3);
        assert_eq!(link.stats().dropped_queue, 2);
    }

    fn lost_of(seed: u64, loss: f64, n: usize) -> Vec<usize> {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig { loss, seed, ..config() }).unwrap();
        let mut lost = Vec::new();
        for i in 0..n {
            if let Err(d) = link.handle_frame(i, 100, t0) {
                assert_eq!(d.reason, DropReason::Loss);
                lost.push(d.frame);
            }
        }
        assert_eq!(link.stats().dropped_loss, lost.len() as u64);
        assert_eq!(link.held() + lost.len(), n);
        lost
    }

    #[test]
    fn loss_with_a_seed_is_within_tolerance_and_replays() {
        // 100 000 draws at p = 0.05: sd = sqrt(n p (1 - p)) ≈ 69; ±300 is over 4 sd.
        for seed in [1, 2, 3, 0xdead_beef] {
            let lost = lost_of(seed, 0.05, 100_000);
            assert!((4700..=5300).contains(&lost.len()), "seed {seed}: {} lost", lost.len());
            assert_eq!(lost, lost_of(seed, 0.05, 100_000), "seed {seed} does not replay");
        }
        assert_ne!(lost_of(1, 0.05, 10_000), lost_of(2, 0.05, 10_000));
    }

    #[test]
    fn no_loss_loses_nothing_and_full_loss_loses_everything() {
        assert!(lost_of(7, 0.0, 10_000).is_empty());
        assert_eq!(lost_of(7, 1.0, 10_000).len(), 10_000);
    }

    #[test]
    fn a_lost_frame_still_used_its_airtime() {
        let t0 = Instant::now();
        let mut link = Link::new(LinkConfig { rate_bps: Some(10_000_000), loss: 1.0, ..config() }).unwrap();
        assert!(link.handle_frame(1, 1250, t0).is_err());
        assert_eq!(link.queued_bytes(t0), 1250);
    }

    #[test]
    fn bad_configs_are_refused() {
        assert_eq!(Link::<()>::new(LinkConfig { loss: 1.5, ..config() }).unwrap_err(), ConfigError::Loss(1.5));
        assert_eq!(
            Link::<()>::new(LinkConfig { loss: f64::NAN, ..config() }).unwrap_err().to_string(),
            "loss probability NaN is not in [0, 1]"
        );
        assert_eq!(Link::<()>::new(LinkConfig { rate_bps: Some(0), ..config() }).unwrap_err(), ConfigError::ZeroRate);
        assert_eq!(Link::<()>::new(LinkConfig { max_frames: 0, ..config() }).unwrap_err(), ConfigError::ZeroFrames);
    }
}
