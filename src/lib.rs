//! roamtun: keeps every TCP and UDP session of a device alive while it changes uplinks.
pub mod keys;
pub mod tls;
pub mod wire;
