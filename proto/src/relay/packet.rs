//! The few facts about an IP packet the relay needs before it decides where the packet goes.

use std::net::IpAddr;

use etherparse::{IpNumber, IpSlice};

/// Transport protocols the relay carries as whole packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DatagramProto {
    Udp,
    Icmp,
}

/// A UDP or ICMP packet, with the endpoints that pick its session and its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatagramInfo {
    pub proto: DatagramProto,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// UDP ports; zero for ICMP.
    pub src_port: u16,
    pub dst_port: u16,
}

/// Parses `packet` as UDP or ICMP over IPv4/IPv6; None for anything else (including malformed packets).
pub fn datagram_info(packet: &[u8]) -> Option<DatagramInfo> {
    let ip = IpSlice::from_slice(packet).ok()?;
    if ip.is_fragmenting_payload() {
        // A fragment's ports are not in every piece; fragments are rare through a 64 KiB MTU TUN.
        return None;
    }
    let (src, dst): (IpAddr, IpAddr) = match &ip {
        IpSlice::Ipv4(v4) => (v4.header().source_addr().into(), v4.header().destination_addr().into()),
        IpSlice::Ipv6(v6) => (v6.header().source_addr().into(), v6.header().destination_addr().into()),
    };
    let payload = ip.payload();
    let (proto, src_port, dst_port) = match payload.ip_number {
        IpNumber::UDP => {
            let udp = etherparse::UdpHeaderSlice::from_slice(payload.payload).ok()?;
            (DatagramProto::Udp, udp.source_port(), udp.destination_port())
        }
        IpNumber::ICMP | IpNumber::IPV6_ICMP => (DatagramProto::Icmp, 0, 0),
        _ => return None,
    };
    Some(DatagramInfo { proto, src, dst, src_port, dst_port })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn udp_v4_endpoints_are_read() {
        let mut pkt = Vec::new();
        PacketBuilder::ipv4([100, 64, 0, 2], [100, 64, 0, 1], 64).udp(5000, 53).write(&mut pkt, b"query").unwrap();
        let info = datagram_info(&pkt).unwrap();
        assert_eq!(info.proto, DatagramProto::Udp);
        assert_eq!((info.src_port, info.dst_port), (5000, 53));
        assert_eq!(info.dst, "100.64.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn tcp_and_garbage_are_not_datagrams() {
        let mut pkt = Vec::new();
        PacketBuilder::ipv4([100, 64, 0, 2], [100, 64, 0, 1], 64).tcp(1, 2, 3, 4).write(&mut pkt, b"").unwrap();
        assert_eq!(datagram_info(&pkt), None);
        assert_eq!(datagram_info(&[0x45, 1, 2]), None);
        assert_eq!(datagram_info(&[]), None);
    }
}
