//! The in-memory device smoltcp sends to and receives from: two packet queues. The shell moves packets
//! between these queues and the TUN in batches.

use std::collections::VecDeque;

use smoltcp::phy::{Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::time::Instant;

pub(crate) struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
    /// TCP checksums are left to whoever carries the packets on (see [`crate::StackConfig`]).
    tcp_checksum_offload: bool,
}

impl QueueDevice {
    pub(crate) fn new(mtu: usize, tcp_checksum_offload: bool) -> Self {
        QueueDevice { rx: VecDeque::new(), tx: VecDeque::new(), mtu, tcp_checksum_offload }
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
}

pub(crate) struct Rx(Vec<u8>);
pub(crate) struct Tx<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    tcp_checksum_offload: bool,
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        if self.tcp_checksum_offload {
            crate::checksum::seed_tcp_checksum(&mut buf);
        }
        self.queue.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx { queue: &mut self.tx, tcp_checksum_offload: self.tcp_checksum_offload }))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx { queue: &mut self.tx, tcp_checksum_offload: self.tcp_checksum_offload })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        let mut checksum = ChecksumCapabilities::default();
        // Packets come from the local kernel through the TUN, fully checksummed and never corrupted on
        // the way: verifying them again costs a pass over every 64 KiB segment for nothing. Outgoing
        // packets are checked by the kernel, so we must compute them, unless the TUN finishes TCP
        // checksums itself (checksum offload): then smoltcp leaves the field and `Tx` seeds it.
        checksum.ipv4 = Checksum::Tx;
        checksum.tcp = if self.tcp_checksum_offload { Checksum::None } else { Checksum::Tx };
        checksum.udp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}
