//! roamtun keeps every TCP and UDP session of a device alive while it changes uplinks.
//!
//! The client daemon (CNAPT in the spec) gives apps a TUN with a stable virtual IP and terminates their
//! TCP in smoltcp; the server daemon (SNAPT) re-originates each stream into its own TUN with the
//! client's virtual IP as source. Between them runs one authenticated, encrypted relay connection.
//! docs/architecture.md draws the data path.

pub mod check;
pub mod clock;
pub mod config;
pub mod config_shape;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod full_tunnel;
pub mod keys;
pub mod metrics;
pub mod routing;
pub mod service;
pub mod tls;
