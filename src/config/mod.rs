//! The one configuration file of each daemon (TOML). Every key is documented in docs/config.md.
//!
//! Syntax and type errors carry the file, line and column (from the TOML parser, which knows where a
//! value came from); rules that span several keys are checked after parsing and name the keys. No
//! error quotes the file's text: it may hold the private key.
//!
//! The private key is inline (`private_key`) or in a file of its own (`private_key_file`); a file that
//! holds it must be private to its owner, else the daemon refuses to start (like ssh with its keys).

mod client;
mod control_group;
mod de;
mod error;
mod lan;
mod peers;
mod prefix;
mod private_key;
mod routing;
mod server;
#[cfg(test)]
mod test_support;
mod tun;
mod tuning;
mod uplinks;

pub use client::{ClientConfig, DecisionConfig, ServerPeer};
pub use control_group::ControlGroup;
pub use error::ConfigError;
pub use lan::{LanConfig, LanMode};
pub use peers::PeerConfig;
pub use prefix::{prefix_contains, Prefix};
pub use routing::{RoutingConfig, DEFAULT_FWMARK, DEFAULT_TUNNEL_TABLE, TUNNEL_RULES};
pub use server::ServerConfig;
pub use tun::TunConfig;
pub use tuning::{Tuning, DEFAULT_CONGESTION_CONTROL, MAX_TCP_FLOWS, MAX_WORKER_THREADS};
pub use uplinks::{uplink_kind, UplinkConfig, UPLINK_KINDS};
