//! The tokio shell of the uplink monitor: subscribes a netlink socket, dumps the kernel's state into
//! an [`UplinkTable`], then applies the events in batches and publishes each new snapshot.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::channel::mpsc::TryRecvError;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_ROUTE, RTMGRP_LINK};
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::{EventOutcome, Uplink, UplinkTable};
use crate::error::NetlinkError;

/// Legacy `RTMGRP_*` bitmask for `bind`: link changes, and addresses and
/// routes of both families.
const UPLINK_GROUPS: u32 =
    RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;

/// Starts watching the links, addresses and default routes of the calling
/// thread's network namespace.
///
/// Returns once the first full snapshot is in the receiver. The task
/// publishes a new snapshot on every real change; it ends when every
/// receiver is dropped or the netlink socket fails (logged), and aborting it
/// closes the socket.
pub async fn watch_uplinks() -> Result<(watch::Receiver<BTreeMap<String, Uplink>>, JoinHandle<()>), NetlinkError> {
    let (receiver, task, _) = watch_uplinks_counted().await?;
    Ok((receiver, task))
}

/// Counters of a running uplink monitor, for tests and diagnostics.
#[derive(Debug, Default)]
pub struct MonitorStats {
    events: AtomicU64,
    published: AtomicU64,
}

impl MonitorStats {
    /// Netlink messages received since the first dump.
    pub fn events(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }

    /// Snapshots published after the first one.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }
}

/// [`watch_uplinks`], plus the monitor's counters.
pub async fn watch_uplinks_counted(
) -> Result<(watch::Receiver<BTreeMap<String, Uplink>>, JoinHandle<()>, Arc<MonitorStats>), NetlinkError> {
    // Checked first: creating the socket registers it with the tokio
    // reactor, which panics outside a runtime.
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
    let (mut connection, handle, events) =
        rtnetlink::new_connection().map_err(|source| NetlinkError::Connect { source })?;
    // Subscribe before dumping: an event racing the dump is then queued and
    // applied after it, never lost. Binding must also precede the first send,
    // which would auto-bind the socket without groups.
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, UPLINK_GROUPS))
        .map_err(|source| NetlinkError::Subscribe { source })?;
    let connection = AbortOnDrop(runtime.spawn(connection));

    let mut table = UplinkTable::new();
    dump(&handle, &mut table).await?;
    let (updates, receiver) = watch::channel(table.snapshot());
    debug!(uplinks = ?summary(&updates.borrow()), "uplink monitor started");
    let stats = Arc::new(MonitorStats::default());
    let task = runtime.spawn(run(table, handle, events, updates, connection, stats.clone()));
    Ok((receiver, task, stats))
}

/// The connection's multicast events, as netlink-proto hands them over.
type Events = futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

async fn run(
    mut table: UplinkTable,
    handle: Handle,
    mut events: Events,
    updates: watch::Sender<BTreeMap<String, Uplink>>,
    // Held so the connection stops with this task, however it ends.
    _connection: AbortOnDrop,
    stats: Arc<MonitorStats>,
) {
    loop {
        let first = tokio::select! {
            () = updates.closed() => {
                debug!("no uplink watchers left; monitor stops");
                return;
            }
            event = events.next() => event,
        };
        let Some(first) = first else {
            error!("netlink event socket failed; uplink monitor stops");
            return;
        };
        let batch = next_batch(first, &mut events, &mut table).await;
        stats.events.fetch_add(batch.events, Ordering::Relaxed);
        if let Some(reason) = batch.needs_dump {
            debug!(reason, "dumping links, addresses and routes again");
            if reason == "overflow" {
                warn!("netlink event socket overflowed; dumping links, addresses and routes again");
            }
            let mut fresh = UplinkTable::new();
            if let Err(e) = dump(&handle, &mut fresh).await {
                error!(error = %e, reason, "re-dump failed; uplink monitor stops");
                return;
            }
            table = fresh;
        }
        // Also after a change that a later message of the burst undid (an
        // address deleted and added again): equal snapshots are not news.
        if publish(&updates, table.snapshot()) {
            stats.published.fetch_add(1, Ordering::Relaxed);
        }
        if batch.socket_closed {
            error!("netlink event socket failed; uplink monitor stops");
            return;
        }
    }
}

/// At most this many messages are coalesced into one snapshot, so that a
/// storm of events cannot delay the snapshot without bound.
const MAX_BATCH: u64 = 1024;

/// What a burst of events did to the table.
struct Batch {
    events: u64,
    needs_dump: Option<&'static str>,
    /// The event stream ended (after the messages of this batch).
    socket_closed: bool,
}

/// Applies `first` and every message already read from the socket, so that
/// one kernel operation (a link going down takes its IPv6 addresses and
/// routes with it, all queued before the operation returns) becomes one
/// snapshot.
///
/// There is no timer: waiting for more would delay a link-down, which must
/// be acted on within milliseconds. Instead, after the channel is empty, the
/// task yields once so the connection task can read whatever else the
/// socket already holds (it reads until the socket would block), and stops
/// at the first yield that brings nothing new.
async fn next_batch(
    first: (NetlinkMessage<RouteNetlinkMessage>, SocketAddr),
    events: &mut Events,
    table: &mut UplinkTable,
) -> Batch {
    let mut batch = Batch { events: 0, needs_dump: None, socket_closed: false };
    let mut apply = |batch: &mut Batch, (message, _): (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)| {
        batch.events += 1;
        // Once a dump is due, the dump will say everything; later messages
        // need not be applied.
        if batch.needs_dump.is_none() {
            if let EventOutcome::NeedsDump(reason) = table.apply_event(&message) {
                batch.needs_dump = Some(reason);
            }
        }
    };
    apply(&mut batch, first);
    let mut yielded = false;
    loop {
        let before = batch.events;
        while batch.events < MAX_BATCH {
            match events.try_recv() {
                Ok(event) => apply(&mut batch, event),
                Err(TryRecvError::Closed) => {
                    batch.socket_closed = true;
                    return batch;
                }
                // Nothing more read yet.
                Err(TryRecvError::Empty) => break,
            }
        }
        if batch.events >= MAX_BATCH || (yielded && batch.events == before) {
            return batch;
        }
        tokio::task::yield_now().await;
        yielded = true;
    }
}

/// Publishes `snapshot` unless it equals the current one; says whether it
/// did.
fn publish(updates: &watch::Sender<BTreeMap<String, Uplink>>, snapshot: BTreeMap<String, Uplink>) -> bool {
    updates.send_if_modified(|current| {
        if *current == snapshot {
            return false;
        }
        debug!(uplinks = ?summary(&snapshot), "uplinks changed");
        *current = snapshot;
        true
    })
}

/// Usable uplink names, for logs.
fn summary(snapshot: &BTreeMap<String, Uplink>) -> Vec<&str> {
    snapshot.values().filter(|uplink| uplink.usable()).map(|uplink| uplink.name.as_str()).collect()
}

/// Feeds every link, then every address, then every route (addresses and
/// routes of both families) into `table`.
async fn dump(handle: &Handle, table: &mut UplinkTable) -> Result<(), NetlinkError> {
    let mut links = pin!(handle.link().get().execute());
    while let Some(link) = links.try_next().await.map_err(|source| NetlinkError::DumpLinks { source })? {
        table.apply(&RouteNetlinkMessage::NewLink(link));
    }
    let mut addresses = pin!(handle.address().get().execute());
    while let Some(address) = addresses.try_next().await.map_err(|source| NetlinkError::DumpAddresses { source })? {
        table.apply(&RouteNetlinkMessage::NewAddress(address));
    }
    // One dump per family; each covers every table (the kernel ignores the
    // table in a dump request unless strict checking is on), and the table
    // keeps only the main one.
    let requests = [RouteMessageBuilder::<Ipv4Addr>::new().build(), RouteMessageBuilder::<Ipv6Addr>::new().build()];
    for request in requests {
        let mut routes = pin!(handle.route().get(request).execute());
        while let Some(route) = routes.try_next().await.map_err(|source| NetlinkError::DumpRoutes { source })? {
            table.apply(&RouteNetlinkMessage::NewRoute(route));
        }
    }
    Ok(())
}

/// netlink-proto's connection task can idle forever after its users are
/// gone (see `Netlink`'s `Drop`), so it is stopped explicitly.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
