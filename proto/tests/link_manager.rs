//! The link manager on injected time: every case of tests/netns/linkmgr.sh as a sans-IO test, and
//! random event sequences against the rules that must always hold.
//!
//! A small model of the rest of the client stands around the `LinkManager`: rtnetlink's view of the
//! uplinks, a dialer that opens a standby path (or fails to, on a network that cannot reach the
//! server), and a core that carries out a planned switch at once and resumes a lost session on the
//! first standby path of the manager's preference, as `RelayCore` does.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use roamtun_proto::link::manager::{
    LinkAction, LinkError, LinkManager, LinkState, LinkView, PathHealth, SessionLink, UplinkRole, DECISION_PERIOD,
    STANDBY_RETRY,
};
use roamtun_proto::link::policy::{PolicyConfig, UplinkPolicy};
use roamtun_proto::time::{Duration, Instant};

/// As tests/netns/linkmgr.sh configures them: eth0 and wlan0 free, wwan0 metered.
const UPLINKS: [&str; 3] = ["eth0", "wlan0", "wwan0"];
const CONFIG: PolicyConfig =
    PolicyConfig { min_gain: 5.0, dwell: Duration::from_secs(2), fail_back_after: Duration::from_secs(3) };

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Planned,
    Unexpected,
}

struct World {
    links: LinkManager,
    now: Instant,
    /// What rtnetlink says.
    state: BTreeMap<String, LinkState>,
    /// Uplinks whose network drops everything (a black hole, a captive portal): paths over them
    /// die, dials fail.
    dead_network: BTreeSet<String>,
    /// The session's paths and what each measured.
    paths: BTreeMap<String, PathHealth>,
    active: Option<String>,
    /// The session lost its path with no standby to resume on: the dialer opens a new one.
    resuming_from: Option<String>,
    preference: Vec<String>,
    /// The standby dial under way.
    dialing: Option<String>,
    switches: Vec<(Kind, String, String, Instant)>,
    dials: BTreeMap<String, u32>,
}

impl World {
    fn new(uplinks: &[(&str, UplinkPolicy)]) -> Self {
        let config: Vec<(String, UplinkPolicy)> = uplinks.iter().map(|(n, p)| (n.to_string(), p.clone())).collect();
        let mut w = World {
            links: LinkManager::new(CONFIG, &config),
            now: Instant::from_secs(1000),
            state: uplinks.iter().map(|(n, _)| (n.to_string(), LinkState::Usable)).collect(),
            dead_network: BTreeSet::new(),
            paths: BTreeMap::new(),
            active: None,
            resuming_from: None,
            preference: Vec::new(),
            dialing: None,
            switches: Vec::new(),
            dials: BTreeMap::new(),
        };
        w.links.uplinks_changed(w.state.clone());
        w
    }

    /// The three uplinks of the netns tests, with `cap` on wlan0.
    fn standard(cap: Option<u64>) -> Self {
        let p = |priority, metered, cost, cap| UplinkPolicy { priority, cost_per_gib: cost, metered, cap_bytes: cap };
        World::new(&[
            ("eth0", p(0, false, 0.0, None)),
            ("wlan0", p(1, false, 0.0, cap)),
            ("wwan0", p(2, true, 5.0, None)),
        ])
    }

    /// The session's first path, over `uplink` (the dialer's first choice).
    fn connect(&mut self, uplink: &str) {
        self.paths.insert(uplink.into(), healthy());
        self.active = Some(uplink.into());
        self.links.path_up(Some(uplink));
    }

    fn view(&self) -> LinkView {
        LinkView {
            session: (self.active.is_some() || self.resuming_from.is_some()).then(|| SessionLink {
                id: 7,
                active: self.active.clone(),
                switching: false,
                switch_pending: false,
                uplinks: self.paths.keys().cloned().collect(),
            }),
            paths: self.paths.clone(),
        }
    }

    /// Runs the manager for `secs` seconds of injected time, one decision period at a time.
    fn run(&mut self, secs: f64) {
        let until = self.now + Duration::from_micros((secs * 1e6) as u64);
        while self.now < until {
            self.step();
        }
    }

    fn step(&mut self) {
        // The dialer answers within the period.
        if let Some(uplink) = self.dialing.take() {
            if self.dead_network.contains(&uplink) || self.state[&uplink] != LinkState::Usable {
                self.links.standby_failed(format!("{uplink}: connection timed out"), self.now);
            } else {
                self.paths.insert(uplink.clone(), healthy());
                self.links.path_up(Some(&uplink));
            }
        }
        // A session without a path resumes on the first uplink that reaches the server.
        if let Some(from) = self.resuming_from.clone() {
            let to = self
                .links
                .configured()
                .iter()
                .find(|u| self.state.get(*u) == Some(&LinkState::Usable) && !self.dead_network.contains(*u));
            if let Some(to) = to.cloned() {
                self.resuming_from = None;
                self.connect(&to);
                self.switches.push((Kind::Unexpected, from, to, self.now));
            }
        }
        // A path over a dead network is found lost by Check.
        let dead: Vec<String> = self.paths.keys().filter(|u| self.dead_network.contains(*u)).cloned().collect();
        for uplink in dead {
            self.lose(&uplink);
        }
        let view = self.view();
        let at = self.links.poll_timeout().expect("uplinks are configured");
        self.now = self.now.max(at);
        self.links.poll(&view, self.now);
        while let Some(action) = self.links.poll_action() {
            self.carry_out(action);
        }
        self.now += DECISION_PERIOD;
    }

    fn carry_out(&mut self, action: LinkAction) {
        match action {
            LinkAction::DialStandby { session, uplink } => {
                assert_eq!(session, 7);
                assert!(self.dialing.is_none(), "a second standby dial while one is under way");
                assert!(!self.paths.contains_key(&uplink), "a standby dial on {uplink}, which has a path");
                assert_eq!(self.state.get(&uplink), Some(&LinkState::Usable), "a standby dial on unusable {uplink}");
                *self.dials.entry(uplink.clone()).or_default() += 1;
                self.dialing = Some(uplink);
            }
            LinkAction::Prefer(order) => self.preference = order,
            LinkAction::Switch { to, .. } => {
                assert!(self.paths.contains_key(&to), "a planned switch to {to}, which has no path");
                let from = self.active.replace(to.clone()).expect("no planned switch while the session resumes");
                assert_ne!(from, to);
                self.switches.push((Kind::Planned, from, to, self.now));
            }
        }
    }

    /// The path over `uplink` is lost; a lost active path resumes on the preferred standby.
    fn lose(&mut self, uplink: &str) {
        if self.paths.remove(uplink).is_none() {
            return;
        }
        self.links.path_lost(uplink, self.now);
        if self.active.as_deref() == Some(uplink) {
            match self.preference.iter().find(|u| self.paths.contains_key(*u)).cloned() {
                Some(to) => {
                    self.switches.push((Kind::Unexpected, uplink.into(), to.clone(), self.now));
                    self.active = Some(to);
                }
                None => {
                    self.active = None;
                    self.resuming_from = Some(uplink.into());
                }
            }
        }
    }

    fn set_link(&mut self, uplink: &str, state: LinkState) {
        self.state.insert(uplink.into(), state);
        self.links.uplinks_changed(self.state.clone());
        if state != LinkState::Usable {
            // rtnetlink says so at once: the path over it is lost now.
            self.lose(uplink);
        }
    }

    fn kinds(&self) -> Vec<String> {
        self.switches.iter().map(|(k, from, to, _)| format!("{k:?}:{from}>{to}").to_lowercase()).collect()
    }

    fn role(&self, uplink: &str) -> UplinkRole {
        self.links.role(uplink, &self.view())
    }
}

fn healthy() -> PathHealth {
    PathHealth { rtt: Some(Duration::from_millis(1)), loss: Some(0.0), bandwidth: None }
}

fn started() -> World {
    let mut w = World::standard(None);
    w.connect("eth0");
    w.run(1.0);
    assert_eq!(w.role("wlan0"), UplinkRole::Standby);
    assert_eq!(w.role("wwan0"), UplinkRole::Standby);
    w
}

#[test]
fn search_opens_a_standby_path_on_every_other_usable_uplink_one_at_a_time() {
    let mut w = World::standard(None);
    w.connect("eth0");
    w.step();
    assert_eq!(w.dialing.as_deref(), Some("wlan0"), "the best uplink without a path first");
    w.step();
    assert_eq!(w.dialing.as_deref(), Some("wwan0"));
    w.run(1.0);
    assert_eq!(w.dials, BTreeMap::from([("wlan0".into(), 1), ("wwan0".into(), 1)]));
    assert!(w.switches.is_empty());
}

#[test]
fn black_hole_moves_to_the_next_free_uplink() {
    let mut w = started();
    w.dead_network.insert("eth0".into());
    w.run(1.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"], "expected the free wlan0, not the metered wwan0");
    // eth0 still looks up to rtnetlink, but cannot reach the server: unusable, with the error.
    assert_eq!(w.role("eth0"), UplinkRole::Unusable);
    assert_eq!(w.links.unreachable("eth0"), Some("eth0: connection timed out"));
    // And it is tried again every 5 s, not in a loop.
    let before = w.dials["eth0"];
    w.run(20.0);
    let retries = w.dials["eth0"] - before;
    assert!((3..=5).contains(&retries), "{retries} attempts in 20 s");
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"]);
}

#[test]
fn fail_back_after_the_delay_not_before() {
    let mut w = started();
    w.set_link("eth0", LinkState::NoCarrier);
    w.run(1.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"]);
    w.set_link("eth0", LinkState::Usable);
    let back = w.now;
    w.run(10.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0", "planned:wlan0>eth0"]);
    let (_, _, _, at) = w.switches[1];
    let after = at - back;
    assert!(after >= CONFIG.fail_back_after, "fail-back after {after}, before fail_back_after");
    assert!(after <= CONFIG.fail_back_after + Duration::from_millis(500), "fail-back only after {after}");
}

#[test]
fn the_metered_uplink_carries_nothing_while_a_free_one_is_healthy() {
    let mut w = started();
    w.set_link("eth0", LinkState::AdminDown);
    w.run(30.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"]);
    assert_eq!(w.role("wwan0"), UplinkRole::Standby, "ready, but unused");
}

#[test]
fn pin_is_honoured_and_unpin_returns_to_the_automatic_choice() {
    let mut w = started();
    assert_eq!(w.links.pin(Some("eth7")), Err(LinkError::NotPinnable { uplink: "eth7".into() }));
    w.links.pin(Some("wwan0")).unwrap();
    w.step();
    assert_eq!(w.kinds(), ["planned:eth0>wwan0"], "a pin moves the session at once");
    // Pinned: it stays, although eth0 scores far better and dwell and fail-back have passed.
    w.run(10.0);
    assert_eq!(w.active.as_deref(), Some("wwan0"));
    assert_eq!(w.links.pinned(), Some("wwan0"));
    w.links.pin(None).unwrap();
    w.step();
    assert_eq!(w.kinds(), ["planned:eth0>wwan0", "planned:wwan0>eth0"]);
}

#[test]
fn a_user_switch_is_checked_and_kept_while_it_works() {
    let mut w = started();
    assert!(matches!(w.links.check_switch("eth7"), Err(LinkError::NotConfigured { .. })));
    w.set_link("wwan0", LinkState::NoAddress);
    assert_eq!(
        w.links.check_switch("wwan0").unwrap_err().to_string(),
        "wwan0 is not usable now: no address",
        "the user is told why"
    );
    w.links.check_switch("wlan0").unwrap();
    w.links.user_switch_started("wlan0");
    w.step();
    assert!(w.switches.is_empty(), "no switch of the policy's own while the user's is under way");
    // The core carried it out.
    w.active = Some("wlan0".into());
    w.links.user_switch_done(true);
    w.run(10.0);
    assert_eq!(w.active.as_deref(), Some("wlan0"), "the user's choice is kept although eth0 scores better");
}

#[test]
fn loss_on_the_active_uplink_moves_to_a_better_one() {
    let mut w = started();
    w.run(5.0);
    w.paths.get_mut("eth0").unwrap().loss = Some(0.15);
    w.run(1.0);
    assert_eq!(w.kinds(), ["planned:eth0>wlan0"]);
    let (score, why) = w.links.score("eth0").unwrap();
    assert!(why.contains("loss"), "{why}");
    assert!(score < w.links.score("wlan0").unwrap().0);
}

#[test]
fn a_flapping_link_causes_a_bounded_number_of_switches() {
    let mut w = started();
    for _ in 0..15 {
        w.set_link("eth0", LinkState::NoCarrier);
        w.run(2.0);
        w.set_link("eth0", LinkState::Usable);
        w.run(2.0);
    }
    // Each down moves the session off eth0 at most once; it never comes back while eth0 flaps (it is
    // never healthy for fail_back_after), so one switch, not fifteen.
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"]);
    // Its fifteen failures count against it for a minute: it is used again only once most of them
    // are forgotten (eth0 then scores min_gain above wlan0), not as soon as it stops flapping.
    w.run(30.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"], "back while its failures still count");
    w.run(40.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0", "planned:wlan0>eth0"], "never back");
}

#[test]
fn an_uplink_created_at_runtime_is_found_and_used() {
    let mut w = World::standard(None);
    w.state.remove("eth0");
    w.links.uplinks_changed(w.state.clone());
    w.connect("wlan0");
    w.run(5.0);
    assert_eq!(w.role("eth0"), UplinkRole::Absent);
    w.set_link("eth0", LinkState::Usable);
    let created = w.now;
    w.run(1.0);
    assert_eq!(w.role("eth0"), UplinkRole::Standby, "found and probed at once");
    w.run(5.0);
    assert_eq!(w.kinds(), ["planned:wlan0>eth0"]);
    assert!(w.switches[0].3 - created >= CONFIG.fail_back_after);
}

#[test]
fn an_uplink_past_its_cap_is_left_for_the_next_one() {
    let mut w = World::standard(Some(24 << 20));
    w.state.insert("eth0".into(), LinkState::AdminDown);
    w.links.uplinks_changed(w.state.clone());
    w.connect("wlan0");
    w.run(3.0);
    for _ in 0..30 {
        w.links.carried("wlan0", 1 << 20);
        w.run(0.2);
    }
    assert_eq!(w.kinds(), ["planned:wlan0>wwan0"], "past its cap, even the metered one is better");
    assert!(w.links.used_bytes("wlan0") >= 24 << 20);
    assert!(w.links.score("wlan0").unwrap().1.contains("cap"));
}

#[test]
fn a_restored_count_counts_against_the_cap_and_a_new_period_clears_it() {
    let mut w = World::standard(Some(24 << 20));
    w.state.insert("eth0".into(), LinkState::AdminDown);
    w.links.uplinks_changed(w.state.clone());
    // Before this start, wlan0 carried 30 MiB this period: it is past its cap from the first moment.
    w.links.restore_volume("wlan0", 30 << 20);
    w.connect("wlan0");
    w.run(9.0);
    assert_eq!(w.kinds(), ["planned:wlan0>wwan0"], "the restored count was not held against wlan0");
    assert_eq!(w.links.used_bytes("wlan0"), 30 << 20);
    // The next month: wlan0 is the better one again.
    w.links.new_period("wlan0");
    assert_eq!(w.links.used_bytes("wlan0"), 0);
    w.run(10.0);
    assert_eq!(w.kinds(), ["planned:wlan0>wwan0", "planned:wwan0>wlan0"], "a new period did not clear the cap");
}

#[test]
fn an_ipv6_only_uplink_replaces_an_ipv4_one_and_back() {
    // The manager sees no address family: an uplink whose IPv4 address goes and whose IPv6 one
    // stays is as usable as before; one that loses every address is down.
    let mut w = started();
    w.set_link("eth0", LinkState::NoAddress);
    w.run(1.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0"]);
    w.set_link("eth0", LinkState::Usable);
    w.run(5.0);
    assert_eq!(w.kinds(), ["unexpected:eth0>wlan0", "planned:wlan0>eth0"]);
}

#[test]
fn an_uplink_that_cannot_reach_the_server_is_retried_and_used_once_it_heals() {
    let mut w = World::standard(None);
    w.dead_network.insert("eth0".into());
    w.connect("wlan0");
    w.run(2.0);
    assert_eq!(w.role("eth0"), UplinkRole::Unusable);
    assert!(w.links.score("eth0").is_none(), "no path, no score");
    w.dead_network.clear();
    let healed = w.now;
    w.run(10.0);
    assert_eq!(w.kinds(), ["planned:wlan0>eth0"]);
    let used_after = w.switches[0].3 - healed;
    assert!(used_after <= STANDBY_RETRY + CONFIG.fail_back_after + Duration::from_millis(500), "{used_after}");
}

#[test]
fn a_change_of_the_uplinks_retries_a_failed_network_at_once() {
    let mut w = World::standard(None);
    w.dead_network.insert("eth0".into());
    w.connect("wlan0");
    w.run(1.0);
    let before = w.dials["eth0"];
    w.dead_network.clear();
    w.set_link("wwan0", LinkState::NoCarrier);
    w.step();
    w.step();
    assert_eq!(w.dials["eth0"], before + 1, "retried at the change, not 5 s later");
}

#[derive(Debug, Clone)]
enum Event {
    Link(usize, LinkState),
    DeadNetwork(usize, bool),
    Loss(usize, u8),
    Pin(Option<usize>),
    Carried(usize, u32),
    Wait(u16),
}

fn event() -> impl Strategy<Value = Event> {
    let state = prop_oneof![
        Just(LinkState::Usable),
        Just(LinkState::AdminDown),
        Just(LinkState::NoCarrier),
        Just(LinkState::NoAddress)
    ];
    prop_oneof![
        3 => (0..3usize, state).prop_map(|(u, s)| Event::Link(u, s)),
        1 => (0..3usize, any::<bool>()).prop_map(|(u, d)| Event::DeadNetwork(u, d)),
        1 => (0..3usize, 0..40u8).prop_map(|(u, l)| Event::Loss(u, l)),
        1 => prop::option::of(0..3usize).prop_map(Event::Pin),
        1 => (0..3usize, 0..(64u32 << 20)).prop_map(|(u, b)| Event::Carried(u, b)),
        4 => (1..5000u16).prop_map(Event::Wait),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever happens to the uplinks: never a switch to an uplink without a path, never two
    /// standby dials at once or one on an unusable uplink (the harness asserts those), and no
    /// planned switch within `dwell` of the previous switch unless the user pinned.
    #[test]
    fn the_rules_hold_under_random_events(events in prop::collection::vec(event(), 1..60)) {
        let mut w = World::standard(Some(1 << 30));
        w.connect("eth0");
        let mut pinned = false;
        for e in events {
            match e {
                Event::Link(u, s) => {
                    // Keep one uplink usable, so a lost session always has somewhere to resume.
                    let ok = UPLINKS.iter().enumerate().any(|(i, n)| i != u && w.state[*n] == LinkState::Usable && !w.dead_network.contains(*n));
                    if ok || s == LinkState::Usable {
                        w.set_link(UPLINKS[u], s);
                    }
                }
                Event::DeadNetwork(u, dead) => {
                    let ok = UPLINKS.iter().enumerate().any(|(i, n)| i != u && w.state[*n] == LinkState::Usable && !w.dead_network.contains(*n) && w.paths.contains_key(*n));
                    if !dead {
                        w.dead_network.remove(UPLINKS[u]);
                    } else if ok {
                        w.dead_network.insert(UPLINKS[u].into());
                    }
                }
                Event::Loss(u, l) => {
                    if let Some(p) = w.paths.get_mut(UPLINKS[u]) {
                        p.loss = Some(f64::from(l) / 100.0);
                    }
                }
                Event::Pin(u) => {
                    pinned |= u.is_some();
                    w.links.pin(u.map(|u| UPLINKS[u])).unwrap();
                }
                Event::Carried(u, b) => w.links.carried(UPLINKS[u], u64::from(b)),
                Event::Wait(ms) => w.run(f64::from(ms) / 1000.0),
            }
            w.step();
        }
        if !pinned {
            for pair in w.switches.windows(2) {
                let (prev, next) = (&pair[0], &pair[1]);
                if next.0 == Kind::Planned {
                    prop_assert!(next.3 - prev.3 >= CONFIG.dwell, "planned switch {:?} within dwell of {:?}", next, prev);
                }
            }
        }
    }
}
