//! The in-memory device smoltcp sends to and receives from: two packet queues. The shell moves packets
//! between these queues and the TUN in batches.
//!
//! Packet buffers are recycled: a 64 KiB allocation (and, for packets we emit, zeroing it) per packet
//! costs about as much as copying the packet once more. Two small pools, each bounded by
//! [`SPARE_BUFFERS`]: buffers of packets smoltcp has consumed go back to the caller to read the next
//! packet into ([`QueueDevice::read_buffer`]), buffers of packets the caller has written out are
//! reused for the next packet smoltcp emits.

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

/// Most buffers kept in each pool: enough for a batch in flight, at most 8 × 64 KiB each.
const SPARE_BUFFERS: usize = 8;
/// Consumed packets' buffers smaller than this are not kept for reading into: reading a large packet
/// into one would reallocate it anyway.
const READ_BUFFER_MIN: usize = 32 * 1024;
/// Emitted packets' headers (IP and TCP with options, at most 120 bytes) are zeroed before smoltcp
/// writes them, as in a fresh buffer; the payload smoltcp copies in whole.
const HEADER_ROOM: usize = 128;

pub(crate) struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    /// Buffers of consumed packets, for reading the next ones into.
    rx_spare: Vec<Vec<u8>>,
    /// Buffers of packets written out, for the next packets smoltcp emits.
    tx_spare: Vec<Vec<u8>>,
    mtu: usize,
    /// TCP checksums are left to whoever carries the packets on (see [`crate::StackConfig`]).
    tcp_checksum_offload: bool,
}

impl QueueDevice {
    pub(crate) fn new(mtu: usize, tcp_checksum_offload: bool) -> Self {
        QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            rx_spare: Vec::new(),
            tx_spare: Vec::new(),
            mtu,
            tcp_checksum_offload,
        }
    }
    pub(crate) fn push_rx(&mut self, packet: Vec<u8>) {
        self.rx.push_back(packet);
    }
    pub(crate) fn has_rx(&self) -> bool {
        !self.rx.is_empty()
    }
    pub(crate) fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }
    /// A buffer of `len` initialised bytes to read a packet into: a consumed packet's when there is
    /// one (then only the bytes past its old length are zeroed).
    pub(crate) fn read_buffer(&mut self, len: usize) -> Vec<u8> {
        let mut buf = self.rx_spare.pop().unwrap_or_default();
        buf.resize(len, 0);
        buf
    }
    /// Takes back the buffer of a packet the caller has written out.
    pub(crate) fn recycle(&mut self, buf: Vec<u8>) {
        keep(&mut self.tx_spare, buf);
    }
}

fn keep(pool: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if pool.len() < SPARE_BUFFERS && buf.capacity() > 0 {
        pool.push(buf);
    }
}

pub(crate) struct Rx<'a> {
    packet: Vec<u8>,
    spare: &'a mut Vec<Vec<u8>>,
}
pub(crate) struct Tx<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    spare: &'a mut Vec<Vec<u8>>,
    tcp_checksum_offload: bool,
}

impl RxToken for Rx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.packet);
        if self.packet.capacity() >= READ_BUFFER_MIN {
            keep(self.spare, self.packet);
        }
        r
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.spare.pop().unwrap_or_default();
        let stale = buf.len().min(len).min(HEADER_ROOM);
        buf.resize(len, 0);
        buf[..stale].fill(0);
        let r = f(&mut buf);
        if self.tcp_checksum_offload {
            crate::checksum::seed_tcp_checksum(&mut buf);
        }
        self.queue.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx<'a>;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx<'_>, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        let tx = Tx { queue: &mut self.tx, spare: &mut self.tx_spare, tcp_checksum_offload: self.tcp_checksum_offload };
        Some((Rx { packet, spare: &mut self.rx_spare }, tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx { queue: &mut self.tx, spare: &mut self.tx_spare, tcp_checksum_offload: self.tcp_checksum_offload })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        let mut checksum = ChecksumCapabilities::default();
        // Packets come from the kernel through the TUN, and their TCP checksums were made or verified
        // there, or by `vnet::finish_rx` for the ones the kernel did not vouch for: verifying them
        // again costs a pass over every 64 KiB segment for nothing. Outgoing packets are checked by
        // the kernel, so we must compute them, unless the TUN finishes TCP checksums itself
        // (checksum offload): then smoltcp leaves the field and `Tx` seeds it.
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = if self.tcp_checksum_offload { Checksum::None } else { Checksum::Tx };
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
