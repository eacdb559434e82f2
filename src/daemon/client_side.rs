//! The client's part of the engine task: what it tells the link manager (rtnetlink snapshots, paths
//! up and lost, bytes carried, the user's commands) and what it carries out for it (standby dials,
//! the ranking for resumptions, planned switches). Every rule is in `roamtun_proto::link`.

use std::collections::BTreeMap;

use tokio::sync::{mpsc, oneshot, watch};

use roamtun_proto::link::manager::{LinkAction, LinkManager, LinkState};
use roamtun_proto::link::policy::{PolicyConfig, UplinkPolicy};
use roamtun_proto::path::PathLoss;
use roamtun_proto::relay::core::{DialRequest, RelayCore, SwitchError, SwitchReport};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::transition::PathId;

use super::shell::unix_ms;
use super::volume::VolumeStore;
use super::{ClientHooks, Uplinks};
use crate::config::UplinkConfig;
use crate::control::{Response, SwitchRecord};

pub(super) struct ClientSide {
    dial: mpsc::Sender<DialRequest>,
    /// Search and the decision task.
    pub(super) links: LinkManager,
    /// The configured uplinks, best first.
    pub(super) costs: Vec<UplinkConfig>,
    /// What rtnetlink reported last.
    pub(super) uplinks: Uplinks,
    /// The `roamtun switch` being carried out.
    switch_reply: Option<(String, oneshot::Sender<Response>)>,
    /// The capped uplinks' volume file; `None` without a cap.
    volume: Option<VolumeStore>,
}

impl ClientSide {
    pub(super) fn new(hooks: ClientHooks, now: Instant) -> (Self, Option<watch::Receiver<Uplinks>>) {
        let uplinks = hooks.uplinks.as_ref().map(|w| w.borrow().clone()).unwrap_or_default();
        let config = PolicyConfig {
            min_gain: hooks.decision.min_gain,
            dwell: Duration::from_secs(hooks.decision.dwell_secs),
            fail_back_after: Duration::from_secs(hooks.decision.fail_back_after_secs),
        };
        let policies: Vec<(String, UplinkPolicy)> = hooks
            .configured
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let p = UplinkPolicy {
                    priority: i as u32,
                    cost_per_gib: u.cost_per_gib,
                    metered: u.metered,
                    cap_bytes: u.cap_bytes(),
                };
                (u.name.clone(), p)
            })
            .collect();
        let mut links = LinkManager::new(config, &policies);
        links.uplinks_changed(link_states(&uplinks));
        let volume = VolumeStore::open(hooks.volume_file, &hooks.configured, &mut links, now);
        let side = ClientSide { dial: hooks.dial, links, costs: hooks.configured, uplinks, switch_reply: None, volume };
        (side, hooks.uplinks)
    }

    /// Saves the capped uplinks' volume when it is due (`volume`); `stopping`: now, whatever changed.
    pub(super) fn keep_volume(&mut self, now: Instant, stopping: bool) {
        let Some(store) = self.volume.as_mut() else { return };
        if stopping {
            store.save(&self.links);
        } else {
            store.tick(&mut self.links, now);
        }
    }

    /// The first day of the period a capped uplink's volume counts in.
    pub(super) fn volume_period(&self, uplink: &str) -> Option<String> {
        self.volume.as_ref()?.period_start(uplink)
    }

    /// A new rtnetlink snapshot; returns the paths it ends (their interface went down or lost the
    /// path's address), for the core.
    pub(super) fn uplinks_changed(&mut self, core: &RelayCore, snapshot: Uplinks) -> Vec<(PathId, PathLoss)> {
        let mut lost = Vec::new();
        for (id, info) in core.paths() {
            let Some(local) = info.local else { continue };
            let holder = match &info.uplink {
                Some(name) => snapshot.get(name),
                None => snapshot.values().find(|u| u.addresses.contains(&local.ip())),
            };
            let reason = match holder {
                None => PathLoss::InterfaceGone,
                Some(u) if !u.admin_up || !u.lower_up => PathLoss::UplinkDown { uplink: u.name.clone() },
                Some(u) if !u.addresses.contains(&local.ip()) => {
                    PathLoss::AddressLost { uplink: u.name.clone(), address: local.ip() }
                }
                Some(_) => continue,
            };
            lost.push((id, reason));
        }
        self.links.uplinks_changed(link_states(&snapshot));
        self.uplinks = snapshot;
        lost
    }

    /// A path was lost: it counts against its uplink's reliability.
    pub(super) fn path_lost(&mut self, core: &RelayCore, path: PathId, now: Instant) {
        if let Some(uplink) = uplink_of(core, path) {
            self.links.path_lost(&uplink, now);
        }
    }

    /// `roamtun switch <uplink>`: checked by the link manager, carried out by the core, answered when
    /// it is done or has failed.
    pub(super) fn request_switch(
        &mut self,
        core: &mut RelayCore,
        uplink: String,
        reply: oneshot::Sender<Response>,
        now: Instant,
    ) {
        if let Err(err) = self.links.check_switch(&uplink) {
            let _ = reply.send(Response::Error { message: err.to_string() });
            return;
        }
        match core.request_switch(uplink.clone(), now) {
            Ok(()) => {
                self.links.user_switch_started(&uplink);
                self.switch_reply = Some((uplink, reply));
            }
            Err(err) => {
                let _ = reply.send(Response::Error { message: format!("cannot switch to {uplink}: {err}") });
            }
        }
    }

    /// The core's answer to a `roamtun switch`.
    pub(super) fn switch_done(&mut self, result: Result<SwitchReport, SwitchError>) {
        self.links.user_switch_done(result.is_ok());
        let Some((uplink, reply)) = self.switch_reply.take() else { return };
        let _ = reply.send(match result {
            Ok(report) => Response::Switched(SwitchRecord::new(&report, report.finished, unix_ms())),
            Err(err) => Response::Error { message: format!("cannot switch to {uplink}: {err}") },
        });
    }

    /// `roamtun pin` / `unpin`.
    pub(super) fn pin(&mut self, uplink: Option<String>) -> Response {
        match self.links.pin(uplink.as_deref()) {
            Err(err) => Response::Error { message: err.to_string() },
            Ok(()) => Response::Done {
                message: match uplink {
                    Some(u) => format!("pinned to {u}: used whenever it is usable"),
                    None => "unpinned: the decision task chooses".into(),
                },
            },
        }
    }

    /// The core asks the dialer for a path; it replaces whatever the dialer was doing.
    pub(super) fn dial(&mut self, request: DialRequest) {
        self.links.dial_replaced();
        if self.dial.try_send(request).is_err() {
            tracing::warn!("the dialer is busy or gone; the request waits for its next round");
        }
    }

    /// Search and the decision task, when they are due, and what they ask for.
    pub(super) fn link_manager(&mut self, core: &mut RelayCore, now: Instant) {
        if self.links.poll_timeout().is_none_or(|at| now < at) {
            return;
        }
        self.links.poll(&core.link_view(), now);
        while let Some(action) = self.links.poll_action() {
            match action {
                LinkAction::DialStandby { session, uplink } => {
                    let request =
                        DialRequest { resume: session, uplink: Some(uplink), avoid: None, standby: true, ahead: None };
                    if self.dial.try_send(request).is_err() {
                        self.links.standby_not_sent();
                    }
                }
                LinkAction::Prefer(order) => core.set_preference(order),
                LinkAction::Switch { to, why } => match core.request_switch(to.clone(), now) {
                    Ok(()) => tracing::info!(%to, %why, "decision: planned switch"),
                    Err(err) => tracing::debug!(%to, %err, "the decided switch cannot start now"),
                },
            }
        }
    }
}

/// The uplink `path` runs over, if it is bound to one.
pub(super) fn uplink_of(core: &RelayCore, path: PathId) -> Option<String> {
    core.paths().find(|(id, _)| *id == path).and_then(|(_, i)| i.uplink.clone())
}

/// What the link manager needs of rtnetlink's view.
fn link_states(uplinks: &Uplinks) -> BTreeMap<String, LinkState> {
    let state = |u: &roamtun_netlink::Uplink| match (u.admin_up, u.lower_up, u.addresses.is_empty()) {
        (false, _, _) => LinkState::AdminDown,
        (true, false, _) => LinkState::NoCarrier,
        (true, true, true) => LinkState::NoAddress,
        _ => LinkState::Usable,
    };
    uplinks.iter().map(|(name, u)| (name.clone(), state(u))).collect()
}
