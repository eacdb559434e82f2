//! The relay: what travels between the two daemons and how it maps onto the apps' connections.
pub mod core;
pub mod engine;
pub mod outqueue;
pub mod packet;
pub mod policy;
pub mod stream;
