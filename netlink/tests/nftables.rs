//! The exit NAT's nftables table against the real kernel, in a private namespace: what `nft`
//! then lists, and that deleting it (or closing its socket) leaves the ruleset as it was.

mod common;

use common::in_netns;
use roamtun_netlink::{Masquerade, Nftables};

/// `nft list ruleset` in the test's namespace (the child inherits the thread's namespace).
fn ruleset() -> String {
    let out = std::process::Command::new("nft").args(["list", "ruleset"]).output().expect("run nft");
    assert!(out.status.success(), "nft list ruleset: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("nft prints text")
}

fn nat() -> Masquerade {
    Masquerade::exit("roamsrv0", "eth0", vec![("100.64.0.0".parse().unwrap(), 10), ("fd00:64::".parse().unwrap(), 64)])
}

#[test]
fn the_exit_nat_is_what_nft_lists_and_deleting_it_restores_the_ruleset() {
    in_netns(|| async {
        // Something of the host's own, which must stay as it is.
        let own = std::process::Command::new("nft")
            .args(["add table inet host; add chain inet host input { type filter hook input priority 0; }"])
            .status()
            .expect("run nft");
        assert!(own.success());
        let before = ruleset();
        let mut nft = Nftables::connect().expect("netfilter socket");
        assert!(!nft.install(&nat()).expect("install"), "nothing was left behind");
        let listed = ruleset();
        for line in [
            "table inet roamtun_roamsrv0 { # progname",
            "type nat hook postrouting priority srcnat; policy accept;",
            "oifname \"eth0\" ip saddr 100.64.0.0/10 masquerade",
            "oifname \"eth0\" ip6 saddr fd00:64::/64 masquerade",
            "type filter hook forward priority filter; policy accept;",
            "iifname \"roamsrv0\" oifname \"eth0\" ip saddr 100.64.0.0/10 accept",
            "iifname \"eth0\" oifname \"roamsrv0\" ip daddr 100.64.0.0/10 ct state established,related accept",
            "iifname \"eth0\" oifname \"roamsrv0\" ip6 daddr fd00:64::/64 ct state established,related accept",
        ] {
            assert!(listed.contains(line), "missing {line:?} in:\n{listed}");
        }
        nft.delete(&nat().table()).expect("delete");
        assert_eq!(ruleset(), before);
        nft.delete(&nat().table()).expect("deleting an absent table is success");

        // Owned by its socket: closing it (as a SIGKILL does) removes the table too.
        let mut other = Nftables::connect().expect("netfilter socket");
        other.install(&nat()).expect("install again");
        assert_ne!(ruleset(), before);
        drop(other);
        assert_eq!(ruleset(), before, "the kernel removes an owned table with its socket");
    });
}

#[test]
fn a_lan_masquerade_takes_the_lan_from_any_port_into_the_tun() {
    in_netns(|| async {
        let before = ruleset();
        let lan = Masquerade::lan("roam0", vec![("198.19.50.0".parse().unwrap(), 24)]);
        let mut nft = Nftables::connect().expect("netfilter socket");
        nft.install(&lan).expect("install");
        let listed = ruleset();
        for line in [
            "table inet roamtun_lan_roam0 { # progname",
            "oifname \"roam0\" ip saddr 198.19.50.0/24 masquerade",
            "oifname \"roam0\" ip saddr 198.19.50.0/24 accept",
            "iifname \"roam0\" ip daddr 198.19.50.0/24 ct state established,related accept",
        ] {
            assert!(listed.contains(line), "missing {line:?} in:\n{listed}");
        }
        nft.delete(&lan.table()).expect("delete");
        assert_eq!(ruleset(), before);
    });
}
