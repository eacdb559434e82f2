//! The one configuration file of each daemon (TOML). Every key is documented in docs/config.md.
//!
//! Syntax and type errors carry the file, line and column (from the TOML parser, which knows where a
//! value came from); rules that span several keys are checked after parsing and name the keys. No
//! error quotes the file's text: it may hold the private key.
//!
//! The private key is inline (`private_key`) or in a file of its own (`private_key_file`); a file that
//! holds it must be private to its owner, else the daemon refuses to start (like ssh with its keys).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Deserializer};
use zeroize::Zeroizing;

use crate::config_shape::{line_of, Step};
use crate::keys::{PrivateKey, PublicKey};

/// What a malformed `private_key` is told, whatever was wrong with it: the value itself is never
/// repeated (it may be a real key with a typo).
const BAD_PRIVATE_KEY: &str = "private_key is not a 44-character base64 Ed25519 key (as `roamtun genkey` prints it)";

/// Permission bits for the group and others: a file holding a secret must have none of them.
const GROUP_OTHER_BITS: u32 = 0o077;

/// Why a configuration file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Carries the parser's line/column report.
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("cannot read private_key_file {path}")]
    KeyFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's content is never shown: it is meant to be a secret.
    #[error("private_key_file {path} does not hold a 44-character base64 Ed25519 key (as `roamtun genkey` prints it)")]
    KeyFileInvalid { path: PathBuf },
    #[error(
        "private_key_file {path} is accessible by other users (mode {mode:04o}); it must be readable by its owner \
         only: chmod 600 {path}"
    )]
    KeyFileExposed { path: PathBuf, mode: u32 },
    #[error(
        "config file {path} holds private_key and is accessible by other users (mode {mode:04o}); make it readable \
         by its owner only (chmod 600 {path}) or move the key to a private_key_file"
    )]
    ConfigExposed { path: PathBuf, mode: u32 },
}

/// An IP prefix such as `100.64.0.0/10` or `fd64::/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) =
            s.split_once('/').ok_or_else(|| format!("prefix {s:?} needs a length, e.g. 100.64.0.0/10"))?;
        let addr: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
        let len: u8 = len.parse().map_err(|_| format!("prefix length {len:?} is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(format!("prefix length {len} is longer than {max}"));
        }
        let prefix = Prefix { addr, len };
        let network = prefix.network();
        if network != addr {
            // The kernel refuses such a route; say what was probably meant.
            return Err(format!("{s} has host bits set; did you mean {network}/{len}?"));
        }
        Ok(prefix)
    }
}

impl Prefix {
    /// The address with every bit past the prefix length cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask_v4(self.len)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask_v6(self.len)).into()),
        }
    }
}

fn mask_v4(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

fn mask_v6(len: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Values that parse from a string (keys, prefixes) deserialize through this, so that a bad value is
/// reported at its line by the TOML parser.
fn from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<T, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    s.trim().parse().map_err(serde::de::Error::custom)
}

/// An inline `private_key`. The text is wiped once read, and a bad value is reported without it.
fn private_key<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PrivateKey>, D::Error> {
    struct KeyVisitor;
    impl serde::de::Visitor<'_> for KeyVisitor {
        type Value = PrivateKey;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a 44-character base64 Ed25519 key")
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<PrivateKey, E> {
            PrivateKey::from_base64(s).map_err(|_| E::custom(BAD_PRIVATE_KEY))
        }
        fn visit_string<E: serde::de::Error>(self, s: String) -> Result<PrivateKey, E> {
            self.visit_str(&Zeroizing::new(s))
        }
    }
    d.deserialize_str(KeyVisitor).map(Some)
}

/// `control_group`: a group of this host whose members may use the control socket besides root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    pub gid: u32,
}

impl FromStr for ControlGroup {
    type Err = String;
    fn from_str(name: &str) -> Result<Self, String> {
        match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => Ok(ControlGroup { name: group.name, gid: group.gid.as_raw() }),
            Ok(None) => Err(format!("control_group {name:?} is not a group on this host (see getent group)")),
            Err(err) => Err(format!("cannot look up control_group {name:?}: {err}")),
        }
    }
}

/// One socket address or a list of them (`"198.18.1.1:7700"` or `["198.18.1.1:7700", "[2001:2::1]:7700"]`).
fn socket_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(SocketAddr),
        Many(Vec<SocketAddr>),
    }
    match OneOrMany::deserialize(d) {
        Ok(OneOrMany::One(a)) => Ok(vec![a]),
        Ok(OneOrMany::Many(v)) => Ok(v),
        Err(_) => Err(serde::de::Error::custom(
            "expected \"ip:port\" (\"[v6]:port\" for IPv6) or a list of them, e.g. [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]",
        )),
    }
}

fn optional_from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<Option<T>, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    from_str(d).map(Some)
}

fn vec_from_str<'de, D: Deserializer<'de>, T>(d: D) -> Result<Vec<T>, D::Error>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    let v = Vec::<String>::deserialize(d)?;
    v.iter().map(|s| s.trim().parse().map_err(serde::de::Error::custom)).collect()
}

/// The TUN device a daemon creates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TunConfig {
    /// Default: `roam0` on the client, `roamsrv0` on the server.
    #[serde(default)]
    pub name: String,
    /// Large by default: TCP is terminated locally, so the TUN need not match any physical path.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    65535
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerPeer {
    /// Where the server daemon listens, e.g. `198.18.1.1:7700`, or several addresses of it (one per
    /// family, so that an IPv4-only and an IPv6-only uplink can both reach it), in order of preference.
    #[serde(rename = "address", deserialize_with = "socket_addrs")]
    pub addresses: Vec<SocketAddr>,
    #[serde(deserialize_with = "from_str")]
    pub public_key: PublicKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Inline; exactly one of this and `private_key_file` (use [`ClientConfig::private_key`]).
    #[serde(default, deserialize_with = "private_key")]
    private_key: Option<PrivateKey>,
    /// A file holding the key as `roamtun genkey` prints it; relative paths are from the config
    /// file's directory.
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    pub server: ServerPeer,
    #[serde(default = "default_client_tun")]
    pub tun: TunConfig,
    /// The stable addresses the apps use; the server must give the same ones to this client's key.
    pub virtual_ips: Vec<IpAddr>,
    /// Prefixes routed into the TUN (e.g. the server's virtual IP, a server-side network, or
    /// `0.0.0.0/0` for everything).
    #[serde(deserialize_with = "vec_from_str")]
    pub routes: Vec<Prefix>,
    /// The interfaces the relay may use, in order of preference (e.g. `["wlan0", "wwan0"]`, or
    /// `{ name = "wwan0", metered = true }` for an entry the decision task should spare). The relay is
    /// bound to one of them (SO_BINDTODEVICE), so it never follows a route into the TUN. Empty: the
    /// kernel's routing picks, and a route covering the server is refused.
    #[serde(default)]
    pub uplinks: Vec<UplinkConfig>,
    #[serde(default = "default_client_socket")]
    pub control_socket: PathBuf,
    /// Besides root, members of this group may use the control socket.
    #[serde(default, deserialize_with = "optional_from_str")]
    pub control_group: Option<ControlGroup>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tuning: Tuning,
    #[serde(default)]
    pub decision: DecisionConfig,
    #[serde(default)]
    pub routing: RoutingConfig,
    /// DNS servers for this host while the tunnel is up (e.g. a resolver on the server's virtual IP):
    /// given to systemd-resolved for the TUN, or written to /etc/resolv.conf (src/dns/). Empty: the
    /// host's DNS is left alone.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
}

/// The decision task's hysteresis (src/link/policy.rs has the rules).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionConfig {
    /// Score points an uplink must gain over the active one before the session moves to it.
    pub min_gain: f64,
    /// No automatic switch sooner than this after the last one.
    pub dwell_secs: u64,
    /// An uplink that came back must stay healthy this long before the session moves back to it.
    pub fail_back_after_secs: u64,
}

impl Default for DecisionConfig {
    fn default() -> Self {
        DecisionConfig { min_gain: 5.0, dwell_secs: 10, fail_back_after_secs: 30 }
    }
}

/// Per-uplink policy routing (src/link/routing.rs): a routing table per configured uplink and a
/// `from ADDRESS lookup TABLE` rule per address of it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Off by default: it adds rules and tables to the host's routing.
    pub per_uplink_tables: bool,
    /// The table of the first uplink in `uplinks`; the next ones follow.
    pub table_base: u32,
    /// Priority of the `from` rules; below the main table's rule (32766), so they are consulted first.
    pub rule_priority: u32,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig { per_uplink_tables: false, table_base: 52000, rule_priority: 5200 }
    }
}

/// The kernel's own tables: unspec (0), default (253), main (254), local (255).
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// The rule priority of the kernel's `lookup main` rule.
const MAIN_RULE_PRIORITY: u32 = 32766;

/// `[routing]` against the number of configured uplinks (one table each).
fn check_routing(path: &Path, r: &RoutingConfig, uplinks: usize) -> Result<(), ConfigError> {
    if r.per_uplink_tables && uplinks == 0 {
        return Err(invalid(
            path,
            "routing.per_uplink_tables needs uplinks: the tables are per configured uplink".into(),
        ));
    }
    let count = u32::try_from(uplinks.max(1)).unwrap_or(u32::MAX);
    let Some(last) = r.table_base.checked_add(count - 1) else {
        return Err(invalid(path, format!("routing.table_base = {} leaves no room for {count} tables", r.table_base)));
    };
    if let Some(reserved) = RESERVED_TABLES.iter().find(|t| (r.table_base..=last).contains(t)) {
        return Err(invalid(
            path,
            format!(
                "routing.table_base = {}: the uplinks' tables {}..={last} include the kernel's table {reserved} \
                 (0, 253 default, 254 main, 255 local are reserved)",
                r.table_base, r.table_base
            ),
        ));
    }
    if r.rule_priority == 0 || r.rule_priority >= MAIN_RULE_PRIORITY {
        return Err(invalid(
            path,
            format!(
                "routing.rule_priority = {} must be 1 to {}: 0 is the local table's rule, and the rules must come \
                 before the main table's ({MAIN_RULE_PRIORITY})",
                r.rule_priority,
                MAIN_RULE_PRIORITY - 1
            ),
        ));
    }
    Ok(())
}

/// The kinds of uplink roamtun tells apart.
pub const UPLINK_KINDS: [&str; 3] = ["ethernet", "wifi", "wwan"];

/// What sysfs says an interface is: Wi-Fi when it has a wireless or phy80211 entry, WWAN when its
/// uevent says DEVTYPE=wwan, Ethernet otherwise (including virtual links).
pub fn uplink_kind(name: &str) -> &'static str {
    let dir = Path::new("/sys/class/net").join(name);
    if dir.join("wireless").exists() || dir.join("phy80211").exists() {
        return "wifi";
    }
    let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
    if uevent.lines().any(|l| l.trim() == "DEVTYPE=wwan") {
        return "wwan";
    }
    "ethernet"
}

/// One uplink of the client, in `uplinks` order (earlier is preferred).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(from = "UplinkEntry")]
pub struct UplinkConfig {
    pub name: String,
    /// Paid by volume or capped: used only when no free uplink is healthy.
    pub metered: bool,
    /// Money per GiB (any currency; only comparisons matter).
    pub cost_per_gib: f64,
    /// "ethernet", "wifi" or "wwan"; by default what sysfs says.
    pub kind: Option<String>,
    /// A volume cap in GiB (since the daemon started): beyond it the uplink is used only when no other
    /// works.
    pub cap_gib: Option<f64>,
}

impl UplinkConfig {
    /// `cap_gib` in bytes.
    pub fn cap_bytes(&self) -> Option<u64> {
        self.cap_gib.map(|g| (g * (1u64 << 30) as f64) as u64)
    }
}

/// An entry of `uplinks` as written: a bare interface name, or a table.
#[derive(Deserialize)]
#[serde(
    untagged,
    expecting = "an interface name, or a table such as { name = \"wwan0\", metered = true, cost_per_gib = 2.5 }"
)]
enum UplinkEntry {
    Name(String),
    Table(UplinkTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UplinkTable {
    name: String,
    #[serde(default)]
    metered: bool,
    #[serde(default)]
    cost_per_gib: f64,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    cap_gib: Option<f64>,
}

impl From<UplinkEntry> for UplinkConfig {
    fn from(e: UplinkEntry) -> Self {
        match e {
            UplinkEntry::Name(name) => {
                UplinkConfig { name, metered: false, cost_per_gib: 0.0, kind: None, cap_gib: None }
            }
            UplinkEntry::Table(t) => UplinkConfig {
                name: t.name,
                metered: t.metered,
                cost_per_gib: t.cost_per_gib,
                kind: t.kind,
                cap_gib: t.cap_gib,
            },
        }
    }
}

impl ClientConfig {
    /// The uplinks' names, in order of preference.
    pub fn uplink_names(&self) -> Vec<String> {
        self.uplinks.iter().map(|u| u.name.clone()).collect()
    }
}

fn default_client_tun() -> TunConfig {
    TunConfig { name: String::new(), mtu: default_mtu() }
}

fn default_client_socket() -> PathBuf {
    PathBuf::from("/run/roamtun/client.sock")
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub name: String,
    #[serde(deserialize_with = "from_str")]
    pub public_key: PublicKey,
    pub virtual_ips: Vec<IpAddr>,
    /// This peer's own switch timeout (`tuning.switch_timeout_secs` otherwise): how long its session
    /// waits for it to come back, e.g. a laptop closed for the night.
    #[serde(default)]
    pub switch_timeout_secs: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Inline; exactly one of this and `private_key_file` (use [`ServerConfig::private_key`]).
    #[serde(default, deserialize_with = "private_key")]
    private_key: Option<PrivateKey>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    /// One address or several (e.g. one IPv4 and one IPv6 address) the relay listener binds.
    #[serde(deserialize_with = "socket_addrs")]
    pub listen: Vec<SocketAddr>,
    #[serde(default = "default_server_tun")]
    pub tun: TunConfig,
    /// The server's own addresses on its TUN (what client apps reach it at, e.g. `100.64.0.1`).
    pub virtual_ips: Vec<IpAddr>,
    /// Prefixes routed into the server TUN: where the clients' virtual IPs live.
    #[serde(deserialize_with = "vec_from_str")]
    pub client_prefixes: Vec<Prefix>,
    /// Let clients reach destinations beyond this host (turns on IP forwarding; see docs/config.md for
    /// the masquerade rule).
    #[serde(default)]
    pub exit: bool,
    /// Without `exit`: what clients may reach beyond the server's virtual IPs (also turns on IP
    /// forwarding). Other clients' virtual IPs stay behind `client_to_client`.
    #[serde(default, deserialize_with = "vec_from_str")]
    pub allowed_destinations: Vec<Prefix>,
    /// Clients may reach each other's virtual IPs (in exit mode too).
    #[serde(default)]
    pub client_to_client: bool,
    #[serde(default = "default_server_socket")]
    pub control_socket: PathBuf,
    #[serde(default, deserialize_with = "optional_from_str")]
    pub control_group: Option<ControlGroup>,
    /// Where to serve Prometheus metrics (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub tuning: Tuning,
    #[serde(rename = "peer", default)]
    pub peers: Vec<PeerConfig>,
    /// A directory of one file per peer (`NAME.toml` holding `public_key`, `virtual_ips` and
    /// optionally `name`), read after the `[[peer]]` tables and again at every reload.
    #[serde(default)]
    pub peers_dir: Option<PathBuf>,
    /// Where each peer came from: `None` for a `[[peer]]` table, else its file in `peers_dir`.
    #[serde(skip)]
    pub peer_files: Vec<Option<PathBuf>>,
}

/// One file of `peers_dir`: a `[[peer]]` table whose name defaults to the file's stem.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeerFile {
    name: Option<String>,
    #[serde(deserialize_with = "from_str")]
    public_key: PublicKey,
    virtual_ips: Vec<IpAddr>,
    #[serde(default)]
    switch_timeout_secs: Option<u64>,
}

/// Every `*.toml` of `dir`, in name order, as peers.
fn read_peers_dir(dir: &Path) -> Result<Vec<(PeerConfig, PathBuf)>, ConfigError> {
    let read_err = |source| ConfigError::Read { path: dir.into(), source };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(read_err)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    let mut peers = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read { path: file.clone(), source })?;
        let peer: PeerFile = parse(&file, &text)?;
        let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let name = peer.name.unwrap_or(stem);
        let switch_timeout_secs = peer.switch_timeout_secs;
        peers.push((
            PeerConfig { name, public_key: peer.public_key, virtual_ips: peer.virtual_ips, switch_timeout_secs },
            file,
        ));
    }
    Ok(peers)
}

fn default_server_tun() -> TunConfig {
    TunConfig { name: String::new(), mtu: default_mtu() }
}

fn default_server_socket() -> PathBuf {
    PathBuf::from("/run/roamtun/server.sock")
}

/// A file's text, wiped when dropped, and its permission bits (read from the open file, so they are
/// those of what was read).
fn read_private(path: &Path) -> std::io::Result<(Zeroizing<String>, u32)> {
    use std::io::Read as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = std::fs::File::open(path)?;
    let mode = file.metadata()?.permissions().mode() & 0o7777;
    let mut text = Zeroizing::new(String::new());
    file.read_to_string(&mut text)?;
    Ok((text, mode))
}

fn read(path: &Path) -> Result<(Zeroizing<String>, u32), ConfigError> {
    read_private(path).map_err(|source| ConfigError::Read { path: path.into(), source })
}

/// The parser's message with its line and column, but without the excerpt of the file that the
/// parser would show: that line may hold the private key.
fn parse<T: for<'de> Deserialize<'de>>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let place = e.span().map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: ")
        });
        ConfigError::Parse { path: path.into(), message: format!("{}{}", place.unwrap_or_default(), e.message()) }
    })
}

/// Reads `private_key_file`: private to its owner, one base64 key (surrounding whitespace is fine).
fn load_key_file(path: &Path) -> Result<PrivateKey, ConfigError> {
    let (text, mode) = read_private(path).map_err(|source| ConfigError::KeyFileRead { path: path.into(), source })?;
    if mode & GROUP_OTHER_BITS != 0 {
        return Err(ConfigError::KeyFileExposed { path: path.into(), mode });
    }
    PrivateKey::from_base64(&text).map_err(|_| ConfigError::KeyFileInvalid { path: path.into() })
}

/// The daemon's key from exactly one of `private_key` and `private_key_file`. `mode` is the config
/// file's (`None`: not read from a file, as in tests); an inline key needs a private config file.
fn resolve_key(
    path: &Path,
    mode: Option<u32>,
    inline: &mut Option<PrivateKey>,
    file: &mut Option<PathBuf>,
) -> Result<(), ConfigError> {
    match (&inline, &file) {
        (Some(_), Some(_)) => Err(invalid(
            path,
            "both private_key and private_key_file are set: keep one (private_key_file keeps the secret out of \
             the config file)"
                .into(),
        )),
        (None, None) => Err(invalid(
            path,
            "no private key: set private_key_file to a file written by `roamtun genkey` (or private_key to the key \
             itself)"
                .into(),
        )),
        (Some(_), None) => match mode {
            Some(mode) if mode & GROUP_OTHER_BITS != 0 => Err(ConfigError::ConfigExposed { path: path.into(), mode }),
            _ => Ok(()),
        },
        (None, Some(key_path)) => {
            let key_path = match path.parent() {
                Some(dir) if key_path.is_relative() => dir.join(key_path),
                _ => key_path.clone(),
            };
            *inline = Some(load_key_file(&key_path)?);
            *file = Some(key_path);
            Ok(())
        }
    }
}

fn invalid(path: &Path, message: String) -> ConfigError {
    ConfigError::Invalid { path: path.into(), message }
}

/// [`invalid`] for a rule that spans keys, pointing at the line of the key at `key` in `text`.
fn invalid_at(path: &Path, text: &str, key: &[Step], message: String) -> ConfigError {
    match line_of(text, key) {
        Some(line) => invalid(path, format!("line {line}: {message}")),
        None => invalid(path, message),
    }
}

/// A parse error, or the plainer message `mistake` finds for tables written the wrong way (when it
/// explains this error, not another one earlier in the file).
fn or_mistake(path: &Path, text: &str, err: ConfigError, mistake: fn(&str, &str) -> Option<String>) -> ConfigError {
    let ConfigError::Parse { message: said, .. } = &err else { return err };
    match mistake(text, said) {
        Some(message) => ConfigError::Parse { path: path.into(), message },
        None => err,
    }
}

fn check_tun(path: &Path, tun: &mut TunConfig, default_name: &str) -> Result<(), ConfigError> {
    if tun.name.is_empty() {
        tun.name = default_name.into();
    }
    if tun.name.is_empty() || tun.name.len() > 15 {
        return Err(invalid(
            path,
            format!("tun.name {:?} must be 1 to 15 characters (a Linux interface name)", tun.name),
        ));
    }
    if tun.mtu < 1280 {
        return Err(invalid(path, format!("tun.mtu {} is below 1280, the IPv6 minimum", tun.mtu)));
    }
    Ok(())
}

/// Streams per session whose offsets fit one CONTROL frame (SWITCH_UNEXPECTED: 17 bytes + 12 per stream).
pub const MAX_TCP_FLOWS: usize = 5000;

/// More threads than this only add switching: the engine task is one of them either way.
pub const MAX_WORKER_THREADS: usize = 64;

/// Floors below which a budget or timeout makes the daemon useless (or spin).
fn check_tuning(path: &Path, t: &Tuning) -> Result<(), ConfigError> {
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

impl ClientConfig {
    /// Reads and checks `path`; refuses a private key that other users could read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, mode) = read(path)?;
        Self::parse(path, &text, Some(mode))
    }

    /// As [`ClientConfig::load`] for text that did not come from a file (the permission of the
    /// config file is not checked; `private_key_file` is).
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse(path, text, None)
    }

    /// The daemon's private key, from `private_key` or `private_key_file`.
    pub fn private_key(&self) -> &PrivateKey {
        // Cannot fail: `parse` refuses a config that ends up without a key.
        self.private_key.as_ref().expect("config has a private key")
    }

    fn parse(path: &Path, text: &str, mode: Option<u32>) -> Result<Self, ConfigError> {
        let mut c: ClientConfig =
            parse(path, text).map_err(|e| or_mistake(path, text, e, crate::config_shape::client_mistake))?;
        resolve_key(path, mode, &mut c.private_key, &mut c.private_key_file)?;
        check_tun(path, &mut c.tun, "roam0")?;
        check_tuning(path, &c.tuning)?;
        let names = c.uplink_names();
        let uplink = |i: usize| [Step::Key("uplinks"), Step::Index(i)];
        if let Some(i) = names.iter().position(|n| n.is_empty() || n.len() > 15 || n.contains('/')) {
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: {:?} is not a Linux interface name", names[i]),
            ));
        }
        if let Some(i) = names.iter().enumerate().position(|(i, n)| names[..i].contains(n)) {
            return Err(invalid_at(path, text, &uplink(i), format!("uplinks: {:?} is named twice", names[i])));
        }
        if let Some(i) = names.iter().position(|n| *n == c.tun.name) {
            // The relay would try to carry itself through its own tunnel.
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: {:?} is this client's own TUN, not an uplink", c.tun.name),
            ));
        }
        if let Some(i) = c.uplinks.iter().position(|u| u.kind.as_deref().is_some_and(|k| !UPLINK_KINDS.contains(&k))) {
            let u = &c.uplinks[i];
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!(
                    "uplinks: kind {:?} of {:?} is not one of {UPLINK_KINDS:?}",
                    u.kind.as_deref().unwrap_or(""),
                    u.name
                ),
            ));
        }
        if let Some(i) = c.uplinks.iter().position(|u| u.cost_per_gib.is_nan() || u.cost_per_gib < 0.0) {
            let name = &c.uplinks[i].name;
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: cost_per_gib of {name:?} must be 0 or more"),
            ));
        }
        if let Some(i) = c.uplinks.iter().position(|u| u.cap_gib.is_some_and(|g| g.is_nan() || g <= 0.0)) {
            let name = &c.uplinks[i].name;
            return Err(invalid_at(
                path,
                text,
                &uplink(i),
                format!("uplinks: cap_gib of {name:?} must be more than 0"),
            ));
        }
        let address = [Step::Key("server"), Step::Key("address")];
        if c.server.addresses.is_empty() {
            return Err(invalid_at(path, text, &address, "[server] address must name at least one address".into()));
        }
        if let Some(i) = c.server.addresses.iter().enumerate().position(|(i, a)| c.server.addresses[..i].contains(a)) {
            let key = [address[0], address[1], Step::Index(i)];
            return Err(invalid_at(
                path,
                text,
                &key,
                format!("[server] address: {} is named twice", c.server.addresses[i]),
            ));
        }
        let unbound = c.uplinks.is_empty();
        for server in &c.server.addresses {
            if let Some(i) = c.routes.iter().position(|p| unbound && prefix_contains(p, server.ip())) {
                let p = &c.routes[i];
                // The relay's own packets would enter the TUN they are meant to carry.
                return Err(invalid_at(
                    path,
                    text,
                    &[Step::Key("routes"), Step::Index(i)],
                    format!(
                        "the server address {} lies inside the routed prefix {p}: the relay connection would loop \
                         into the TUN. Name the uplinks (uplinks = [\"eth0\", …]): the relay is then bound to them \
                         and never follows a route into the TUN",
                        server.ip()
                    ),
                ));
            }
        }
        check_routing(path, &c.routing, c.uplinks.len())?;
        if c.virtual_ips.is_empty() {
            return Err(invalid_at(
                path,
                text,
                &[Step::Key("virtual_ips")],
                "virtual_ips must name at least one address".into(),
            ));
        }
        if c.routes.is_empty() {
            return Err(invalid_at(
                path,
                text,
                &[Step::Key("routes")],
                "routes must name at least one prefix to send through the tunnel".into(),
            ));
        }
        check_dns(path, text, &c.dns)?;
        Ok(c)
    }
}

/// `dns`: addresses a resolver can be asked at (not unspecified, not multicast), each once.
fn check_dns(path: &Path, text: &str, dns: &[IpAddr]) -> Result<(), ConfigError> {
    for (i, ip) in dns.iter().enumerate() {
        let at = [Step::Key("dns"), Step::Index(i)];
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid_at(path, text, &at, format!("dns: {ip} is not the address of a DNS server")));
        }
        if dns[..i].contains(ip) {
            return Err(invalid_at(path, text, &at, format!("dns: {ip} is named twice")));
        }
    }
    Ok(())
}

impl ServerConfig {
    /// Reads and checks `path`; refuses a private key that other users could read.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, mode) = read(path)?;
        Self::parse(path, &text, Some(mode))
    }

    /// As [`ServerConfig::load`] for text that did not come from a file.
    pub fn from_toml(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse(path, text, None)
    }

    /// The daemon's private key, from `private_key` or `private_key_file`.
    pub fn private_key(&self) -> &PrivateKey {
        // Cannot fail: `parse` refuses a config that ends up without a key.
        self.private_key.as_ref().expect("config has a private key")
    }

    fn parse(path: &Path, text: &str, mode: Option<u32>) -> Result<Self, ConfigError> {
        let mut c: ServerConfig =
            parse(path, text).map_err(|e| or_mistake(path, text, e, crate::config_shape::server_mistake))?;
        resolve_key(path, mode, &mut c.private_key, &mut c.private_key_file)?;
        check_tun(path, &mut c.tun, "roamsrv0")?;
        check_tuning(path, &c.tuning)?;
        if c.listen.is_empty() {
            return Err(invalid_at(path, text, &[Step::Key("listen")], "listen must name at least one address".into()));
        }
        if let Some(i) = c.listen.iter().enumerate().position(|(i, a)| c.listen[..i].contains(a)) {
            let key = [Step::Key("listen"), Step::Index(i)];
            return Err(invalid_at(path, text, &key, format!("listen: {} is named twice", c.listen[i])));
        }
        c.peer_files = vec![None; c.peers.len()];
        if let Some(dir) = c.peers_dir.clone() {
            // Relative to the config file, like a path in any other key would be read by a person.
            let dir = path.parent().map_or(dir.clone(), |base| base.join(&dir));
            for (peer, file) in read_peers_dir(&dir)? {
                c.peers.push(peer);
                c.peer_files.push(Some(file));
            }
        }
        if c.peers.is_empty() {
            return Err(invalid(
                path,
                "no [[peer]] is configured (and peers_dir holds none): add one per client (name, public_key, virtual_ips)"
                    .into(),
            ));
        }
        let mut owners: BTreeMap<IpAddr, &str> = BTreeMap::new();
        let mut keys: BTreeMap<PublicKey, &str> = BTreeMap::new();
        for ip in &c.virtual_ips {
            owners.insert(*ip, "the server itself (virtual_ips)");
        }
        for (n, peer) in c.peers.iter().enumerate() {
            let at = |key: &'static str| [Step::Key("peer"), Step::Index(n), Step::Key(key)];
            // A peer from peers_dir: its errors name its file.
            let invalid_at = |path: &Path, text: &str, key: &[Step], message: String| match &c.peer_files[n] {
                Some(file) => invalid(file, message),
                None => invalid_at(path, text, key, message),
            };
            if let Some(other) = keys.insert(peer.public_key, &peer.name) {
                let message = format!("peer {:?} has the same public key as peer {other:?}", peer.name);
                return Err(invalid_at(path, text, &at("public_key"), message));
            }
            if peer.switch_timeout_secs == Some(0) {
                let message = format!("peer {:?}: switch_timeout_secs = 0 is below the minimum 1", peer.name);
                return Err(invalid_at(path, text, &at("switch_timeout_secs"), message));
            }
            if peer.virtual_ips.is_empty() {
                let message = format!("peer {:?} has no virtual_ips", peer.name);
                return Err(invalid_at(path, text, &at("virtual_ips"), message));
            }
            for (i, ip) in peer.virtual_ips.iter().enumerate() {
                let [peer_key, index, ips] = at("virtual_ips");
                let key = [peer_key, index, ips, Step::Index(i)];
                if let Some(other) = owners.insert(*ip, &peer.name) {
                    let message = format!("virtual IP {ip} of peer {:?} is already given to {other}", peer.name);
                    return Err(invalid_at(path, text, &key, message));
                }
                if !c.client_prefixes.iter().any(|p| prefix_contains(p, *ip)) {
                    let message =
                        format!("virtual IP {ip} of peer {:?} is outside every client_prefixes entry", peer.name);
                    return Err(invalid_at(path, text, &key, message));
                }
            }
        }
        Ok(c)
    }

    pub fn peer_by_key(&self, key: &PublicKey) -> Option<&PeerConfig> {
        self.peers.iter().find(|p| p.public_key == *key)
    }
}

/// Whether `ip` lies inside `prefix`.
pub fn prefix_contains(prefix: &Prefix, ip: IpAddr) -> bool {
    match (prefix.addr, ip) {
        (IpAddr::V4(p), IpAddr::V4(a)) => u32::from(p) & mask_v4(prefix.len) == u32::from(a) & mask_v4(prefix.len),
        (IpAddr::V6(p), IpAddr::V6(a)) => u128::from(p) & mask_v6(prefix.len) == u128::from(a) & mask_v6(prefix.len),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> String {
        PrivateKey::generate().unwrap().to_base64().to_string()
    }

    fn server_toml(extra: &str) -> String {
        let pk = PrivateKey::generate().unwrap().public_key();
        format!(
            "private_key = \"{}\"\nlisten = \"198.18.1.1:7700\"\nvirtual_ips = [\"100.64.0.1\"]\n\
             client_prefixes = [\"100.64.0.0/10\"]\n\n[[peer]]\nname = \"laptop\"\npublic_key = \"{pk}\"\n\
             virtual_ips = [\"100.64.0.2\"]\n{extra}",
            key()
        )
    }

    /// A file with these contents and exactly this mode (whatever the umask).
    fn file_with_mode(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_key_file_private_to_its_owner_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap();
        // As `roamtun genkey > server.key` writes it: one line, with its newline.
        file_with_mode(dir.path(), "server.key", &format!("{}\n", key.to_base64().as_str()), 0o600);
        let text = format!("private_key_file = \"server.key\"\n{}", without_inline_key(&server_toml("")));
        let config = file_with_mode(dir.path(), "server.toml", &text, 0o644);
        let c = ServerConfig::load(&config).unwrap();
        assert_eq!(c.private_key().public_key(), key.public_key());
        // Relative to the config file's directory, not to where the daemon was started.
        assert_eq!(c.private_key_file.as_deref(), Some(dir.path().join("server.key").as_path()));
    }

    /// The inline key line of a generated config.
    fn inline_key(text: &str) -> String {
        let line = text.lines().find(|l| l.starts_with("private_key = ")).unwrap();
        line.trim_start_matches("private_key = ").trim_matches('"').to_string()
    }

    fn without_inline_key(text: &str) -> String {
        text.lines().filter(|l| !l.starts_with("private_key = ")).collect::<Vec<_>>().join("\n")
    }

    #[test]
    fn a_key_file_others_can_read_or_write_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let key = PrivateKey::generate().unwrap().to_base64();
        for mode in [0o644, 0o640, 0o620, 0o602] {
            let key_path = file_with_mode(dir.path(), "client.key", key.as_str(), mode);
            let text =
                format!("private_key_file = \"{}\"\n{}", key_path.display(), without_inline_key(&server_toml("")));
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            let want = format!(
                "private_key_file {} is accessible by other users (mode {mode:04o}); it must be readable by its \
                 owner only: chmod 600 {}",
                key_path.display(),
                key_path.display()
            );
            assert_eq!(err, want);
        }
    }

    #[test]
    fn an_inline_key_in_a_config_file_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with_mode(dir.path(), "server.toml", &server_toml(""), 0o644);
        let err = ServerConfig::load(&path).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "config file {p} holds private_key and is accessible by other users (mode 0644); make it readable by \
                 its owner only (chmod 600 {p}) or move the key to a private_key_file",
                p = path.display()
            )
        );
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        ServerConfig::load(&path).unwrap();
        // Without the key in it, the config file may be readable by all.
        let key = file_with_mode(dir.path(), "server.key", &inline_key(&server_toml("")), 0o400);
        let text = format!("private_key_file = \"{}\"\n{}", key.display(), without_inline_key(&server_toml("")));
        ClientConfig::load(&file_with_mode(dir.path(), "c.toml", &text, 0o644)).unwrap_err();
        ServerConfig::load(&file_with_mode(dir.path(), "s.toml", &text, 0o644)).unwrap();
    }

    #[test]
    fn exactly_one_private_key_source_is_required() {
        let dir = tempfile::tempdir().unwrap();
        let key = file_with_mode(dir.path(), "k", &inline_key(&server_toml("")), 0o600);
        let both = format!("private_key_file = \"{}\"\n{}", key.display(), server_toml(""));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &both).unwrap_err().to_string();
        assert!(err.contains("both private_key and private_key_file are set"), "{err}");
        let neither = without_inline_key(&server_toml(""));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &neither).unwrap_err().to_string();
        assert!(err.contains("no private key: set private_key_file"), "{err}");
        let missing = format!("private_key_file = \"{}/absent.key\"\n{neither}", dir.path().display());
        let err = ServerConfig::from_toml(Path::new("s.toml"), &missing).unwrap_err();
        assert!(err.to_string().starts_with("cannot read private_key_file "), "{err}");
        let garbage = file_with_mode(dir.path(), "bad.key", "c2VjcmV0LWJ1dC1zaG9ydA==\n", 0o600);
        let text = format!("private_key_file = \"{}\"\n{neither}", garbage.display());
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("does not hold a 44-character base64 Ed25519 key"), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn a_malformed_private_key_is_never_echoed() {
        let base = server_toml("");
        let good = inline_key(&base);
        // A real key with one character lost, one with a typo, and things that are not keys at all.
        let mut typo = good.clone();
        typo.replace_range(3..4, "!");
        for bad in [&good[1..], typo.as_str(), "hunter2hunter2", "", "c2VjcmV0IHNlY3JldCBzZWNyZXQgc2VjcmV0IHNlY3JldA=="]
        {
            let text = base.replace(&good, bad);
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            assert!(err.contains("line 1") && err.contains(BAD_PRIVATE_KEY), "{err}");
            assert!(bad.is_empty() || !err.contains(bad), "the key is echoed: {err}");
        }
        // Nor does a syntax error on its line quote it.
        let text = base.replace(&format!("\"{good}\""), &format!("\"{good}"));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("line 1") && !err.contains(&good), "{err}");
        // Nor a misspelt key name.
        let text = base.replace("private_key =", "privat_key =");
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("privat_key") && !err.contains(&good), "{err}");
    }

    #[test]
    fn control_group_names_a_group_of_this_host() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &format!("control_group = \"root\"\n{}", server_toml("")))
            .unwrap();
        assert_eq!(c.control_group, Some(ControlGroup { name: "root".into(), gid: 0 }));
        let err = ServerConfig::from_toml(
            Path::new("s.toml"),
            &format!("control_group = \"no-such-group-rt\"\n{}", server_toml("")),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("control_group \"no-such-group-rt\" is not a group on this host"), "{err}");
        assert!(ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap().control_group.is_none());
    }

    #[test]
    fn a_valid_server_config_parses_with_defaults() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap();
        assert_eq!(c.tun.name, "roamsrv0");
        assert_eq!(c.tun.mtu, 65535);
        assert_eq!(c.peers[0].virtual_ips, vec!["100.64.0.2".parse::<IpAddr>().unwrap()]);
        assert!(!c.exit);
    }

    #[test]
    fn a_bad_value_is_reported_with_its_line() {
        let text =
            server_toml("").replace("client_prefixes = [\"100.64.0.0/10\"]", "client_prefixes = [\"100.64.0.0\"]");
        let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("s.toml") && err.contains("line 4") && err.contains("needs a length"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err =
            ServerConfig::from_toml(Path::new("s.toml"), &server_toml("colour = \"blue\"")).unwrap_err().to_string();
        assert!(err.contains("colour") && err.contains("line"), "{err}");
    }

    #[test]
    fn a_virtual_ip_given_twice_is_refused() {
        let pk = PrivateKey::generate().unwrap().public_key();
        let extra = format!("\n[[peer]]\nname = \"phone\"\npublic_key = \"{pk}\"\nvirtual_ips = [\"100.64.0.2\"]\n");
        let err = ServerConfig::from_toml(Path::new("s.toml"), &server_toml(&extra)).unwrap_err().to_string();
        assert!(err.contains("100.64.0.2") && err.contains("laptop"), "{err}");
    }

    #[test]
    fn dns_servers_are_addresses_named_once() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\nDNS\n\
             [server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let load = |dns: &str| ClientConfig::from_toml(Path::new("c.toml"), &text.replace("DNS", dns));
        assert_eq!(load("").unwrap().dns, Vec::<IpAddr>::new(), "DNS is left alone by default");
        let c = load("dns = [\"100.64.0.1\", \"fd64::1\"]").unwrap();
        assert_eq!(c.dns, ["100.64.0.1".parse::<IpAddr>().unwrap(), "fd64::1".parse().unwrap()]);
        let err = load("dns = [\"100.64.0.1\", \"100.64.0.1\"]").unwrap_err().to_string();
        assert!(err.contains("line 4: dns: 100.64.0.1 is named twice"), "{err}");
        let err = load("dns = [\"0.0.0.0\"]").unwrap_err().to_string();
        assert!(err.contains("dns: 0.0.0.0 is not the address of a DNS server"), "{err}");
        let err = load("dns = [\"ff02::fb\"]").unwrap_err().to_string();
        assert!(err.contains("ff02::fb is not the address"), "{err}");
        assert!(load("dns = [\"resolver.example\"]").is_err(), "a name is not an address");
    }

    #[test]
    fn prefixes_contain_what_they_should() {
        let p: Prefix = "100.64.0.0/10".parse().unwrap();
        assert!(prefix_contains(&p, "100.127.255.255".parse().unwrap()));
        assert!(!prefix_contains(&p, "100.128.0.0".parse().unwrap()));
        let all: Prefix = "0.0.0.0/0".parse().unwrap();
        assert!(prefix_contains(&all, "198.18.0.1".parse().unwrap()));
        assert!("100.64.0.0/33".parse::<Prefix>().is_err());
        let err = "100.64.0.1/10".parse::<Prefix>().unwrap_err();
        assert!(err.contains("did you mean 100.64.0.0/10"), "{err}");
    }

    #[test]
    fn a_route_that_would_carry_the_relay_itself_is_refused() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"0.0.0.0/0\"]\n\
             [server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let err = ClientConfig::from_toml(Path::new("c.toml"), &text).unwrap_err().to_string();
        assert!(err.contains("198.18.1.1") && err.contains("loop"), "{err}");
        let ok = text.replace("0.0.0.0/0", "100.64.0.0/10");
        let c = ClientConfig::from_toml(Path::new("c.toml"), &ok).unwrap();
        assert_eq!(c.tun.name, "roam0");
        // Bound to named uplinks, the relay cannot follow the route into the TUN: system-wide is fine.
        let bound = text.replace("routes =", "uplinks = [\"wlan0\", \"wwan0\"]\nroutes =");
        let c = ClientConfig::from_toml(Path::new("c.toml"), &bound).unwrap();
        assert_eq!(c.uplink_names(), ["wlan0", "wwan0"]);
        // An entry may be a table with what the decision task needs.
        let tables = text.replace(
            "routes =",
            "uplinks = [\"eth0\", { name = \"wwan0\", metered = true, cost_per_gib = 2.5 }]\nroutes =",
        );
        let c = ClientConfig::from_toml(Path::new("c.toml"), &tables).unwrap();
        assert_eq!(
            c.uplinks[1],
            UplinkConfig { name: "wwan0".into(), metered: true, cost_per_gib: 2.5, kind: None, cap_gib: None }
        );
        let capped = tables.replace("cost_per_gib = 2.5", "cap_gib = 2");
        assert_eq!(ClientConfig::from_toml(Path::new("c.toml"), &capped).unwrap().uplinks[1].cap_gib, Some(2.0));
        let err = ClientConfig::from_toml(Path::new("c.toml"), &tables.replace("cost_per_gib = 2.5", "cap_gib = 0"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cap_gib of \"wwan0\" must be more than 0"), "{err}");
        let kind = tables.replace("cost_per_gib = 2.5", "kind = \"lte\"");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &kind).unwrap_err().to_string();
        assert!(err.contains("kind \"lte\" of \"wwan0\" is not one of"), "{err}");
        let typo = tables.replace("metered =", "metred =");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &typo).unwrap_err().to_string();
        assert!(err.contains("an interface name, or a table") && err.contains("line"), "{err}");
        let own = text.replace("routes =", "uplinks = [\"eth0\", \"roam0\"]\nroutes =");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &own).unwrap_err().to_string();
        assert!(err.contains("\"roam0\" is this client's own TUN"), "{err}");
        let bad = text.replace("routes =", "uplinks = [\"a/b\"]\nroutes =");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &bad).unwrap_err().to_string();
        assert!(err.contains("\"a/b\" is not a Linux interface name"), "{err}");
    }

    #[test]
    fn the_server_may_be_reached_at_one_address_per_family() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let text = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n\
             [server]\naddress = [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]\npublic_key = \"{sk}\"\n",
            key()
        );
        let c = ClientConfig::from_toml(Path::new("c.toml"), &text).unwrap();
        let want: Vec<SocketAddr> = vec!["198.18.1.1:7700".parse().unwrap(), "[2001:2::1]:7700".parse().unwrap()];
        assert_eq!(c.server.addresses, want);
        let twice = text.replace("[2001:2::1]", "198.18.1.1");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &twice).unwrap_err().to_string();
        assert!(err.contains("198.18.1.1:7700 is named twice"), "{err}");
        let none = text.replace("[\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]", "[]");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &none).unwrap_err().to_string();
        assert!(err.contains("at least one address"), "{err}");
        let host = text.replace("[\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]", "\"server.example:7700\"");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &host).unwrap_err().to_string();
        assert!(err.contains("expected \"ip:port\"") && err.contains("line 5"), "{err}");
        // Unbound, the second address inside a routed prefix is refused like the first.
        let looped = text.replace("100.64.0.0/10", "::/0");
        let err = ClientConfig::from_toml(Path::new("c.toml"), &looped).unwrap_err().to_string();
        assert!(err.contains("2001:2::1") && err.contains("loop"), "{err}");
        let server = server_toml("")
            .replace("listen = \"198.18.1.1:7700\"", "listen = [\"198.18.1.1:7700\", \"[2001:2::1]:7700\"]");
        assert_eq!(ServerConfig::from_toml(Path::new("s.toml"), &server).unwrap().listen, want);
    }

    #[test]
    fn routing_is_off_by_default_and_checked() {
        let sk = PrivateKey::generate().unwrap().public_key();
        let base = format!(
            "private_key = \"{}\"\nvirtual_ips = [\"100.64.0.2\"]\nroutes = [\"100.64.0.0/10\"]\n\
             uplinks = [\"wlan0\", \"wwan0\"]\n[server]\naddress = \"198.18.1.1:7700\"\npublic_key = \"{sk}\"\n",
            key()
        );
        let load = |extra: &str| ClientConfig::from_toml(Path::new("c.toml"), &format!("{base}{extra}"));
        assert_eq!(load("").unwrap().routing, RoutingConfig::default());
        assert!(!RoutingConfig::default().per_uplink_tables);
        let on = load("[routing]\nper_uplink_tables = true\ntable_base = 100\nrule_priority = 900\n").unwrap();
        assert_eq!(on.routing, RoutingConfig { per_uplink_tables: true, table_base: 100, rule_priority: 900 });

        let err = load("[routing]\ntable_base = 252\n").unwrap_err().to_string();
        assert!(err.contains("tables 252..=253 include the kernel's table 253"), "{err}");
        let err = load("[routing]\ntable_base = 4294967295\n").unwrap_err().to_string();
        assert!(err.contains("leaves no room for 2 tables"), "{err}");
        for priority in [0, 32766] {
            let err = load(&format!("[routing]\nrule_priority = {priority}\n")).unwrap_err().to_string();
            assert!(err.contains("must be 1 to 32765"), "{err}");
        }
        let err = load("[routing]\ntable = 5\n").unwrap_err().to_string();
        assert!(err.contains("table") && err.contains("line"), "{err}");
        let unbound = base.replace("uplinks = [\"wlan0\", \"wwan0\"]\n", "");
        let err =
            ClientConfig::from_toml(Path::new("c.toml"), &format!("{unbound}[routing]\nper_uplink_tables = true\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("per_uplink_tables needs uplinks"), "{err}");
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
    fn destination_policy_and_per_peer_limits_parse_and_are_checked() {
        let c = ServerConfig::from_toml(Path::new("s.toml"), &server_toml("")).unwrap();
        assert!(c.allowed_destinations.is_empty() && !c.client_to_client);
        let t = &c.tuning;
        assert_eq!((t.max_flows_per_session, t.max_udp_flows_per_session, t.max_paths_per_session), (1024, 1024, 8));
        let text = format!(
            "allowed_destinations = [\"198.18.9.0/24\", \"fd00:9::/64\"]\nclient_to_client = true\n{}\n[tuning]\n\
             max_flows_per_session = 20\nmax_udp_flows_per_session = 30\nmax_paths_per_session = 3\n",
            server_toml("")
        );
        let c = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap();
        assert_eq!(c.allowed_destinations, vec!["198.18.9.0/24".parse().unwrap(), "fd00:9::/64".parse().unwrap()]);
        assert!(c.client_to_client);
        let t = &c.tuning;
        assert_eq!((t.max_flows_per_session, t.max_udp_flows_per_session, t.max_paths_per_session), (20, 30, 3));
        let bad = format!("allowed_destinations = [\"198.18.9.1/24\"]\n{}", server_toml(""));
        let err = ServerConfig::from_toml(Path::new("s.toml"), &bad).unwrap_err().to_string();
        assert!(err.contains("did you mean 198.18.9.0/24"), "{err}");
        for (key, value, says) in [
            ("max_paths_per_session", 1, "tuning.max_paths_per_session = 1 is below the minimum 2"),
            ("max_flows_per_session", 0, "below the minimum 1"),
            ("max_flows_per_session", 5001, "tuning.max_flows_per_session = 5001 is above the maximum 5000"),
            ("max_udp_flows_per_session", 0, "below the minimum 1"),
        ] {
            let text = server_toml(&format!("\n[tuning]\n{key} = {value}\n"));
            let err = ServerConfig::from_toml(Path::new("s.toml"), &text).unwrap_err().to_string();
            assert!(err.contains(says), "{key} = {value}: {err}");
        }
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
