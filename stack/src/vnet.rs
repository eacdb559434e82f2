//! The virtio-net header in front of every packet on a TUN opened with `IFF_VNET_HDR`, and the
//! offloads we use it for: checksums (`TUN_F_CSUM`) both ways, and TCP segmentation (`TUN_F_TSO4`,
//! `TUN_F_TSO6`, `TUN_F_TSO_ECN`) for what the kernel hands us.
//!
//! Without checksum offload, the kernel computes the TCP checksum of every segment it hands us,
//! smoltcp computes one for every segment it sends, and the kernel verifies that one again: three
//! passes over each byte for packets that never leave the machine. With it, TCP packets in both
//! directions carry only the pseudo-header sum and a header saying "checksum still to do"
//! (`NEEDS_CSUM`), which the kernel trusts for local delivery and completes itself (or lets the NIC
//! complete) when it forwards.
//!
//! Segmentation offload matters for traffic the kernel forwards into the TUN (a router's LAN hosts,
//! an exit's replies): it arrives as its links' MTU-sized segments, often merged by GRO, and without
//! TSO the kernel would split every merged packet again before the TUN. With it the TUN takes the
//! merged packet whole: one TCP segment of up to 64 KiB whose IP header counts all of it, which
//! smoltcp takes like any other segment. Apps on this machine already send 64 KiB segments over the
//! TUN's MTU either way. The other way, [`crate::coalesce`] merges smoltcp's segments into
//! super-segments of its own and frames them.
//!
//! Sans-IO: functions on byte slices; the daemon's `src/daemon/tun.rs` does the reads and writes. It
//! lives in this crate, beside the stack whose packets it frames, so that it can be fuzzed and tested
//! without the daemon.

/// Size of `struct virtio_net_hdr` (no `num_buffers`): the kernel's default for a TUN.
pub const HEADER_LEN: usize = 10;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only the
/// pseudo-header sum; the sum from `csum_start` to the end must still be added.
const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_F_DATA_VALID`: the kernel (or the NIC) has verified the checksum.
const F_DATA_VALID: u8 = 2;
/// `VIRTIO_NET_HDR_GSO_NONE`.
const GSO_NONE: u8 = 0;
/// Where the checksum sits inside a TCP header.
const TCP_CHECKSUM_OFFSET: u16 = 16;

/// Why a packet read from the TUN cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VnetError {
    #[error("read of {0} bytes is shorter than the virtio-net header")]
    Short(usize),
    #[error("the kernel sent a segmentation-offload packet (gso type {0}) we did not ask for")]
    Segmented(u8),
    #[error("checksum offsets {start}+{offset} lie outside the {len}-byte packet")]
    ChecksumOutside { start: usize, offset: usize, len: usize },
    #[error("TCP checksum of a {len}-byte packet is wrong")]
    BadTcpChecksum { len: usize },
}

/// The length of the IP packet in a read of `read` bytes (header and packet, see [`finish_rx`]).
pub fn packet_len(read: usize) -> Result<usize, VnetError> {
    read.checked_sub(HEADER_LEN).ok_or(VnetError::Short(read))
}

/// Makes a packet read from the TUN (`header`, then `packet`, read with one `readv`) ready for the
/// engine.
///
/// smoltcp does not verify TCP checksums (see `stack/src/device.rs`), so a TCP packet gets through
/// only if the kernel vouches for it: its checksum left to us (`NEEDS_CSUM`, what the kernel's own
/// TCP and GRO send, so unchanged since it was made or verified) or verified (`DATA_VALID`). Any
/// other TCP packet (forwarded with a checksum nobody checked, or one of the kernel's resets) is
/// verified here. A TCP super-segment (segmentation offload) stays whole. A UDP packet whose
/// checksum was left to us gets it completed here, since it is relayed as it is to the far TUN,
/// whose kernel checks it.
pub fn finish_rx(header: &[u8; HEADER_LEN], packet: &mut [u8]) -> Result<(), VnetError> {
    let field = |at: usize| usize::from(u16::from_ne_bytes([header[at], header[at + 1]]));
    let (flags, gso) = (header[0], header[1]);
    let tcp = tcp_header_start(packet).is_some();
    // We enable segmentation offload for TCP only; anything else segmented would need splitting.
    if gso != GSO_NONE && !tcp {
        return Err(VnetError::Segmented(gso));
    }
    if tcp && flags & (F_NEEDS_CSUM | F_DATA_VALID) == 0 && !crate::checksum::tcp_checksum_ok(packet) {
        return Err(VnetError::BadTcpChecksum { len: packet.len() });
    }
    if flags & F_NEEDS_CSUM != 0 && !tcp {
        let (start, offset) = (field(6), field(8));
        if start + offset + 2 > packet.len() {
            return Err(VnetError::ChecksumOutside { start, offset, len: packet.len() });
        }
        let mut sum = !ones_complement_sum(&packet[start..]);
        // UDP: a computed 0 is sent as 0xffff (0 means "no checksum").
        if sum == 0 && offset == 6 {
            sum = 0xffff;
        }
        packet[start + offset..start + offset + 2].copy_from_slice(&sum.to_be_bytes());
    }
    Ok(())
}

/// The header to write in front of `packet`, one segment (see [`crate::coalesce`] for merged ones).
/// TCP packets are smoltcp's, emitted with a seeded checksum (`StackConfig::tcp_checksum_offload`);
/// everything else (relayed UDP and ICMP) is complete already. The engine never relays TCP as a
/// datagram, so the two never mix.
pub fn tx_header(packet: &[u8]) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    if let Some(start) = tcp_header_start(packet) {
        header[0] = F_NEEDS_CSUM;
        header[1] = GSO_NONE;
        header[6..8].copy_from_slice(&start.to_ne_bytes());
        header[8..10].copy_from_slice(&TCP_CHECKSUM_OFFSET.to_ne_bytes());
    }
    header
}

/// Where the TCP header starts, if `packet` is IPv4 or IPv6 (no extension headers) carrying TCP.
fn tcp_header_start(packet: &[u8]) -> Option<u16> {
    match packet.first()? >> 4 {
        4 if packet.len() >= 20 && packet[9] == 6 => Some(u16::from(packet[0] & 0x0f) * 4),
        6 if packet.len() >= 40 && packet[6] == 6 => Some(40),
        _ => None,
    }
}

/// RFC 1071 sum of `data`, folded to 16 bits, not complemented.
pub(crate) fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        sum += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(u16::from_be_bytes([*last, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 UDP packet 100.64.0.2:5000 → 100.64.0.1:6000 with a full checksum.
    fn udp_packet(payload: &[u8]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv4([100, 64, 0, 2], [100, 64, 0, 1], 64).udp(5000, 6000);
        let mut out = Vec::new();
        builder.write(&mut out, payload).unwrap();
        out
    }

    /// An IPv4 or IPv6 TCP packet between virtual IPs with a full checksum.
    fn tcp_packet(v6: bool, payload: &[u8]) -> Vec<u8> {
        let builder = if v6 {
            let (a, b) = (
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            );
            etherparse::PacketBuilder::ipv6(a, b, 64)
        } else {
            etherparse::PacketBuilder::ipv4([198, 19, 50, 10], [100, 64, 0, 1], 64)
        };
        let mut out = Vec::new();
        builder.tcp(40000, 5201, 1, 65535).ack(7).write(&mut out, payload).unwrap();
        out
    }

    fn header(flags: u8, gso: u8, start: u16, offset: u16) -> [u8; HEADER_LEN] {
        let mut h = [flags, gso, 0, 0, 0, 0, 0, 0, 0, 0];
        h[6..8].copy_from_slice(&start.to_ne_bytes());
        h[8..10].copy_from_slice(&offset.to_ne_bytes());
        h
    }

    #[test]
    fn a_udp_checksum_left_to_us_is_completed() {
        let full = udp_packet(b"some datagram, odd length");
        // What the kernel hands over with checksum offload: the field holds the pseudo-header sum.
        let mut partial = full.clone();
        let pseudo =
            ones_complement_sum(&[&full[12..20], &[0, 17], &(full.len() as u16 - 20).to_be_bytes()[..]].concat());
        partial[26..28].copy_from_slice(&pseudo.to_be_bytes());
        finish_rx(&header(F_NEEDS_CSUM, GSO_NONE, 20, 6), &mut partial).unwrap();
        assert_eq!(partial, full);
    }

    #[test]
    fn complete_packets_pass_unchanged() {
        let full = udp_packet(b"x");
        let mut packet = full.clone();
        finish_rx(&header(0, GSO_NONE, 0, 0), &mut packet).unwrap();
        assert_eq!(packet, full);
    }

    #[test]
    fn bad_headers_are_refused_not_trusted() {
        assert_eq!(packet_len(4), Err(VnetError::Short(4)));
        assert_eq!(packet_len(HEADER_LEN + 20), Ok(20));
        let mut full = udp_packet(b"x");
        assert_eq!(finish_rx(&header(0, 5, 0, 0), &mut full), Err(VnetError::Segmented(5)));
        let r = finish_rx(&header(F_NEEDS_CSUM, 0, 20, 200), &mut full);
        assert!(matches!(r, Err(VnetError::ChecksumOutside { .. })));
    }

    #[test]
    fn a_tcp_packet_the_kernel_did_not_vouch_for_is_verified() {
        for v6 in [false, true] {
            let good = tcp_packet(v6, b"forwarded from a LAN host, checksum never checked");
            let mut packet = good.clone();
            finish_rx(&header(0, GSO_NONE, 0, 0), &mut packet).unwrap();
            assert_eq!(packet, good, "a right checksum passes unchanged");

            let mut corrupt = good.clone();
            *corrupt.last_mut().unwrap() ^= 0x40;
            let len = corrupt.len();
            assert_eq!(finish_rx(&header(0, GSO_NONE, 0, 0), &mut corrupt), Err(VnetError::BadTcpChecksum { len }));
            // Verified already (DATA_VALID), or left to us by the kernel's own TCP (NEEDS_CSUM):
            // trusted, not summed again.
            finish_rx(&header(F_DATA_VALID, GSO_NONE, 0, 0), &mut corrupt).unwrap();
            let start = if v6 { 40 } else { 20 };
            finish_rx(&header(F_NEEDS_CSUM, GSO_NONE, start, 16), &mut corrupt).unwrap();
        }
        // Too short for a TCP header after the IP one: refused, not read past the end.
        let mut stub = tcp_packet(false, b"")[..30].to_vec();
        stub[2..4].copy_from_slice(&30u16.to_be_bytes());
        assert_eq!(finish_rx(&header(0, GSO_NONE, 0, 0), &mut stub), Err(VnetError::BadTcpChecksum { len: 30 }));
    }

    #[test]
    fn a_tcp_super_segment_stays_whole() {
        // What TSO hands over for a GRO-merged forward: one packet of many segments' payload, its IP
        // length covering all of it, gso type TCPV4 (1) or TCPV6 (4), with the ECN bit (0x80) when
        // the flow uses ECN.
        for (v6, gso) in [(false, 1), (false, 0x81), (true, 4)] {
            let whole = tcp_packet(v6, &vec![0x5a; 60_000]);
            let mut packet = whole.clone();
            let start = if v6 { 40 } else { 20 };
            finish_rx(&header(F_NEEDS_CSUM, gso, start, 16), &mut packet).unwrap();
            assert_eq!(packet, whole);
        }
        // UDP segmentation (USO) is not enabled: such a packet is refused rather than misread.
        let mut udp = udp_packet(&[1; 3000]);
        assert_eq!(finish_rx(&header(F_NEEDS_CSUM, 5, 20, 6), &mut udp), Err(VnetError::Segmented(5)));
    }

    #[test]
    fn tcp_packets_go_out_with_the_checksum_left_to_the_kernel() {
        let mut tcp = vec![0u8; 60];
        tcp[0] = 0x45;
        tcp[9] = 6;
        assert_eq!(tx_header(&tcp), header(F_NEEDS_CSUM, GSO_NONE, 20, 16));
        let mut tcp6 = vec![0u8; 80];
        tcp6[0] = 0x60;
        tcp6[6] = 6;
        assert_eq!(tx_header(&tcp6), header(F_NEEDS_CSUM, GSO_NONE, 40, 16));
        assert_eq!(tx_header(&udp_packet(b"x")), [0; HEADER_LEN]);
        // A TCP packet read from the TUN keeps its partial checksum: smoltcp does not check it.
        let mut packet = tcp.clone();
        finish_rx(&header(F_NEEDS_CSUM, GSO_NONE, 20, 16), &mut packet).unwrap();
        assert_eq!(packet, tcp);
    }
}
