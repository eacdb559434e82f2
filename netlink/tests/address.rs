//! Address add/delete against the real kernel, in a private namespace.

mod common;

use std::net::IpAddr;

use common::{in_netns, v4, v6, Env};
use roamtun_netlink::NetlinkError;

async fn add_twice_then_delete_twice(env: &Env, index: u32, addr: IpAddr, prefix_len: u8) {
    env.nl.add_address(index, addr, prefix_len).await.expect("add address");
    env.nl.add_address(index, addr, prefix_len).await.expect("adding an existing address is success");
    let present = env.addresses(index).await;
    assert_eq!(
        present.iter().filter(|a| **a == (addr, prefix_len)).count(),
        1,
        "{addr}/{prefix_len} should be on the link exactly once: {present:?}"
    );

    env.nl.del_address(index, addr, prefix_len).await.expect("delete address");
    assert!(!env.addresses(index).await.contains(&(addr, prefix_len)));
    env.nl.del_address(index, addr, prefix_len).await.expect("deleting an absent address is success");
}

#[test]
fn ipv4_address_add_is_idempotent_and_delete_removes_it() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_dummy("rt-addr4").await;
        add_twice_then_delete_twice(&env, index, v4(198, 18, 0, 1), 24).await;
        add_twice_then_delete_twice(&env, index, v4(100, 64, 0, 1), 32).await;
    });
}

#[test]
fn ipv6_address_add_is_idempotent_and_delete_removes_it() {
    in_netns(|| async {
        let env = Env::new().await;
        // IPv6 addresses on a down link are fine too, but up is the real use.
        let index = env.add_up_dummy("rt-addr6").await;
        add_twice_then_delete_twice(&env, index, v6("fd64::1"), 64).await;
    });
}

#[test]
fn deleting_an_address_from_a_vanished_link_is_success() {
    in_netns(|| async {
        let env = Env::new().await;
        // The link (say, the TUN) is gone, so the address is gone with it.
        env.nl.del_address(9999, v4(198, 18, 0, 1), 24).await.expect("address on a missing link counts as absent");
    });
}

#[test]
fn too_long_prefix_is_rejected_before_the_kernel() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_dummy("rt-addr-bad").await;
        let err = env.nl.add_address(index, v4(198, 18, 0, 1), 33).await.unwrap_err();
        assert!(matches!(err, NetlinkError::InvalidPrefixLen { prefix_len: 33, max: 32, .. }), "{err:?}");
    });
}
