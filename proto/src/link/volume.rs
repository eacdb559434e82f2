//! Counting periods of the uplinks' volume: what an uplink carried counts against its cap from a
//! day of the month (UTC) to the same day of the next, as a mobile plan bills it. The daemon keeps
//! the count across restarts; a count from an earlier period is not carried into this one.

use std::collections::BTreeMap;

use time::{Date, Month};

/// The latest day a period may start on: every month has it.
pub const MAX_RESET_DAY: u8 = 28;

/// The first day of the period that holds `today`, for periods that start on `reset_day`
/// (1 to [`MAX_RESET_DAY`]; anything else is taken as the nearest of them).
pub fn period_start(today: Date, reset_day: u8) -> Date {
    let day = reset_day.clamp(1, MAX_RESET_DAY);
    let (year, month) = if today.day() >= day {
        (today.year(), today.month())
    } else if today.month() == Month::January {
        (today.year() - 1, Month::December)
    } else {
        (today.year(), today.month().previous())
    };
    Date::from_calendar_date(year, month, day).expect("days 1 to 28 are in every month")
}

/// The UTC date at `unix_secs` seconds after the Unix epoch; `None` outside the years the `time`
/// crate represents.
pub fn utc_date(unix_secs: i64) -> Option<Date> {
    time::OffsetDateTime::from_unix_timestamp(unix_secs).ok().map(|t| t.date())
}

/// Where each uplink's current period started.
#[derive(Debug, Clone)]
pub struct Periods {
    uplinks: BTreeMap<String, (u8, Date)>,
}

impl Periods {
    /// `reset_days`: each uplink with the day its periods start on; `today` places them.
    pub fn new(reset_days: &[(String, u8)], today: Date) -> Self {
        let uplinks = reset_days.iter().map(|(name, day)| (name.clone(), (*day, period_start(today, *day)))).collect();
        Periods { uplinks }
    }

    /// The start of `uplink`'s current period; `None` for an uplink not given to [`Periods::new`].
    pub fn start(&self, uplink: &str) -> Option<Date> {
        self.uplinks.get(uplink).map(|(_, start)| *start)
    }

    /// The date is now `today`: returns the uplinks whose new period began (their count starts
    /// from zero).
    pub fn roll(&mut self, today: Date) -> Vec<String> {
        let mut rolled = Vec::new();
        for (name, (day, start)) in &mut self.uplinks {
            let now = period_start(today, *day);
            if now != *start {
                *start = now;
                rolled.push(name.clone());
            }
        }
        rolled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u8, d: u8) -> Date {
        Date::from_calendar_date(y, Month::try_from(m).unwrap(), d).unwrap()
    }

    #[test]
    fn a_period_starts_on_its_day_of_this_month_or_the_last() {
        assert_eq!(period_start(date(2026, 12, 4), 1), date(2026, 12, 1));
        assert_eq!(period_start(date(2026, 12, 4), 4), date(2026, 12, 4), "the reset day itself is the new period");
        assert_eq!(period_start(date(2026, 12, 3), 4), date(2026, 11, 4));
        assert_eq!(period_start(date(2027, 1, 10), 15), date(2026, 12, 15), "across the new year");
        assert_eq!(period_start(date(2027, 3, 1), 31), date(2027, 2, 28), "days past 28 are taken as 28");
        assert_eq!(period_start(date(2027, 3, 1), 0), date(2027, 3, 1), "day 0 is taken as 1");
    }

    #[test]
    fn the_utc_date_of_a_unix_time() {
        assert_eq!(utc_date(0), Some(date(1970, 1, 1)));
        // 2026-12-04 23:59:59 and a second later.
        assert_eq!(utc_date(1_796_428_799), Some(date(2026, 12, 4)));
        assert_eq!(utc_date(1_796_428_800), Some(date(2026, 12, 5)));
    }

    #[test]
    fn periods_roll_on_each_uplinks_own_day() {
        let days = [("wwan0".to_string(), 5), ("wlan0".to_string(), 1)];
        let mut p = Periods::new(&days, date(2026, 12, 4));
        assert_eq!(p.start("wwan0"), Some(date(2026, 11, 5)));
        assert_eq!(p.start("wlan0"), Some(date(2026, 12, 1)));
        assert_eq!(p.start("eth0"), None);
        assert!(p.roll(date(2026, 12, 4)).is_empty(), "the same day rolled a period");
        assert_eq!(p.roll(date(2026, 12, 5)), ["wwan0"]);
        assert_eq!(p.start("wwan0"), Some(date(2026, 12, 5)));
        assert_eq!(p.roll(date(2027, 1, 6)), ["wlan0", "wwan0"], "a month later both begin again");
    }
}
