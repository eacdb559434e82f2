//! The decision task of the spec (\[0095\]): which uplink the session should use, from what the Check
//! and Search activities measured, what each uplink costs and what the user said. Sans-IO: it is fed
//! observations and the time, and asked [`Policy::decide`]; every rule is here, in one place.
//!
//! The rules, in order:
//! 1. The user's word wins: a pinned uplink is used whenever it is usable. An uplink the user switched
//!    to (`roamtun switch`) is kept while it works: rule 3 does not move the session away from it.
//! 2. An active uplink that is unusable (down, no address, declared dead by Check) is left at once for
//!    the best usable one: an *unexpected* switch.
//! 3. Otherwise the session moves (a *planned* switch) only to an uplink that scores at least
//!    `min_gain` better, and not within `dwell` of the last switch (no switch storms on a flapping
//!    link). An uplink that has just come back must have stayed healthy for `fail_back_after` first.
//!
//! The score (higher is better) says why in words, for `roamtun status`:
//! `100 − 10·priority − rtt/10 ms − 200·loss − 2·recent failures (at most 10) − 40 if metered − 2·cost per GiB
//! − 10·log10(100 Mbit/s ÷ measured bandwidth) (0 to 20; nothing while unmeasured) − 100 past its volume cap`.
//! Bandwidth counts only once the kernel has measured it on a busy path, so an uplink is never
//! penalised for not having been tried; a capped uplink past its cap is still used when nothing
//! else is usable (it keeps a score, just a low one).

use std::collections::BTreeMap;

use crate::time::{Duration, Instant};

/// What the configuration says about an uplink.
#[derive(Debug, Clone, PartialEq)]
pub struct UplinkPolicy {
    /// 0 is the most preferred.
    pub priority: u32,
    /// Money per GiB carried (any currency; only comparisons matter).
    pub cost_per_gib: f64,
    /// Volume-limited or paid by use: used only when nothing free is healthy.
    pub metered: bool,
    /// A volume cap: past it, the uplink is the last resort.
    pub cap_bytes: Option<u64>,
}

/// What Check (the active uplink) or Search (the others) measured last.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Up, with an address, and (if probed) reaching the server.
    pub usable: bool,
    pub rtt: Option<Duration>,
    /// Fraction of probes lost recently, 0.0 to 1.0.
    pub loss: f64,
    /// Probe or path failures in the recent past.
    pub failures: u32,
    /// Capacity measured on a busy path (bytes/s); `None` until measured.
    pub bandwidth: Option<f64>,
    /// Bytes carried over the uplink so far, for its cap.
    pub used_bytes: u64,
}

/// The knobs of the rules above.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    pub min_gain: f64,
    pub dwell: Duration,
    pub fail_back_after: Duration,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { min_gain: 5.0, dwell: Duration::from_secs(10), fail_back_after: Duration::from_secs(30) }
    }
}

/// Whether to move, and how.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Stay on the active uplink (or, with none, there is nothing usable).
    Stay,
    /// Move now. `planned`: the active uplink still works (make-before-break); otherwise it is gone.
    Switch { to: String, planned: bool, why: String },
}

#[derive(Debug, Clone)]
struct Entry {
    policy: UplinkPolicy,
    health: Health,
    /// Since when it has been usable without interruption.
    healthy_since: Option<Instant>,
}

/// The decision task. See the module documentation.
#[derive(Debug, Clone)]
pub struct Policy {
    config: PolicyConfig,
    uplinks: BTreeMap<String, Entry>,
    active: Option<String>,
    last_switch: Option<Instant>,
    pinned: Option<String>,
    /// The session is where the user put it (`roamtun switch`): no automatic planned switch.
    manual: bool,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Self {
        Policy { config, uplinks: BTreeMap::new(), active: None, last_switch: None, pinned: None, manual: false }
    }

    /// An uplink the session may use, with what the configuration says about it.
    pub fn add_uplink(&mut self, name: &str, policy: UplinkPolicy) {
        let health = Health { usable: false, rtt: None, loss: 0.0, failures: 0, bandwidth: None, used_bytes: 0 };
        self.uplinks.insert(name.into(), Entry { policy, health, healthy_since: None });
    }

    /// A new measurement of `name`.
    pub fn observe(&mut self, name: &str, health: Health, now: Instant) {
        if let Some(e) = self.uplinks.get_mut(name) {
            e.healthy_since = match (health.usable, e.healthy_since) {
                (true, Some(since)) => Some(since),
                (true, None) => Some(now),
                (false, _) => None,
            };
            e.health = health;
        }
    }

    /// The session is now on `name`; `by_user`: because of `roamtun switch`.
    pub fn switched(&mut self, name: &str, by_user: bool, now: Instant) {
        self.active = Some(name.into());
        self.last_switch = Some(now);
        self.manual = by_user;
    }

    /// `roamtun pin <uplink>`; `None` unpins: the automatic choice again (also after a manual switch).
    pub fn pin(&mut self, name: Option<&str>) {
        self.pinned = name.map(str::to_string);
        self.manual = false;
    }

    /// The pinned uplink, if any.
    pub fn pinned(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// The score of `name` and the reasons behind it; `None` for an unknown or unusable uplink.
    pub fn score(&self, name: &str) -> Option<(f64, String)> {
        let e = self.uplinks.get(name)?;
        if !e.health.usable {
            return None;
        }
        let mut score = 100.0;
        let mut why = Vec::new();
        let mut take = |points: f64, reason: String| {
            if points > 0.0 {
                score -= points;
                // Whole points, but a fraction stays visible rather than reading "-0".
                let shown = if points < 1.0 { format!("{points:.1}") } else { format!("{points:.0}") };
                why.push(format!("-{shown} {reason}"));
            }
        };
        take(10.0 * f64::from(e.policy.priority), format!("priority {}", e.policy.priority));
        if let Some(rtt) = e.health.rtt {
            take(rtt.total_millis() as f64 / 10.0, format!("rtt {} ms", rtt.total_millis()));
        }
        take(200.0 * e.health.loss, format!("loss {:.0}%", e.health.loss * 100.0));
        take(2.0 * f64::from(e.health.failures.min(5)), format!("{} recent failures", e.health.failures));
        if e.policy.metered {
            take(40.0, "metered".into());
        }
        take(2.0 * e.policy.cost_per_gib, format!("cost {}/GiB", e.policy.cost_per_gib));
        if let Some(bw) = e.health.bandwidth.filter(|b| *b > 0.0) {
            let mbps = bw * 8.0 / 1e6;
            take((10.0 * (100.0 / mbps).log10()).clamp(0.0, 20.0), format!("{mbps:.1} Mbit/s"));
        }
        if let Some(cap) = e.policy.cap_bytes.filter(|cap| e.health.used_bytes >= *cap) {
            take(100.0, format!("past its cap of {} MiB", cap >> 20));
        }
        let why = if why.is_empty() { "no penalty".to_string() } else { why.join(", ") };
        Some((score, why))
    }

    /// The best usable uplink other than `except`, with its score.
    fn best(&self, except: Option<&str>) -> Option<(String, f64, String)> {
        self.uplinks
            .keys()
            .filter(|n| Some(n.as_str()) != except)
            .filter_map(|n| self.score(n).map(|(s, why)| (n.clone(), s, why)))
            // Highest score; on a tie the earlier name (a stable choice).
            .fold(None, |best: Option<(String, f64, String)>, c| match best {
                Some(b) if b.1 >= c.1 => Some(b),
                _ => Some(c),
            })
    }

    /// What to do now.
    pub fn decide(&self, now: Instant) -> Decision {
        let active = self.active.as_deref();
        let active_score = active.and_then(|a| self.score(a));
        // 1. The user's word.
        if let Some(pin) = self.pinned.as_deref() {
            if active != Some(pin) && self.score(pin).is_some() {
                return Decision::Switch {
                    to: pin.into(),
                    planned: active_score.is_some(),
                    why: format!("pinned to {pin} by the user"),
                };
            }
            if active == Some(pin) && active_score.is_some() {
                return Decision::Stay;
            }
        }
        // 2. The active uplink is gone.
        let Some((active_score, active_why)) = active_score else {
            return match self.best(active) {
                Some((to, _, why)) => Decision::Switch {
                    why: format!("{} is unusable; {to} is the best usable ({why})", active.unwrap_or("no uplink")),
                    to,
                    planned: false,
                },
                None => Decision::Stay,
            };
        };
        // 3. Something better, with hysteresis; not while the user's own choice works.
        if self.manual || self.last_switch.is_some_and(|at| now < at + self.config.dwell) {
            return Decision::Stay;
        }
        let Some((to, score, why)) = self.best(active) else { return Decision::Stay };
        if score < active_score + self.config.min_gain {
            return Decision::Stay;
        }
        let settled = self.uplinks[&to].healthy_since.is_some_and(|since| now >= since + self.config.fail_back_after);
        if !settled {
            return Decision::Stay;
        }
        Decision::Switch {
            why: format!(
                "{to} scores {score:.0} ({why}) against {active_score:.0} on {} ({active_why})",
                active.unwrap_or("?")
            ),
            to,
            planned: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Instant {
        Instant::from_secs(1000 + secs)
    }

    fn healthy(rtt_ms: u64) -> Health {
        Health {
            usable: true,
            rtt: Some(Duration::from_millis(rtt_ms)),
            loss: 0.0,
            failures: 0,
            bandwidth: None,
            used_bytes: 0,
        }
    }

    fn down() -> Health {
        Health { usable: false, rtt: None, loss: 0.0, failures: 0, bandwidth: None, used_bytes: 0 }
    }

    /// eth0 (free, preferred), wlan0 (free), wwan0 (metered), all healthy, the session on eth0.
    fn three() -> Policy {
        let mut p = Policy::new(PolicyConfig::default());
        p.add_uplink("eth0", UplinkPolicy { priority: 0, cost_per_gib: 0.0, metered: false, cap_bytes: None });
        p.add_uplink("wlan0", UplinkPolicy { priority: 1, cost_per_gib: 0.0, metered: false, cap_bytes: None });
        p.add_uplink("wwan0", UplinkPolicy { priority: 2, cost_per_gib: 5.0, metered: true, cap_bytes: None });
        for (n, rtt) in [("eth0", 1), ("wlan0", 20), ("wwan0", 50)] {
            p.observe(n, healthy(rtt), at(0));
        }
        p.switched("eth0", false, at(0));
        p
    }

    #[test]
    fn the_active_uplink_lost_moves_at_once_to_the_best_usable_one() {
        let mut p = three();
        p.observe("eth0", down(), at(1));
        let Decision::Switch { to, planned, why } = p.decide(at(1)) else { panic!("no switch") };
        assert_eq!((to.as_str(), planned), ("wlan0", false));
        assert!(why.contains("eth0 is unusable"), "{why}");
    }

    #[test]
    fn the_metered_uplink_carries_nothing_while_a_free_one_is_healthy() {
        let mut p = three();
        p.observe("eth0", down(), at(1));
        p.switched("wlan0", false, at(1));
        assert_eq!(p.decide(at(100)), Decision::Stay);
        // Only when wlan0 goes too.
        p.observe("wlan0", down(), at(101));
        let Decision::Switch { to, .. } = p.decide(at(101)) else { panic!("no switch") };
        assert_eq!(to, "wwan0");
    }

    #[test]
    fn a_small_gain_does_not_switch_and_a_large_one_does_after_the_dwell_time() {
        let mut p = three();
        p.observe("eth0", down(), at(1));
        p.switched("wlan0", false, at(1));
        // eth0 back: it scores 100 - 0.1 against wlan0's 88, more than min_gain 5... but only after
        // it stayed healthy for fail_back_after (30 s).
        p.observe("eth0", healthy(1), at(2));
        assert_eq!(p.decide(at(20)), Decision::Stay, "fail-back before eth0 settled");
        let Decision::Switch { to, planned, .. } = p.decide(at(33)) else { panic!("no fail-back") };
        assert_eq!((to.as_str(), planned), ("eth0", true));
        // A gain below min_gain is not worth a switch.
        let mut q = three();
        q.add_uplink("eth1", UplinkPolicy { priority: 0, cost_per_gib: 0.0, metered: false, cap_bytes: None });
        q.observe("eth0", healthy(40), at(0));
        q.observe("eth1", healthy(1), at(0));
        assert_eq!(q.decide(at(100)), Decision::Stay, "a 4-point gain moved the session");
    }

    #[test]
    fn no_switch_within_the_dwell_time_of_the_last_one() {
        let mut p = three();
        p.observe("wlan0", healthy(20), at(0));
        p.switched("wlan0", false, at(100));
        // eth0 is far better and settled, but the last switch was 5 s ago.
        assert_eq!(p.decide(at(105)), Decision::Stay);
        assert!(matches!(p.decide(at(111)), Decision::Switch { ref to, .. } if to == "eth0"));
    }

    #[test]
    fn a_flapping_link_is_not_trusted_until_it_stays_up() {
        let mut p = three();
        p.observe("eth0", down(), at(1));
        p.switched("wlan0", false, at(1));
        // eth0 flaps every 2 s for a minute: never healthy for 30 s in a row.
        for t in (2..62).step_by(2) {
            let h = if (t / 2) % 2 == 0 { healthy(1) } else { down() };
            p.observe("eth0", h, at(t));
            assert_eq!(p.decide(at(t)), Decision::Stay, "switched to a flapping link at {t} s");
        }
    }

    #[test]
    fn pin_is_honoured_and_unpin_returns_to_the_automatic_choice() {
        let mut p = three();
        p.pin(Some("wwan0"));
        let Decision::Switch { to, planned, why } = p.decide(at(1)) else { panic!("pin ignored") };
        assert_eq!((to.as_str(), planned), ("wwan0", true));
        assert!(why.contains("pinned"), "{why}");
        p.switched("wwan0", false, at(1));
        assert_eq!(p.decide(at(100)), Decision::Stay, "left the pinned uplink");
        p.pin(None);
        let Decision::Switch { to, .. } = p.decide(at(100)) else { panic!("unpin kept wwan0") };
        assert_eq!(to, "eth0");
    }

    #[test]
    fn a_manual_switch_sticks_while_it_works() {
        let mut p = three();
        p.switched("wwan0", true, at(1));
        assert_eq!(p.decide(at(1000)), Decision::Stay, "moved away from the user's choice");
        // Until it fails: then the best usable one, and automatic again from there.
        p.observe("wwan0", down(), at(1001));
        let Decision::Switch { to, planned, .. } = p.decide(at(1001)) else { panic!("stayed on a dead uplink") };
        assert_eq!((to.as_str(), planned), ("eth0", false));
    }

    #[test]
    fn loss_on_the_active_uplink_makes_a_planned_switch_to_a_better_one() {
        let mut p = three();
        p.observe("wlan0", healthy(20), at(0));
        p.observe("eth0", Health { loss: 0.3, ..healthy(1) }, at(50));
        let Decision::Switch { to, planned, why } = p.decide(at(50)) else { panic!("stayed on a lossy link") };
        assert_eq!((to.as_str(), planned), ("wlan0", true));
        assert!(why.contains("against 40"), "{why}");
        let (_, eth0_why) = p.score("eth0").unwrap();
        assert!(eth0_why.contains("loss 30%"), "{eth0_why}");
    }

    #[test]
    fn a_slow_measured_uplink_scores_lower_and_an_unmeasured_one_is_not_penalised() {
        let mut p = three();
        let (fast, _) = p.score("wlan0").unwrap();
        // 2 Mbit/s measured: 10·log10(100/2) = 17 points.
        p.observe("wlan0", Health { bandwidth: Some(250_000.0), ..healthy(20) }, at(1));
        let (slow, why) = p.score("wlan0").unwrap();
        assert!((fast - slow - 17.0).abs() < 0.1, "{fast} → {slow}: {why}");
        assert!(why.contains("2.0 Mbit/s"), "{why}");
        // 1 Gbit/s measured costs nothing; below 0.1 Mbit/s the penalty stops at 20.
        p.observe("wlan0", Health { bandwidth: Some(125_000_000.0), ..healthy(20) }, at(2));
        assert_eq!(p.score("wlan0").unwrap().0, fast);
        p.observe("wlan0", Health { bandwidth: Some(1.0), ..healthy(20) }, at(3));
        assert_eq!(p.score("wlan0").unwrap().0, fast - 20.0);
    }

    #[test]
    fn an_uplink_past_its_cap_is_left_and_used_only_as_the_last_resort() {
        let mut p = Policy::new(PolicyConfig::default());
        p.add_uplink(
            "wlan0",
            UplinkPolicy { priority: 0, cost_per_gib: 0.0, metered: false, cap_bytes: Some(1 << 30) },
        );
        p.add_uplink("wwan0", UplinkPolicy { priority: 1, cost_per_gib: 5.0, metered: true, cap_bytes: None });
        p.observe("wlan0", Health { used_bytes: (1 << 30) - 1, ..healthy(1) }, at(0));
        p.observe("wwan0", healthy(50), at(0));
        p.switched("wlan0", false, at(0));
        assert_eq!(p.decide(at(100)), Decision::Stay, "left wlan0 before its cap");
        p.observe("wlan0", Health { used_bytes: 1 << 30, ..healthy(1) }, at(101));
        let Decision::Switch { to, planned, why } = p.decide(at(101)) else { panic!("stayed past the cap") };
        assert_eq!((to.as_str(), planned), ("wwan0", true));
        assert!(why.contains("past its cap of 1024 MiB"), "{why}");
        // With nothing else usable it is still used.
        p.switched("wwan0", false, at(101));
        p.observe("wwan0", down(), at(200));
        let Decision::Switch { to, .. } = p.decide(at(200)) else { panic!("no last resort") };
        assert_eq!(to, "wlan0");
    }
}
