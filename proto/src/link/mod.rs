//! The link manager (the spec's "task" module, \[0095\]): which uplink the session should use.
//! [`policy`] is the decision task; the Check and Search activities feed it.
pub mod policy;
