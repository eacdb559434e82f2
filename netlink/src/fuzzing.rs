//! The body of the cargo-fuzz target `netlink` (fuzz/fuzz_targets/netlink.rs), as a function of the
//! input bytes, so that the fuzzer and the replay test (tests/fuzz_replay.rs: the committed corpus,
//! which starts from the captured kernel messages, and every crash found) check the same things.
//!
//! Not part of the crate's API: built only with the `fuzzing` feature.

use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;

use crate::{EventOutcome, UplinkTable};

/// Length of `struct nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;

/// The bytes of one `recv` on a `NETLINK_ROUTE` socket: messages back to back, each `nlmsg_len`
/// long and padded to 4 bytes, as the kernel sends them (and as the monitor's connection cuts them).
/// Each is parsed by netlink-packet-route and applied to one [`UplinkTable`].
///
/// Checks: no panic, in the parser or the table; a message whose application changes the
/// snapshot says so (`Changed`, or `NeedsDump` when it is not applied); applying the very same
/// message again changes nothing (the kernel repeats unchanged state often).
pub fn netlink(data: &[u8]) {
    let mut table = UplinkTable::new();
    // The whole input as one message, too: the parser must refuse what does not fit.
    if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(data) {
        apply_checked(&mut table, &message);
    }
    let mut table = UplinkTable::new();
    let mut rest = data;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            break;
        }
        if let Ok(message) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len]) {
            apply_checked(&mut table, &message);
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
}

fn apply_checked(table: &mut UplinkTable, message: &NetlinkMessage<RouteNetlinkMessage>) {
    let before = table.snapshot();
    let outcome = table.apply_event(message);
    let after = table.snapshot();
    if outcome == EventOutcome::Unchanged {
        assert_eq!(before, after, "the table changed but said Unchanged for {message:?}");
    }
    if let EventOutcome::NeedsDump(_) = outcome {
        assert_eq!(before, after, "a message that asks for a dump was applied anyway: {message:?}");
        return;
    }
    let again = table.apply_event(message);
    assert_eq!(again, EventOutcome::Unchanged, "the same message applied twice changed the table: {message:?}");
    assert_eq!(table.snapshot(), after, "the same message applied twice changed the table: {message:?}");
}
