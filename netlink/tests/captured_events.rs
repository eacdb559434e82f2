//! The uplink model replayed on real kernel messages: the bytes a 6.18
//! kernel sent while `ip` took a veth uplink through its life cycle
//! (`fixtures/uplink_events.hex`; `fixtures/README.md` says how it was made).
//! No kernel and no root needed: each step's messages are parsed and fed to
//! an [`UplinkTable`], and the snapshot is checked against what a user who
//! typed those `ip` commands would expect.
//!
//! ```text
//!   rc0 198.18.0.2/24, fd00:1::2/64 ════ veth ════ rc0p (no address)
//!   default via 198.18.0.1 / fd00:1::1 dev rc0
//! ```

use std::net::IpAddr;

use roamtun_netlink::{EventOutcome, Uplink, UplinkTable};
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;

const FIXTURE: &str = include_str!("fixtures/uplink_events.hex");

/// (step name, that step's messages as bytes), in capture order.
fn steps() -> Vec<(String, Vec<Vec<u8>>)> {
    let mut steps: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for line in FIXTURE.lines() {
        if let Some(name) = line.strip_prefix("# step: ") {
            steps.push((name.to_owned(), Vec::new()));
        } else if !line.starts_with('#') && !line.is_empty() {
            let bytes = (0..line.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&line[i..i + 2], 16).expect("fixture is hex"))
                .collect();
            steps.last_mut().expect("a step before the first message").1.push(bytes);
        }
    }
    steps
}

fn parse(bytes: &[u8]) -> NetlinkMessage<RouteNetlinkMessage> {
    NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).expect("captured message parses")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test IP literal")
}

/// Replays the fixture step by step, returning (step, outcomes, rc0 after
/// the step or `None` once it is gone).
fn replay() -> Vec<(String, Vec<EventOutcome>, Option<Uplink>)> {
    let mut table = UplinkTable::new();
    steps()
        .into_iter()
        .map(|(name, messages)| {
            let outcomes = messages.iter().map(|bytes| table.apply_event(&parse(bytes))).collect();
            (name, outcomes, table.snapshot().remove("rc0"))
        })
        .collect()
}

fn step<'a>(
    replayed: &'a [(String, Vec<EventOutcome>, Option<Uplink>)],
    name: &str,
) -> (&'a [EventOutcome], Option<&'a Uplink>) {
    let (_, outcomes, rc0) = replayed.iter().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no step {name}"));
    (outcomes, rc0.as_ref())
}

#[test]
fn fixture_has_every_step() {
    let names: Vec<String> = steps().into_iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [
            "veth_created",
            "links_up",
            "addresses_added",
            "default_routes_added",
            "link_down",
            "link_up_again",
            "default_route_back",
            "route_replaced",
            "address_removed",
            "link_deleted"
        ]
    );
    assert!(FIXTURE.starts_with("# kernel "), "the kernel version is recorded");
}

#[test]
fn every_captured_message_parses_and_round_trips() {
    for (name, messages) in steps() {
        for bytes in messages {
            let message = parse(&bytes);
            let mut emitted = vec![0; message.buffer_len()];
            message.serialize(&mut emitted);
            // Re-parsing what we emit gives the same message (the kernel may
            // send attributes the crate keeps as raw bytes; they survive).
            assert_eq!(parse(&emitted), message, "step {name}");
        }
    }
}

#[test]
fn new_veth_is_known_but_not_usable() {
    let replayed = replay();
    let (outcomes, rc0) = step(&replayed, "veth_created");
    assert!(outcomes.contains(&EventOutcome::Changed));
    let rc0 = rc0.expect("rc0 known once created");
    assert!(!rc0.admin_up && !rc0.usable() && rc0.addresses.is_empty() && !rc0.has_default_route, "{rc0:?}");
}

#[test]
fn up_with_carrier_but_only_link_local_is_not_usable() {
    let replayed = replay();
    let (_, rc0) = step(&replayed, "links_up");
    let rc0 = rc0.expect("rc0");
    assert!(rc0.admin_up && rc0.lower_up, "peer up, so carrier: {rc0:?}");
    assert!(rc0.addresses.is_empty(), "fe80:: is link scope, never a relay source: {rc0:?}");
    assert!(!rc0.usable());
}

#[test]
fn global_addresses_make_it_usable_once_dad_is_done() {
    let replayed = replay();
    let (_, rc0) = step(&replayed, "addresses_added");
    let rc0 = rc0.expect("rc0");
    assert_eq!(rc0.addresses, [ip("198.18.0.2"), ip("fd00:1::2")]);
    assert_eq!(rc0.prefixes, [(ip("198.18.0.2"), 24), (ip("fd00:1::2"), 64)]);
    assert!(rc0.usable() && !rc0.has_default_route);
}

#[test]
fn default_routes_give_gateways_of_both_families() {
    let replayed = replay();
    let (outcomes, rc0) = step(&replayed, "default_routes_added");
    assert_eq!(outcomes, [EventOutcome::Changed, EventOutcome::Changed]);
    let rc0 = rc0.expect("rc0");
    assert_eq!(rc0.gateways, [ip("198.18.0.1"), ip("fd00:1::1")]);
    assert!(rc0.has_default_route && !rc0.device_default_v4 && !rc0.device_default_v6);
}

#[test]
fn link_down_takes_ipv6_addresses_and_every_default_route() {
    let replayed = replay();
    let (_, rc0) = step(&replayed, "link_down");
    let rc0 = rc0.expect("rc0");
    assert!(!rc0.admin_up && !rc0.usable());
    // keep_addr_on_down is 0 by default: IPv6 addresses go with the link,
    // IPv4 ones stay.
    assert_eq!(rc0.addresses, [ip("198.18.0.2")]);
    // The IPv4 default route is flushed without a notification.
    assert!(rc0.gateways.is_empty() && !rc0.has_default_route, "{rc0:?}");
}

#[test]
fn link_up_again_keeps_ipv4_but_not_the_routes() {
    let replayed = replay();
    let (_, rc0) = step(&replayed, "link_up_again");
    let rc0 = rc0.expect("rc0");
    assert!(rc0.usable());
    assert_eq!(rc0.route_flushes, 1, "the link-down flushed the IPv4 routes");
    assert_eq!(rc0.addresses, [ip("198.18.0.2")], "the IPv6 address does not come back by itself");
    assert!(!rc0.has_default_route);

    let (outcomes, rc0) = step(&replayed, "default_route_back");
    assert_eq!(outcomes, [EventOutcome::Changed], "the same route again is a change after the silent flush");
    assert_eq!(rc0.expect("rc0").gateways, [ip("198.18.0.1")]);
}

#[test]
fn replaced_default_route_asks_for_a_dump() {
    let replayed = replay();
    let (outcomes, _) = step(&replayed, "route_replaced");
    // The event names only the new route; the one it replaced is gone
    // without an event, so the monitor re-dumps rather than patches.
    assert_eq!(outcomes, [EventOutcome::NeedsDump("replaced default route")]);
}

#[test]
fn last_ipv4_address_removed_leaves_nothing_to_send_from() {
    let replayed = replay();
    let (_, rc0) = step(&replayed, "address_removed");
    let rc0 = rc0.expect("rc0");
    assert!(rc0.addresses.is_empty() && !rc0.usable());
    // The kernel flushed the IPv4 routes of the link silently.
    assert_eq!(rc0.route_flushes, 2);
    assert!(!rc0.has_default_route && rc0.gateways.is_empty(), "{rc0:?}");
}

#[test]
fn deleted_link_disappears_with_its_peer() {
    let mut table = UplinkTable::new();
    for (_, messages) in steps() {
        for bytes in messages {
            table.apply_event(&parse(&bytes));
        }
    }
    let names: Vec<String> = table.snapshot().into_keys().collect();
    assert!(!names.iter().any(|n| n.starts_with("rc0")), "{names:?}");
}

/// Truncated, cut-short or corrupted messages are errors, never panics,
/// and a corrupt message that still parses leaves the table consistent.
#[test]
fn corrupt_messages_are_errors_not_panics() {
    for (_, messages) in steps() {
        for bytes in messages {
            for len in [0, 1, 4, 15, 16, 17, bytes.len() / 2, bytes.len() - 1] {
                // Cut short: the header's length no longer matches.
                assert!(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[..len]).is_err(), "len {len}");
            }
            // Header length claims more than there is.
            let mut longer = bytes.clone();
            longer[0..4].copy_from_slice(&(bytes.len() as u32 + 64).to_ne_bytes());
            assert!(NetlinkMessage::<RouteNetlinkMessage>::deserialize(&longer).is_err());
            // Every byte flipped in turn: an error or some message, never a panic.
            let mut table = UplinkTable::new();
            for i in 0..bytes.len() {
                let mut corrupt = bytes.clone();
                corrupt[i] ^= 0xff;
                if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&corrupt) {
                    table.apply_event(&message);
                    let _ = table.snapshot();
                }
            }
        }
    }
}
