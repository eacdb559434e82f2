//! Merging the TCP segments the stack sends on one flow into one super-segment for the TUN: a
//! virtio-net segmentation-offload packet (`GSO_TCPV4` / `GSO_TCPV6`) that the kernel cuts back into
//! segments of the original size only where it has to (a LAN link, an exit's uplink), or hands whole
//! to a NIC or a peer that takes it so.
//!
//! smoltcp sends to a LAN host or an internet server in segments of that host's MSS (1460 bytes on
//! Ethernet), and each would be one write and one trip through the kernel's forwarding path. Its poll
//! lets every socket send one segment per round, so one flow's segments are spread over the batch:
//! they are gathered per flow, in order, and a flow's run ends at the first segment that does not
//! follow on (a gap, other flags, other header fields) or that ends it (a shorter one, a PSH).
//! Packets of different flows may leave in another order than they were sent, never two of one
//! flow.
//!
//! Sans-IO: byte slices in, packets with their virtio-net header out (written by
//! `src/daemon/shell.rs`).

use std::collections::HashMap;

use crate::vnet::{self, HEADER_LEN};

/// A packet ready for the TUN: its virtio-net header and the IP packet, one write each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxPacket {
    pub header: [u8; HEADER_LEN],
    pub packet: Vec<u8>,
}

/// The largest super-segment: what an IPv4 total length or an IPv6 payload length can count.
const MAX_PACKET: usize = 65535;

/// Merges the TCP segments of each flow in `batch` that follow each other (see the module doc) and
/// frames every packet for the TUN. The buffers of merged segments go to `recycle`.
pub fn coalesce(batch: Vec<Vec<u8>>, mut recycle: impl FnMut(Vec<u8>)) -> Vec<TxPacket> {
    if batch.len() < 2 {
        // Nothing to merge (an interactive flow's lone segment): no flow table to build.
        return batch.into_iter().map(|packet| TxPacket { header: vnet::tx_header(&packet), packet }).collect();
    }
    let mut out: Vec<Pending> = Vec::with_capacity(batch.len());
    // The flow's run that may still grow: its index in `out`.
    let mut open: HashMap<FlowKey, usize> = HashMap::new();
    for packet in batch {
        let Some(seg) = Segment::parse(&packet) else {
            out.push(Pending { packet, run: None });
            continue;
        };
        if let Some(&at) = open.get(&seg.key) {
            let pending = &mut out[at];
            let run = pending.run.as_mut().expect("open runs have a run");
            if run.takes(&pending.packet, &packet, &seg) {
                run.next_seq = seg.seq.wrapping_add(seg.payload_len() as u32);
                run.segments += 1;
                let psh = seg.flags & PSH != 0;
                run.psh |= psh;
                // The newest window is the one to announce.
                let window_at = run.ip_len + 14;
                pending.packet[window_at..window_at + 2].copy_from_slice(&packet[window_at..window_at + 2]);
                pending.packet.extend_from_slice(&packet[seg.header_len..]);
                // A shorter segment is the last the kernel can cut at one size; PSH is only ever on
                // the last it cuts.
                if psh || seg.payload_len() < run.segment_size {
                    open.remove(&seg.key);
                }
                recycle(packet);
                continue;
            }
            open.remove(&seg.key);
        }
        if seg.mergeable() && seg.flags & PSH == 0 {
            open.insert(seg.key, out.len());
            let run = Run {
                ip_len: seg.ip_len,
                header_len: seg.header_len,
                segment_size: seg.payload_len(),
                next_seq: seg.seq.wrapping_add(seg.payload_len() as u32),
                segments: 1,
                psh: false,
                v6: seg.v6,
            };
            out.push(Pending { packet, run: Some(run) });
        } else {
            out.push(Pending { packet, run: None });
        }
    }
    out.into_iter().map(Pending::finish).collect()
}

const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
/// `VIRTIO_NET_HDR_GSO_TCPV4` and `_TCPV6`.
const GSO_TCPV4: u8 = 1;
const GSO_TCPV6: u8 = 4;
const F_NEEDS_CSUM: u8 = 1;

/// Addresses and ports, as they sit in the headers: IPv4 source and destination (8 bytes) or IPv6
/// (32), then the TCP ports (4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FlowKey([u8; 36]);

/// What the batch knows of one TCP segment.
struct Segment {
    key: FlowKey,
    v6: bool,
    /// Length of the IP header (no IPv4 options, no IPv6 extension headers: smoltcp sends none).
    ip_len: usize,
    /// IP and TCP headers, options included.
    header_len: usize,
    total_len: usize,
    seq: u32,
    flags: u8,
}

impl Segment {
    fn parse(packet: &[u8]) -> Option<Segment> {
        let mut key = [0u8; 36];
        let (v6, ip_len) = match packet.first()? >> 4 {
            4 if packet.len() >= 40 && packet[0] & 0x0f == 5 && packet[9] == 6 => {
                // Neither a fragment nor more of them.
                if u16::from_be_bytes([packet[6], packet[7]]) & 0x3fff != 0
                    || usize::from(u16::from_be_bytes([packet[2], packet[3]])) != packet.len()
                {
                    return None;
                }
                key[..8].copy_from_slice(&packet[12..20]);
                (false, 20)
            }
            6 if packet.len() >= 60 && packet[6] == 6 => {
                if usize::from(u16::from_be_bytes([packet[4], packet[5]])) + 40 != packet.len() {
                    return None;
                }
                key[..32].copy_from_slice(&packet[8..40]);
                (true, 40)
            }
            _ => return None,
        };
        let tcp = &packet[ip_len..];
        let header_len = ip_len + usize::from(tcp[12] >> 4) * 4;
        if header_len < ip_len + 20 || header_len > packet.len() {
            return None;
        }
        key[32..].copy_from_slice(&tcp[..4]);
        Some(Segment {
            key: FlowKey(key),
            v6,
            ip_len,
            header_len,
            total_len: packet.len(),
            seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
            flags: tcp[13],
        })
    }

    fn payload_len(&self) -> usize {
        self.total_len - self.header_len
    }

    /// Plain data: ACK (and PSH) only, with a payload. A SYN, FIN or RST, and a bare ACK, go alone.
    fn mergeable(&self) -> bool {
        self.flags & !(ACK | PSH) == 0 && self.flags & ACK != 0 && self.payload_len() > 0
    }
}

/// A flow's segments merged so far into the packet of its first.
struct Run {
    ip_len: usize,
    header_len: usize,
    segment_size: usize,
    next_seq: u32,
    segments: usize,
    psh: bool,
    v6: bool,
}

impl Run {
    /// Whether `next` (`packet`) continues the run in `merged`: the next bytes, no longer than the
    /// first segment, of plain data, and every header field the kernel copies into each segment it
    /// cuts the same (the TOS or traffic class, the TTL, DF, the ACK number and the options).
    fn takes(&self, merged: &[u8], packet: &[u8], next: &Segment) -> bool {
        let ip_same = if self.v6 {
            merged[..4] == packet[..4] && merged[7] == packet[7]
        } else {
            merged[1] == packet[1] && merged[6] & 0x40 == packet[6] & 0x40 && merged[8] == packet[8]
        };
        let tcp = self.ip_len;
        next.mergeable()
            && next.seq == self.next_seq
            && next.header_len == self.header_len
            && next.payload_len() <= self.segment_size
            && merged.len() + next.payload_len() <= MAX_PACKET
            && ip_same
            && merged[tcp + 8..tcp + 12] == packet[tcp + 8..tcp + 12]
            && merged[tcp + 20..self.header_len] == packet[tcp + 20..self.header_len]
    }
}

struct Pending {
    packet: Vec<u8>,
    /// Set for a TCP data segment, which later ones of its flow may have joined.
    run: Option<Run>,
}

impl Pending {
    fn finish(self) -> TxPacket {
        let Pending { mut packet, run } = self;
        let Some(run) = run.filter(|run| run.segments > 1) else {
            return TxPacket { header: vnet::tx_header(&packet), packet };
        };
        if run.v6 {
            let payload = (packet.len() - 40) as u16;
            packet[4..6].copy_from_slice(&payload.to_be_bytes());
        } else {
            let total = packet.len() as u16;
            packet[2..4].copy_from_slice(&total.to_be_bytes());
            packet[10..12].fill(0);
            let sum = !vnet::ones_complement_sum(&packet[..20]);
            packet[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        if run.psh {
            packet[run.ip_len + 13] |= PSH;
        }
        // The kernel's segmentation expects the pseudo-header sum over the whole length, and
        // adjusts it to each segment's.
        crate::checksum::seed_tcp_checksum(&mut packet);
        let mut header = [0u8; HEADER_LEN];
        header[0] = F_NEEDS_CSUM;
        header[1] = if run.v6 { GSO_TCPV6 } else { GSO_TCPV4 };
        header[2..4].copy_from_slice(&(run.header_len as u16).to_ne_bytes());
        header[4..6].copy_from_slice(&(run.segment_size as u16).to_ne_bytes());
        header[6..8].copy_from_slice(&(run.ip_len as u16).to_ne_bytes());
        header[8..10].copy_from_slice(&16u16.to_ne_bytes());
        TxPacket { header, packet }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A data segment as smoltcp emits it with checksum offload: checksum field seeded.
    fn segment(v6: bool, port: u16, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let builder = if v6 {
            let mut a = [0u8; 16];
            a[0] = 0xfd;
            a[15] = 1;
            let mut b = a;
            b[15] = 2;
            etherparse::PacketBuilder::ipv6(a, b, 64)
        } else {
            etherparse::PacketBuilder::ipv4([100, 64, 0, 2], [198, 19, 50, 10], 64)
        };
        let mut tcp = builder.tcp(port, 40000, seq, 5000).ack(77);
        if flags & PSH != 0 {
            tcp = tcp.psh();
        }
        if flags & 0x01 != 0 {
            tcp = tcp.fin();
        }
        let mut out = Vec::new();
        tcp.write(&mut out, payload).unwrap();
        crate::checksum::seed_tcp_checksum(&mut out);
        out
    }

    /// What the kernel makes of a packet written with `header`: a super-segment cut at `gso_size`,
    /// every segment with the first's headers, its own sequence number and length, PSH and FIN on
    /// the last only; then each segment's (flow port, seq, flags, payload).
    fn kernel_segments(tx: &TxPacket) -> Vec<(u16, u32, u8, Vec<u8>)> {
        let p = &tx.packet;
        let v6 = p[0] >> 4 == 6;
        let ip_len = if v6 { 40 } else { 20 };
        let header_len = ip_len + usize::from(p[ip_len + 12] >> 4) * 4;
        let port = u16::from_be_bytes([p[ip_len], p[ip_len + 1]]);
        let seq = u32::from_be_bytes(p[ip_len + 4..ip_len + 8].try_into().unwrap());
        let flags = p[ip_len + 13];
        let payload = &p[header_len..];
        // The lengths and checksums the kernel relies on.
        if v6 {
            assert_eq!(usize::from(u16::from_be_bytes([p[4], p[5]])) + 40, p.len());
        } else {
            assert_eq!(usize::from(u16::from_be_bytes([p[2], p[3]])), p.len());
            assert_eq!(vnet::ones_complement_sum(&p[..20]), 0xffff, "IPv4 header checksum");
        }
        let mut seeded = p.clone();
        crate::checksum::seed_tcp_checksum(&mut seeded);
        assert_eq!(seeded, *p, "the checksum field holds the pseudo-header sum of the whole length");
        assert_eq!(tx.header[0], F_NEEDS_CSUM);
        assert_eq!(u16::from_ne_bytes([tx.header[6], tx.header[7]]) as usize, ip_len);
        assert_eq!(u16::from_ne_bytes([tx.header[8], tx.header[9]]), 16);
        if tx.header[1] == 0 {
            return vec![(port, seq, flags, payload.to_vec())];
        }
        assert_eq!(tx.header[1], if v6 { GSO_TCPV6 } else { GSO_TCPV4 });
        assert_eq!(usize::from(u16::from_ne_bytes([tx.header[2], tx.header[3]])), header_len);
        let size = usize::from(u16::from_ne_bytes([tx.header[4], tx.header[5]]));
        assert!(payload.len() > size, "a super-segment holds more than one segment");
        let chunks: Vec<&[u8]> = payload.chunks(size).collect();
        let last = chunks.len() - 1;
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| {
                let f = if i == last { flags } else { flags & !(PSH | 0x01) };
                (port, seq.wrapping_add((i * size) as u32), f, chunk.to_vec())
            })
            .collect()
    }

    /// Per flow (port), the segments in the order they were given.
    fn by_flow(segments: impl IntoIterator<Item = (u16, u32, u8, Vec<u8>)>) -> HashMap<u16, Vec<(u32, u8, Vec<u8>)>> {
        let mut flows: HashMap<u16, Vec<(u32, u8, Vec<u8>)>> = HashMap::new();
        for (port, seq, flags, payload) in segments {
            flows.entry(port).or_default().push((seq, flags, payload));
        }
        flows
    }

    fn parse_back(packet: &[u8]) -> (u16, u32, u8, Vec<u8>) {
        let tx = TxPacket { header: vnet::tx_header(packet), packet: packet.to_vec() };
        kernel_segments(&tx).remove(0)
    }

    #[test]
    fn interleaved_flows_become_one_write_each() {
        // Three flows, one segment each per round, as smoltcp's poll emits them.
        let mut batch = Vec::new();
        for round in 0..10u32 {
            for port in [5201, 5202, 5203] {
                batch.push(segment(port == 5203, port, 1000 + round * 1448, 0, &[round as u8; 1448]));
            }
        }
        let mut recycled = 0;
        let out = coalesce(batch.clone(), |_| recycled += 1);
        assert_eq!(out.len(), 3);
        assert_eq!(recycled, 27);
        let got = by_flow(out.iter().flat_map(kernel_segments));
        assert_eq!(got, by_flow(batch.iter().map(|p| parse_back(p))));
    }

    #[test]
    fn a_run_ends_where_its_flow_stops_following_on() {
        let batch = vec![
            segment(false, 1, 0, 0, &[1; 1000]),
            segment(false, 1, 1000, 0, &[2; 1000]),
            // Shorter: joins the run and ends it.
            segment(false, 1, 2000, 0, &[3; 10]),
            segment(false, 1, 2010, 0, &[4; 1000]),
            // PSH: joins the run and ends it.
            segment(false, 1, 3010, PSH, &[5; 1000]),
            segment(false, 1, 4010, 0, &[6; 1000]),
            // A gap (a retransmission of older bytes): a run of its own.
            segment(false, 1, 0, 0, &[1; 1000]),
            // FIN, and a bare ACK: alone, after everything before them.
            segment(false, 1, 5010, 0x01, &[7; 5]),
            segment(false, 1, 5015, 0, &[]),
        ];
        let out = coalesce(batch.clone(), |_| {});
        let sizes: Vec<usize> = out.iter().map(|t| t.packet.len()).collect();
        assert_eq!(sizes, [40 + 2010, 40 + 2000, 40 + 1000, 40 + 1000, 40 + 5, 40]);
        let got = by_flow(out.iter().flat_map(kernel_segments));
        assert_eq!(got, by_flow(batch.iter().map(|p| parse_back(p))));
    }

    #[test]
    fn super_segments_stay_within_an_ip_length() {
        let batch: Vec<Vec<u8>> = (0..100u32).map(|i| segment(false, 9, i * 1460, 0, &[i as u8; 1460])).collect();
        let out = coalesce(batch.clone(), |_| {});
        assert!(out.iter().all(|t| t.packet.len() <= MAX_PACKET));
        assert_eq!(out.len(), 3, "44 segments of 1460 fit in 65535 bytes with their headers");
        assert_eq!(by_flow(out.iter().flat_map(kernel_segments)), by_flow(batch.iter().map(|p| parse_back(p))));
    }

    #[test]
    fn other_packets_pass_as_they_are() {
        let mut udp = Vec::new();
        etherparse::PacketBuilder::ipv4([100, 64, 0, 2], [198, 19, 50, 10], 64)
            .udp(5000, 53)
            .write(&mut udp, b"query")
            .unwrap();
        let tcp = segment(false, 1, 0, 0, &[1; 100]);
        let out = coalesce(vec![udp.clone(), tcp.clone(), vec![0x45, 0, 0]], |_| {});
        assert_eq!(out[0], TxPacket { header: vnet::tx_header(&udp), packet: udp });
        assert_eq!(out[1], TxPacket { header: vnet::tx_header(&tcp), packet: tcp });
        assert_eq!(out[2].packet, [0x45, 0, 0]);
    }

    proptest! {
        /// Whatever the batch (flows of both families, segment sizes, gaps, flags), what the kernel
        /// cuts out of the writes is, flow by flow, exactly the segments given, in their order.
        #[test]
        fn the_kernel_gets_back_every_flows_segments_in_order(
            sends in proptest::collection::vec((0u16..4, 1usize..1500, 0u8..8), 1..200),
        ) {
            let mut next = [0u32; 4];
            let batch: Vec<Vec<u8>> = sends
                .iter()
                .map(|&(flow, len, kind)| {
                    let i = usize::from(flow);
                    // Mostly the next bytes; sometimes a retransmission, a PSH, a FIN or a bare ACK.
                    let (seq, flags, len) = match kind {
                        0 => (next[i].wrapping_sub(len as u32), 0, len),
                        1 => (next[i], PSH, len),
                        2 => (next[i], 0x01, len),
                        3 => (next[i], 0, 0),
                        _ => (next[i], 0, 1448.min(len + 1000)),
                    };
                    next[i] = next[i].max(seq.wrapping_add(len as u32));
                    segment(flow % 2 == 1, 100 + flow, seq, flags, &vec![kind; len])
                })
                .collect();
            let mut recycled = 0;
            let out = coalesce(batch.clone(), |_| recycled += 1);
            prop_assert_eq!(out.len() + recycled, batch.len());
            prop_assert_eq!(by_flow(out.iter().flat_map(kernel_segments)), by_flow(batch.iter().map(|p| parse_back(p))));
        }
    }
}
