//! The shell of one direction: reads frames from one interface's packet socket, hands them to the
//! [`Link`] with the time they arrived, and sends what the link says is due out of the other
//! interface. One thread per direction; it owns the clock and nothing else decides.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::link::{Link, LinkStats};
use crate::socket::PacketSocket;

/// Frames read per system call, and system calls per wake-up (a bounded batch, so that a flood on
/// the way in cannot starve the sending of due frames).
const BATCH: usize = 32;
const READS_PER_WAKEUP: usize = 4;
/// Room per frame: a GSO frame that slipped through is seen whole, so it is counted, not misread.
const FRAME_BUFFER: usize = 64 << 10;
/// The longest sleep, so a stop request seen by the other thread is seen here soon after.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// What one direction did, the link's own counters and the shell's.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirectionStats {
    pub link: LinkStats,
    /// Frames longer than the outgoing interface can send (offloads left on somewhere): dropped.
    pub oversized: u64,
    /// Frames the outgoing socket refused (its queue full, the interface down): dropped.
    pub send_errors: u64,
    /// Frames still queued or in flight when the run ended.
    pub held_at_exit: u64,
}

impl DirectionStats {
    /// Every frame read is accounted for exactly once.
    pub fn read(&self) -> u64 {
        self.link.received + self.oversized
    }
}

/// Moves frames from `rx` to `tx` through `link` until `deadline` or until `stop` is set.
pub fn run_direction(
    rx: &PacketSocket,
    tx: &PacketSocket,
    mut link: Link<Vec<u8>>,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> io::Result<DirectionStats> {
    let mut stats = DirectionStats::default();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; FRAME_BUFFER]).collect();
    let mut lens = [0usize; BATCH];
    let mut due: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let max_frame = tx.max_frame();
    loop {
        let now = Instant::now();
        if now >= deadline || stop.load(Ordering::Relaxed) {
            break;
        }
        // Everything due goes out, BATCH frames per system call.
        loop {
            while due.len() < BATCH {
                match link.poll_transmit(now) {
                    Some(frame) => due.push(frame),
                    None => break,
                }
            }
            if due.is_empty() {
                break;
            }
            send_all(tx, &mut due, &mut stats);
        }
        let wake = link.poll_timeout().unwrap_or(deadline).min(deadline).min(now + MAX_SLEEP);
        if !rx.wait_readable(wake.saturating_duration_since(now))? {
            continue;
        }
        for _ in 0..READS_PER_WAKEUP {
            let n = rx.recv_batch(&mut bufs, &mut lens)?;
            let now = Instant::now();
            for (buf, &len) in bufs.iter().zip(&lens[..n]) {
                if len > buf.len() || len > max_frame {
                    stats.oversized += 1;
                    continue;
                }
                // A dropped frame's buffer is simply freed: drops are the rare case.
                let _ = link.handle_frame(buf[..len].to_vec(), len, now);
            }
            if n < BATCH {
                break;
            }
        }
    }
    stats.link = link.stats();
    stats.held_at_exit = link.held() as u64;
    Ok(stats)
}

/// Sends `due` (emptying it); what the socket refuses is counted and dropped, like a full NIC queue.
fn send_all(tx: &PacketSocket, due: &mut Vec<Vec<u8>>, stats: &mut DirectionStats) {
    let mut sent = 0;
    while sent < due.len() {
        match tx.send_batch(&due[sent..]) {
            Ok(n) if n > 0 => sent += n,
            Ok(_) | Err(_) => {
                // The first frame left could not be sent: drop it and try the rest.
                stats.send_errors += 1;
                sent += 1;
            }
        }
    }
    due.clear();
}
