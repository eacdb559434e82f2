//! Everything roamtun decides, as plain state machines: the wire codec ([`wire`]), the relay's
//! streams, out queues, engine and per-daemon core ([`relay`]), the buffered IP transition protocol
//! ([`transition`]), the link manager's decision rules ([`link`]) and the server's bounds on
//! connections that have not authenticated yet ([`admission`]).
//!
//! What it deliberately does not do: open a socket or a file, read a clock, spawn a task, or know how
//! its state is shown. Inputs come in as `handle_*(…, now)` calls, outputs are drained with `poll_*()`,
//! and `poll_at` / `poll_timeout` say when to call again. The daemons (the `roamtun` crate) own every
//! file descriptor and the clock, and turn the records this crate emits into the status JSON.

pub mod admission;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod log_budget;
pub mod path;
pub mod relay;
pub mod time;
pub mod transition;
pub mod wire;
