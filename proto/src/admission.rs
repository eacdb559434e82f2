//! Admission of connections that have not authenticated yet: how many may be in their handshake at
//! once, overall and per source. Anyone on the internet can open a TCP connection to the server; a
//! stranger holding thousands of them silent must not use up the descriptors, the memory or the
//! slots that roaming clients need to resume.
//!
//! Two rules. A source past its own bound is refused at once, before it costs a TLS state: one
//! address cannot crowd out the others. When all slots are taken (many sources), the newcomer is
//! admitted and the *oldest* connection still in its handshake is closed: a real client finishes its
//! handshake within a few round trips, so it is never the oldest unless a whole table of newer
//! connections arrived meanwhile, while a stranger's silent connection ages to the front and goes.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// The bounds on connections in their handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections between accept and authentication, from all sources together.
    pub pending: usize,
    /// The same from one source: one IPv4 address, or one IPv6 /64 (what one subscriber gets).
    pub pending_per_source: usize,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "{0} connections from this source are already in their handshake (tuning.max_pending_handshakes_per_source)"
    )]
    PendingPerSource(usize),
}

/// One admitted connection, in order of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandshakeId(u64);

/// What [`Admission::admit`] decided for a newcomer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub id: HandshakeId,
    /// The oldest connection in its handshake, to be closed to make room.
    pub evicted: Option<HandshakeId>,
}

/// Counts connections in their handshake; every admitted one is released once (a release of an
/// evicted or already released one does nothing).
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    next: u64,
    /// Ordered by arrival: the first is the oldest.
    pending: BTreeMap<HandshakeId, Source>,
    per_source: HashMap<Source, usize>,
}

/// A source as the per-source bound counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn of(addr: IpAddr) -> Source {
        match addr {
            IpAddr::V4(v4) => Source(u128::from(u32::from(v4))),
            // Keep the /64; the mark bit keeps it apart from every IPv4 address.
            IpAddr::V6(v6) => Source((u128::from(v6) & !u128::from(u64::MAX)) | 1),
        }
    }
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission { limits, next: 0, pending: BTreeMap::new(), per_source: HashMap::new() }
    }

    /// Admits a connection from `addr` (possibly closing the oldest one), or refuses it when its
    /// source is at its own bound.
    pub fn admit(&mut self, addr: IpAddr) -> Result<Admitted, Refusal> {
        let source = Source::of(addr);
        let from_source = self.per_source.get(&source).copied().unwrap_or(0);
        if from_source >= self.limits.pending_per_source {
            return Err(Refusal::PendingPerSource(from_source));
        }
        let evicted = if self.pending.len() >= self.limits.pending {
            let oldest = self.pending.keys().next().copied();
            oldest.inspect(|id| self.release(*id))
        } else {
            None
        };
        let id = HandshakeId(self.next);
        self.next += 1;
        self.pending.insert(id, source);
        *self.per_source.entry(source).or_insert(0) += 1;
        Ok(Admitted { id, evicted })
    }

    /// An admitted connection authenticated, failed, or was closed.
    pub fn release(&mut self, id: HandshakeId) {
        let Some(source) = self.pending.remove(&id) else { return };
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Connections in their handshake now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sources with a connection in its handshake now (never more than `pending`).
    pub fn sources(&self) -> usize {
        self.per_source.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(last: u8) -> IpAddr {
        IpAddr::from([198, 18, 0, last])
    }

    #[test]
    fn one_source_hits_its_own_bound_not_the_others() {
        let mut a = Admission::new(AdmissionLimits { pending: 10, pending_per_source: 3 });
        for _ in 0..3 {
            a.admit(v4(1)).unwrap();
        }
        assert_eq!(a.admit(v4(1)), Err(Refusal::PendingPerSource(3)));
        assert_eq!(a.admit(v4(2)).unwrap().evicted, None, "another source is still admitted");
        assert_eq!(a.pending(), 4);
    }

    #[test]
    fn a_full_table_closes_the_oldest_for_the_newcomer() {
        let mut a = Admission::new(AdmissionLimits { pending: 3, pending_per_source: 3 });
        let first = a.admit(v4(1)).unwrap().id;
        let second = a.admit(v4(2)).unwrap().id;
        a.admit(v4(3)).unwrap();
        // The first one authenticates: its slot is free, nobody is evicted.
        a.release(first);
        assert_eq!(a.admit(v4(4)).unwrap().evicted, None);
        // Full again: the oldest still pending goes.
        let newcomer = a.admit(v4(5)).unwrap();
        assert_eq!(newcomer.evicted, Some(second));
        assert_eq!(a.pending(), 3);
        // Its task releases it when it ends: nothing happens twice.
        a.release(second);
        assert_eq!(a.pending(), 3);
    }

    #[test]
    fn a_quick_handshake_survives_a_flood_of_silent_ones() {
        let mut a = Admission::new(AdmissionLimits { pending: 100, pending_per_source: 100 });
        for i in 0..100 {
            a.admit(v4(i)).unwrap();
        }
        let client = a.admit(v4(200)).unwrap().id;
        // Fewer than a table's worth of strangers arrive during its handshake.
        for i in 0..99 {
            assert_ne!(a.admit(v4(i)).unwrap().evicted, Some(client));
        }
        a.release(client);
        assert_eq!(a.pending(), 99);
    }

    #[test]
    fn released_slots_are_free_again_and_the_tables_empty() {
        let mut a = Admission::new(AdmissionLimits { pending: 1, pending_per_source: 1 });
        let id = a.admit(v4(1)).unwrap().id;
        assert!(a.admit(v4(1)).is_err());
        a.release(id);
        assert_eq!((a.pending(), a.sources()), (0, 0));
        assert!(a.admit(v4(1)).is_ok());
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let mut a = Admission::new(AdmissionLimits { pending: 10, pending_per_source: 2 });
        a.admit("fd00:1:2:3::1".parse().unwrap()).unwrap();
        a.admit("fd00:1:2:3:ffff::9".parse().unwrap()).unwrap();
        assert_eq!(a.admit("fd00:1:2:3::77".parse().unwrap()), Err(Refusal::PendingPerSource(2)));
        assert!(a.admit("fd00:1:2:4::1".parse().unwrap()).is_ok(), "another /64 is another source");
        assert_ne!(Source::of("::c612:1".parse().unwrap()), Source::of(v4(1)), "no IPv6 source aliases an IPv4 one");
    }

    proptest! {
        /// Any sequence of arrivals and releases keeps both bounds, evicts only the oldest pending
        /// connection, and releasing everything brings the counts back to zero.
        #[test]
        fn bounds_hold_for_any_sequence(ops in proptest::collection::vec((0u8..6, any::<bool>()), 0..300)) {
            let limits = AdmissionLimits { pending: 7, pending_per_source: 3 };
            let mut a = Admission::new(limits);
            // What the shell would hold: (id, source), in order of arrival.
            let mut held: Vec<(HandshakeId, u8)> = Vec::new();
            for (source, arrive) in ops {
                if arrive || held.is_empty() {
                    match a.admit(v4(source)) {
                        Ok(admitted) => {
                            if let Some(evicted) = admitted.evicted {
                                prop_assert_eq!(Some(evicted), held.first().map(|h| h.0), "only the oldest is evicted");
                                held.remove(0);
                            }
                            held.push((admitted.id, source));
                        }
                        Err(Refusal::PendingPerSource(n)) => {
                            prop_assert_eq!(n, held.iter().filter(|h| h.1 == source).count());
                            prop_assert_eq!(n, limits.pending_per_source);
                        }
                    }
                } else {
                    let (id, _) = held.remove(usize::from(source) % held.len());
                    a.release(id);
                }
                prop_assert!(a.pending() <= limits.pending);
                prop_assert_eq!(a.pending(), held.len());
                for (_, s) in &held {
                    prop_assert!(held.iter().filter(|h| h.1 == *s).count() <= limits.pending_per_source);
                }
            }
            for (id, _) in held.drain(..) {
                a.release(id);
            }
            prop_assert_eq!((a.pending(), a.sources()), (0, 0));
        }
    }
}
