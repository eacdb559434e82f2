use std::net::IpAddr;

use super::output::SLOW_WRITER_DEPTH;
use super::*;
use crate::path::PathLoss;
use crate::relay::engine::EngineConfig;
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
    let peer = PeerInfo { name: "laptop".into(), public_key: "k".into(), switch_timeout: None };
    core.server_path_up(path, info, peer, 0, vec!["100.64.0.2".parse().unwrap()], now);
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
    config.max_paths_per_session = max_paths;
    // A small queue limit (about 280 KiB), quick to fill.
    config.session_out_budget = 16 * 1024;
    config.max_streams_per_session = 16;
    RelayCore::new(Engine::new(config, now), TransitionConfig::default(), 1)
}

fn peer() -> PeerInfo {
    PeerInfo { name: "laptop".into(), public_key: "k".into(), switch_timeout: None }
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
    let other = PeerInfo { name: "phone".into(), public_key: "k2".into(), switch_timeout: None };
    core.server_path_up(PathId(5), info.clone(), other, 0, vec!["100.64.0.3".parse().unwrap()], now);
    assert!(closes(&mut core).is_empty(), "the other client's path was refused");
    // A path of the full session that goes makes room again.
    core.path_lost(PathId(3), &PathLoss::PeerClosed, now);
    closes(&mut core);
    core.server_path_up(PathId(6), info, peer(), sid.0, vips(), now);
    assert!(closes(&mut core).is_empty(), "no room after a path was lost");
    // Fewer than two paths would make every switch fail: the floor is two.
    assert_eq!(server(0, now).max_paths, 2);
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
