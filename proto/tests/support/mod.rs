//! Scaffolding shared by the tests in this folder (`mod support;` in each): the virtual IPs, the
//! byte patterns that catch a misplaced byte, the seeded RNG, and (in [`pair`]) two engines wired back
//! to back. Each test binary uses a part of it, so unused items are not warnings here.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};

pub mod pair;

pub const CLIENT_VIP: [u8; 4] = [100, 64, 0, 2];
pub const SERVER_IP: [u8; 4] = [100, 64, 0, 1];

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The client's virtual IP.
pub fn vip() -> IpAddr {
    IpAddr::from(CLIENT_VIP)
}

/// Deterministic, position-dependent bytes, so a misplaced or repeated byte is caught.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
}

/// xorshift64: a tiny seeded RNG, enough for loss, delay and timing decisions; a seed replays.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}
