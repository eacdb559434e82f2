//! The link manager (the spec's "task" module, \[0095\]): which uplink the session should use.
//! [`manager`] runs Search, keeps the health the decision task scores, and says when it decides;
//! [`policy`] holds the decision rules and the score. Together they answer "why did the client
//! switch?". [`volume`] says which period of the month an uplink's volume counts in.
pub mod manager;
pub mod policy;
pub mod volume;
