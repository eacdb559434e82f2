//! The protocol's one time type: microseconds on a clock the caller owns.
//!
//! Nothing in this crate reads a clock. The daemon passes `now` in from its own clock (one that
//! counts suspended time, so a laptop that slept sees its timers as expired); tests pass in whatever
//! time they like and jump straight to the next deadline. The stack crate below speaks smoltcp's time;
//! the conversions to it live here, at the one place where the two meet.

use std::fmt;
use std::ops::{Add, AddAssign, Div, Mul, Sub, SubAssign};

/// A point in time: microseconds since an origin the caller chose (the daemon's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    micros: u64,
}

/// A span of time in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    micros: u64,
}

impl Instant {
    pub const ZERO: Instant = Instant { micros: 0 };

    pub const fn from_micros(micros: u64) -> Self {
        Instant { micros }
    }

    pub const fn from_millis(millis: u64) -> Self {
        Instant { micros: millis * 1000 }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Instant { micros: secs * 1_000_000 }
    }

    pub const fn total_micros(self) -> u64 {
        self.micros
    }

    pub const fn total_millis(self) -> u64 {
        self.micros / 1000
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration { micros: self.micros.saturating_sub(earlier.micros) }
    }
}

impl Duration {
    pub const ZERO: Duration = Duration { micros: 0 };
    pub const MAX: Duration = Duration { micros: u64::MAX };

    pub const fn from_micros(micros: u64) -> Self {
        Duration { micros }
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration { micros: millis * 1000 }
    }

    pub const fn from_secs(secs: u64) -> Self {
        Duration { micros: secs * 1_000_000 }
    }

    pub const fn total_micros(self) -> u64 {
        self.micros
    }

    pub const fn total_millis(self) -> u64 {
        self.micros / 1000
    }

    pub const fn secs(self) -> u64 {
        self.micros / 1_000_000
    }

    pub fn as_secs_f64(self) -> f64 {
        self.micros as f64 / 1e6
    }

    /// Milliseconds with their fraction, as the status shows spans.
    pub fn as_millis_f64(self) -> f64 {
        self.micros as f64 / 1000.0
    }

    pub fn saturating_sub(self, other: Duration) -> Duration {
        Duration { micros: self.micros.saturating_sub(other.micros) }
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant { micros: self.micros.saturating_add(d.micros) }
    }
}

impl AddAssign<Duration> for Instant {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, d: Duration) -> Instant {
        Instant { micros: self.micros.saturating_sub(d.micros) }
    }
}

impl SubAssign<Duration> for Instant {
    fn sub_assign(&mut self, d: Duration) {
        *self = *self - d;
    }
}

/// Saturating: a "later" instant taken before an earlier one (two clocks read in the wrong order)
/// gives zero, not a panic.
impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, earlier: Instant) -> Duration {
        self.saturating_since(earlier)
    }
}

impl Add for Duration {
    type Output = Duration;
    fn add(self, d: Duration) -> Duration {
        Duration { micros: self.micros.saturating_add(d.micros) }
    }
}

impl AddAssign for Duration {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

impl Sub for Duration {
    type Output = Duration;
    fn sub(self, d: Duration) -> Duration {
        self.saturating_sub(d)
    }
}

impl Mul<u32> for Duration {
    type Output = Duration;
    fn mul(self, n: u32) -> Duration {
        Duration { micros: self.micros.saturating_mul(u64::from(n)) }
    }
}

impl Mul<Duration> for u32 {
    type Output = Duration;
    fn mul(self, d: Duration) -> Duration {
        d * self
    }
}

impl Div<u32> for Duration {
    type Output = Duration;
    fn div(self, n: u32) -> Duration {
        Duration { micros: self.micros / u64::from(n) }
    }
}

impl fmt::Display for Instant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.micros / 1_000_000, self.micros % 1_000_000)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}ms", self.micros / 1000, self.micros % 1000)
    }
}

impl From<std::time::Duration> for Duration {
    fn from(d: std::time::Duration) -> Self {
        Duration { micros: u64::try_from(d.as_micros()).unwrap_or(u64::MAX) }
    }
}

impl From<Duration> for std::time::Duration {
    fn from(d: Duration) -> Self {
        std::time::Duration::from_micros(d.micros)
    }
}

// smoltcp's time starts at the same origin: the engine hands its `now` to the stack unchanged.
impl From<Instant> for roamtun_stack::Instant {
    fn from(t: Instant) -> Self {
        roamtun_stack::Instant::from_micros(t.micros as i64)
    }
}

impl From<roamtun_stack::Instant> for Instant {
    fn from(t: roamtun_stack::Instant) -> Self {
        Instant { micros: t.total_micros().max(0) as u64 }
    }
}

impl From<Duration> for roamtun_stack::Duration {
    fn from(d: Duration) -> Self {
        roamtun_stack::Duration::from_micros(d.micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_panicking() {
        let t = Instant::from_millis(5);
        assert_eq!(t - Instant::from_millis(7), Duration::ZERO);
        assert_eq!(t - Duration::from_secs(1), Instant::ZERO);
        assert_eq!(Instant::from_micros(u64::MAX) + Duration::from_secs(1), Instant::from_micros(u64::MAX));
        assert_eq!((Instant::from_millis(7) - t).total_micros(), 2000);
        assert_eq!(Duration::from_millis(3) * 2, Duration::from_micros(6000));
        assert_eq!(Duration::from_millis(3) / 3, Duration::from_millis(1));
    }

    #[test]
    fn the_stack_sees_the_same_instant() {
        let t = Instant::from_micros(123_456_789);
        let s: roamtun_stack::Instant = t.into();
        assert_eq!(s.total_micros(), 123_456_789);
        assert_eq!(Instant::from(s), t);
        assert_eq!(Duration::from(std::time::Duration::from_micros(1500)).total_micros(), 1500);
    }
}
