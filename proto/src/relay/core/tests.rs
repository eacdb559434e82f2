use std::net::IpAddr;

use super::output::SLOW_WRITER_DEPTH;
use super::*;
use crate::path::PathLoss;
use crate::relay::engine::{EngineConfig, PeerLimits};
use crate::time::{Duration, Instant};

fn sample(pace: Option<u64>) -> PathSample {
    PathSample {
        tcp_rtt: Duration::from_millis(20),
        jitter: Duration::from_millis(1),
        loss: 0.0,
        bytes: 0,
        delivery_rate: pace,
        pace,
    }
}

#[test]
fn a_slow_path_gets_a_shallow_writer_queue() {
    let now = Instant::from_millis(0);
    let mut core = RelayCore::new(Engine::new(EngineConfig::new(Role::Server), now), TransitionConfig::default(), 1);
    let path = PathId(1);
    let info = PathInfo { local: None, remote: None, uplink: None, congestion_control: None };
    core.server_path_up(path, info, peer(), 0, vec!["100.64.0.2".parse().unwrap()], now);
    assert_eq!(core.writer_depth(path, 8), 8, "rate unknown: as before");
    core.path_stats(path, sample(Some(10_000_000 / 8)));
    assert_eq!(core.writer_depth(path, 8), SLOW_WRITER_DEPTH, "10 Mbit/s");
    // An application-limited tick says nothing new.
    core.path_stats(path, sample(None));
    assert_eq!(core.writer_depth(path, 8), SLOW_WRITER_DEPTH);
    core.path_stats(path, sample(Some(100_000_000 / 8)));
    assert_eq!(core.writer_depth(path, 8), 8, "100 Mbit/s: 8 chunks of 6 KiB");
    assert_eq!(core.writer_depth(PathId(2), 8), 8, "no such path");
}

fn server(max_paths: usize, now: Instant) -> RelayCore {
    let mut config = EngineConfig::new(Role::Server);
    config.session_limits.paths = max_paths;
    // A small queue limit (about 280 KiB), quick to fill.
    config.session_out_budget = 16 * 1024;
    config.session_limits.streams = 16;
    RelayCore::new(Engine::new(config, now), TransitionConfig::default(), 1)
}

fn peer() -> PeerInfo {
    PeerInfo::new("laptop", "k")
}

fn vips() -> Vec<IpAddr> {
    vec!["100.64.0.2".parse().unwrap()]
}

/// The CLOSE codes of the ClosePath actions queued so far, by path (None: closed without one).
fn closes(core: &mut RelayCore) -> Vec<(PathId, Option<u16>)> {
    std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::ClosePath { path, last } => {
                let code = last.iter().find_map(|b| match Frame::decode(b) {
                    Ok(Some((Frame::Close { code, .. }, _))) => Some(code),
                    _ => None,
                });
                Some((path, code))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_session_with_its_paths_full_refuses_another_and_other_sessions_still_join() {
    let now = Instant::from_millis(0);
    let mut core = server(3, now);
    let info = PathInfo::default();
    core.server_path_up(PathId(1), info.clone(), peer(), 0, vips(), now);
    let sid = core.sessions().next().unwrap().id;
    core.server_path_up(PathId(2), info.clone(), peer(), sid.0, vips(), now);
    core.server_path_up(PathId(3), info.clone(), peer(), sid.0, vips(), now);
    assert!(closes(&mut core).is_empty());
    core.server_path_up(PathId(4), info.clone(), peer(), sid.0, vips(), now);
    assert_eq!(closes(&mut core), vec![(PathId(4), Some(close_code::PATH_LIMIT))]);
    assert_eq!(core.paths().count(), 3);
    assert_eq!(core.sessions().next().unwrap().paths_refused_limit, 1);
    // Another client is not held to this one's count.
    let other = PeerInfo::new("phone", "k2");
    core.server_path_up(PathId(5), info.clone(), other, 0, vec!["100.64.0.3".parse().unwrap()], now);
    assert!(closes(&mut core).is_empty(), "the other client's path was refused");
    // A path of the full session that goes makes room again.
    core.path_lost(PathId(3), &PathLoss::PeerClosed, now);
    closes(&mut core);
    core.server_path_up(PathId(6), info.clone(), peer(), sid.0, vips(), now);
    assert!(closes(&mut core).is_empty(), "no room after a path was lost");
    // Fewer than two paths would make every switch fail: the floor is two.
    let mut core = server(0, now);
    core.server_path_up(PathId(1), info.clone(), peer(), 0, vips(), now);
    let sid = core.sessions().next().unwrap().id;
    core.server_path_up(PathId(2), info.clone(), peer(), sid.0, vips(), now);
    assert!(closes(&mut core).is_empty(), "a limit of 0 refused the second path");
    core.server_path_up(PathId(3), info, peer(), sid.0, vips(), now);
    assert_eq!(closes(&mut core), vec![(PathId(3), Some(close_code::PATH_LIMIT))]);
}

#[test]
fn a_peers_own_path_limit_holds_for_its_sessions_only_and_a_reload_changes_it() {
    let now = Instant::from_millis(0);
    let mut core = server(8, now);
    let info = PathInfo::default();
    let laptop = PeerInfo { limits: PeerLimits { paths: Some(2), ..PeerLimits::default() }, ..peer() };
    core.server_path_up(PathId(1), info.clone(), laptop.clone(), 0, vips(), now);
    let sid = core.sessions().next().unwrap().id;
    core.server_path_up(PathId(2), info.clone(), laptop.clone(), sid.0, vips(), now);
    core.server_path_up(PathId(3), info.clone(), laptop.clone(), sid.0, vips(), now);
    assert_eq!(closes(&mut core), vec![(PathId(3), Some(close_code::PATH_LIMIT))]);
    // The phone has the server's eight.
    let phone = PeerInfo::new("phone", "k2");
    let phone_vips = vec!["100.64.0.3".parse().unwrap()];
    core.server_path_up(PathId(10), info.clone(), phone.clone(), 0, phone_vips.clone(), now);
    let phone_sid = core.sessions().find(|s| s.peer.name == "phone").unwrap().id;
    for p in 11..14 {
        core.server_path_up(PathId(p), info.clone(), phone.clone(), phone_sid.0, phone_vips.clone(), now);
    }
    assert!(closes(&mut core).is_empty(), "the phone was held to the laptop's limit");
    // A reload raises the laptop's limit: its running session takes it.
    let raised = PeerLimits { paths: Some(3), ..PeerLimits::default() };
    assert_eq!(core.set_peer_limits("k", raised), 1);
    assert_eq!(core.set_peer_limits("k", raised), 0, "unchanged limits counted as a change");
    core.server_path_up(PathId(4), info.clone(), laptop.clone(), sid.0, vips(), now);
    assert!(closes(&mut core).is_empty(), "the raised limit did not apply");
    core.server_path_up(PathId(5), info, laptop, sid.0, vips(), now);
    assert_eq!(closes(&mut core), vec![(PathId(5), Some(close_code::PATH_LIMIT))]);
}

#[test]
fn a_peer_that_does_not_read_loses_its_path_not_its_session() {
    let now = Instant::from_millis(0);
    let mut core = server(8, now);
    core.server_path_up(PathId(1), PathInfo::default(), peer(), 0, vips(), now);
    let sid = core.sessions().next().unwrap().id;
    // Refused OPENs (the server's id parity), none of whose RESETs the peer reads.
    let mut frames = Vec::new();
    for i in 0..40_000u32 {
        let open = Frame::Open {
            stream_id: 2 * i,
            src: "100.64.0.2:1000".parse().unwrap(),
            dst: "100.64.0.1:80".parse().unwrap(),
        };
        open.encode(&mut frames).unwrap();
    }
    for piece in frames.chunks(60_000) {
        core.path_bytes(PathId(1), piece, now);
    }
    assert_eq!(closes(&mut core), vec![(PathId(1), None)], "the path was not dropped");
    let view = core.sessions().next().expect("the session waits for its client to come back");
    assert_eq!((view.id, view.paths_lost_not_reading), (sid, 1));
    assert!(core.paths().next().is_none());
}

/// Frames of `count` PINGs (the engine answers each with a PONG: a reply to count).
fn pings(count: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for nonce in 0..count {
        Frame::Ping { nonce }.encode(&mut out).unwrap();
    }
    out
}

/// The PONGs the engine queued for the session so far.
fn pongs(core: &mut RelayCore, sid: SessionId) -> usize {
    let mut n = 0;
    while let Some(chunk) = core.engine_mut().pop_session_output(sid) {
        let mut rest = &chunk[..];
        while let Ok(Some((frame, used))) = Frame::decode(rest) {
            n += usize::from(matches!(frame, Frame::Pong { .. }));
            rest = &rest[used..];
        }
    }
    n
}

fn paused(core: &mut RelayCore) -> Vec<(PathId, bool)> {
    std::iter::from_fn(|| core.poll_action())
        .filter_map(|a| match a {
            Action::ReadPaused { path, paused } => Some((path, paused)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_new_paths_frames_wait_for_the_old_paths_cutover_within_the_budget() {
    use crate::transition::{ControlMessage, Epoch};
    let now = Instant::from_millis(0);
    let mut core = server(8, now);
    let (old, new) = (PathId(1), PathId(2));
    core.server_path_up(old, PathInfo::default(), peer(), 0, vips(), now);
    let sid = core.sessions().next().unwrap().id;
    core.server_path_up(new, PathInfo::default(), peer(), sid.0, vips(), now);
    let cutover = ControlMessage::Cutover { epoch: Epoch(1) }.to_bytes();
    // The client's CUTOVER on the new path (it is the faster one), then its frames there: they wait,
    // and past the budget (16 KiB here) the new path's reader is paused.
    core.path_control(new, &cutover, now);
    let held = pings(2_000);
    assert!(held.len() > 16 * 1024);
    core.path_bytes(new, &held, now);
    assert_eq!(pongs(&mut core, sid), 0, "the new path's frames were taken before the old path's end");
    assert_eq!(paused(&mut core), [(new, true)]);
    // The old path's frames still count, up to the client's CUTOVER there.
    core.path_bytes(old, &pings(3), now);
    assert_eq!(pongs(&mut core, sid), 3);
    core.path_control(old, &cutover, now);
    assert_eq!(pongs(&mut core, sid), 2_000, "the held frames were not taken, in one piece, after the old path's end");
    assert_eq!(paused(&mut core), [(new, false)]);
    // From then on the new path's frames count at once, and the old path's are late ones; a CUTOVER
    // sent again (with SWITCH_STEP1) changes nothing.
    core.path_control(new, &cutover, now);
    core.path_bytes(new, &pings(1), now);
    core.path_bytes(old, &pings(1), now);
    assert_eq!(pongs(&mut core, sid), 1);
    assert_eq!(core.sessions().next().unwrap().stale_frames, 1);
}

#[test]
fn frames_held_for_a_planned_switch_are_dropped_when_the_old_path_is_lost() {
    use crate::transition::{ControlMessage, Epoch};
    let now = Instant::from_millis(0);
    let mut core = server(8, now);
    let (old, new) = (PathId(1), PathId(2));
    core.server_path_up(old, PathInfo::default(), peer(), 0, vips(), now);
    let sid = core.sessions().next().unwrap().id;
    core.server_path_up(new, PathInfo::default(), peer(), sid.0, vips(), now);
    core.path_control(new, &ControlMessage::Cutover { epoch: Epoch(1) }.to_bytes(), now);
    core.path_bytes(new, &pings(5), now);
    core.path_lost(old, &PathLoss::PeerClosed, now);
    // Nothing counts until the client's SWITCH_UNEXPECTED resumes the session on the new path: the
    // peer resends from the offsets we report, which never counted what was held.
    core.path_bytes(new, &pings(1), now);
    assert_eq!(pongs(&mut core, sid), 0);
    let resume = ControlMessage::SwitchUnexpected { epoch: Epoch(2), session: sid.0, received: vec![] };
    core.path_control(new, &resume.to_bytes(), now);
    core.path_bytes(new, &pings(1), now);
    assert_eq!(pongs(&mut core, sid), 1);
}
