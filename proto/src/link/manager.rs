//! The link manager of a client: the spec's Search activity, the health that the decision task
//! ([`Policy`]) scores, and when it decides. Sans-IO: fed uplink snapshots, path events, the user's
//! commands and the time; it answers with [`LinkAction`]s and says when to call it again.
//!
//! Why the client switched is decided in two places, both here in `link/`: [`Policy::decide`] (the
//! rules and the score) and [`LinkManager::poll`] (what the policy is told, and when it is asked).
//!
//! What it deliberately does not do: open paths, read rtnetlink or the clock, or carry out a switch.
//! The core ([`crate::relay::core::RelayCore`]) runs the transition protocol, and resumes a lost
//! session on the standby path the manager's preference puts first.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::policy::{Decision, Health, Policy, PolicyConfig, UplinkPolicy};
use crate::time::{Duration, Instant};

/// How often the decision task looks at the uplinks.
pub const DECISION_PERIOD: Duration = Duration::from_millis(100);
/// A failed standby attempt on an uplink is repeated after this long (or at the next uplink change):
/// a network that could not reach the server (a captive portal, a black hole) may have healed.
pub const STANDBY_RETRY: Duration = Duration::from_secs(5);
/// How long a lost path counts against its uplink.
pub const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// What rtnetlink says of an uplink, as far as choosing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Up, with carrier and an address the relay can bind.
    Usable,
    AdminDown,
    NoCarrier,
    NoAddress,
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkState::Usable => "usable",
            LinkState::AdminDown => "administratively down",
            LinkState::NoCarrier => "no carrier",
            LinkState::NoAddress => "no address",
        })
    }
}

/// What the core knows of the session's paths, as the manager needs it
/// ([`crate::relay::core::RelayCore::link_view`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkView {
    /// The client's session, if it has one.
    pub session: Option<SessionLink>,
    /// Each uplink with an open path (current or standby), and what its path measured.
    pub paths: BTreeMap<String, PathHealth>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionLink {
    pub id: u64,
    /// The uplink of the path the session's streams use.
    pub active: Option<String>,
    pub switching: bool,
    /// A `roamtun switch` waits for its path to come up.
    pub switch_pending: bool,
    /// The uplinks on which the session has a path.
    pub uplinks: BTreeSet<String>,
}

/// What the path over an uplink measured.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PathHealth {
    pub rtt: Option<Duration>,
    /// The share of segments retransmitted lately, in the direction that loses more.
    pub loss: Option<f64>,
    /// Capacity measured on a busy path, bytes/s.
    pub bandwidth: Option<f64>,
}

/// What the shell must do for the manager.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkAction {
    /// Search: open a warm standby path of `session` on `uplink` (one attempt). Answered by
    /// [`LinkManager::path_up`] or [`LinkManager::standby_failed`]; if the request could not even be
    /// handed to the dialer, by [`LinkManager::standby_not_sent`].
    DialStandby { session: u64, uplink: String },
    /// The uplinks best first: a lost session resumes on the best standby path.
    Prefer(Vec<String>),
    /// Start a planned switch to `to`.
    Switch { to: String, why: String },
}

/// Why the user's command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("{uplink} is not a configured uplink (uplinks = {configured:?})")]
    NotConfigured { uplink: String, configured: Vec<String> },
    #[error("{uplink} is not a configured uplink")]
    NotPinnable { uplink: String },
    #[error("{uplink} is not usable now: {state}")]
    NotUsable { uplink: String, state: LinkState },
}

/// How an uplink appears in `roamtun status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UplinkRole {
    /// The session's path runs over it.
    Active,
    /// A warm path is open over it.
    Standby,
    /// Usable, but its last attempt could not reach the server.
    Unusable,
    /// Usable, no path.
    Up,
    Down,
    Absent,
}

impl UplinkRole {
    pub fn as_str(self) -> &'static str {
        match self {
            UplinkRole::Active => "active",
            UplinkRole::Standby => "standby",
            UplinkRole::Unusable => "unusable",
            UplinkRole::Up => "up",
            UplinkRole::Down => "down",
            UplinkRole::Absent => "absent",
        }
    }
}

/// The link manager. See the module documentation.
#[derive(Debug)]
pub struct LinkManager {
    /// The configured uplinks' names, best first.
    configured: Vec<String>,
    policy: Policy,
    links: BTreeMap<String, LinkState>,
    /// The uplink the session was on at the last decision.
    last_active: Option<String>,
    /// Paths lost per uplink, recently (a reliability signal for the policy).
    failures: BTreeMap<String, VecDeque<Instant>>,
    last_decision: Option<Instant>,
    /// The uplink of a `roamtun switch` under way: when the session gets there, it is the user's
    /// choice.
    user_switch: Option<String>,
    /// A `roamtun switch` has not been answered yet: the policy does not start one of its own.
    user_switch_pending: bool,
    /// The uplink a standby path is being opened on.
    standby_dialing: Option<String>,
    /// Uplinks where the last standby attempt failed, and when.
    standby_failed: BTreeMap<String, Instant>,
    /// Uplinks that are up but could not reach and authenticate with the server, with the error.
    unreachable: BTreeMap<String, String>,
    /// Bytes carried over each uplink (both ways, probes included) in its current period
    /// ([`crate::link::volume`]), for its cap.
    volume: BTreeMap<String, u64>,
    actions: VecDeque<LinkAction>,
}

impl LinkManager {
    /// `uplinks`: the configured ones, best first, with what the configuration says of each.
    pub fn new(config: PolicyConfig, uplinks: &[(String, UplinkPolicy)]) -> Self {
        let mut policy = Policy::new(config);
        for (name, p) in uplinks {
            policy.add_uplink(name, p.clone());
        }
        LinkManager {
            configured: uplinks.iter().map(|(n, _)| n.clone()).collect(),
            policy,
            links: BTreeMap::new(),
            last_active: None,
            failures: BTreeMap::new(),
            last_decision: None,
            user_switch: None,
            user_switch_pending: false,
            standby_dialing: None,
            standby_failed: BTreeMap::new(),
            unreachable: BTreeMap::new(),
            volume: BTreeMap::new(),
            actions: VecDeque::new(),
        }
    }

    pub fn configured(&self) -> &[String] {
        &self.configured
    }

    // ---- inputs ----------------------------------------------------------------------------------

    /// rtnetlink's view of every interface changed. A network that failed may have healed: every
    /// uplink may be tried again at once.
    pub fn uplinks_changed(&mut self, links: BTreeMap<String, LinkState>) {
        self.links = links;
        self.standby_failed.clear();
    }

    /// A path came up over `uplink`: it reaches the server.
    pub fn path_up(&mut self, uplink: Option<&str>) {
        let Some(uplink) = uplink else { return };
        if self.standby_dialing.as_deref() == Some(uplink) {
            self.standby_dialing = None;
        }
        self.unreachable.remove(uplink);
    }

    /// A path over `uplink` was lost: it counts against the uplink for a while.
    pub fn path_lost(&mut self, uplink: &str, now: Instant) {
        self.failures.entry(uplink.to_string()).or_default().push_back(now);
    }

    /// The standby attempt of [`LinkAction::DialStandby`] failed.
    pub fn standby_failed(&mut self, error: String, now: Instant) {
        if let Some(uplink) = self.standby_dialing.take() {
            tracing::debug!(%uplink, %error, "no standby path on this uplink for now");
            self.standby_failed.insert(uplink.clone(), now);
            self.unreachable.insert(uplink, error);
        }
    }

    /// The dialer could not take the standby request; Search asks again.
    pub fn standby_not_sent(&mut self) {
        self.standby_dialing = None;
    }

    /// The core asked the dialer for a path, which replaces whatever it was doing (a standby
    /// attempt included).
    pub fn dial_replaced(&mut self) {
        self.standby_dialing = None;
    }

    /// The relay carried `bytes` over `uplink` since the last count.
    pub fn carried(&mut self, uplink: &str, bytes: u64) {
        *self.volume.entry(uplink.to_string()).or_default() += bytes;
    }

    /// What `uplink` carried earlier in its current period (the daemon saved it before a restart):
    /// it counts against the cap as if this daemon had carried it.
    pub fn restore_volume(&mut self, uplink: &str, bytes: u64) {
        *self.volume.entry(uplink.to_string()).or_default() += bytes;
    }

    /// A new period of `uplink` began: its count starts from zero.
    pub fn new_period(&mut self, uplink: &str) {
        self.volume.remove(uplink);
    }

    /// `roamtun switch <uplink>`, checked against the configuration and the uplink's state. `Ok`: the
    /// core may carry it out ([`LinkManager::user_switch_started`]).
    pub fn check_switch(&self, uplink: &str) -> Result<(), LinkError> {
        if !self.configured.is_empty() && !self.configured.iter().any(|u| u == uplink) {
            return Err(LinkError::NotConfigured { uplink: uplink.into(), configured: self.configured.clone() });
        }
        match self.links.get(uplink) {
            Some(state) if *state != LinkState::Usable => {
                Err(LinkError::NotUsable { uplink: uplink.into(), state: *state })
            }
            _ => Ok(()),
        }
    }

    /// The core started the user's switch to `uplink`.
    pub fn user_switch_started(&mut self, uplink: &str) {
        self.user_switch = Some(uplink.to_string());
        self.user_switch_pending = true;
    }

    /// The user's switch is done (`ok`) or failed.
    pub fn user_switch_done(&mut self, ok: bool) {
        self.user_switch_pending = false;
        if !ok {
            self.user_switch = None;
        }
    }

    /// `roamtun pin <uplink>` (`None`: unpin). Decided on at once.
    pub fn pin(&mut self, uplink: Option<&str>) -> Result<(), LinkError> {
        if let Some(u) = uplink.filter(|u| !self.configured.iter().any(|c| c == u)) {
            return Err(LinkError::NotPinnable { uplink: u.into() });
        }
        self.policy.pin(uplink);
        self.last_decision = None;
        Ok(())
    }

    // ---- the activities --------------------------------------------------------------------------

    /// When [`LinkManager::poll`] must run next; `None`: no uplinks are configured, so the kernel's
    /// routing chooses and there is nothing to decide.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.configured.is_empty() {
            return None;
        }
        Some(self.last_decision.map_or(Instant::ZERO, |t| t + DECISION_PERIOD))
    }

    /// Search and the decision task, given what the core knows of the paths.
    pub fn poll(&mut self, view: &LinkView, now: Instant) {
        if self.poll_timeout().is_none_or(|at| now < at) {
            return;
        }
        self.last_decision = Some(now);
        self.search(view, now);
        self.decide(view, now);
    }

    pub fn poll_action(&mut self) -> Option<LinkAction> {
        self.actions.pop_front()
    }

    /// Search: a warm standby path on every usable configured uplink the session does not use, one
    /// dial at a time, never while a switch or another dial is under way.
    fn search(&mut self, view: &LinkView, now: Instant) {
        if self.standby_dialing.is_some() {
            return;
        }
        let Some(session) = &view.session else { return };
        if session.switching || session.switch_pending || session.active.is_none() {
            return;
        }
        let missing = self.configured.iter().find(|u| {
            let failed_lately = self.standby_failed.get(*u).is_some_and(|at| now < *at + STANDBY_RETRY);
            self.links.get(*u) == Some(&LinkState::Usable) && !failed_lately && !session.uplinks.contains(*u)
        });
        if let Some(uplink) = missing {
            self.standby_dialing = Some(uplink.clone());
            self.actions.push_back(LinkAction::DialStandby { session: session.id, uplink: uplink.clone() });
        }
    }

    /// The decision task: feeds the policy what Check and Search know, ranks the uplinks for a
    /// resumption, and starts a planned switch when the policy says so.
    fn decide(&mut self, view: &LinkView, now: Instant) {
        let Some(session) = &view.session else { return };
        let active = session.active.clone();
        if let Some(now_on) = active.as_deref().filter(|a| self.last_active.as_deref() != Some(*a)) {
            let by_user = self.user_switch.take().as_deref() == Some(now_on);
            self.policy.switched(now_on, by_user, now);
        }
        self.last_active = active.clone();
        for name in &self.configured {
            let failures = self.failures.entry(name.clone()).or_default();
            while failures.front().is_some_and(|t| now >= *t + FAILURE_MEMORY) {
                failures.pop_front();
            }
            let path = view.paths.get(name);
            let health = Health {
                // Up, with an address, and a path (current or warm standby) authenticated over it.
                usable: self.links.get(name) == Some(&LinkState::Usable) && path.is_some(),
                rtt: path.and_then(|p| p.rtt),
                loss: path.and_then(|p| p.loss).unwrap_or(0.0),
                failures: failures.len() as u32,
                bandwidth: path.and_then(|p| p.bandwidth),
                used_bytes: self.volume.get(name).copied().unwrap_or(0),
            };
            self.policy.observe(name, health, now);
        }
        let mut order = self.configured.clone();
        let score = |n: &String| self.policy.score(n).map_or(f64::MIN, |(s, _)| s);
        order.sort_by(|a, b| score(b).total_cmp(&score(a)));
        self.actions.push_back(LinkAction::Prefer(order));
        if session.switching || active.is_none() || self.user_switch_pending || session.switch_pending {
            return;
        }
        if let Decision::Switch { to, planned: true, why } = self.policy.decide(now) {
            self.actions.push_back(LinkAction::Switch { to, why });
        }
    }

    // ---- for the status ----------------------------------------------------------------------------

    /// How `name` appears in the status.
    pub fn role(&self, name: &str, view: &LinkView) -> UplinkRole {
        let active = view.session.as_ref().and_then(|s| s.active.as_deref());
        match self.links.get(name) {
            _ if active == Some(name) => UplinkRole::Active,
            _ if view.paths.contains_key(name) => UplinkRole::Standby,
            Some(LinkState::Usable) if self.unreachable.contains_key(name) => UplinkRole::Unusable,
            Some(LinkState::Usable) => UplinkRole::Up,
            Some(_) => UplinkRole::Down,
            None => UplinkRole::Absent,
        }
    }

    /// The policy's score of `name` and why, `None` while it is unusable.
    pub fn score(&self, name: &str) -> Option<(f64, String)> {
        self.policy.score(name)
    }

    /// The error of the last attempt to reach the server over `name`, while it is unreachable.
    pub fn unreachable(&self, name: &str) -> Option<&str> {
        self.unreachable.get(name).map(String::as_str)
    }

    pub fn used_bytes(&self, name: &str) -> u64 {
        self.volume.get(name).copied().unwrap_or(0)
    }

    pub fn pinned(&self) -> Option<&str> {
        self.policy.pinned()
    }
}
