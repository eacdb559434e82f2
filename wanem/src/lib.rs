//! roamtun-wanem: a WAN emulator for roamtun's own tests and benchmarks, where `tc netem` is not
//! available. It bridges two interfaces at layer 2 (AF_PACKET raw sockets, batched reads and
//! writes) and gives each direction a one-way delay, a rate limit that counts every byte of a
//! frame, a bounded drop-tail queue and seeded random loss, then prints what it did.
//!
//! What it decides is in [`link`], a sans-IO state machine with the clock passed in; [`socket`] and
//! [`bridge`] are the thin shell around it. It deliberately does not reorder, duplicate, corrupt or
//! jitter frames, does not look inside them (ARP, IPv4 and IPv6 all cross alike) and does not set up
//! interfaces: scripts/lib/wan.sh does, and disables the offloads so that frames fit the MTU.

pub mod bridge;
pub mod link;
pub mod socket;
