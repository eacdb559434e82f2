//! The engine task: feeds the sans-IO [`RelayCore`] with what the TUN, the path readers, the control
//! socket, rtnetlink and the timers deliver, and carries out what it asks for (write to a path, close
//! one, dial one, answer a `roamtun switch`). The protocol logic is all in the core; here is only I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, Notify};

use roamtun_proto::path::PathLoss;
use roamtun_proto::relay::core::{Action, DialRequest, RelayCore};
use roamtun_proto::relay::engine::{Engine, Role};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::transition::{PathId, TransitionConfig};
use roamtun_stack::coalesce::coalesce;

use super::{ClientHooks, EngineMsg, Join, StatusSource, Tun, Uplinks};
use crate::clock::Clock;
use crate::control::{ControlRequest, Request, Response};

/// Most packets or messages handled per wake-up, so one busy source cannot starve the others.
const BATCH: usize = 64;
/// Most packets written to the TUN per wake-up ([`Shell::write_tun`]), so that paths' messages get
/// their turn too; enough for one segment of every flow several times over, which is what merging
/// a flow's segments needs.
const WRITE_MAX: usize = 4096;
/// The largest IP packet a TUN read may return (the MTU is at most 65535).
const TUN_PACKET_MAX: usize = 65536;
/// Packets read from the TUN from this size on are handed to the engine in their read buffer;
/// smaller ones are copied (cheaper than zeroing a recycled buffer again).
const HAND_OVER_AT: usize = 8 * 1024;
/// After a session ends, freed memory is given back at once and again this much later.
const TRIM_AGAIN_AFTER: Duration = Duration::from_millis(500);

/// The writing end and the reader of one path's connection.
struct PathIo {
    out: mpsc::Sender<bytes::Bytes>,
    reader: tokio::task::AbortHandle,
    /// Tells the path's tasks to probe at the standby pace.
    standby: Arc<std::sync::atomic::AtomicBool>,
    /// Stops the path's reader while the core holds as much of its frames as it may.
    paused: tokio::sync::watch::Sender<bool>,
}

pub(super) struct Shell {
    pub(super) core: RelayCore,
    tun: Arc<Tun>,
    pub(super) clock: Clock,
    pub(super) source: StatusSource,
    io: BTreeMap<PathId, PathIo>,
    pub(super) client: Option<super::client_side::ClientSide>,
    test_panic: Option<super::crash::TestPanic>,
    /// Fed once per pass of the loop below, so systemd sees the loop itself make progress.
    watchdog: Option<crate::service::Watchdog>,
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
                let (side, watch) = super::client_side::ClientSide::new(hooks, clock.now());
                (Some(side), watch)
            }
            None => (None, None),
        };
        let core = RelayCore::new(engine, transition, seed);
        let test_panic = super::crash::TestPanic::from_env();
        let watchdog = crate::service::Watchdog::from_env(clock.now());
        (Shell { core, tun, clock, source, io: BTreeMap::new(), client, test_panic, watchdog }, watch)
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
        if let Some(client) = self.client.as_mut() {
            client.dial(DialRequest { resume: 0, uplink: None, avoid: None, standby: false, ahead: None });
        }
        let mut blocked = false;
        let mut tun_backlog = false;
        let mut sessions = 0;
        let mut trim_again: Option<Instant> = None;
        loop {
            let now = self.clock.now();
            let mut wait =
                self.core.poll_at(now).map_or(std::time::Duration::from_secs(3600), |at| self.clock.until(at));
            if let Some(at) = trim_again {
                wait = wait.min(self.clock.until(at));
            }
            if let Some(at) = self.client.as_ref().and_then(|c| c.links.poll_timeout()) {
                wait = wait.min(self.clock.until(at));
            }
            if let Some(dog) = &self.watchdog {
                wait = wait.min(self.clock.until(dog.deadline()));
            }
            if tun_backlog {
                wait = std::time::Duration::ZERO;
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
                    self.read_queued(&tun, &mut buf, BATCH - 1);
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
            tun_backlog = self.write_tun(&tun, &mut buf).await;
            blocked = self.flush();
            let now_live = self.core.sessions().count();
            let now = self.clock.now();
            if now_live < sessions || trim_again.is_some_and(|at| now >= at) {
                // A session ended: give back the memory the heap kept for its traffic, and once more a
                // little later, for what its path tasks free when they end.
                super::memory::release_freed_memory();
                trim_again = (now_live < sessions).then(|| now + TRIM_AGAIN_AFTER);
            }
            if now_live != sessions {
                crate::service::status(&format!("serving: {now_live} session(s)"));
            }
            sessions = now_live;
            if let Some(dog) = self.watchdog.as_mut() {
                dog.feed(now);
            }
            if let Some(client) = self.client.as_mut() {
                client.keep_volume(now, false);
            }
        }
        if let Some(client) = self.client.as_mut() {
            client.keep_volume(self.clock.now(), true);
        }
        self.core.shutdown(self.clock.now());
        self.flush();
        // Send the resets of the removed sessions' flows before the TUN goes away.
        while self.write_tun(&tun, &mut buf).await {}
    }

    /// Writes the packets the engine has for the TUN, at most [`WRITE_MAX`] of them, each flow's
    /// segments merged into as few writes as they allow (roamtun_stack::coalesce), with the
    /// kernel's packets read after every [`BATCH`] writes; true when some are left for the next turn
    /// of the loop.
    ///
    /// One poll can emit whole windows for hundreds of flows, one segment per flow in turn, so the
    /// merging needs all of them at once. Written in one go, they would keep the shell from reading
    /// the TUN all that time, and the kernel drops what it queues there for us (ACKs, segments,
    /// SYNs) once that queue is full. What is read in between is handed to the stack at once; only
    /// the next poll answers it (a poll walks every socket, too dear to repeat per batch).
    async fn write_tun(&mut self, tun: &Tun, buf: &mut Vec<u8>) -> bool {
        let engine = self.core.engine_mut();
        let mut batch = Vec::new();
        while batch.len() < WRITE_MAX {
            match engine.pop_tun_packet() {
                Some(packet) => batch.push(packet),
                None => break,
            }
        }
        let backlog = batch.len() == WRITE_MAX;
        let writes = coalesce(batch, |spare| engine.recycle_tun_packet(spare));
        for (i, write) in writes.into_iter().enumerate() {
            if i > 0 && i % BATCH == 0 {
                self.read_queued(tun, buf, BATCH);
            }
            if let Err(err) = tun.send(&write).await {
                // The kernel refused one packet (e.g. no buffer space); TCP retransmits, UDP is lossy.
                tracing::debug!(%err, len = write.packet.len(), "writing a packet to the TUN failed");
            }
            self.core.engine_mut().recycle_tun_packet(write.packet);
        }
        backlog
    }

    /// Hands the engine up to `most` packets the TUN has queued, without waiting for more.
    fn read_queued(&mut self, tun: &Tun, buf: &mut Vec<u8>, most: usize) {
        for _ in 0..most {
            match tun.try_recv_packet(buf) {
                Ok(Some(len)) => self.tun_packet(buf, len),
                Ok(None) => {}
                Err(_) => break,
            }
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
                self.io.insert(path, PathIo { out: io.out, reader: io.reader, standby: io.standby, paused: io.paused });
                let start = io.start;
                if let Some(client) = self.client.as_mut() {
                    client.links.path_up(info.uplink.as_deref());
                }
                match join {
                    Join::Hello { resume, virtual_ips } => {
                        self.core.server_path_up(path, info, *peer, resume, virtual_ips, now)
                    }
                    Join::Welcome { session, ahead_sent } => {
                        self.source.shared.note_connected();
                        let vips = self.source.virtual_ips.clone();
                        self.core.client_path_up(path, info, *peer, session, vips, ahead_sent, now)
                    }
                }
                // After the core has the path (a path it closed at once has no reader left to start).
                let _ = start.send(());
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
                if let (Some(client), Some(uplink)) =
                    (self.client.as_mut(), super::client_side::uplink_of(&self.core, path))
                {
                    client.links.carried(&uplink, carried);
                }
            }
            EngineMsg::PathPeerLoss { path, loss } => self.core.path_peer_loss(path, loss),
            EngineMsg::DialFailed { error, standby: true } => {
                if let Some(client) = self.client.as_mut() {
                    client.links.standby_failed(error, now);
                }
            }
            EngineMsg::DialFailed { error, standby: false } => self.core.switch_failed(error),
            EngineMsg::Control(ControlRequest { request, reply }) => match request {
                Request::Status => {
                    if self.test_panic == Some(super::crash::TestPanic::Engine) {
                        panic!("ROAMTUN_TEST_PANIC=engine: the injected engine fault");
                    }
                    let _ = reply.send(Response::Status(Box::new(super::status::status(self))));
                }
                Request::Switch { uplink } => match self.client.as_mut() {
                    Some(client) => client.request_switch(&mut self.core, uplink, reply, now),
                    None => {
                        let _ = reply.send(Response::Error { message: "only the client switches uplinks".into() });
                    }
                },
                // The reload task answers it (forward_control); it never comes here.
                Request::Reload => {
                    let _ = reply.send(Response::Error { message: "reload is not handled by the engine task".into() });
                }
                Request::Pin { uplink } => {
                    let answer = match self.client.as_mut() {
                        Some(client) => client.pin(uplink),
                        None => Response::Error { message: "only the client has uplinks to pin".into() },
                    };
                    let _ = reply.send(answer);
                }
            },
            EngineMsg::PeersChanged { known, ended } => {
                for (key, why) in ended {
                    let sessions = self.core.end_peer(&key, &why, now);
                    tracing::info!(reason = %why, sessions, "a reload ended the peer's sessions");
                }
                for peer in &known {
                    if self.core.set_peer_limits(&peer.public_key, peer.limits) > 0 {
                        tracing::info!(peer = %peer.name, limits = ?peer.limits, "a reload changed the session's limits");
                    }
                }
                self.source.known_peers = known;
            }
            // Handled by the loop in run.
            EngineMsg::Shutdown => {}
        }
    }

    /// rtnetlink changed the uplinks: a path whose interface went down or lost the path's address is
    /// lost now, not when its transport times out.
    fn uplinks_changed(&mut self, snapshot: Uplinks) {
        let Some(client) = self.client.as_mut() else { return };
        let now = self.clock.now();
        for (id, reason) in client.uplinks_changed(&self.core, snapshot) {
            client.path_lost(&self.core, id, now);
            self.core.path_lost(id, &reason, now);
        }
    }

    /// Carries out the core's actions and hands queued output to the writers. Returns whether some
    /// output waits for room in a writer's queue.
    fn flush(&mut self) -> bool {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Dial(request) => {
                    if let Some(client) = self.client.as_mut() {
                        client.dial(request);
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
                Action::ReadPaused { path, paused } => {
                    if let Some(io) = self.io.get(&path) {
                        io.paused.send_replace(paused);
                    }
                }
                Action::SwitchDone(result) => {
                    if let Some(client) = self.client.as_mut() {
                        client.switch_done(result);
                    }
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
        if let Some(client) = self.client.as_mut() {
            client.link_manager(&mut self.core, self.clock.now());
        }
        blocked
    }

    /// Counts a lost path against its uplink's reliability.
    fn note_failure(&mut self, path: PathId) {
        if let Some(client) = self.client.as_mut() {
            client.path_lost(&self.core, path, self.clock.now());
        }
    }
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
