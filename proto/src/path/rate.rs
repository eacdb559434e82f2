//! What the path carries now, for sizing the engine's bulk chunks.

use std::collections::VecDeque;

/// The path's pace: the largest of the last [`PACE_SAMPLES`] delivery-rate samples the kernel took
/// while the socket was not application-limited. A window, not a decaying peak: the first round
/// trips of a connection, and a slow link's shaper letting a burst through, give samples far above
/// what the link carries, and chunks sized by those would wait in the queues for minutes.
#[derive(Debug, Default)]
pub struct RateWindow {
    samples: VecDeque<u64>,
}

/// One sample per statistics tick (`probe_interval_ms`): a burst is forgotten within a few seconds.
pub const PACE_SAMPLES: usize = 8;

impl RateWindow {
    pub fn update(&mut self, delivery_rate: Option<u64>) -> Option<u64> {
        if let Some(rate) = delivery_rate {
            if self.samples.len() == PACE_SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(rate);
        }
        self.samples.iter().copied().max()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pace_forgets_a_burst_within_a_window() {
        let mut w = RateWindow::default();
        assert_eq!(w.update(None), None, "nothing known yet");
        // A connection's first round trips, through a shaper's burst allowance: far above the link.
        assert_eq!(w.update(Some(500_000_000)), Some(500_000_000));
        for _ in 1..PACE_SAMPLES {
            assert_eq!(w.update(Some(6_000_000)), Some(500_000_000));
        }
        assert_eq!(w.update(Some(6_000_000)), Some(6_000_000), "the burst has left the window");
        // Application-limited ticks say nothing: the estimate stays.
        assert_eq!(w.update(None), Some(6_000_000));
    }
}
