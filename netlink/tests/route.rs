//! Route add/delete against the real kernel, in a private namespace.

mod common;

use std::net::IpAddr;

use common::{in_netns, v4, v6, Env};
use roamtun_netlink::{NetlinkError, Route};

const CUSTOM_TABLE: u32 = 100;
/// Above 255, so it only fits the 32-bit RTA_TABLE attribute.
const LARGE_TABLE: u32 = 51820;

async fn add_twice_then_delete_twice(env: &Env, route: &Route) {
    env.nl.add_route(route).await.expect("add route");
    env.nl.add_route(route).await.expect("adding an existing route is success");
    assert!(
        env.route_exists(route).await,
        "{route} should be in the route dump exactly once: {:?}",
        env.routes().await
    );

    env.nl.del_route(route).await.expect("delete route");
    assert!(!env.route_exists(route).await, "{route} still present after delete");
    env.nl.del_route(route).await.expect("deleting an absent route is success");
}

/// A link that is up (IPv4 routes need it) with `src` configured on it (a
/// preferred source must be a local address).
async fn link_with_address(env: &Env, name: &str, src: IpAddr, prefix_len: u8) -> u32 {
    let index = env.add_up_dummy(name).await;
    env.nl.add_address(index, src, prefix_len).await.expect("add source address");
    index
}

#[test]
fn ipv4_route_in_main_table() {
    in_netns(|| async {
        let env = Env::new().await;
        let oif = env.add_up_dummy("rt-route4").await;
        let route = Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif, table: None, src: None, gateway: None };
        add_twice_then_delete_twice(&env, &route).await;
    });
}

#[test]
fn ipv4_route_in_custom_tables_with_preferred_source() {
    in_netns(|| async {
        let env = Env::new().await;
        let src = v4(198, 18, 0, 1);
        let oif = link_with_address(&env, "rt-route4s", src, 24).await;
        for table in [CUSTOM_TABLE, LARGE_TABLE] {
            let route = Route {
                dst: v4(100, 64, 0, 0),
                prefix_len: 10,
                oif,
                table: Some(table),
                src: Some(src),
                gateway: None,
            };
            add_twice_then_delete_twice(&env, &route).await;
        }
        // A default route in its own table is how roamtun steers a source.
        let default =
            Route { dst: v4(0, 0, 0, 0), prefix_len: 0, oif, table: Some(CUSTOM_TABLE), src: Some(src), gateway: None };
        add_twice_then_delete_twice(&env, &default).await;
    });
}

#[test]
fn ipv6_route_in_main_table() {
    in_netns(|| async {
        let env = Env::new().await;
        let oif = env.add_up_dummy("rt-route6").await;
        let route = Route { dst: v6("fd64:1::"), prefix_len: 48, oif, table: None, src: None, gateway: None };
        add_twice_then_delete_twice(&env, &route).await;
    });
}

#[test]
fn ipv6_route_in_custom_tables_with_preferred_source() {
    in_netns(|| async {
        let env = Env::new().await;
        let src = v6("fd64::1");
        // Right after add_address: this only works because the address skips
        // DAD (a tentative address is refused as a preferred source).
        let oif = link_with_address(&env, "rt-route6s", src, 64).await;
        for table in [CUSTOM_TABLE, LARGE_TABLE] {
            let route =
                Route { dst: v6("fd64:2::"), prefix_len: 48, oif, table: Some(table), src: Some(src), gateway: None };
            add_twice_then_delete_twice(&env, &route).await;
        }
    });
}

#[test]
fn route_through_a_missing_link_fails_with_context() {
    in_netns(|| async {
        let env = Env::new().await;
        let route = Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif: 9999, table: None, src: None, gateway: None };
        let err = env.nl.add_route(&route).await.unwrap_err();
        assert!(matches!(&err, NetlinkError::AddRoute { route: r, .. } if **r == route), "{err:?}");
        assert_eq!(err.to_string(), "failed to add route 198.19.0.0/16 dev index 9999");
        assert_eq!(err.errno(), Some(libc::ENODEV));
        // Deleting it is fine: it does not exist.
        env.nl.del_route(&route).await.expect("absent route delete");
    });
}

#[test]
fn route_with_mixed_families_is_rejected_before_the_kernel() {
    in_netns(|| async {
        let env = Env::new().await;
        let oif = env.add_up_dummy("rt-route-mix").await;
        let route =
            Route { dst: v4(198, 19, 0, 0), prefix_len: 16, oif, table: None, src: Some(v6("fd64::1")), gateway: None };
        let err = env.nl.add_route(&route).await.unwrap_err();
        assert!(matches!(err, NetlinkError::MixedFamilies { .. }), "{err:?}");
    });
}
