//! Deterministic simulation of two daemons' sans-IO cores ([`RelayCore`]) roaming between two uplinks
//! with real-world timing: uplink A has a 20 ms round trip and 2 MB/s, uplink B 50 ms and 1 MB/s. The
//! apps on both sides are TCP stacks (smoltcp) behind each core's TUN, as in tests/support/pair.rs.
//!
//! ```text
//!  client apps ⇄ TUN ⇄ RelayCore(client) ⇄ path over A or B ⇄ RelayCore(server) ⇄ TUN ⇄ server apps
//! ```
//!
//! Every path is a simulated connection: a HELLO/TLS handshake of 1.5 round trips, WELCOME, then two
//! pipes with delay, bandwidth and a bounded send buffer. During a bidirectional transfer on two
//! connections the client switches: planned switches (`request_switch`) and sudden losses of the
//! active uplink (everything in flight lost, the uplink unusable for up to 800 ms; the client notices
//! within a few ms as from rtnetlink, the server only through its idle timeout or the client's
//! SWITCH_UNEXPECTED). Every byte must arrive exactly once, in order, both ways, and both connections
//! must end gracefully. Time is injected, 1 ms per round; nothing sleeps.

mod support;

use std::collections::VecDeque;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use roamtun_proto::path::{take_frames, PathLoss, Piece};
use roamtun_proto::relay::core::{Action, DialRequest, PathInfo, PeerInfo, RelayCore, SwitchError};
use roamtun_proto::relay::engine::{Engine, EngineConfig, Role};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::transition::{PathId, SwitchKind, TransitionConfig};
use roamtun_proto::wire::Frame;
use roamtun_stack::{FlowEvent, FlowId, Ingress, Stack, StackConfig};
use support::{pattern, vip, Rng};

#[derive(Clone, Copy)]
struct Link {
    name: &'static str,
    one_way_us: u64,
    bytes_per_ms: u64,
}

const A: Link = Link { name: "A", one_way_us: 10_000, bytes_per_ms: 2_000 };
const B: Link = Link { name: "B", one_way_us: 25_000, bytes_per_ms: 1_000 };
/// What a path's sender may have in flight (its socket buffer): more waits in the core.
const SEND_BUFFER: usize = 256 * 1024;

/// One direction of a path: serialization at the link's rate, then the one-way delay.
#[derive(Default)]
struct Pipe {
    busy_until_us: u64,
    queue: VecDeque<(u64, bytes::Bytes)>,
    queued: usize,
}

impl Pipe {
    fn send(&mut self, link: Link, now_us: u64, bytes: bytes::Bytes) {
        let start = self.busy_until_us.max(now_us);
        self.busy_until_us = start + bytes.len() as u64 * 1000 / link.bytes_per_ms;
        self.queued += bytes.len();
        self.queue.push_back((self.busy_until_us + link.one_way_us, bytes));
    }

    fn deliver(&mut self, now_us: u64) -> Vec<u8> {
        let mut out = Vec::new();
        while self.queue.front().is_some_and(|(at, _)| *at <= now_us) {
            let (_, b) = self.queue.pop_front().unwrap();
            self.queued -= b.len();
            out.extend_from_slice(&b);
        }
        out
    }
}

/// Hands what a path's reader cut off its byte stream to a core, as the daemon's reader does (it
/// answers PINGs itself; the cores here send none).
fn deliver(core: &mut RelayCore, id: PathId, pieces: Vec<Piece>, now: Instant) {
    for piece in pieces {
        match piece {
            Piece::Frames(bytes) => core.path_bytes(id, &bytes, now),
            Piece::Control(body) => core.path_control(id, &body, now),
            Piece::Report(ppm) => core.path_peer_loss(id, f64::from(ppm) / 1e6),
            Piece::Ping(_) | Piece::Pong(_) => {}
        }
    }
}

struct SimPath {
    id: PathId,
    link: Link,
    c2s: Pipe,
    s2c: Pipe,
    /// When the server sees the client's HELLO (after the TLS handshake).
    hello_at_us: u64,
    resume: u64,
    /// Written behind HELLO by the dialer (a lost session's SWITCH_UNEXPECTED).
    ahead: Option<Bytes>,
    server_joined: bool,
    /// The client has read WELCOME and handed the path to its core.
    client_joined: bool,
    client_rx: BytesMut,
    server_rx: BytesMut,
    /// The uplink under it failed: nothing moves any more.
    dead: bool,
    client_closed: bool,
    server_closed: bool,
    /// The side's core asked its reader to leave the bytes unread (they wait in `*_rx`, the socket).
    client_paused: bool,
    server_paused: bool,
}

struct Side {
    core: RelayCore,
    app: Stack,
    events: Vec<FlowEvent>,
    new_flows: Vec<FlowId>,
}

impl Side {
    fn new(role: Role, seed: u64, now: Instant, budget: Option<usize>) -> Self {
        let mut config = EngineConfig::new(role);
        config.stack.random_seed = seed;
        if let Some(budget) = budget {
            config.session_out_budget = budget;
        }
        let transition = TransitionConfig::default();
        Side {
            core: RelayCore::new(Engine::new(config, now), transition, 1000),
            app: Stack::new(StackConfig { random_seed: seed + 1, ..StackConfig::default() }, now.into()),
            events: Vec::new(),
            new_flows: Vec::new(),
        }
    }

    /// TUN packets both ways, the apps' and the core's timers.
    fn step(&mut self, now: Instant) {
        self.app.poll(now.into());
        while let Some(p) = self.app.pop_transmit() {
            self.core.engine_mut().handle_tun_packet(p, now);
        }
        self.core.poll(now);
        while let Some(p) = self.core.engine_mut().pop_tun_packet() {
            if let Ingress::NewFlow { flow, .. } = self.app.handle_packet(p, now.into()) {
                self.new_flows.push(flow);
            }
        }
        self.events.extend(std::iter::from_fn(|| self.app.pop_event()));
    }

    fn closed(&self, flow: FlowId) -> Option<bool> {
        self.events.iter().find_map(|e| match *e {
            FlowEvent::Closed { flow: f, reset } if f == flow => Some(reset),
            _ => None,
        })
    }
}

struct Sim {
    now_us: u64,
    client: Side,
    server: Side,
    paths: Vec<SimPath>,
    next_path: u64,
    /// Uplinks unusable until this time (µs), after a sudden loss.
    down_until: [u64; 2],
    /// A dial waiting for a usable uplink: (resume, wanted uplink, uplink to avoid).
    /// Paths that carried a SWITCH_UNEXPECTED behind their HELLO.
    aheads_sent: usize,
    pending_dial: Option<DialRequest>,
    switch_results: Vec<Result<SwitchKind, SwitchError>>,
    /// Connections the server apps accepted, in order.
    accepted: Vec<FlowId>,
    switches_requested: usize,
    /// Uplink "A" (where the session starts) and uplink "B".
    links: [Link; 2],
    /// How often a core paused one of its path readers (its held frames filled its budget).
    pauses: usize,
}

fn link_index(name: &str) -> usize {
    usize::from(name == "B")
}

impl Sim {
    /// A session on `links[0]`; `budget`: the cores' `session_out_budget`, if not the default.
    fn with_links(seed: u64, links: [Link; 2], budget: Option<usize>) -> Self {
        let now = Instant::from_millis(1_000_000);
        let mut sim = Sim {
            now_us: now.total_micros(),
            client: Side::new(Role::Client, seed * 10 + 1, now, budget),
            server: Side::new(Role::Server, seed * 10 + 5, now, budget),
            paths: Vec::new(),
            next_path: 1,
            down_until: [0, 0],
            pending_dial: None,
            aheads_sent: 0,
            switch_results: Vec::new(),
            accepted: Vec::new(),
            switches_requested: 0,
            links,
            pauses: 0,
        };
        sim.open_path(links[0], 0, None);
        sim
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.now_us)
    }

    fn open_path(&mut self, link: Link, resume: u64, ahead: Option<Bytes>) {
        let id = PathId(self.next_path);
        self.next_path += 1;
        self.paths.push(SimPath {
            id,
            link,
            c2s: Pipe::default(),
            s2c: Pipe::default(),
            // TCP handshake, TLS 1.3 (one round trip), then HELLO: 1.5 round trips.
            hello_at_us: self.now_us + 3 * link.one_way_us,
            resume,
            ahead,
            server_joined: false,
            client_joined: false,
            client_rx: BytesMut::new(),
            server_rx: BytesMut::new(),
            dead: false,
            client_closed: false,
            server_closed: false,
            client_paused: false,
            server_paused: false,
        });
    }

    fn usable(&self, link: Link) -> bool {
        self.now_us >= self.down_until[link_index(link.name)]
    }

    fn dial(&mut self, req: DialRequest) {
        let wanted = req.uplink.as_deref().map(|u| if u == "A" { "A" } else { "B" });
        let pick = match wanted {
            Some(name) => self.links.into_iter().find(|l| l.name == name).filter(|l| self.usable(*l)),
            None => {
                let mut order = self.links;
                if req.avoid.as_deref() == Some("A") {
                    order.swap(0, 1);
                }
                order.into_iter().find(|l| self.usable(*l))
            }
        };
        match (pick, wanted) {
            (Some(link), _) => self.open_path(link, req.resume, req.ahead),
            (None, Some(name)) => self.client.core.switch_failed(format!("{name} is down")),
            (None, None) => self.pending_dial = Some(req),
        }
    }

    fn info(link: Link, side: Role) -> PathInfo {
        PathInfo {
            local: None,
            remote: None,
            uplink: (side == Role::Client).then(|| link.name.to_string()),
            congestion_control: None,
        }
    }

    /// One millisecond of the world.
    fn round(&mut self) {
        self.now_us += 1000;
        let now = self.now();
        if let Some(req) = self.pending_dial.take() {
            self.dial(req);
        }
        // Handshakes completing, bytes arriving.
        for i in 0..self.paths.len() {
            let p = &mut self.paths[i];
            if p.dead {
                continue;
            }
            if !p.server_joined && self.now_us >= p.hello_at_us {
                p.server_joined = true;
                let peer = PeerInfo::new("laptop", "k");
                let (id, link, resume) = (p.id, p.link, p.resume);
                self.server.core.server_path_up(id, Self::info(link, Role::Server), peer, resume, vec![vip()], now);
                // Behind HELLO in the same flight: the server reads it right after the join.
                let p = &mut self.paths[i];
                if let Some(ahead) = &p.ahead {
                    p.server_rx.extend_from_slice(ahead);
                    self.aheads_sent += 1;
                }
            }
            let p = &mut self.paths[i];
            let got = p.c2s.deliver(self.now_us);
            p.server_rx.extend_from_slice(&got);
            let got = p.s2c.deliver(self.now_us);
            p.client_rx.extend_from_slice(&got);
            if !p.client_joined {
                if let Some((Frame::Welcome { session_id, .. }, used)) = Frame::decode(&p.client_rx).unwrap() {
                    let _ = p.client_rx.split_to(used);
                    p.client_joined = true;
                    let (id, link, ahead_sent) = (p.id, p.link, p.ahead.is_some());
                    let peer = PeerInfo::new("server", "s");
                    self.client.core.client_path_up(
                        id,
                        Self::info(link, Role::Client),
                        peer,
                        session_id,
                        vec![vip()],
                        ahead_sent,
                        now,
                    );
                }
            }
            let p = &mut self.paths[i];
            let id = p.id;
            let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
            if !p.server_paused {
                take_frames(&mut p.server_rx, &mut to_server);
            }
            if p.client_joined && !p.client_paused {
                take_frames(&mut p.client_rx, &mut to_client);
            }
            let (c2s_empty, s2c_empty) = (p.c2s.queue.is_empty(), p.s2c.queue.is_empty());
            let (cc, sc) = (p.client_closed, p.server_closed);
            deliver(&mut self.server.core, id, to_server, now);
            deliver(&mut self.client.core, id, to_client, now);
            // A side that closed the connection: the other sees the end once everything arrived.
            if cc && c2s_empty {
                self.server.core.path_lost(id, &PathLoss::PeerClosed, now);
            }
            if sc && s2c_empty {
                self.client.core.path_lost(id, &PathLoss::PeerClosed, now);
            }
        }
        self.client.step(now);
        self.server.step(now);
        for flow in std::mem::take(&mut self.server.new_flows) {
            self.server.app.accept(flow).unwrap();
            self.accepted.push(flow);
        }
        self.actions();
        // Output into the pipes, as far as each sender's buffer has room.
        for p in self.paths.iter_mut().filter(|p| !p.dead) {
            if p.client_joined && !p.client_closed {
                while p.c2s.queued < SEND_BUFFER {
                    let Some(chunk) = self.client.core.pop_path_output(p.id) else { break };
                    p.c2s.send(p.link, self.now_us, chunk);
                }
            }
            if p.server_joined && !p.server_closed {
                while p.s2c.queued < SEND_BUFFER {
                    let Some(chunk) = self.server.core.pop_path_output(p.id) else { break };
                    p.s2c.send(p.link, self.now_us, chunk);
                }
            }
        }
        self.client.core.refill();
        self.server.core.refill();
    }

    fn actions(&mut self) {
        while let Some(action) = self.client.core.poll_action() {
            match action {
                Action::Dial(req) => self.dial(req),
                Action::ClosePath { path, last } => {
                    if let Some(p) = self.paths.iter_mut().find(|p| p.id == path) {
                        for chunk in last {
                            p.c2s.send(p.link, self.now_us, chunk);
                        }
                        p.client_closed = true;
                    }
                }
                Action::SwitchDone(r) => self.switch_results.push(r.map(|report| report.kind)),
                Action::ReadPaused { path, paused } => {
                    self.pauses += usize::from(paused);
                    if let Some(p) = self.paths.iter_mut().find(|p| p.id == path) {
                        p.client_paused = paused;
                    }
                }
            }
        }
        while let Some(action) = self.server.core.poll_action() {
            match action {
                Action::Dial(_) | Action::SwitchDone(_) => unreachable!("the server neither dials nor switches"),
                Action::ReadPaused { path, paused } => {
                    self.pauses += usize::from(paused);
                    if let Some(p) = self.paths.iter_mut().find(|p| p.id == path) {
                        p.server_paused = paused;
                    }
                }
                Action::ClosePath { path, last } => {
                    if let Some(p) = self.paths.iter_mut().find(|p| p.id == path) {
                        for chunk in last {
                            p.s2c.send(p.link, self.now_us, chunk);
                        }
                        p.server_closed = true;
                    }
                }
            }
        }
    }

    /// The uplink of the client's current path.
    fn active(&self) -> Option<Link> {
        let s = self.client.core.sessions().next()?;
        let name = s.path?.uplink.clone()?;
        Some(self.links[link_index(&name)])
    }

    fn epoch(&self) -> u32 {
        self.client.core.sessions().next().map_or(0, |s| s.epoch)
    }

    /// A switch is under way: the machine is in one, or a requested one waits for its path.
    fn switching(&self) -> bool {
        let requested = self.switch_results.len() < self.switches_requested;
        requested || self.client.core.sessions().next().is_none_or(|s| s.switching || s.path.is_none())
    }

    /// The active uplink fails for `outage_ms`: everything in flight on its paths is lost. The client
    /// notices after `client_ms` (rtnetlink); the server only by the client's SWITCH_UNEXPECTED.
    fn lose_active(&mut self, outage_ms: u64, client_ms: u64) -> u64 {
        let link = self.active().expect("a path to lose");
        self.down_until[link_index(link.name)] = self.now_us + outage_ms * 1000;
        let mut lost = Vec::new();
        for p in self.paths.iter_mut().filter(|p| p.link.name == link.name && !p.dead) {
            p.dead = true;
            lost.push(p.id);
        }
        let notice_at = self.now_us + client_ms * 1000;
        for _ in 0..client_ms {
            self.round();
        }
        for id in lost {
            let now = self.now();
            self.client.core.path_lost(id, &PathLoss::UplinkDown { uplink: "uplink".into() }, now);
        }
        notice_at
    }
}

/// Brings the session up on uplink A and opens two connections from client apps to a server app;
/// returns them as (client 1, client 2, server 1, server 2).
fn connect_two(sim: &mut Sim, seed: u64) -> (FlowId, FlowId, FlowId, FlowId) {
    for _ in 0..2000 {
        sim.round();
        if !sim.switching() {
            break;
        }
    }
    assert_eq!(sim.active().map(|l| l.name), Some("A"), "seed {seed}: no session on A");
    let vip_src = |port| SocketAddr::new(vip(), port);
    let dst: SocketAddr = "100.64.0.1:80".parse().unwrap();
    let c1 = sim.client.app.connect(vip_src(41000), dst).unwrap();
    let c2 = sim.client.app.connect(vip_src(41001), dst).unwrap();
    for _ in 0..2000 {
        sim.round();
        if sim.accepted.len() == 2 && [c1, c2].iter().all(|c| sim.client.events.contains(&FlowEvent::Connected(*c))) {
            break;
        }
    }
    let server_flows = sim.accepted.clone();
    assert_eq!(server_flows.len(), 2, "seed {seed}: the server apps did not get both connections");
    // smoltcp flow ids count up on the server's app stack in SYN order: 41000 first.
    (c1, c2, server_flows[0], server_flows[1])
}

#[test]
fn roaming_across_slow_links_loses_and_duplicates_nothing() {
    for seed in 1..=40u64 {
        roam(seed, [A, B]);
    }
}

/// The same with other round trips on both uplinks, drawn per seed: whichever path is faster, and by
/// how much, each planned switch keeps one order per direction.
#[test]
fn roaming_with_random_path_delays_loses_and_duplicates_nothing() {
    for seed in 100..=115u64 {
        let mut rng = Rng::new(seed);
        let a = Link { name: "A", one_way_us: rng.range(1, 60) * 1000, bytes_per_ms: rng.range(500, 3000) };
        let b = Link { name: "B", one_way_us: rng.range(1, 60) * 1000, bytes_per_ms: rng.range(500, 3000) };
        roam(seed, [a, b]);
    }
}

/// A bidirectional transfer on two connections while the client switches (planned, and sudden
/// losses of the active uplink) up to eight times: every byte arrives once, in order, both ways.
fn roam(seed: u64, links: [Link; 2]) {
    {
        let mut rng = Rng::new(seed);
        let mut sim = Sim::with_links(seed, links, None);
        let (c1, c2, s1, s2) = connect_two(&mut sim, seed);
        let up1 = pattern(2_000_000, seed as u32);
        let down1 = pattern(3_000_000, seed as u32 + 100);
        let up2 = pattern(1_000_000, seed as u32 + 200);
        let down2 = pattern(1_500_000, seed as u32 + 300);
        let (mut su1, mut sd1, mut su2, mut sd2) = (0, 0, 0, 0);
        let (mut gu1, mut gd1, mut gu2, mut gd2) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut planned, mut lost) = (0, 0);
        let mut next_event = sim.now_us + rng.range(100, 400) * 1000;
        for round in 0.. {
            assert!(round < 120_000, "seed {seed}: transfers did not finish in 120 s of simulated time");
            su1 += sim.client.app.send(c1, &up1[su1..]);
            sd1 += sim.server.app.send(s1, &down1[sd1..]);
            su2 += sim.client.app.send(c2, &up2[su2..]);
            sd2 += sim.server.app.send(s2, &down2[sd2..]);
            sim.server.app.recv(s1, usize::MAX, |c| gu1.extend_from_slice(c));
            sim.client.app.recv(c1, usize::MAX, |c| gd1.extend_from_slice(c));
            sim.server.app.recv(s2, usize::MAX, |c| gu2.extend_from_slice(c));
            sim.client.app.recv(c2, usize::MAX, |c| gd2.extend_from_slice(c));
            if su1 == up1.len() {
                sim.client.app.close(c1);
            }
            if sd1 == down1.len() {
                sim.server.app.close(s1);
            }
            if su2 == up2.len() {
                sim.client.app.close(c2);
            }
            if sd2 == down2.len() {
                sim.server.app.close(s2);
            }
            let all_closed = [(&sim.client, c1), (&sim.server, s1), (&sim.client, c2), (&sim.server, s2)]
                .iter()
                .all(|(side, flow)| side.closed(*flow).is_some());
            if all_closed {
                break;
            }
            if sim.now_us >= next_event && !sim.switching() && planned + lost < 8 {
                let other = if sim.active().unwrap().name == "A" { sim.links[1] } else { sim.links[0] };
                // The first event is a sudden loss, the second a planned switch, then chance decides.
                let plan = match planned + lost {
                    0 => false,
                    1 => true,
                    _ => rng.next().is_multiple_of(2),
                };
                if plan && !sim.usable(other) {
                    // Nowhere to go yet: try again a little later.
                    next_event = sim.now_us + 100_000;
                    continue;
                }
                if plan {
                    let other = other.name;
                    sim.client.core.request_switch(other.into(), sim.now()).expect("a switch starts");
                    sim.switches_requested += 1;
                    planned += 1;
                } else {
                    sim.lose_active(rng.range(0, 800), rng.range(1, 5));
                    lost += 1;
                }
                next_event = sim.now_us + rng.range(150, 700) * 1000;
            }
            sim.round();
        }
        assert!(
            gu1 == up1 && gd1 == down1 && gu2 == up2 && gd2 == down2,
            "seed {seed}: bytes differ: got {} {} {} {} of {} {} {} {}",
            gu1.len(),
            gd1.len(),
            gu2.len(),
            gd2.len(),
            up1.len(),
            down1.len(),
            up2.len(),
            down2.len()
        );
        for (side, flow) in [(&sim.client, c1), (&sim.server, s1), (&sim.client, c2), (&sim.server, s2)] {
            assert_eq!(side.closed(flow), Some(false), "seed {seed}: a connection did not end gracefully");
        }
        assert!(planned >= 1 && lost >= 1, "seed {seed}: only {planned} planned and {lost} sudden switches happened");
        // Finish any switch in flight, then every switch is one epoch further.
        for _ in 0..5000 {
            if !sim.switching() {
                break;
            }
            sim.round();
        }
        let history: Vec<String> = sim
            .client
            .core
            .sessions()
            .next()
            .map(|s| s.switches.iter().map(|r| format!("{:?} {:?}>{:?} e{}", r.kind, r.from, r.to, r.epoch)).collect())
            .unwrap_or_default();
        assert_eq!(sim.epoch(), planned + lost, "seed {seed}: {planned} planned + {lost} lost; switches {history:?}");
        let planned_done = sim.switch_results.iter().filter(|r| **r == Ok(SwitchKind::Planned)).count();
        assert_eq!(planned_done, planned as usize, "seed {seed}: switch results {:?}", sim.switch_results);
        let c = sim.client.core.engine().session_status()[0].counters.clone();
        let s = sim.server.core.engine().session_status()[0].counters.clone();
        assert_eq!(c.streams_violated + s.streams_violated, 0, "seed {seed}: a resend broke the stream rules");
    }
}

/// What the apps of one direction received, and when (ms of simulated time).
#[derive(Default)]
struct Received {
    bytes: Vec<u8>,
    /// The rounds in which some bytes arrived.
    at_ms: Vec<u64>,
}

impl Received {
    fn take(&mut self, app: &mut Stack, flow: FlowId, now_ms: u64) {
        if app.recv(flow, usize::MAX, |c| self.bytes.extend_from_slice(c)) > 0 {
            self.at_ms.push(now_ms);
        }
    }

    /// The longest time without a delivery within `from..=to`, counted from `from`.
    fn longest_gap(&self, from: u64, to: u64) -> u64 {
        let mut last = from;
        let mut gap = 0;
        for &t in self.at_ms.iter().filter(|t| (from..=to).contains(*t)) {
            gap = gap.max(t - last);
            last = t;
        }
        gap.max(to - last)
    }

    fn between(&self, from: u64, to: u64) -> usize {
        self.at_ms.iter().filter(|t| (from..=to).contains(*t)).count()
    }
}

/// The phases of a paced transfer both ways on connection 1 (connection 2 stays open and idle)
/// around one event: the rounds of the switch, the bytes, when they arrived.
struct Paced {
    sim: Sim,
    flows: (FlowId, FlowId, FlowId, FlowId),
    up: Vec<u8>,
    down: Vec<u8>,
    sent: (usize, usize),
    got_up: Received,
    got_down: Received,
    /// Bytes per millisecond each app offers.
    pace: usize,
    start_ms: u64,
}

impl Paced {
    fn new(seed: u64, links: [Link; 2], budget: Option<usize>, pace: usize) -> Self {
        let mut sim = Sim::with_links(seed, links, budget);
        let flows = connect_two(&mut sim, seed);
        let start_ms = sim.now_us / 1000;
        Paced {
            sim,
            flows,
            up: pattern(40_000_000, seed as u32),
            down: pattern(40_000_000, seed as u32 + 7),
            sent: (0, 0),
            got_up: Received::default(),
            got_down: Received::default(),
            pace,
            start_ms,
        }
    }

    fn now_ms(&self) -> u64 {
        self.sim.now_us / 1000
    }

    /// One round; the apps offer what their pace allows by now (while `sending`).
    fn round(&mut self, sending: bool) {
        let (c1, _, s1, _) = self.flows;
        let now = self.now_ms();
        if sending {
            let due = ((now - self.start_ms) as usize * self.pace).min(self.up.len());
            let up_from = self.sent.0;
            self.sent.0 += self.sim.client.app.send(c1, &self.up[up_from..due.max(up_from)]);
            let down_from = self.sent.1;
            self.sent.1 += self.sim.server.app.send(s1, &self.down[down_from..due.max(down_from)]);
        }
        self.got_up.take(&mut self.sim.server.app, s1, now);
        self.got_down.take(&mut self.sim.client.app, c1, now);
        self.sim.round();
    }

    /// Whether the client's machine is in a switch (SWITCH_STEP1 sent, ALL_REDIRECTED not yet in).
    fn in_switch(&self) -> bool {
        self.sim.client.core.sessions().next().is_some_and(|s| s.switching)
    }

    /// Runs until the client is in a switch and out of it again: returns (first, last) ms in it.
    fn through_switch(&mut self, limit_ms: u64) -> (u64, u64) {
        let end = self.now_ms() + limit_ms;
        while !self.in_switch() {
            assert!(self.now_ms() < end, "no switch began");
            self.round(true);
        }
        let began = self.now_ms();
        while self.in_switch() {
            assert!(self.now_ms() < end, "the switch did not end");
            self.round(true);
        }
        (began, self.now_ms())
    }

    /// Stops offering, closes both connections and checks that every byte arrived once, in order.
    fn finish(mut self, seed: u64) -> Sim {
        let (c1, c2, s1, s2) = self.flows;
        for c in [c1, c2] {
            self.sim.client.app.close(c);
        }
        for s in [s1, s2] {
            self.sim.server.app.close(s);
        }
        for _ in 0..60_000 {
            self.round(false);
            let flows =
                [(&self.sim.client, c1), (&self.sim.server, s1), (&self.sim.client, c2), (&self.sim.server, s2)];
            if flows.iter().all(|(side, flow)| side.closed(*flow).is_some()) {
                break;
            }
        }
        let (up, down) = (&self.up[..self.sent.0], &self.down[..self.sent.1]);
        assert!(
            self.got_up.bytes == up,
            "seed {seed}: client to server: got {} of {} bytes, or others",
            self.got_up.bytes.len(),
            up.len()
        );
        assert!(
            self.got_down.bytes == down,
            "seed {seed}: server to client: got {} of {} bytes, or others",
            self.got_down.bytes.len(),
            down.len()
        );
        for (side, flow) in
            [(&self.sim.client, c1), (&self.sim.server, s1), (&self.sim.client, c2), (&self.sim.server, s2)]
        {
            assert_eq!(side.closed(flow), Some(false), "seed {seed}: a connection did not end gracefully");
        }
        let c = self.sim.client.core.engine().session_status()[0].counters.clone();
        let s = self.sim.server.core.engine().session_status()[0].counters.clone();
        assert_eq!(c.streams_violated + s.streams_violated, 0, "seed {seed}: a stream rule was broken");
        self.sim
    }
}

/// A planned switch moves both directions' data to the new path at once: the apps keep receiving
/// between SWITCH_STEP1 and ALL_REDIRECTED, and the longest pause either app sees is the difference
/// of the two paths' one-way delays (plus a few ms of the simulation's 1 ms rounds and the apps'
/// own TCP), whether the new path is the slower or the faster one. Nothing is resent.
#[test]
fn a_planned_switch_keeps_the_data_flowing_both_ways() {
    let fast = Link { name: "A", one_way_us: 10_000, bytes_per_ms: 2_000 };
    let slow = Link { name: "B", one_way_us: 25_000, bytes_per_ms: 1_000 };
    let cases = [
        ("to the slower path", [fast, slow]),
        ("to the faster path", [Link { name: "A", ..slow }, Link { name: "B", ..fast }]),
    ];
    for (seed, (case, links)) in cases.into_iter().enumerate() {
        let seed = seed as u64 + 1;
        let delta_ms = links[0].one_way_us.abs_diff(links[1].one_way_us) / 1000;
        let mut t = Paced::new(seed, links, None, 400);
        for _ in 0..500 {
            t.round(true);
        }
        t.sim.client.core.request_switch("B".into(), t.sim.now()).expect("a switch starts");
        t.sim.switches_requested += 1;
        let (began, ended) = t.through_switch(5_000);
        for _ in 0..500 {
            t.round(true);
        }
        let window = (began.saturating_sub(100), ended + 100);
        let gaps = (t.got_up.longest_gap(window.0, window.1), t.got_down.longest_gap(window.0, window.1));
        let during = (t.got_up.between(began, ended), t.got_down.between(began, ended));
        eprintln!("{case}: switch {} ms, delivering rounds during it {during:?}, longest gaps (up, down) {gaps:?} ms, delta {delta_ms} ms", ended - began);
        assert!(during.0 > 0 && during.1 > 0, "{case}: no data moved during the switch: {during:?}");
        assert!(
            gaps.0 <= delta_ms + 5 && gaps.1 <= delta_ms + 5,
            "{case}: the apps paused {gaps:?} ms, delta {delta_ms} ms"
        );
        let sim = t.finish(seed);
        let report = sim.client.core.sessions().next().unwrap().switches.back().cloned().unwrap();
        assert_eq!(
            (report.kind, report.bytes_replayed, report.stall),
            (SwitchKind::Planned, 0, Duration::ZERO),
            "{case}"
        );
        assert_eq!(sim.switch_results.len(), 1);
    }
}

/// The old path dies right after the switch began, with both sides' CUTOVERs and everything else
/// it carried: the server had already taken the client's CUTOVER on the new path and held what
/// followed it there. The switch continues as an unexpected one on the new path: the held frames
/// are discarded, each side resends from the offsets the other reports, and every byte arrives once.
#[test]
fn the_old_path_lost_before_its_cutover_arrived_loses_and_duplicates_nothing() {
    for (seed, (a_ms, b_ms)) in [(10u64, 25u64), (25, 10), (40, 2)].into_iter().enumerate() {
        let seed = seed as u64 + 20;
        let links = [
            Link { name: "A", one_way_us: a_ms * 1000, bytes_per_ms: 2_000 },
            Link { name: "B", one_way_us: b_ms * 1000, bytes_per_ms: 2_000 },
        ];
        let mut t = Paced::new(seed, links, None, 800);
        for _ in 0..400 {
            t.round(true);
        }
        t.sim.client.core.request_switch("B".into(), t.sim.now()).expect("a switch starts");
        t.sim.switches_requested += 1;
        while !t.in_switch() {
            t.round(true);
        }
        // The CUTOVERs are queued, not delivered: A goes down with them (the client notices in 2 ms).
        t.sim.lose_active(5_000, 2);
        for _ in 0..3_000 {
            t.round(true);
        }
        let sim = t.finish(seed);
        let report = sim.client.core.sessions().next().unwrap().switches.back().cloned().unwrap();
        assert_eq!((report.kind, report.to.as_deref()), (SwitchKind::Unexpected, Some("B")), "seed {seed}");
        assert_eq!(sim.epoch(), 2, "seed {seed}: the planned epoch, then the resume's");
    }
}

/// The old path turns into a black hole right after the switch began (nothing arrives, no error):
/// neither side gets the other's CUTOVER on it, the planned steps get no answer, and after the step
/// timeout (3 s) both fall back to the unexpected switch on the new path. Meanwhile the server holds
/// the client's frames that came on the new path, at most its budget (here 64 KiB): then it stops
/// reading that path, so TCP slows the client. Every byte arrives once.
#[test]
fn a_black_holed_old_path_falls_back_after_the_step_timeout_with_bounded_holding() {
    let links = [
        Link { name: "A", one_way_us: 10_000, bytes_per_ms: 2_000 },
        Link { name: "B", one_way_us: 25_000, bytes_per_ms: 1_000 },
    ];
    let mut t = Paced::new(31, links, Some(64 * 1024), 400);
    for _ in 0..400 {
        t.round(true);
    }
    t.sim.client.core.request_switch("B".into(), t.sim.now()).expect("a switch starts");
    t.sim.switches_requested += 1;
    while !t.in_switch() {
        t.round(true);
    }
    let black_hole_at = t.now_ms();
    for p in t.sim.paths.iter_mut().filter(|p| p.link.name == "A") {
        p.dead = true;
    }
    let (_, ended) = t.through_switch(10_000);
    assert!(ended - black_hole_at >= 3_000, "fell back after {} ms, before the step timeout", ended - black_hole_at);
    assert!(t.sim.pauses > 0, "the server held more than its budget without pausing the new path's reader");
    for _ in 0..2_000 {
        t.round(true);
    }
    let sim = t.finish(31);
    let report = sim.client.core.sessions().next().unwrap().switches.back().cloned().unwrap();
    assert_eq!((report.kind, report.to.as_deref()), (SwitchKind::Unexpected, Some("B")));
    assert!(report.steps.iter().any(|(step, _)| step.starts_with("step timeout")), "{:?}", report.steps);
}

/// A lost path with no standby: the dialer writes the SWITCH_UNEXPECTED right behind the new path's
/// HELLO, so the server resends as soon as it joins the path, and the client's data follows the
/// ALL_REDIRECTED that comes behind WELCOME. Counted in one-way delays of the new path from the
/// dial: HELLO arrives after 3 (TCP, TLS), the server's data after 4, the client's after 5, one
/// round trip sooner than waiting for WELCOME before sending SWITCH_UNEXPECTED.
#[test]
fn a_resume_on_a_new_path_sends_its_switch_unexpected_behind_hello() {
    let a = Link { name: "A", one_way_us: 10_000, bytes_per_ms: 2_000 };
    let b = Link { name: "B", one_way_us: 25_000, bytes_per_ms: 2_000 };
    let ow_ms = b.one_way_us / 1000;
    let mut t = Paced::new(7, [a, b], None, 200);
    for _ in 0..300 {
        t.round(true);
    }
    let notice_ms = t.sim.lose_active(3_000, 1) / 1000;
    for _ in 0..1_000 {
        t.round(true);
    }
    let end = t.now_ms();
    let gaps = (t.got_up.longest_gap(notice_ms, end), t.got_down.longest_gap(notice_ms, end));
    eprintln!("pauses after the loss was noticed (up, down): {gaps:?} ms, one-way delay {ow_ms} ms");
    assert_eq!(t.sim.aheads_sent, 1, "the resume's path carried no SWITCH_UNEXPECTED behind HELLO");
    assert!(gaps.1 <= 4 * ow_ms + 10, "server to client paused {} ms: more than 4 one-way delays", gaps.1);
    assert!(gaps.0 <= 5 * ow_ms + 10, "client to server paused {} ms: more than 5 one-way delays", gaps.0);
    let sim = t.finish(7);
    let report = sim.client.core.sessions().next().unwrap().switches.back().cloned().unwrap();
    assert_eq!(report.kind, SwitchKind::Unexpected);
}
