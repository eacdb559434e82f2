//! The one error type of this crate.

use std::io;
use std::net::IpAddr;

use crate::types::{Route, Rule, TableRule, UnreachableRoute};

/// A netlink operation that failed; each variant names what did not happen
/// and the object it was about, and keeps the underlying cause as `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetlinkError {
    /// `connect` was called outside a tokio runtime, so there is nowhere to
    /// run the netlink connection task.
    #[error("failed to open a netlink socket: not inside a tokio runtime")]
    NoRuntime,

    #[error("failed to open a netlink socket")]
    Connect {
        #[source]
        source: io::Error,
    },

    /// The kernel has no link with this name (in this network namespace).
    #[error("network link {name:?} does not exist")]
    LinkNotFound { name: String },

    #[error("failed to look up network link {name:?}")]
    LinkLookup {
        name: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to set link index {index} up")]
    SetLinkUp {
        index: u32,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to set MTU {mtu} on link index {index}")]
    SetMtu {
        index: u32,
        mtu: u32,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to set the transmit queue length {len} on link index {index}")]
    SetTxQueueLen {
        index: u32,
        len: u32,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to add address {addr}/{prefix_len} to link index {index}")]
    AddAddress {
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to delete address {addr}/{prefix_len} from link index {index}")]
    DelAddress {
        index: u32,
        addr: IpAddr,
        prefix_len: u8,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to add route {route}")]
    AddRoute {
        // Boxed: a route with a source and a gateway would make every
        // Result of this crate large.
        route: Box<Route>,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to delete route {route}")]
    DelRoute {
        route: Box<Route>,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to add rule {rule}")]
    AddRule {
        rule: Rule,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to delete rule {rule}")]
    DelRule {
        rule: Rule,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to add rule {rule}")]
    AddTableRule {
        rule: Box<TableRule>,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to delete rule {rule}")]
    DelTableRule {
        rule: Box<TableRule>,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to add route {route}")]
    AddUnreachable {
        route: UnreachableRoute,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to delete route {route}")]
    DelUnreachable {
        route: UnreachableRoute,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to delete a route of table {table}")]
    FlushTable {
        table: u32,
        #[source]
        source: rtnetlink::Error,
    },

    /// The uplink monitor could not join the link, address and route
    /// multicast groups, so it would never hear about changes.
    #[error("failed to subscribe to link, address and route notifications")]
    Subscribe {
        #[source]
        source: io::Error,
    },

    #[error("failed to list network links")]
    DumpLinks {
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to list addresses")]
    DumpAddresses {
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to list routes")]
    DumpRoutes {
        #[source]
        source: rtnetlink::Error,
    },

    #[error("failed to list policy rules")]
    DumpRules {
        #[source]
        source: rtnetlink::Error,
    },

    /// Rejected before reaching the kernel: the prefix is longer than the
    /// address (more than 32 bits for IPv4, 128 for IPv6).
    #[error("invalid prefix {addr}/{prefix_len}: at most {max} bits for this address family")]
    InvalidPrefixLen { addr: IpAddr, prefix_len: u8, max: u8 },

    /// Rejected before reaching the kernel: a route's preferred source or
    /// gateway is not the same address family as its destination.
    #[error("invalid route {route}: source or gateway and destination are different address families")]
    MixedFamilies { route: Box<Route> },

    /// Rejected before reaching the kernel: a rule's destination is not of the rule's family.
    #[error("invalid rule {rule}: its destination is of the other address family")]
    MixedRuleFamilies { rule: Box<TableRule> },
}

impl NetlinkError {
    /// True when the kernel refused the request for lack of privilege
    /// (`EPERM`/`EACCES`), i.e. the process lacks `CAP_NET_ADMIN`.
    pub fn is_permission_denied(&self) -> bool {
        if let Self::Connect { source } | Self::Subscribe { source } = self {
            return source.kind() == io::ErrorKind::PermissionDenied;
        }
        matches!(self.errno(), Some(libc::EPERM | libc::EACCES))
    }

    /// The (positive) errno the kernel answered with, when the failure is a
    /// kernel refusal rather than a local or transport problem.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Connect { source } | Self::Subscribe { source } => source.raw_os_error(),
            _ => self.rtnetlink_source().and_then(kernel_errno),
        }
    }

    fn rtnetlink_source(&self) -> Option<&rtnetlink::Error> {
        match self {
            Self::LinkLookup { source, .. }
            | Self::SetLinkUp { source, .. }
            | Self::SetMtu { source, .. }
            | Self::SetTxQueueLen { source, .. }
            | Self::AddAddress { source, .. }
            | Self::DelAddress { source, .. }
            | Self::AddRoute { source, .. }
            | Self::DelRoute { source, .. }
            | Self::AddRule { source, .. }
            | Self::DelRule { source, .. }
            | Self::AddTableRule { source, .. }
            | Self::DelTableRule { source, .. }
            | Self::AddUnreachable { source, .. }
            | Self::DelUnreachable { source, .. }
            | Self::FlushTable { source, .. }
            | Self::DumpLinks { source }
            | Self::DumpAddresses { source }
            | Self::DumpRoutes { source }
            | Self::DumpRules { source } => Some(source),
            Self::NoRuntime
            | Self::Connect { .. }
            | Self::Subscribe { .. }
            | Self::LinkNotFound { .. }
            | Self::InvalidPrefixLen { .. }
            | Self::MixedFamilies { .. }
            | Self::MixedRuleFamilies { .. } => None,
        }
    }
}

/// The positive errno carried by a kernel `NLMSG_ERROR` reply.
///
/// rtnetlink 0.24 reports kernel refusals as `Error::NetlinkError(msg)` where
/// `msg.code` is `Some(negative errno)` (`None` would be a plain ACK).
pub(crate) fn kernel_errno(err: &rtnetlink::Error) -> Option<i32> {
    match err {
        rtnetlink::Error::NetlinkError(msg) => msg.code.and_then(|code| code.get().checked_neg()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_core::ErrorMessage;
    use std::num::NonZeroI32;

    fn kernel_error(errno: i32) -> rtnetlink::Error {
        let mut msg = ErrorMessage::default();
        msg.code = NonZeroI32::new(-errno);
        rtnetlink::Error::NetlinkError(msg)
    }

    fn set_mtu_error(errno: i32) -> NetlinkError {
        NetlinkError::SetMtu { index: 1, mtu: 1400, source: kernel_error(errno) }
    }

    #[test]
    fn kernel_errno_is_positive() {
        assert_eq!(kernel_errno(&kernel_error(libc::EEXIST)), Some(libc::EEXIST));
        assert_eq!(kernel_errno(&rtnetlink::Error::RequestFailed), None);
    }

    #[test]
    fn permission_denied_is_eperm_or_eacces_only() {
        assert!(set_mtu_error(libc::EPERM).is_permission_denied());
        assert!(set_mtu_error(libc::EACCES).is_permission_denied());
        assert!(!set_mtu_error(libc::EINVAL).is_permission_denied());
        assert!(!NetlinkError::NoRuntime.is_permission_denied());
    }

    #[test]
    fn display_names_the_object() {
        assert_eq!(set_mtu_error(libc::EINVAL).to_string(), "failed to set MTU 1400 on link index 1");
    }
}
