//! The transition state machines with an injected clock and a simulated network that loses,
//! duplicates and reorders control messages (seeded, so every failure replays).

mod support;

use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::transition::{
    ClientTransition, ControlMessage, Epoch, Event, ExpiryReason, PathId, ServerTransition, StreamOffset, SwitchKind,
    SwitchRequest, SwitchSummary, TimerReason, Transition, TransitionConfig, TransitionError, MAX_EPOCH_STEP,
};
use std::collections::{BTreeMap, BTreeSet};
use support::Rng;

const SESSION: u64 = 0x5e55;
const P0: PathId = PathId(0);
const P1: PathId = PathId(1);
const P2: PathId = PathId(2);
const P3: PathId = PathId(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// Network behaviour: percentages and a one-way delay range (a range wider than the send interval
/// reorders messages).
#[derive(Debug, Clone, Copy)]
struct Lossy {
    loss: u64,
    dup: u64,
    min_delay_ms: u64,
    max_delay_ms: u64,
}

const CLEAN: Lossy = Lossy { loss: 0, dup: 0, min_delay_ms: 10, max_delay_ms: 10 };

struct InFlight {
    at: Instant,
    seq: u64,
    to: Side,
    path: PathId,
    bytes: Vec<u8>,
}

struct Pair {
    now: Instant,
    client: ClientTransition,
    server: ServerTransition,
    rng: Rng,
    net: Lossy,
    in_flight: Vec<InFlight>,
    seq: u64,
    dead_paths: BTreeSet<PathId>,
    client_received: BTreeMap<u32, u64>,
    server_received: BTreeMap<u32, u64>,
    client_events: Vec<(Instant, Event)>,
    server_events: Vec<(Instant, Event)>,
    /// Every message handed to the network: (when, from, path, name).
    sent: Vec<(Instant, Side, PathId, &'static str)>,
    /// On `ResumeNeeded { candidate: None }`, the path the client's daemon opens (if any).
    reopen: Option<PathId>,
}

impl Pair {
    fn new(seed: u64, net: Lossy, config: TransitionConfig) -> Self {
        Pair {
            now: Instant::from_millis(1_000),
            client: ClientTransition::new(config, SESSION, P0),
            server: ServerTransition::new(config, SESSION, P0),
            rng: Rng::new(seed),
            net,
            in_flight: Vec::new(),
            seq: 0,
            dead_paths: BTreeSet::new(),
            client_received: BTreeMap::new(),
            server_received: BTreeMap::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            sent: Vec::new(),
            reopen: None,
        }
    }

    /// Moves transmits into the network and reacts to events like the shell would.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some((path, msg)) = self.client.poll_transmit() {
                self.send(Side::Server, path, &msg);
                progressed = true;
            }
            while let Some((path, msg)) = self.server.poll_transmit() {
                self.send(Side::Client, path, &msg);
                progressed = true;
            }
            while let Some(ev) = self.client.poll_event() {
                if let Event::ResumeNeeded { candidate } = ev {
                    if let Some(path) = candidate.or(self.reopen) {
                        self.client.resume_on(path, &self.client_received, self.now).expect("client lost its path");
                    }
                }
                self.client_events.push((self.now, ev));
                progressed = true;
            }
            while let Some(ev) = self.server.poll_event() {
                self.server_events.push((self.now, ev));
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
    }

    fn send(&mut self, to: Side, path: PathId, msg: &ControlMessage) {
        let from = if to == Side::Server { Side::Client } else { Side::Server };
        self.sent.push((self.now, from, path, msg.name()));
        let copies = if self.rng.chance(self.net.dup) { 2 } else { 1 };
        for _ in 0..copies {
            if self.rng.chance(self.net.loss) {
                continue;
            }
            let delay = self.rng.range(self.net.min_delay_ms, self.net.max_delay_ms);
            self.seq += 1;
            self.in_flight.push(InFlight {
                at: self.now + Duration::from_millis(delay),
                seq: self.seq,
                to,
                path,
                bytes: msg.to_bytes(),
            });
        }
    }

    /// Advances the clock to the next delivery or timer and acts on it. False when nothing is left.
    fn step(&mut self) -> bool {
        self.pump();
        let next_delivery = self.in_flight.iter().map(|m| m.at).min();
        let next = [next_delivery, self.client.poll_timeout().map(|t| t.0), self.server.poll_timeout().map(|t| t.0)]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next else { return false };
        assert!(next >= self.now, "a machine asked for a wake-up in the past");
        self.now = next;
        // Deliver everything due, in arrival order (ties by send order).
        let mut due: Vec<InFlight> = Vec::new();
        let mut i = 0;
        while i < self.in_flight.len() {
            if self.in_flight[i].at <= self.now {
                due.push(self.in_flight.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|m| (m.at, m.seq));
        for m in due {
            if self.dead_paths.contains(&m.path) {
                continue;
            }
            let msg = ControlMessage::decode(&m.bytes).expect("encoded by the machines");
            match m.to {
                Side::Client => self.client.handle_message(m.path, msg, self.now),
                Side::Server => self
                    .server
                    .handle_message(m.path, msg, &self.server_received, self.now)
                    .expect("the client's epochs are within a step"),
            }
            self.pump();
        }
        if self.client.poll_timeout().is_some_and(|(at, _)| at <= self.now) {
            self.client.handle_timeout(self.now);
        }
        if self.server.poll_timeout().is_some_and(|(at, _)| at <= self.now) {
            self.server.handle_timeout(self.now);
        }
        self.pump();
        true
    }

    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Pair) -> bool) {
        let end = self.now + limit;
        while !done(self) {
            assert!(self.now <= end, "not done within {limit} (now {})", self.now);
            if !self.step() {
                assert!(done(self), "nothing left to do and not done");
                return;
            }
        }
    }

    /// Runs until both sides are idle (no switch, nothing in flight) or `limit`.
    fn settle(&mut self, limit: Duration) {
        let end = self.now + limit;
        while self.now <= end && self.step() {}
    }

    fn done_count(events: &[(Instant, Event)]) -> usize {
        events.iter().filter(|(_, e)| matches!(e, Event::SwitchDone(_))).count()
    }

    fn summaries(events: &[(Instant, Event)]) -> Vec<SwitchSummary> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::SwitchDone(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }

    fn resends(events: &[(Instant, Event)]) -> Vec<(u32, u64)> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Resend { stream, from } => Some((*stream, *from)),
                _ => None,
            })
            .collect()
    }
}

/// Asserts that `steps` appear in `timeline` in this order (each as a prefix of an entry).
fn assert_steps_in_order(summary: &SwitchSummary, steps: &[&str]) {
    let mut it = summary.timeline.iter();
    for step in steps {
        assert!(it.any(|e| e.step.starts_with(step)), "step {step} missing or out of order in {:#?}", summary.timeline);
    }
    let times: Vec<Instant> = summary.timeline.iter().map(|e| e.at).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "timeline not monotonic");
}

#[test]
fn transition_planned_switch_every_step_in_order() {
    let mut pair = Pair::new(1, CLEAN, TransitionConfig::default());
    assert_eq!(pair.client.request_switch(P1, pair.now), Ok(SwitchRequest::Started(Epoch(1))));
    pair.run_until(Duration::from_secs(5), |p| {
        Pair::done_count(&p.client_events) == 1 && Pair::done_count(&p.server_events) == 1
    });

    // The wire, message by message, with the path each went out on.
    let wire: Vec<(Side, PathId, &str)> = pair.sent.iter().map(|&(_, s, p, n)| (s, p, n)).collect();
    use Side::*;
    assert_eq!(
        wire,
        [
            // The client's stream frames move at once: a CUTOVER closes them on the old path and
            // opens them on the new; the server does the same once the new path's CUTOVER named it.
            (Client, P0, "CUTOVER"),
            (Client, P0, "SWITCH_STEP1"),
            (Client, P1, "CUTOVER"),
            (Server, P0, "CUTOVER"),
            (Server, P1, "CUTOVER"),
            (Server, P0, "LAST_MESSAGE_BEFORE_REDIRECTION"),
            (Server, P0, "ACK"),
            (Client, P0, "LAST_MESSAGE_BEFORE_REDIRECTION"),
            (Server, P0, "LAST_MESSAGE_BEFORE_REDIRECTION"),
            (Server, P0, "OK_TO_REDIRECTION"),
            (Client, P0, "CLIENT_SERVICES_READY_FOR_REDIRECTION"),
            (Server, P0, "SERVER_SERVICES_READY_FOR_REDIRECTION"),
            (Client, P1, "SWITCH_STEP2"),
            (Server, P1, "ALL_REDIRECTED"),
        ]
    );
    // 4 round trips of 20 ms, no retransmission.
    assert_eq!(pair.now, Instant::from_millis(1_080));

    for (ep, path) in [(pair.client.epoch(), pair.client.path()), (pair.server.epoch(), pair.server.path())] {
        assert_eq!((ep, path), (Epoch(1), P1));
    }
    assert!(!pair.client.is_switching() && !pair.server.is_switching());

    let client: Vec<Event> = pair.client_events.iter().map(|(_, e)| e.clone()).collect();
    // No StopSending in a planned switch: the data is redirected, never stopped.
    assert_eq!(client[0], Event::Redirect { from: P0, to: P1 });
    assert_eq!(client[1], Event::RetireOldPath { path: P0 });
    assert_eq!(client[2], Event::ResumeOn { path: P1, epoch: Epoch(1), replay: false });
    let Event::SwitchDone(cs) = &client[3] else { panic!("{client:?}") };
    assert_eq!((cs.kind, cs.epoch, cs.from, cs.to), (SwitchKind::Planned, Epoch(1), Some(P0), P1));
    assert_steps_in_order(
        cs,
        &[
            "CNAPT-1..11",
            // SNAPT-8 (LAST_MESSAGE) goes out before SNAPT-9 (ACK), so CNAPT-13 is met first.
            "CNAPT-13",
            "[0119] ACK",
            "CNAPT-12",
            "CNAPT-14",
            "CNAPT-15..17",
            "CNAPT-18",
            "CNAPT-19",
            "CNAPT-20..22",
            "CNAPT-29",
            "CNAPT-33",
            "CNAPT-34",
        ],
    );
    let server: Vec<Event> = pair.server_events.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(server[0], Event::Redirect { from: P0, to: P1 });
    assert_eq!(server[1], Event::ResumeOn { path: P1, epoch: Epoch(1), replay: false });
    let Event::SwitchDone(ss) = &server[2] else { panic!("{server:?}") };
    assert_eq!((ss.kind, ss.epoch, ss.from, ss.to), (SwitchKind::Planned, Epoch(1), Some(P0), P1));
    assert_steps_in_order(
        ss,
        &[
            "SNAPT-1 ",
            "SNAPT-2..7",
            "SNAPT-8",
            "SNAPT-9",
            "SNAPT-10",
            "SNAPT-11",
            "SNAPT-12",
            "SNAPT-13..14",
            "SNAPT-15",
            "SNAPT-16",
            "SNAPT-17..21",
            "SNAPT-22",
            "SNAPT-23",
        ],
    );
    assert!(Pair::resends(&pair.client_events).is_empty() && Pair::resends(&pair.server_events).is_empty());
    assert_eq!(pair.client.poll_timeout(), None);
    assert_eq!(pair.server.poll_timeout(), None);
}

#[test]
fn transition_planned_switch_survives_loss_duplication_and_reordering() {
    let net = Lossy { loss: 25, dup: 15, min_delay_ms: 1, max_delay_ms: 150 };
    let (mut planned, mut fell_back) = (0, 0);
    for seed in 0..400 {
        let mut pair = Pair::new(seed, net, TransitionConfig::default());
        pair.client_received = BTreeMap::from([(1, 10), (2, 20)]);
        pair.server_received = BTreeMap::from([(1, 11)]);
        pair.client.request_switch(P1, pair.now).unwrap();
        pair.run_until(Duration::from_secs(60), |p| Pair::done_count(&p.client_events) == 1);
        // Let every late duplicate arrive: nothing may change any more.
        pair.settle(Duration::from_secs(30));
        assert!(pair.in_flight.is_empty(), "seed {seed}");
        let cs = Pair::summaries(&pair.client_events);
        assert_eq!(cs.len(), 1, "seed {seed}: client finished {} switches", cs.len());
        let ss = Pair::summaries(&pair.server_events);
        let last = ss.last().unwrap_or_else(|| panic!("seed {seed}: server never finished"));
        assert_eq!((last.epoch, last.to), (cs[0].epoch, cs[0].to), "seed {seed}");
        assert_eq!((pair.client.epoch(), pair.client.path()), (pair.server.epoch(), pair.server.path()), "seed {seed}");
        assert_eq!(pair.client.path(), P1, "seed {seed}");
        assert!(!pair.client.is_switching() && !pair.server.is_switching(), "seed {seed}");
        match cs[0].kind {
            SwitchKind::Planned => {
                planned += 1;
                assert_eq!(ss.len(), 1, "seed {seed}");
                assert_eq!(cs[0].epoch, Epoch(1));
                assert!(Pair::resends(&pair.client_events).is_empty(), "seed {seed}");
            }
            SwitchKind::Unexpected => {
                // Fell back after a step timeout: both sides resend from the peer's offsets, once.
                fell_back += 1;
                assert_eq!(Pair::resends(&pair.client_events), [(1, 11)], "seed {seed}");
                assert_eq!(Pair::resends(&pair.server_events), [(1, 10), (2, 20)], "seed {seed}");
            }
        }
    }
    assert!(planned > 300, "only {planned} of 400 planned switches completed as planned ({fell_back} fell back)");
}

#[test]
fn transition_second_switch_requested_during_one_is_queued() {
    for seed in 0..100 {
        let net = if seed == 0 { CLEAN } else { Lossy { loss: 10, dup: 10, min_delay_ms: 1, max_delay_ms: 60 } };
        let mut pair = Pair::new(seed, net, TransitionConfig::default());
        assert_eq!(pair.client.request_switch(P1, pair.now), Ok(SwitchRequest::Started(Epoch(1))));
        pair.step();
        pair.step();
        assert!(pair.client.is_switching());
        assert_eq!(pair.client.request_switch(P2, pair.now), Ok(SwitchRequest::Queued));
        // A newer decision replaces the queued one.
        assert_eq!(pair.client.request_switch(P3, pair.now), Ok(SwitchRequest::Queued));
        assert_eq!(pair.client.queued_switch(), Some(P3));
        pair.run_until(Duration::from_secs(120), |p| Pair::done_count(&p.client_events) == 2);
        pair.settle(Duration::from_secs(30));
        let cs = Pair::summaries(&pair.client_events);
        assert_eq!(cs.len(), 2, "seed {seed}");
        assert_eq!((cs[0].from, cs[0].to), (Some(P0), P1), "seed {seed}");
        assert_eq!((cs[1].from, cs[1].to), (Some(P1), P3), "seed {seed}");
        assert!(cs[1].epoch > cs[0].epoch);
        assert_eq!((pair.client.path(), pair.server.path()), (P3, P3), "seed {seed}");
        assert_eq!(pair.client.epoch(), pair.server.epoch(), "seed {seed}");
        assert_eq!(pair.client.queued_switch(), None);
    }
    // Asking for the path already in use is an error, not a switch.
    let mut pair = Pair::new(0, CLEAN, TransitionConfig::default());
    assert_eq!(pair.client.request_switch(P0, pair.now), Err(TransitionError::AlreadyOnPath(P0)));
    // A queued request for the path the session ends up on is dropped.
    pair.client.request_switch(P1, pair.now).unwrap();
    pair.client.request_switch(P1, pair.now).unwrap();
    pair.settle(Duration::from_secs(10));
    assert_eq!(Pair::done_count(&pair.client_events), 1);
    assert_eq!(pair.client.epoch(), Epoch(1));
}

#[test]
fn transition_peer_silent_mid_planned_switch_falls_back_to_unexpected() {
    let config = TransitionConfig::default();
    let mut pair = Pair::new(7, CLEAN, config);
    pair.client_received = BTreeMap::from([(4, 4000), (9, 90)]);
    pair.server_received = BTreeMap::from([(4, 1234)]);
    pair.client.request_switch(P1, pair.now).unwrap();
    // The old path goes silent right after the client's LAST_MESSAGE_BEFORE_REDIRECTION.
    pair.run_until(Duration::from_secs(1), |p| {
        p.sent.iter().any(|s| s.1 == Side::Client && s.3 == "LAST_MESSAGE_BEFORE_REDIRECTION")
    });
    pair.dead_paths.insert(P0);
    let silent_since = pair.now;
    pair.run_until(Duration::from_secs(10), |p| Pair::done_count(&p.client_events) == 1);

    // The client retransmitted with backoff, then fell back after the step timeout.
    let retransmits: Vec<Instant> = pair
        .sent
        .iter()
        .filter(|s| s.1 == Side::Client && s.3 == "LAST_MESSAGE_BEFORE_REDIRECTION")
        .map(|s| s.0)
        .collect();
    let gaps: Vec<i64> = retransmits.windows(2).map(|w| (w[1] - w[0]).total_millis() as i64).collect();
    // Sent at 0, 200, 600, 1400 ms; the next one (3000 ms) is the step timeout itself.
    assert_eq!(gaps, [200, 400, 800]);
    let resume_sent = pair.sent.iter().find(|s| s.3 == "SWITCH_UNEXPECTED").unwrap();
    assert_eq!(resume_sent.2, P1, "the fallback uses the already open new path");
    assert_eq!(resume_sent.0, silent_since + config.step_timeout);

    let cs = &Pair::summaries(&pair.client_events)[0];
    assert_eq!((cs.kind, cs.to, cs.epoch), (SwitchKind::Unexpected, P1, Epoch(2)));
    assert_steps_in_order(
        cs,
        &["CNAPT-1..11", "CNAPT-12", "step timeout", "CNAPT-16*..17*", "CNAPT-21*", "CNAPT-22*", "CNAPT-23*"],
    );
    let ss = &Pair::summaries(&pair.server_events)[0];
    assert_eq!((ss.kind, ss.to, ss.epoch), (SwitchKind::Unexpected, P1, Epoch(2)));
    assert_steps_in_order(
        ss,
        &["SNAPT-1 ", "SNAPT-9", "step timeout", "SNAPT-1*..6*", "SNAPT-14*", "SNAPT-15*", "SNAPT-16*"],
    );
    assert_eq!(Pair::resends(&pair.server_events), [(4, 4000), (9, 90)]);
    assert_eq!(Pair::resends(&pair.client_events), [(4, 1234)]);
    assert!(pair.client_events.iter().any(|(_, e)| *e == Event::RetireOldPath { path: P0 }));
    assert_eq!((pair.server.epoch(), pair.server.path()), (Epoch(2), P1));
}

#[test]
fn transition_client_silent_mid_planned_switch_server_waits_then_expires() {
    let config = TransitionConfig::default();
    let mut pair = Pair::new(3, CLEAN, config);
    pair.client.request_switch(P1, pair.now).unwrap();
    pair.run_until(Duration::from_secs(1), |p| p.server.is_switching());
    // The client vanishes entirely (machine and paths).
    pair.dead_paths.extend([P0, P1]);
    let last_progress = pair.now;
    pair.client = ClientTransition::new(config, SESSION + 1, P2);
    pair.run_until(Duration::from_secs(120), |p| p.server.is_expired());
    let expired_at = pair.server_events.iter().find(|(_, e)| matches!(e, Event::SessionExpired { .. })).unwrap().0;
    assert_eq!(expired_at, last_progress + config.step_timeout + config.switch_timeout);
}

#[test]
fn transition_unexpected_switch_resends_from_the_peers_offsets() {
    for seed in 0..200 {
        let net = if seed == 0 { CLEAN } else { Lossy { loss: 30, dup: 20, min_delay_ms: 1, max_delay_ms: 200 } };
        let mut pair = Pair::new(seed, net, TransitionConfig::default());
        pair.client_received = BTreeMap::from([(1, 100), (2, 5000), (7, 0)]);
        pair.server_received = BTreeMap::from([(1, 700), (3, 42)]);
        pair.reopen = Some(P2);
        pair.client.handle_path_lost(P0, pair.now);
        if seed % 2 == 0 {
            // The server may notice the loss or not; both must work.
            pair.server.handle_path_lost(P0, pair.now);
        }
        pair.dead_paths.insert(P0);
        pair.run_until(Duration::from_secs(60), |p| Pair::done_count(&p.client_events) == 1);
        pair.settle(Duration::from_secs(30));
        assert_eq!(Pair::done_count(&pair.client_events), 1, "seed {seed}");
        assert_eq!(Pair::done_count(&pair.server_events), 1, "seed {seed}");
        assert_eq!(Pair::resends(&pair.server_events), [(1, 100), (2, 5000), (7, 0)], "seed {seed}");
        assert_eq!(Pair::resends(&pair.client_events), [(1, 700), (3, 42)], "seed {seed}");
        // Resend comes before resuming, on both sides.
        for events in [&pair.client_events, &pair.server_events] {
            let names: Vec<&Event> = events.iter().map(|(_, e)| e).collect();
            let last_resend = names.iter().rposition(|e| matches!(e, Event::Resend { .. })).unwrap();
            let resume = names.iter().position(|e| matches!(e, Event::ResumeOn { .. })).unwrap();
            assert!(last_resend < resume, "seed {seed}: {names:?}");
        }
        assert_eq!((pair.client.epoch(), pair.client.path()), (Epoch(1), P2), "seed {seed}");
        assert_eq!((pair.server.epoch(), pair.server.path()), (Epoch(1), P2), "seed {seed}");
        let cs = &Pair::summaries(&pair.client_events)[0];
        assert_eq!((cs.kind, cs.from), (SwitchKind::Unexpected, Some(P0)));
        assert_steps_in_order(cs, &["CNAPT-1*..6*", "CNAPT-16*..17*", "CNAPT-21*", "CNAPT-22*", "CNAPT-23*"]);
    }
}

#[test]
fn transition_outage_beyond_the_switch_timeout_expires_both_sides() {
    let config = TransitionConfig {
        switch_timeout: Duration::from_secs(60),
        client_give_up: Duration::from_secs(45),
        ..TransitionConfig::default()
    };
    let mut pair = Pair::new(5, CLEAN, config);
    let lost_at = pair.now;
    pair.server.handle_path_lost(P0, lost_at);
    pair.client.handle_path_lost(P0, lost_at);
    assert_eq!(pair.server.poll_timeout(), Some((lost_at + Duration::from_secs(60), TimerReason::SwitchTimeout)));
    assert_eq!(pair.client.poll_timeout(), Some((lost_at + Duration::from_secs(45), TimerReason::GiveUp)));
    // The client finds a path at 10 s but the server never hears it (e.g. the server's side is down).
    pair.dead_paths.insert(P0);
    pair.dead_paths.insert(P1);
    pair.pump();
    assert!(pair.in_flight.is_empty());
    pair.now = lost_at + Duration::from_secs(10);
    pair.client.resume_on(P1, &BTreeMap::from([(1, 1)]), pair.now).unwrap();
    pair.run_until(Duration::from_secs(120), |p| p.server.is_expired() && p.client.is_expired());

    let expiry = |events: &[(Instant, Event)]| {
        let found: Vec<_> = events.iter().filter(|(_, e)| matches!(e, Event::SessionExpired { .. })).cloned().collect();
        assert_eq!(found.len(), 1, "{events:?}");
        found[0].clone()
    };
    assert_eq!(
        expiry(&pair.server_events),
        (lost_at + Duration::from_secs(60), Event::SessionExpired { reason: ExpiryReason::SwitchTimeout })
    );
    assert_eq!(
        expiry(&pair.client_events),
        (lost_at + Duration::from_secs(45), Event::SessionExpired { reason: ExpiryReason::ClientGaveUp })
    );
    // The client kept retrying SWITCH_UNEXPECTED with bounded backoff until it gave up.
    let tries: Vec<Instant> = pair.sent.iter().filter(|s| s.3 == "SWITCH_UNEXPECTED").map(|s| s.0).collect();
    assert!(tries.len() > 10, "{} tries", tries.len());
    assert!(tries.windows(2).all(|w| w[1] - w[0] <= config.retransmit_max));
    assert!(*tries.last().unwrap() < lost_at + Duration::from_secs(45));
    // Nothing brings an expired session back.
    assert_eq!(pair.client.request_switch(P2, pair.now), Err(TransitionError::Expired));
    let late = ControlMessage::SwitchUnexpected { epoch: Epoch(9), session: SESSION, received: vec![] };
    pair.server.handle_message(P2, late, &pair.server_received, pair.now).unwrap();
    assert_eq!(pair.server.poll_transmit(), None);
    assert_eq!(pair.server.poll_event(), None);
    assert_eq!(pair.server.poll_timeout(), None);
    assert_eq!(pair.client.poll_timeout(), None);
}

#[test]
fn transition_switch_timeout_fires_within_one_poll() {
    // Driven only by poll_timeout: the first wake-up the server asks for is the expiry itself.
    let config = TransitionConfig { switch_timeout: Duration::from_millis(1234), ..TransitionConfig::default() };
    let mut server = ServerTransition::new(config, SESSION, P0);
    let t0 = Instant::from_millis(50);
    server.handle_path_lost(P0, t0);
    assert_eq!(server.poll_event(), Some(Event::StopSending { path: P0 }));
    let (at, reason) = server.poll_timeout().unwrap();
    assert_eq!((at, reason), (t0 + Duration::from_millis(1234), TimerReason::SwitchTimeout));
    server.handle_timeout(at - Duration::from_millis(1));
    assert_eq!(server.poll_event(), None);
    server.handle_timeout(at);
    assert_eq!(server.poll_event(), Some(Event::SessionExpired { reason: ExpiryReason::SwitchTimeout }));
    // Resumption just before the deadline would have worked instead.
    let mut server = ServerTransition::new(config, SESSION, P0);
    server.handle_path_lost(P0, t0);
    let resume = ControlMessage::SwitchUnexpected { epoch: Epoch(1), session: SESSION, received: vec![] };
    server.handle_message(P1, resume, &Vec::<StreamOffset>::new(), at - Duration::from_millis(1)).unwrap();
    server.handle_timeout(at);
    assert!(!server.is_expired());
    assert_eq!((server.epoch(), server.path()), (Epoch(1), P1));
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn transition_a_client_cannot_push_the_epoch_out_of_reach() {
    let now = Instant::from_millis(1_000);
    let none = Vec::<StreamOffset>::new();
    let mut server = ServerTransition::new(TransitionConfig::default(), SESSION, P0);
    let jump =
        |proposed, highest| Err(TransitionError::EpochJump { proposed: Epoch(proposed), highest: Epoch(highest) });

    // Straight to the last epoch, where no later switch could be proposed: refused, nothing moves.
    let last = ControlMessage::SwitchUnexpected { epoch: Epoch(u32::MAX), session: SESSION, received: vec![] };
    assert_eq!(server.handle_message(P1, last, &none, now), jump(u32::MAX, 0));
    let planned = ControlMessage::SwitchStep1 { epoch: Epoch(MAX_EPOCH_STEP + 1) };
    assert_eq!(server.handle_message(P0, planned, &none, now), jump(MAX_EPOCH_STEP + 1, 0));
    assert_eq!(server.poll_transmit(), None);
    assert_eq!(server.poll_event(), None);
    assert_eq!((server.epoch(), server.path(), server.is_switching()), (Epoch(0), P0, false));

    // A client whose proposals got lost on the way (resumptions that died before their message
    // arrived) is still within reach, and the step counts from the epoch accepted.
    let resume = ControlMessage::SwitchUnexpected { epoch: Epoch(MAX_EPOCH_STEP), session: SESSION, received: vec![] };
    assert_eq!(server.handle_message(P1, resume, &none, now), Ok(()));
    assert_eq!((server.epoch(), server.path()), (Epoch(MAX_EPOCH_STEP), P1));
    let too_far = ControlMessage::SwitchStep1 { epoch: Epoch(2 * MAX_EPOCH_STEP + 1) };
    assert_eq!(server.handle_message(P1, too_far, &none, now), jump(2 * MAX_EPOCH_STEP + 1, MAX_EPOCH_STEP));
    while server.poll_transmit().is_some() {}
    let next = Epoch(MAX_EPOCH_STEP + 1);
    assert_eq!(server.handle_message(P1, ControlMessage::SwitchStep1 { epoch: next }, &none, now), Ok(()));
    assert!(server.is_switching());
    // The answer waits for the client's CUTOVER on its new path, which names where to redirect to.
    assert_eq!(server.poll_transmit(), None);
    assert_eq!(server.handle_message(P2, ControlMessage::Cutover { epoch: next }, &none, now), Ok(()));
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit()).collect();
    assert_eq!(
        sent,
        [
            (P1, ControlMessage::Cutover { epoch: next }),
            (P2, ControlMessage::Cutover { epoch: next }),
            (P1, ControlMessage::LastMessageBeforeRedirection { epoch: next }),
            (P1, ControlMessage::Ack { epoch: next }),
        ]
    );
    // A CUTOVER that jumps too far is refused like any other request.
    let mut fresh = ServerTransition::new(TransitionConfig::default(), SESSION, P0);
    let far = ControlMessage::Cutover { epoch: Epoch(MAX_EPOCH_STEP + 1) };
    assert_eq!(fresh.handle_message(P1, far, &none, now), jump(MAX_EPOCH_STEP + 1, 0));
    assert_eq!(fresh.poll_transmit(), None);
}

#[test]
fn transition_late_messages_from_an_old_epoch_are_ignored() {
    let mut pair = Pair::new(11, CLEAN, TransitionConfig::default());
    pair.client.request_switch(P1, pair.now).unwrap();
    pair.settle(Duration::from_secs(5));
    assert_eq!((pair.client.epoch(), pair.server.epoch()), (Epoch(1), Epoch(1)));
    let (ce, se) = (pair.client_events.len(), pair.server_events.len());
    let now = pair.now;
    let e0 = Epoch(0);
    let e1 = Epoch(1);
    let to_client = [
        ControlMessage::Ack { epoch: e1 },
        ControlMessage::LastMessageBeforeRedirection { epoch: e1 },
        ControlMessage::OkToRedirection { epoch: e1 },
        ControlMessage::ServerServicesReadyForRedirection { epoch: e1 },
        ControlMessage::AllRedirected { epoch: e1, received: vec![StreamOffset { stream: 1, received: 5 }] },
        ControlMessage::AllRedirected { epoch: e0, received: vec![] },
        ControlMessage::Ack { epoch: Epoch(2) },
    ];
    for msg in to_client {
        for path in [P0, P1] {
            pair.client.handle_message(path, msg.clone(), now);
        }
    }
    assert_eq!(pair.client.poll_transmit(), None);
    assert_eq!(pair.client.poll_event(), None);
    let to_server = [
        ControlMessage::SwitchStep1 { epoch: e1 },
        ControlMessage::SwitchStep1 { epoch: e0 },
        ControlMessage::LastMessageBeforeRedirection { epoch: e1 },
        ControlMessage::ClientServicesReadyForRedirection { epoch: e1 },
        ControlMessage::SwitchStep2 { epoch: e1, session: SESSION },
        ControlMessage::SwitchUnexpected { epoch: e1, session: SESSION, received: vec![] },
        ControlMessage::SwitchUnexpected { epoch: e0, session: SESSION, received: vec![] },
        // Right epoch, wrong session: not this session's message.
        ControlMessage::SwitchUnexpected { epoch: Epoch(5), session: SESSION + 1, received: vec![] },
    ];
    for msg in to_server {
        pair.server.handle_message(P0, msg, &pair.server_received, now).unwrap();
    }
    assert_eq!(pair.server.poll_transmit(), None, "old-path messages must not be answered");
    assert_eq!(pair.server.poll_event(), None);
    // A duplicate SWITCH_STEP2 on the current path only gets ALL_REDIRECTED again, no event.
    pair.server
        .handle_message(P1, ControlMessage::SwitchStep2 { epoch: e1, session: SESSION }, &pair.server_received, now)
        .unwrap();
    assert_eq!(pair.server.poll_transmit(), Some((P1, ControlMessage::AllRedirected { epoch: e1, received: vec![] })));
    assert_eq!(pair.server.poll_event(), None);
    assert_eq!((pair.client_events.len(), pair.server_events.len()), (ce, se));

    // During the next switch, messages of the finished epoch still do nothing.
    pair.client.request_switch(P2, pair.now).unwrap();
    pair.pump();
    for msg in [ControlMessage::Ack { epoch: e1 }, ControlMessage::ServerServicesReadyForRedirection { epoch: e1 }] {
        pair.client.handle_message(P1, msg, pair.now);
    }
    assert_eq!(pair.client.poll_transmit(), None);
    pair.server
        .handle_message(
            P1,
            ControlMessage::SwitchStep2 { epoch: e1, session: SESSION },
            &pair.server_received,
            pair.now,
        )
        .unwrap();
    while pair.server.poll_transmit().is_some() {}
    pair.settle(Duration::from_secs(5));
    assert_eq!((pair.client.epoch(), pair.client.path()), (Epoch(2), P2));
    assert_eq!((pair.server.epoch(), pair.server.path()), (Epoch(2), P2));
    assert_eq!(Pair::done_count(&pair.client_events), 2);
    assert_eq!(Pair::done_count(&pair.server_events), 2);
}

#[test]
fn transition_the_new_paths_cutover_may_arrive_before_switch_step1() {
    // The new path is faster: the client's CUTOVER on it comes first. The server redirects its own
    // stream frames at once and answers SWITCH_STEP1 as soon as that arrives.
    let none = Vec::<StreamOffset>::new();
    let now = Instant::from_millis(1_000);
    let e = Epoch(1);
    let mut server = ServerTransition::new(TransitionConfig::default(), SESSION, P0);
    server.handle_message(P1, ControlMessage::Cutover { epoch: e }, &none, now).unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit()).collect();
    assert_eq!(sent, [(P0, ControlMessage::Cutover { epoch: e }), (P1, ControlMessage::Cutover { epoch: e })]);
    assert_eq!(server.poll_event(), Some(Event::Redirect { from: P0, to: P1 }));
    assert!(server.is_switching());
    // The client's CUTOVER on the old path orders its data only; a repeated one on the new path
    // (sent again with SWITCH_STEP1) changes nothing.
    server.handle_message(P0, ControlMessage::Cutover { epoch: e }, &none, now).unwrap();
    server.handle_message(P1, ControlMessage::Cutover { epoch: e }, &none, now).unwrap();
    assert_eq!((server.poll_transmit(), server.poll_event()), (None, None));
    server.handle_message(P0, ControlMessage::SwitchStep1 { epoch: e }, &none, now).unwrap();
    let sent: Vec<_> = std::iter::from_fn(|| server.poll_transmit()).collect();
    assert_eq!(
        sent,
        [(P0, ControlMessage::LastMessageBeforeRedirection { epoch: e }), (P0, ControlMessage::Ack { epoch: e })]
    );
    // SWITCH_STEP2 counts only on the path the CUTOVER named.
    for msg in [
        ControlMessage::LastMessageBeforeRedirection { epoch: e },
        ControlMessage::ClientServicesReadyForRedirection { epoch: e },
    ] {
        server.handle_message(P0, msg, &none, now).unwrap();
    }
    while server.poll_transmit().is_some() {}
    server.handle_message(P2, ControlMessage::SwitchStep2 { epoch: e, session: SESSION }, &none, now).unwrap();
    assert_eq!(server.poll_transmit(), None);
    server.handle_message(P1, ControlMessage::SwitchStep2 { epoch: e, session: SESSION }, &none, now).unwrap();
    assert_eq!(server.poll_transmit(), Some((P1, ControlMessage::AllRedirected { epoch: e, received: vec![] })));
    assert_eq!(server.poll_event(), Some(Event::ResumeOn { path: P1, epoch: e, replay: false }));
}

/// A resume whose SWITCH_UNEXPECTED went out behind HELLO: the same switch as `resume_on`, with
/// nothing sent twice; an announcement that is out of date (a newer one made, offsets moved on) is
/// refused, and its epoch is never proposed again, as the server may have acted on it.
#[test]
fn transition_a_switch_unexpected_sent_behind_hello() {
    let mut pair = Pair::new(3, CLEAN, TransitionConfig::default());
    pair.client_received = BTreeMap::from([(1, 100), (2, 5000)]);
    pair.server_received = BTreeMap::from([(1, 700)]);
    pair.client.handle_path_lost(P0, pair.now);
    pair.dead_paths.insert(P0);
    pair.pump();
    assert_eq!(pair.client.resume_message(&BTreeMap::<u32, u64>::new()).map(|m| m.epoch()), Some(Epoch(1)));
    // A newer dial: the first announcement is out of date, its epoch used up.
    let sent = pair.client.resume_message(&pair.client_received).expect("the session is lost");
    assert_eq!(sent.epoch(), Epoch(2));
    let first = ControlMessage::SwitchUnexpected { epoch: Epoch(1), session: SESSION, received: vec![] };
    assert_eq!(
        pair.client.resume_on_announced(P1, &first, &pair.client_received, pair.now),
        Err(TransitionError::StaleAnnouncement(P1))
    );
    // Offsets that moved on since: refused too.
    let moved = BTreeMap::from([(1, 150), (2, 5000)]);
    assert_eq!(
        pair.client.resume_on_announced(P2, &sent, &moved, pair.now),
        Err(TransitionError::StaleAnnouncement(P2))
    );
    // The dialer's path: the server reads it behind HELLO; the client sends nothing more.
    pair.send(Side::Server, P2, &sent);
    assert_eq!(pair.client.resume_on_announced(P2, &sent, &pair.client_received, pair.now), Ok(Epoch(2)));
    assert_eq!(pair.client.poll_transmit(), None, "SWITCH_UNEXPECTED went out behind HELLO already");
    pair.run_until(Duration::from_secs(10), |p| Pair::done_count(&p.client_events) == 1);
    assert_eq!(Pair::done_count(&pair.server_events), 1);
    assert_eq!(Pair::resends(&pair.server_events), [(1, 100), (2, 5000)]);
    assert_eq!(Pair::resends(&pair.client_events), [(1, 700)]);
    assert_eq!((pair.client.epoch(), pair.server.epoch()), (Epoch(2), Epoch(2)));
    let unexpected = pair.sent.iter().filter(|s| s.3 == "SWITCH_UNEXPECTED").count();
    assert_eq!(unexpected, 1, "{:?}", pair.sent);
    let cs = &Pair::summaries(&pair.client_events)[0];
    assert_steps_in_order(cs, &["CNAPT-1*..6*", "CNAPT-16*..17*", "CNAPT-21*", "CNAPT-22*", "CNAPT-23*"]);
    // After a resume, nothing is announced.
    assert_eq!(pair.client.resume_message(&pair.client_received), None);
}
