//! Policy rule add/delete against the real kernel, in a private namespace.

mod common;

use std::net::Ipv4Addr;

use common::{in_netns, v4, v6, Env};
use roamtun_netlink::{Route, Rule};

async fn add_twice_then_delete_twice(env: &Env, rule: &Rule) {
    env.nl.add_rule(rule).await.expect("add rule");
    env.nl.add_rule(rule).await.expect("adding an existing rule is success");
    assert!(env.rule_exists(rule).await, "{rule} should be in the rule dump exactly once: {:?}", env.rules().await);

    env.nl.del_rule(rule).await.expect("delete rule");
    assert!(!env.rules().await.contains(rule), "{rule} still present after delete");
    env.nl.del_rule(rule).await.expect("deleting an absent rule is success");
}

#[test]
fn ipv4_rule_add_is_idempotent_and_delete_removes_it() {
    in_netns(|| async {
        let env = Env::new().await;
        let rule = Rule { from: v4(198, 18, 0, 0), from_prefix_len: 24, table: 100, priority: 1000 };
        add_twice_then_delete_twice(&env, &rule).await;
        // A table id above 255 travels only in the FRA_TABLE attribute.
        let large = Rule { from: v4(100, 64, 0, 1), from_prefix_len: 32, table: 51820, priority: 1001 };
        add_twice_then_delete_twice(&env, &large).await;
    });
}

#[test]
fn ipv6_rule_add_is_idempotent_and_delete_removes_it() {
    in_netns(|| async {
        let env = Env::new().await;
        let rule = Rule { from: v6("fd64::"), from_prefix_len: 64, table: 100, priority: 1000 };
        add_twice_then_delete_twice(&env, &rule).await;
    });
}

#[test]
fn rules_differing_only_in_priority_are_distinct() {
    in_netns(|| async {
        let env = Env::new().await;
        let first = Rule { from: v4(198, 18, 0, 0), from_prefix_len: 24, table: 100, priority: 1000 };
        let second = Rule { priority: 1001, ..first.clone() };
        env.nl.add_rule(&first).await.expect("add first rule");
        env.nl.add_rule(&second).await.expect("add second rule");
        env.nl.del_rule(&first).await.expect("delete first rule");
        assert!(!env.rules().await.contains(&first));
        assert!(env.rule_exists(&second).await, "deleting one rule must not delete the other");
    });
}

#[test]
fn rule_steers_its_source_into_its_table() {
    in_netns(|| async {
        let env = Env::new().await;
        let uplink = env.add_up_dummy("rt-uplink").await;
        let tunnel = env.add_up_dummy("rt-tunnel").await;
        let src = Ipv4Addr::new(198, 18, 0, 1);
        let dst = Ipv4Addr::new(198, 19, 0, 5);
        env.nl.add_address(uplink, src.into(), 24).await.expect("add source address");
        // Main table: everything via the uplink. Table 100: via the tunnel.
        let main = Route { dst: v4(0, 0, 0, 0), prefix_len: 0, oif: uplink, table: None, src: None, gateway: None };
        let tunnelled = Route { oif: tunnel, table: Some(100), ..main.clone() };
        env.nl.add_route(&main).await.expect("add main default route");
        env.nl.add_route(&tunnelled).await.expect("add table 100 default route");
        assert_eq!(env.route_get_oif(dst, src).await, uplink, "no rule yet: main table");

        let rule = Rule { from: v4(198, 18, 0, 0), from_prefix_len: 24, table: 100, priority: 1000 };
        env.nl.add_rule(&rule).await.expect("add rule");
        assert_eq!(env.route_get_oif(dst, src).await, tunnel, "rule must select table 100");

        env.nl.del_rule(&rule).await.expect("delete rule");
        assert_eq!(env.route_get_oif(dst, src).await, uplink, "back to the main table");
    });
}
