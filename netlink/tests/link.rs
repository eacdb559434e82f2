//! Link lookup, up and MTU against the real kernel, in a private namespace.

mod common;

use common::{in_netns, Env};
use roamtun_netlink::NetlinkError;

#[test]
fn link_index_of_missing_link_is_a_clear_error() {
    in_netns(|| async {
        let env = Env::new().await;
        let err = env.nl.link_index("rt-missing0").await.unwrap_err();
        assert!(
            matches!(&err, NetlinkError::LinkNotFound { name } if name == "rt-missing0"),
            "unexpected error: {err:?}"
        );
        assert_eq!(err.to_string(), "network link \"rt-missing0\" does not exist");
        assert!(!err.is_permission_denied());
    });
}

#[test]
fn link_index_finds_loopback() {
    in_netns(|| async {
        let env = Env::new().await;
        // Every namespace has lo, and it is always index 1.
        assert_eq!(env.nl.link_index("lo").await.expect("lo exists"), 1);
    });
}

#[test]
fn set_link_up_and_mtu_are_visible_in_a_link_dump() {
    in_netns(|| async {
        let env = Env::new().await;
        let index = env.add_dummy("rt-link0").await;
        let (up, _) = env.link_state(index).await;
        assert!(!up, "a new dummy link starts down");

        env.nl.set_mtu(index, 1380).await.expect("set MTU");
        env.nl.set_link_up(index).await.expect("set link up");
        assert_eq!(env.link_state(index).await, (true, 1380));

        // Both are plain "set to this value" operations: repeating is fine.
        env.nl.set_link_up(index).await.expect("set link up again");
        env.nl.set_mtu(index, 1380).await.expect("set MTU again");
        assert_eq!(env.link_state(index).await, (true, 1380));
    });
}

#[test]
fn operations_on_a_missing_link_index_name_the_object() {
    in_netns(|| async {
        let env = Env::new().await;
        let err = env.nl.set_mtu(9999, 1400).await.unwrap_err();
        assert!(matches!(err, NetlinkError::SetMtu { index: 9999, mtu: 1400, .. }), "{err:?}");
        assert_eq!(err.errno(), Some(libc::ENODEV));
        assert!(!err.is_permission_denied());
    });
}
