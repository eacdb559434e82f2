//! `Type=notify` as systemd sees it: `roamtun server` started with `NOTIFY_SOCKET` (and
//! `WATCHDOG_USEC`) pointing at a datagram socket the test binds, as systemd does for the unit in
//! dist/systemd/. Needs root: the daemon creates its TUN inside a network namespace made here.
//!
//! ```text
//!   netns rt-sd-PID-N (made and removed by each test)
//!   ┌─────────────────────────────────────────────────────────┐
//!   │  lo 127.0.0.1, 198.18.77.1/32   roamtun server :7700    │
//!   │  rtsd0 100.64.77.1 (TUN)        NOTIFY_SOCKET ──────────┼──► the test's socket
//!   └─────────────────────────────────────────────────────────┘
//! ```

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use roamtun::keys::PrivateKey;

const ROAMTUN: &str = env!("CARGO_BIN_EXE_roamtun");
/// Bounds every wait; a healthy daemon is ready in well under a second.
const WAIT: Duration = Duration::from_secs(20);

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A server daemon in a namespace of its own, with the notify socket it talks to; the daemon is
/// killed (by PID) and the namespace removed when this is dropped, also when the test fails.
struct Daemon {
    ns: String,
    child: Child,
    notify: UnixDatagram,
    _dir: tempfile::TempDir,
    /// Every notification received so far, in order.
    seen: Vec<String>,
}

impl Daemon {
    fn start(env: &[(&str, &str)]) -> Daemon {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let ns = format!("rt-sd-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &ns]);
        // From here on the namespace is removed by the guard, however the setup below fails.
        let guard = NsGuard(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "addr", "add", "198.18.77.1/32", "dev", "lo"]);
        let dir = tempfile::tempdir().unwrap();
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let peer = PrivateKey::generate().unwrap().public_key();
        let config = dir.path().join("server.toml");
        std::fs::write(
            &config,
            format!(
                "private_key = \"{}\"\nlisten = \"198.18.77.1:7700\"\nvirtual_ips = [\"100.64.77.1\"]\n\
                 client_prefixes = [\"100.64.0.0/10\"]\ncontrol_socket = \"{}\"\n[tun]\nname = \"rtsd0\"\n\
                 [[peer]]\nname = \"laptop\"\npublic_key = \"{peer}\"\nvirtual_ips = [\"100.64.77.2\"]\n",
                PrivateKey::generate().unwrap().to_base64().as_str(),
                dir.path().join("server.sock").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns, ROAMTUN, "server", "-c"]).arg(&config);
        cmd.env("NOTIFY_SOCKET", &notify_path).env_remove("WATCHDOG_USEC").env_remove("WATCHDOG_PID");
        cmd.envs(env.iter().copied()).stdout(Stdio::null()).stderr(Stdio::piped());
        // `ip netns exec` execs the daemon: this PID is the daemon's own.
        let child = cmd.spawn().expect("start roamtun server");
        std::mem::forget(guard);
        Daemon { ns, child, notify, _dir: dir, seen: Vec::new() }
    }

    /// Waits (bounded) for a notification with the line `line`; returns the whole datagram.
    fn wait_for(&mut self, line: &str) -> String {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 4096];
        loop {
            if let Some(found) = self.seen.iter().find(|m| m.lines().any(|l| l == line)) {
                return found.clone();
            }
            if let Ok(n) = self.notify.recv(&mut buf) {
                self.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
                continue;
            }
            // Nothing queued: a daemon that exited will send nothing more.
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut err).unwrap();
                panic!("the daemon exited ({status}) before {line}; seen {:?}; stderr:\n{err}", self.seen);
            }
            assert!(Instant::now() < deadline, "no {line} within {WAIT:?}; seen {:?}", self.seen);
        }
    }

    /// SIGTERM, as `systemctl stop` sends it; the daemon's exit status.
    fn stop(&mut self) -> std::process::ExitStatus {
        let pid = i32::try_from(self.child.id()).unwrap();
        // SAFETY: kill takes no pointers; the PID is our own child's, not yet reaped.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not stop within {WAIT:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(NsGuard(self.ns.clone()));
    }
}

/// Removes the namespace when dropped.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn the_server_says_ready_once_it_serves_and_stopping_at_sigterm() {
    if !is_root() {
        eprintln!("skipped: the daemon needs root for its network namespace and TUN");
        return;
    }
    let mut daemon = Daemon::start(&[]);
    let ready = daemon.wait_for("READY=1");
    assert!(ready.lines().any(|l| l.starts_with("STATUS=serving on rtsd0")), "{ready:?}");
    // Ready means serving: the listener accepts connections (from inside the namespace).
    let out = Command::new("ip")
        .args(["netns", "exec", &daemon.ns, "bash", "-c", "exec 3<>/dev/tcp/198.18.77.1/7700"])
        .output()
        .unwrap();
    assert!(out.status.success(), "no listener after READY=1: {}", String::from_utf8_lossy(&out.stderr));
    // Without WATCHDOG_USEC no watchdog pings are sent.
    assert!(!daemon.seen.iter().any(|m| m.contains("WATCHDOG=1")), "{:?}", daemon.seen);
    let status = daemon.stop();
    daemon.wait_for("STOPPING=1");
    assert!(status.success(), "{status}");
}

#[test]
fn the_engine_feeds_the_watchdog_systemd_asked_for() {
    if !is_root() {
        eprintln!("skipped: the daemon needs root for its network namespace and TUN");
        return;
    }
    // 200 ms: a ping every 100 ms, from the engine task's loop even while no client is connected.
    let mut daemon = Daemon::start(&[("WATCHDOG_USEC", "200000")]);
    daemon.wait_for("READY=1");
    let pings = |d: &Daemon| d.seen.iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count();
    let deadline = Instant::now() + WAIT;
    while pings(&daemon) < 3 {
        assert!(Instant::now() < deadline, "fewer than 3 WATCHDOG=1 within {WAIT:?}: {:?}", daemon.seen);
        let mut buf = [0u8; 4096];
        if let Ok(n) = daemon.notify.recv(&mut buf) {
            daemon.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    // A watchdog meant for another process (WATCHDOG_PID) is not this one's to feed.
    drop(daemon);
    let mut other = Daemon::start(&[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")]);
    other.wait_for("READY=1");
    let until = Instant::now() + Duration::from_millis(500);
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        if let Ok(n) = other.notify.recv(&mut buf) {
            other.seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert_eq!(pings(&other), 0, "{:?}", other.seen);
}
