//! A full tunnel's rules and its table's routes against the real kernel, in a private namespace.

mod common;

use common::{in_netns, v4, v6, Env, MAIN_TABLE};
use roamtun_netlink::{Installed, Route, TableRule, UnreachableRoute};

/// `ip -N rule show` / `ip route show table T` in the test's namespace.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("ip prints text")
}

#[test]
fn a_full_tunnels_rules_and_routes_are_added_listed_and_removed() {
    in_netns(|| async {
        let env = Env::new().await;
        let tun = env.add_up_dummy("rt-full0").await;
        let src = v4(100, 64, 0, 2);
        env.nl.add_address(tun, src, 32).await.expect("address");
        let rules_before = (ip(&["-4", "rule"]), ip(&["-6", "rule"]));
        let mut installed = Installed::new();
        let rules = [
            TableRule {
                v6: false,
                to: Some((v4(198, 18, 1, 1), 32)),
                unless_mark: None,
                suppress_prefix_len: None,
                table: MAIN_TABLE,
                priority: 5201,
            },
            TableRule {
                v6: false,
                to: None,
                unless_mark: None,
                suppress_prefix_len: Some(0),
                table: MAIN_TABLE,
                priority: 5202,
            },
            TableRule {
                v6: true,
                to: None,
                unless_mark: Some(0x5254),
                suppress_prefix_len: None,
                table: 52100,
                priority: 5203,
            },
        ];
        let default =
            Route { dst: v4(0, 0, 0, 0), prefix_len: 0, oif: tun, table: Some(52100), src: Some(src), gateway: None };
        installed.add_route(&env.nl, default.clone()).await.expect("default into the TUN");
        let src6 = v6("fd00:64::2");
        env.nl.add_address(tun, src6, 128).await.expect("address");
        let default6 = Route { dst: v6("::"), prefix_len: 0, src: Some(src6), ..default.clone() };
        installed.add_route(&env.nl, default6.clone()).await.expect("IPv6 default into the TUN");
        // A dump gives back what was added, so a check for what went missing finds nothing missing.
        let present = env.nl.table_routes(52100).await.expect("dump the table");
        assert!(present.contains(&default) && present.contains(&default6), "{present:?}");
        // The other table's family: unreachable (a full tunnel of a family without a virtual IP).
        let unreachable = UnreachableRoute { dst: v6("::"), prefix_len: 0, table: 52101 };
        installed.add_unreachable(&env.nl, unreachable.clone()).await.expect("unreachable");
        installed.add_unreachable(&env.nl, unreachable).await.expect("adding it again is success");
        for rule in &rules {
            installed.add_table_rule(&env.nl, rule.clone()).await.expect("add rule");
            installed.add_table_rule(&env.nl, rule.clone()).await.expect("adding it again is success");
        }
        let v4_rules = ip(&["-4", "rule"]);
        assert!(v4_rules.contains("5201:\tfrom all to 198.18.1.1 lookup main"), "{v4_rules}");
        assert!(v4_rules.contains("5202:\tfrom all lookup main suppress_prefixlength 0"), "{v4_rules}");
        assert!(ip(&["-6", "rule"]).contains("5203:\tnot from all fwmark 0x5254 lookup 52100"));
        let table = ip(&["route", "show", "table", "all"]);
        assert!(table.contains("default dev rt-full0 table 52100 proto static scope link src 100.64.0.2"), "{table}");
        assert!(table.contains("unreachable default dev lo table 52101"), "{table}");
        // What the dump gives back is what was added (the leftovers of a killed daemon are found so).
        let listed = env.nl.table_rules().await.expect("dump rules");
        for rule in &rules {
            assert_eq!(listed.iter().filter(|r| *r == rule).count(), 1, "{rule} in {listed:?}");
        }

        installed.remove_all(&env.nl).await;
        assert_eq!((ip(&["-4", "rule"]), ip(&["-6", "rule"])), rules_before);
        assert_eq!(ip(&["route", "show", "table", "52100"]), "");
        assert_eq!(ip(&["-6", "route", "show", "table", "52100"]), "");
        assert_eq!(ip(&["-6", "route", "show", "table", "52101"]), "");
    });
}

#[test]
fn flushing_a_table_removes_every_route_of_it_and_nothing_else() {
    in_netns(|| async {
        let env = Env::new().await;
        let tun = env.add_up_dummy("rt-full1").await;
        let main = Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif: tun, table: None, src: None, gateway: None };
        env.nl.add_route(&main).await.expect("a main table route");
        let ours = Route { dst: v4(0, 0, 0, 0), prefix_len: 0, table: Some(52100), ..main.clone() };
        env.nl.add_route(&ours).await.expect("default in our table");
        let unreachable = UnreachableRoute { dst: v6("::"), prefix_len: 0, table: 52100 };
        env.nl.add_unreachable(&unreachable).await.expect("unreachable");
        assert_eq!(env.nl.flush_table(52100).await.expect("flush"), 2);
        assert_eq!(ip(&["route", "show", "table", "52100"]), "");
        assert_eq!(ip(&["-6", "route", "show", "table", "52100"]), "");
        assert!(env.route_exists(&main).await, "the main table is not touched");
        assert_eq!(env.nl.flush_table(52100).await.expect("flush an empty table"), 0);
    });
}
