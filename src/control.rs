//! The local control socket: `roamtun status` asks a running daemon what it is doing.
//!
//! One request per connection, one JSON line each way. The status keys are documented in
//! docs/status.md and only ever gain keys, so scripts can rely on them.
//!
//! Only root, the daemon's own user and members of `control_group` may use the socket: the file's
//! mode and group say so to the kernel, and each connection's peer credentials are checked again,
//! so that a mode loosened by hand does not open the daemon to every local user.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::config::ControlGroup;
use roamtun_proto::relay::core::SwitchReport;
use roamtun_proto::relay::engine as proto;
use roamtun_proto::transition::SwitchKind;

/// A client must send its request this soon after connecting, so that idle connections do not
/// pile up.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed accept (EMFILE and the like), wait this long before the next one: the error
/// would come straight back.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Failed accepts are logged at most once per this, with the count of those not logged.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Who may use the control socket, and how long a connection may stay silent.
#[derive(Debug, Clone)]
pub struct Access {
    /// Besides root and the daemon's user: members of this group. The socket is then owned by the
    /// group with mode 0660, else 0600.
    pub group: Option<ControlGroup>,
    pub request_timeout: Duration,
}

impl Access {
    pub fn new(group: Option<ControlGroup>) -> Self {
        Access { group, request_timeout: REQUEST_TIMEOUT }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Client: move the session to this uplink now (a planned switch). Answered when it is done.
    Switch {
        uplink: String,
    },
    /// Client: use this uplink whenever it is usable (`None`: back to the automatic choice).
    Pin {
        uplink: Option<String>,
    },
    /// Server: read the config file and `peers_dir` again and apply the peers' changes.
    Reload,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<Status>),
    Switched(SwitchRecord),
    Done { message: String },
    Error { message: String },
}

/// Everything `roamtun status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// "client" or "server".
    pub role: String,
    pub version: String,
    pub uptime_secs: u64,
    pub tun: String,
    /// Client: its stable virtual IPs. Server: its own addresses on the TUN.
    pub virtual_ips: Vec<IpAddr>,
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub peers: Vec<PeerStatus>,
    pub tun_counters: TunCounters,
    /// Server: TLS handshakes refused (unknown key, bad hello).
    pub handshakes_refused: u64,
    /// Server: connections closed at accept, their source past `max_pending_handshakes_per_source`.
    #[serde(default)]
    pub connections_over_limit: u64,
    /// Server: connections in their handshake closed for a newer one (`max_pending_handshakes`).
    #[serde(default)]
    pub handshakes_evicted: u64,
    /// Server: connections in their handshake now.
    #[serde(default)]
    pub handshakes_pending: u64,
    /// TLS traffic key refreshes sent on this daemon's paths since start (`tuning.rekey_interval_secs`).
    #[serde(default)]
    pub tls_key_updates: u64,
    /// Client: its uplinks (the configured ones, in order of preference).
    #[serde(default)]
    pub uplinks: Vec<UplinkStatus>,
    /// Client: the tunnel's DNS servers as applied to the host (`dns`); null when not set.
    #[serde(default)]
    pub dns: Option<DnsStatus>,
    /// Client: the LAN it carries as a router (`[lan]`).
    #[serde(default)]
    pub lan: Option<LanStatus>,
}

/// The client's `dns` as applied (src/dns/).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsStatus {
    /// "systemd-resolved" (set on the TUN's link over D-Bus) or "resolv.conf" (the file replaced).
    pub backend: String,
    pub servers: Vec<IpAddr>,
    /// resolv.conf: the file replaced (/etc/resolv.conf, or where its symlink points).
    #[serde(default)]
    pub file: Option<std::path::PathBuf>,
    /// systemd-resolved: the link's routing domains (`~.` for a full tunnel: every name).
    #[serde(default)]
    pub domains: Vec<String>,
}

/// A router's `[lan]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LanStatus {
    /// "masquerade" or "routed".
    pub mode: String,
    pub prefixes: Vec<String>,
}

/// One uplink of the client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UplinkStatus {
    pub name: String,
    /// "active" (the session's path), "standby" (a warm path), "up" (usable, no path), "unusable" (up,
    /// but its last attempt could not reach the server), "down" or "absent".
    pub state: String,
    /// "ethernet", "wifi" or "wwan" (configured, or what sysfs says).
    #[serde(default)]
    pub kind: String,
    pub addresses: Vec<IpAddr>,
    /// The smoothed round trip of the probes on the path over this uplink, if one is open.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// The round trip's mean deviation on the relay connection over this uplink (the kernel's).
    #[serde(default)]
    pub jitter_ms: Option<f64>,
    /// The share of segments the relay connection over this uplink retransmitted lately, in the
    /// direction that loses more (ours, or the server's as it reports it), 0.0–1.0.
    #[serde(default)]
    pub loss: Option<f64>,
    /// Its capacity as the kernel measured it (peak delivery rate while the relay was not
    /// application-limited, decaying); null until it has carried a busy transfer.
    #[serde(default)]
    pub bandwidth_mbps: Option<f64>,
    /// Bytes the relay carried over this uplink, both ways: with a cap, since `period_start`
    /// (restarts included); without one, since the daemon started.
    #[serde(default)]
    pub used_bytes: u64,
    /// Its configured `cap_gib` in bytes, if any.
    #[serde(default)]
    pub cap_bytes: Option<u64>,
    /// With a cap: the first day (UTC, `YYYY-MM-DD`) of the period `used_bytes` counts in.
    #[serde(default)]
    pub period_start: Option<String>,
    /// The decision task's score (higher is better; null when unusable) and the reasons.
    #[serde(default)]
    pub score: Option<f64>,
    #[serde(default)]
    pub why: String,
    #[serde(default)]
    pub metered: bool,
    #[serde(default)]
    pub cost_per_gib: f64,
    #[serde(default)]
    pub pinned: bool,
}

/// A session's switches by kind since it began.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SwitchTotals {
    pub planned: u64,
    pub unexpected: u64,
    /// The apps' stalls of the planned switches, summed.
    pub planned_stall_ms: f64,
    pub unexpected_stall_ms: f64,
}

/// One finished uplink switch of a session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchRecord {
    /// "planned" or "unexpected".
    pub kind: String,
    /// The uplinks left and taken (client; the server knows addresses only, see `remote_address`).
    pub from: Option<String>,
    pub to: Option<String>,
    /// The session's epoch after the switch.
    pub epoch: u32,
    /// When it finished (Unix time, ms).
    pub finished_unix_ms: u64,
    /// From the first protocol step to the last.
    pub duration_ms: f64,
    /// How long no stream data went out (stop sending → resume): the pause the apps could see.
    pub stall_ms: f64,
    /// Stream bytes sent again because they were in flight on a lost path.
    pub bytes_replayed: u64,
    /// Datagrams held during the switch and sent after it, and those dropped (hold budget full).
    pub datagrams_held: u64,
    pub datagrams_dropped: u64,
    /// The spec steps in order, with their time since the first one.
    pub steps: Vec<SwitchStep>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SwitchStep {
    pub step: String,
    pub at_ms: f64,
}

impl SwitchRecord {
    /// The core's report, with its finish put on the wall clock: `unix_now_ms` and `now` are the
    /// same moment on the wall clock and on the core's clock.
    pub fn new(report: &SwitchReport, now: roamtun_proto::time::Instant, unix_now_ms: u64) -> Self {
        let ms = |d: roamtun_proto::time::Duration| d.as_millis_f64();
        SwitchRecord {
            kind: match report.kind {
                SwitchKind::Planned => "planned".into(),
                SwitchKind::Unexpected => "unexpected".into(),
            },
            from: report.from.clone(),
            to: report.to.clone(),
            epoch: report.epoch,
            finished_unix_ms: unix_now_ms.saturating_sub((now - report.finished).total_millis()),
            duration_ms: ms(report.duration),
            stall_ms: ms(report.stall),
            bytes_replayed: report.bytes_replayed,
            datagrams_held: report.datagrams_held,
            datagrams_dropped: report.datagrams_dropped,
            steps: report
                .steps
                .iter()
                .map(|(step, at)| SwitchStep { step: step.to_string(), at_ms: ms(*at) })
                .collect(),
        }
    }
}

/// The counters of one session (docs/status.md `counters`); all only grow.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionCounters {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub datagrams_dropped: u64,
    pub datagrams_spoofed: u64,
    pub frames_malformed: u64,
    pub streams_violated: u64,
    pub tcp_streams_opened: u64,
    pub bytes_resent: u64,
    pub datagrams_held: u64,
    pub datagrams_dropped_switching: u64,
    #[serde(default)]
    pub streams_refused_limit: u64,
    #[serde(default)]
    pub datagrams_refused_limit: u64,
    #[serde(default)]
    pub streams_forbidden: u64,
    #[serde(default)]
    pub datagrams_forbidden: u64,
    /// From the core, not the engine (filled in by the status).
    #[serde(default)]
    pub paths_refused_limit: u64,
    #[serde(default)]
    pub paths_lost_not_reading: u64,
}

impl From<&proto::SessionCounters> for SessionCounters {
    fn from(c: &proto::SessionCounters) -> Self {
        SessionCounters {
            bytes_sent: c.bytes_sent,
            bytes_received: c.bytes_received,
            datagrams_sent: c.datagrams_sent,
            datagrams_received: c.datagrams_received,
            datagrams_dropped: c.datagrams_dropped,
            datagrams_spoofed: c.datagrams_spoofed,
            frames_malformed: c.frames_malformed,
            streams_violated: c.streams_violated,
            tcp_streams_opened: c.tcp_streams_opened,
            bytes_resent: c.bytes_resent,
            datagrams_held: c.datagrams_held,
            datagrams_dropped_switching: c.datagrams_dropped_switching,
            streams_refused_limit: c.streams_refused_limit,
            datagrams_refused_limit: c.datagrams_refused_limit,
            streams_forbidden: c.streams_forbidden,
            datagrams_forbidden: c.datagrams_forbidden,
            paths_refused_limit: 0,
            paths_lost_not_reading: 0,
        }
    }
}

/// The TUN side's counters (docs/status.md `tun_counters`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TunCounters {
    pub packets_unroutable: u64,
    pub packets_unsupported: u64,
    pub flows_refused_limit: u64,
}

impl From<&proto::TunCounters> for TunCounters {
    fn from(c: &proto::TunCounters) -> Self {
        TunCounters {
            packets_unroutable: c.packets_unroutable,
            packets_unsupported: c.packets_unsupported,
            flows_refused_limit: c.flows_refused_limit,
        }
    }
}

/// One relay peer: the server for a client, each connected or configured client for a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: String,
    pub connected: bool,
    pub virtual_ips: Vec<IpAddr>,
    /// Server: the networks behind this client (`[[peer]] lan_prefixes`), routed to it.
    #[serde(default)]
    pub lan_prefixes: Vec<String>,
    /// Our end of the relay connection: the uplink address in use.
    pub local_address: Option<SocketAddr>,
    /// The interface that holds `local_address` (client: the uplink).
    pub uplink: Option<String>,
    pub remote_address: Option<SocketAddr>,
    pub connected_secs: Option<u64>,
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub queued_bytes: usize,
    pub counters: SessionCounters,
    /// How many times the relay connection was (re)established.
    pub connects: u64,
    pub last_error: Option<String>,
    /// The session id (shared by both daemons) and its epoch (+1 per switch).
    #[serde(default)]
    pub session: Option<u64>,
    #[serde(default)]
    pub epoch: Option<u32>,
    /// A switch is in progress (or the path is lost and not yet resumed).
    #[serde(default)]
    pub switching: bool,
    /// The smoothed round trip of the probes on the current path.
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    /// The current path's TCP congestion control (tuning.congestion_control, or the host's default
    /// where the kernel refused it).
    #[serde(default)]
    pub congestion_control: Option<String>,
    /// Frames that arrived on a path the session had left (late frames of an old epoch), dropped.
    #[serde(default)]
    pub stale_frames_dropped: u64,
    /// The last switches, oldest first.
    #[serde(default)]
    pub switches: Vec<SwitchRecord>,
    /// Every switch of this session by kind since it began (`switches` keeps only the last few).
    #[serde(default)]
    pub switch_totals: SwitchTotals,
    /// What the session may hold (`[tuning]`, or the peer's own `[[peer]]` keys); absent without
    /// a session.
    #[serde(default)]
    pub limits: Option<LimitsStatus>,
}

/// A session's bounds, as [`PeerStatus::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitsStatus {
    pub tcp_flows: usize,
    pub udp_flows: usize,
    pub paths: usize,
}

/// A request from the socket, with where to send the answer.
pub struct ControlRequest {
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot reach a roamtun daemon at {path} (is it running?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon at {path} gave no valid answer")]
    BadAnswer {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Listens on `path` and forwards each request to `requests`. A stale socket file left by a daemon
/// that died is replaced; a live one is not (two daemons must not share a socket).
///
/// The socket is bound in a directory only the daemon's user can enter, given its mode and group
/// there, and then renamed into place: at no moment can another user connect to it.
pub async fn serve(
    path: &Path,
    access: Access,
    requests: mpsc::Sender<ControlRequest>,
) -> Result<tokio::task::JoinHandle<()>, ControlError> {
    let bind_err = |source| ControlError::Bind { path: path.into(), source };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(bind_err)?;
    if path.exists() && UnixStream::connect(path).await.is_ok() {
        return Err(bind_err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "another daemon answers on it")));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "control.sock".into());
    let staging = dir.join(format!(".{name}.{}.new", std::process::id()));
    let listener = bind_private(&staging, path, access.group.as_ref());
    let _ = std::fs::remove_dir_all(&staging);
    let listener = listener.map_err(bind_err)?;
    Ok(tokio::spawn(accept_loop(listener, access, requests)))
}

/// Binds `staging/sock` (`staging` a fresh directory of mode 0700), sets its mode and group, and
/// renames it to `path`, replacing a stale socket there.
fn bind_private(staging: &Path, path: &Path, group: Option<&ControlGroup>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    // A leftover of a daemon that died between bind and rename.
    let _ = std::fs::remove_dir_all(staging);
    std::fs::DirBuilder::new().mode(0o700).create(staging)?;
    let socket = staging.join("sock");
    let listener = UnixListener::bind(&socket)?;
    let mode = if let Some(group) = group {
        nix::unistd::chown(&socket, None, Some(nix::unistd::Gid::from_raw(group.gid))).map_err(|errno| {
            std::io::Error::new(
                std::io::Error::from(errno).kind(),
                format!("cannot give the socket to control_group {:?}: {errno}", group.name),
            )
        })?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&socket, path)?;
    Ok(listener)
}

async fn accept_loop(listener: UnixListener, access: Access, requests: mpsc::Sender<ControlRequest>) {
    let mut last_logged: Option<std::time::Instant> = None;
    let mut unlogged = 0u64;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let requests = requests.clone();
                let access = access.clone();
                tokio::spawn(async move {
                    if let Err(err) = serve_connection(stream, &access, requests).await {
                        tracing::debug!(%err, "control connection failed");
                    }
                });
            }
            Err(err) => {
                // EMFILE and the like come straight back: wait, and say so now and then, not in a loop.
                if last_logged.is_none_or(|t| t.elapsed() >= ACCEPT_LOG_INTERVAL) {
                    tracing::warn!(%err, not_logged = unlogged, "control socket: accept failed; retrying");
                    last_logged = Some(std::time::Instant::now());
                    unlogged = 0;
                } else {
                    unlogged += 1;
                }
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Why the peer of `stream` may not use the socket, if it may not.
fn refusal(stream: &UnixStream, group: Option<&ControlGroup>) -> Option<String> {
    let cred = match stream.peer_cred() {
        Ok(cred) => cred,
        Err(err) => return Some(format!("cannot tell who is asking ({err})")),
    };
    let uid = cred.uid();
    if uid == 0 || uid == nix::unistd::geteuid().as_raw() {
        return None;
    }
    let Some(group) = group else {
        return Some(format!(
            "uid {uid} may not use this control socket: only root may (set control_group to let a group in)"
        ));
    };
    if cred.gid() == group.gid || in_group(uid, cred.gid(), group.gid) {
        return None;
    }
    Some(format!("uid {uid} may not use this control socket: only root and members of group {:?} may", group.name))
}

/// Whether the user `uid` is a member of `gid` as the group database says (its primary group
/// `primary` counts).
fn in_group(uid: u32, primary: u32, gid: u32) -> bool {
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) else { return false };
    let Ok(name) = std::ffi::CString::new(user.name) else { return false };
    nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(primary))
        .is_ok_and(|groups| groups.iter().any(|g| g.as_raw() == gid))
}

async fn serve_connection(
    stream: UnixStream,
    access: &Access,
    requests: mpsc::Sender<ControlRequest>,
) -> std::io::Result<()> {
    if let Some(why) = refusal(&stream, access.group.as_ref()) {
        tracing::info!(reason = %why, "control connection refused");
        let (_, mut w) = stream.into_split();
        return send(&mut w, &Response::Error { message: format!("refused: {why}") }).await;
    }
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    // One request line, bounded so a stray client cannot make us buffer without limit.
    let mut reader = BufReader::new(r).take(64 * 1024);
    let read = reader.read_line(&mut line);
    let response = match tokio::time::timeout(access.request_timeout, read).await {
        Err(_) => {
            let message = format!("no request within {} ms: closing", access.request_timeout.as_millis());
            return send(&mut w, &Response::Error { message }).await;
        }
        Ok(read) => {
            read?;
            answer(&line, requests).await
        }
    };
    send(&mut w, &response).await
}

async fn answer(line: &str, requests: mpsc::Sender<ControlRequest>) -> Response {
    match serde_json::from_str::<Request>(line) {
        Ok(request) => {
            let (reply, rx) = oneshot::channel();
            if requests.send(ControlRequest { request, reply }).await.is_err() {
                Response::Error { message: "the daemon is shutting down".into() }
            } else {
                rx.await.unwrap_or(Response::Error { message: "the daemon dropped the request".into() })
            }
        }
        Err(err) => Response::Error { message: format!("bad request: {err}") },
    }
}

/// One JSON line, then the end of the connection.
async fn send(w: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

use tokio::io::AsyncReadExt as _;

/// Sends one request to the daemon at `path` and returns its answer.
pub async fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream =
        UnixStream::connect(path).await.map_err(|source| ControlError::Connect { path: path.into(), source })?;
    let bad = |source: Box<dyn std::error::Error + Send + Sync>| ControlError::BadAnswer { path: path.into(), source };
    let (r, mut w) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| bad(e.into()))?;
    line.push(b'\n');
    // A daemon that refuses us answers without reading, and may have closed before we wrote: its
    // answer says why, the broken pipe would not.
    let written = w.write_all(&line).await;
    let mut answer = String::new();
    BufReader::new(r).read_line(&mut answer).await.map_err(|e| bad(e.into()))?;
    match serde_json::from_str(&answer) {
        Ok(response) => Ok(response),
        Err(e) => Err(bad(written.err().map_or_else(|| e.into(), Into::into))),
    }
}

/// The human form of a status: what a person checks first, in that order.
pub fn render(status: &Status) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let ips: Vec<String> = status.virtual_ips.iter().map(ToString::to_string).collect();
    let _ = writeln!(s, "roamtun {} {} (up {}s)", status.role, status.version, status.uptime_secs);
    let _ = writeln!(s, "  tun:          {} [{}]", status.tun, ips.join(", "));
    let _ = writeln!(s, "  flows:        {} TCP, {} UDP", status.tcp_flows, status.udp_flows);
    let _ = writeln!(s, "  traffic:      {} sent, {} received", bytes(status.bytes_sent), bytes(status.bytes_received));
    let _ = writeln!(s, "  tls keys:     refreshed {} times", status.tls_key_updates);
    if status.role == "server" {
        let _ = writeln!(
            s,
            "  handshakes:   {} in progress, {} refused; {} connections over their source's limit, {} evicted",
            status.handshakes_pending,
            status.handshakes_refused,
            status.connections_over_limit,
            status.handshakes_evicted
        );
    }
    for u in &status.uplinks {
        let addrs: Vec<String> = u.addresses.iter().map(ToString::to_string).collect();
        let rtt = u.rtt_ms.map(|r| format!(" rtt {r:.1} ms")).unwrap_or_default();
        let loss = u.loss.filter(|l| *l >= 0.005).map(|l| format!(" loss {:.0}%", l * 100.0)).unwrap_or_default();
        let jitter = u.jitter_ms.map(|j| format!(" ±{j:.1}")).unwrap_or_default();
        let bw = u.bandwidth_mbps.map(|b| format!(" {b:.0} Mbit/s")).unwrap_or_default();
        let used = match u.cap_bytes {
            Some(cap) => {
                let since = u.period_start.as_ref().map(|d| format!(" since {d}")).unwrap_or_default();
                format!(" used {} of {}{since}", bytes(u.used_bytes), bytes(cap))
            }
            None if u.used_bytes > 0 => format!(" used {}", bytes(u.used_bytes)),
            None => String::new(),
        };
        let rtt = rtt + &jitter + &loss + &bw + &used;
        let score = u.score.map(|v| format!(" score {v:.0} ({})", u.why)).unwrap_or_default();
        let pin = if u.pinned { " pinned" } else { "" };
        let metered = if u.metered { " metered" } else { "" };
        let _ = writeln!(
            s,
            "  uplink {:<8} {:<8} {:<8} {}{rtt}{score}{metered}{pin}",
            u.name,
            u.kind,
            u.state,
            addrs.join(", ")
        );
    }
    if let Some(dns) = &status.dns {
        let servers: Vec<String> = dns.servers.iter().map(ToString::to_string).collect();
        let how = match (&dns.file, dns.domains.is_empty()) {
            (Some(file), _) => format!("in {}", file.display()),
            (None, true) => format!("via {} on {}", dns.backend, status.tun),
            (None, false) => {
                format!("via {} on {}, routing domains {}", dns.backend, status.tun, dns.domains.join(" "))
            }
        };
        let _ = writeln!(s, "  dns:          {} {how}", servers.join(", "));
    }
    if let Some(lan) = &status.lan {
        let _ = writeln!(s, "  lan:          {} ({})", lan.prefixes.join(", "), lan.mode);
    }
    for p in &status.peers {
        let state = match (p.connected, p.switching) {
            (_, true) => "switching",
            (true, false) => "connected",
            (false, false) => "not connected",
        };
        let _ = writeln!(s, "peer {} ({state})", p.name);
        let _ = writeln!(s, "  public key:   {}", p.public_key);
        if !p.virtual_ips.is_empty() {
            let vips: Vec<String> = p.virtual_ips.iter().map(ToString::to_string).collect();
            let _ = writeln!(s, "  virtual ips:  {}", vips.join(", "));
        }
        if !p.lan_prefixes.is_empty() {
            let _ = writeln!(s, "  lan prefixes: {}", p.lan_prefixes.join(", "));
        }
        if let (Some(local), Some(remote)) = (p.local_address, p.remote_address) {
            let uplink = p.uplink.as_deref().unwrap_or("?");
            let rtt = p.rtt_ms.map(|r| format!(", rtt {r:.1} ms")).unwrap_or_default();
            let cc = p.congestion_control.as_ref().map(|c| format!(", {c}")).unwrap_or_default();
            let _ = writeln!(s, "  uplink:       {uplink} {local} -> {remote}{rtt}{cc}");
        }
        match (p.connected_secs, p.connects) {
            (Some(secs), 0) => {
                let _ = writeln!(s, "  connected:    {secs}s ago");
            }
            (Some(secs), n) => {
                let _ = writeln!(s, "  connected:    {secs}s ago (connection #{n})");
            }
            (None, _) => {}
        }
        let of = |limit: Option<usize>| limit.map(|l| format!(" of {l}")).unwrap_or_default();
        let _ = writeln!(
            s,
            "  flows:        {}{} TCP, {}{} UDP, {} queued",
            p.tcp_flows,
            of(p.limits.map(|l| l.tcp_flows)),
            p.udp_flows,
            of(p.limits.map(|l| l.udp_flows)),
            bytes(p.queued_bytes as u64)
        );
        let c = &p.counters;
        let _ = writeln!(s, "  traffic:      {} sent, {} received", bytes(c.bytes_sent), bytes(c.bytes_received));
        let _ = writeln!(
            s,
            "  datagrams:    {} sent, {} received, {} dropped (queue full)",
            c.datagrams_sent, c.datagrams_received, c.datagrams_dropped
        );
        if c.frames_malformed + c.streams_violated + c.datagrams_spoofed > 0 {
            let _ = writeln!(
                s,
                "  rejected:     {} malformed frames, {} stream violations, {} spoofed datagrams",
                c.frames_malformed, c.streams_violated, c.datagrams_spoofed
            );
        }
        if c.streams_forbidden + c.datagrams_forbidden > 0 {
            let _ = writeln!(
                s,
                "  not allowed:  {} connections, {} datagrams (destination policy)",
                c.streams_forbidden, c.datagrams_forbidden
            );
        }
        let limited = c.streams_refused_limit + c.datagrams_refused_limit + c.paths_refused_limit;
        if limited + c.paths_lost_not_reading > 0 {
            let _ = writeln!(
                s,
                "  limits:       {} connections, {} datagrams, {} paths refused; {} paths dropped (peer not reading)",
                c.streams_refused_limit, c.datagrams_refused_limit, c.paths_refused_limit, c.paths_lost_not_reading
            );
        }
        if let Some(err) = &p.last_error {
            let _ = writeln!(s, "  last error:   {err}");
        }
        if let (Some(session), Some(epoch)) = (p.session, p.epoch) {
            let _ = writeln!(s, "  session:      {session:#x}, epoch {epoch}");
        }
        for sw in p.switches.iter().rev() {
            let _ = writeln!(s, "  switch:       {}", render_switch(sw));
        }
    }
    s
}

/// One line per switch: what a person wants to know first.
pub fn render_switch(sw: &SwitchRecord) -> String {
    format!(
        "{} {} -> {} (epoch {}): stall {:.1} ms, {} steps in {:.1} ms, {} replayed, {} datagrams held, {} dropped",
        sw.kind,
        sw.from.as_deref().unwrap_or("?"),
        sw.to.as_deref().unwrap_or("?"),
        sw.epoch,
        sw.stall_ms,
        sw.steps.len(),
        sw.duration_ms,
        bytes(sw.bytes_replayed),
        sw.datagrams_held,
        sw.datagrams_dropped
    )
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}
