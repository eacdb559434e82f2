//! The bodies of the cargo-fuzz targets `stack_packets` and `virtio_header` (fuzz/fuzz_targets/), as
//! functions of the input bytes, so that the fuzzer and the replay test (tests/fuzz_replay.rs, which
//! runs the committed corpus and every crash found) check the very same things. Each panics when an
//! invariant breaks; that panic is the finding.
//!
//! Not part of the crate's API: built only with the `fuzzing` feature.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use smoltcp::wire::{Ipv4Packet, Ipv6Packet};

use crate::vnet;
use crate::{FlowEvent, FlowId, Ingress, Instant, Stack, StackConfig};

/// Flows the stack under test may hold: small, so that the limit is reached.
const MAX_FLOWS: usize = 4;
/// Its MTU: every packet it emits must fit.
const MTU: usize = 1500;
/// Socket buffers, small so that windows fill and close.
const BUFFER: usize = 4096;

/// A few addresses to choose from, so that segments meet the flows they belong to.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    A,
    B,
    C6,
    D6,
    Any(u32),
}

impl Addr {
    fn ip(self, v6: bool) -> IpAddr {
        match (self, v6) {
            (Addr::A, false) => Ipv4Addr::new(100, 64, 0, 2).into(),
            (Addr::B, false) => Ipv4Addr::new(198, 18, 0, 1).into(),
            (Addr::C6 | Addr::D6, false) => Ipv4Addr::new(100, 64, 0, 1).into(),
            (Addr::Any(v), false) => Ipv4Addr::from(v).into(),
            (Addr::A | Addr::C6, true) => "fd00::2".parse::<Ipv6Addr>().expect("literal").into(),
            (Addr::B | Addr::D6, true) => "fd00::1".parse::<Ipv6Addr>().expect("literal").into(),
            (Addr::Any(v), true) => Ipv6Addr::from(u128::from(v) << 64 | u128::from(v)).into(),
        }
    }
}

/// A port as the fuzzers pick it: one the harness listens on, or any (shared with
/// `roamtun_proto::fuzzing`).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Port {
    P80,
    P5000,
    Any(u16),
}

impl Port {
    pub fn get(self) -> u16 {
        match self {
            Port::P80 => 80,
            Port::P5000 => 5000,
            Port::Any(p) => p,
        }
    }
}

/// A TCP segment, either fresh or answering the last one the stack sent (so handshakes complete).
#[derive(Arbitrary, Debug)]
struct Segment {
    v6: bool,
    src: (Addr, Port),
    dst: (Addr, Port),
    /// Swap the endpoints of the stack's last packet and acknowledge it: a peer that plays along.
    reply: bool,
    seq: u32,
    ack: u32,
    /// FIN, SYN, RST, PSH, ACK, URG as in the TCP header.
    flags: u8,
    window: u16,
    /// TCP options, cut to a multiple of 4 and at most 40 bytes.
    options: Vec<u8>,
    payload: u16,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Any bytes, as if read from the TUN.
    Raw(Vec<u8>),
    Segment(Segment),
    Accept(u8),
    Refuse(u8),
    Connect {
        v6: bool,
        src: (Addr, Port),
        dst: (Addr, Port),
    },
    Send {
        flow: u8,
        len: u16,
    },
    Recv {
        flow: u8,
        max: u16,
    },
    Close(u8),
    Abort(u8),
    Release(u8),
    /// Milliseconds pass and the stack runs its timers.
    Advance(u16),
}

/// The stack fed arbitrary IP packets (raw, or TCP segments built to meet its flows) and arbitrary
/// calls from its user. Checks: no panic; never more flows than the limit; every packet it emits is
/// a well-formed IPv4/IPv6 packet within the MTU; flow ids are never reused and each flow is
/// reported closed at most once; `recv` hands out at most what was asked for.
pub fn stack_packets(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let config = StackConfig {
        mtu: MTU,
        tcp_rx_buffer: BUFFER,
        tcp_tx_buffer: BUFFER,
        max_flows: MAX_FLOWS,
        random_seed: 7,
        tcp_checksum_offload: u.arbitrary().unwrap_or(false),
        ..StackConfig::default()
    };
    let mut now = Instant::from_millis(1_000_000);
    let mut stack = Stack::new(config, now);
    let mut flows: Vec<FlowId> = Vec::new();
    let mut seen: BTreeSet<FlowId> = BTreeSet::new();
    let mut closed: BTreeMap<FlowId, bool> = BTreeMap::new();
    let mut last_sent: Option<Vec<u8>> = None;
    let pick = |flows: &[FlowId], i: u8| (!flows.is_empty()).then(|| flows[usize::from(i) % flows.len()]);

    // Exhausted input makes `arbitrary` produce default values forever: stop at its end.
    while !u.is_empty() {
        let Ok(op) = u.arbitrary::<Op>() else { break };
        if trace() {
            eprintln!("{op:?}");
        }
        match op {
            Op::Raw(bytes) => {
                let r = stack.handle_packet(bytes, now);
                note_ingress(r, &mut flows, &mut seen);
            }
            Op::Segment(seg) => {
                let packet = build_segment(&seg, last_sent.as_deref());
                let r = stack.handle_packet(packet, now);
                note_ingress(r, &mut flows, &mut seen);
            }
            Op::Accept(i) => {
                if let Some(f) = pick(&flows, i) {
                    let _ = stack.accept(f);
                }
            }
            Op::Refuse(i) => {
                if let Some(f) = pick(&flows, i) {
                    let _ = stack.refuse(f, now);
                }
            }
            Op::Connect { v6, src, dst } => {
                let src = SocketAddr::new(src.0.ip(v6), src.1.get());
                let dst = SocketAddr::new(dst.0.ip(v6), dst.1.get());
                if let Ok(f) = stack.connect(src, dst) {
                    assert!(seen.insert(f), "flow id {f:?} reused");
                    flows.push(f);
                }
            }
            Op::Send { flow, len } => {
                if let Some(f) = pick(&flows, flow) {
                    let data = vec![0x5a; usize::from(len)];
                    let capacity = stack.send_capacity(f);
                    let n = stack.send(f, &data);
                    assert!(n <= data.len() && n <= capacity, "sent {n} of {} with room for {capacity}", data.len());
                }
            }
            Op::Recv { flow, max } => {
                if let Some(f) = pick(&flows, flow) {
                    let mut got = 0;
                    let n = stack.recv(f, usize::from(max), |chunk| got += chunk.len());
                    assert_eq!(n, got);
                    assert!(n <= usize::from(max), "recv gave {n} bytes, {max} asked for");
                }
            }
            Op::Close(i) => {
                if let Some(f) = pick(&flows, i) {
                    stack.close(f);
                }
            }
            Op::Abort(i) => {
                if let Some(f) = pick(&flows, i) {
                    let _ = stack.abort(f, now);
                }
            }
            Op::Release(i) => {
                if let Some(f) = pick(&flows, i) {
                    stack.release(f);
                    flows.retain(|x| *x != f);
                }
            }
            Op::Advance(ms) => {
                now += crate::Duration::from_millis(u64::from(ms));
                stack.poll(now);
            }
        }
        assert!(stack.flow_count() <= MAX_FLOWS, "{} flows, limit {MAX_FLOWS}", stack.flow_count());
        while let Some(packet) = stack.pop_transmit() {
            check_emitted(&packet);
            last_sent = Some(packet);
        }
        while let Some(event) = stack.pop_event() {
            match event {
                FlowEvent::Connected(f) => assert!(seen.contains(&f), "event for unknown flow {f:?}"),
                FlowEvent::Closed { flow, reset } => {
                    assert!(seen.contains(&flow), "event for unknown flow {flow:?}");
                    assert!(closed.insert(flow, reset).is_none(), "flow {flow:?} reported closed twice");
                }
            }
        }
    }
}

fn note_ingress(r: Ingress, flows: &mut Vec<FlowId>, seen: &mut BTreeSet<FlowId>) {
    if let Ingress::NewFlow { flow, .. } = r {
        assert!(seen.insert(flow), "flow id {flow:?} reused");
        flows.push(flow);
    }
}

/// A packet the stack emits goes to the kernel as it is: it must be a whole, well-formed IP packet.
fn check_emitted(packet: &[u8]) {
    assert!(packet.len() <= MTU, "emitted {} bytes, MTU {MTU}", packet.len());
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let ip = Ipv4Packet::new_checked(packet).expect("emitted IPv4 packet parses");
            assert_eq!(usize::from(ip.total_len()), packet.len(), "IPv4 total length");
        }
        Some(6) => {
            let ip = Ipv6Packet::new_checked(packet).expect("emitted IPv6 packet parses");
            assert_eq!(40 + usize::from(ip.payload_len()), packet.len(), "IPv6 payload length");
        }
        _ => panic!("emitted a packet that is neither IPv4 nor IPv6: {packet:02x?}"),
    }
}

/// The (source, destination, sequence, acknowledgement, payload length, flags) of a TCP packet.
fn tcp_of(packet: &[u8]) -> Option<(SocketAddr, SocketAddr, u32, u32, usize, u8)> {
    let (src, dst, tcp): (IpAddr, IpAddr, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let hl = usize::from(packet[0] & 0x0f) * 4;
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (src.into(), dst.into(), packet.get(hl..)?)
        }
        6 => {
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (src.into(), dst.into(), packet.get(40..)?)
        }
        _ => return None,
    };
    let header = tcp.get(..20)?;
    let port = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
    let word = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let data_offset = usize::from(header[12] >> 4) * 4;
    let len = tcp.len().checked_sub(data_offset)?;
    Some((SocketAddr::new(src, port(0)), SocketAddr::new(dst, port(2)), word(4), word(8), len, header[13]))
}

fn build_segment(seg: &Segment, last: Option<&[u8]>) -> Vec<u8> {
    let fresh = (
        SocketAddr::new(seg.src.0.ip(seg.v6), seg.src.1.get()),
        SocketAddr::new(seg.dst.0.ip(seg.v6), seg.dst.1.get()),
        seg.seq,
        seg.ack,
    );
    let (src, dst, seq, ack) = match last.and_then(tcp_of).filter(|_| seg.reply) {
        Some((their_src, their_dst, their_seq, _their_ack, len, flags)) => {
            // SYN and FIN take a sequence number each.
            let extra = u32::from(flags & 0x02 != 0) + u32::from(flags & 0x01 != 0);
            (their_dst, their_src, seg.seq, their_seq.wrapping_add(len as u32).wrapping_add(extra))
        }
        None => fresh,
    };
    let options_len = seg.options.len().min(40) / 4 * 4;
    let payload = vec![0xa5; usize::from(seg.payload) % 2048];
    let mut tcp = Vec::with_capacity(20 + options_len + payload.len());
    tcp.extend_from_slice(&src.port().to_be_bytes());
    tcp.extend_from_slice(&dst.port().to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push((((20 + options_len) / 4) as u8) << 4);
    tcp.push(seg.flags & 0x3f);
    tcp.extend_from_slice(&seg.window.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]); // checksum (not verified on input), urgent pointer
    tcp.extend_from_slice(&seg.options[..options_len]);
    tcp.extend_from_slice(&payload);
    ip_packet(src.ip(), dst.ip(), 6, &tcp)
}

/// An IP packet around `payload` (IPv4 if both addresses are IPv4, else IPv6 with mapped addresses).
fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(40 + payload.len());
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0x40, 0, 64, proto, 0, 0]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            p.extend_from_slice(&[0x60, 0, 0, 0]);
            p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            p.extend_from_slice(&[proto, 64]);
            p.extend_from_slice(&v6(s).octets());
            p.extend_from_slice(&v6(d).octets());
        }
    }
    p.extend_from_slice(payload);
    p
}

/// The virtio-net header code fed a header and a packet as one read from the TUN. Checks: no panic;
/// a refused read changes nothing; a UDP checksum left to us (`NEEDS_CSUM`, as the kernel hands it
/// over: the field seeded with the pseudo-header sum) comes out complete and correct; the header
/// written in front of a well-formed TCP packet points inside it and is accepted back unchanged.
pub fn virtio_header(data: &[u8]) {
    // The read as it arrives: header, then packet.
    if let Ok(len) = vnet::packet_len(data.len()) {
        let header: [u8; vnet::HEADER_LEN] = data[..vnet::HEADER_LEN].try_into().expect("length checked");
        let mut packet = data[vnet::HEADER_LEN..].to_vec();
        assert_eq!(packet.len(), len);
        let before = packet.clone();
        if vnet::finish_rx(&header, &mut packet).is_err() {
            assert_eq!(packet, before, "a refused packet was modified");
        }
        let tx = vnet::tx_header(&packet);
        check_tx_header(&tx, &packet);
    } else {
        assert!(data.len() < vnet::HEADER_LEN);
    }

    coalesce_writes(data);

    // A UDP packet with its checksum left to us, built from the same bytes.
    let mut u = Unstructured::new(data);
    let Ok((v6, payload)) = <(bool, &[u8])>::arbitrary(&mut u) else { return };
    let (src, dst): (IpAddr, IpAddr) = if v6 {
        (Ipv6Addr::from(0xfd00_u128 << 112 | 2).into(), Ipv6Addr::from(0xfd00_u128 << 112 | 1).into())
    } else {
        (Ipv4Addr::new(100, 64, 0, 2).into(), Ipv4Addr::new(100, 64, 0, 1).into())
    };
    let udp_len = 8 + payload.len();
    if udp_len > usize::from(u16::MAX) - 40 {
        return;
    }
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&5000u16.to_be_bytes());
    udp.extend_from_slice(&53u16.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&pseudo_header_sum(src, dst, 17, udp_len).to_be_bytes());
    udp.extend_from_slice(payload);
    let mut packet = ip_packet(src, dst, 17, &udp);
    let start = packet.len() - udp_len;
    let mut header = [0u8; vnet::HEADER_LEN];
    header[0] = 1; // VIRTIO_NET_HDR_F_NEEDS_CSUM
    header[6..8].copy_from_slice(&(start as u16).to_ne_bytes());
    header[8..10].copy_from_slice(&6u16.to_ne_bytes());
    vnet::finish_rx(&header, &mut packet).expect("a UDP packet with its checksum left to us is accepted");
    let field = u16::from_be_bytes([packet[start + 6], packet[start + 7]]);
    assert_ne!(field, 0, "a computed UDP checksum of 0 goes out as 0xffff");
    // The receiver's check: pseudo-header plus the whole datagram (checksum included) sums to 0xffff.
    let total = fold(u64::from(pseudo_header_sum(src, dst, 17, udp_len)) + u64::from(sum(&packet[start..])));
    assert_eq!(total, 0xffff, "UDP checksum wrong after finish_rx: {packet:02x?}");
}

/// The same bytes as a batch of packets to write (each behind a one-byte length, taken from the
/// front of `data` again and again; an odd length wraps the body in a TCP segment of one of two
/// flows, at one of four sequence numbers, so that runs form), merged by `coalesce`. Checks: no
/// panic; every packet is either written or merged into one that is; no byte is lost or made up;
/// no super-segment is longer than an IP length can say.
fn coalesce_writes(data: &[u8]) {
    let mut batch = Vec::new();
    let mut rest = data;
    while let [len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(len);
        rest = next;
        if len % 2 == 1 {
            let flow = body.first().map_or(0, |b| b & 1);
            let seq = body.get(1).map_or(0, |b| u32::from(*b & 0x3) * 1000);
            let mut tcp = vec![0u8; 20];
            tcp[0..2].copy_from_slice(&(5000 + u16::from(flow)).to_be_bytes());
            tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
            tcp[4..8].copy_from_slice(&seq.to_be_bytes());
            tcp[12] = 5 << 4;
            tcp[13] = body.get(2).map_or(0x10, |b| b & 0x1f);
            tcp.extend_from_slice(body);
            batch.push(ip_packet(Addr::A.ip(false), Addr::B.ip(false), 6, &tcp));
        } else {
            batch.push(body.to_vec());
        }
    }
    let given: usize = batch.iter().map(Vec::len).sum();
    let (count, mut recycled, mut headers) = (batch.len(), 0, 0);
    let out = crate::coalesce::coalesce(batch, |spare| {
        recycled += 1;
        // Only TCP segments merge: their IP and TCP headers go, their payload stays.
        let ip_len = if spare[0] >> 4 == 6 { 40 } else { usize::from(spare[0] & 0x0f) * 4 };
        headers += ip_len + usize::from(spare[ip_len + 12] >> 4) * 4;
    });
    assert_eq!(out.len() + recycled, count, "a packet was neither written nor merged");
    let written: usize = out.iter().map(|w| w.packet.len()).sum();
    assert_eq!(written + headers, given, "bytes lost or made up");
    for w in &out {
        assert!(w.header[1] == 0 || w.packet.len() <= 65535, "super-segment too long: {}", w.packet.len());
    }
}

/// The header for a packet we write: for a well-formed TCP packet, the checksum position it names
/// lies inside the packet; otherwise it asks nothing of the kernel.
fn check_tx_header(tx: &[u8; vnet::HEADER_LEN], packet: &[u8]) {
    let field = |at: usize| usize::from(u16::from_ne_bytes([tx[at], tx[at + 1]]));
    if tx[0] == 0 {
        return;
    }
    let well_formed_tcp = match packet.first().map(|b| b >> 4) {
        Some(4) => Ipv4Packet::new_checked(packet)
            .is_ok_and(|ip| u8::from(ip.next_header()) == 6 && packet.len() >= usize::from(ip.header_len()) + 20),
        Some(6) => {
            Ipv6Packet::new_checked(packet).is_ok_and(|ip| u8::from(ip.next_header()) == 6 && packet.len() >= 60)
        }
        _ => false,
    };
    if well_formed_tcp {
        assert!(field(6) + field(8) + 2 <= packet.len(), "checksum position outside the packet: {tx:?}");
    }
}

fn sum(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        s += u64::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        s += u64::from(*last) << 8;
    }
    fold(s)
}

fn fold(mut s: u64) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// The pseudo-header sum, not complemented: what the kernel leaves in the checksum field.
fn pseudo_header_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u16 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&[0, proto]);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend_from_slice(&s.octets());
            bytes.extend_from_slice(&d.octets());
            bytes.extend_from_slice(&(len as u32).to_be_bytes());
            bytes.extend_from_slice(&[0, 0, 0, proto]);
        }
        _ => unreachable!("both addresses have the same family"),
    }
    sum(&bytes)
}

/// `FUZZ_TRACE=1`: print each operation as it is applied, to read a crash's story.
fn trace() -> bool {
    std::env::var_os("FUZZ_TRACE").is_some()
}
