//! How often one kind of warning may be logged: a peer (or a stranger) that sends garbage on purpose
//! must not fill the journal. A few lines per window; the first line of the next window says how
//! many were left out. Time comes in as an argument, like everywhere in this crate.

use crate::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct LogBudget {
    window: Duration,
    lines: u32,
    start: Option<Instant>,
    used: u32,
    suppressed: u64,
}

impl LogBudget {
    /// The budget every warning about a peer's input uses: 5 lines per 10 s.
    pub fn for_peer_input() -> Self {
        LogBudget::new(Duration::from_secs(10), 5)
    }

    pub fn new(window: Duration, lines: u32) -> Self {
        LogBudget { window, lines, start: None, used: 0, suppressed: 0 }
    }

    /// `Some(left_out)` when this occurrence may be logged (with how many were not logged since the
    /// last line that was); `None` when it is over the budget (and counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self.start.is_none_or(|start| now.saturating_since(start) >= self.window) {
            self.start = Some(now);
            self.used = 0;
        }
        if self.used < self.lines {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_lines_per_window_then_the_count_of_those_left_out() {
        let t0 = Instant::from_micros(1);
        let mut b = LogBudget::new(Duration::from_secs(10), 2);
        assert_eq!(b.allow(t0), Some(0));
        assert_eq!(b.allow(t0), Some(0));
        for _ in 0..1000 {
            assert_eq!(b.allow(t0 + Duration::from_secs(5)), None);
        }
        assert_eq!(b.allow(t0 + Duration::from_secs(10)), Some(1000), "the next window tells what was left out");
        assert_eq!(b.allow(t0 + Duration::from_secs(11)), Some(0));
        assert_eq!(b.allow(t0 + Duration::from_secs(12)), None);
    }
}
