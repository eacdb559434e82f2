//! What a peer may send an engine, and how sessions and streams end: malformed frames, addresses a
//! peer does not own, CLOSE, RESET, removed sessions, reused stream ids (tests/support/pair.rs).

mod support;

use std::net::SocketAddr;

use roamtun_proto::relay::engine::SessionError;
use roamtun_proto::time::Duration;
use roamtun_proto::wire::{Frame, ResetCode};
use roamtun_stack::FlowId;
use support::pair::*;
use support::*;

// 5.
#[test]
fn malformed_frames_are_skipped_and_the_session_and_streams_go_on() {
    let mut n = Net::new();
    let (fc, fs) = n.client_connects(40003);
    let first = pattern(30_000, 6);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &first) == first);

    for which in [Which::Client, Which::Server] {
        let now = n.now;
        let side = n.side(which);
        let sid = side.sid;
        let before = side.counters();
        let feed = |side: &mut Side, bytes: &[u8]| {
            side.engine.handle_session_bytes(sid, bytes, now).expect("a malformed frame does not end the session")
        };

        // An unknown type with a valid length header: skipped by its length.
        feed(side, &[0x7f, 0, 0, 3, 1, 2, 3]);
        // Non-zero flags; a fixed-size frame with the wrong length; a handshake frame out of place.
        feed(side, &[0x30, 0x01, 0, 8, 0, 0, 0, 0, 0, 0, 0, 9]);
        feed(side, &[0x14, 0, 0, 7, 0, 0, 0, 1, 0, 2, 0]);
        feed(side, &encode(&[Frame::Hello { version: 1, resume: 0, virtual_ips: vec![vip()] }]));
        assert_eq!(side.counters().frames_malformed, before.frames_malformed + 4, "{which:?}");
        assert!(drain_frames(&mut side.engine, sid).is_empty(), "{which:?}: answered garbage");

        // DATA, FIN and CREDIT for streams that do not exist: ignored (frames in flight after a reset).
        feed(
            side,
            &encode(&[
                Frame::Data { stream_id: 1001, offset: 0, data: b"stray" },
                Frame::Fin { stream_id: 1001, offset: 5 },
                Frame::Credit { stream_id: 1001, received: 0, max_offset: 1 << 20 },
            ]),
        );
        assert_eq!(side.counters().streams_violated, before.streams_violated, "{which:?}");

        // A PING cut in two, then an unknown type cut right after its type byte, then one more PING
        // glued to the end of the second piece: all handled once complete.
        let ping = encode(&[Frame::Ping { nonce: 7 }]);
        feed(side, &ping[..5]);
        assert!(drain_frames(&mut side.engine, sid).is_empty(), "{which:?}: answered half a PING");
        let mut rest = ping[5..].to_vec();
        rest.extend_from_slice(&[0x7e]);
        feed(side, &rest);
        let mut tail = vec![0, 0, 2, 0xaa, 0xbb];
        tail.extend_from_slice(&encode(&[Frame::Ping { nonce: 8 }]));
        feed(side, &tail[..3]);
        feed(side, &tail[3..]);
        assert_eq!(drain_frames(&mut side.engine, sid), vec![Seen::Pong(7), Seen::Pong(8)], "{which:?}");
        let after = side.counters();
        assert_eq!(after.frames_malformed, before.frames_malformed + 5, "{which:?}");
        assert_eq!(after.streams_violated, before.streams_violated, "{which:?}");
        assert_eq!(side.status().tcp_flows, 1, "{which:?}");
    }

    // The live stream still works both ways and closes cleanly.
    let up = pattern(100_000, 7);
    let down = pattern(100_000, 8);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &up) == up);
    assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &down) == down);
    n.client.app.close(fc);
    n.drive("server app sees EOF", |n| n.server.app.app_finished_sending(fs));
    n.server.app.close(fs);
    n.drive("both close", |n| n.client.closed(fc).is_some() && n.server.closed(fs).is_some());
    assert_eq!((n.client.closed(fc), n.server.closed(fs)), (Some(false), Some(false)));
}

// 6.
#[test]
fn a_peer_cannot_speak_for_addresses_it_does_not_own() {
    let mut n = Net::new();
    let now = n.now;
    let other = [100, 64, 0, 9];

    // A DATAGRAM from the client whose source is another address: dropped, counted, never on the TUN.
    let spoofed = udp((other, 5000), (SERVER_IP, 53), b"spoofed");
    n.server.engine.handle_session_bytes(SS, &encode(&[Frame::Datagram { packet: &spoofed }]), now).unwrap();
    // A DATAGRAM from the server to an address the client does not own: the same on the client.
    let misrouted = udp((SERVER_IP, 53), (other, 5000), b"not yours");
    n.client.engine.handle_session_bytes(CS, &encode(&[Frame::Datagram { packet: &misrouted }]), now).unwrap();
    n.pump();
    for (name, side) in [("client", &n.client), ("server", &n.server)] {
        let c = side.counters();
        assert_eq!(c.datagrams_spoofed, 1, "{name}");
        assert_eq!(c.datagrams_received, 0, "{name}");
        assert!(side.datagrams.is_empty(), "{name} engine wrote a spoofed datagram into its TUN");
        assert_eq!(side.status().udp_flows, 0, "{name}");
    }

    // An OPEN from the client with a source outside its virtual IPs: answered with RESET, no SYN sent.
    let open = Frame::Open { stream_id: 1, src: addr("100.64.0.9:1234"), dst: addr("100.64.0.1:80") };
    n.server.engine.handle_session_bytes(SS, &encode(&[open]), now).unwrap();
    assert_eq!(drain_frames(&mut n.server.engine, SS), vec![Seen::Reset(1, ResetCode::Refused)]);
    // An OPEN from the client with the server's stream id parity, from its own address: refused too.
    let open = Frame::Open { stream_id: 2, src: addr("100.64.0.2:1234"), dst: addr("100.64.0.1:80") };
    n.server.engine.handle_session_bytes(SS, &encode(&[open]), now).unwrap();
    assert_eq!(drain_frames(&mut n.server.engine, SS), vec![Seen::Reset(2, ResetCode::Refused)]);
    // An OPEN from the server towards an address the client does not own.
    let open = Frame::Open { stream_id: 2, src: addr("100.64.0.1:5000"), dst: addr("100.64.0.9:22") };
    n.client.engine.handle_session_bytes(CS, &encode(&[open]), now).unwrap();
    assert_eq!(drain_frames(&mut n.client.engine, CS), vec![Seen::Reset(2, ResetCode::Refused)]);
    n.pump();
    assert!(n.server.new_flows.is_empty(), "the server engine originated a spoofed connection");
    assert!(n.client.new_flows.is_empty(), "the client engine originated a connection to a foreign address");
    assert_eq!(n.server.counters().streams_violated, 2);
    assert_eq!(n.client.counters().streams_violated, 1);
    for side in [&n.client, &n.server] {
        assert_eq!(side.status().tcp_flows, 0);
        assert_eq!(side.counters().tcp_streams_opened, 0);
    }

    // On the client, a local app that is not on the virtual IP has no session to carry it.
    let f = n.client.app.connect(addr("10.9.9.9:1000"), addr("100.64.0.1:80")).unwrap();
    n.pump();
    assert_eq!(n.client.closed(f), Some(true), "the foreign-source SYN was not refused");
    assert_eq!(n.client.engine.tun_counters().packets_unroutable, 1);
    assert!(n.server.new_flows.is_empty());
}

/// Three connections through one session: two the client apps opened, one a server app opened.
/// Returns the (client app, server app) flows and their endpoints as (client app end, server app end).
fn three_flows(n: &mut Net) -> Vec<(FlowId, FlowId, SocketAddr, SocketAddr)> {
    let (fc1, fs1) = n.client_connects(40004);
    let (fc2, fs2) = n.client_connects(40005);
    let fs3 = n.server.app.connect(addr("100.64.0.1:5001"), addr("100.64.0.2:7001")).unwrap();
    n.pump();
    let (fc3, _, _) = n.client.new_flows[0];
    n.client.app.accept(fc3).unwrap();
    n.pump();
    assert!(n.server.connected(fs3));
    let bytes = pattern(20_000, 9);
    assert!(n.transfer((Which::Client, fc1), (Which::Server, fs1), &bytes) == bytes);
    assert!(n.transfer((Which::Server, fs3), (Which::Client, fc3), &bytes) == bytes);
    assert_eq!(n.client.status().tcp_flows, 3);
    assert_eq!(n.server.status().tcp_flows, 3);
    vec![
        (fc1, fs1, addr("100.64.0.2:40004"), addr("100.64.0.1:80")),
        (fc2, fs2, addr("100.64.0.2:40005"), addr("100.64.0.1:80")),
        (fc3, fs3, addr("100.64.0.2:7001"), addr("100.64.0.1:5001")),
    ]
}

/// Removes the session from both engines (the client's first), moving only TUN packets afterwards:
/// the relay link is gone.
fn remove_both_sessions(n: &mut Net) {
    let now = n.now;
    let counters = n.client.engine.remove_session(CS, now).expect("the session existed");
    assert_eq!(counters.tcp_streams_opened, 3);
    assert!(n.client.engine.session_status().is_empty());
    assert!(n.client.engine.remove_session(CS, now).is_none());
    assert!(matches!(
        n.client.engine.handle_session_bytes(CS, &encode(&[Frame::Ping { nonce: 1 }]), now),
        Err(SessionError::NoSuchSession(CS))
    ));
    n.server.engine.remove_session(SS, now).expect("the session existed");
    for side in [&mut n.client, &mut n.server] {
        side.move_packets(now);
        side.app.poll(now.into());
        side.events.extend(std::iter::from_fn(|| side.app.pop_event()));
    }
}

// 8.
#[test]
fn removing_a_session_resets_every_flow_it_carried() {
    let mut n = Net::new();
    let flows = three_flows(&mut n);
    remove_both_sessions(&mut n);
    for (fc, fs, client_end, server_end) in flows {
        // Each engine wrote a TCP reset for the connection into its TUN …
        assert!(
            n.client.resets_to_app.contains(&(server_end, client_end)),
            "no RST to the client app {client_end}: {:?}",
            n.client.resets_to_app
        );
        assert!(
            n.server.resets_to_app.contains(&(client_end, server_end)),
            "no RST to the server app {server_end}: {:?}",
            n.server.resets_to_app
        );
        // … and the apps' connections are over: nothing can be sent on them any more.
        assert!(n.client.closed(fc).is_some(), "client app {client_end}: {:?}", n.client.events);
        assert!(n.server.closed(fs).is_some(), "server app {server_end}: {:?}", n.server.events);
        assert_eq!(n.client.app.send(fc, b"anyone?"), 0);
        assert_eq!(n.server.app.send(fs, b"anyone?"), 0);
    }
}

/// The apps' kernels (roamtun_stack) must report the reset of an established connection as a reset.
#[test]
fn removing_a_session_is_seen_by_the_apps_as_a_reset() {
    let mut n = Net::new();
    let flows = three_flows(&mut n);
    remove_both_sessions(&mut n);
    for (fc, fs, client_end, server_end) in flows {
        assert_eq!(n.client.closed(fc), Some(true), "client app {client_end}: {:?}", n.client.events);
        assert_eq!(n.server.closed(fs), Some(true), "server app {server_end}: {:?}", n.server.events);
    }
}

/// An app that resets its connection resets the far app's connection, and both engines forget the
/// stream.
#[test]
fn an_app_reset_resets_the_far_app() {
    let mut n = Net::new();
    let (fc, fs) = n.client_connects(40010);
    let bytes = pattern(20_000, 10);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &bytes) == bytes);

    // The client app aborts its (idle, fully acknowledged) connection: its kernel sends RST.
    n.client.app.abort(fc, n.now.into()).unwrap();
    n.step(Duration::from_millis(10));
    assert!(
        n.client.sent_frames.contains(&Seen::Reset(1, ResetCode::Reset)),
        "the client engine did not relay the reset; it sent {:?}",
        n.client.sent_frames
    );
    assert!(!n.client.sent_frames.contains(&Seen::Fin(1, 20_000)), "the reset was relayed as FIN");
    assert!(!n.server.app.app_finished_sending(fs), "the server app saw EOF instead of a reset");
    assert!(n.server.resets_to_app.contains(&(addr("100.64.0.2:40010"), addr("100.64.0.1:80"))));
    assert_eq!(n.client.status().tcp_flows, 0, "the client engine kept the stream");
    assert_eq!(n.server.status().tcp_flows, 0, "the server engine kept the stream");
}

/// CLOSE from the peer is the one frame that ends a session.
#[test]
fn close_from_the_peer_ends_the_session() {
    let mut n = Net::new();
    let r = n.server.engine.handle_session_bytes(SS, &encode(&[Frame::Close { code: 3, reason: "bye" }]), n.now);
    assert!(matches!(r, Err(SessionError::PeerClosed { code: 3, ref reason }) if reason == "bye"), "{r:?}");
}

/// A stream id the peer uses twice is a violation answered with RESET; RESET ends the stream on both
/// sides, so the engine that sent it must not keep its own stream of that id either.
#[test]
fn a_duplicate_open_does_not_leave_half_a_stream() {
    let mut n = Net::new();
    let (_fc, fs) = n.client_connects(40020);
    // The client (misbehaving) opens stream 1 again.
    let open = Frame::Open { stream_id: 1, src: addr("100.64.0.2:40021"), dst: addr("100.64.0.1:80") };
    n.server.engine.handle_session_bytes(SS, &encode(&[open]), n.now).unwrap();
    n.step(Duration::from_millis(10));
    assert_eq!(n.server.counters().streams_violated, 1);
    assert_eq!(n.server.sent_frames.last(), Some(&Seen::Reset(1, ResetCode::Internal)));
    assert_eq!(n.client.status().tcp_flows, 0, "the client applied the RESET to its stream 1");
    assert_eq!(n.server.status().tcp_flows, 0, "the server sent RESET for stream 1 but kept it");
    assert!(n.server.resets_to_app.contains(&(addr("100.64.0.2:40020"), addr("100.64.0.1:80"))));
    // However it ends, the server app closing must not leave the stream behind.
    n.server.app.close(fs);
    for _ in 0..20 {
        n.step(Duration::from_secs(1));
    }
    assert_eq!(n.server.status().tcp_flows, 0);
}

// Found by the engine_peer fuzz target (fuzz/regressions/engine_peer/crash-38bd…): a peer that
// repeats an OPEN after its stream was reset got a new stream under the old id while the old one's
// DATA still waited in the queue, and handing that chunk to the writer panicked the engine (the
// bytes were settled into the new stream's replay buffer). Stream ids are never reused in a session.
#[test]
fn a_stream_id_the_peer_opened_once_is_never_opened_again() {
    let mut n = Net::new();
    let (_fc, fs) = n.client_connects(40004);
    // The server's app sends; the DATA frames wait in the server's queue towards the client.
    let now = n.now;
    assert!(n.server.app.send(fs, &pattern(20_000, 7)) > 0);
    n.server.app.poll(now.into());
    n.server.move_packets(now);
    assert!(n.server.status().queued_bytes > 0, "no DATA queued for the client");
    let before = n.server.counters();

    // The client opens stream 1 again (live: both ends reset it), and then once more.
    let open = Frame::Open { stream_id: 1, src: SocketAddr::new(vip(), 40004), dst: addr("100.64.0.1:80") };
    let bytes = encode(&[open.clone(), open]);
    n.server.engine.handle_session_bytes(SS, &bytes, now).unwrap();
    assert_eq!(n.server.status().tcp_flows, 0, "a second stream 1 was opened");
    assert_eq!(n.server.counters().streams_violated, before.streams_violated + 2);
    let sent = drain_frames(&mut n.server.engine, SS);
    assert!(sent.contains(&Seen::Reset(1, ResetCode::Internal)), "{sent:?}");
    assert!(sent.contains(&Seen::Reset(1, ResetCode::Refused)), "{sent:?}");
}
