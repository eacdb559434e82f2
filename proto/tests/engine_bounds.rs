//! Datagrams, the per-session bounds (streams, UDP flows, queued bytes) and the server's destination
//! policy, on engines back to back (tests/support/pair.rs) or fed frames directly.

mod support;

use std::net::{IpAddr, SocketAddr};

use etherparse::{IpNumber, IpSlice, TcpHeaderSlice};
use roamtun_proto::relay::engine::{Engine, EngineConfig, Role, SessionError, SessionId, SessionLimits, SessionStatus};
use roamtun_proto::relay::policy::{DestinationPolicy, IpPrefix};
use roamtun_proto::time::{Duration, Instant};
use roamtun_proto::wire::{Frame, ResetCode};
use support::pair::*;
use support::*;

// 7.
#[test]
fn udp_crosses_unchanged_and_its_flow_expires_when_idle() {
    let mut n = Net::new();
    let timeout = EngineConfig::new(Role::Client).udp_idle_timeout;
    let query = udp((CLIENT_VIP, 5353), (SERVER_IP, 53), b"what is the address of example.org?");
    n.client.engine.handle_tun_packet(query.clone(), n.now);
    n.pump();
    assert_eq!(n.server.datagrams, vec![query.clone()], "the datagram changed on the way");
    let answer = udp((SERVER_IP, 53), (CLIENT_VIP, 5353), b"93.184.215.14");
    n.step(Duration::from_secs(1));
    n.server.engine.handle_tun_packet(answer.clone(), n.now);
    n.pump();
    assert_eq!(n.client.datagrams, vec![answer.clone()]);
    let last_packet = n.now;

    let (c, s) = (n.client.counters(), n.server.counters());
    assert_eq!((c.datagrams_sent, c.datagrams_received), (1, 1));
    assert_eq!((s.datagrams_sent, s.datagrams_received), (1, 1));
    assert_eq!(c.bytes_sent, query.len() as u64);
    assert_eq!(s.bytes_received, query.len() as u64);
    assert_eq!(s.bytes_sent, answer.len() as u64);
    assert_eq!(c.bytes_received, answer.len() as u64);
    assert_eq!(c.datagrams_dropped + c.datagrams_spoofed + s.datagrams_dropped + s.datagrams_spoofed, 0);
    // A query and its answer are one flow on each side.
    assert_eq!(n.client.status().udp_flows, 1);
    assert_eq!(n.server.status().udp_flows, 1);

    // The engines ask to be polled no later than the expiry.
    let expiry = last_packet + timeout;
    for side in [&mut n.client, &mut n.server] {
        let at = side.engine.poll_at(n.now).expect("a UDP flow needs a timer");
        assert!(at <= expiry, "poll_at {at} is after the flow's expiry {expiry}");
    }
    // Idle for just under the timeout: still there. At the timeout: gone.
    n.now = expiry - Duration::from_millis(1);
    n.pump();
    assert_eq!(n.client.status().udp_flows, 1, "expired early");
    assert_eq!(n.server.status().udp_flows, 1, "expired early");
    n.step(Duration::from_millis(1));
    assert_eq!(n.client.status().udp_flows, 0);
    assert_eq!(n.server.status().udp_flows, 0);
}

/// UDP is dropped, not queued without bound, when the link does not take it.
#[test]
fn udp_is_dropped_and_counted_when_the_session_queue_is_full() {
    let mut config = engine_config(Role::Client, 11);
    config.session_out_budget = 8 * 1024;
    let mut n = Net::with(config, engine_config(Role::Server, 22), app_config(33), app_config(44));
    let packet = udp((CLIENT_VIP, 5353), (SERVER_IP, 53), &[7; 1000]);
    // The link is stalled: nothing is taken from the engine while the app sends 20 datagrams.
    for _ in 0..20 {
        n.client.engine.handle_tun_packet(packet.clone(), n.now);
    }
    let st = n.client.status();
    assert!(st.queued_bytes <= 8 * 1024 + packet.len() + 4, "queued {} bytes", st.queued_bytes);
    assert!(st.counters.datagrams_dropped > 0);
    assert_eq!(st.counters.datagrams_sent + st.counters.datagrams_dropped, 20);
    let sent = st.counters.datagrams_sent;
    n.pump();
    assert_eq!(n.server.datagrams.len() as u64, sent, "every datagram counted as sent arrived");
    assert!(n.server.datagrams.iter().all(|d| *d == packet));
    assert_eq!(n.server.counters().datagrams_received, sent);
}

// ---- per-session bounds and the destination policy -------------------------------------------------

/// A second client's session on the server engine, with its own virtual IP.
const SB: SessionId = SessionId(43);
const OTHER_VIP: [u8; 4] = [100, 64, 0, 3];

/// The destinations of the TCP SYNs an engine wrote into its TUN (connections it originated).
fn syns_to(engine: &mut Engine) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    while let Some(p) = engine.pop_tun_packet() {
        let Ok(ip) = IpSlice::from_slice(&p) else { continue };
        let dst: IpAddr = match &ip {
            IpSlice::Ipv4(v4) => v4.header().destination_addr().into(),
            IpSlice::Ipv6(v6) => v6.header().destination_addr().into(),
        };
        if ip.payload().ip_number != IpNumber::TCP {
            continue;
        }
        if let Ok(tcp) = TcpHeaderSlice::from_slice(ip.payload().payload) {
            if tcp.syn() && !tcp.ack() {
                out.push(SocketAddr::new(dst, tcp.destination_port()));
            }
        }
    }
    out
}

/// The datagrams an engine wrote into its TUN.
fn datagrams_out(engine: &mut Engine) -> Vec<Vec<u8>> {
    std::iter::from_fn(|| engine.pop_tun_packet()).filter(|p| tcp_reset(p).is_none()).collect()
}

/// A server engine with two client sessions, SS (100.64.0.2) and SB (100.64.0.3).
fn server_with_two_clients(config: EngineConfig, now: Instant) -> Engine {
    let mut e = Engine::new(config, now);
    let limits = e.config().session_limits;
    e.add_session(SS, vec![vip()], Vec::new(), limits).unwrap();
    e.add_session(SB, vec![IpAddr::from(OTHER_VIP)], Vec::new(), limits).unwrap();
    e
}

fn status_of(engine: &Engine, sid: SessionId) -> SessionStatus {
    engine.session_status().into_iter().find(|s| s.id == sid).unwrap()
}

fn open(stream_id: u32, src: &str, dst: &str) -> Vec<u8> {
    encode(&[Frame::Open { stream_id, src: addr(src), dst: addr(dst) }])
}

#[test]
fn a_session_at_its_own_stream_limit_refuses_more_and_other_sessions_are_unaffected() {
    let now = Instant::from_millis(1_000);
    let mut config = engine_config(Role::Server, 22);
    config.session_limits.streams = 5;
    let mut e = Engine::new(config, now);
    // The greedy client has a limit of its own, below the server's.
    let greedy_limits = SessionLimits { streams: 3, ..e.config().session_limits };
    e.add_session(SS, vec![vip()], Vec::new(), greedy_limits).unwrap();
    e.add_session(SB, vec![IpAddr::from(OTHER_VIP)], Vec::new(), e.config().session_limits).unwrap();
    // It opens five connections; three are originated, the rest refused with a reason.
    for (i, id) in [1u32, 3, 5, 7, 9].into_iter().enumerate() {
        e.handle_session_bytes(SS, &open(id, &format!("100.64.0.2:{}", 40000 + i), "100.64.0.1:80"), now).unwrap();
    }
    e.poll(now);
    assert_eq!(syns_to(&mut e).len(), 3, "connections originated for the greedy client");
    assert_eq!(
        drain_frames(&mut e, SS),
        vec![Seen::Reset(7, ResetCode::LimitReached), Seen::Reset(9, ResetCode::LimitReached)]
    );
    let greedy = status_of(&e, SS);
    assert_eq!((greedy.tcp_flows, greedy.counters.streams_refused_limit), (3, 2));
    assert_eq!(greedy.limits, greedy_limits);
    // The other client gets the server's five.
    for (i, id) in [1u32, 3, 5, 7, 9].into_iter().enumerate() {
        e.handle_session_bytes(SB, &open(id, &format!("100.64.0.3:{}", 40000 + i), "100.64.0.1:80"), now).unwrap();
    }
    e.poll(now);
    assert_eq!(syns_to(&mut e).len(), 5, "connections originated for the other client");
    assert!(drain_frames(&mut e, SB).is_empty(), "the other client got a refusal");
    let other = status_of(&e, SB);
    assert_eq!((other.tcp_flows, other.counters.streams_refused_limit), (5, 0));

    // A reload raises the greedy client's limit: one more opens.
    e.set_session_limits(SS, SessionLimits { streams: 4, ..greedy_limits });
    e.handle_session_bytes(SS, &open(11, "100.64.0.2:40011", "100.64.0.1:80"), now).unwrap();
    e.poll(now);
    assert_eq!(syns_to(&mut e).len(), 1, "the raised limit was not applied");
    // Lowered below what it holds: its four stay, a new one is refused.
    e.set_session_limits(SS, SessionLimits { streams: 2, ..greedy_limits });
    e.handle_session_bytes(SS, &open(13, "100.64.0.2:40013", "100.64.0.1:80"), now).unwrap();
    e.poll(now);
    assert!(syns_to(&mut e).is_empty(), "a stream beyond the lowered limit was originated");
    assert_eq!(drain_frames(&mut e, SS), vec![Seen::Reset(13, ResetCode::LimitReached)]);
    assert_eq!(status_of(&e, SS).tcp_flows, 4, "lowering the limit cut running streams");
}

#[test]
fn an_app_beyond_the_stream_limit_is_refused_locally() {
    let limited = |role, seed| {
        let mut c = engine_config(role, seed);
        c.session_limits.streams = 2;
        c
    };
    let mut n = Net::with(limited(Role::Client, 11), limited(Role::Server, 22), app_config(33), app_config(44));
    let (fc1, fs1) = n.client_connects(42000);
    let _second = n.client_connects(42001);
    let third = n.client.app.connect(addr("100.64.0.2:42002"), addr("100.64.0.1:80")).unwrap();
    n.pump();
    assert_eq!(n.client.closed(third), Some(true), "the third connection was not refused");
    assert_eq!(n.server.new_flows.len(), 2, "the refused connection reached the server");
    assert_eq!(n.client.counters().streams_refused_limit, 1);
    // The two within the limit still carry data.
    let bytes = pattern(50_000, 9);
    assert!(n.transfer((Which::Client, fc1), (Which::Server, fs1), &bytes) == bytes);
}

#[test]
fn a_session_at_its_udp_flow_limit_drops_new_flows_until_old_ones_expire() {
    let now = Instant::from_millis(1_000);
    let mut config = engine_config(Role::Server, 22);
    config.session_limits.udp_flows = 4;
    let timeout = config.udp_idle_timeout;
    let mut e = server_with_two_clients(config, now);
    let from = |port| encode(&[Frame::Datagram { packet: &udp((CLIENT_VIP, port), (SERVER_IP, 53), b"q") }]);
    for port in 5000..5006 {
        e.handle_session_bytes(SS, &from(port), now).unwrap();
    }
    assert_eq!(datagrams_out(&mut e).len(), 4, "datagrams written for the greedy client");
    let greedy = status_of(&e, SS);
    assert_eq!((greedy.udp_flows, greedy.counters.datagrams_refused_limit), (4, 2));
    // A known flow goes on; a server app's datagram that would start a fifth flow is dropped too.
    e.handle_session_bytes(SS, &from(5000), now).unwrap();
    assert_eq!(datagrams_out(&mut e).len(), 1, "an existing flow was cut");
    e.handle_tun_packet(udp((SERVER_IP, 53), (CLIENT_VIP, 6000), b"unasked"), now);
    assert!(drain_frames(&mut e, SS).is_empty(), "a fifth flow went out");
    assert_eq!(status_of(&e, SS).counters.datagrams_refused_limit, 3);
    // The other client has its own table.
    let b = encode(&[Frame::Datagram { packet: &udp((OTHER_VIP, 5000), (SERVER_IP, 53), b"q") }]);
    e.handle_session_bytes(SB, &b, now).unwrap();
    assert_eq!(datagrams_out(&mut e).len(), 1, "the other client's datagram was dropped");
    // Idle flows expire and make room again.
    let later = now + timeout + Duration::from_secs(1);
    e.poll(later);
    assert_eq!(status_of(&e, SS).udp_flows, 0);
    e.handle_session_bytes(SS, &from(7000), later).unwrap();
    assert_eq!(datagrams_out(&mut e).len(), 1, "no room after the old flows expired");
    assert_eq!(status_of(&e, SS).udp_flows, 1);
}

#[test]
fn a_peer_that_sends_without_reading_hits_the_queue_limit_and_one_that_reads_does_not() {
    let now = Instant::from_millis(1_000);
    let config = engine_config(Role::Server, 22);
    let limit = config.queue_limit(&config.session_limits);
    // OPENs with the server's parity: each is answered by a RESET, which the peer never reads.
    let bad_opens = |from: u32, count: u32| {
        let frames: Vec<Frame> = (from..from + count)
            .map(|i| Frame::Open { stream_id: 2 * i, src: addr("100.64.0.2:1000"), dst: addr("100.64.0.1:80") })
            .collect();
        encode(&frames)
    };
    let mut reader = server_with_two_clients(config.clone(), now);
    let mut deaf = server_with_two_clients(config, now);
    let mut fed = 0;
    let err = loop {
        assert!(fed < 1_000_000, "the queue towards the deaf peer was never bounded");
        match deaf.handle_session_bytes(SS, &bad_opens(fed, 1000), now) {
            Ok(()) => fed += 1000,
            Err(err) => break err,
        }
        // The same frames from a peer that reads its replies.
        reader.handle_session_bytes(SS, &bad_opens(fed, 1000), now).expect("a reading peer is never cut off");
        drain_frames(&mut reader, SS);
    };
    let SessionError::PeerNotReading { queued, limit: l } = err else { panic!("{err}") };
    assert_eq!(l, limit);
    assert!(queued > limit && queued <= limit + 64, "queued {queued}, limit {limit}");
    assert!(status_of(&deaf, SS).queued_bytes <= limit + 64);
    // Nothing of the other session was touched.
    let other = status_of(&deaf, SB);
    assert_eq!((other.queued_bytes, other.counters.streams_violated), (0, 0));
}

/// Destinations a client tries, with what the server policy without exit mode answers.
fn forbidden_by_default() -> Vec<&'static str> {
    vec!["198.18.1.1", "198.18.9.2", "127.0.0.1", "100.64.0.3"]
}

fn isolated(allowed: Vec<IpPrefix>, client_to_client: bool) -> EngineConfig {
    let mut c = engine_config(Role::Server, 22);
    c.destinations = DestinationPolicy {
        server_ips: vec![IpAddr::from(SERVER_IP)],
        client_prefixes: vec![IpPrefix::new("100.64.0.0".parse().unwrap(), 10)],
        exit: false,
        allowed,
        client_to_client,
    };
    c
}

#[test]
fn without_exit_a_client_reaches_only_the_servers_virtual_ips() {
    let now = Instant::from_millis(1_000);
    let mut e = server_with_two_clients(isolated(Vec::new(), false), now);
    for (i, dst) in forbidden_by_default().into_iter().enumerate() {
        let id = 2 * i as u32 + 1;
        e.handle_session_bytes(SS, &open(id, "100.64.0.2:40000", &format!("{dst}:22")), now).unwrap();
        assert_eq!(drain_frames(&mut e, SS), vec![Seen::Reset(id, ResetCode::NotAllowed)], "{dst}");
        let dg = udp((CLIENT_VIP, 5000), (dst.parse::<std::net::Ipv4Addr>().unwrap().octets(), 53), b"q");
        e.handle_session_bytes(SS, &encode(&[Frame::Datagram { packet: &dg }]), now).unwrap();
    }
    e.poll(now);
    assert!(syns_to(&mut e).is_empty(), "a connection to a forbidden destination was originated");
    let c = status_of(&e, SS).counters;
    assert_eq!((c.streams_forbidden, c.datagrams_forbidden), (4, 4));
    assert_eq!((c.datagrams_received, c.tcp_streams_opened, c.streams_violated), (0, 0, 0));
    // The server's own virtual IP works, for TCP and UDP.
    e.handle_session_bytes(SS, &open(21, "100.64.0.2:40001", "100.64.0.1:80"), now).unwrap();
    let dg = udp((CLIENT_VIP, 5000), (SERVER_IP, 53), b"q");
    e.handle_session_bytes(SS, &encode(&[Frame::Datagram { packet: &dg }]), now).unwrap();
    e.poll(now);
    let out: Vec<Vec<u8>> = std::iter::from_fn(|| e.pop_tun_packet()).collect();
    assert!(out.contains(&dg), "the datagram to the server's virtual IP did not reach the TUN");
    assert_eq!(out.len(), 2, "the SYN to 100.64.0.1:80 and the datagram");
}

#[test]
fn allowed_destinations_and_client_to_client_open_what_they_name() {
    let now = Instant::from_millis(1_000);
    let behind = IpPrefix::new("198.18.9.0".parse().unwrap(), 24);
    let mut e = server_with_two_clients(isolated(vec![behind], false), now);
    e.handle_session_bytes(SS, &open(1, "100.64.0.2:40000", "198.18.9.2:80"), now).unwrap();
    e.handle_session_bytes(SS, &open(3, "100.64.0.2:40001", "100.64.0.3:80"), now).unwrap();
    e.handle_session_bytes(SS, &open(5, "100.64.0.2:40002", "198.18.1.1:80"), now).unwrap();
    e.poll(now);
    assert_eq!(syns_to(&mut e), vec![addr("198.18.9.2:80")]);
    assert_eq!(
        drain_frames(&mut e, SS),
        vec![Seen::Reset(3, ResetCode::NotAllowed), Seen::Reset(5, ResetCode::NotAllowed)]
    );
    let mut e = server_with_two_clients(isolated(Vec::new(), true), now);
    e.handle_session_bytes(SS, &open(1, "100.64.0.2:40000", "100.64.0.3:80"), now).unwrap();
    e.poll(now);
    assert_eq!(syns_to(&mut e), vec![addr("100.64.0.3:80")], "client_to_client");
}

#[test]
fn an_app_connecting_to_a_forbidden_destination_is_refused_at_once() {
    let mut n = Net::with(engine_config(Role::Client, 11), isolated(Vec::new(), false), app_config(33), app_config(44));
    let f = n.client.app.connect(addr("100.64.0.2:43000"), addr("198.18.1.1:22")).unwrap();
    n.pump();
    assert_eq!(n.client.closed(f), Some(true), "the app's connection was not refused");
    assert!(n.server.new_flows.is_empty(), "the server side saw the connection");
    assert_eq!(n.server.sent_frames, vec![Seen::Reset(1, ResetCode::NotAllowed)]);
    // The server's virtual IP still works.
    let (fc, fs) = n.client_connects(43001);
    let bytes = pattern(20_000, 10);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &bytes) == bytes);
}
