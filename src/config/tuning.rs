//! `[tuning]`: byte budgets, limits and timeouts, and the floors below which they are refused.

use std::path::Path;

use serde::Deserialize;

use super::error::{invalid, ConfigError};

/// Byte budgets and timeouts; the defaults suit a laptop and a small server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tuning {
    /// Per stream and direction: bytes in flight between the daemons.
    pub stream_window: u64,
    /// Per TCP connection: the local socket buffers, each way.
    pub tcp_buffer: usize,
    /// Per peer: bytes queued for the uplink before the apps are slowed down.
    pub session_out_budget: usize,
    /// All peers together: TCP connections through the daemon's Stack.
    pub max_tcp_flows: usize,
    /// Per peer: TCP connections at once, so that one client cannot take every flow.
    pub max_flows_per_session: usize,
    /// Per peer: UDP flows (endpoint pairs) at once.
    pub max_udp_flows_per_session: usize,
    /// Server, per peer: relay connections (paths) at once.
    pub max_paths_per_session: usize,
    pub udp_idle_timeout_secs: u64,
    /// Check: a path that receives nothing for this long is dead (the session moves or resumes).
    pub dead_after_ms: u64,
    /// Check: each side sends a PING after this long without sending; the PONG measures the RTT.
    pub probe_interval_ms: u64,
    /// Search: a warm standby path is probed this often (at least `probe_interval_ms`), so that an idle
    /// metered uplink pays little for being ready; silence for three of these and it is dead.
    pub standby_probe_interval_ms: u64,
    /// Check under traffic: a path whose sent bytes have waited this long for an acknowledgement (and
    /// longer than a retransmission timeout and a round trip) is dead. At or above `dead_after_ms`:
    /// off.
    pub stall_after_ms: u64,
    /// Server: how long a session whose path is lost waits for its client to come back (spec
    /// \[0133\]). Client: how long it keeps trying to resume before it gives the session up.
    pub switch_timeout_secs: u64,
    /// Threads that run the daemon's tasks (the engine, each path's reader and writer). One is the
    /// fastest measured on two cores: a second one moved the tasks between the cores and carried a
    /// third less (docs/benchmarks.md). A server with many clients may use more, for their TLS work.
    pub worker_threads: usize,
    /// Server: connections between accept and authentication, all sources together; past it the
    /// oldest of them is closed for the newcomer (see `roamtun_proto::admission`).
    pub max_pending_handshakes: usize,
    /// Server: the same from one IPv4 address or IPv6 /64; past it a new one is closed at once.
    pub max_pending_handshakes_per_source: usize,
    /// Each path's writer refreshes the TLS traffic keys this often (a TLS 1.3 key update that
    /// asks the peer to update its own too).
    pub rekey_interval_secs: u64,
    /// The relay sockets' TCP congestion control (`TCP_CONGESTION`), whatever the host's default:
    /// every stream of a session shares the one connection, so its behaviour is the product's.
    pub congestion_control: String,
}

/// The relay sockets' congestion control unless configured. Cubic: over emulated Wi-Fi and LTE
/// (docs/benchmarks.md, "over the WAN profile"), bbr's ProbeRTT, about 10 s after a switch onto LTE,
/// stalled every stream of the session for 50–300 ms; cubic kept the rate without that stall.
pub const DEFAULT_CONGESTION_CONTROL: &str = "cubic";

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            stream_window: 512 * 1024,
            tcp_buffer: 256 * 1024,
            session_out_budget: 2 * 1024 * 1024,
            max_tcp_flows: 4096,
            max_flows_per_session: 1024,
            max_udp_flows_per_session: 1024,
            max_paths_per_session: 8,
            udp_idle_timeout_secs: 60,
            dead_after_ms: 3000,
            probe_interval_ms: 500,
            stall_after_ms: 100,
            standby_probe_interval_ms: 2000,
            switch_timeout_secs: 60,
            worker_threads: 1,
            max_pending_handshakes: 1024,
            max_pending_handshakes_per_source: 16,
            rekey_interval_secs: 120,
            congestion_control: DEFAULT_CONGESTION_CONTROL.into(),
        }
    }
}

impl Tuning {
    /// The TUN device's transmit queue (packets the kernel holds for the daemon to read): room for
    /// every TCP flow's whole window in segments as large as the MTU, and a base for everything else.
    /// The kernel drops a packet that finds the queue full rather than pushing back on its sender;
    /// with the kernel's default of 500, a few hundred busy flows lost many segments there and a new
    /// connection's SYN waited seconds for its retransmission (tests/netns/datapath.sh). What the
    /// queue holds of TCP is bounded by the flows' windows either way; UDP and forwarded packets are
    /// bounded by it.
    pub fn tun_queue_len(&self, mtu: u16) -> u32 {
        let segments_per_window = self.tcp_buffer.div_ceil(usize::from(mtu).max(1));
        let len = TUN_QUEUE_BASE.saturating_add(self.max_tcp_flows.saturating_mul(segments_per_window));
        u32::try_from(len.min(TUN_QUEUE_MAX)).unwrap_or(u32::MAX)
    }
}

/// Of [`Tuning::tun_queue_len`]: the kernel's default twice over, for ACKs, UDP, ICMP and SYNs.
const TUN_QUEUE_BASE: usize = 1000;
/// Of [`Tuning::tun_queue_len`]: its cap, for small MTUs with large buffers; a reader this far
/// behind is better told by a drop.
const TUN_QUEUE_MAX: usize = 65536;

/// Streams per session whose offsets fit one CONTROL frame (SWITCH_UNEXPECTED: 17 bytes + 12 per stream).
pub const MAX_TCP_FLOWS: usize = 5000;

/// More threads than this only add switching: the engine task is one of them either way.
pub const MAX_WORKER_THREADS: usize = 64;

/// Floors below which a budget or timeout makes the daemon useless (or spin).
pub(super) fn check_tuning(path: &Path, t: &Tuning) -> Result<(), ConfigError> {
    let floors: [(&str, u64, u64); 17] = [
        ("tuning.stream_window", t.stream_window, roamtun_proto::relay::stream::INITIAL_CREDIT),
        ("tuning.tcp_buffer", t.tcp_buffer as u64, 16 * 1024),
        ("tuning.session_out_budget", t.session_out_budget as u64, 128 * 1024),
        ("tuning.max_tcp_flows", t.max_tcp_flows as u64, 1),
        ("tuning.max_flows_per_session", t.max_flows_per_session as u64, 1),
        ("tuning.max_udp_flows_per_session", t.max_udp_flows_per_session as u64, 1),
        // A switch needs the old path and the new one.
        ("tuning.max_paths_per_session", t.max_paths_per_session as u64, 2),
        ("tuning.udp_idle_timeout_secs", t.udp_idle_timeout_secs, 1),
        ("tuning.dead_after_ms", t.dead_after_ms, 50),
        ("tuning.probe_interval_ms", t.probe_interval_ms, 10),
        // Below a few scheduler ticks a busy but healthy path would look stalled.
        ("tuning.stall_after_ms", t.stall_after_ms, 40),
        ("tuning.standby_probe_interval_ms", t.standby_probe_interval_ms, 10),
        ("tuning.switch_timeout_secs", t.switch_timeout_secs, 1),
        ("tuning.worker_threads", t.worker_threads as u64, 1),
        ("tuning.max_pending_handshakes", t.max_pending_handshakes as u64, 1),
        ("tuning.max_pending_handshakes_per_source", t.max_pending_handshakes_per_source as u64, 1),
        ("tuning.rekey_interval_secs", t.rekey_interval_secs, 1),
    ];
    for (key, value, floor) in floors {
        if value < floor {
            return Err(invalid(path, format!("{key} = {value} is below the minimum {floor}")));
        }
    }
    // The peer must hear at least two probes before it may call a quiet path dead.
    if t.probe_interval_ms * 2 > t.dead_after_ms {
        return Err(invalid(
            path,
            format!(
                "tuning.probe_interval_ms = {} must be at most half of tuning.dead_after_ms = {}: a quiet but \
                 working path would be declared dead",
                t.probe_interval_ms, t.dead_after_ms
            ),
        ));
    }
    if t.worker_threads > MAX_WORKER_THREADS {
        return Err(invalid(
            path,
            format!("tuning.worker_threads = {} is above the maximum {MAX_WORKER_THREADS}", t.worker_threads),
        ));
    }
    // A name the kernel could look up: whether it has it is known only at start-up (a warning then).
    let cc = &t.congestion_control;
    // TCP_CA_NAME_MAX (16) less its NUL.
    let max = 15;
    if cc.is_empty() || cc.len() > max || !cc.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid(
            path,
            format!(
                "tuning.congestion_control = {cc:?} is not a congestion control name (1 to {max} of a-z, 0-9, _; \
                 e.g. \"cubic\" or \"bbr\", see net.ipv4.tcp_available_congestion_control)"
            ),
        ));
    }
    // An unexpected switch names every stream's offset in one CONTROL frame (12 bytes each).
    for (key, value) in
        [("tuning.max_tcp_flows", t.max_tcp_flows), ("tuning.max_flows_per_session", t.max_flows_per_session)]
    {
        if value > MAX_TCP_FLOWS {
            return Err(invalid(
                path,
                format!(
                    "{key} = {value} is above the maximum {MAX_TCP_FLOWS}: a switch lists every stream in one frame"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::test_support::server_toml;
    use crate::config::ServerConfig;

    use super::Tuning;

    #[test]
    fn the_tun_queue_holds_every_flows_window_in_mtu_sized_segments() {
        let defaults = Tuning::default();
        // A 256 KiB window is four segments of 64 KiB less their headers, and a little more.
        assert_eq!(defaults.tun_queue_len(65535), 1000 + 4096 * 5);
        let small = Tuning { tcp_buffer: 32 * 1024, max_tcp_flows: 1024, ..Tuning::default() };
        assert_eq!(small.tun_queue_len(65535), 1000 + 1024);
        assert_eq!(small.tun_queue_len(1500), 1000 + 1024 * 22);
        assert_eq!(defaults.tun_queue_len(1280), super::TUN_QUEUE_MAX as u32);
    }

    #[test]
    fn tuning_below_its_floor_is_refused() {
        let err = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("\n[tuning]\ndead_after_ms = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("tuning.dead_after_ms = 0"), "{err}");
        let err = ServerConfig::from_toml(
            Path::new("s.toml"),
            &server_toml("\n[tuning]\ndead_after_ms = 300\nprobe_interval_ms = 200\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at most half of tuning.dead_after_ms = 300"), "{err}");
        for (threads, says) in [(0, "tuning.worker_threads = 0 is below the minimum 1"), (65, "above the maximum 64")] {
            let err = ServerConfig::from_toml(
                Path::new("s.toml"),
                &server_toml(&format!("\n[tuning]\nworker_threads = {threads}\n")),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(says), "{err}");
        }
        let ok = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("\n[tuning]\nworker_threads = 4\n"));
        assert_eq!(ok.unwrap().tuning.worker_threads, 4);
    }

    #[test]
    fn congestion_control_is_cubic_unless_named_and_a_name_is_checked() {
        let parse = |extra: &str| ServerConfig::from_toml(Path::new("s.toml"), &server_toml(extra));
        assert_eq!(parse("").unwrap().tuning.congestion_control, "cubic");
        assert_eq!(parse("\n[tuning]\ncongestion_control = \"bbr\"\n").unwrap().tuning.congestion_control, "bbr");
        for bad in ["", "BBR", "cubic;", "a_name_far_too_long"] {
            let err = parse(&format!("\n[tuning]\ncongestion_control = \"{bad}\"\n")).unwrap_err().to_string();
            assert!(
                err.contains(&format!("tuning.congestion_control = {bad:?} is not a congestion control name")),
                "{err}"
            );
        }
    }
}
