//! Per-uplink routing against the real kernel, in a private network namespace (needs root).
//!
//! ```text
//!   private network namespace (one per test, gone with its thread)
//!   ┌───────────────────────────────────────────────────────────────────────┐
//!   │  rt-up-a 198.18.10.2/24 fd00:a::2/64 ═ veth ═ rt-up-a-p (no address)  │
//!   │     main: default via 198.18.10.1 / fd00:a::1 metric 100              │
//!   │  rt-up-b 198.18.11.2/24 fd00:b::2/64 ═ veth ═ rt-up-b-p (no address)  │
//!   │     main: default via 198.18.11.1 / fd00:b::1 metric 200              │
//!   │     renumbered: 198.18.12.2/24, default via 198.18.12.1               │
//!   │                                                                       │
//!   │  watch_uplinks() ──► routing::start(["rt-up-a", "rt-up-b"])           │
//!   │     tables 52000 (rt-up-a), 52001 (rt-up-b), rules at priority 5200   │
//!   └───────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! The setup and the checks use `ip`, as a user would (`ip rule`, `ip route show table N`,
//! `ip route get DST from SRC`); the code under test uses rtnetlink only. Every check waits
//! (bounded) for the observed state, since the routing task follows the monitor's snapshots.

use std::process::Command;
use std::time::{Duration, Instant};

use roamtun::config::RoutingConfig;
use roamtun::routing;

const WAIT: Duration = Duration::from_secs(5);

/// Runs `test` on its own thread inside a new network namespace (and so are the `ip` commands it
/// runs: children inherit the thread's namespace), on a current-thread runtime.
fn in_netns<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let thread = std::thread::spawn(move || {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test creates network namespaces: run it as root");
        // SAFETY: unshare takes no pointers; CLONE_NEWNET affects only this thread.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(test());
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// `ip ARGS`, which must succeed; its standard output.
fn ip(args: &str) -> String {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    assert!(out.status.success(), "ip {args}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS`'s standard output, also when it fails (e.g. a table that does not exist).
fn ip_lenient(args: &str) -> String {
    let out = Command::new("ip").args(args.split_whitespace()).output().expect("run ip");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `ip ARGS` satisfies `condition`; panics with the last output otherwise.
async fn wait_ip(args: &str, what: &str, condition: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = ip_lenient(args);
        if condition(&out) {
            return out;
        }
        assert!(Instant::now() < deadline, "no {what} within {WAIT:?}; `ip {args}` says:\n{out}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn uplink(name: &str, v4: &str, v6: &str, gw4: &str, gw6: &str, metric: u32) {
    ip(&format!("link add {name} type veth peer name {name}-p"));
    ip(&format!("link set {name}-p up"));
    ip(&format!("link set {name} up"));
    ip(&format!("addr add {v4} dev {name}"));
    ip(&format!("-6 addr add {v6} dev {name} nodad"));
    ip(&format!("route add default via {gw4} dev {name} metric {metric}"));
    ip(&format!("-6 route add default via {gw6} dev {name} metric {metric}"));
}

/// Which device and gateway the kernel picks from `src` (`ip route get DST from SRC`).
fn route_get(dst: &str, src: &str) -> String {
    let family = if dst.contains(':') { "-6 " } else { "" };
    ip(&format!("{family}route get {dst} from {src}"))
}

fn config() -> RoutingConfig {
    RoutingConfig { per_uplink_tables: true, table_base: 52000, rule_priority: 5200, ..RoutingConfig::default() }
}

#[test]
fn each_uplink_routes_its_own_addresses_follows_renumbering_and_cleans_up() {
    in_netns(|| async {
        uplink("rt-up-a", "198.18.10.2/24", "fd00:a::2/64", "198.18.10.1", "fd00:a::1", 100);
        uplink("rt-up-b", "198.18.11.2/24", "fd00:b::2/64", "198.18.11.1", "fd00:b::1", 200);
        // The main table sends everything through rt-up-a (lower metric).
        assert!(route_get("198.19.200.1", "198.18.11.2").contains("dev rt-up-a"), "before: main table only");

        let (uplinks, _monitor) = roamtun_netlink::watch_uplinks().await.expect("start the uplink monitor");
        let configured = vec!["rt-up-a".to_string(), "rt-up-b".to_string()];
        let task = routing::start(config(), configured, uplinks).await.expect("start per-uplink routing");

        // Rules per address, both families.
        wait_ip("rule", "IPv4 rules", |r| {
            r.contains("5200:\tfrom 198.18.10.2 lookup 52000") && r.contains("5200:\tfrom 198.18.11.2 lookup 52001")
        })
        .await;
        wait_ip("-6 rule", "IPv6 rules", |r| {
            r.contains("5200:\tfrom fd00:a::2 lookup 52000") && r.contains("5200:\tfrom fd00:b::2 lookup 52001")
        })
        .await;
        let table = wait_ip("route show table 52001", "table 52001", |t| t.contains("default via 198.18.11.1")).await;
        assert!(table.contains("198.18.11.0/24 dev rt-up-b"), "connected network in the uplink's table:\n{table}");
        wait_ip("-6 route show table 52001", "IPv6 table 52001", |t| t.contains("default via fd00:b::1 dev rt-up-b"))
            .await;

        // Traffic from each uplink's address leaves through that uplink, via its gateway.
        let from_b = route_get("198.19.200.1", "198.18.11.2");
        assert!(from_b.contains("via 198.18.11.1 dev rt-up-b"), "{from_b}");
        let from_a = route_get("198.19.200.1", "198.18.10.2");
        assert!(from_a.contains("via 198.18.10.1 dev rt-up-a"), "{from_a}");
        let from_b6 = route_get("fd00:99::1", "fd00:b::2");
        assert!(from_b6.contains("via fd00:b::1 dev rt-up-b"), "{from_b6}");

        // DHCP renumbers rt-up-b into another network: the rule and the table follow.
        ip("addr add 198.18.12.2/24 dev rt-up-b");
        ip("addr del 198.18.11.2/24 dev rt-up-b");
        ip("route del default via 198.18.11.1 dev rt-up-b metric 200");
        ip("route add default via 198.18.12.1 dev rt-up-b metric 200");
        let rules = wait_ip("rule", "the rule moved to 198.18.12.2", |r| {
            r.contains("from 198.18.12.2 lookup 52001") && !r.contains("198.18.11.2")
        })
        .await;
        assert!(rules.contains("from 198.18.10.2 lookup 52000"), "rt-up-a untouched:\n{rules}");
        let table = wait_ip("route show table 52001", "the new gateway in table 52001", |t| {
            t.contains("default via 198.18.12.1") && !t.contains("198.18.11.")
        })
        .await;
        assert!(table.contains("198.18.12.0/24 dev rt-up-b"), "{table}");
        let from_b = route_get("198.19.200.1", "198.18.12.2");
        assert!(from_b.contains("via 198.18.12.1 dev rt-up-b"), "{from_b}");

        // Link down and up again, quicker than the task can look (the runtime is blocked by the
        // `ip` commands): the kernel flushed table 52000's IPv4 routes; they come back.
        ip("link set rt-up-a down");
        assert!(!ip_lenient("route show table 52000").contains("default"), "the kernel flushed table 52000");
        ip("link set rt-up-a up");
        ip("route add default via 198.18.10.1 dev rt-up-a metric 100");
        wait_ip("route show table 52000", "table 52000 back", |t| t.contains("default via 198.18.10.1")).await;

        // Shutdown: nothing of ours remains, the main table is as it was.
        task.stop().await;
        for family in ["", "-6 "] {
            let rules = ip(&format!("{family}rule"));
            assert!(!rules.contains("5200:") && !rules.contains("lookup 5200"), "rules left behind:\n{rules}");
            for table in [52000, 52001] {
                let routes = ip_lenient(&format!("{family}route show table {table}"));
                assert!(routes.trim().is_empty(), "routes left in table {table}:\n{routes}");
            }
        }
        let main = ip("route show");
        assert!(main.contains("default via 198.18.10.1 dev rt-up-a metric 100"), "{main}");
        assert!(main.contains("default via 198.18.12.1 dev rt-up-b metric 200"), "{main}");
    });
}
