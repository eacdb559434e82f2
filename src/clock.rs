//! The clock of the protocol code. The engine and the stack never read time themselves: the shell
//! reads it here and passes it in, and tests pass their own. (The shell's own timers, such as the
//! relay's idle timeout and reconnect backoff, run on tokio's clock.)
//!
//! It counts suspended time too (CLOCK_BOOTTIME): a laptop that sleeps for an hour must see its timers
//! as an hour late, not as if nothing happened.

use roamtun_proto::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start_micros: i64,
}

fn boottime_micros() -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_BOOTTIME exists on every Linux
    // since 2.6.39, so the call cannot fail with a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    debug_assert_eq!(rc, 0);
    ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000
}

impl Clock {
    pub fn new() -> Self {
        Clock { start_micros: boottime_micros() }
    }

    /// Time since the daemon started.
    pub fn now(&self) -> Instant {
        // CLOCK_BOOTTIME never goes back, so the difference is never negative.
        Instant::from_micros(boottime_micros().saturating_sub(self.start_micros).max(0) as u64)
    }

    /// How long from now until `at` (zero if it has passed), for a tokio sleep.
    pub fn until(&self, at: Instant) -> std::time::Duration {
        let now = self.now();
        if at <= now {
            return std::time::Duration::ZERO;
        }
        let d: Duration = at - now;
        std::time::Duration::from_micros(d.total_micros())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
