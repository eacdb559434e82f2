//! The path's loss as its own relay socket sees it.

use super::TcpSample;

/// Retransmitted segments per data segment sent, smoothed; a sample needs enough segments to mean
/// much.
#[derive(Debug, Default)]
pub struct LossMeter {
    last: Option<(u32, u32)>,
    loss: f64,
}

impl LossMeter {
    pub fn update(&mut self, info: &TcpSample) -> f64 {
        let (retrans, segs) = self.last.unwrap_or((info.total_retrans, info.data_segs_out));
        let sent = info.data_segs_out.wrapping_sub(segs);
        if sent >= 20 {
            let sample = f64::from(info.total_retrans.wrapping_sub(retrans)) / f64::from(sent);
            self.loss = 0.8 * self.loss + 0.2 * sample.min(1.0);
            self.last = Some((info.total_retrans, info.data_segs_out));
        } else if self.last.is_none() {
            self.last = Some((info.total_retrans, info.data_segs_out));
        }
        self.loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_is_retransmissions_per_data_segment() {
        let counters =
            |retrans, data_segs| TcpSample { total_retrans: retrans, data_segs_out: data_segs, ..TcpSample::default() };
        let mut meter = LossMeter::default();
        assert_eq!(meter.update(&counters(0, 0)), 0.0);
        // Fewer than 20 data segments say nothing yet, whatever their fate.
        assert_eq!(meter.update(&counters(5, 10)), 0.0);
        // 30 of 100 data segments resent, each round: the estimate climbs towards 30 %.
        let mut last = 0.0;
        for round in 1..=20 {
            let now = meter.update(&counters(30 * round, 100 * round));
            assert!(now > last && now <= 0.3, "round {round}: {now} after {last}");
            last = now;
        }
        assert!(last > 0.29, "{last}");
        // A clean path brings it back down.
        for round in 1..=20 {
            last = meter.update(&counters(600, 2000 + 100 * round));
        }
        assert!(last < 0.01, "{last}");
    }
}
