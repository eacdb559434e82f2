//! An unprivileged caller gets an error that says so.

mod common;

use common::{in_netns, v4, Env};
use roamtun_netlink::{Netlink, NetlinkError};

/// Drops this thread (only) to uid/gid 65534 ("nobody"). Going from uid 0
/// to all-nonzero uids clears the thread's capabilities, CAP_NET_ADMIN
/// included.
fn drop_privileges_of_this_thread() {
    // The raw syscalls change the calling thread's credentials only; libc's
    // setresuid() wrapper would change every thread of the test process.
    // SAFETY: plain integer arguments, no memory is passed.
    let gid_rc = unsafe { libc::syscall(libc::SYS_setresgid, 65534, 65534, 65534) };
    assert_eq!(gid_rc, 0, "setresgid: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let uid_rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
    assert_eq!(uid_rc, 0, "setresuid: {}", std::io::Error::last_os_error());
}

#[test]
fn unprivileged_add_is_reported_as_permission_denied() {
    in_netns(|| async {
        let root = Env::new().await;
        let index = root.add_dummy("rt-perm0").await;

        drop_privileges_of_this_thread();
        // A socket opened after the drop carries the unprivileged credentials.
        let nl = Netlink::connect().await.expect("unprivileged users may open a netlink socket");
        let err = nl.add_address(index, v4(198, 18, 0, 1), 24).await.unwrap_err();

        assert!(matches!(err, NetlinkError::AddAddress { .. }), "{err:?}");
        assert!(err.is_permission_denied(), "expected EPERM/EACCES, got {err:?}");
        // Reading is unprivileged, and a lookup still works.
        assert_eq!(nl.link_index("rt-perm0").await.expect("lookup"), index);
    });
}
