//! The local TCP end of roamtun: smoltcp on an in-memory packet queue.
//!
//! On the client this stack *terminates* every TCP connection an app opens through the TUN, whatever its
//! destination, so that during an uplink outage the app talks to a healthy local peer. On the server it
//! *originates* connections into the server TUN with the client's virtual IP as source, and terminates
//! connections that server apps open towards a client's virtual IP. Both directions are the same two
//! operations: [`Stack::handle_packet`] with a SYN creates a [`FlowId`] the caller must [`Stack::accept`]
//! or [`Stack::refuse`]; [`Stack::connect`] originates one.
//!
//! The stack is sans-IO: the caller feeds IP packets read from the TUN and drains the packets to write
//! back ([`Stack::pop_transmit`]); time comes in as a parameter and [`Stack::poll_at`] says when to call
//! [`Stack::poll`] again. It deliberately knows nothing of UDP or ICMP (relayed as whole packets by the
//! caller), of the relay protocol, or of uplinks. Beside it, [`vnet`] frames the packets for a TUN
//! opened with a virtio-net header, and [`coalesce`] merges a flow's segments into one write.

mod checksum;
pub mod coalesce;
mod device;
mod flow;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod vnet;

pub use flow::{FlowEvent, FlowId};
pub use smoltcp::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher};
use std::net::{IpAddr, SocketAddr};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpEndpoint, IpListenEndpoint, IpProtocol, Ipv4Address, Ipv4Packet, Ipv6Address,
    Ipv6Packet, TcpPacket,
};

use device::QueueDevice;
use flow::Flow;

/// Sizes of the stack; all are byte budgets, nothing grows past them.
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// MTU of the TUN device. The client terminates TCP locally, so this need not match any physical
    /// path: a large MTU (65535) lets the kernel hand us 64 KiB segments, the main lever for throughput.
    pub mtu: usize,
    /// Receive buffer of each TCP socket (bytes the app sent that we have not relayed yet): the window
    /// the app sees. When the relay cannot take more, this fills and the app's window closes.
    pub tcp_rx_buffer: usize,
    /// Transmit buffer of each TCP socket (bytes relayed to us that the app has not acknowledged yet).
    pub tcp_tx_buffer: usize,
    /// Most TCP flows at once; a SYN beyond that is answered with a reset.
    pub max_flows: usize,
    /// An originated connection whose handshake has not completed by then is given up
    /// ([`FlowEvent::Closed`] with `reset`), so an unreachable destination does not hold a flow forever.
    pub connect_timeout: Duration,
    /// Seed for initial sequence numbers and ports; tests pass a fixed one.
    pub random_seed: u64,
    /// Leave the TCP checksum of outgoing packets to the device (the TUN's checksum offload): the
    /// checksum field holds only the pseudo-header sum, as a NIC with checksum offload expects
    /// (Linux's CHECKSUM_PARTIAL), and whoever writes the packet must say so (virtio-net header
    /// `NEEDS_CSUM`, start at the TCP header, offset 16). Saves a pass over every byte sent, and the
    /// receiving kernel then skips its own verification pass too.
    pub tcp_checksum_offload: bool,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            mtu: 65535,
            tcp_rx_buffer: 256 * 1024,
            tcp_tx_buffer: 256 * 1024,
            max_flows: 4096,
            connect_timeout: Duration::from_secs(10),
            random_seed: 0x726f_616d_7475_6e00,
            tcp_checksum_offload: false,
        }
    }
}

/// What the caller must decide about after feeding a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// A TCP packet for an existing flow, or one the stack answered itself (e.g. a reset).
    Handled,
    /// A SYN for a new connection from `src` (the app) to `dst`. The SYN-ACK is held until
    /// [`Stack::accept`]; [`Stack::refuse`] answers with a reset, so the app sees "connection refused".
    NewFlow { flow: FlowId, src: SocketAddr, dst: SocketAddr },
    /// A SYN arrived but `max_flows` are open; the app was sent a reset.
    TooManyFlows,
    /// Not a TCP packet, or not a well-formed one; the caller may relay it as a datagram.
    NotTcp,
}

/// Errors of operations on a flow.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StackError {
    /// The flow id does not name an open flow (it finished or never existed).
    #[error("no such flow {0:?}")]
    NoSuchFlow(FlowId),
    /// smoltcp refused to start the connection (address families differ, port 0, …).
    #[error("cannot originate a TCP connection from {src} to {dst}: {reason}")]
    Connect { src: SocketAddr, dst: SocketAddr, reason: String },
    /// `max_flows` are already open.
    #[error("too many TCP flows (limit {0})")]
    TooManyFlows(usize),
}

/// smoltcp on a packet queue, with the bookkeeping that maps sockets to flows.
pub struct Stack {
    config: StackConfig,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    /// A fixed hasher: the stack numbers the flows itself, so nobody can aim at a bucket, and the
    /// order `collect_events` reports state changes in is the same in every run of the same input.
    flows: HashMap<FlowId, Flow, BuildHasherDefault<DefaultHasher>>,
    /// (local endpoint as the stack sees it, remote endpoint) → flow, to recognise a retransmitted SYN.
    by_tuple: HashMap<(SocketAddr, SocketAddr), FlowId>,
    next_flow: u64,
    events: VecDeque<FlowEvent>,
}

impl Stack {
    pub fn new(config: StackConfig, now: Instant) -> Self {
        let mut device = QueueDevice::new(config.mtu, config.tcp_checksum_offload);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = config.random_seed;
        let mut iface = Interface::new(iface_config, &mut device, now);
        // Accept packets for any destination: every address is "on link" (a /0 prefix) and AnyIP is on.
        iface.set_any_ip(true);
        iface.update_ip_addrs(|addrs| {
            // Cannot fail: the vector holds two addresses (IFACE_MAX_ADDR_COUNT) and starts empty.
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::new(0, 0, 0, 1)), 0))
                .expect("room for the IPv4 catch-all prefix");
            addrs
                .push(IpCidr::new(IpAddress::Ipv6(Ipv6Address::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)), 0))
                .expect("room for the IPv6 catch-all prefix");
        });
        Stack {
            config,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            flows: HashMap::default(),
            by_tuple: HashMap::new(),
            next_flow: 1,
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &StackConfig {
        &self.config
    }

    /// Number of open flows (any state but finished).
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Feeds one IP packet read from the TUN. TCP packets are processed at once, so that a SYN lands in
    /// the socket created for it; the packets to send back wait in [`Stack::pop_transmit`].
    pub fn handle_packet(&mut self, packet: Vec<u8>, now: Instant) -> Ingress {
        let Some(seg) = parse_tcp(&packet) else {
            return Ingress::NotTcp;
        };
        let mut result = Ingress::Handled;
        if seg.syn && !seg.ack && !self.by_tuple.contains_key(&(seg.dst, seg.src)) {
            if self.flows.len() >= self.config.max_flows {
                // Without a listening socket smoltcp answers the SYN with a reset.
                result = Ingress::TooManyFlows;
            } else {
                let flow = self.listen_for(seg.dst, seg.src);
                result = Ingress::NewFlow { flow, src: seg.src, dst: seg.dst };
            }
        }
        if seg.fin && seg.payload_len > 0 {
            let (data, fin) = split_fin(packet, &seg);
            self.device.push_rx(data);
            self.device.push_rx(fin);
        } else {
            self.device.push_rx(packet);
        }
        while self.device.has_rx() {
            self.iface.poll_ingress_single(now, &mut self.device, &mut self.sockets);
        }
        if seg.rst {
            self.keep_listener_from_reviving(seg.dst, seg.src);
        }
        if let Ingress::NewFlow { flow, .. } = result {
            // The SYN must have landed in the socket made for it: only that one listens on (dst, src).
            let handle = self.flows[&flow].handle;
            let socket = self.sockets.get::<tcp::Socket>(handle);
            if socket.state() != tcp::State::SynReceived {
                tracing::debug!(?flow, state = %socket.state(), "SYN was not accepted by its socket");
                self.remove_flow(flow);
                return Ingress::Handled;
            }
        }
        result
    }

    /// smoltcp turns a socket in SYN-RECEIVED that gets a reset back into a listener, which would then
    /// take the next SYN for the same endpoint from another app and mix two connections in one flow.
    /// Our listeners are single-use: such a socket is closed instead (the flow ends with a reset).
    fn keep_listener_from_reviving(&mut self, local: SocketAddr, remote: SocketAddr) {
        let Some(flow) = self.by_tuple.get(&(local, remote)).and_then(|id| self.flows.get(id)) else { return };
        let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
        if socket.state() == tcp::State::Listen {
            socket.abort();
        }
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0; self.config.tcp_rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; self.config.tcp_tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        // We relay whatever the app wrote at once; coalescing belongs to the app's own stack.
        socket.set_nagle_enabled(false);
        // An ACK costs one TUN write per (large) segment; delaying it only adds latency.
        socket.set_ack_delay(None);
        socket
    }

    fn listen_for(&mut self, local: SocketAddr, remote: SocketAddr) -> FlowId {
        let mut socket = self.new_socket();
        socket.pause_synack(true);
        let endpoint = IpListenEndpoint { addr: Some(local.ip().into()), port: local.port() };
        // Cannot fail: the port of a parsed SYN is checked non-zero in parse_tcp and the socket is new.
        socket.listen(endpoint).expect("fresh socket listens on a non-zero port");
        let handle = self.sockets.add(socket);
        self.insert_flow(handle, local, remote, false)
    }

    fn insert_flow(&mut self, handle: SocketHandle, local: SocketAddr, remote: SocketAddr, originated: bool) -> FlowId {
        let id = FlowId(self.next_flow);
        self.next_flow += 1;
        self.flows.insert(id, Flow::new(handle, local, remote, originated));
        self.by_tuple.insert((local, remote), id);
        id
    }

    fn remove_flow(&mut self, id: FlowId) {
        if let Some(flow) = self.flows.remove(&id) {
            self.by_tuple.remove(&(flow.local, flow.remote));
            self.sockets.remove(flow.handle);
        }
    }

    /// Lets the held SYN-ACK go: the far end accepted the connection.
    pub fn accept(&mut self, id: FlowId) -> Result<(), StackError> {
        let flow = self.flows.get(&id).ok_or(StackError::NoSuchFlow(id))?;
        self.sockets.get_mut::<tcp::Socket>(flow.handle).pause_synack(false);
        Ok(())
    }

    /// Answers the held SYN with a reset (the app sees "connection refused") and forgets the flow.
    pub fn refuse(&mut self, id: FlowId, now: Instant) -> Result<(), StackError> {
        self.abort(id, now)
    }

    /// Opens a connection from `src` (any address: the stack does not own addresses) to `dst`.
    /// [`FlowEvent::Connected`] or [`FlowEvent::Closed`] follows.
    pub fn connect(&mut self, src: SocketAddr, dst: SocketAddr) -> Result<FlowId, StackError> {
        if self.flows.len() >= self.config.max_flows {
            return Err(StackError::TooManyFlows(self.config.max_flows));
        }
        if self.by_tuple.contains_key(&(src, dst)) {
            return Err(StackError::Connect { src, dst, reason: "a flow with these endpoints exists".into() });
        }
        let mut socket = self.new_socket();
        // Only for the handshake: once connected, an idle app connection must not time out here.
        socket.set_timeout(Some(self.config.connect_timeout));
        let local = IpListenEndpoint { addr: Some(src.ip().into()), port: src.port() };
        socket.connect(self.iface.context(), IpEndpoint::from(dst), local).map_err(|e| StackError::Connect {
            src,
            dst,
            reason: e.to_string(),
        })?;
        let handle = self.sockets.add(socket);
        Ok(self.insert_flow(handle, src, dst, true))
    }

    /// Runs timers and sends what the sockets have queued, then reports flow state changes.
    pub fn poll(&mut self, now: Instant) {
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        if self.collect_events() {
            // A FIN that waited for the handshake.
            self.iface.poll_egress(now, &mut self.device, &mut self.sockets);
        }
    }

    /// When [`Stack::poll`] must run next at the latest (None: only on new input).
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        self.iface.poll_at(now, &self.sockets)
    }

    /// The next IP packet to write to the TUN.
    pub fn pop_transmit(&mut self) -> Option<Vec<u8>> {
        self.device.pop_tx()
    }

    /// A buffer of `len` bytes to read the next packet into, recycled from a packet the stack has
    /// consumed when there is one, so that feeding a large packet costs neither a copy nor an allocation.
    pub fn read_buffer(&mut self, len: usize) -> Vec<u8> {
        self.device.read_buffer(len)
    }

    /// Gives back the buffer of a packet from [`Stack::pop_transmit`] once it is written, for the next
    /// packet the stack emits.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.device.recycle(buf);
    }

    /// The next flow state change since the last call.
    pub fn pop_event(&mut self) -> Option<FlowEvent> {
        self.events.pop_front()
    }

    /// Returns whether a deferred FIN was released ([`Stack::close`]).
    fn collect_events(&mut self) -> bool {
        let before = self.events.len();
        let mut closed = false;
        for (&id, flow) in self.flows.iter_mut() {
            let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
            flow.observe(id, socket, &mut self.events);
            if flow.close_deferred && flow.established() {
                flow.close_deferred = false;
                socket.close();
                closed = true;
            }
        }
        for event in self.events.range(before..) {
            if let FlowEvent::Connected(id) = event {
                let handle = self.flows[id].handle;
                self.sockets.get_mut::<tcp::Socket>(handle).set_timeout(None);
            }
        }
        closed
    }

    /// Forgets a flow after [`FlowEvent::Closed`], once the caller took what it wanted from it.
    pub fn release(&mut self, id: FlowId) {
        self.remove_flow(id);
    }

    /// Bytes the app sent that wait to be relayed.
    pub fn recv_queue(&self, id: FlowId) -> usize {
        self.flows.get(&id).map_or(0, |f| self.sockets.get::<tcp::Socket>(f.handle).recv_queue())
    }

    /// Takes up to `max` bytes the app sent, calling `f` with contiguous chunks (at most two).
    /// Returns the number of bytes taken; the app's window opens by as much at the next poll.
    pub fn recv(&mut self, id: FlowId, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let Some(flow) = self.flows.get(&id) else { return 0 };
        let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
        let mut taken = 0;
        while taken < max && socket.can_recv() {
            let n = socket
                .recv(|buf| {
                    let n = buf.len().min(max - taken);
                    f(&buf[..n]);
                    (n, n)
                })
                .unwrap_or(0);
            if n == 0 {
                break;
            }
            taken += n;
        }
        taken
    }

    /// Room in the socket's send buffer: how many relayed bytes [`Stack::send`] would take now.
    pub fn send_capacity(&self, id: FlowId) -> usize {
        self.flows.get(&id).map_or(0, |f| {
            let s = self.sockets.get::<tcp::Socket>(f.handle);
            if s.may_send() {
                s.send_capacity() - s.send_queue()
            } else {
                0
            }
        })
    }

    /// Queues relayed bytes towards the app; returns how many were taken (less than `data.len()` when
    /// the app is slow: the caller keeps the rest and stops granting credit).
    pub fn send(&mut self, id: FlowId, data: &[u8]) -> usize {
        let Some(flow) = self.flows.get(&id) else { return 0 };
        self.sockets.get_mut::<tcp::Socket>(flow.handle).send_slice(data).unwrap_or(0)
    }

    /// Sends FIN to the app once every queued byte is out (the far end closed its sending side).
    pub fn close(&mut self, id: FlowId) {
        let Some(flow) = self.flows.get_mut(&id) else { return };
        let socket = self.sockets.get_mut::<tcp::Socket>(flow.handle);
        if matches!(socket.state(), tcp::State::Listen | tcp::State::SynSent | tcp::State::SynReceived) {
            // smoltcp's close() before the handshake ends would abort a connect, and in SYN-RECEIVED
            // it takes the app's ACK of our SYN for the ACK of a FIN it never sent: the app would
            // wait for that FIN forever. It goes once the flow is established.
            flow.close_deferred = true;
        } else {
            socket.close();
        }
    }

    /// Resets the connection towards the app and forgets the flow at once.
    pub fn abort(&mut self, id: FlowId, now: Instant) -> Result<(), StackError> {
        let flow = self.flows.get(&id).ok_or(StackError::NoSuchFlow(id))?;
        self.sockets.get_mut::<tcp::Socket>(flow.handle).abort();
        // Send the RST now, while the socket still exists.
        self.iface.poll_egress(now, &mut self.device, &mut self.sockets);
        self.remove_flow(id);
        Ok(())
    }

    /// Whether the app closed its sending side and every byte it sent has been taken by [`Stack::recv`].
    pub fn app_finished_sending(&self, id: FlowId) -> bool {
        // The flow's own record, not `may_recv`: after a reset the socket cannot receive either, but the
        // app did not finish, it aborted.
        self.flows.get(&id).is_some_and(|f| f.app_fin() && self.sockets.get::<tcp::Socket>(f.handle).recv_queue() == 0)
    }
}

/// The fields of a TCP segment that the stack needs before smoltcp sees it.
struct TcpSeg {
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    rst: bool,
    fin: bool,
    /// Where the TCP header starts, how long it is, and how long the segment's payload is.
    tcp_offset: usize,
    tcp_header_len: usize,
    payload_len: usize,
}

fn parse_tcp(packet: &[u8]) -> Option<TcpSeg> {
    let (src_ip, dst_ip, tcp_offset, payload): (IpAddr, IpAddr, usize, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.more_frags() || ip.frag_offset() != 0 {
                return None;
            }
            let hl = usize::from(ip.header_len());
            let total = usize::from(ip.total_len());
            (ip.src_addr().into(), ip.dst_addr().into(), hl, packet.get(hl..total)?)
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let end = 40 + usize::from(ip.payload_len());
            (ip.src_addr().into(), ip.dst_addr().into(), 40, packet.get(40..end)?)
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    if tcp.src_port() == 0 || tcp.dst_port() == 0 {
        return None;
    }
    Some(TcpSeg {
        src: SocketAddr::new(src_ip, tcp.src_port()),
        dst: SocketAddr::new(dst_ip, tcp.dst_port()),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        fin: tcp.fin(),
        tcp_offset,
        tcp_header_len: usize::from(tcp.header_len()),
        payload_len: payload.len() - usize::from(tcp.header_len()),
    })
}

/// Splits a segment carrying data and FIN into the data alone and a bare FIN right after it.
///
/// smoltcp 0.14 cuts a segment that ends past its receive window to the window, yet still acts on its
/// FIN: the cut bytes are lost and the stream ends early. That happens here: with window scaling the
/// right edge smoltcp advertises can move back by a few bytes, and the app's kernel may already have
/// sent up to the old edge. Split, the FIN of a cut segment lands after a hole, which smoltcp ignores
/// until the kernel resends the missing bytes with their FIN. smoltcp does not verify checksums on
/// this device (see `device.rs`), so the rewritten headers need none.
fn split_fin(packet: Vec<u8>, seg: &TcpSeg) -> (Vec<u8>, Vec<u8>) {
    let mut data = packet;
    let header_end = seg.tcp_offset + seg.tcp_header_len;
    let mut fin = data[..header_end].to_vec();
    // `parse_tcp` checked both headers, so the unchecked views below stay in bounds.
    TcpPacket::new_unchecked(&mut data[seg.tcp_offset..]).set_fin(false);
    {
        let mut tcp = TcpPacket::new_unchecked(&mut fin[seg.tcp_offset..]);
        let seq = tcp.seq_number() + seg.payload_len;
        tcp.set_seq_number(seq);
    }
    let header_len = u16::try_from(header_end).expect("a TCP/IP header is shorter than 64 KiB");
    if seg.src.is_ipv4() {
        Ipv4Packet::new_unchecked(&mut fin[..]).set_total_len(header_len);
    } else {
        Ipv6Packet::new_unchecked(&mut fin[..]).set_payload_len(header_len - 40);
    }
    (data, fin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{Ipv4Repr, TcpControl, TcpRepr, TcpSeqNumber};

    fn segment(payload: &[u8], control: TcpControl) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: 40000,
            dst_port: 80,
            control,
            seq_number: TcpSeqNumber(1000),
            ack_number: Some(TcpSeqNumber(5)),
            window_len: 1024,
            window_scale: None,
            max_seg_size: None,
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload,
        };
        let src = Ipv4Address::new(100, 64, 0, 2);
        let dst = Ipv4Address::new(100, 64, 0, 1);
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let mut buf = vec![0; ip.buffer_len() + tcp.buffer_len()];
        let caps = ChecksumCapabilities::default();
        ip.emit(&mut Ipv4Packet::new_unchecked(&mut buf[..]), &caps);
        tcp.emit(&mut TcpPacket::new_unchecked(&mut buf[20..]), &src.into(), &dst.into(), &caps);
        buf
    }

    #[test]
    fn a_data_and_fin_segment_splits_into_data_then_a_bare_fin() {
        let packet = segment(b"last bytes", TcpControl::Fin);
        let seg = parse_tcp(&packet).unwrap();
        assert!(seg.fin);
        assert_eq!(seg.payload_len, 10);
        let (data, fin) = split_fin(packet.clone(), &seg);
        assert_eq!(data.len(), packet.len());
        let d = parse_tcp(&data).unwrap();
        assert!(!d.fin && d.payload_len == 10);
        assert_eq!(TcpPacket::new_checked(&data[20..]).unwrap().payload(), b"last bytes");
        let f = parse_tcp(&fin).unwrap();
        assert!(f.fin && f.payload_len == 0);
        let tcp = TcpPacket::new_checked(&fin[20..]).unwrap();
        assert_eq!(tcp.seq_number(), TcpSeqNumber(1010));
        assert_eq!(Ipv4Packet::new_checked(&fin[..]).unwrap().total_len() as usize, fin.len());
    }

    #[test]
    fn segments_without_both_data_and_fin_are_not_split() {
        let bare_fin = parse_tcp(&segment(b"", TcpControl::Fin)).unwrap();
        assert!(bare_fin.fin && bare_fin.payload_len == 0);
        let data = parse_tcp(&segment(b"abc", TcpControl::None)).unwrap();
        assert!(!data.fin && data.payload_len == 3);
    }
}
