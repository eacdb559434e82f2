//! Which links could carry the tunnel right now, kept current from netlink
//! notifications.
//!
//! [`UplinkTable`] is the sans-IO model: feed it every link, address and
//! route message and it says whether the table changed. [`watch_uplinks`] is
//! the tokio shell that feeds it from a dump and then from multicast events.
//! Events are only a trigger: after a lost event (socket overflow), and after
//! a default route was replaced in place (the event names the new route, not
//! the one it replaced), the whole table is dumped again rather than patched.
//!
//! Bursts are coalesced without a timer: one kernel operation (a link taken
//! down drops its IPv6 addresses and routes with it) queues all its
//! messages before it returns, so the monitor applies every message already
//! read before it publishes, and publishes only a snapshot that differs from
//! the last one. A link-down is thus one snapshot, out within a millisecond
//! of the event, not one per message.
//!
//! Of the routes, only the main table's default routes are modelled: through
//! which links, and via which gateways, a host without a more specific route
//! reaches anything. They usually come back a moment after a link's address
//! (DHCP, a script), so a dialer that failed in between is woken by the
//! snapshot in which the route appears. The kernel deletes some IPv4 routes
//! without any notification — every route through a link that is taken
//! down or loses its last IPv4 address, and every route whose preferred
//! source address is deleted — so the table forgets those itself; otherwise
//! the route added again afterwards would look like no change.
//!
//! Where things are: `table` holds the model ([`UplinkTable`], the [`Uplink`]s of its snapshot,
//! [`EventOutcome`]); `parse` reads the links, addresses and default routes out of rtnetlink
//! messages, as the table needs them; `task` is the shell ([`watch_uplinks`]: the socket, the dump,
//! the batches of events, the published snapshots).

mod parse;
mod table;
mod task;
#[cfg(test)]
mod tests;

pub use table::{EventOutcome, Uplink, UplinkTable};
pub use task::{watch_uplinks, watch_uplinks_counted, MonitorStats};
