//! The one checksum step the stack does itself when the device offloads TCP checksums: seeding the
//! field with the pseudo-header sum, which is what checksum offload (Linux CHECKSUM_PARTIAL, virtio-net
//! `NEEDS_CSUM`) completes by adding the sum of the TCP header and payload.

use smoltcp::wire::{checksum, IpAddress, IpProtocol, Ipv4Packet, Ipv6Packet};

/// Where the TCP checksum field sits inside the TCP header.
const TCP_CHECKSUM_OFFSET: usize = 16;

/// Writes the pseudo-header sum (not complemented) into the checksum field of a TCP packet smoltcp
/// has just emitted without a checksum. Other packets are left alone.
pub(crate) fn seed_tcp_checksum(packet: &mut [u8]) {
    let Some((src, dst, tcp_start)) = tcp_addresses(packet) else { return };
    let tcp_len = packet.len() - tcp_start;
    if tcp_len < 20 {
        return;
    }
    let seed = checksum::pseudo_header(&src, &dst, IpProtocol::Tcp, tcp_len as u32);
    let at = tcp_start + TCP_CHECKSUM_OFFSET;
    packet[at..at + 2].copy_from_slice(&seed.to_be_bytes());
}

/// Whether the TCP checksum of `packet` (IPv4 or IPv6 carrying TCP) is right: the sum over the
/// pseudo-header, the TCP header and the payload, checksum field included, is all ones.
pub(crate) fn tcp_checksum_ok(packet: &[u8]) -> bool {
    let Some((src, dst, tcp_start)) = tcp_addresses(packet) else { return false };
    let Some(segment) = packet.get(tcp_start..).filter(|s| s.len() >= 20) else { return false };
    let pseudo = checksum::pseudo_header(&src, &dst, IpProtocol::Tcp, segment.len() as u32);
    checksum::combine(&[pseudo, checksum::data(segment)]) == 0xffff
}

/// Source, destination and the start of the TCP header of an IP packet carrying TCP (without IPv6
/// extension headers, which smoltcp never emits).
fn tcp_addresses(packet: &[u8]) -> Option<(IpAddress, IpAddress, usize)> {
    match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp)
                .then(|| (ip.src_addr().into(), ip.dst_addr().into(), usize::from(ip.header_len())))
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            (ip.next_header() == IpProtocol::Tcp).then(|| (ip.src_addr().into(), ip.dst_addr().into(), 40))
        }
        _ => None,
    }
}

/// The TCP checksum a packet seeded by [`seed_tcp_checksum`] gets once the device completes it: the
/// complemented sum over the TCP header and payload, seed included. For tests.
#[cfg(test)]
pub(crate) fn complete_tcp_checksum(packet: &mut [u8]) {
    let (_, _, tcp_start) = tcp_addresses(packet).expect("a TCP packet");
    let sum = !checksum::data(&packet[tcp_start..]);
    let at = tcp_start + TCP_CHECKSUM_OFFSET;
    packet[at..at + 2].copy_from_slice(&sum.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Address, Ipv4Repr, Ipv6Address, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

    fn tcp(payload: &[u8]) -> TcpRepr<'_> {
        TcpRepr {
            src_port: 80,
            dst_port: 40000,
            control: TcpControl::Psh,
            seq_number: TcpSeqNumber(77),
            ack_number: Some(TcpSeqNumber(5)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        }
    }

    fn no_tcp_checksum() -> ChecksumCapabilities {
        let mut caps = ChecksumCapabilities::default();
        caps.tcp = smoltcp::phy::Checksum::None;
        caps
    }

    /// Emits the same segment twice, with smoltcp's checksum and without one (seeded, then
    /// completed as the device would): both must carry the same bytes.
    #[test]
    fn a_seeded_checksum_completed_by_the_device_equals_the_full_one() {
        let payload: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let repr = tcp(&payload);
        let (src, dst) = (Ipv4Address::new(100, 64, 0, 1), Ipv4Address::new(100, 64, 0, 2));
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: repr.buffer_len(),
            hop_limit: 64,
        };
        let emit = |caps: &ChecksumCapabilities| {
            let mut buf = vec![0; ip.buffer_len() + repr.buffer_len()];
            ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), caps);
            repr.emit(&mut TcpPacket::new_unchecked(&mut buf[20..]), &src.into(), &dst.into(), caps);
            buf
        };
        let full = emit(&ChecksumCapabilities::default());
        let mut offloaded = emit(&no_tcp_checksum());
        seed_tcp_checksum(&mut offloaded);
        assert_ne!(offloaded, full, "only seeded");
        complete_tcp_checksum(&mut offloaded);
        assert_eq!(offloaded, full);
    }

    #[test]
    fn ipv6_segments_are_seeded_too() {
        let repr = tcp(b"hello");
        let (src, dst) = (Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), Ipv6Address::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
        let ip = Ipv6Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: repr.buffer_len(),
            hop_limit: 64,
        };
        let emit = |caps: &ChecksumCapabilities| {
            let mut buf = vec![0; ip.buffer_len() + repr.buffer_len()];
            ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[..]));
            repr.emit(&mut TcpPacket::new_unchecked(&mut buf[40..]), &src.into(), &dst.into(), caps);
            buf
        };
        let full = emit(&ChecksumCapabilities::default());
        let mut offloaded = emit(&no_tcp_checksum());
        seed_tcp_checksum(&mut offloaded);
        complete_tcp_checksum(&mut offloaded);
        assert_eq!(offloaded, full);
    }

    #[test]
    fn other_packets_are_left_alone() {
        let mut udp =
            vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2, 0, 8, 0xab, 0xcd];
        let before = udp.clone();
        seed_tcp_checksum(&mut udp);
        assert_eq!(udp, before);
        seed_tcp_checksum(&mut []);
    }
}
