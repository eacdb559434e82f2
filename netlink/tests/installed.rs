//! `Installed` cleanup against the real kernel, in a private namespace.

mod common;

use common::{in_netns, v4, v6, Env};
use roamtun_netlink::{Installed, Route, Rule};

#[test]
fn remove_all_removes_every_recorded_object() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_up_dummy("rt-inst0").await;
        let src4 = v4(198, 18, 0, 1);
        let src6 = v6("fd64::1");
        let routes = [
            Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif: index, table: None, src: None, gateway: None },
            Route { dst: v4(0, 0, 0, 0), prefix_len: 0, oif: index, table: Some(100), src: Some(src4), gateway: None },
            Route { dst: v6("fd64:2::"), prefix_len: 48, oif: index, table: Some(100), src: Some(src6), gateway: None },
        ];
        let rules = [
            Rule { from: v4(198, 18, 0, 0), from_prefix_len: 24, table: 100, priority: 1000 },
            Rule { from: v6("fd64::"), from_prefix_len: 64, table: 100, priority: 1000 },
        ];

        let mut installed = Installed::new();
        assert!(installed.is_empty());
        installed.add_address(&env.nl, index, src4, 24).await.expect("add v4 address");
        installed.add_address(&env.nl, index, src6, 64).await.expect("add v6 address");
        for route in &routes {
            installed.add_route(&env.nl, route.clone()).await.expect("add route");
        }
        for rule in &rules {
            installed.add_rule(&env.nl, rule.clone()).await.expect("add rule");
        }
        // Recording the same rule again must not break cleanup.
        installed.add_rule(&env.nl, rules[0].clone()).await.expect("re-add rule");
        assert!(!installed.is_empty());
        for route in &routes {
            assert!(env.route_exists(route).await, "{route} missing before cleanup");
        }

        installed.remove_all(&env.nl).await;

        assert!(installed.is_empty());
        let addresses = env.addresses(index).await;
        assert!(!addresses.contains(&(src4, 24)), "{addresses:?}");
        assert!(!addresses.contains(&(src6, 64)), "{addresses:?}");
        for route in &routes {
            assert!(!env.route_exists(route).await, "{route} left behind");
        }
        let remaining_rules = env.rules().await;
        for rule in &rules {
            assert!(!remaining_rules.contains(rule), "{rule} left behind");
        }
    });
}

#[test]
fn remove_all_survives_a_vanished_link_and_keeps_going() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_up_dummy("rt-inst1").await;
        let rule = Rule { from: v4(198, 18, 0, 0), from_prefix_len: 24, table: 100, priority: 1000 };
        let route =
            Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif: index, table: Some(100), src: None, gateway: None };

        let mut installed = Installed::new();
        installed.add_address(&env.nl, index, v4(198, 18, 0, 1), 24).await.expect("add address");
        installed.add_route(&env.nl, route).await.expect("add route");
        installed.add_rule(&env.nl, rule.clone()).await.expect("add rule");

        // The daemon's TUN goes away first (taking its routes and addresses
        // with it); the rule, which belongs to no link, must still go.
        env.inspect.link().del(index).execute().await.expect("delete dummy link");
        installed.remove_all(&env.nl).await;

        assert!(installed.is_empty());
        assert!(!env.rules().await.contains(&rule), "rule left behind");
    });
}

#[test]
fn del_through_installed_forgets_the_object() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_up_dummy("rt-inst2").await;
        let route = Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif: index, table: None, src: None, gateway: None };

        let mut installed = Installed::new();
        installed.add_route(&env.nl, route.clone()).await.expect("add route");
        installed.del_route(&env.nl, &route).await.expect("delete route");
        assert!(installed.is_empty());
        assert!(!env.route_exists(&route).await);
    });
}
