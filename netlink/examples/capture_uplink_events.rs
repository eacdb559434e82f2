//! Records the raw rtnetlink notifications of a scripted uplink life cycle,
//! for the fixture tests of the uplink model (`netlink/tests/fixtures/`).
//!
//! ```text
//!   private network namespace (unshare; gone when this process exits)
//!   ┌──────────────────────────────────────────────────────────────┐
//!   │  rc0 198.18.0.2/24, fd00:1::2/64 ════ veth ════ rc0p (no IP) │
//!   │  default via 198.18.0.1 / fd00:1::1 dev rc0 (main table)     │
//!   │  capture socket ◄── RTMGRP_LINK | IPV4_IFADDR | IPV6_IFADDR  │
//!   │                     | IPV4_ROUTE | IPV6_ROUTE                │
//!   └──────────────────────────────────────────────────────────────┘
//! ```
//!
//! Run as root, with the output redirected to
//! `netlink/tests/fixtures/uplink_events.hex`:
//! `cargo run -p roamtun-netlink --example capture_uplink_events`. Output: `#` comment lines
//! (the kernel version, then `# step: NAME` before each step's messages) and
//! one netlink message per line in hex, exactly as the kernel sent it.
//!
//! This is test tooling: it runs `ip` to make the changes, like a user or a
//! DHCP client would, and never touches the host's own namespace.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK};
use rtnetlink::sys::protocols::NETLINK_ROUTE;
use rtnetlink::sys::{Socket, SocketAddr};

/// One step: a name for the fixture, the `ip` commands, and how long the
/// kernel may keep talking afterwards (IPv6 duplicate address detection
/// takes up to about 2 s before an address stops being tentative).
struct Step {
    name: &'static str,
    commands: &'static [&'static str],
    settle: Duration,
}

const QUICK: Duration = Duration::from_millis(300);
const DAD: Duration = Duration::from_millis(3500);

const STEPS: &[Step] = &[
    Step { name: "veth_created", commands: &["link add rc0 type veth peer name rc0p"], settle: QUICK },
    Step { name: "links_up", commands: &["link set rc0p up", "link set rc0 up"], settle: DAD },
    Step {
        name: "addresses_added",
        commands: &["addr add 198.18.0.2/24 dev rc0", "addr add fd00:1::2/64 dev rc0"],
        settle: DAD,
    },
    Step {
        name: "default_routes_added",
        commands: &["route add default via 198.18.0.1 dev rc0", "-6 route add default via fd00:1::1 dev rc0"],
        settle: QUICK,
    },
    Step { name: "link_down", commands: &["link set rc0 down"], settle: QUICK },
    Step { name: "link_up_again", commands: &["link set rc0 up"], settle: DAD },
    Step { name: "default_route_back", commands: &["route add default via 198.18.0.1 dev rc0"], settle: QUICK },
    Step { name: "route_replaced", commands: &["route replace default via 198.18.0.254 dev rc0"], settle: QUICK },
    Step { name: "address_removed", commands: &["addr del 198.18.0.2/24 dev rc0"], settle: QUICK },
    Step { name: "link_deleted", commands: &["link del rc0"], settle: QUICK },
];

fn main() {
    // SAFETY: unshare takes no pointers; no other thread exists yet, and the
    // `ip` children inherit this namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        eprintln!("unshare(CLONE_NEWNET) failed (run as root): {}", std::io::Error::last_os_error());
        std::process::exit(1);
    }
    let mut socket = Socket::new(NETLINK_ROUTE).expect("open a netlink socket");
    let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
    socket.bind(&SocketAddr::new(0, groups)).expect("subscribe to link, address and route groups");
    // Large enough that no step overflows it (an overflow would lose messages).
    socket.set_rx_buf_sz(4 * 1024 * 1024).expect("set receive buffer size");

    let kernel = Command::new("uname").arg("-r").output().expect("run uname");
    let mut out = std::io::stdout().lock();
    writeln!(out, "# kernel {}", String::from_utf8_lossy(&kernel.stdout).trim()).expect("write");
    for step in STEPS {
        writeln!(out, "# step: {}", step.name).expect("write");
        for command in step.commands {
            let status = Command::new("ip").args(command.split(' ')).status().expect("run ip");
            assert!(status.success(), "ip {command} failed");
        }
        for message in read_until_quiet(&socket, step.settle) {
            writeln!(out, "{}", hex(&message)).expect("write");
        }
    }
}

/// Every message that arrives until `settle` has passed since the step.
fn read_until_quiet(socket: &Socket, settle: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + settle;
    let mut messages = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return messages;
        }
        let mut poll = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis() as libc::c_int) };
        if ready <= 0 {
            continue;
        }
        let mut datagram = Vec::with_capacity(64 * 1024);
        let n = socket.recv(&mut datagram, 0).expect("receive notifications");
        messages.extend(split(&datagram[..n]));
    }
}

/// A datagram holds one or more messages, each `nlmsg_len` long and padded
/// to 4 bytes.
fn split(mut datagram: &[u8]) -> Vec<Vec<u8>> {
    let mut messages = Vec::new();
    while datagram.len() >= 16 {
        let len = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
        if len < 16 || len > datagram.len() {
            break;
        }
        messages.push(datagram[..len].to_vec());
        datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
    }
    messages
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
