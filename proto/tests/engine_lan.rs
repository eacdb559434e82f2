//! A router's LAN in routed mode: hosts behind the client speak from their own addresses, inside the
//! peer's `lan_prefixes`, which both engines know (tests/support/pair.rs).

mod support;

use std::net::{IpAddr, SocketAddr};

use roamtun_proto::relay::engine::SessionError;
use roamtun_proto::relay::policy::IpPrefix;
use support::pair::*;
use support::*;

const LAN_HOST: &str = "198.19.50.10";

fn lan() -> IpPrefix {
    IpPrefix::new("198.19.50.0".parse().unwrap(), 24)
}

/// A pair whose client session has `client` LAN prefixes and whose server session has `server`.
fn net(client: Vec<IpPrefix>, server: Vec<IpPrefix>) -> Net {
    let mut n = Net::new();
    for (side, prefixes) in [(&mut n.client, client), (&mut n.server, server)] {
        side.engine.remove_session(side.sid, n.now);
        let limits = side.engine.config().session_limits;
        side.engine.add_session(side.sid, vec![vip()], prefixes, limits).unwrap();
    }
    n
}

#[test]
fn a_lan_host_reaches_a_server_app_from_its_own_address_and_back() {
    let mut n = net(vec![lan()], vec![lan()]);
    let src: SocketAddr = format!("{LAN_HOST}:41000").parse().unwrap();
    let fc = n.client.app.connect(src, addr("100.64.0.1:80")).unwrap();
    n.pump();
    let &(fs, seen_src, _) = n.server.new_flows.last().expect("the LAN host's SYN reached the server side");
    assert_eq!(seen_src, src, "the server app sees the LAN host's own address");
    n.server.app.accept(fs).unwrap();
    n.pump();
    assert!(n.client.connected(fc));
    let up = pattern(200_000, 1);
    assert!(n.transfer((Which::Client, fc), (Which::Server, fs), &up) == up);
    let down = pattern(200_000, 2);
    assert!(n.transfer((Which::Server, fs), (Which::Client, fc), &down) == down);

    // A server app connects to the LAN host; the client side lets the SYN through to it.
    let lan_dst: SocketAddr = format!("{LAN_HOST}:22").parse().unwrap();
    let fs2 = n.server.app.connect(addr("100.64.0.1:40000"), lan_dst).unwrap();
    n.pump();
    let &(fc2, _, seen_dst) = n.client.new_flows.last().expect("the server app's SYN reached the LAN side");
    assert_eq!(seen_dst, lan_dst);
    n.client.app.accept(fc2).unwrap();
    n.pump();
    assert!(n.server.connected(fs2));
    assert_eq!(n.server.counters().streams_violated + n.client.counters().streams_violated, 0);
}

#[test]
fn a_server_that_does_not_know_the_lan_refuses_its_hosts() {
    let mut n = net(vec![lan()], Vec::new());
    let fc = n.client.app.connect(format!("{LAN_HOST}:41001").parse().unwrap(), addr("100.64.0.1:80")).unwrap();
    n.pump();
    assert!(n.server.new_flows.is_empty(), "the server side opened a connection from an address not the peer's");
    assert_eq!(n.server.counters().streams_violated, 1);
    assert_eq!(n.client.closed(fc), Some(true), "the LAN host's connection was not refused");
}

#[test]
fn a_client_without_the_lan_refuses_its_packets_at_the_tun() {
    let mut n = net(Vec::new(), vec![lan()]);
    let fc = n.client.app.connect(format!("{LAN_HOST}:41002").parse().unwrap(), addr("100.64.0.1:80")).unwrap();
    n.pump();
    assert!(n.server.new_flows.is_empty());
    assert_eq!(n.client.closed(fc), Some(true), "the LAN host's connection was not refused");
}

#[test]
fn lan_datagrams_go_both_ways_and_other_sources_are_dropped() {
    let mut n = net(vec![lan()], vec![lan()]);
    n.client.engine.handle_tun_packet(udp(([198, 19, 50, 10], 5353), (SERVER_IP, 53), b"query"), n.now);
    n.pump();
    assert_eq!(n.server.datagrams.len(), 1, "the LAN host's datagram did not reach the server side");
    n.server.engine.handle_tun_packet(udp((SERVER_IP, 53), ([198, 19, 50, 10], 5353), b"answer"), n.now);
    n.pump();
    assert_eq!(n.client.datagrams.len(), 1, "the answer did not reach the LAN host");

    // The server knows only a smaller prefix: a host outside it is not the peer's to speak for.
    let mut n = net(vec![lan()], vec![IpPrefix::new("198.19.50.0".parse().unwrap(), 28)]);
    n.client.engine.handle_tun_packet(udp(([198, 19, 50, 200], 5353), (SERVER_IP, 53), b"query"), n.now);
    n.pump();
    assert!(n.server.datagrams.is_empty());
    assert_eq!(n.server.counters().datagrams_spoofed, 1);
}

#[test]
fn a_lan_prefix_that_overlaps_another_session_is_refused() {
    let mut n = net(Vec::new(), vec![lan()]);
    let other = roamtun_proto::relay::engine::SessionId(7);
    let limits = n.server.engine.config().session_limits;
    let inside = IpPrefix::new("198.19.50.128".parse().unwrap(), 25);
    let err =
        n.server.engine.add_session(other, vec![IpAddr::from([100, 64, 0, 9])], vec![inside], limits).unwrap_err();
    assert!(matches!(err, SessionError::LanPrefixTaken(p) if p == inside), "{err}");
    let err = n.server.engine.add_session(other, vec![LAN_HOST.parse().unwrap()], Vec::new(), limits).unwrap_err();
    assert!(matches!(err, SessionError::VirtualIpTaken(_)), "{err}");
    let covering = IpPrefix::new("198.19.0.0".parse().unwrap(), 16);
    assert!(n.server.engine.add_session(other, vec![IpAddr::from([100, 64, 0, 9])], vec![covering], limits).is_err());
    let apart = IpPrefix::new("198.19.51.0".parse().unwrap(), 24);
    n.server.engine.add_session(other, vec![IpAddr::from([100, 64, 0, 9])], vec![apart], limits).unwrap();
}
