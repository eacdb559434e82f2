//! Kernel network configuration for roamtun over rtnetlink.
//!
//! This crate talks `NETLINK_ROUTE` directly (through the `rtnetlink` crate)
//! to do the handful of things the daemon needs around its TUN device:
//!
//! * look up a link by name, bring it up, set its MTU;
//! * add and delete IPv4/IPv6 addresses;
//! * add and delete routes (main or a custom table, optional preferred
//!   source, optional gateway), and list one table's routes;
//! * add and delete source-based policy rules (`from PREFIX lookup TABLE`)
//!   and a full tunnel's rules ([`TableRule`]: `not fwmark`, `to`,
//!   `suppress_prefixlength`), `unreachable` routes, and empty a table;
//! * remember everything the daemon installed ([`Installed`]) so it can all
//!   be removed again on shutdown;
//! * monitor links, their addresses and the main table's default routes
//!   ([`watch_uplinks`], over the sans-IO [`UplinkTable`]) so the daemon
//!   knows which uplinks are usable, notices a default route coming back,
//!   and learns each uplink's gateways.
//!
//! Adds are idempotent (an object that is already there is success) and
//! deletes treat an absent object as success, so the daemon can re-run its
//! setup after a crash or an uplink change without special cases.
//!
//! What it deliberately does **not** do:
//!
//! * it never shells out to `ip` or any other tool;
//! * it does not create or own the TUN device (the daemon does that);
//! * it does not choose an uplink (the monitor only reports link state,
//!   addresses and default routes), and monitors no other routes (no
//!   other table, no more specific prefix) and no rules;
//! * it does not replace existing objects or touch sysctls; the one firewall
//!   object it makes is a masquerade's own nftables table ([`Masquerade`],
//!   over `NETLINK_NETFILTER`), which it deletes whole;
//! * it does not switch network namespaces: [`Netlink::connect`] works in the
//!   namespace of the calling thread.

mod error;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod installed;
mod message;
mod monitor;
mod netlink;
mod nftables;
mod types;

pub use error::NetlinkError;
pub use installed::{error_chain, Installed};
pub use monitor::{watch_uplinks, watch_uplinks_counted, EventOutcome, MonitorStats, Uplink, UplinkTable};
pub use netlink::Netlink;
pub use nftables::{
    lan_table_name as lan_nat_table, table_name as exit_nat_table, Masquerade, Nftables, NftablesError,
};
pub use types::{Route, Rule, TableRule, UnreachableRoute};
