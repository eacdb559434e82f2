//! The engine task: feeds the sans-IO [`RelayCore`] with what the TUN, the path readers, the control
//! socket, rtnetlink and the timers deliver, and carries out what it asks for (write to a path, close
//! one, dial one, answer a `roamtun switch`). The protocol logic is all in the core; here is only I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot, Notify};

use super::{ClientHooks, EngineMsg, Join, StatusSource, Tun, Uplinks};
use crate::clock::Clock;
use crate::config::UplinkConfig;
use crate::control::{ControlRequest, PeerStatus, Request, Response, Status, SwitchRecord, UplinkStatus};
use roamtun_proto::link::policy::{Decision, Health, Policy, PolicyConfig, UplinkPolicy};
use roamtun_proto::path::PathLoss;
use roamtun_proto::relay::core::{Action, DialRequest, RelayCore};
use roamtun_proto::relay::engine::{Engine, Role};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::transition::{PathId, TransitionConfig};
use std::collections::VecDeque;

/// Most packets or messages handled per wake-up, so one busy source cannot starve the others.
const BATCH: usize = 64;
/// The largest IP packet a TUN read may return (the MTU is at most 65535).
const TUN_PACKET_MAX: usize = 65536;
/// Packets read from the TUN from this size on are handed to the engine in their read buffer;
/// smaller ones are copied (cheaper than zeroing a recycled buffer again).
const HAND_OVER_AT: usize = 8 * 1024;
/// After a session ends, freed memory is given back at once and again this much later.
const TRIM_AGAIN_AFTER: Duration = Duration::from_millis(500);
/// How often the decision task looks at the uplinks (and the longest the loop sleeps on a client).
const DECISION_PERIOD: Duration = Duration::from_millis(100);
/// A failed standby attempt on an uplink is repeated after this long (or at the next uplink change):
/// a network that could not reach the server (a captive portal, a black hole) may have healed.
const STANDBY_RETRY: Duration = Duration::from_secs(5);
/// How long a lost path counts against its uplink.
const FAILURE_MEMORY: Duration = Duration::from_secs(60);

/// The writing end and the reader of one path's connection.
struct PathIo {
    out: mpsc::Sender<bytes::Bytes>,
    reader: tokio::task::AbortHandle,
    /// Tells the path's tasks to probe at the standby pace.
    standby: Arc<std::sync::atomic::AtomicBool>,
}

pub(super) struct Shell {
    core: RelayCore,
    tun: Arc<Tun>,
    clock: Clock,
    source: StatusSource,
    io: BTreeMap<PathId, PathIo>,
    client: Option<ClientSide>,
}

struct ClientSide {
    dial: mpsc::Sender<DialRequest>,
    /// The configured uplinks' names, best first.
    configured: Vec<String>,
    costs: Vec<UplinkConfig>,
    /// The decision task.
    policy: Policy,
    /// The uplink the session was on at the last decision.
    last_active: Option<String>,
    /// Paths lost per uplink, recently (a reliability signal for the decision task).
    failures: BTreeMap<String, VecDeque<Instant>>,
    last_decision: Option<Instant>,
    /// The uplink of a `roamtun switch` under way: when the session gets there, it is the user's choice.
    user_switch: Option<String>,
    uplinks: Uplinks,
    /// The `roamtun switch` being carried out.
    switch_reply: Option<(String, oneshot::Sender<Response>)>,
    /// The uplink a standby path is being opened on (Search).
    standby_dialing: Option<String>,
    /// Uplinks where the last standby attempt failed, and when: tried again after STANDBY_RETRY or the
    /// next uplink change.
    standby_failed: BTreeMap<String, Instant>,
    /// Uplinks that are up but could not reach and authenticate with the server (a captive portal,
    /// no route, a black hole), with the last error: "unusable" in the status until a path works.
    unreachable: BTreeMap<String, String>,
    /// Bytes carried over each uplink since the daemon started (both ways, probes included), for
    /// its `cap_gib`.
    volume: BTreeMap<String, u64>,
}

impl Shell {
    pub(super) fn new(
        engine: Engine,
        tun: Arc<Tun>,
        clock: Clock,
        transition: TransitionConfig,
        source: StatusSource,
        client: Option<ClientHooks>,
    ) -> (Self, Option<tokio::sync::watch::Receiver<Uplinks>>) {
        // Session ids differ across server restarts, so a client never resumes a stranger's session.
        let seed = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(1, |d| d.as_secs() << 24);
        let (client, watch) = match client {
            Some(hooks) => {
                let uplinks = hooks.uplinks.as_ref().map(|w| w.borrow().clone()).unwrap_or_default();
                let mut policy = Policy::new(PolicyConfig {
                    min_gain: hooks.decision.min_gain,
                    dwell: Duration::from_secs(hooks.decision.dwell_secs),
                    fail_back_after: Duration::from_secs(hooks.decision.fail_back_after_secs),
                });
                for (i, u) in hooks.configured.iter().enumerate() {
                    let p = UplinkPolicy {
                        priority: i as u32,
                        cost_per_gib: u.cost_per_gib,
                        metered: u.metered,
                        cap_bytes: u.cap_gib.map(|g| (g * (1u64 << 30) as f64) as u64),
                    };
                    policy.add_uplink(&u.name, p);
                }
                let side = ClientSide {
                    dial: hooks.dial,
                    configured: hooks.configured.iter().map(|u| u.name.clone()).collect(),
                    costs: hooks.configured,
                    policy,
                    last_active: None,
                    failures: BTreeMap::new(),
                    last_decision: None,
                    user_switch: None,
                    uplinks,
                    switch_reply: None,
                    standby_dialing: None,
                    standby_failed: Default::default(),
                    unreachable: BTreeMap::new(),
                    volume: BTreeMap::new(),
                };
                (Some(side), hooks.uplinks)
            }
            None => (None, None),
        };
        let core = RelayCore::new(engine, transition, seed);
        (Shell { core, tun, clock, source, io: BTreeMap::new(), client }, watch)
    }

    /// Runs until told to stop, every sender is dropped, or the TUN fails.
    pub(super) async fn run(
        mut self,
        mut watch: Option<tokio::sync::watch::Receiver<Uplinks>>,
        mut msgs: mpsc::Receiver<EngineMsg>,
        room: Arc<Notify>,
    ) {
        let tun = self.tun.clone();
        let mut buf = self.core.engine_mut().tun_read_buffer(TUN_PACKET_MAX);
        if let Some(client) = &self.client {
            let _ = client.dial.try_send(DialRequest { resume: 0, uplink: None, avoid: None, standby: false });
        }
        let mut blocked = false;
        let mut sessions = 0;
        let mut trim_again: Option<Instant> = None;
        loop {
            let now = self.clock.now();
            let mut wait =
                self.core.poll_at(now).map_or(std::time::Duration::from_secs(3600), |at| self.clock.until(at));
            if let Some(at) = trim_again {
                wait = wait.min(self.clock.until(at));
            }
            if self.client.as_ref().is_some_and(|c| !c.configured.is_empty()) {
                // The decision task's timers (dwell, fail-back) are its own: look again soon.
                wait = wait.min(std::time::Duration::from_millis(DECISION_PERIOD.total_millis()));
            }
            let uplinks_changed = async {
                match watch.as_mut() {
                    Some(w) => w.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = msgs.recv() => {
                    let mut next = msg;
                    let mut handled = 0;
                    let stop = loop {
                        match next {
                            // Every sender is gone, or we were told to stop.
                            None | Some(EngineMsg::Shutdown) => break true,
                            Some(msg) => self.handle_msg(msg),
                        }
                        handled += 1;
                        if handled == BATCH {
                            break false;
                        }
                        match msgs.try_recv() {
                            Ok(msg) => next = Some(msg),
                            Err(_) => break false,
                        }
                    };
                    if stop {
                        break;
                    }
                }
                r = tun.recv_packet(&mut buf) => {
                    match r {
                        Ok(Some(len)) => self.tun_packet(&mut buf, len),
                        Ok(None) => {}
                        Err(err) => {
                            tracing::error!(%err, "reading the TUN device failed; stopping");
                            break;
                        }
                    }
                    for _ in 1..BATCH {
                        match tun.try_recv_packet(&mut buf) {
                            Ok(Some(len)) => self.tun_packet(&mut buf, len),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                }
                alive = uplinks_changed => {
                    match (alive, watch.as_ref()) {
                        (true, Some(w)) => {
                            let snapshot = w.borrow().clone();
                            self.uplinks_changed(snapshot);
                        }
                        _ => {
                            tracing::warn!("the uplink monitor stopped; link changes are noticed by the transport only");
                            watch = None;
                        }
                    }
                }
                _ = tokio::time::sleep(wait) => {}
                _ = room.notified(), if blocked => {}
            }
            self.core.poll(self.clock.now());
            while let Some(packet) = self.core.engine_mut().pop_tun_packet() {
                if let Err(err) = tun.send_packet(&packet).await {
                    // The kernel refused one packet (e.g. no buffer space); TCP retransmits, UDP is lossy.
                    tracing::debug!(%err, len = packet.len(), "writing a packet to the TUN failed");
                }
                self.core.engine_mut().recycle_tun_packet(packet);
            }
            blocked = self.flush();
            let now_live = self.core.sessions().count();
            let now = self.clock.now();
            if now_live < sessions || trim_again.is_some_and(|at| now >= at) {
                // A session ended: give back the memory the heap kept for its traffic, and once more a
                // little later, for what its path tasks free when they end.
                super::memory::release_freed_memory();
                trim_again = (now_live < sessions).then(|| now + TRIM_AGAIN_AFTER);
            }
            sessions = now_live;
        }
        self.core.shutdown(self.clock.now());
        self.flush();
        // Send the resets of the removed sessions' flows before the TUN goes away.
        while let Some(packet) = self.core.engine_mut().pop_tun_packet() {
            let _ = tun.send_packet(&packet).await;
        }
    }

    /// Hands the packet of `len` bytes at the front of `buf` to the engine. A large one goes as it is
    /// and `buf` becomes a recycled buffer (no copy of 64 KiB); a small one is copied, so `buf` stays
    /// whole and needs no zeroing before the next read.
    fn tun_packet(&mut self, buf: &mut Vec<u8>, len: usize) {
        let engine = self.core.engine_mut();
        let packet = if len >= HAND_OVER_AT {
            let mut packet = std::mem::replace(buf, engine.tun_read_buffer(TUN_PACKET_MAX));
            packet.truncate(len);
            packet
        } else {
            buf[..len].to_vec()
        };
        engine.handle_tun_packet(packet, self.clock.now());
    }

    fn handle_msg(&mut self, msg: EngineMsg) {
        let now = self.clock.now();
        match msg {
            EngineMsg::PathUp { path, join, peer, info, io } => {
                self.io.insert(path, PathIo { out: io.out, reader: io.reader, standby: io.standby });
                if let Some(client) = self.client.as_mut() {
                    if client.standby_dialing.is_some() && client.standby_dialing == info.uplink {
                        client.standby_dialing = None;
                    }
                    if let Some(uplink) = &info.uplink {
                        client.unreachable.remove(uplink);
                    }
                }
                match join {
                    Join::Hello { resume, virtual_ips } => {
                        self.core.server_path_up(path, info, peer, resume, virtual_ips, now)
                    }
                    Join::Welcome { session } => {
                        self.source.shared.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if let Ok(mut e) = self.source.shared.last_error.lock() {
                            *e = None;
                        }
                        let vips = self.source.virtual_ips.clone();
                        self.core.client_path_up(path, info, peer, session, vips, now)
                    }
                }
            }
            EngineMsg::PathBytes { path, bytes } => self.core.path_bytes(path, &bytes, now),
            EngineMsg::PathControl { path, body } => self.core.path_control(path, &body, now),
            EngineMsg::PathDown { path, reason } => {
                if self.source.role == Role::Client {
                    self.source.shared.note_error(format!("path lost: {reason}"));
                }
                self.note_failure(path);
                self.core.path_lost(path, &reason, now);
            }
            EngineMsg::PathRtt { path, rtt } => self.core.path_rtt(path, rtt),
            EngineMsg::PathStats { path, sample } => {
                let carried = self.core.path_stats(path, sample);
                if let Some(client) = self.client.as_mut() {
                    let uplink = self.core.paths().find(|(id, _)| *id == path).and_then(|(_, i)| i.uplink.clone());
                    if let Some(uplink) = uplink {
                        *client.volume.entry(uplink).or_default() += carried;
                    }
                }
            }
            EngineMsg::PathPeerLoss { path, loss } => self.core.path_peer_loss(path, loss),
            EngineMsg::DialFailed { error, standby: true } => {
                if let Some(client) = self.client.as_mut() {
                    if let Some(uplink) = client.standby_dialing.take() {
                        tracing::debug!(%uplink, %error, "no standby path on this uplink for now");
                        client.standby_failed.insert(uplink.clone(), self.clock.now());
                        client.unreachable.insert(uplink, error);
                    }
                }
            }
            EngineMsg::DialFailed { error, standby: false } => self.core.switch_failed(error),
            EngineMsg::Control(ControlRequest { request, reply }) => match request {
                Request::Status => {
                    let _ = reply.send(Response::Status(self.status()));
                }
                Request::Switch { uplink } => self.request_switch(uplink, reply),
                Request::Pin { uplink } => {
                    let answer = match self.client.as_mut() {
                        None => Response::Error { message: "only the client has uplinks to pin".into() },
                        Some(c) if uplink.as_ref().is_some_and(|u| !c.configured.contains(u)) => Response::Error {
                            message: format!("{} is not a configured uplink", uplink.unwrap_or_default()),
                        },
                        Some(c) => {
                            c.policy.pin(uplink.as_deref());
                            // Decide at once: a pin moves the session now.
                            c.last_decision = None;
                            Response::Done {
                                message: match uplink {
                                    Some(u) => format!("pinned to {u}: used whenever it is usable"),
                                    None => "unpinned: the decision task chooses".into(),
                                },
                            }
                        }
                    };
                    let _ = reply.send(answer);
                }
            },
            // Handled by the loop in run.
            EngineMsg::Shutdown => {}
        }
    }

    /// rtnetlink changed the uplinks: a path whose interface went down or lost the path's address is
    /// lost now, not when its transport times out.
    fn uplinks_changed(&mut self, snapshot: Uplinks) {
        let mut lost = Vec::new();
        for (id, info) in self.core.paths() {
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
        if let Some(client) = self.client.as_mut() {
            client.uplinks = snapshot;
            client.standby_failed.clear();
        }
        let now = self.clock.now();
        for (id, reason) in lost {
            self.note_failure(id);
            self.core.path_lost(id, &reason, now);
        }
    }

    /// `roamtun switch <uplink>`: checked here against the configuration and the uplinks' state, then
    /// carried out by the core; answered when the switch is done or has failed.
    fn request_switch(&mut self, uplink: String, reply: oneshot::Sender<Response>) {
        let refuse = |message: String| Response::Error { message };
        let Some(client) = self.client.as_mut() else {
            let _ = reply.send(refuse("only the client switches uplinks".into()));
            return;
        };
        if !client.configured.is_empty() && !client.configured.contains(&uplink) {
            let _ =
                reply.send(refuse(format!("{uplink} is not a configured uplink (uplinks = {:?})", client.configured)));
            return;
        }
        if let Some(u) = client.uplinks.get(&uplink).filter(|u| !u.usable()) {
            let _ = reply.send(refuse(format!("{uplink} is not usable now: {}", describe(u))));
            return;
        }
        match self.core.request_switch(uplink.clone(), self.clock.now()) {
            Ok(()) => {
                client.user_switch = Some(uplink.clone());
                client.switch_reply = Some((uplink, reply));
            }
            Err(message) => {
                let _ = reply.send(refuse(format!("cannot switch to {uplink}: {message}")));
            }
        }
    }

    /// Carries out the core's actions and hands queued output to the writers. Returns whether some
    /// output waits for room in a writer's queue.
    fn flush(&mut self) -> bool {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Dial(request) => {
                    if let Some(client) = self.client.as_mut() {
                        // It replaces whatever the dialer was doing, a standby attempt included.
                        client.standby_dialing = None;
                        if client.dial.try_send(request).is_err() {
                            tracing::warn!("the dialer is busy or gone; the request waits for its next round");
                        }
                    }
                }
                Action::ClosePath { path, last } => {
                    if let Some(io) = self.io.remove(&path) {
                        io.reader.abort();
                        // Whatever fits goes out; then the writer ends with the channel.
                        for chunk in last {
                            if io.out.try_send(chunk).is_err() {
                                break;
                            }
                        }
                    }
                }
                Action::SwitchDone(result) => {
                    if result.is_err() {
                        if let Some(c) = self.client.as_mut() {
                            c.user_switch = None;
                        }
                    }
                    let Some((uplink, reply)) = self.client.as_mut().and_then(|c| c.switch_reply.take()) else {
                        continue;
                    };
                    let _ = reply.send(match result {
                        Ok(report) => Response::Switched(SwitchRecord::new(&report, report.finished, unix_ms())),
                        Err(err) => Response::Error { message: format!("cannot switch to {uplink}: {err}") },
                    });
                }
            }
        }
        let mut blocked = false;
        let mut dead = Vec::new();
        loop {
            for path in self.core.paths_with_output() {
                let Some(io) = self.io.get(&path) else { continue };
                let depth = self.core.writer_depth(path, io.out.max_capacity());
                while let Some(chunk) = self.core.pop_path_output(path) {
                    if io.out.max_capacity() - io.out.capacity() >= depth {
                        // As full as it may be: the writer's "room" signal brings us back.
                        self.core.unpop_path_output(path, chunk);
                        blocked = true;
                        break;
                    }
                    match io.out.try_send(chunk) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(chunk)) => {
                            self.core.unpop_path_output(path, chunk);
                            blocked = true;
                            break;
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            dead.push(path);
                            break;
                        }
                    }
                }
            }
            // Writers with room take more of what the engine has queued, until one is full.
            if blocked || !dead.is_empty() || !self.core.refill() {
                break;
            }
        }
        let now = self.clock.now();
        for path in dead {
            self.core.path_lost(path, &PathLoss::WriterStopped, now);
        }
        for (path, io) in &self.io {
            io.standby.store(self.core.is_standby(*path), std::sync::atomic::Ordering::Relaxed);
        }
        self.search();
        self.decide();
        blocked
    }

    /// Counts a lost path against its uplink's reliability.
    fn note_failure(&mut self, path: PathId) {
        let Some(uplink) = self.core.paths().find(|(id, _)| *id == path).and_then(|(_, i)| i.uplink.clone()) else {
            return;
        };
        let now = self.clock.now();
        if let Some(client) = self.client.as_mut() {
            client.failures.entry(uplink).or_default().push_back(now);
        }
    }

    /// The decision task, at most every 100 ms: feeds the policy what Check and Search know, tells
    /// the core which standby to resume on, and starts a planned switch when the policy says so.
    fn decide(&mut self) {
        let now = self.clock.now();
        let Some(client) = self.client.as_mut() else { return };
        if client.configured.is_empty() || client.last_decision.is_some_and(|t| now < t + DECISION_PERIOD) {
            return;
        }
        client.last_decision = Some(now);
        let session = self.core.sessions().next().map(|s| (s.switching, s.path.and_then(|p| p.uplink.clone())));
        let Some((switching, active)) = session else { return };
        if let Some(now_on) = active.as_deref().filter(|a| client.last_active.as_deref() != Some(*a)) {
            let by_user = client.user_switch.take().as_deref() == Some(now_on);
            client.policy.switched(now_on, by_user, now);
        }
        client.last_active = active.clone();
        for name in &client.configured {
            let failures = client.failures.entry(name.clone()).or_default();
            while failures.front().is_some_and(|t| now >= *t + FAILURE_MEMORY) {
                failures.pop_front();
            }
            let health = Health {
                // Up, with an address, and a path (current or warm standby) authenticated over it.
                usable: client.uplinks.get(name).is_some_and(|u| u.usable()) && self.core.has_path_on(name),
                rtt: self.core.uplink_rtt(name),
                loss: self.core.uplink_loss(name).unwrap_or(0.0),
                failures: failures.len() as u32,
                bandwidth: self.core.uplink_bandwidth(name),
                used_bytes: client.volume.get(name).copied().unwrap_or(0),
            };
            client.policy.observe(name, health, now);
        }
        let mut order = client.configured.clone();
        order.sort_by(|a, b| {
            let score = |n: &String| client.policy.score(n).map_or(f64::MIN, |(s, _)| s);
            score(b).total_cmp(&score(a))
        });
        self.core.set_preference(order);
        if switching || active.is_none() || client.switch_reply.is_some() {
            return;
        }
        if let Decision::Switch { to, planned: true, why } = client.policy.decide(now) {
            match self.core.request_switch(to.clone(), now) {
                Ok(()) => tracing::info!(%to, %why, "decision: planned switch"),
                Err(err) => tracing::debug!(%to, %err, "the decided switch cannot start now"),
            }
        }
    }

    /// Search: keeps a warm standby path on every usable configured uplink the session does not use,
    /// one dial at a time, and never while a switch or another dial is under way.
    fn search(&mut self) {
        let now = self.clock.now();
        let Some(client) = self.client.as_mut() else { return };
        if client.standby_dialing.is_some() {
            return;
        }
        let usable: Vec<String> = client
            .configured
            .iter()
            .filter(|u| {
                let failed_lately = client.standby_failed.get(*u).is_some_and(|at| now < *at + STANDBY_RETRY);
                client.uplinks.get(*u).is_some_and(|l| l.usable()) && !failed_lately
            })
            .cloned()
            .collect();
        let Some(uplink) = self.core.standby_missing(&usable).first().map(|u| (*u).clone()) else { return };
        let Some(session) = self.core.sessions().next().map(|s| s.id.0) else { return };
        let request = DialRequest { resume: session, uplink: Some(uplink.clone()), avoid: None, standby: true };
        if client.dial.try_send(request).is_ok() {
            client.standby_dialing = Some(uplink);
        }
    }

    // ---- status --------------------------------------------------------------------------------

    fn status(&self) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        let engine = self.core.engine();
        let live = engine.session_status();
        let source = &self.source;
        let now = self.clock.now();
        let unix_now = unix_ms();
        let mut peers = Vec::new();
        for (name, key, vips) in &source.known_peers {
            let session = self.core.sessions().find(|s| &s.peer.public_key == key);
            let mut p = PeerStatus {
                name: name.clone(),
                public_key: key.clone(),
                connected: false,
                virtual_ips: vips.clone(),
                local_address: None,
                uplink: None,
                remote_address: None,
                connected_secs: None,
                tcp_flows: 0,
                udp_flows: 0,
                queued_bytes: 0,
                counters: Default::default(),
                connects: 0,
                last_error: None,
                session: None,
                epoch: None,
                switching: false,
                rtt_ms: None,
                stale_frames_dropped: 0,
                switches: Vec::new(),
            };
            if let Some(s) = session {
                p.connected = s.path.is_some() && !s.switching;
                p.session = Some(s.id.0);
                p.epoch = Some(s.epoch);
                p.switching = s.switching;
                p.rtt_ms = s.rtt.map(|r| r.as_secs_f64() * 1000.0);
                p.stale_frames_dropped = s.stale_frames;
                p.switches = s.switches.iter().map(|r| SwitchRecord::new(r, now, unix_now)).collect();
                p.connected_secs = Some((now - s.since).secs());
                if let Some(info) = s.path {
                    p.local_address = info.local;
                    p.uplink =
                        info.uplink.clone().or_else(|| info.local.and_then(|a| super::tun::interface_of(a.ip())));
                    p.remote_address = info.remote;
                }
                if let Some(l) = live.iter().find(|l| l.id == s.id) {
                    p.tcp_flows = l.tcp_flows;
                    p.udp_flows = l.udp_flows;
                    p.queued_bytes = l.queued_bytes;
                    p.counters = (&l.counters).into();
                }
                p.counters.frames_malformed += s.control_malformed;
            }
            if source.role == Role::Client {
                p.connects = source.shared.connects.load(Relaxed);
                p.last_error = source.shared.last_error.lock().ok().and_then(|e| e.clone());
            }
            peers.push(p);
        }
        Status {
            role: match source.role {
                Role::Client => "client".into(),
                Role::Server => "server".into(),
            },
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: source.started.elapsed().as_secs(),
            tun: source.tun.clone(),
            virtual_ips: source.virtual_ips.clone(),
            tcp_flows: live.iter().map(|s| s.tcp_flows).sum(),
            udp_flows: live.iter().map(|s| s.udp_flows).sum(),
            bytes_sent: live.iter().map(|s| s.counters.bytes_sent).sum(),
            bytes_received: live.iter().map(|s| s.counters.bytes_received).sum(),
            peers,
            tun_counters: engine.tun_counters().into(),
            handshakes_refused: source.shared.handshakes_refused.load(Relaxed),
            uplinks: self.uplink_status(),
        }
    }

    /// Client: each configured uplink (or, with none configured, the one the session uses).
    fn uplink_status(&self) -> Vec<UplinkStatus> {
        let Some(client) = &self.client else { return Vec::new() };
        let active: Option<String> = self.core.sessions().next().and_then(|s| s.path.and_then(|p| p.uplink.clone()));
        let cost = |name: &str| client.costs.iter().find(|u| u.name == name);
        let names: Vec<String> =
            if client.configured.is_empty() { active.iter().cloned().collect() } else { client.configured.clone() };
        names
            .into_iter()
            .map(|name| {
                let u = client.uplinks.get(&name);
                let state = match u {
                    _ if active.as_deref() == Some(name.as_str()) => "active",
                    _ if self.core.has_path_on(&name) => "standby",
                    Some(u) if u.usable() && client.unreachable.contains_key(&name) => "unusable",
                    Some(u) if u.usable() => "up",
                    Some(_) => "down",
                    None => "absent",
                };
                let rtt_ms = self.core.uplink_rtt(&name).map(|r| r.as_secs_f64() * 1000.0);
                let score = client.policy.score(&name);
                let kind = cost(&name)
                    .and_then(|c| c.kind.clone())
                    .unwrap_or_else(|| crate::config::uplink_kind(&name).into());
                UplinkStatus {
                    kind,
                    addresses: u.map(|u| u.addresses.clone()).unwrap_or_default(),
                    state: state.into(),
                    rtt_ms,
                    jitter_ms: self.core.uplink_jitter(&name).map(|j| j.as_secs_f64() * 1000.0),
                    loss: self.core.uplink_loss(&name),
                    bandwidth_mbps: self.core.uplink_bandwidth(&name).map(|b| b * 8.0 / 1e6),
                    used_bytes: client.volume.get(&name).copied().unwrap_or(0),
                    cap_bytes: cost(&name).and_then(|c| c.cap_gib).map(|g| (g * (1u64 << 30) as f64) as u64),
                    score: score.as_ref().map(|(s, _)| *s),
                    why: match (score, client.unreachable.get(&name)) {
                        (Some((_, why)), _) => why,
                        (None, Some(error)) if state == "unusable" => format!("cannot reach the server: {error}"),
                        (None, _) => String::new(),
                    },
                    metered: cost(&name).is_some_and(|c| c.metered),
                    cost_per_gib: cost(&name).map_or(0.0, |c| c.cost_per_gib),
                    pinned: client.policy.pinned() == Some(name.as_str()),
                    name,
                }
            })
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn describe(u: &roamtun_netlink::Uplink) -> String {
    match (u.admin_up, u.lower_up, u.addresses.is_empty()) {
        (false, _, _) => "administratively down".into(),
        (true, false, _) => "no carrier".into(),
        (true, true, true) => "no address".into(),
        _ => "usable".into(),
    }
}
