//! Running under a service manager (systemd, dist/systemd/): the readiness, status and stopping
//! notices of `Type=notify`, the watchdog, and logging to the journal with structured fields.
//!
//! Every notice is a no-op unless the service manager asked for it (`NOTIFY_SOCKET`,
//! `WATCHDOG_USEC`, `JOURNAL_STREAM`), so a daemon started by hand behaves as before. What this
//! module does not do: decide when the daemon is ready or alive. The daemon's shell says when it
//! serves (`ready`), and the engine task feeds the [`Watchdog`] from its own loop, so systemd
//! restarts a daemon whose engine stopped making progress, not merely one that died.

use roamtun_proto::time::{Duration, Instant};
use sd_notify::NotifyState;

/// Journal fields of ours are `ROAMTUN_<FIELD>` (e.g. `ROAMTUN_UPLINK=wlan0`), so that a tracing
/// field can never collide with one of journald's own (`PRIORITY`, `MESSAGE`, …).
const JOURNAL_FIELD_PREFIX: &str = "ROAMTUN";

/// Tells the service manager the daemon serves now (`READY=1`), with a one-line `STATUS=`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A new `STATUS=` line (what `systemctl status` shows under the unit).
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// The daemon is shutting down (`STOPPING=1`): systemd then waits for it to exit instead of
/// treating the exit as a failure.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

fn send(states: &[NotifyState]) {
    // Does nothing when NOTIFY_SOCKET is unset (not under systemd, or not Type=notify).
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(%err, "cannot notify the service manager");
    }
}

/// `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec=` → `WATCHDOG_USEC`), sent by
/// the engine task's loop itself: when the loop is stuck, the pings stop and systemd restarts the
/// daemon. Sans-IO apart from the send: [`Watchdog::due`] decides on the time it is given.
#[derive(Debug)]
pub struct Watchdog {
    /// Between two pings: half of systemd's timeout, as sd_watchdog_enabled(3) advises.
    every: Duration,
    next: Instant,
}

impl Watchdog {
    /// The watchdog systemd asked this process for, or `None` (no `WATCHDOG_USEC`, or one meant for
    /// another process: `WATCHDOG_PID`).
    pub fn from_env(now: Instant) -> Option<Watchdog> {
        Some(Watchdog::new(sd_notify::watchdog_enabled()?.into(), now))
    }

    /// A watchdog for systemd's `timeout`; the first ping is due at once (the loop runs).
    pub fn new(timeout: Duration, now: Instant) -> Watchdog {
        // At least 1 ms: a zero interval would have the loop spin.
        let every = Duration::from_micros((timeout.total_micros() / 2).max(1000));
        Watchdog { every, next: now }
    }

    /// When the engine loop must wake up at the latest to ping in time, even when idle.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// Called once per pass of the engine loop: whether a ping is due now (and then the next one is
    /// scheduled). Pings are never sent faster than `every`, however busy the loop.
    pub fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }

    /// [`Watchdog::due`], and the ping sent if it is.
    pub fn feed(&mut self, now: Instant) {
        if self.due(now) {
            send(&[NotifyState::Watchdog]);
        }
    }
}

/// Whether stderr is connected to the journal: systemd sets `JOURNAL_STREAM=DEV:INODE` for the
/// service's stdout/stderr, and the check against stderr's own device and inode keeps a child that
/// merely inherited the variable (e.g. `roamtun status > file` run from a unit) writing text.
pub fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd as _;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else { return false };
    dev.parse::<u64>().is_ok_and(|d| d == stat.st_dev) && ino.parse::<u64>().is_ok_and(|i| i == stat.st_ino)
}

/// The journald layer with our field prefix, when stderr goes to the journal and journald answers.
pub fn journal_layer() -> Option<tracing_journald::Layer> {
    if !stderr_is_journal() {
        return None;
    }
    match tracing_journald::layer() {
        Ok(layer) => Some(layer.with_field_prefix(Some(JOURNAL_FIELD_PREFIX.into()))),
        Err(err) => {
            // Plain text on stderr still reaches the journal, without the fields.
            eprintln!("roamtun: cannot log to journald ({err}); logging text to stderr");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_micros(ms * 1000)
    }

    #[test]
    fn pings_at_half_the_timeout_and_never_faster() {
        let mut dog = Watchdog::new(Duration::from_secs(20), at(0));
        assert!(dog.due(at(0)), "the first ping goes at once");
        assert_eq!(dog.deadline(), at(10_000));
        // A busy loop passes many times in between: no ping until the interval is over.
        assert!(!dog.due(at(1)) && !dog.due(at(9_999)));
        assert!(dog.due(at(10_000)));
        // A loop that woke late pings at once and schedules from then.
        assert!(dog.due(at(25_000)));
        assert_eq!(dog.deadline(), at(35_000));
    }

    #[test]
    fn a_tiny_timeout_does_not_make_the_loop_spin() {
        let mut dog = Watchdog::new(Duration::from_micros(10), at(0));
        assert!(dog.due(at(0)));
        assert_eq!(dog.deadline(), at(1));
    }
}
