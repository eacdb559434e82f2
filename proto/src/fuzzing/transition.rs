//! `transition`: both transition machines fed arbitrary message sequences, mixed with the messages
//! they send each other and the shell's calls (paths lost, switches requested, resumptions, time).

use std::collections::{BTreeMap, VecDeque};

use arbitrary::{Arbitrary, Unstructured};

use crate::time::{Duration, Instant};
use crate::transition::{
    ClientTransition, ControlMessage, Epoch, Event, PathId, ServerTransition, StreamOffset, Transition,
    TransitionConfig, MAX_EPOCH_STEP,
};

const SESSION: u64 = 0x5e55;
/// Paths in play; more would only dilute the collisions worth finding.
const PATHS: u8 = 4;
/// Messages on their way per direction; beyond that the network loses the oldest.
const IN_FLIGHT: usize = 32;
/// What one input may make a machine emit, beyond one event per stream offset it carries: a step
/// sends at most two messages and raises at most a handful of events.
const PER_INPUT: usize = 8;
/// Stream offsets in one arbitrary message: enough to see them all resent.
const MAX_OFFSETS: usize = 16;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum EpochSel {
    /// The receiver's epoch plus this much: the epochs that matter.
    Near(u8),
    /// Anything, up to the last epoch.
    Any(u32),
}

#[derive(Arbitrary, Debug)]
struct Msg {
    kind: u8,
    epoch: EpochSel,
    /// The session id of the session, or a wrong one.
    right_session: bool,
    offsets: Vec<(u8, u64)>,
}

impl Msg {
    fn build(&self, base: Epoch) -> ControlMessage {
        let epoch = match self.epoch {
            EpochSel::Near(d) => Epoch(base.0.saturating_add(u32::from(d))),
            EpochSel::Any(e) => Epoch(e),
        };
        let session = if self.right_session { SESSION } else { SESSION ^ 1 };
        let received = self
            .offsets
            .iter()
            .take(MAX_OFFSETS)
            .map(|&(stream, received)| StreamOffset { stream: u32::from(stream), received })
            .collect();
        match self.kind % 10 {
            0 => ControlMessage::SwitchStep1 { epoch },
            1 => ControlMessage::Ack { epoch },
            2 => ControlMessage::LastMessageBeforeRedirection { epoch },
            3 => ControlMessage::OkToRedirection { epoch },
            4 => ControlMessage::ClientServicesReadyForRedirection { epoch },
            5 => ControlMessage::ServerServicesReadyForRedirection { epoch },
            6 => ControlMessage::SwitchStep2 { epoch, session },
            7 => ControlMessage::AllRedirected { epoch, received },
            8 => ControlMessage::Cutover { epoch },
            _ => ControlMessage::SwitchUnexpected { epoch, session, received },
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A stranger's message (or a broken peer's) reaches the server on a path.
    ToServer {
        path: u8,
        msg: Msg,
    },
    /// The same for the client.
    ToClient {
        path: u8,
        msg: Msg,
    },
    /// The oldest message the client sent reaches the server (a well-behaved network).
    DeliverToServer,
    DeliverToClient,
    /// The oldest message in flight is lost.
    DropToServer,
    DropToClient,
    ServerPathLost(u8),
    ClientPathLost(u8),
    RequestSwitch(u8),
    ResumeOn(u8),
    /// Milliseconds pass; both machines run their timers.
    Advance(u16),
}

struct Harness {
    now: Instant,
    client: ClientTransition,
    server: ServerTransition,
    to_server: VecDeque<(PathId, ControlMessage)>,
    to_client: VecDeque<(PathId, ControlMessage)>,
    client_received: BTreeMap<u32, u64>,
    server_received: BTreeMap<u32, u64>,
    client_expired: bool,
    server_expired: bool,
}

/// Checks: no panic; neither machine's epoch ever goes down, and the server's moves at most
/// [`MAX_EPOCH_STEP`] at a time, whatever a client proposes; a `ResumeOn` names the machine's epoch
/// now; nothing resumes after a machine expired; what one input makes a machine send or raise is
/// bounded (one message the network holds per input, at most [`PER_INPUT`] plus one event per
/// offset it carried).
pub fn transition(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let now = Instant::from_millis(1_000_000);
    let config = TransitionConfig::default();
    let mut h = Harness {
        now,
        client: ClientTransition::new(config, SESSION, PathId(0)),
        server: ServerTransition::new(config, SESSION, PathId(0)),
        to_server: VecDeque::new(),
        to_client: VecDeque::new(),
        client_received: BTreeMap::from([(1, 10), (2, 0)]),
        server_received: BTreeMap::from([(1, 5), (3, 7)]),
        client_expired: false,
        server_expired: false,
    };
    // Exhausted input makes `arbitrary` produce default values forever: stop at its end.
    while !u.is_empty() {
        let Ok(op) = u.arbitrary::<Op>() else { break };
        if trace() {
            eprintln!("{op:?}");
        }
        let (client_epoch, server_epoch) = (h.client.epoch(), h.server.epoch());
        let offsets = h.apply(op);
        assert!(h.client.epoch() >= client_epoch, "client epoch went down");
        assert!(h.server.epoch() >= server_epoch, "server epoch went down");
        assert!(
            h.server.epoch().0 - server_epoch.0 <= MAX_EPOCH_STEP,
            "server epoch jumped from {server_epoch} to {}",
            h.server.epoch()
        );
        h.collect(offsets);
    }
}

impl Harness {
    /// Applies one input; returns how many stream offsets it carried (each may become an event).
    fn apply(&mut self, op: Op) -> usize {
        let path = |p: u8| PathId(u64::from(p % PATHS));
        match op {
            Op::ToServer { path: p, msg } => {
                let msg = msg.build(self.server.epoch());
                let n = offsets_in(&msg);
                let _ = self.server.handle_message(path(p), msg, &self.server_received, self.now);
                n
            }
            Op::ToClient { path: p, msg } => {
                let msg = msg.build(self.client.epoch());
                let n = offsets_in(&msg);
                self.client.handle_message(path(p), msg, self.now);
                n
            }
            Op::DeliverToServer => match self.to_server.pop_front() {
                Some((p, msg)) => {
                    let n = offsets_in(&msg);
                    let _ = self.server.handle_message(p, msg, &self.server_received, self.now);
                    n
                }
                None => 0,
            },
            Op::DeliverToClient => match self.to_client.pop_front() {
                Some((p, msg)) => {
                    let n = offsets_in(&msg);
                    self.client.handle_message(p, msg, self.now);
                    n
                }
                None => 0,
            },
            Op::DropToServer => {
                self.to_server.pop_front();
                0
            }
            Op::DropToClient => {
                self.to_client.pop_front();
                0
            }
            Op::ServerPathLost(p) => {
                self.server.handle_path_lost(path(p), self.now);
                0
            }
            Op::ClientPathLost(p) => {
                self.client.handle_path_lost(path(p), self.now);
                0
            }
            Op::RequestSwitch(p) => {
                let _ = self.client.request_switch(path(p), self.now);
                0
            }
            Op::ResumeOn(p) => {
                let _ = self.client.resume_on(path(p), &self.client_received, self.now);
                0
            }
            Op::Advance(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                self.client.handle_timeout(self.now);
                self.server.handle_timeout(self.now);
                0
            }
        }
    }

    /// Takes what both machines emitted after one input, as the core does after every call.
    fn collect(&mut self, offsets: usize) {
        let mut sent = 0;
        while let Some(t) = self.client.poll_transmit() {
            sent += 1;
            push_bounded(&mut self.to_server, t);
        }
        assert!(sent <= PER_INPUT, "the client sent {sent} messages for one input");
        let mut sent = 0;
        while let Some(t) = self.server.poll_transmit() {
            sent += 1;
            push_bounded(&mut self.to_client, t);
        }
        assert!(sent <= PER_INPUT, "the server sent {sent} messages for one input");

        let (mut client_events, mut server_events) = (0, 0);
        while let Some(event) = self.client.poll_event() {
            client_events += 1;
            check_event(&event, self.client.epoch(), &mut self.client_expired);
        }
        while let Some(event) = self.server.poll_event() {
            server_events += 1;
            check_event(&event, self.server.epoch(), &mut self.server_expired);
        }
        assert!(client_events <= PER_INPUT + offsets, "the client raised {client_events} events for one input");
        assert!(server_events <= PER_INPUT + offsets, "the server raised {server_events} events for one input");
    }
}

fn check_event(event: &Event, epoch: Epoch, expired: &mut bool) {
    match event {
        Event::ResumeOn { epoch: e, .. } => {
            assert!(!*expired, "resumed after the session expired");
            assert_eq!(*e, epoch, "ResumeOn names another epoch than the machine's");
        }
        Event::SessionExpired { .. } => {
            assert!(!*expired, "expired twice");
            *expired = true;
        }
        _ => {}
    }
}

fn offsets_in(msg: &ControlMessage) -> usize {
    match msg {
        ControlMessage::AllRedirected { received, .. } | ControlMessage::SwitchUnexpected { received, .. } => {
            received.len()
        }
        _ => 0,
    }
}

fn push_bounded(queue: &mut VecDeque<(PathId, ControlMessage)>, item: (PathId, ControlMessage)) {
    if queue.len() == IN_FLIGHT {
        queue.pop_front();
    }
    queue.push_back(item);
}

/// `FUZZ_TRACE=1`: print each operation as it is applied, to read a crash's story.
fn trace() -> bool {
    std::env::var_os("FUZZ_TRACE").is_some()
}
