//! The engine task: the one place where the TUN, the relay paths, the [`Engine`] and the transition
//! state machines meet. It owns no socket itself; readers and writers of paths run as their own tasks
//! and talk to it through [`EngineMsg`].
//!
//! What it adds to the state machines is the path bookkeeping:
//! * a session's stream frames go out on, and are accepted from, its *current* path only. A path
//!   becomes current at [`Event::ResumeOn`]; bytes from any other path are late frames of an old
//!   epoch and are dropped (counted as `stale_frames_dropped`).
//! * control messages (CONTROL frames) go out on the path the machine names, behind whatever was
//!   already written there, so a LAST_MESSAGE_BEFORE_REDIRECTION follows every stream byte of its path
//!   and an ALL_REDIRECTED precedes every stream byte of the new one.
//! * [`Event::StopSending`] stops handing the engine's output to any path (the engine keeps producing
//!   up to its out budget, then the apps see backpressure) and holds datagrams aside.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant as StdInstant, SystemTime};

use tokio::sync::{mpsc, oneshot, Notify};

use super::transport::close_code;
use super::{ClientHooks, DialRequest, EngineMsg, Join, PathInfo, PeerInfo, StatusSource, Tun, Uplinks};
use crate::clock::Clock;
use crate::control::{ControlRequest, PeerStatus, Request, Response, Status, SwitchRecord, SwitchStep, UplinkStatus};
use crate::relay::engine::{Engine, Role, SessionError, SessionId};
use crate::transition::{
    ClientTransition, ControlMessage, Event, PathId, ServerTransition, StreamOffset, SwitchKind, SwitchSummary,
    TimerReason, TransitionConfig,
};
use crate::wire::{Frame, PROTOCOL_VERSION};
use roamtun_stack::Instant;

/// Most packets or messages handled per wake-up, so one busy source cannot starve the others.
const BATCH: usize = 64;
/// Switches kept for `roamtun status`.
const HISTORY: usize = 8;

/// The transition machine of a session, by role.
enum Machine {
    Client(ClientTransition),
    Server(ServerTransition),
}

impl Machine {
    fn poll_event(&mut self) -> Option<Event> {
        match self {
            Machine::Client(m) => m.poll_event(),
            Machine::Server(m) => m.poll_event(),
        }
    }

    fn poll_transmit(&mut self) -> Option<(PathId, ControlMessage)> {
        match self {
            Machine::Client(m) => m.poll_transmit(),
            Machine::Server(m) => m.poll_transmit(),
        }
    }

    fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        match self {
            Machine::Client(m) => m.poll_timeout(),
            Machine::Server(m) => m.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Machine::Client(m) => m.handle_timeout(now),
            Machine::Server(m) => m.handle_timeout(now),
        }
    }

    fn handle_path_lost(&mut self, path: PathId, now: Instant) {
        match self {
            Machine::Client(m) => m.handle_path_lost(path, now),
            Machine::Server(m) => m.handle_path_lost(path, now),
        }
    }

    fn is_switching(&self) -> bool {
        match self {
            Machine::Client(m) => m.is_switching(),
            Machine::Server(m) => m.is_switching(),
        }
    }

    fn epoch(&self) -> u32 {
        match self {
            Machine::Client(m) => m.epoch().0,
            Machine::Server(m) => m.epoch().0,
        }
    }
}

/// A switch between its first step and [`Event::SwitchDone`].
struct Progress {
    /// When stream data stopped going out (StopSending).
    stopped: StdInstant,
    from_uplink: Option<String>,
    resent_before: u64,
    held_before: u64,
    dropped_before: u64,
    /// When stream data flowed again (ResumeOn).
    resumed: Option<StdInstant>,
}

struct SessionState {
    peer: PeerInfo,
    machine: Machine,
    /// Where stream frames go and come from; `None` while the session has no path.
    current: Option<PathId>,
    /// False between StopSending and ResumeOn.
    sending: bool,
    /// A chunk taken from the engine that the current path's writer had no room for yet.
    pending: Option<Vec<u8>>,
    /// The peer's received offsets of an unexpected switch, gathered from [`Event::Resend`].
    resends: Vec<(u32, u64)>,
    progress: Option<Progress>,
    history: VecDeque<SwitchRecord>,
    since: StdInstant,
    stale_frames: u64,
    control_malformed: u64,
}

struct PathHandle {
    session: SessionId,
    out: mpsc::Sender<Vec<u8>>,
    /// Control frames waiting for room in `out`; nothing else goes to the path before them.
    backlog: VecDeque<Vec<u8>>,
    reader: tokio::task::AbortHandle,
    info: PathInfo,
}

pub(super) struct Shell {
    engine: Engine,
    tun: Arc<Tun>,
    clock: Clock,
    transition: TransitionConfig,
    source: StatusSource,
    sessions: BTreeMap<SessionId, SessionState>,
    paths: BTreeMap<PathId, PathHandle>,
    next_session: u64,
    client: Option<ClientSide>,
    /// The path just lost and where it ran: the switch it starts records where it came from.
    last_lost: Option<(PathId, String)>,
}

struct ClientSide {
    dial: mpsc::Sender<DialRequest>,
    configured: Vec<String>,
    uplinks: Uplinks,
    /// A `roamtun switch` waiting for its path, then for its switch.
    switch_waiter: Option<(String, oneshot::Sender<Response>)>,
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
                (
                    Some(ClientSide { dial: hooks.dial, configured: hooks.configured, uplinks, switch_waiter: None }),
                    hooks.uplinks,
                )
            }
            None => (None, None),
        };
        let shell = Shell {
            engine,
            tun,
            clock,
            transition,
            source,
            sessions: BTreeMap::new(),
            paths: BTreeMap::new(),
            next_session: seed,
            client,
            last_lost: None,
        };
        (shell, watch)
    }

    /// Runs until told to stop, every sender is dropped, or the TUN fails.
    pub(super) async fn run(
        mut self,
        mut watch: Option<tokio::sync::watch::Receiver<Uplinks>>,
        mut msgs: mpsc::Receiver<EngineMsg>,
        room: Arc<Notify>,
    ) {
        let tun = self.tun.clone();
        let mut buf = vec![0u8; 65536 + 64];
        if let Some(client) = &self.client {
            let _ = client.dial.try_send(DialRequest { resume: 0, uplink: None, avoid: None });
        }
        loop {
            let now = self.clock.now();
            let next = [self.engine.poll_at(now), self.next_timer()].into_iter().flatten().min();
            let wait = next.map_or(std::time::Duration::from_secs(3600), |at| self.clock.until(at));
            let blocked = self.blocked();
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
                r = tun.recv(&mut buf) => {
                    match r {
                        Ok(n) => self.engine.handle_tun_packet(buf[..n].to_vec(), self.clock.now()),
                        Err(err) => {
                            tracing::error!(%err, "reading the TUN device failed; stopping");
                            break;
                        }
                    }
                    for _ in 1..BATCH {
                        match tun.try_recv(&mut buf) {
                            Ok(n) => self.engine.handle_tun_packet(buf[..n].to_vec(), self.clock.now()),
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
            self.handle_timers();
            let now = self.clock.now();
            self.engine.poll(now);
            while let Some(packet) = self.engine.pop_tun_packet() {
                if let Err(err) = tun.send(&packet).await {
                    // The kernel refused one packet (e.g. no buffer space); TCP retransmits, UDP is lossy.
                    tracing::debug!(%err, len = packet.len(), "writing a packet to the TUN failed");
                }
            }
            self.flush();
        }
        // Say goodbye, so the peer ends the session now instead of waiting for us to come back.
        let goodbye = encode(&Frame::Close { code: close_code::SHUTDOWN, reason: "the daemon is stopping" });
        for p in self.paths.values_mut() {
            p.backlog.push_back(goodbye.clone());
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            self.end_session(id, "the daemon is stopping");
        }
        // Send the resets of the removed sessions' flows before the TUN goes away.
        while let Some(packet) = self.engine.pop_tun_packet() {
            let _ = tun.send(&packet).await;
        }
    }

    fn handle_msg(&mut self, msg: EngineMsg) {
        match msg {
            EngineMsg::PathUp { path, join, peer, info, io } => {
                let handle = PathHandle {
                    session: SessionId(0),
                    out: io.out,
                    backlog: VecDeque::new(),
                    reader: io.reader,
                    info,
                };
                match join {
                    Join::Hello { resume, virtual_ips } => self.server_path_up(path, handle, peer, resume, virtual_ips),
                    Join::Welcome { session } => self.client_path_up(path, handle, peer, session),
                }
            }
            EngineMsg::PathBytes { path, bytes } => self.path_bytes(path, &bytes),
            EngineMsg::PathControl { path, body } => self.path_control(path, &body),
            EngineMsg::PathDown { path, reason } => self.path_lost(path, &reason),
            EngineMsg::DialFailed { error } => {
                if let Some((uplink, reply)) = self.client.as_mut().and_then(|c| c.switch_waiter.take()) {
                    let _ = reply.send(Response::Error { message: format!("cannot switch to {uplink}: {error}") });
                }
            }
            EngineMsg::Control(ControlRequest { request, reply }) => match request {
                Request::Status => {
                    let _ = reply.send(Response::Status(self.status()));
                }
                Request::Switch { uplink } => self.request_switch(uplink, reply),
            },
            // Handled by the loop in run.
            EngineMsg::Shutdown => {}
        }
    }

    // ---- paths joining -------------------------------------------------------------------------

    /// Server: a client's authenticated HELLO. It continues its session when it names it, else it
    /// starts a new one (replacing any session of the same key: the client restarted or gave up).
    fn server_path_up(
        &mut self,
        path: PathId,
        mut handle: PathHandle,
        peer: PeerInfo,
        resume: u64,
        virtual_ips: Vec<IpAddr>,
    ) {
        let existing = self
            .sessions
            .iter()
            .find(|(id, s)| id.0 == resume && resume != 0 && s.peer.public_key == peer.public_key)
            .map(|(id, _)| *id);
        let sid = match existing {
            Some(sid) => {
                tracing::info!(peer = %peer.name, session = sid.0, ?path, remote = ?handle.info.remote, "client opened a new path");
                sid
            }
            None => {
                let stale: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.peer.public_key == peer.public_key)
                    .map(|(id, _)| *id)
                    .collect();
                for old in stale {
                    self.end_session(old, "the client started a new session");
                }
                self.next_session += 1;
                let sid = SessionId(self.next_session);
                if let Err(err) = self.engine.add_session(sid, virtual_ips) {
                    tracing::warn!(peer = %peer.name, %err, "session refused");
                    let reason = err.to_string();
                    handle.backlog.push_back(encode(&Frame::Close { code: close_code::SESSION, reason: &reason }));
                    self.paths.insert(path, handle);
                    self.flush_backlog(path);
                    self.close_path(path);
                    return;
                }
                if resume != 0 {
                    tracing::info!(peer = %peer.name, resume, session = sid.0, "the client's session is gone (switch timeout or restart); a new one starts");
                } else {
                    tracing::info!(peer = %peer.name, session = sid.0, remote = ?handle.info.remote, "session up");
                }
                let machine = Machine::Server(ServerTransition::new(self.transition, sid.0, path));
                self.sessions.insert(sid, SessionState::new(peer, machine, Some(path)));
                sid
            }
        };
        handle.session = sid;
        handle.backlog.push_back(encode(&Frame::Welcome { version: PROTOCOL_VERSION, session_id: sid.0 }));
        self.paths.insert(path, handle);
    }

    /// Client: a path the dialer opened, in the session the server's WELCOME named.
    fn client_path_up(&mut self, path: PathId, mut handle: PathHandle, peer: PeerInfo, session: u64) {
        let now = self.clock.now();
        self.source.shared.connects.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut e) = self.source.shared.last_error.lock() {
            *e = None;
        }
        let current = self.sessions.keys().next().copied();
        if let Some(old) = current.filter(|old| old.0 != session) {
            tracing::warn!(
                old = old.0,
                new = session,
                "the server no longer knows our session (switch timeout or restart); its connections are reset"
            );
            self.end_session(old, "the server lost the session");
        }
        let sid = SessionId(session);
        handle.session = sid;
        let uplink = handle.info.uplink.clone();
        self.paths.insert(path, handle);
        let Some(state) = self.sessions.get_mut(&sid) else {
            if let Err(err) = self.engine.add_session(sid, self.source.virtual_ips.clone()) {
                tracing::error!(%err, "cannot start the session");
                self.close_path(path);
                return;
            }
            tracing::info!(session = session, ?path, uplink = ?uplink, "connected to the server");
            let machine = Machine::Client(ClientTransition::new(self.transition, session, path));
            self.sessions.insert(sid, SessionState::new(peer, machine, Some(path)));
            return;
        };
        let Machine::Client(machine) = &mut state.machine else { return };
        let received = offsets(&self.engine, sid);
        match machine.resume_on(path, &received, now) {
            // CNAPT-16*..17*: SWITCH_UNEXPECTED goes out on the new path.
            Ok(epoch) => tracing::info!(?path, uplink = ?uplink, epoch = epoch.0, "resuming the session on a new path"),
            Err(_) => {
                let wanted = self.client.as_ref().and_then(|c| c.switch_waiter.as_ref()).map(|(u, _)| u.clone());
                if wanted.is_some() && wanted == uplink {
                    // The user's planned switch: the new path is up and authenticated (make-before-break).
                    match machine.request_switch(path, now) {
                        Ok(r) => tracing::info!(?path, uplink = ?uplink, request = ?r, "planned switch started"),
                        Err(err) => self.reply_switch(Err(err.to_string())),
                    }
                } else {
                    tracing::debug!(?path, "a path nobody needs any more; closing it");
                    self.close_path(path);
                }
            }
        }
        self.drive(sid);
    }

    // ---- bytes and messages from paths ---------------------------------------------------------

    fn path_bytes(&mut self, path: PathId, bytes: &[u8]) {
        let Some(sid) = self.paths.get(&path).map(|p| p.session) else { return };
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        if state.current != Some(path) {
            // Late frames of an older epoch: the stream offsets were settled without them.
            state.stale_frames += 1;
            return;
        }
        if let Err(err) = self.engine.handle_session_bytes(sid, bytes, self.clock.now()) {
            match err {
                SessionError::PeerClosed { .. } => {
                    self.end_session(sid, &err.to_string());
                    // The peer ended the session on purpose (e.g. the server stopped): the apps were
                    // reset; a new session serves the next ones.
                    self.dial(DialRequest { resume: 0, uplink: None, avoid: None });
                }
                other => tracing::warn!(session = sid.0, err = %other, "session input refused"),
            }
        }
    }

    fn path_control(&mut self, path: PathId, body: &[u8]) {
        let Some(sid) = self.paths.get(&path).map(|p| p.session) else { return };
        let now = self.clock.now();
        let received = offsets(&self.engine, sid);
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        let msg = match ControlMessage::decode(body) {
            Ok(msg) => msg,
            Err(err) => {
                state.control_malformed += 1;
                tracing::warn!(session = sid.0, ?path, %err, "malformed transition message dropped");
                return;
            }
        };
        tracing::debug!(session = sid.0, ?path, msg = msg.name(), epoch = msg.epoch().0, "transition message");
        match &mut state.machine {
            Machine::Client(m) => m.handle_message(path, msg, now),
            Machine::Server(m) => m.handle_message(path, msg, &received, now),
        }
        self.drive(sid);
    }

    /// A path failed (its reader or writer ended, or its uplink went away).
    fn path_lost(&mut self, path: PathId, reason: &str) {
        let Some(handle) = self.paths.remove(&path) else { return };
        handle.reader.abort();
        let sid = handle.session;
        tracing::info!(session = sid.0, ?path, uplink = ?handle.info.uplink, %reason, "path lost");
        self.last_lost = Some((path, label(&handle.info)));
        if let Some(state) = self.sessions.get_mut(&sid) {
            if self.source.role == Role::Client {
                self.source.shared.note_error(format!("path lost: {reason}"));
            }
            state.machine.handle_path_lost(path, self.clock.now());
            self.drive(sid);
        }
    }

    /// rtnetlink changed the uplinks: a path whose interface went down or lost the path's address is
    /// lost now, not when its transport times out.
    fn uplinks_changed(&mut self, snapshot: Uplinks) {
        let mut lost = Vec::new();
        for (&id, p) in &self.paths {
            let Some(local) = p.info.local else { continue };
            let holder = match &p.info.uplink {
                Some(name) => snapshot.get(name),
                None => snapshot.values().find(|u| u.addresses.contains(&local.ip())),
            };
            let reason = match holder {
                None => "its interface is gone or lost the address".to_string(),
                Some(u) if !u.admin_up || !u.lower_up => format!("{} is down", u.name),
                Some(u) if !u.addresses.contains(&local.ip()) => format!("{} lost {}", u.name, local.ip()),
                Some(_) => continue,
            };
            lost.push((id, reason));
        }
        if let Some(client) = self.client.as_mut() {
            client.uplinks = snapshot;
        }
        for (id, reason) in lost {
            self.path_lost(id, &reason);
        }
    }

    // ---- the transition machines' outputs ------------------------------------------------------

    /// Carries out what a session's machine asks for until it has nothing more to say.
    fn drive(&mut self, sid: SessionId) {
        loop {
            let Some(state) = self.sessions.get_mut(&sid) else { return };
            if let Some((path, msg)) = state.machine.poll_transmit() {
                tracing::debug!(session = sid.0, ?path, msg = msg.name(), "transition message sent");
                if let Some(p) = self.paths.get_mut(&path) {
                    p.backlog.push_back(encode(&Frame::Control { body: &msg.to_bytes() }));
                }
                continue;
            }
            let Some(event) = state.machine.poll_event() else { return };
            self.act(sid, event);
        }
    }

    fn act(&mut self, sid: SessionId, event: Event) {
        let now = self.clock.now();
        let Some(state) = self.sessions.get_mut(&sid) else { return };
        match event {
            Event::StopSending { path } => {
                if state.current == Some(path) {
                    state.sending = false;
                }
                self.engine.hold_datagrams(sid);
                if state.progress.is_none() {
                    let c = self.engine.session_counters(sid).unwrap_or_default();
                    state.progress = Some(Progress {
                        stopped: StdInstant::now(),
                        from_uplink: self.paths.get(&path).map(|p| label(&p.info)).or_else(|| {
                            self.last_lost.as_ref().filter(|(lost, _)| *lost == path).map(|(_, l)| l.clone())
                        }),
                        resent_before: c.bytes_resent,
                        held_before: c.datagrams_held,
                        dropped_before: c.datagrams_dropped_switching,
                        resumed: None,
                    });
                }
            }
            Event::RetireOldPath { path } => self.close_path(path),
            Event::ResumeNeeded { candidate } => {
                let candidate = candidate.filter(|p| self.paths.contains_key(p));
                let received = offsets(&self.engine, sid);
                if let (Some(path), Machine::Client(m)) = (candidate, &mut state.machine) {
                    if m.resume_on(path, &received, now).is_ok() {
                        return;
                    }
                }
                let avoid = state.progress.as_ref().and_then(|p| p.from_uplink.clone());
                self.dial(DialRequest { resume: sid.0, uplink: None, avoid });
            }
            Event::Resend { stream, from } => state.resends.push((stream, from)),
            Event::ResumeOn { path, epoch, replay } => {
                state.current = Some(path);
                state.sending = true;
                if replay {
                    // What was queued for the old path is regenerated from the replay buffers.
                    state.pending = None;
                    let resends = std::mem::take(&mut state.resends);
                    self.engine.resume_session(sid, &resends, now);
                }
                state.resends.clear();
                self.engine.release_datagrams(sid);
                if let Some(p) = state.progress.as_mut() {
                    p.resumed = Some(StdInstant::now());
                }
                tracing::debug!(session = sid.0, ?path, epoch = epoch.0, replay, "session on its new path");
                let others: Vec<PathId> =
                    self.paths.iter().filter(|(id, p)| p.session == sid && **id != path).map(|(id, _)| *id).collect();
                for old in others {
                    self.close_path(old);
                }
            }
            Event::SwitchDone(summary) => {
                let record = self.record_switch(sid, summary);
                if self.source.role == Role::Client {
                    self.reply_switch(Ok(record));
                }
            }
            Event::SessionExpired { reason } => {
                let why = match reason {
                    crate::transition::ExpiryReason::SwitchTimeout => {
                        "the client did not come back within the switch timeout"
                    }
                    crate::transition::ExpiryReason::ClientGaveUp => "no path to the server within the switch timeout",
                };
                self.end_session(sid, why);
                if self.client.is_some() {
                    // The apps were reset; a new session serves the next ones once the server is back.
                    self.dial(DialRequest { resume: 0, uplink: None, avoid: None });
                }
            }
        }
    }

    fn record_switch(&mut self, sid: SessionId, summary: SwitchSummary) -> SwitchRecord {
        let counters = self.engine.session_counters(sid).unwrap_or_default();
        let to_uplink = self.paths.get(&summary.to).map(|p| label(&p.info));
        let state = self.sessions.get_mut(&sid).expect("a live session switched");
        let progress = state.progress.take();
        let first = summary.timeline.first().map_or(0, |e| e.at.total_micros());
        let last = summary.timeline.last().map_or(0, |e| e.at.total_micros());
        let record = SwitchRecord {
            kind: match summary.kind {
                SwitchKind::Planned => "planned".into(),
                SwitchKind::Unexpected => "unexpected".into(),
            },
            from: progress.as_ref().and_then(|p| p.from_uplink.clone()),
            to: to_uplink,
            epoch: summary.epoch.0,
            finished_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            duration_ms: (last - first) as f64 / 1000.0,
            stall_ms: progress
                .as_ref()
                .and_then(|p| p.resumed.map(|r| r.duration_since(p.stopped).as_secs_f64() * 1000.0))
                .unwrap_or(0.0),
            bytes_replayed: counters.bytes_resent - progress.as_ref().map_or(0, |p| p.resent_before),
            datagrams_held: counters.datagrams_held - progress.as_ref().map_or(0, |p| p.held_before),
            datagrams_dropped: counters.datagrams_dropped_switching - progress.as_ref().map_or(0, |p| p.dropped_before),
            steps: summary
                .timeline
                .iter()
                .map(|e| SwitchStep { step: e.step.to_string(), at_ms: (e.at.total_micros() - first) as f64 / 1000.0 })
                .collect(),
        };
        tracing::info!(
            peer = %state.peer.name,
            kind = %record.kind,
            from = record.from.as_deref().unwrap_or("?"),
            to = record.to.as_deref().unwrap_or("?"),
            epoch = record.epoch,
            stall_ms = format!("{:.1}", record.stall_ms),
            bytes_replayed = record.bytes_replayed,
            datagrams_held = record.datagrams_held,
            datagrams_dropped = record.datagrams_dropped,
            "uplink switch"
        );
        if state.history.len() == HISTORY {
            state.history.pop_front();
        }
        state.history.push_back(record.clone());
        record
    }

    // ---- user requests -------------------------------------------------------------------------

    /// `roamtun switch <uplink>`: open a path on `uplink`, then switch to it (planned). Answered when
    /// the switch is done or has failed.
    fn request_switch(&mut self, uplink: String, reply: oneshot::Sender<Response>) {
        let Some(client) = self.client.as_mut() else {
            let _ = reply.send(Response::Error { message: "only the client switches uplinks".into() });
            return;
        };
        let refuse = |message: String| Response::Error { message };
        if !client.configured.is_empty() && !client.configured.contains(&uplink) {
            let _ =
                reply.send(refuse(format!("{uplink} is not a configured uplink (uplinks = {:?})", client.configured)));
            return;
        }
        if let Some(u) = client.uplinks.get(&uplink).filter(|u| !u.usable()) {
            let _ = reply.send(refuse(format!("{uplink} is not usable now: {}", describe(u))));
            return;
        }
        if client.switch_waiter.is_some() {
            let _ = reply.send(refuse("another switch request is in progress".into()));
            return;
        }
        let Some((&sid, state)) = self.sessions.iter().next() else {
            let _ = reply.send(refuse("no session with the server yet".into()));
            return;
        };
        if state.machine.is_switching() {
            let _ = reply.send(refuse("the session is switching already; try again in a moment".into()));
            return;
        }
        let on = state.current.and_then(|p| self.paths.get(&p)).and_then(|p| p.info.uplink.clone());
        if on.as_deref() == Some(uplink.as_str()) {
            let _ = reply.send(refuse(format!("the session already uses {uplink}")));
            return;
        }
        client.switch_waiter = Some((uplink.clone(), reply));
        self.dial(DialRequest { resume: sid.0, uplink: Some(uplink), avoid: None });
    }

    fn reply_switch(&mut self, result: Result<SwitchRecord, String>) {
        let Some((uplink, reply)) = self.client.as_mut().and_then(|c| c.switch_waiter.take()) else { return };
        let _ = reply.send(match result {
            Ok(record) => Response::Switched(record),
            Err(message) => Response::Error { message: format!("cannot switch to {uplink}: {message}") },
        });
    }

    fn dial(&mut self, request: DialRequest) {
        if let Some(client) = &self.client {
            if client.dial.try_send(request).is_err() {
                tracing::warn!("the dialer is busy or gone; the request waits for its next round");
            }
        }
    }

    // ---- timers, output, teardown --------------------------------------------------------------

    fn next_timer(&self) -> Option<Instant> {
        self.sessions.values().filter_map(|s| s.machine.poll_timeout().map(|(at, _)| at)).min()
    }

    fn handle_timers(&mut self) {
        let now = self.clock.now();
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.machine.poll_timeout().is_some_and(|(at, _)| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for sid in due {
            if let Some(state) = self.sessions.get_mut(&sid) {
                state.machine.handle_timeout(now);
            }
            self.drive(sid);
        }
    }

    /// Whether some output waits for room in a writer's queue.
    fn blocked(&self) -> bool {
        self.sessions.values().any(|s| s.pending.is_some()) || self.paths.values().any(|p| !p.backlog.is_empty())
    }

    /// Hands queued output to the writers: every path's control backlog first, then the engine's
    /// output of each sending session to its current path.
    fn flush(&mut self) {
        let ids: Vec<PathId> = self.paths.keys().copied().collect();
        for id in ids {
            self.flush_backlog(id);
        }
        let mut dead = Vec::new();
        for (&sid, state) in self.sessions.iter_mut() {
            let Some(path) = state.current.filter(|_| state.sending) else { continue };
            let Some(handle) = self.paths.get(&path) else { continue };
            if !handle.backlog.is_empty() {
                continue;
            }
            while let Some(chunk) = state.pending.take().or_else(|| self.engine.pop_session_output(sid)) {
                match handle.out.try_send(chunk) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(chunk)) => {
                        state.pending = Some(chunk);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(chunk)) => {
                        state.pending = Some(chunk);
                        dead.push(path);
                        break;
                    }
                }
            }
        }
        for path in dead {
            self.path_lost(path, "its writer stopped");
        }
    }

    fn flush_backlog(&mut self, id: PathId) {
        let Some(p) = self.paths.get_mut(&id) else { return };
        while let Some(frame) = p.backlog.pop_front() {
            match p.out.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(frame)) => {
                    p.backlog.push_front(frame);
                    return;
                }
                // The reader reports the end of the path.
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }

    /// Closes a path: the writer sends what it has queued and ends the TLS stream; the reader stops.
    fn close_path(&mut self, id: PathId) {
        if let Some(p) = self.paths.remove(&id) {
            p.reader.abort();
            let out = p.out;
            // Give the writer its last control frames if there is room; then it ends with `out`.
            for frame in p.backlog {
                if out.try_send(frame).is_err() {
                    break;
                }
            }
        }
    }

    fn end_session(&mut self, sid: SessionId, why: &str) {
        let paths: Vec<PathId> = self.paths.iter().filter(|(_, p)| p.session == sid).map(|(id, _)| *id).collect();
        for p in paths {
            self.close_path(p);
        }
        let Some(state) = self.sessions.remove(&sid) else { return };
        if let Some(counters) = self.engine.remove_session(sid, self.clock.now()) {
            tracing::info!(
                peer = %state.peer.name,
                session = sid.0,
                reason = why,
                bytes_sent = counters.bytes_sent,
                bytes_received = counters.bytes_received,
                streams = counters.tcp_streams_opened,
                "session closed; its connections were reset"
            );
        }
        if self.client.as_ref().is_some_and(|c| c.switch_waiter.is_some()) {
            self.reply_switch(Err(format!("the session ended: {why}")));
        }
    }

    // ---- status --------------------------------------------------------------------------------

    fn status(&self) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        let live = self.engine.session_status();
        let source = &self.source;
        let mut peers = Vec::new();
        for (name, key, vips) in &source.known_peers {
            let session = self.sessions.iter().find(|(_, s)| &s.peer.public_key == key);
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
                stale_frames_dropped: 0,
                switches: Vec::new(),
            };
            if let Some((id, s)) = session {
                let path = s.current.and_then(|c| self.paths.get(&c));
                p.connected = path.is_some() && !s.machine.is_switching();
                p.session = Some(id.0);
                p.epoch = Some(s.machine.epoch());
                p.switching = s.machine.is_switching();
                p.stale_frames_dropped = s.stale_frames;
                p.switches = s.history.iter().cloned().collect();
                p.connected_secs = Some(s.since.elapsed().as_secs());
                if let Some(h) = path {
                    p.local_address = h.info.local;
                    p.uplink =
                        h.info.uplink.clone().or_else(|| h.info.local.and_then(|a| super::tun::interface_of(a.ip())));
                    p.remote_address = h.info.remote;
                }
                if let Some(l) = live.iter().find(|l| l.id == *id) {
                    p.tcp_flows = l.tcp_flows;
                    p.udp_flows = l.udp_flows;
                    p.queued_bytes = l.queued_bytes;
                    p.counters = l.counters.clone();
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
            tun_counters: self.engine.tun_counters().clone(),
            handshakes_refused: source.shared.handshakes_refused.load(Relaxed),
            uplinks: self.uplink_status(),
        }
    }

    /// Client: each configured uplink (or, with none configured, each one a path uses).
    fn uplink_status(&self) -> Vec<UplinkStatus> {
        let Some(client) = &self.client else { return Vec::new() };
        let active: Option<&str> = self
            .sessions
            .values()
            .next()
            .and_then(|s| s.current)
            .and_then(|c| self.paths.get(&c))
            .and_then(|p| p.info.uplink.as_deref());
        let names: Vec<String> = if client.configured.is_empty() {
            active.map(|a| vec![a.to_string()]).unwrap_or_default()
        } else {
            client.configured.clone()
        };
        names
            .into_iter()
            .map(|name| {
                let u = client.uplinks.get(&name);
                let state = match u {
                    _ if active == Some(name.as_str()) => "active",
                    Some(u) if u.usable() => "standby",
                    Some(_) => "down",
                    None => "absent",
                };
                UplinkStatus {
                    addresses: u.map(|u| u.addresses.clone()).unwrap_or_default(),
                    state: state.into(),
                    name,
                }
            })
            .collect()
    }
}

impl SessionState {
    fn new(peer: PeerInfo, machine: Machine, current: Option<PathId>) -> Self {
        SessionState {
            peer,
            machine,
            current,
            sending: true,
            pending: None,
            resends: Vec::new(),
            progress: None,
            history: VecDeque::new(),
            since: StdInstant::now(),
            stale_frames: 0,
            control_malformed: 0,
        }
    }
}

fn offsets(engine: &Engine, sid: SessionId) -> Vec<StreamOffset> {
    engine.received_offsets(sid).into_iter().map(|(stream, received)| StreamOffset { stream, received }).collect()
}

fn encode(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.encoded_len());
    // Cannot fail: handshake and control frames are far below the body limit.
    frame.encode(&mut out).expect("control frame encodes");
    out
}

/// How a path is named in switch records: its uplink, else (server) the client's address.
fn label(info: &PathInfo) -> String {
    match (&info.uplink, info.remote) {
        (Some(uplink), _) => uplink.clone(),
        (None, Some(remote)) => remote.ip().to_string(),
        (None, None) => "?".into(),
    }
}

fn describe(u: &roamtun_netlink::Uplink) -> String {
    match (u.admin_up, u.lower_up, u.addresses.is_empty()) {
        (false, _, _) => "administratively down".into(),
        (true, false, _) => "no carrier".into(),
        (true, true, true) => "no address".into(),
        _ => "usable".into(),
    }
}
